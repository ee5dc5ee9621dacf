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
        })
        .then_expect_error(LinkAttemptError::AlreadyAuthenticated);
}

#[test]
fn the_secret_code_comes_after_authentication() {
    let mut attempt = LinkAttempt::default();
    attempt.apply(requested(LinkMethod::Qr));
    assert_eq!(
        attempt.ready_to_link(t(10)),
        Err(LinkAttemptError::NotAuthenticated)
    );
    attempt.apply(qr_accepted());
    let ready = attempt.ready_to_link(t(10)).unwrap();
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
        .when(LinkAttemptCommand::Complete { at: t(21) })
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
    assert_eq!(attempt.ready_to_link(t(6)).unwrap().account_id, account());
}

#[test]
fn a_retried_scan_of_the_same_qr_code_changes_nothing() {
    TestFramework::<LinkAttempt>::with(())
        .given(vec![requested(LinkMethod::Qr), qr_accepted()])
        .when(LinkAttemptCommand::AcceptQr {
            qr_id: QrId(Uuid::from_u128(9)),
            account_id: account(),
            at: t(6),
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
