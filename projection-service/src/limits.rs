//! Rate limits on the queries, per caller and shared by every instance (service-kit's GCRA in
//! this service's database): the device list and a device's detail per holder, the audit
//! queries per caller (a holder reading their history, or an auditor). A call past a limit is
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` before the query runs.

use std::time::Duration;

use service_kit::ratelimit::{self, Rate};
use sqlx::PgPool;

use crate::status::QueryError;

/// The limited queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRule {
    /// ListDevices, per holder.
    ListDevices,
    /// GetDevice, per holder.
    GetDevice,
    /// ListEvents, ExportHistory, DevicesAt and VerifyHistory, per caller.
    Audit,
}

impl QueryRule {
    const ALL: [Self; 3] = [Self::ListDevices, Self::GetDevice, Self::Audit];

    /// The rule's name in `LINKD_QUERY_RATE_LIMITS`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ListDevices => "list_devices.account",
            Self::GetDevice => "get_device.account",
            Self::Audit => "audit.caller",
        }
    }
}

/// The rates of the query rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// ListDevices: a page load or a refresh; 30, then one every 2 s.
    pub list_devices: Rate,
    /// GetDevice: 60, then one a second.
    pub get_device: Rate,
    /// The audit queries (an export reads a whole history): 20, then one every 15 s.
    pub audit: Rate,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            list_devices: Rate::new(30, 2),
            get_device: Rate::new(60, 1),
            audit: Rate::new(20, 15),
        }
    }
}

impl QueryLimits {
    /// The defaults changed by `overrides` (`rule=burst/seconds,…`).
    pub fn parse(overrides: &str) -> Result<Self, String> {
        let mut limits = Self::default();
        let names = QueryRule::ALL.map(QueryRule::name);
        for (index, rate) in ratelimit::parse_overrides(overrides, &names)? {
            match QueryRule::ALL[index] {
                QueryRule::ListDevices => limits.list_devices = rate,
                QueryRule::GetDevice => limits.get_device = rate,
                QueryRule::Audit => limits.audit = rate,
            }
        }
        Ok(limits)
    }

    fn rate(&self, rule: QueryRule) -> Rate {
        match rule {
            QueryRule::ListDevices => self.list_devices,
            QueryRule::GetDevice => self.get_device,
            QueryRule::Audit => self.audit,
        }
    }

    /// Counts a call of `rule` by `caller`.
    pub(crate) async fn admit(
        &self,
        pool: &PgPool,
        rule: QueryRule,
        caller: &str,
    ) -> Result<(), QueryError> {
        match ratelimit::take(pool, rule.name(), caller, self.rate(rule)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(wait)) => Err(QueryError::RateLimited {
                message: ratelimit::refusal_message(rule.name(), wait),
                retry_in: wait,
            }),
            Err(error) => Err(QueryError::read_model(error)),
        }
    }
}

/// Sweeps spent limits every minute until the task is dropped.
pub async fn sweep_every_minute(pool: PgPool) {
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticks.tick().await;
        if let Err(error) = ratelimit::sweep(&pool).await {
            tracing::warn!(%error, "sweeping the rate limits failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_the_rules_they_name() {
        let limits = QueryLimits::parse("audit.caller=2/60").unwrap();
        assert_eq!(limits.audit, Rate::new(2, 60));
        assert_eq!(limits.list_devices, QueryLimits::default().list_devices);
        assert!(QueryLimits::parse("nope=1/1").is_err());
        assert!(QueryLimits::parse("audit.caller=0/1").is_err());
    }
}
