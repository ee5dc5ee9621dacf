use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn link(n: u128) -> LinkAttemptId {
    LinkAttemptId(Uuid::from_u128(n))
}

fn account(name: &str) -> AccountId {
    AccountId(name.into())
}

fn link_command(n: u128, account_name: &str) -> DeviceCommand {
    DeviceCommand::Link {
        link_id: link(n),
        account_id: account(account_name),
        device_name: DeviceName::parse("Anna's phone").unwrap(),
        method: LinkMethod::Qr,
        product: None,
        platform: Platform::Ios,
        app_version: "1.0.0".into(),
        at: t(0),
    }
}

fn linked(n: u128, account_name: &str) -> DeviceEvent {
    DeviceEvent::DeviceLinked {
        link_id: link(n),
        account_id: account(account_name),
        device_name: DeviceName::parse("Anna's phone").unwrap(),
        method: LinkMethod::Qr,
        product: None,
        platform: Platform::Ios,
        app_version: "1.0.0".into(),
        at: t(0),
    }
}

fn wrong_code(at: DateTime<Utc>) -> DeviceCommand {
    DeviceCommand::RecordSecretCodeCheck {
        link_id: link(1),
        matches: false,
        at,
    }
}

fn failed(n: u32) -> DeviceEvent {
    DeviceEvent::SecretCodeFailed {
        consecutive_failures: n,
        attempts_left: MAX_SECRET_CODE_FAILURES - n,
        at: t(i64::from(n)),
    }
}

#[test]
fn a_device_counts_as_linked_once_its_secret_code_is_set() {
    TestFramework::<Device>::with(())
        .given_no_previous_events()
        .when(link_command(1, "anna"))
        .then_expect_events(vec![linked(1, "anna")]);
}

#[test]
fn a_device_linked_to_one_account_cannot_link_to_another() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(link_command(2, "bob"))
        .then_expect_error(DeviceError::DeviceAlreadyLinked);
}

#[test]
fn a_device_can_link_to_another_account_once_unlinked() {
    let unlinked = DeviceEvent::DeviceUnlinked {
        link_id: link(1),
        account_id: account("anna"),
        reason: UnlinkReason::FromDevice,
        at: t(5),
        in_bulk: false,
    };
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna"), unlinked])
        .when(link_command(2, "bob"))
        .then_expect_events(vec![linked(2, "bob")]);
}

#[test]
fn a_retried_link_by_the_same_attempt_changes_nothing() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(link_command(1, "anna"))
        .then_expect_events(vec![]);
}

#[test]
fn biometrics_can_be_skipped_while_linking_and_enabled_later() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(DeviceCommand::SetBiometrics {
            link_id: link(1),
            enabled: false,
            at: t(1),
        })
        .then_expect_events(vec![DeviceEvent::BiometricsSkipped { at: t(1) }]);
    TestFramework::<Device>::with(())
        .given(vec![
            linked(1, "anna"),
            DeviceEvent::BiometricsSkipped { at: t(1) },
        ])
        .when(DeviceCommand::SetBiometrics {
            link_id: link(1),
            enabled: true,
            at: t(2),
        })
        .then_expect_events(vec![DeviceEvent::BiometricsEnabled { at: t(2) }]);
}

#[test]
fn biometrics_turned_off_after_being_on_are_disabled_not_skipped() {
    TestFramework::<Device>::with(())
        .given(vec![
            linked(1, "anna"),
            DeviceEvent::BiometricsEnabled { at: t(1) },
        ])
        .when(DeviceCommand::SetBiometrics {
            link_id: link(1),
            enabled: false,
            at: t(2),
        })
        .then_expect_events(vec![DeviceEvent::BiometricsDisabled { at: t(2) }]);
}

#[test]
fn a_wrong_secret_code_is_counted() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna"), failed(1)])
        .when(wrong_code(t(2)))
        .then_expect_events(vec![failed(2)]);
}

#[test]
fn a_right_secret_code_resets_the_failure_count() {
    let mut device = Device::default();
    for event in [linked(1, "anna"), failed(1), failed(2)] {
        device.apply(event);
    }
    device.apply(DeviceEvent::SecretCodeVerified { at: t(3) });
    assert_eq!(device.consecutive_failures(), 0);
}

#[test]
fn five_wrong_secret_codes_in_a_row_unlink_the_device() {
    TestFramework::<Device>::with(())
        .given(vec![
            linked(1, "anna"),
            failed(1),
            failed(2),
            failed(3),
            failed(4),
        ])
        .when(wrong_code(t(5)))
        .then_expect_events(vec![
            failed(5),
            DeviceEvent::DeviceUnlinked {
                link_id: link(1),
                account_id: account("anna"),
                reason: UnlinkReason::LockedOut,
                at: t(5),
                in_bulk: false,
            },
        ]);
}

#[test]
fn the_holder_can_unlink_a_device_from_the_portal_without_the_device() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(DeviceCommand::UnlinkFromPortal {
            account_id: account("anna"),
            link_id: link(1),
            reason: UnlinkReason::FromPortal,
            in_bulk: false,
            at: t(9),
        })
        .then_expect_events(vec![DeviceEvent::DeviceUnlinked {
            link_id: link(1),
            account_id: account("anna"),
            reason: UnlinkReason::FromPortal,
            at: t(9),
            in_bulk: false,
        }]);
}

#[test]
fn nobody_can_unlink_a_device_linked_to_another_account() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(DeviceCommand::UnlinkFromPortal {
            account_id: account("mallory"),
            link_id: link(1),
            reason: UnlinkReason::FromPortal,
            in_bulk: false,
            at: t(9),
        })
        .then_expect_error(DeviceError::NotLinkedToAccount);
}

#[test]
fn a_portal_unlink_does_not_end_a_newer_link_than_the_one_chosen() {
    TestFramework::<Device>::with(())
        .given(vec![linked(2, "anna")])
        .when(DeviceCommand::UnlinkFromPortal {
            account_id: account("anna"),
            link_id: link(1),
            reason: UnlinkReason::FromPortal,
            in_bulk: false,
            at: t(9),
        })
        .then_expect_error(DeviceError::NotLinkedToAccount);
}

#[test]
fn a_device_can_unlink_itself() {
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna")])
        .when(DeviceCommand::UnlinkFromDevice {
            link_id: link(1),
            at: t(9),
        })
        .then_expect_events(vec![DeviceEvent::DeviceUnlinked {
            link_id: link(1),
            account_id: account("anna"),
            reason: UnlinkReason::FromDevice,
            at: t(9),
            in_bulk: false,
        }]);
}

#[test]
fn unlinking_revokes_the_device_credential_at_once() {
    let unlinked = DeviceEvent::DeviceUnlinked {
        link_id: link(1),
        account_id: account("anna"),
        reason: UnlinkReason::FromPortal,
        at: t(5),
        in_bulk: false,
    };
    TestFramework::<Device>::with(())
        .given(vec![linked(1, "anna"), unlinked])
        .when(DeviceCommand::RecordSecretCodeCheck {
            link_id: link(1),
            matches: true,
            at: t(6),
        })
        .then_expect_error(DeviceError::CredentialRevoked);
}

#[test]
fn a_credential_of_an_earlier_link_does_not_work_for_a_later_one() {
    TestFramework::<Device>::with(())
        .given(vec![linked(2, "anna")])
        .when(DeviceCommand::UnlinkFromDevice {
            link_id: link(1),
            at: t(9),
        })
        .then_expect_error(DeviceError::CredentialRevoked);
}

#[test]
fn a_device_remembers_which_account_it_was_unlinked_from() {
    let mut device = Device::default();
    device.apply(linked(1, "anna"));
    assert!(!device.was_unlinked_from(&account("anna")));
    device.apply(DeviceEvent::DeviceUnlinked {
        link_id: link(1),
        account_id: account("anna"),
        reason: UnlinkReason::FromPortal,
        at: t(5),
        in_bulk: false,
    });
    assert!(device.was_unlinked_from(&account("anna")));
    assert!(!device.was_unlinked_from(&account("bob")));
}

fn device_with(events: Vec<DeviceEvent>) -> Device {
    let mut device = Device::default();
    for event in events {
        device.apply(event);
    }
    device
}

fn unlinked_from_portal(n: u128, account_name: &str) -> DeviceEvent {
    DeviceEvent::DeviceUnlinked {
        link_id: link(n),
        account_id: account(account_name),
        reason: UnlinkReason::FromPortal,
        at: t(5),
        in_bulk: false,
    }
}

#[test]
fn a_credential_speaks_for_the_account_only_while_its_link_is_current() {
    let linked_now = device_with(vec![linked(1, "anna")]);
    let relinked = device_with(vec![
        linked(1, "anna"),
        unlinked_from_portal(1, "anna"),
        linked(2, "anna"),
    ]);

    assert_eq!(linked_now.account_of_link(link(1)), Ok(&account("anna")));
    assert_eq!(
        linked_now.account_of_link(link(2)),
        Err(DeviceError::CredentialRevoked)
    );
    assert_eq!(
        relinked.account_of_link(link(1)),
        Err(DeviceError::CredentialRevoked)
    );
    assert_eq!(
        Device::default().account_of_link(link(1)),
        Err(DeviceError::CredentialRevoked)
    );
}

#[test]
fn the_holder_unlinks_from_the_portal_only_a_device_linked_to_their_account() {
    let anna_s = device_with(vec![linked(1, "anna")]);
    let already_unlinked = device_with(vec![linked(1, "anna"), unlinked_from_portal(1, "anna")]);

    assert_eq!(
        anna_s.portal_unlink_target(&account("anna")),
        Ok(Some(link(1)))
    );
    assert_eq!(
        anna_s.portal_unlink_target(&account("bob")),
        Err(DeviceError::NotLinkedToAccount)
    );
    assert_eq!(
        already_unlinked.portal_unlink_target(&account("anna")),
        Ok(None),
        "a repeated unlink has nothing left to do"
    );
    assert_eq!(
        already_unlinked.portal_unlink_target(&account("bob")),
        Err(DeviceError::NotLinkedToAccount)
    );
    assert_eq!(
        Device::default().portal_unlink_target(&account("anna")),
        Err(DeviceError::NotLinkedToAccount)
    );
}

#[test]
fn secret_code_attempts_count_down_to_the_lock_out() {
    let fresh = device_with(vec![linked(1, "anna")]);
    let after_two = device_with(vec![linked(1, "anna"), failed(1), failed(2)]);
    let mut locked = device_with(vec![linked(1, "anna")]);
    for n in 1..=MAX_SECRET_CODE_FAILURES {
        for event in locked.decide(wrong_code(t(i64::from(n)))).unwrap() {
            locked.apply(event);
        }
    }

    assert_eq!(fresh.secret_code_attempts_left(), MAX_SECRET_CODE_FAILURES);
    assert_eq!(
        after_two.secret_code_attempts_left(),
        MAX_SECRET_CODE_FAILURES - 2
    );
    assert_eq!(locked.secret_code_attempts_left(), 0);
    assert_eq!(locked.linked_account(), None, "locked out means unlinked");
}
