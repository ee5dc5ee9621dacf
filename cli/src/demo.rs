//! `linkctl demo`: the help page's two linking flows, then both ways of unlinking, then
//! containment (every device in one call), against a running system, printing each step.
#![allow(clippy::print_stdout, reason = "the demo narrates to the terminal")]

use anyhow::Context as _;
use proto::convert::text;
use proto::v1;
use uuid::Uuid;

use crate::client::{Clients, bearer, format_time};
use crate::dev::DevKeys;

mod containment;
mod qr;

const CODE: &str = "482913";

/// Numbers the demo's steps.
#[derive(Debug, Default)]
struct Steps(u32);

impl Steps {
    /// Prints the next step's heading.
    fn next(&mut self, text: &str) {
        self.0 += 1;
        println!("\n[{}] {text}", self.0);
    }
}

/// Runs the demo with fresh account and device ids.
pub async fn run(mut clients: Clients, keys: &DevKeys) -> anyhow::Result<()> {
    let run_id = Uuid::new_v4().simple().to_string();
    let account = format!("demo-{}", &run_id[..8]);
    // A product of this run's own: LuxTrust authentications are rate-limited per serial, and the
    // demo may run again at once.
    let serial = &format!("LT-MOBILE-{}", &run_id[..8]);
    let system = keys.system_token()?;
    let mut steps = Steps::default();

    steps.next(&format!(
        "The portal registers account {account} (browser registration)."
    ));
    let request = v1::RegisterAccountRequest {
        account_id: account.clone(),
        email: format!("{account}@example.lu"),
        language: "fr".into(),
        request_id: String::new(),
    };
    clients
        .portal
        .register_account(bearer(request, &system)?)
        .await?;
    println!("    registered, emails to {account}@example.lu");

    steps.next("The holder logs in to the portal with LuxTrust Mobile; the portal records it.");
    let product = Some(v1::LuxTrustProduct {
        kind: v1::ProductKind::LuxtrustMobile.into(),
        serial: serial.into(),
    });
    let request = v1::RecordPortalLoginRequest {
        account_id: account.clone(),
        product,
        request_id: String::new(),
    };
    clients
        .portal
        .record_portal_login(bearer(request, &system)?)
        .await?;
    println!("    login with LuxTrust Mobile {serial} recorded");

    println!("\n== Linking with a QR code (the holder confirms in the browser) ==");
    let qr::Phone {
        device_id: phone,
        credential: phone_credential,
        scan,
        confirmation,
    } = qr::link_phone(&mut clients, keys, &account, &mut steps).await?;

    steps.next("The holder taps 'Activate biometrics'.");
    let request = v1::SetBiometricsRequest {
        enabled: true,
        request_id: String::new(),
    };
    clients
        .device
        .set_biometrics(bearer(request, &phone_credential)?)
        .await?;
    println!("    [phone]   biometrics enabled");

    steps.next("A second phone tries the same QR code.");
    let other = start_link(
        &mut clients,
        &Uuid::new_v4().to_string(),
        "Tablet",
        "Pixel Tablet",
        v1::LinkMethod::Qr,
    )
    .await?;
    let reuse = v1::ScanQrRequest {
        link_token: other.link_token,
        ..scan
    };
    match clients.device.scan_qr(reuse).await {
        Err(status) => println!("    refused ({:?}): {}", status.code(), status.message()),
        Ok(_) => anyhow::bail!("a used QR code was accepted"),
    }

    if confirmation {
        qr::declined_by_holder(&mut clients, keys, &account, &mut steps).await?;
    } else {
        println!("\n(The anti-phishing confirmation is off: LINKD_QR_CONFIRMATION=off.)");
    }

    println!("\n== Linking with LuxTrust ==");
    let tablet = Uuid::new_v4().to_string();
    steps.next("On a tablet: name 'Family tablet', method 'LuxTrust'.");
    let start = start_link(
        &mut clients,
        &tablet,
        "Family tablet",
        "Galaxy Tab S9",
        v1::LinkMethod::Luxtrust,
    )
    .await?;
    steps.next(
        "The holder authenticates with LuxTrust Mobile (the assertion carries the attempt's \
         nonce).",
    );
    let assertion =
        keys.luxtrust_assertion(&account, text::MOBILE, serial, &start.luxtrust_nonce)?;
    let request = v1::AuthenticateWithLuxTrustRequest {
        link_token: start.link_token.clone(),
        assertion,
        request_id: String::new(),
    };
    let reply = clients
        .device
        .authenticate_with_lux_trust(request)
        .await?
        .into_inner();
    println!("    [tablet]  LuxTrust authentication accepted");
    println!("    [tablet]  You are linking to {}", reply.account_hint);
    steps.next("The holder enters the secret code and skips biometrics.");
    let tablet_credential = set_code(&mut clients, "[tablet] ", &start.link_token).await?;
    let request = v1::SetBiometricsRequest {
        enabled: false,
        request_id: String::new(),
    };
    let reply = clients
        .device
        .set_biometrics(bearer(request, &tablet_credential)?)
        .await?;
    println!("    [tablet]  biometrics skipped");

    steps.next("In the browser, after re-authenticating, the holder lists the linked devices.");
    list_devices(
        &mut clients,
        keys,
        &account,
        &reply.into_inner().consistency_token,
    )
    .await?;

    println!("\n== Unlinking ==");
    steps.next(
        "The phone is lost: after re-authenticating, the holder unlinks it from the browser.",
    );
    let request = v1::UnlinkDevicesRequest {
        device_ids: vec![phone.clone()],
        request_id: String::new(),
        ..Default::default()
    };
    let reply = clients
        .portal
        .unlink_devices(bearer(request, &keys.citizen_token(&account, 0)?)?)
        .await?
        .into_inner();
    println!("    unlinked: {}", reply.unlinked_device_ids.join(", "));
    let verify = v1::VerifySecretCodeRequest {
        secret_code: CODE.into(),
        request_id: String::new(),
    };
    match clients
        .device
        .verify_secret_code(bearer(verify.clone(), &phone_credential)?)
        .await
    {
        Err(status) => println!(
            "    the lost phone's credential is refused ({:?})",
            status.code()
        ),
        Ok(_) => anyhow::bail!("a revoked credential was accepted"),
    }

    steps.next("The tablet unlinks itself.");
    let unlinked = clients
        .device
        .unlink_this_device(bearer(
            v1::UnlinkThisDeviceRequest::default(),
            &tablet_credential,
        )?)
        .await?
        .into_inner();
    match clients
        .device
        .verify_secret_code(bearer(verify, &tablet_credential)?)
        .await
    {
        Err(status) => println!(
            "    unlinked; its credential is refused ({:?})",
            status.code()
        ),
        Ok(_) => anyhow::bail!("a revoked credential was accepted"),
    }

    steps.next("The device list, read again from the read side.");
    list_devices(&mut clients, keys, &account, &unlinked.consistency_token).await?;
    containment::run(&mut clients, keys, &account, serial, &mut steps).await?;
    println!("\nDone: account {account}, devices {phone} and {tablet}.");
    println!("Every step above is an event in the command database's `events` table.");
    Ok(())
}

async fn list_devices(
    clients: &mut Clients,
    keys: &DevKeys,
    account: &str,
    consistency_token: &str,
) -> anyhow::Result<()> {
    let request = v1::ListDevicesRequest {
        page_size: 0,
        page_token: String::new(),
        consistency_token: consistency_token.into(),
    };
    let token = keys.citizen_token(account, 0)?;
    let reply = clients
        .queries
        .list_devices(bearer(request, &token)?)
        .await
        .context("ListDevices")?;
    let devices = reply.into_inner().devices;
    if devices.is_empty() {
        println!("    no linked devices");
    }
    for device in &devices {
        println!("    {}", crate::client::describe(device));
    }
    Ok(())
}

async fn start_link(
    clients: &mut Clients,
    device_id: &str,
    name: &str,
    model: &str,
    method: v1::LinkMethod,
) -> anyhow::Result<v1::StartLinkResponse> {
    let request = v1::StartLinkRequest {
        device_id: device_id.into(),
        device_name: name.into(),
        method: method.into(),
        platform: v1::Platform::Android.into(),
        app_version: "2.4.1".into(),
        device_model: model.into(),
        request_id: String::new(),
    };
    Ok(clients
        .device
        .start_link(request)
        .await
        .context("StartLink")?
        .into_inner())
}

/// SetSecretCode on the device that `who` labels; its credential.
async fn set_code(clients: &mut Clients, who: &str, link_token: &str) -> anyhow::Result<String> {
    let request = v1::SetSecretCodeRequest {
        link_token: link_token.into(),
        secret_code: CODE.into(),
        request_id: String::new(),
    };
    let reply = clients
        .device
        .set_secret_code(request)
        .await
        .context("SetSecretCode")?
        .into_inner();
    println!(
        "    {who} device {} linked at {}",
        reply.device_id,
        format_time(reply.linked_at.as_ref())
    );
    Ok(reply.device_credential)
}
