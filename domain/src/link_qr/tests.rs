use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn attempt(n: u128) -> LinkAttemptId {
    LinkAttemptId(Uuid::from_u128(n))
}

fn device(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(1000 + n))
}

fn issued() -> LinkQrEvent {
    LinkQrEvent::QrIssued {
        account_id: AccountId("acc-1".into()),
        at: t(0),
        expires_at: t(120),
    }
}

fn consume(n: u128, at: DateTime<Utc>) -> LinkQrCommand {
    LinkQrCommand::Consume {
        attempt_id: attempt(n),
        device_id: device(n),
        at,
    }
}

fn consumed(n: u128, at: DateTime<Utc>) -> LinkQrEvent {
    LinkQrEvent::QrConsumed {
        attempt_id: attempt(n),
        device_id: device(n),
        at,
    }
}

#[test]
fn a_qr_code_is_issued_to_an_account_with_an_expiry() {
    TestFramework::<LinkQr>::with(())
        .given_no_previous_events()
        .when(LinkQrCommand::Issue {
            account_id: AccountId("acc-1".into()),
            account_registered: true,
            at: t(0),
            expires_at: t(120),
        })
        .then_expect_events(vec![issued()]);
}

#[test]
fn a_scanned_qr_code_is_consumed() {
    TestFramework::<LinkQr>::with(())
        .given(vec![issued()])
        .when(consume(1, t(10)))
        .then_expect_events(vec![consumed(1, t(10))]);
}

#[test]
fn a_qr_code_links_only_one_device() {
    TestFramework::<LinkQr>::with(())
        .given(vec![issued(), consumed(1, t(10))])
        .when(consume(2, t(20)))
        .then_expect_error(LinkQrError::QrAlreadyConsumed);
}

#[test]
fn a_retried_scan_by_the_same_attempt_changes_nothing() {
    TestFramework::<LinkQr>::with(())
        .given(vec![issued(), consumed(1, t(10))])
        .when(consume(1, t(11)))
        .then_expect_events(vec![]);
}

#[test]
fn an_expired_qr_code_is_refused() {
    TestFramework::<LinkQr>::with(())
        .given(vec![issued()])
        .when(consume(1, t(120)))
        .then_expect_error(LinkQrError::QrExpired { expired_at: t(120) });
}

#[test]
fn an_unknown_qr_code_is_refused() {
    TestFramework::<LinkQr>::with(())
        .given_no_previous_events()
        .when(consume(1, t(1)))
        .then_expect_error(LinkQrError::NotIssued);
}

#[test]
fn a_qr_id_is_issued_only_once() {
    TestFramework::<LinkQr>::with(())
        .given(vec![issued()])
        .when(LinkQrCommand::Issue {
            account_id: AccountId("acc-2".into()),
            account_registered: true,
            at: t(1),
            expires_at: t(121),
        })
        .then_expect_error(LinkQrError::AlreadyIssued);
}

#[test]
fn only_an_account_the_portal_registered_gets_a_qr_code() {
    TestFramework::<LinkQr>::with(())
        .given_no_previous_events()
        .when(LinkQrCommand::Issue {
            account_id: AccountId("acc-1".into()),
            account_registered: false,
            at: t(0),
            expires_at: t(120),
        })
        .then_expect_error(LinkQrError::AccountNotRegistered);
}
