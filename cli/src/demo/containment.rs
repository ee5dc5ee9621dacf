//! The demo's containment part: two more devices are linked (LuxTrust, the quickest way), then
//! the holder, whose account was compromised, unlinks every device in one call (one summary
//! email instead of one per device). On the way, a third device shows the device cap, but only
//! when the server's cap is that small (the demo never fills the default cap of 5).

use anyhow::Context as _;
use proto::convert::text;
use proto::v1;
use uuid::Uuid;

use super::{Steps, list_devices, set_code, start_link};
use crate::client::{Clients, bearer};
use crate::dev::DevKeys;
use crate::errors;

/// The devices linked here (name, model, label); the last one only probes the cap.
const DEVICES: [(&str, &str, &str); 3] = [
    ("Work phone", "Pixel 9", "[work phone] "),
    ("Old tablet", "Lenovo Tab P12", "[old tablet] "),
    ("Spare phone", "Galaxy A55", "[spare phone]"),
];

/// How many of [`DEVICES`] the demo links.
const LINKED: usize = 2;

/// Links two devices and unlinks both in one call; the LuxTrust login with `serial` is recorded
/// for `account` already.
pub(super) async fn run(
    clients: &mut Clients,
    keys: &DevKeys,
    account: &str,
    serial: &str,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    println!("\n== Containment ==");
    steps.next(
        "Two more devices are linked with LuxTrust; a third tries: is there room under the \
         account's device cap (LINKD_MAX_DEVICES_PER_ACCOUNT)?",
    );
    let mut linked = Vec::new();
    for (name, model, who) in DEVICES {
        let device_id = Uuid::new_v4().to_string();
        let start = start_link(clients, &device_id, name, model, v1::LinkMethod::Luxtrust).await?;
        let assertion =
            keys.luxtrust_assertion(account, text::MOBILE, serial, &start.luxtrust_nonce)?;
        let request = v1::AuthenticateWithLuxTrustRequest {
            link_token: start.link_token.clone(),
            assertion,
            request_id: String::new(),
        };
        match clients.device.authenticate_with_lux_trust(request).await {
            Err(refused) if errors::least_recently_used(&refused).is_some() => {
                println!(
                    "    {who} refused ({:?}): {}",
                    refused.code(),
                    refused.message()
                );
                for line in errors::details(&refused) {
                    println!("    {who} {line}");
                }
                println!("    (to link it, the holder would unlink that device first)");
                break;
            }
            Err(status) => return Err(status).context("AuthenticateWithLuxTrust"),
            Ok(_) if linked.len() < LINKED => {
                set_code(clients, who, &start.link_token).await?;
                linked.push(device_id);
            }
            Ok(_) => println!(
                "    {who} LuxTrust accepted: the cap is above {LINKED} devices (default 5); \
                 the demo does not fill it and leaves this attempt to expire"
            ),
        }
    }

    steps.next(
        "The account was compromised: after re-authenticating, the holder unlinks every device \
         in one call (all devices).",
    );
    let request = v1::UnlinkDevicesRequest {
        all_devices: true,
        ..Default::default()
    };
    let reply = clients
        .portal
        .unlink_devices(bearer(request, &keys.citizen_token(account, 0)?)?)
        .await
        .context("UnlinkDevices")?
        .into_inner();
    let unlinked = &reply.unlinked_device_ids;
    println!(
        "    unlinked in one call: {} device(s): {}",
        unlinked.len(),
        unlinked.join(", ")
    );
    if unlinked.len() > 1 {
        println!("    the holder gets one summary email for them, not one per device");
    }
    if unlinked.len() != linked.len() {
        anyhow::bail!("linked {linked:?}, but unlinking every device ended {unlinked:?}");
    }
    list_devices(clients, keys, account, &reply.consistency_token).await
}
