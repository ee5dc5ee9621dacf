//! `linkctl`: one subcommand per linkd RPC, development tokens, and a guided demo.
#![allow(
    clippy::print_stdout,
    reason = "a command-line client prints its results"
)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use linkctl::client::{Clients, bearer};
use linkctl::{demo, dev};
use proto::convert::text;
use proto::v1;

/// A gRPC client for linkd.
#[derive(Debug, Parser)]
#[command(name = "linkctl", version, about)]
struct Cli {
    /// The command service's address.
    #[arg(
        long,
        env = "LINKD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// The projection service's address (queries).
    #[arg(
        long,
        env = "LINKD_QUERY_ADDR",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    query_addr: String,
    /// Bearer token for the call: a portal JWT, or a device credential for device calls.
    #[arg(long, env = "LINKCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The CA that issued the services' certificates, for `https://` addresses (default: the
    /// system's roots).
    #[arg(long, env = "LINKD_GRPC_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// A client certificate to present, for services that require one (mutual TLS).
    #[arg(
        long,
        env = "LINKD_GRPC_CERT_FILE",
        global = true,
        requires = "key_file"
    )]
    cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(
        long,
        env = "LINKD_GRPC_KEY_FILE",
        global = true,
        requires = "cert_file"
    )]
    key_file: Option<PathBuf>,
    /// Idempotency key (a UUID); retrying with the same key returns the first answer.
    #[arg(long, global = true, default_value = "")]
    request_id: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    Qr,
    Luxtrust,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlatformArg {
    Ios,
    Android,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Mobile,
    Scan,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development keys and tokens (never accepted unless the services are configured with them).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Walks the help page's QR and LuxTrust flows against a running system.
    Demo {
        /// Folder with the development keys.
        #[arg(long, default_value = ".dev/keys")]
        keys: PathBuf,
    },
    /// Operator commands on the projection database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// AuditService: an account's history (with an auditor's or the holder's token).
    #[command(subcommand)]
    Audit(linkctl::audit::Command),
    #[command(flatten)]
    Rpc(Rpc),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Lists emails in the outbox (failed ones by default), newest first.
    Emails {
        /// The projection service's database.
        #[arg(long, env = "LINKD_PROJECTION_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// pending, sent, failed or all.
        #[arg(long, default_value = "failed")]
        status: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Queues a failed email again (after fixing the address or the relay).
    RetryEmail {
        #[arg(long, env = "LINKD_PROJECTION_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The row id `admin emails` shows.
        #[arg(long)]
        id: i64,
    },
}

/// One subcommand per RPC.
#[derive(Debug, Subcommand)]
enum Rpc {
    /// PortalService.RegisterAccount (needs a system token).
    RegisterAccount {
        #[arg(long)]
        account_id: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// PortalService.ChangeAccountEmail (needs a system token).
    ChangeAccountEmail {
        #[arg(long)]
        account_id: String,
        #[arg(long)]
        email: String,
    },
    /// PortalService.RecordPortalLogin (needs a system token).
    RecordPortalLogin {
        #[arg(long)]
        account_id: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        serial: String,
    },
    /// PortalService.IssueLinkQr (needs a re-authenticated citizen token).
    IssueLinkQr {
        /// Also write the QR code's SVG image to this file.
        #[arg(long)]
        svg_out: Option<PathBuf>,
        /// The browser's network address as the portal sees it (shown while confirming).
        #[arg(long, default_value = "")]
        browser_address: String,
    },
    #[command(flatten)]
    Qr(linkctl::qr::Command),
    #[command(flatten)]
    Unlink(linkctl::unlink::Command),
    /// DeviceService.StartLink.
    StartLink {
        #[arg(long)]
        device_id: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        method: Method,
        #[arg(long, value_enum, default_value = "android")]
        platform: PlatformArg,
        #[arg(long, default_value = "1.0.0")]
        app_version: String,
        /// The device's model (shown to the holder who confirms a QR link).
        #[arg(long, default_value = "")]
        device_model: String,
    },
    /// DeviceService.ScanQr.
    ScanQr {
        #[arg(long)]
        link_token: String,
        #[arg(long)]
        qr_payload: String,
    },
    /// DeviceService.AuthenticateWithLuxTrust.
    AuthenticateWithLuxtrust {
        #[arg(long)]
        link_token: String,
        #[arg(long)]
        assertion: String,
    },
    /// DeviceService.SetSecretCode; prints the device credential.
    SetSecretCode {
        #[arg(long)]
        link_token: String,
        #[arg(long)]
        code: String,
    },
    /// DeviceService.SetBiometrics (needs the device credential as --token).
    SetBiometrics {
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: bool,
    },
    /// DeviceService.VerifySecretCode (needs the device credential as --token).
    VerifySecretCode {
        #[arg(long)]
        code: String,
    },
    /// DeviceService.UnlinkThisDevice (needs the device credential as --token).
    UnlinkThisDevice,
    /// DeviceQueryService.ListDevices (needs a re-authenticated citizen token).
    ListDevices {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// From a command's output: wait until the read model reflects it.
        #[arg(long, default_value = "")]
        consistency_token: String,
    },
    /// DeviceQueryService.GetDevice (needs a re-authenticated citizen token).
    GetDevice {
        #[arg(long)]
        device_id: String,
        #[arg(long, default_value = "")]
        consistency_token: String,
    },
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Creates development key pairs in a folder (kept if they exist).
    Keys {
        #[arg(long, default_value = ".dev/keys")]
        dir: PathBuf,
    },
    /// Prints a signed development token.
    Token {
        #[arg(long, default_value = ".dev/keys")]
        keys: PathBuf,
        #[command(subcommand)]
        kind: TokenKind,
    },
    /// Creates a development CA, a server certificate (localhost, 127.0.0.1, ::1 and --name)
    /// and a client certificate in a folder (kept if its ca.pem exists), and prints the
    /// settings that use them.
    Tls {
        #[arg(long, default_value = ".dev/tls")]
        dir: PathBuf,
        /// Another name or address the server certificate is for (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenKind {
    /// A citizen's portal JWT.
    Citizen {
        #[arg(long)]
        account_id: String,
        /// Seconds since the holder authenticated (over 300 is refused for re-authenticated calls).
        #[arg(long, default_value_t = 0)]
        auth_age: i64,
    },
    /// The portal back end's JWT (role portal-system).
    System,
    /// An auditor's JWT (role auditor).
    Auditor,
    /// A LuxTrust assertion bound to a link attempt's nonce.
    Luxtrust {
        #[arg(long)]
        account_id: String,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        serial: String,
        #[arg(long)]
        nonce: String,
    },
}

/// The LuxTrust assertion's `product_kind` claim.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Mobile => text::MOBILE,
        Kind::Scan => text::SCAN,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {}", linkctl::errors::describe(status)),
                None => eprintln!("error: {error:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = cli.token.clone().unwrap_or_default();
    let request_id = cli.request_id.clone();
    let tls = linkctl::client::ClientTls {
        ca_file: cli.ca_file.clone(),
        identity: cli.cert_file.clone().zip(cli.key_file.clone()),
    };
    match cli.command {
        Command::Dev(DevCommand::Keys { dir }) => {
            let files = dev::generate(&dir)?;
            println!("LINKD_IDP_PUBLIC_KEYS_FILE={}", files.idp_public.display());
            println!(
                "LINKD_LUXTRUST_PUBLIC_KEYS_FILE={}",
                files.luxtrust_public.display()
            );
            println!("LINKD_BUS_SIGNING_KEY_FILE={}", files.bus_private.display());
            println!("LINKD_BUS_VERIFY_KEYS_FILE={}", files.bus_public.display());
            println!("LINKD_KEK_FILE={}", files.kek.display());
        }
        Command::Dev(DevCommand::Tls { dir, names }) => {
            let files = linkctl::dev_tls::generate(&dir, &names)?;
            if files.existing && !names.is_empty() {
                eprintln!(
                    "note: {} holds certificates already; --name is not added to them \
                     (remove the folder to issue new ones)",
                    dir.display()
                );
            }
            for service in ["COMMAND", "PROJECTION"] {
                println!(
                    "LINKD_{service}_TLS_CERT_FILE={}",
                    files.server_cert.display()
                );
                println!(
                    "LINKD_{service}_TLS_KEY_FILE={}",
                    files.server_key.display()
                );
                println!("LINKD_{service}_TLS_CLIENT_CA_FILE={}", files.ca.display());
            }
            println!("LINKD_GRPC_CA_FILE={}", files.ca.display());
            println!("LINKD_GRPC_CERT_FILE={}", files.client_cert.display());
            println!("LINKD_GRPC_KEY_FILE={}", files.client_key.display());
        }
        Command::Dev(DevCommand::Token { keys, kind }) => {
            let keys = dev::DevKeys::load(&keys)?;
            let token = match kind {
                TokenKind::Citizen {
                    account_id,
                    auth_age,
                } => keys.citizen_token(&account_id, auth_age)?,
                TokenKind::System => keys.system_token()?,
                TokenKind::Auditor => keys.auditor_token()?,
                TokenKind::Luxtrust {
                    account_id,
                    kind,
                    serial,
                    nonce,
                } => keys.luxtrust_assertion(&account_id, kind_name(kind), &serial, &nonce)?,
            };
            println!("{token}");
        }
        Command::Demo { keys } => {
            let keys = dev::DevKeys::load(&keys)?;
            demo::run(
                Clients::connect(&cli.addr, &cli.query_addr, &tls).await?,
                &keys,
            )
            .await?;
        }
        Command::Admin(AdminCommand::Emails {
            database_url,
            status,
            limit,
        }) => {
            let pool = sqlx::PgPool::connect(&database_url)
                .await
                .context("connecting")?;
            for row in linkctl::admin::emails(&pool, &status, limit).await? {
                let next = if row.status == "pending" {
                    format!(
                        "next attempt {}",
                        row.next_attempt_at.format("%Y-%m-%d %H:%M:%S UTC")
                    )
                } else {
                    String::new()
                };
                println!(
                    "{:>6}  {:<7} attempts {:<3} queued {}  {}  {:<18} {:<32} {}  {}",
                    row.id,
                    row.status,
                    row.attempts,
                    row.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    next,
                    row.kind,
                    row.recipient,
                    row.event_id,
                    row.last_error.unwrap_or_default()
                );
            }
        }
        Command::Admin(AdminCommand::RetryEmail { database_url, id }) => {
            let pool = sqlx::PgPool::connect(&database_url)
                .await
                .context("connecting")?;
            anyhow::ensure!(
                linkctl::admin::retry_email(&pool, id).await?,
                "email {id} is not failed"
            );
            println!("email {id} queued again");
        }
        Command::Audit(command) => {
            let channel = tls
                .endpoint(&cli.query_addr)?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", cli.query_addr))?;
            linkctl::audit::run(channel, command, &token, &mut std::io::stdout()).await?;
        }
        Command::Rpc(rpc) => {
            call(
                Clients::connect(&cli.addr, &cli.query_addr, &tls).await?,
                rpc,
                &token,
                request_id,
            )
            .await?;
        }
    }
    Ok(())
}

async fn call(
    mut clients: Clients,
    command: Rpc,
    token: &str,
    request_id: String,
) -> anyhow::Result<()> {
    match command {
        Rpc::RegisterAccount {
            account_id,
            email,
            language,
        } => {
            let request = v1::RegisterAccountRequest {
                account_id,
                email,
                language,
                request_id,
            };
            println!(
                "{:#?}",
                clients
                    .portal
                    .register_account(bearer(request, token)?)
                    .await?
                    .into_inner()
            );
        }
        Rpc::ChangeAccountEmail { account_id, email } => {
            let request = v1::ChangeAccountEmailRequest {
                account_id,
                email,
                request_id,
            };
            clients
                .portal
                .change_account_email(bearer(request, token)?)
                .await?;
            println!("email changed");
        }
        Rpc::RecordPortalLogin {
            account_id,
            kind,
            serial,
        } => {
            let kind = match kind {
                Kind::Mobile => v1::ProductKind::LuxtrustMobile,
                Kind::Scan => v1::ProductKind::LuxtrustScan,
            };
            let product = Some(v1::LuxTrustProduct {
                kind: kind.into(),
                serial,
            });
            let request = v1::RecordPortalLoginRequest {
                account_id,
                product,
                request_id,
            };
            clients
                .portal
                .record_portal_login(bearer(request, token)?)
                .await?;
            println!("recorded");
        }
        Rpc::IssueLinkQr {
            svg_out,
            browser_address,
        } => {
            let request = v1::IssueLinkQrRequest {
                browser_address,
                request_id,
            };
            let reply = clients
                .portal
                .issue_link_qr(bearer(request, token)?)
                .await?
                .into_inner();
            if let Some(path) = svg_out {
                std::fs::write(&path, &reply.qr_svg)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("qr_id:      {}", reply.qr_id);
            println!("qr_payload: {}", reply.qr_payload);
            println!(
                "expires_at: {}",
                linkctl::client::format_time(reply.expires_at.as_ref())
            );
        }
        Rpc::Qr(command) => {
            let out = &mut std::io::stdout();
            linkctl::qr::run(&mut clients.portal, command, token, request_id, out).await?;
        }
        Rpc::Unlink(command) => {
            let out = &mut std::io::stdout();
            linkctl::unlink::run(&mut clients.portal, command, token, request_id, out).await?;
        }
        Rpc::StartLink {
            device_id,
            name,
            method,
            platform,
            app_version,
            device_model,
        } => {
            let method = match method {
                Method::Qr => v1::LinkMethod::Qr,
                Method::Luxtrust => v1::LinkMethod::Luxtrust,
            };
            let platform = match platform {
                PlatformArg::Ios => v1::Platform::Ios,
                PlatformArg::Android => v1::Platform::Android,
            };
            let request = v1::StartLinkRequest {
                device_id,
                device_name: name,
                method: method.into(),
                platform: platform.into(),
                app_version,
                device_model,
                request_id,
            };
            let reply = clients.device.start_link(request).await?.into_inner();
            println!("link_token:     {}", reply.link_token);
            println!("luxtrust_nonce: {}", reply.luxtrust_nonce);
            println!(
                "expires_at:     {}",
                linkctl::client::format_time(reply.expires_at.as_ref())
            );
        }
        Rpc::ScanQr {
            link_token,
            qr_payload,
        } => {
            let request = v1::ScanQrRequest {
                link_token,
                qr_payload,
                request_id,
            };
            let reply = clients.device.scan_qr(request).await?.into_inner();
            println!("QR code accepted");
            println!("account_hint:  {}", reply.account_hint);
            if reply.matching_code.is_empty() {
                println!("matching_code: - (no confirmation asked)");
            } else {
                println!("matching_code: {}", reply.matching_code);
            }
            println!(
                "confirm_by:    {}",
                linkctl::client::format_time(reply.confirm_by.as_ref())
            );
        }
        Rpc::AuthenticateWithLuxtrust {
            link_token,
            assertion,
        } => {
            let request = v1::AuthenticateWithLuxTrustRequest {
                link_token,
                assertion,
                request_id,
            };
            let reply = clients
                .device
                .authenticate_with_lux_trust(request)
                .await?
                .into_inner();
            println!("LuxTrust authentication accepted");
            println!("account_hint: {}", reply.account_hint);
        }
        Rpc::SetSecretCode { link_token, code } => {
            let request = v1::SetSecretCodeRequest {
                link_token,
                secret_code: code,
                request_id,
            };
            let reply = clients.device.set_secret_code(request).await?.into_inner();
            println!("device_id:         {}", reply.device_id);
            println!("device_credential: {}", reply.device_credential);
            println!(
                "linked_at:         {}",
                linkctl::client::format_time(reply.linked_at.as_ref())
            );
        }
        Rpc::SetBiometrics { enabled } => {
            let request = v1::SetBiometricsRequest {
                enabled,
                request_id,
            };
            println!(
                "{:#?}",
                clients
                    .device
                    .set_biometrics(bearer(request, token)?)
                    .await?
                    .into_inner()
            );
        }
        Rpc::VerifySecretCode { code } => {
            let request = v1::VerifySecretCodeRequest {
                secret_code: code,
                request_id,
            };
            println!(
                "{:#?}",
                clients
                    .device
                    .verify_secret_code(bearer(request, token)?)
                    .await?
                    .into_inner()
            );
        }
        Rpc::ListDevices {
            page_size,
            page_token,
            consistency_token,
        } => {
            let request = v1::ListDevicesRequest {
                page_size,
                page_token,
                consistency_token,
            };
            let reply = clients
                .queries
                .list_devices(bearer(request, token)?)
                .await?
                .into_inner();
            for device in &reply.devices {
                println!("{}", linkctl::client::describe(device));
            }
            if !reply.next_page_token.is_empty() {
                println!("next_page_token: {}", reply.next_page_token);
            }
        }
        Rpc::GetDevice {
            device_id,
            consistency_token,
        } => {
            let request = v1::GetDeviceRequest {
                device_id,
                consistency_token,
            };
            let reply = clients
                .queries
                .get_device(bearer(request, token)?)
                .await?
                .into_inner();
            println!("{}", linkctl::client::describe(&reply));
        }
        Rpc::UnlinkThisDevice => {
            let request = v1::UnlinkThisDeviceRequest { request_id };
            clients
                .device
                .unlink_this_device(bearer(request, token)?)
                .await?;
            println!("unlinked");
        }
    }
    Ok(())
}
