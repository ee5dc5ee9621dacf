//! A device unused for the configured period is unlinked (reason `Inactive`), after a warning:
//! the warning names the last use it counts from and when the device will go; a use since then
//! (a later last use) calls the unlink off, and a new warning is needed.

use chrono::{DateTime, Utc};

use super::{Device, DeviceError, DeviceEvent};
use crate::{LinkAttemptId, UnlinkReason};

impl Device {
    /// The warning, unless this period of non-use was warned about already.
    pub(super) fn warn_inactive(
        &self,
        link_id: LinkAttemptId,
        last_used_at: DateTime<Utc>,
        unlink_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<DeviceEvent>, DeviceError> {
        let link = self.current(link_id)?;
        if link
            .warned
            .is_some_and(|(warned_for, _)| warned_for >= last_used_at)
        {
            return Ok(vec![]);
        }
        Ok(vec![DeviceEvent::InactivityWarned {
            link_id,
            last_used_at,
            unlink_at,
            at,
        }])
    }

    /// The unlink, if the device was warned about this very period of non-use and its time has
    /// come.
    pub(super) fn unlink_inactive(
        &self,
        link_id: LinkAttemptId,
        last_used_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<DeviceEvent>, DeviceError> {
        let link = self.current(link_id)?;
        match link.warned {
            Some((warned_for, unlink_at)) if warned_for == last_used_at && at >= unlink_at => {
                Ok(vec![DeviceEvent::DeviceUnlinked {
                    link_id,
                    account_id: link.account_id.clone(),
                    reason: UnlinkReason::Inactive,
                    at,
                    in_bulk: false,
                }])
            }
            Some(_) | None => Err(DeviceError::NotDueForInactivity),
        }
    }

    /// When the warning about the current link's inactivity says it unlinks, if warned.
    pub fn inactivity_warning(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.link.as_ref().and_then(|link| link.warned)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    use super::*;
    use crate::{AccountId, DeviceName, LinkMethod, Platform};

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    fn link() -> LinkAttemptId {
        LinkAttemptId(Uuid::from_u128(1))
    }

    fn linked() -> DeviceEvent {
        DeviceEvent::DeviceLinked {
            link_id: link(),
            account_id: AccountId("anna".into()),
            device_name: DeviceName::parse("Phone").unwrap(),
            method: LinkMethod::Qr,
            product: None,
            platform: Platform::Ios,
            app_version: "1.0".into(),
            at: t(0),
        }
    }

    fn warned(last_used_at: DateTime<Utc>) -> DeviceEvent {
        DeviceEvent::InactivityWarned {
            link_id: link(),
            last_used_at,
            unlink_at: t(100),
            at: t(80),
        }
    }

    #[test]
    fn an_unused_device_is_warned_once_then_unlinked_when_its_time_comes() {
        let warn = DeviceCommand::WarnInactive {
            link_id: link(),
            last_used_at: t(0),
            unlink_at: t(100),
            at: t(80),
        };
        TestFramework::<Device>::with(())
            .given(vec![linked()])
            .when(warn.clone())
            .then_expect_events(vec![warned(t(0))]);
        TestFramework::<Device>::with(())
            .given(vec![linked(), warned(t(0))])
            .when(warn)
            .then_expect_events(vec![]);
        let unlink = |at| DeviceCommand::UnlinkInactive {
            link_id: link(),
            last_used_at: t(0),
            at,
        };
        TestFramework::<Device>::with(())
            .given(vec![linked(), warned(t(0))])
            .when(unlink(t(99)))
            .then_expect_error(DeviceError::NotDueForInactivity);
        TestFramework::<Device>::with(())
            .given(vec![linked(), warned(t(0))])
            .when(unlink(t(100)))
            .then_expect_events(vec![DeviceEvent::DeviceUnlinked {
                link_id: link(),
                account_id: AccountId("anna".into()),
                reason: UnlinkReason::Inactive,
                at: t(100),
                in_bulk: false,
            }]);
    }

    #[test]
    fn a_use_after_the_warning_calls_the_unlink_off() {
        // Used at 90: the unlink for the non-use since 0 is refused; a new warning is due.
        TestFramework::<Device>::with(())
            .given(vec![linked(), warned(t(0))])
            .when(DeviceCommand::UnlinkInactive {
                link_id: link(),
                last_used_at: t(90),
                at: t(200),
            })
            .then_expect_error(DeviceError::NotDueForInactivity);
        TestFramework::<Device>::with(())
            .given(vec![linked(), warned(t(0))])
            .when(DeviceCommand::WarnInactive {
                link_id: link(),
                last_used_at: t(90),
                unlink_at: t(190),
                at: t(170),
            })
            .then_expect_events(vec![DeviceEvent::InactivityWarned {
                link_id: link(),
                last_used_at: t(90),
                unlink_at: t(190),
                at: t(170),
            }]);
    }

    use crate::DeviceCommand;
}
