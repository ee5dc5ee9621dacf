use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;

use super::*;
use crate::ProductKind;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn registered() -> AccountEvent {
    AccountEvent::AccountRegistered {
        email: "anna@example.lu".into(),
        language: "fr".into(),
        at: t(0),
    }
}

fn scan() -> LuxTrustProduct {
    LuxTrustProduct {
        kind: ProductKind::Scan,
        serial: "SCAN-1".into(),
    }
}

#[test]
fn an_account_exists_only_after_the_portal_registered_it() {
    TestFramework::<Account>::with(())
        .given_no_previous_events()
        .when(AccountCommand::RecordPortalLogin {
            product: scan(),
            at: t(1),
        })
        .then_expect_error(AccountError::NotRegistered);
}

#[test]
fn the_portal_registers_an_account_once() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::Register {
            email: "other@example.lu".into(),
            language: "en".into(),
            at: t(1),
        })
        .then_expect_error(AccountError::AlreadyRegistered);
}

#[test]
fn a_portal_login_records_the_product_used() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::RecordPortalLogin {
            product: scan(),
            at: t(1),
        })
        .then_expect_events(vec![AccountEvent::PortalLoginRecorded {
            product: scan(),
            at: t(1),
        }]);
}

#[test]
fn an_account_knows_only_the_products_it_logged_in_with() {
    let mut account = Account::default();
    account.apply(registered());
    account.apply(AccountEvent::PortalLoginRecorded {
        product: scan(),
        at: t(1),
    });
    assert!(account.has_logged_in_with(&scan()));
    let mobile = LuxTrustProduct {
        kind: ProductKind::Mobile,
        serial: "SCAN-1".into(),
    };
    assert!(!account.has_logged_in_with(&mobile));
    let other_scan = LuxTrustProduct {
        kind: ProductKind::Scan,
        serial: "SCAN-2".into(),
    };
    assert!(!account.has_logged_in_with(&other_scan));
}

#[test]
fn a_changed_email_names_the_old_and_the_new_address() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::ChangeEmail {
            email: "anna@post.lu".into(),
            at: t(2),
        })
        .then_expect_events(vec![AccountEvent::AccountEmailChanged {
            old_email: "anna@example.lu".into(),
            new_email: "anna@post.lu".into(),
            at: t(2),
        }]);
}

#[test]
fn the_same_email_again_changes_nothing() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::ChangeEmail {
            email: "anna@example.lu".into(),
            at: t(2),
        })
        .then_expect_events(vec![]);
}

#[test]
fn devices_unlinked_together_are_recorded_once_for_the_summary() {
    let devices = vec![
        DeviceId(uuid::Uuid::from_u128(1)),
        DeviceId(uuid::Uuid::from_u128(2)),
    ];
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::RecordUnlinkedTogether {
            device_ids: devices.clone(),
            reason: UnlinkReason::HelpDesk,
            at: t(5),
        })
        .then_expect_events(vec![AccountEvent::DevicesUnlinkedTogether {
            device_ids: devices,
            reason: UnlinkReason::HelpDesk,
            at: t(5),
        }]);
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(AccountCommand::RecordUnlinkedTogether {
            device_ids: vec![],
            reason: UnlinkReason::FromPortal,
            at: t(5),
        })
        .then_expect_events(vec![]);
    TestFramework::<Account>::with(())
        .given_no_previous_events()
        .when(AccountCommand::RecordUnlinkedTogether {
            device_ids: vec![DeviceId(uuid::Uuid::from_u128(1))],
            reason: UnlinkReason::FromPortal,
            at: t(5),
        })
        .then_expect_error(AccountError::NotRegistered);
}

fn erase(linked_devices: u32) -> AccountCommand {
    AccountCommand::Erase {
        linked_devices,
        link_attempt_ids: vec![crate::LinkAttemptId(uuid::Uuid::from_u128(7))],
        at: t(9),
    }
}

fn erased() -> AccountEvent {
    AccountEvent::AccountErased {
        link_attempt_ids: vec![crate::LinkAttemptId(uuid::Uuid::from_u128(7))],
        at: t(9),
    }
}

#[test]
fn an_account_without_linked_devices_is_erased_once() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(erase(0))
        .then_expect_events(vec![erased()]);
    // A second erasure changes nothing.
    TestFramework::<Account>::with(())
        .given(vec![registered(), erased()])
        .when(erase(0))
        .then_expect_events(vec![]);
}

#[test]
fn an_account_with_a_linked_device_or_never_registered_is_not_erased() {
    TestFramework::<Account>::with(())
        .given(vec![registered()])
        .when(erase(2))
        .then_expect_error(AccountError::DevicesStillLinked { devices: 2 });
    TestFramework::<Account>::with(())
        .given_no_previous_events()
        .when(erase(0))
        .then_expect_error(AccountError::NotRegistered);
}

#[test]
fn nothing_more_is_recorded_for_an_erased_account() {
    for command in [
        AccountCommand::Register {
            email: "anna@example.lu".into(),
            language: "fr".into(),
            at: t(10),
        },
        AccountCommand::ChangeEmail {
            email: "anna2@example.lu".into(),
            at: t(10),
        },
    ] {
        TestFramework::<Account>::with(())
            .given(vec![registered(), erased()])
            .when(command)
            .then_expect_error(AccountError::Erased);
    }
    let mut account = Account::default();
    account.apply(registered());
    account.apply(erased());
    assert!(account.is_erased() && !account.is_registered());
    assert_eq!(account.email(), "");
}
