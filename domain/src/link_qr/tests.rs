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
        browser_address: None,
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
            browser_address: None,
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
            browser_address: None,
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
            browser_address: None,
        })
        .then_expect_error(LinkQrError::AccountNotRegistered);
}

mod progress {
    use super::*;
    use crate::{
        Confirmation, DeclineReason, DeviceName, LinkAttempt, LinkAttemptEvent, LinkMethod,
        Platform, QrId, QrProgress,
    };

    fn qr_after(events: Vec<LinkQrEvent>) -> LinkQr {
        let mut qr = LinkQr::default();
        for event in events {
            qr.apply(event);
        }
        qr
    }

    fn attempt_after(extra: Vec<LinkAttemptEvent>) -> LinkAttempt {
        let mut attempt = LinkAttempt::default();
        attempt.apply(LinkAttemptEvent::LinkRequested {
            device_id: device(1),
            device_name: DeviceName::parse("Phone").unwrap(),
            method: LinkMethod::Qr,
            platform: Platform::Ios,
            device_model: Some("iPhone 15".into()),
            app_version: "3.0".into(),
            nonce: "n".into(),
            at: t(5),
            expires_at: t(605),
        });
        attempt.apply(LinkAttemptEvent::QrAccepted {
            qr_id: QrId(Uuid::from_u128(1)),
            account_id: AccountId("acc-1".into()),
            at: t(10),
            confirm_by: Some(t(130)),
            client_address: None,
        });
        for event in extra {
            attempt.apply(event);
        }
        attempt
    }

    fn stage(progress: Option<&QrProgress>) -> &'static str {
        match progress {
            None => "none",
            Some(QrProgress::Issued { .. }) => "issued",
            Some(QrProgress::Scanned { .. }) => "scanned",
            Some(QrProgress::Confirmed { .. }) => "confirmed",
            Some(QrProgress::Declined { .. }) => "declined",
            Some(QrProgress::Expired { .. }) => "expired",
            Some(QrProgress::Linked { .. }) => "linked",
            Some(QrProgress::Scanning { .. }) => "scanning",
            Some(QrProgress::Void { .. }) => "void",
        }
    }

    #[test]
    fn a_qr_code_goes_from_issued_to_linked() {
        let shown = qr_after(vec![issued()]);
        assert_eq!(
            stage(
                QrProgress::of(&LinkQr::default(), QrId(Uuid::from_u128(1)), None, t(1)).as_ref()
            ),
            "none"
        );
        assert_eq!(
            stage(QrProgress::of(&shown, QrId(Uuid::from_u128(1)), None, t(1)).as_ref()),
            "issued"
        );
        assert_eq!(
            stage(QrProgress::of(&shown, QrId(Uuid::from_u128(1)), None, t(120)).as_ref()),
            "expired"
        );
        let scanned = qr_after(vec![issued(), consumed(1, t(10))]);
        let attempt = attempt_after(vec![]);
        let progress = QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&attempt), t(20));
        let Some(QrProgress::Scanned { by, confirm_by }) = &progress else {
            panic!("expected scanned, got {progress:?}");
        };
        assert_eq!(*confirm_by, Some(t(130)));
        assert_eq!(by.device_model.as_deref(), Some("iPhone 15"));
        assert_eq!(by.scanned_at, Some(t(10)));
        assert!(!progress.as_ref().is_some_and(QrProgress::is_final));
        assert_eq!(
            stage(
                QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&attempt), t(130)).as_ref()
            ),
            "expired"
        );
        let confirmed = attempt_after(vec![LinkAttemptEvent::LinkConfirmed { at: t(30) }]);
        assert_eq!(
            confirmed.confirmation(),
            Confirmation::Confirmed { at: t(30) }
        );
        assert_eq!(
            stage(
                QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&confirmed), t(200))
                    .as_ref()
            ),
            "confirmed"
        );
        assert_eq!(
            stage(
                QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&confirmed), t(605))
                    .as_ref()
            ),
            "expired"
        );
        let linked = attempt_after(vec![
            LinkAttemptEvent::LinkConfirmed { at: t(30) },
            LinkAttemptEvent::LinkCompleted { at: t(40) },
        ]);
        let progress = QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&linked), t(9000));
        assert_eq!(stage(progress.as_ref()), "linked");
        assert!(progress.is_some_and(|p| p.is_final()));
        assert_eq!(
            stage(
                QrProgress::of(&scanned, QrId(Uuid::from_u128(2)), Some(&attempt), t(20)).as_ref()
            ),
            "void",
            "the attempt went on with another QR code"
        );
        let declined = attempt_after(vec![LinkAttemptEvent::LinkDeclined {
            reason: DeclineReason::ByHolder,
            at: t(30),
        }]);
        assert_eq!(
            stage(
                QrProgress::of(&scanned, QrId(Uuid::from_u128(1)), Some(&declined), t(31)).as_ref()
            ),
            "declined"
        );
    }
}

#[test]
fn a_scan_not_yet_recorded_on_the_attempt_is_scanning_then_expires() {
    use crate::{DeviceName, LinkAttempt, LinkAttemptEvent, LinkMethod, Platform, QrProgress};
    let mut qr = LinkQr::default();
    qr.apply(issued());
    qr.apply(consumed(1, t(10)));
    let mut attempt = LinkAttempt::default();
    attempt.apply(LinkAttemptEvent::LinkRequested {
        device_id: device(1),
        device_name: DeviceName::parse("Phone").unwrap(),
        method: LinkMethod::Qr,
        platform: Platform::Ios,
        device_model: None,
        app_version: "3.0".into(),
        nonce: "n".into(),
        at: t(5),
        expires_at: t(605),
    });
    let qr_id = crate::QrId(Uuid::from_u128(1));
    assert!(matches!(
        QrProgress::of(&qr, qr_id, Some(&attempt), t(20)),
        Some(QrProgress::Scanning { .. })
    ));
    assert!(matches!(
        QrProgress::of(&qr, qr_id, Some(&attempt), t(605)),
        Some(QrProgress::Expired { .. })
    ));
}
