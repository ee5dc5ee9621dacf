//! Property tests (issue 17, point 6): any sequence of commands keeps the domain's invariants.
//! proptest, on the stable toolchain CI runs; `PROPTEST_CASES=100000 cargo test -p domain --test
//! properties --release` runs a longer campaign (README, "Property tests and fuzzing").
//!
//! - One device ↔ one account: a device linked to an account is never linked again (to it by
//!   another link, or to anyone else) before an unlink; only its own link's credential acts on
//!   it, and only its holder unlinks it from the portal.
//! - At most 5 consecutive wrong secret codes: the fifth unlinks the device in the same
//!   decision, and the count restarts at a right code or a new link.
//! - A QR code is used once: whatever attempts scan it, in any order and at any time, at most
//!   one `QrConsumed` is ever decided, never at or after its expiry.
//! - State is what the events say: the state after the decisions equals a fresh aggregate that
//!   applied the same events after a round trip through their stored JSON.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a failed property should fail the test loudly"
)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::Aggregate;
use domain::{
    AccountId, Device, DeviceCommand, DeviceEvent, DeviceId, DeviceName, LinkAttemptId, LinkMethod,
    LinkQr, LinkQrCommand, LinkQrEvent, MAX_SECRET_CODE_FAILURES, Platform, UnlinkReason,
};
use proptest::prelude::*;
use uuid::Uuid;

const ACCOUNTS: [&str; 3] = ["anna", "bob", "carla"];

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap() + Duration::seconds(seconds)
}

fn link(n: u8) -> LinkAttemptId {
    LinkAttemptId(Uuid::from_u128(u128::from(n) + 1))
}

fn account(n: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[n]).unwrap()
}

/// A device command over a few links and accounts, so that sequences collide often: the same
/// link twice, another link while linked, a stale link's credential, a stranger's unlink.
fn device_command() -> impl Strategy<Value = DeviceCommand> {
    let link_id = (0u8..4).prop_map(link);
    let account_index = 0..ACCOUNTS.len();
    let at = (0i64..10_000_000).prop_map(t);
    prop_oneof![
        3 => (link_id.clone(), account_index.clone(), at.clone()).prop_map(|(link_id, who, at)| {
            DeviceCommand::Link {
                link_id,
                account_id: account(who),
                device_name: DeviceName::parse("Anna's phone").unwrap(),
                method: LinkMethod::Qr,
                product: None,
                platform: Platform::Android,
                app_version: "2.1".into(),
                at,
            }
        }),
        2 => (link_id.clone(), any::<bool>(), at.clone()).prop_map(|(link_id, enabled, at)| {
            DeviceCommand::SetBiometrics { link_id, enabled, at }
        }),
        6 => (link_id.clone(), prop::bool::weighted(0.25), at.clone()).prop_map(
            |(link_id, matches, at)| DeviceCommand::RecordSecretCodeCheck { link_id, matches, at }
        ),
        1 => (link_id.clone(), at.clone())
            .prop_map(|(link_id, at)| DeviceCommand::UnlinkFromDevice { link_id, at }),
        1 => (link_id.clone(), account_index, any::<bool>(), any::<bool>(), at.clone()).prop_map(
            |(link_id, who, help_desk, in_bulk, at)| DeviceCommand::UnlinkFromPortal {
                account_id: account(who),
                link_id,
                reason: if help_desk { UnlinkReason::HelpDesk } else { UnlinkReason::FromPortal },
                in_bulk,
                at,
            }
        ),
        1 => (link_id.clone(), at.clone(), 1i64..100).prop_map(|(link_id, at, days)| {
            DeviceCommand::WarnInactive {
                link_id,
                last_used_at: at - Duration::days(days),
                unlink_at: at + Duration::days(14),
                at,
            }
        }),
        1 => (link_id, at, 1i64..100).prop_map(|(link_id, at, days)| {
            DeviceCommand::UnlinkInactive { link_id, last_used_at: at - Duration::days(days), at }
        }),
    ]
}

/// The link a command's caller holds, and the account a portal unlink comes from.
fn caller(command: &DeviceCommand) -> (LinkAttemptId, Option<AccountId>) {
    match command {
        DeviceCommand::Link { link_id, .. }
        | DeviceCommand::SetBiometrics { link_id, .. }
        | DeviceCommand::RecordSecretCodeCheck { link_id, .. }
        | DeviceCommand::WarnInactive { link_id, .. }
        | DeviceCommand::UnlinkInactive { link_id, .. }
        | DeviceCommand::UnlinkFromDevice { link_id, .. } => (*link_id, None),
        DeviceCommand::UnlinkFromPortal {
            link_id,
            account_id,
            ..
        } => (*link_id, Some(account_id.clone())),
    }
}

/// Applies `events` to `aggregate` as loading does: each stored as JSON and read back.
fn replayed<A>(events: &[A::Event]) -> A
where
    A: Aggregate + Default,
    A::Event: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut aggregate = A::default();
    for event in events {
        let stored = serde_json::to_string(event).unwrap();
        let loaded: A::Event = serde_json::from_str(&stored).unwrap();
        assert_eq!(&loaded, event, "{stored}");
        aggregate.apply(loaded);
    }
    aggregate
}

/// `PROPTEST_CASES` if set (a longer run), else `default` (the suite's).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_of_device_commands_keeps_the_device_invariants(
        commands in prop::collection::vec(device_command(), 1..60)
    ) {
        let mut device = Device::default();
        let mut history: Vec<DeviceEvent> = Vec::new();
        // The model: the current link and account, and the wrong codes in a row.
        let mut current: Option<(LinkAttemptId, AccountId)> = None;
        let mut failures = 0u32;
        for command in commands {
            let before = device.clone();
            let (link_id, portal_account) = caller(&command);
            let is_link = matches!(command, DeviceCommand::Link { .. });
            let decided = device.decide(command);
            let Ok(events) = decided else {
                // A refusal changes nothing (the aggregate is only changed by events).
                prop_assert_eq!(&device, &before);
                continue;
            };
            // Only the current link's credential (or the link being made) acts on the device,
            // and only its holder unlinks it from the portal.
            if !events.is_empty() {
                match (&current, is_link) {
                    (None, true) => {}
                    (None, false) => prop_assert!(false, "an unlinked device decided {:?}", events),
                    (Some((current_link, holder)), _) => {
                        prop_assert_eq!(*current_link, link_id, "a stale link acted: {:?}", events);
                        if let Some(asking) = &portal_account {
                            prop_assert_eq!(asking, holder);
                        }
                    }
                }
            }
            for event in &events {
                match event {
                    DeviceEvent::DeviceLinked { link_id, account_id, .. } => {
                        prop_assert!(current.is_none(), "linked while linked: {:?}", current);
                        current = Some((*link_id, account_id.clone()));
                        failures = 0;
                    }
                    DeviceEvent::SecretCodeFailed { consecutive_failures, attempts_left, .. } => {
                        failures += 1;
                        prop_assert_eq!(*consecutive_failures, failures);
                        prop_assert_eq!(*attempts_left, MAX_SECRET_CODE_FAILURES - failures);
                        prop_assert!(failures <= MAX_SECRET_CODE_FAILURES);
                    }
                    DeviceEvent::SecretCodeVerified { .. } => failures = 0,
                    DeviceEvent::DeviceUnlinked { reason, account_id, .. } => {
                        let (_, holder) = current.take().unwrap();
                        prop_assert_eq!(account_id, &holder);
                        prop_assert_eq!(
                            *reason == UnlinkReason::LockedOut,
                            failures == MAX_SECRET_CODE_FAILURES
                        );
                        failures = 0;
                    }
                    DeviceEvent::BiometricsEnabled { .. }
                    | DeviceEvent::BiometricsSkipped { .. }
                    | DeviceEvent::BiometricsDisabled { .. }
                    | DeviceEvent::InactivityWarned { .. } => {}
                }
                device.apply(event.clone());
            }
            // The fifth wrong code in a row unlinks in the same decision.
            prop_assert!(failures < MAX_SECRET_CODE_FAILURES);
            prop_assert_eq!(device.linked_account(), current.as_ref().map(|(_, a)| a));
            prop_assert_eq!(device.consecutive_failures(), failures);
            history.extend(events);
        }
        prop_assert_eq!(replayed::<Device>(&history), device);
    }

    #[test]
    fn a_qr_code_is_consumed_once_whatever_scans_it(
        lifetime in 1i64..600,
        scans in prop::collection::vec((0u8..5, -10i64..700), 0..30),
        issues in 1usize..3,
    ) {
        let mut qr = LinkQr::default();
        let mut history: Vec<LinkQrEvent> = Vec::new();
        let expires_at = t(lifetime);
        for _ in 0..issues {
            let issued = qr.decide(LinkQrCommand::Issue {
                account_id: account(0),
                account_registered: true,
                at: t(0),
                expires_at,
                browser_address: None,
            });
            let Ok(events) = issued else {
                prop_assert!(!history.is_empty(), "the first issue is refused");
                continue;
            };
            prop_assert!(history.is_empty(), "issued twice");
            for event in events {
                qr.apply(event.clone());
                history.push(event);
            }
        }
        for (attempt, at) in scans {
            let Ok(events) = qr.decide(LinkQrCommand::Consume {
                attempt_id: link(attempt),
                device_id: DeviceId(Uuid::from_u128(u128::from(attempt) + 100)),
                at: t(at),
            }) else {
                continue;
            };
            for event in events {
                if let LinkQrEvent::QrConsumed { at, .. } = &event {
                    prop_assert!(*at < expires_at, "consumed at {} after {}", at, expires_at);
                }
                qr.apply(event.clone());
                history.push(event);
            }
        }
        let consumed = history
            .iter()
            .filter(|event| matches!(event, LinkQrEvent::QrConsumed { .. }))
            .count();
        prop_assert!(consumed <= 1, "{:?}", history);
        prop_assert_eq!(qr.consumed_by().is_some(), consumed == 1);
        prop_assert_eq!(replayed::<LinkQr>(&history), qr);
    }
}
