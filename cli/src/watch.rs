//! A QR code's states as the browser that shows it follows them (PortalService.GetLinkQr and
//! WatchLinkQr), one line per state, for people: `linkctl get-link-qr`, `linkctl watch-link-qr`
//! and the demo's `[browser]` lines.
//!
//! The device's name and model are text chosen on the scanning device: they are printed quoted
//! and escaped (`{:?}`), so that control characters cannot rewrite the terminal.

use std::io::Write;

use proto::convert::TextForm as _;
use proto::v1::{self, LinkQrStage, LinkQrState, ScannedDevice};
use tonic::Streaming;

use crate::client::format_time;

/// The name printed for a stage (`ISSUED`, `SCANNED` …); `?` for a stage this build does not know.
pub fn stage_name(raw: i32) -> &'static str {
    match LinkQrStage::try_from(raw) {
        Ok(LinkQrStage::Issued) => "ISSUED",
        Ok(LinkQrStage::Scanned) => "SCANNED",
        Ok(LinkQrStage::Confirmed) => "CONFIRMED",
        Ok(LinkQrStage::Declined) => "DECLINED",
        Ok(LinkQrStage::Expired) => "EXPIRED",
        Ok(LinkQrStage::Linked) => "LINKED",
        Ok(LinkQrStage::Scanning) => "SCANNING",
        Ok(LinkQrStage::Void) => "VOID",
        Ok(LinkQrStage::Unspecified) | Err(_) => "?",
    }
}

/// The scanning device in full, as the holder checks it before confirming:
/// `"Anna's phone" (android, model "Pixel 8", app 2.4.1, from 203.0.113.7, device <id>)`.
fn device_details(device: &ScannedDevice) -> String {
    let mut details = vec![
        v1::Platform::text_of(device.platform)
            .unwrap_or("?")
            .to_owned(),
    ];
    if !device.device_model.is_empty() {
        details.push(format!("model {:?}", device.device_model));
    }
    details.push(format!("app {}", device.app_version));
    details.push(if device.client_address.is_empty() {
        "from an unknown address".to_owned()
    } else {
        format!("from {}", device.client_address)
    });
    details.push(format!("device {}", device.device_id));
    format!("{:?} ({})", device.device_name, details.join(", "))
}

/// The scanning device in short: `"Anna's phone" (device <id>)`.
fn device_short(device: &ScannedDevice) -> String {
    format!("{:?} (device {})", device.device_name, device.device_id)
}

/// One line about a QR code's state: its stage and since when, then what that stage adds
/// (the expiry; the scanning device, the confirmation deadline and the matching code choices;
/// the decline reason).
pub fn describe(state: &LinkQrState) -> String {
    let mut parts = vec![format!(
        "{:<9} since {}",
        stage_name(state.stage),
        format_time(state.stage_since.as_ref())
    )];
    let by = state.scanned_by.as_ref();
    match LinkQrStage::try_from(state.stage) {
        Ok(LinkQrStage::Issued) => {
            parts.push(format!(
                "expires {}",
                format_time(state.expires_at.as_ref())
            ));
        }
        Ok(LinkQrStage::Scanned) => {
            if let Some(device) = by {
                parts.push(format!("by {}", device_details(device)));
            }
            if !state.browser_address.is_empty() {
                parts.push(format!("browser at {}", state.browser_address));
            }
            if state.confirm_by.is_some() {
                parts.push(format!(
                    "confirm by {}",
                    format_time(state.confirm_by.as_ref())
                ));
                parts.push(format!(
                    "matching code one of {}",
                    state.matching_code_choices.join(" ")
                ));
            } else {
                parts.push("no confirmation asked".to_owned());
            }
        }
        Ok(LinkQrStage::Declined) => {
            let reason = v1::DeclineReason::text_of(state.decline_reason).unwrap_or("?");
            parts.push(format!("reason {reason}"));
            if let Some(device) = by {
                parts.push(format!("by {}", device_short(device)));
            }
        }
        Ok(LinkQrStage::Confirmed) => {
            if let Some(device) = by {
                parts.push(format!("by {}", device_short(device)));
            }
            if state.link_by.is_some() {
                parts.push(format!(
                    "the phone sets its code by {}",
                    format_time(state.link_by.as_ref())
                ));
            }
        }
        Ok(
            LinkQrStage::Scanning | LinkQrStage::Void | LinkQrStage::Expired | LinkQrStage::Linked,
        ) => {
            if let Some(device) = by {
                parts.push(format!("by {}", device_short(device)));
            }
        }
        Ok(LinkQrStage::Unspecified) | Err(_) => parts.push(format!("stage {}", state.stage)),
    }
    parts.join(", ")
}

/// Reads `states` until the stream ends (the service ends it after a final state), calling
/// `on_state` with each state as it arrives; the last state. A stream error (e.g. the QR code's
/// account changed hands, or the service stopped) is returned as the [`tonic::Status`].
pub async fn follow<F>(
    mut states: Streaming<LinkQrState>,
    mut on_state: F,
) -> anyhow::Result<Option<LinkQrState>>
where
    F: FnMut(&LinkQrState) -> anyhow::Result<()>,
{
    let mut last = None;
    while let Some(state) = states.message().await? {
        on_state(&state)?;
        last = Some(state);
    }
    Ok(last)
}

/// Writes one line per state ([`describe`]) to `out` as it arrives, flushed at once, until the
/// stream ends; the last state.
pub async fn print_states<W: Write>(
    states: Streaming<LinkQrState>,
    out: &mut W,
) -> anyhow::Result<Option<LinkQrState>> {
    follow(states, |state| {
        writeln!(out, "{}", describe(state))?;
        out.flush()?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn phone() -> ScannedDevice {
        ScannedDevice {
            device_id: "d1".into(),
            device_name: "Anna's phone\u{1b}[2J".into(),
            platform: v1::Platform::Android.into(),
            device_model: "Pixel 8".into(),
            app_version: "2.4.1".into(),
            scanned_at: at(60),
            client_address: "203.0.113.7".into(),
        }
    }

    #[test]
    fn an_issued_code_shows_its_expiry() {
        let state = LinkQrState {
            stage: LinkQrStage::Issued.into(),
            stage_since: at(0),
            expires_at: at(120),
            ..LinkQrState::default()
        };
        assert_eq!(
            describe(&state),
            "ISSUED    since 1970-01-01T00:00:00+00:00, expires 1970-01-01T00:02:00+00:00"
        );
    }

    #[test]
    fn a_scanned_code_shows_the_device_the_deadline_and_the_choices_escaped() {
        let state = LinkQrState {
            stage: LinkQrStage::Scanned.into(),
            stage_since: at(60),
            scanned_by: Some(phone()),
            confirm_by: at(180),
            matching_code_choices: vec!["12".into(), "47".into(), "83".into()],
            browser_address: "198.51.100.4".into(),
            ..LinkQrState::default()
        };
        assert_eq!(
            describe(&state),
            "SCANNED   since 1970-01-01T00:01:00+00:00, by \"Anna's phone\\u{1b}[2J\" (android, \
             model \"Pixel 8\", app 2.4.1, from 203.0.113.7, device d1), browser at \
             198.51.100.4, confirm by 1970-01-01T00:03:00+00:00, matching code one of 12 47 83"
        );
    }

    #[test]
    fn a_declined_code_says_why() {
        let state = LinkQrState {
            stage: LinkQrStage::Declined.into(),
            stage_since: at(90),
            scanned_by: Some(phone()),
            decline_reason: v1::DeclineReason::WrongMatchingCode.into(),
            ..LinkQrState::default()
        };
        let line = describe(&state);
        assert!(
            line.starts_with(
                "DECLINED  since 1970-01-01T00:01:30+00:00, reason wrong_matching_code"
            ),
            "{line}"
        );
    }

    #[test]
    fn an_unknown_stage_is_printed_as_such() {
        let state = LinkQrState {
            stage: 42,
            ..LinkQrState::default()
        };
        assert_eq!(describe(&state), "?         since -, stage 42");
    }
}
