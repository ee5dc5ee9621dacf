use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;
use crate::ProductKind;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn account() -> AccountId {
    AccountId("acc-1".into())
}

fn mobile() -> LuxTrustProduct {
    LuxTrustProduct {
        kind: ProductKind::Mobile,
        serial: "M-1".into(),
    }
}

fn requested(method: LinkMethod) -> LinkAttemptEvent {
    LinkAttemptEvent::LinkRequested {
        device_id: DeviceId(Uuid::from_u128(7)),
        device_name: DeviceName::parse("Anna's phone").unwrap(),
        method,
        platform: Platform::Android,
        device_model: None,
        app_version: "2.4.1".into(),
        nonce: "nonce-1".into(),
        at: t(0),
        expires_at: t(600),
    }
}

fn qr_accepted() -> LinkAttemptEvent {
    LinkAttemptEvent::QrAccepted {
        qr_id: QrId(Uuid::from_u128(9)),
        account_id: account(),
        at: t(5),
        confirm_by: None,
        client_address: None,
    }
}

fn luxtrust(used: bool, nonce: &str, at: DateTime<Utc>) -> LinkAttemptCommand {
    LinkAttemptCommand::AcceptLuxTrust {
        account_id: account(),
        account_registered: true,
        product: mobile(),
        product_used_for_login: used,
        nonce: nonce.into(),
        at,
    }
}

fn start(device_already_linked: bool) -> LinkAttemptCommand {
    LinkAttemptCommand::Start {
        device_id: DeviceId(Uuid::from_u128(7)),
        device_name: DeviceName::parse("Anna's phone").unwrap(),
        method: LinkMethod::Qr,
        platform: Platform::Android,
        device_model: None,
        app_version: "2.4.1".into(),
        device_already_linked,
        nonce: "nonce-1".into(),
        at: t(0),
        expires_at: t(600),
    }
}

#[test]
fn linking_starts_with_a_device_name_and_a_method() {
    TestFramework::<LinkAttempt>::with(())
        .given_no_previous_events()
        .when(start(false))
        .then_expect_events(vec![requested(LinkMethod::Qr)]);
}

#[test]
fn a_device_linked_to_an_account_cannot_start_linking_again() {
    TestFramework::<LinkAttempt>::with(())
        .given_no_previous_events()
        .when(start(true))
        .then_expect_error(LinkAttemptError::DeviceAlreadyLinked);
}

#[test]
fn luxtrust_cannot_link_to_an_account_the_portal_never_registered() {
    let LinkAttemptCommand::AcceptLuxTrust {
        account_id,
        product,
        product_used_for_login,
        nonce,
        at,
        ..
    } = luxtrust(true, "nonce-1", t(5))
    else {
        unreachable!("luxtrust() builds AcceptLuxTrust");
    };
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(LinkAttemptCommand::AcceptLuxTrust {
            account_id,
            account_registered: false,
            product,
            product_used_for_login,
            nonce,
            at,
        })
        .then_expect_error(LinkAttemptError::AccountNotRegistered);
}

#[test]
fn a_scanned_qr_code_identifies_the_account_to_link() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr)])
        .when(LinkAttemptCommand::AcceptQr {
            qr_id: QrId(Uuid::from_u128(9)),
            account_id: account(),
            at: t(5),
            confirm_by: None,
            client_address: None,
        })
        .then_expect_events(vec![qr_accepted()]);
}

#[test]
fn a_qr_code_cannot_serve_an_attempt_that_chose_luxtrust() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(LinkAttemptCommand::AcceptQr {
            qr_id: QrId(Uuid::from_u128(9)),
            account_id: account(),
            at: t(5),
            confirm_by: None,
            client_address: None,
        })
        .then_expect_error(LinkAttemptError::WrongMethod {
            chosen: LinkMethod::LuxTrust,
        });
}

#[test]
fn a_luxtrust_product_used_to_log_in_authenticates_the_attempt() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(luxtrust(true, "nonce-1", t(5)))
        .then_expect_events(vec![LinkAttemptEvent::LuxTrustAuthenticated {
            account_id: account(),
            product: mobile(),
            at: t(5),
        }]);
}

#[test]
fn a_luxtrust_product_never_used_to_log_in_cannot_link_a_device() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(luxtrust(false, "nonce-1", t(5)))
        .then_expect_error(LinkAttemptError::ProductNeverUsedForLogin);
}

#[test]
fn a_luxtrust_assertion_made_for_another_attempt_is_refused() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(luxtrust(true, "nonce-of-someone-else", t(5)))
        .then_expect_error(LinkAttemptError::NonceMismatch);
}

#[test]
fn an_expired_attempt_cannot_be_authenticated() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::LuxTrust)])
        .when(luxtrust(true, "nonce-1", t(600)))
        .then_expect_error(LinkAttemptError::Expired { expired_at: t(600) });
}

#[test]
fn an_attempt_is_authenticated_only_once() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr), qr_accepted()])
        .when(LinkAttemptCommand::AcceptQr {
            qr_id: QrId(Uuid::from_u128(10)),
            account_id: AccountId("acc-2".into()),
            at: t(6),
            confirm_by: None,
            client_address: None,
        })
        .then_expect_error(LinkAttemptError::AlreadyAuthenticated);
}

#[test]
fn the_secret_code_comes_after_authentication() {
    let mut attempt = LinkAttempt::default();
    attempt.apply(requested(LinkMethod::Qr));
    assert_eq!(
        attempt.ready_to_link(t(10), false),
        Err(LinkAttemptError::NotAuthenticated)
    );
    attempt.apply(qr_accepted());
    let ready = attempt.ready_to_link(t(10), false).unwrap();
    assert_eq!(ready.account_id, account());
    assert_eq!(ready.method, LinkMethod::Qr);
    assert_eq!(ready.product, None);
}

#[test]
fn a_completed_attempt_cannot_link_again() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![
            requested(LinkMethod::Qr),
            qr_accepted(),
            LinkAttemptEvent::LinkCompleted { at: t(20) },
        ])
        .when(LinkAttemptCommand::Complete {
            at: t(21),
            qr_confirmation_required: false,
        })
        .then_expect_error(LinkAttemptError::AlreadyCompleted);
}

#[test]
fn a_link_covers_the_whole_account_not_an_espace() {
    // R6: the only thing an attempt links to is an account id; there is no eSpace anywhere.
    let mut attempt = LinkAttempt::default();
    attempt.apply(requested(LinkMethod::LuxTrust));
    attempt.apply(LinkAttemptEvent::LuxTrustAuthenticated {
        account_id: account(),
        product: mobile(),
        at: t(5),
    });
    assert_eq!(
        attempt.ready_to_link(t(6), false).unwrap().account_id,
        account()
    );
}

#[test]
fn a_retried_scan_of_the_same_qr_code_changes_nothing() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr), qr_accepted()])
        .when(LinkAttemptCommand::AcceptQr {
            qr_id: QrId(Uuid::from_u128(9)),
            account_id: account(),
            at: t(6),
            confirm_by: None,
            client_address: None,
        })
        .then_expect_events(vec![]);
}

#[test]
fn an_unregistered_account_is_refused_before_the_attempt_is_looked_at() {
    // As the service did before the rule moved here: the account first, then the attempt.
    let LinkAttemptCommand::AcceptLuxTrust {
        account_id,
        product,
        nonce,
        ..
    } = luxtrust(true, "nonce-1", t(5))
    else {
        unreachable!("luxtrust() builds AcceptLuxTrust");
    };
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr)])
        .when(LinkAttemptCommand::AcceptLuxTrust {
            account_id,
            account_registered: false,
            product,
            product_used_for_login: false,
            nonce,
            at: t(10_000),
        })
        .then_expect_error(LinkAttemptError::AccountNotRegistered);
}

fn qr_accepted_pending(by: DateTime<Utc>) -> LinkAttemptEvent {
    LinkAttemptEvent::QrAccepted {
        qr_id: QrId(Uuid::from_u128(9)),
        account_id: account(),
        at: t(5),
        confirm_by: Some(by),
        client_address: Some("192.0.2.7".parse().unwrap()),
    }
}

fn scanned_awaiting_confirmation() -> Vec<LinkAttemptEvent> {
    vec![requested(LinkMethod::Qr), qr_accepted_pending(t(125))]
}

fn attempt_after(events: Vec<LinkAttemptEvent>) -> LinkAttempt {
    let mut attempt = LinkAttempt::default();
    for event in events {
        attempt.apply(event);
    }
    attempt
}

#[test]
fn a_scanned_qr_link_waits_for_the_holder_before_the_secret_code() {
    let attempt = attempt_after(scanned_awaiting_confirmation());
    assert_eq!(
        attempt.ready_to_link(t(10), false),
        Err(LinkAttemptError::AwaitingConfirmation)
    );
}

#[test]
fn the_right_matching_code_confirms_the_link() {
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(30),
        })
        .then_expect_events(vec![LinkAttemptEvent::LinkConfirmed { at: t(30) }]);
    let mut events = scanned_awaiting_confirmation();
    events.push(LinkAttemptEvent::LinkConfirmed { at: t(30) });
    assert!(attempt_after(events).ready_to_link(t(31), false).is_ok());
}

#[test]
fn a_wrong_matching_code_declines_the_link_at_the_first_try() {
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: false,
            at: t(30),
        })
        .then_expect_events(vec![LinkAttemptEvent::LinkDeclined {
            reason: DeclineReason::WrongMatchingCode,
            at: t(30),
        }]);
    let mut events = scanned_awaiting_confirmation();
    events.push(LinkAttemptEvent::LinkDeclined {
        reason: DeclineReason::WrongMatchingCode,
        at: t(30),
    });
    TestFramework::<LinkAttempt>::with(())
        .given(events.clone())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(31),
        })
        .then_expect_error(LinkAttemptError::Declined {
            reason: DeclineReason::WrongMatchingCode,
        });
    assert_eq!(
        attempt_after(events).ready_to_link(t(31), false),
        Err(LinkAttemptError::Declined {
            reason: DeclineReason::WrongMatchingCode
        })
    );
}

#[test]
fn confirming_twice_with_the_right_code_changes_nothing() {
    let mut events = scanned_awaiting_confirmation();
    events.push(LinkAttemptEvent::LinkConfirmed { at: t(30) });
    TestFramework::<LinkAttempt>::with(())
        .given(events.clone())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(40),
        })
        .then_expect_events(vec![]);
    TestFramework::<LinkAttempt>::with(())
        .given(events)
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: false,
            at: t(40),
        })
        .then_expect_error(LinkAttemptError::AlreadyConfirmed);
}

#[test]
fn without_a_confirmation_in_time_the_link_dies() {
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(125),
        })
        .then_expect_error(LinkAttemptError::ConfirmationExpired { expired_at: t(125) });
    assert_eq!(
        attempt_after(scanned_awaiting_confirmation()).ready_to_link(t(125), false),
        Err(LinkAttemptError::ConfirmationExpired { expired_at: t(125) })
    );
}

#[test]
fn the_holder_can_decline_until_confirming() {
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(9)),
            at: t(30),
        })
        .then_expect_events(vec![LinkAttemptEvent::LinkDeclined {
            reason: DeclineReason::ByHolder,
            at: t(30),
        }]);
    let mut confirmed = scanned_awaiting_confirmation();
    confirmed.push(LinkAttemptEvent::LinkConfirmed { at: t(30) });
    TestFramework::<LinkAttempt>::with(())
        .given(confirmed)
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(9)),
            at: t(40),
        })
        .then_expect_error(LinkAttemptError::AlreadyConfirmed);
}

#[test]
fn declining_a_dead_link_changes_nothing() {
    let mut declined = scanned_awaiting_confirmation();
    declined.push(LinkAttemptEvent::LinkDeclined {
        reason: DeclineReason::ByHolder,
        at: t(30),
    });
    TestFramework::<LinkAttempt>::with(())
        .given(declined)
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(9)),
            at: t(31),
        })
        .then_expect_events(vec![]);
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(9)),
            at: t(200),
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_link_that_asks_for_no_confirmation_has_none_to_give() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr), qr_accepted()])
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(30),
        })
        .then_expect_error(LinkAttemptError::NothingToConfirm);
}

#[test]
fn events_recorded_before_confirmations_existed_still_read() {
    // A QrAccepted and a LinkRequested as stored before issue 12: no confirmation, no model.
    let old: LinkAttemptEvent = serde_json::from_value(serde_json::json!({
        "QrAccepted": {"qr_id": Uuid::from_u128(9), "account_id": "acc-1", "at": t(5)}
    }))
    .unwrap();
    assert_eq!(old, qr_accepted());
    let old: LinkAttemptEvent = serde_json::from_value(serde_json::json!({
        "LinkRequested": {
            "device_id": Uuid::from_u128(7), "device_name": "Anna's phone", "method": "Qr",
            "platform": "Android", "app_version": "2.4.1", "nonce": "nonce-1",
            "at": t(0), "expires_at": t(600)
        }
    }))
    .unwrap();
    assert_eq!(old, requested(LinkMethod::Qr));
}

#[test]
fn the_holder_answers_only_for_the_qr_code_the_attempt_accepted() {
    // Two QR codes raced on one attempt: the one it did not accept cannot confirm it.
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(10)),
            matching_code_matches: true,
            at: t(30),
        })
        .then_expect_error(LinkAttemptError::ScannedAnotherQr);
    TestFramework::<LinkAttempt>::with(())
        .given(scanned_awaiting_confirmation())
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(10)),
            at: t(30),
        })
        .then_expect_error(LinkAttemptError::ScannedAnotherQr);
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr)])
        .when(LinkAttemptCommand::Confirm {
            qr_id: QrId(Uuid::from_u128(9)),
            matching_code_matches: true,
            at: t(30),
        })
        .then_expect_error(LinkAttemptError::ScanNotRecorded);
}

#[test]
fn a_scan_that_asked_no_confirmation_cannot_link_once_confirmation_is_required() {
    // Recorded before confirmations existed, or by an instance with confirmation off.
    let attempt = attempt_after(vec![requested(LinkMethod::Qr), qr_accepted()]);
    assert_eq!(
        attempt.ready_to_link(t(10), true),
        Err(LinkAttemptError::UnconfirmedScan)
    );
    assert!(attempt.ready_to_link(t(10), false).is_ok());
    // LuxTrust links need no confirmation either way.
    let luxtrust = attempt_after(vec![
        requested(LinkMethod::LuxTrust),
        LinkAttemptEvent::LuxTrustAuthenticated {
            account_id: account(),
            product: mobile(),
            at: t(5),
        },
    ]);
    assert!(luxtrust.ready_to_link(t(10), true).is_ok());
}

#[test]
fn declining_a_confirmed_link_past_its_expiry_changes_nothing() {
    let mut confirmed = scanned_awaiting_confirmation();
    confirmed.push(LinkAttemptEvent::LinkConfirmed { at: t(30) });
    TestFramework::<LinkAttempt>::with(())
        .given(confirmed)
        .when(LinkAttemptCommand::Decline {
            qr_id: QrId(Uuid::from_u128(9)),
            at: t(600),
        })
        .then_expect_events(vec![]);
}
