//! The demo's QR ceremony, as the browser (`[browser]`: the QR code, then its states as
//! WatchLinkQr pushes them) and the phone (`[phone]`: the account hint, the matching code) see
//! it; and the anti-phishing case, a scan that the holder declines.

use std::time::Duration;

use anyhow::Context as _;
use proto::v1::{self, LinkQrStage, LinkQrState};
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::{Steps, set_code, start_link};
use crate::client::{Clients, bearer, format_time};
use crate::dev::DevKeys;
use crate::watch;

/// The browser's address as the portal back end reports it at IssueLinkQr (a documentation
/// address: the demo's portal is imaginary).
const BROWSER_ADDRESS: &str = "203.0.113.10";

/// The longest the demo waits for the browser to see a state (the service polls every 500 ms).
const BROWSER_WAIT: Duration = Duration::from_secs(15);

fn browser(line: &str) {
    println!("    [browser] {line}");
}

fn phone(line: &str) {
    println!("    [phone]   {line}");
}

fn stranger(line: &str) {
    println!("    [stranger's phone] {line}");
}

/// The phone linked by QR code.
#[derive(Debug)]
pub(super) struct Phone {
    /// Its device id.
    pub(super) device_id: String,
    /// Its credential.
    pub(super) credential: String,
    /// The scan it made (to show that the used QR code is refused).
    pub(super) scan: v1::ScanQrRequest,
    /// Whether the service asks the holder to confirm QR links.
    pub(super) confirmation: bool,
}

/// The browser's WatchLinkQr, followed by a task that prints each state as it arrives.
struct BrowserWatch {
    seen: signal::Receiver<i32>,
    task: JoinHandle<anyhow::Result<Option<LinkQrState>>>,
}

impl BrowserWatch {
    async fn open(clients: &Clients, citizen: &str, qr_id: &str) -> anyhow::Result<Self> {
        let request = v1::WatchLinkQrRequest {
            qr_id: qr_id.into(),
        };
        let states = clients
            .portal
            .clone()
            .watch_link_qr(bearer(request, citizen)?)
            .await
            .context("WatchLinkQr")?
            .into_inner();
        let (stage, seen) = signal::channel(LinkQrStage::Unspecified.into());
        let task = tokio::spawn(watch::follow(states, move |state| {
            browser(&watch::describe(state));
            stage.send_replace(state.stage);
            Ok(())
        }));
        Ok(Self { seen, task })
    }

    /// Waits until the browser has shown `stage`.
    async fn until(&mut self, stage: LinkQrStage) -> anyhow::Result<()> {
        let wanted = i32::from(stage);
        let name = watch::stage_name(wanted);
        match tokio::time::timeout(BROWSER_WAIT, self.seen.wait_for(|s| *s == wanted)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => match (&mut self.task).await {
                Ok(Err(error)) => Err(error.context("the browser's WatchLinkQr failed")),
                Ok(Ok(_)) => anyhow::bail!("the browser's WatchLinkQr ended before {name}"),
                Err(error) => Err(error).context("the browser's watch task failed"),
            },
            Err(_) => anyhow::bail!("the browser did not see {name} within {BROWSER_WAIT:?}"),
        }
    }

    /// Waits until the service ends the stream (after a final state); the last state.
    async fn ended(self) -> anyhow::Result<Option<LinkQrState>> {
        tokio::time::timeout(BROWSER_WAIT, self.task)
            .await
            .context("the browser's WatchLinkQr did not end")?
            .context("the browser's watch task failed")?
    }
}

/// Issues a QR code in the browser.
async fn issue(clients: &mut Clients, citizen: &str) -> anyhow::Result<v1::IssueLinkQrResponse> {
    let request = v1::IssueLinkQrRequest {
        browser_address: BROWSER_ADDRESS.into(),
        request_id: String::new(),
    };
    let qr = clients
        .portal
        .issue_link_qr(bearer(request, citizen)?)
        .await
        .context("IssueLinkQr")?
        .into_inner();
    browser(&format!(
        "QR code {} shown ({} bytes of SVG), expires {}",
        qr.qr_id,
        qr.qr_svg.len(),
        format_time(qr.expires_at.as_ref())
    ));
    Ok(qr)
}

/// What the app shows after scanning: the account, and the code to type in the browser.
fn shown(say: fn(&str), scanned: &v1::ScanQrResponse) {
    say(&format!("You are linking to {}", scanned.account_hint));
    if scanned.matching_code.is_empty() {
        say("No confirmation asked (the service runs with LINKD_QR_CONFIRMATION=off)");
    } else {
        say(&format!(
            "Show this code: {} (type it in the browser by {})",
            scanned.matching_code,
            format_time(scanned.confirm_by.as_ref())
        ));
    }
}

/// The help page's QR flow, with the holder's confirmation in the browser.
pub(super) async fn link_phone(
    clients: &mut Clients,
    keys: &DevKeys,
    account: &str,
    steps: &mut Steps,
) -> anyhow::Result<Phone> {
    let citizen = keys.citizen_token(account, 0)?;
    steps.next("In the browser, 'Link a device' shows a QR code and follows it (WatchLinkQr).");
    let qr = issue(clients, &citizen).await?;
    let mut watch = BrowserWatch::open(clients, &citizen, &qr.qr_id).await?;
    watch.until(LinkQrStage::Issued).await?;

    let device_id = uuid::Uuid::new_v4().to_string();
    steps.next("On the phone: 'Link your device', name 'Anna's phone', method 'QR code'.");
    let start = start_link(
        clients,
        &device_id,
        "Anna's phone",
        "Pixel 8",
        v1::LinkMethod::Qr,
    )
    .await?;
    phone(&format!(
        "link attempt started, expires {}",
        format_time(start.expires_at.as_ref())
    ));

    steps.next("The phone scans the QR code; the browser shows which device did.");
    let scan = v1::ScanQrRequest {
        link_token: start.link_token.clone(),
        qr_payload: qr.qr_payload.clone(),
        request_id: String::new(),
    };
    let scanned = clients
        .device
        .scan_qr(scan.clone())
        .await
        .context("ScanQr")?
        .into_inner();
    shown(phone, &scanned);
    watch.until(LinkQrStage::Scanned).await?;

    let confirmation = !scanned.matching_code.is_empty();
    if confirmation {
        steps.next(
            "In the browser, the holder checks that this is the phone in their hand and types \
             the code it shows.",
        );
        let request = v1::ConfirmLinkRequest {
            qr_id: qr.qr_id.clone(),
            matching_code: scanned.matching_code.clone(),
            request_id: String::new(),
        };
        clients
            .portal
            .confirm_link(bearer(request, &citizen)?)
            .await
            .context("ConfirmLink")?;
        browser(&format!("code {} typed: confirmed", scanned.matching_code));
        watch.until(LinkQrStage::Confirmed).await?;
    }

    steps.next(&format!(
        "On the phone, the holder enters the 6-digit secret code {}.",
        super::CODE
    ));
    let credential = set_code(clients, "[phone]  ", &start.link_token).await?;
    let last = watch.ended().await?;
    browser(&format!(
        "WatchLinkQr ended after {}",
        watch::stage_name(last.map_or(0, |state| state.stage))
    ));
    Ok(Phone {
        device_id,
        credential,
        scan,
        confirmation,
    })
}

/// Anti-phishing: a stranger's phone scans a new QR code of the account (the holder was lured
/// into showing it); the phone cannot link before the holder confirms, and the holder declines.
pub(super) async fn declined_by_holder(
    clients: &mut Clients,
    keys: &DevKeys,
    account: &str,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let citizen = keys.citizen_token(account, 0)?;
    steps.next(
        "Anti-phishing: a phishing page shows the holder a new QR code; a stranger's phone, also \
         named 'Anna's phone', scans it.",
    );
    let qr = issue(clients, &citizen).await?;
    let device_id = uuid::Uuid::new_v4().to_string();
    let start = start_link(
        clients,
        &device_id,
        "Anna's phone",
        "SM-S921B",
        v1::LinkMethod::Qr,
    )
    .await?;
    let request = v1::ScanQrRequest {
        link_token: start.link_token.clone(),
        qr_payload: qr.qr_payload.clone(),
        request_id: String::new(),
    };
    let scanned = clients
        .device
        .scan_qr(request)
        .await
        .context("ScanQr")?
        .into_inner();
    shown(stranger, &scanned);
    match try_set_code(clients, &start.link_token).await {
        Err(status) => stranger(&format!(
            "SetSecretCode refused ({:?}): {}",
            status.code(),
            status.message()
        )),
        Ok(_) => anyhow::bail!("a device set its secret code before the holder confirmed"),
    }

    steps.next("In the browser, the holder sees a scan they did not make, and declines it.");
    let request = v1::GetLinkQrRequest {
        qr_id: qr.qr_id.clone(),
    };
    let state = clients
        .portal
        .get_link_qr(bearer(request, &citizen)?)
        .await
        .context("GetLinkQr")?
        .into_inner();
    browser(&watch::describe(&state));
    let request = v1::DeclineLinkRequest {
        qr_id: qr.qr_id,
        request_id: String::new(),
    };
    let reply = clients
        .portal
        .decline_link(bearer(request, &citizen)?)
        .await
        .context("DeclineLink")?
        .into_inner();
    if let Some(state) = &reply.state {
        browser(&watch::describe(state));
    }
    match try_set_code(clients, &start.link_token).await {
        Err(status) => stranger(&format!(
            "SetSecretCode refused ({:?}): {}",
            status.code(),
            status.message()
        )),
        Ok(_) => anyhow::bail!("a declined device set its secret code"),
    }
    Ok(())
}

async fn try_set_code(
    clients: &mut Clients,
    link_token: &str,
) -> Result<v1::SetSecretCodeResponse, tonic::Status> {
    let request = v1::SetSecretCodeRequest {
        link_token: link_token.into(),
        secret_code: super::CODE.into(),
        request_id: String::new(),
    };
    clients
        .device
        .set_secret_code(request)
        .await
        .map(tonic::Response::into_inner)
}
