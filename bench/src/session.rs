//! One bench client: its own connections to both services, the development signers, and one
//! call per RPC the suite drives (each bounded by a deadline, each failure a [`Failure`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use linkctl::client::{Clients, bearer};
use linkctl::dev::DevKeys;
use proto::convert::text;
use proto::v1;
use uuid::Uuid;

use crate::config::Target;
use crate::stats::Failure;

/// The secret code every bench device sets (6 digits, not a run).
pub(crate) const CODE: &str = "482913";

/// How long one call may take before the bench counts it as `DEADLINE_EXCEEDED`.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// A citizen token is re-signed when older than this (the services accept `auth_time` up to
/// 300 s old for IssueLinkQr, ConfirmLink, UnlinkDevices and the queries).
const TOKEN_REFRESH: Duration = Duration::from_secs(120);

/// The LuxTrust Mobile serial the bench records for `account`'s portal logins.
pub(crate) fn serial_of(account: &str) -> String {
    format!("MOBILE-{}", account.replace([':', '@'], "-"))
}

/// A device the bench linked: its account, id and credential.
#[derive(Debug, Clone)]
pub(crate) struct Linked {
    /// The account it is linked to.
    pub(crate) account: String,
    /// The device id.
    pub(crate) device_id: String,
    /// Its credential (for SetBiometrics).
    pub(crate) credential: String,
}

/// A QR code the bench issued: its id (for ConfirmLink) and the payload a device scans.
#[derive(Debug, Clone)]
pub(crate) struct Qr {
    /// The QR code's id.
    pub(crate) id: String,
    /// The text the QR code encodes.
    pub(crate) payload: String,
}

/// One client of the system under test (a clone shares the connections).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Generated clients over this session's own channels.
    pub(crate) grpc: Clients,
    keys: Arc<DevKeys>,
    tokens: HashMap<String, (String, Instant)>,
}

async fn bounded<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, Failure> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(outcome) => outcome.map_err(Failure::from),
        Err(_) => Err(Failure {
            code: "DEADLINE_EXCEEDED",
            message: format!("no answer within {} s", CALL_DEADLINE.as_secs()),
        }),
    }
}

impl Session {
    /// Opens this session's connections.
    pub(crate) async fn connect(target: &Target, keys: Arc<DevKeys>) -> anyhow::Result<Self> {
        Self::connect_at(&target.addr, &target.query_addr, keys).await
    }

    /// A session against the command service at `addr` and the projection service at
    /// `query_addr`.
    pub(crate) async fn connect_at(
        addr: &str,
        query_addr: &str,
        keys: Arc<DevKeys>,
    ) -> anyhow::Result<Self> {
        let grpc =
            Clients::connect(addr, query_addr, &linkctl::client::ClientTls::default()).await?;
        Ok(Self {
            grpc,
            keys,
            tokens: HashMap::new(),
        })
    }

    /// `count` sessions.
    pub(crate) async fn connect_many(
        target: &Target,
        keys: &Arc<DevKeys>,
        count: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            sessions.push(Self::connect(target, keys.clone()).await?);
        }
        Ok(sessions)
    }

    /// A recently re-authenticated citizen's token for `account`.
    pub(crate) fn citizen(&mut self, account: &str) -> Result<String, Failure> {
        if let Some((token, minted)) = self.tokens.get(account)
            && minted.elapsed() < TOKEN_REFRESH
        {
            return Ok(token.clone());
        }
        let token = self.keys.citizen_token(account, 0)?;
        self.tokens
            .insert(account.to_owned(), (token.clone(), Instant::now()));
        Ok(token)
    }

    /// Registers `account` and records a portal login with its LuxTrust Mobile product.
    pub(crate) async fn register(&mut self, account: &str) -> anyhow::Result<()> {
        let system = self.keys.system_token()?;
        let request = v1::RegisterAccountRequest {
            account_id: account.to_owned(),
            email: format!("{account}@example.lu"),
            language: "en".into(),
            request_id: String::new(),
        };
        bounded(self.grpc.portal.register_account(bearer(request, &system)?))
            .await
            .map_err(|f| anyhow::anyhow!("registering {account}: {f}"))?;
        let request = v1::RecordPortalLoginRequest {
            account_id: account.to_owned(),
            product: Some(v1::LuxTrustProduct {
                kind: v1::ProductKind::LuxtrustMobile.into(),
                serial: serial_of(account),
            }),
            request_id: String::new(),
        };
        bounded(
            self.grpc
                .portal
                .record_portal_login(bearer(request, &system)?),
        )
        .await
        .map_err(|f| anyhow::anyhow!("recording a login of {account}: {f}"))?;
        Ok(())
    }

    /// IssueLinkQr for `account`; the QR code's id and payload.
    pub(crate) async fn issue_qr(&mut self, account: &str) -> Result<Qr, Failure> {
        let token = self.citizen(account)?;
        let request = bearer(v1::IssueLinkQrRequest::default(), &token)?;
        let reply = bounded(self.grpc.portal.issue_link_qr(request))
            .await?
            .into_inner();
        Ok(Qr {
            id: reply.qr_id,
            payload: reply.qr_payload,
        })
    }

    /// StartLink for a new device with `method`; the new device id and the reply.
    pub(crate) async fn start_link(
        &mut self,
        method: v1::LinkMethod,
    ) -> Result<(String, v1::StartLinkResponse), Failure> {
        let device_id = Uuid::new_v4().to_string();
        let request = v1::StartLinkRequest {
            device_id: device_id.clone(),
            device_name: "Bench phone".into(),
            method: method.into(),
            platform: v1::Platform::Android.into(),
            app_version: "1.0.0".into(),
            device_model: String::new(),
            request_id: String::new(),
        };
        let reply = bounded(self.grpc.device.start_link(request)).await?;
        Ok((device_id, reply.into_inner()))
    }

    /// ScanQr: the attempt of `link_token` consumes the QR code; the matching code the holder
    /// must confirm with (empty if the service asks for no confirmation).
    pub(crate) async fn scan_qr(
        &mut self,
        link_token: &str,
        qr_payload: &str,
    ) -> Result<String, Failure> {
        let request = v1::ScanQrRequest {
            link_token: link_token.to_owned(),
            qr_payload: qr_payload.to_owned(),
            request_id: String::new(),
        };
        let reply = bounded(self.grpc.device.scan_qr(request)).await?;
        Ok(reply.into_inner().matching_code)
    }

    /// ConfirmLink: `account`'s holder confirms the device that scanned QR code `qr_id` with
    /// the matching code it shows.
    pub(crate) async fn confirm_link(
        &mut self,
        account: &str,
        qr_id: &str,
        matching_code: &str,
    ) -> Result<(), Failure> {
        let token = self.citizen(account)?;
        let request = v1::ConfirmLinkRequest {
            qr_id: qr_id.to_owned(),
            matching_code: matching_code.to_owned(),
            request_id: String::new(),
        };
        bounded(self.grpc.portal.confirm_link(bearer(request, &token)?)).await?;
        Ok(())
    }

    /// AuthenticateWithLuxTrust with an assertion that `account` used its recorded product.
    pub(crate) async fn authenticate_luxtrust(
        &mut self,
        account: &str,
        start: &v1::StartLinkResponse,
    ) -> Result<(), Failure> {
        let assertion = self.keys.luxtrust_assertion(
            account,
            text::MOBILE,
            &serial_of(account),
            &start.luxtrust_nonce,
        )?;
        let request = v1::AuthenticateWithLuxTrustRequest {
            link_token: start.link_token.clone(),
            assertion,
            request_id: String::new(),
        };
        bounded(self.grpc.device.authenticate_with_lux_trust(request)).await?;
        Ok(())
    }

    /// SetSecretCode: links the device; its credential.
    pub(crate) async fn set_secret_code(&mut self, link_token: &str) -> Result<String, Failure> {
        let request = v1::SetSecretCodeRequest {
            link_token: link_token.to_owned(),
            secret_code: CODE.into(),
            request_id: String::new(),
        };
        let reply = bounded(self.grpc.device.set_secret_code(request)).await?;
        Ok(reply.into_inner().device_credential)
    }

    /// UnlinkDevices of one device, by its holder.
    pub(crate) async fn unlink(&mut self, account: &str, device_id: &str) -> Result<(), Failure> {
        let token = self.citizen(account)?;
        let request = v1::UnlinkDevicesRequest {
            device_ids: vec![device_id.to_owned()],
            request_id: String::new(),
            ..Default::default()
        };
        bounded(self.grpc.portal.unlink_devices(bearer(request, &token)?)).await?;
        Ok(())
    }

    /// ListDevices, first page; how many devices it holds.
    pub(crate) async fn list_devices(&mut self, account: &str) -> Result<usize, Failure> {
        let token = self.citizen(account)?;
        let request = bearer(v1::ListDevicesRequest::default(), &token)?;
        let reply = bounded(self.grpc.queries.list_devices(request)).await?;
        Ok(reply.into_inner().devices.len())
    }

    /// SetBiometrics with a device credential.
    pub(crate) async fn set_biometrics(
        &mut self,
        credential: &str,
        enabled: bool,
    ) -> Result<(), Failure> {
        let request = v1::SetBiometricsRequest {
            enabled,
            request_id: String::new(),
        };
        bounded(
            self.grpc
                .device
                .set_biometrics(bearer(request, credential)?),
        )
        .await?;
        Ok(())
    }

    /// A complete QR link for `account` (set-up work, not measured).
    pub(crate) async fn link_by_qr(&mut self, account: &str) -> anyhow::Result<Linked> {
        let failed = |step: &str, f: Failure| anyhow::anyhow!("{step}: {f}");
        let qr = self
            .issue_qr(account)
            .await
            .map_err(|f| failed("IssueLinkQr", f))?;
        let (device_id, start) = self
            .start_link(v1::LinkMethod::Qr)
            .await
            .map_err(|f| failed("StartLink", f))?;
        let matching_code = self
            .scan_qr(&start.link_token, &qr.payload)
            .await
            .map_err(|f| failed("ScanQr", f))?;
        if !matching_code.is_empty() {
            self.confirm_link(account, &qr.id, &matching_code)
                .await
                .map_err(|f| failed("ConfirmLink", f))?;
        }
        let credential = self
            .set_secret_code(&start.link_token)
            .await
            .map_err(|f| failed("SetSecretCode", f))?;
        Ok(Linked {
            account: account.to_owned(),
            device_id,
            credential,
        })
    }
}

/// Registers `accounts` over `sessions` (set-up work, in parallel).
pub(crate) async fn register_all(
    sessions: Vec<Session>,
    accounts: &[String],
) -> anyhow::Result<Vec<Session>> {
    let count = sessions.len().max(1);
    let done = crate::closed::each(sessions, |index, mut session| {
        let mine: Vec<String> = accounts
            .iter()
            .skip(index)
            .step_by(count)
            .cloned()
            .collect();
        async move {
            for account in &mine {
                if let Err(error) = session.register(account).await {
                    return (session, Err(error));
                }
            }
            (session, Ok(()))
        }
    })
    .await?;
    let (sessions, outcomes): (Vec<_>, Vec<_>) = done.into_iter().unzip();
    for outcome in outcomes {
        outcome.context("setting up accounts")?;
    }
    Ok(sessions)
}

/// The most devices the set-up links to one account: the service's default cap
/// (`LINKD_MAX_DEVICES_PER_ACCOUNT`), which the bench runs with.
pub(crate) const DEVICES_PER_ACCOUNT: usize = 5;

/// Registers accounts `<prefix>-<k>` and links `total` devices across them by QR over
/// `sessions`, at most [`DEVICES_PER_ACCOUNT`] to each (set-up work).
pub(crate) async fn link_spread(
    sessions: Vec<Session>,
    prefix: &str,
    total: usize,
) -> anyhow::Result<(Vec<Session>, Vec<Linked>)> {
    let accounts: Vec<String> = (0..total.div_ceil(DEVICES_PER_ACCOUNT).max(1))
        .map(|k| format!("{prefix}-{k}"))
        .collect();
    let sessions = register_all(sessions, &accounts).await?;
    let per_account = total.min(DEVICES_PER_ACCOUNT);
    let (sessions, mut linked) = link_all(sessions, &accounts, per_account).await?;
    linked.truncate(total);
    Ok((sessions, linked))
}

/// Links `per_account` devices to each of `accounts` by QR over `sessions` (set-up work).
pub(crate) async fn link_all(
    sessions: Vec<Session>,
    accounts: &[String],
    per_account: usize,
) -> anyhow::Result<(Vec<Session>, Vec<Linked>)> {
    let wanted: Vec<String> = accounts
        .iter()
        .flat_map(|account| std::iter::repeat_n(account.clone(), per_account))
        .collect();
    let count = sessions.len().max(1);
    let done = crate::closed::each(sessions, |index, mut session| {
        let mine: Vec<String> = wanted.iter().skip(index).step_by(count).cloned().collect();
        async move {
            let mut linked = Vec::with_capacity(mine.len());
            for account in &mine {
                match session.link_by_qr(account).await {
                    Ok(device) => linked.push(device),
                    Err(error) => return (session, Err(error)),
                }
            }
            (session, Ok(linked))
        }
    })
    .await?;
    let (sessions, outcomes): (Vec<_>, Vec<_>) = done.into_iter().unzip();
    let mut all = Vec::with_capacity(wanted.len());
    for outcome in outcomes {
        all.extend(outcome.context("linking set-up devices")?);
    }
    Ok((sessions, all))
}
