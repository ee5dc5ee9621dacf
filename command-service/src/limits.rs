//! Rate limits (GCRA: a burst, then one call per period) on the calls a stranger or one device
//! can repeat: per client address for the app's calls, which arrive without a login, and per key
//! (account, device, link attempt, LuxTrust serial) for what a caller names or holds.
//!
//! - **Per address: in memory, per instance** (`governor`). An address is a connection's
//!   property and the instance it reaches sees all of its calls on that connection; a client
//!   spreading over N instances gets N times the allowance, which N bounds. IPv6 addresses count
//!   by their /64, as one subscriber holds a whole /64.
//! - **Per key: in PostgreSQL, across instances** (`rate_limits`, one row per key with its GCRA
//!   theoretical arrival time, updated in one statement). These guard an account or a device, and
//!   must not multiply with the instances. The statement commits without waiting for its WAL
//!   flush (`service_kit::database::asynchronous_commit_pool`): a database crash may forget the
//!   last fraction of a second of counts, which gives a caller a few more calls once, and saves
//!   every limited call an `fdatasync`.
//!
//! A call past a limit is refused `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` saying when
//! the next call is allowed, before anything is written. The policy table is [`Policy`]; each
//! rule's default and its reason are in docs/adr/0013.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sqlx::PgPool;

use crate::error::CommandError;

pub use service_kit::ratelimit::Rate;

/// The limited calls, each with what it is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// StartLink, per client address.
    StartLinkByAddress,
    /// StartLink, per device id.
    StartLinkByDevice,
    /// ScanQr, per client address.
    ScanQrByAddress,
    /// ScanQr, per link attempt.
    ScanQrByAttempt,
    /// AuthenticateWithLuxTrust, per client address.
    LuxTrustByAddress,
    /// AuthenticateWithLuxTrust, per link attempt.
    LuxTrustByAttempt,
    /// AuthenticateWithLuxTrust, per LuxTrust product serial.
    LuxTrustBySerial,
    /// SetSecretCode, per client address.
    SetSecretCodeByAddress,
    /// SetSecretCode, per link attempt.
    SetSecretCodeByAttempt,
    /// VerifySecretCode, per client address.
    VerifyByAddress,
    /// VerifySecretCode, per device.
    VerifyByDevice,
    /// IssueLinkQr, per account.
    IssueQrByAccount,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Self; 12] = [
        Self::StartLinkByAddress,
        Self::StartLinkByDevice,
        Self::ScanQrByAddress,
        Self::ScanQrByAttempt,
        Self::LuxTrustByAddress,
        Self::LuxTrustByAttempt,
        Self::LuxTrustBySerial,
        Self::SetSecretCodeByAddress,
        Self::SetSecretCodeByAttempt,
        Self::VerifyByAddress,
        Self::VerifyByDevice,
        Self::IssueQrByAccount,
    ];

    /// The rule's name in `LINKD_RATE_LIMITS`: `<rpc>.<key>`.
    pub fn name(self) -> &'static str {
        match self {
            Self::StartLinkByAddress => "start_link.address",
            Self::StartLinkByDevice => "start_link.device",
            Self::ScanQrByAddress => "scan_qr.address",
            Self::ScanQrByAttempt => "scan_qr.link_attempt",
            Self::LuxTrustByAddress => "authenticate_with_luxtrust.address",
            Self::LuxTrustByAttempt => "authenticate_with_luxtrust.link_attempt",
            Self::LuxTrustBySerial => "authenticate_with_luxtrust.serial",
            Self::SetSecretCodeByAddress => "set_secret_code.address",
            Self::SetSecretCodeByAttempt => "set_secret_code.link_attempt",
            Self::VerifyByAddress => "verify_secret_code.address",
            Self::VerifyByDevice => "verify_secret_code.device",
            Self::IssueQrByAccount => "issue_link_qr.account",
        }
    }

    /// Whether the rule counts per client address (in memory) rather than per key (shared).
    fn by_address(self) -> bool {
        self.name().ends_with(".address")
    }

    /// The default rate (reasons: docs/adr/0013).
    fn default_rate(self) -> Rate {
        match self {
            // A household or office behind one address links a few phones; a script cannot.
            Self::StartLinkByAddress
            | Self::ScanQrByAddress
            | Self::LuxTrustByAddress
            | Self::SetSecretCodeByAddress => Rate::new(20, 30),
            // Unlocking the app: a few times an hour per phone, many phones behind a NAT.
            Self::VerifyByAddress => Rate::new(60, 5),
            // Signal's link codes: 6 at once, then one per 2 minutes.
            Self::StartLinkByDevice
            | Self::ScanQrByAttempt
            | Self::LuxTrustByAttempt
            | Self::LuxTrustBySerial
            | Self::SetSecretCodeByAttempt
            | Self::IssueQrByAccount => Rate::new(6, 120),
            // Each answered check appends an event: at most 30 an hour after a burst of 10.
            Self::VerifyByDevice => Rate::new(10, 120),
        }
    }
}

/// The rate of every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy(BTreeMap<Rule, Rate>);

impl Default for Policy {
    fn default() -> Self {
        Self(
            Rule::ALL
                .iter()
                .map(|rule| (*rule, rule.default_rate()))
                .collect(),
        )
    }
}

impl Policy {
    /// The defaults, changed by `overrides`: `rule=burst/seconds[s]` separated by commas, e.g.
    /// `start_link.address=40/30s,verify_secret_code.device=20/60s`.
    pub fn parse(overrides: &str) -> Result<Self, String> {
        let mut policy = Self::default();
        let names = Rule::ALL.map(Rule::name);
        for (index, rate) in service_kit::ratelimit::parse_overrides(overrides, &names)? {
            policy.0.insert(Rule::ALL[index], rate);
        }
        Ok(policy)
    }

    /// The rate of `rule`.
    pub fn rate(&self, rule: Rule) -> Rate {
        self.0
            .get(&rule)
            .copied()
            .unwrap_or_else(|| rule.default_rate())
    }
}

/// The limits of one instance.
#[derive(Clone)]
pub(crate) struct RateLimits {
    policy: Arc<Policy>,
    by_address: Arc<BTreeMap<Rule, DefaultKeyedRateLimiter<IpAddr>>>,
    pool: PgPool,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The limits of `policy`; keyed ones kept in `pool`'s `rate_limits` (a pool that commits
    /// without waiting for the WAL flush).
    pub(crate) fn new(policy: Policy, pool: PgPool) -> Self {
        let by_address = Rule::ALL
            .into_iter()
            .filter(|rule| rule.by_address())
            .map(|rule| {
                (
                    rule,
                    DefaultKeyedRateLimiter::keyed(quota(policy.rate(rule))),
                )
            })
            .collect();
        Self {
            policy: Arc::new(policy),
            by_address: Arc::new(by_address),
            pool,
        }
    }

    /// Counts a call of `rule` from `address`. Calls whose address is unknown (a proxy header
    /// too short or garbled) all count as one address, so that they cannot slip past the limit.
    pub(crate) fn by_address(
        &self,
        rule: Rule,
        address: Option<IpAddr>,
    ) -> Result<(), CommandError> {
        let Some(limiter) = self.by_address.get(&rule) else {
            return Ok(());
        };
        let address = address.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        limiter
            .check_key(&subscriber(address))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                refused(rule, wait)
            })
    }

    /// Counts a call of `rule` for `key`, across every instance.
    pub(crate) async fn by_key(&self, rule: Rule, key: &str) -> Result<(), CommandError> {
        service_kit::ratelimit::take(&self.pool, rule.name(), key, self.policy.rate(rule))
            .await?
            .map_err(|wait| refused(rule, wait))
    }

    /// Forgets addresses whose allowance is whole again (called by the sweeper), so that the
    /// in-memory state holds only addresses active in the last period.
    pub(crate) fn forget_idle_addresses(&self) {
        for limiter in self.by_address.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Removes spent keyed limits (their allowance is whole again).
pub async fn sweep<'c>(db: impl sqlx::PgExecutor<'c>) -> Result<u64, sqlx::Error> {
    service_kit::ratelimit::sweep(db).await
}

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(rate.period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The address a limit counts: an IPv4 address, or an IPv6 address's /64.
fn subscriber(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
    }
}

fn refused(rule: Rule, wait: Duration) -> CommandError {
    CommandError::RateLimited {
        message: service_kit::ratelimit::refusal_message(rule.name(), wait),
        retry_in: wait.max(Duration::from_millis(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_the_rules_they_name() {
        let policy =
            Policy::parse("start_link.address=40/30s, verify_secret_code.device=3/7").unwrap();
        assert_eq!(policy.rate(Rule::StartLinkByAddress), Rate::new(40, 30));
        assert_eq!(policy.rate(Rule::VerifyByDevice), Rate::new(3, 7));
        assert_eq!(policy.rate(Rule::IssueQrByAccount), Rate::new(6, 120));
        for bad in [
            "nope=1/1",
            "start_link.address",
            "start_link.address=0/1",
            "scan_qr.address=1/0s",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_rule_has_a_distinct_name_and_a_default() {
        let names: std::collections::BTreeSet<_> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
        assert_eq!(Policy::default().0.len(), Rule::ALL.len());
    }

    #[test]
    fn an_ipv6_subscriber_is_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:1:2:3:4".parse().unwrap();
        assert_eq!(subscriber(a), subscriber(b));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(subscriber(v4), v4);
    }
}
