//! Rate limits shared by every instance of a service: GCRA (a burst, then one call per period)
//! over a `rate_limits` table (SHA-256 of rule and key, and the key's theoretical arrival time),
//! counted in one statement that either takes the call or changes nothing. Each service keeps
//! its table in its own database (a migration creates it) and sweeps spent rows.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

/// A burst of `burst` calls, then one per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed at once.
    pub burst: u32,
    /// The time one call's allowance takes to come back.
    pub period: Duration,
}

impl Rate {
    /// `burst` calls, then one per `seconds`.
    pub const fn new(burst: u32, seconds: u64) -> Self {
        Self {
            burst,
            period: Duration::from_secs(seconds),
        }
    }

    /// `burst/seconds`, with an optional `s` (`20/30s`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (burst, seconds) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected burst/seconds"))?;
        let burst: u32 = burst
            .trim()
            .parse()
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| format!("{text:?}: the burst must be a positive number"))?;
        let seconds: u64 = seconds
            .trim()
            .trim_end_matches('s')
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("{text:?}: the period must be a positive number of seconds"))?;
        Ok(Self::new(burst, seconds))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}s", self.burst, self.period.as_secs())
    }
}

/// Parses overrides, `rule=burst/seconds` separated by commas, of the rules named `names`: each
/// override as (the rule's index in `names`, its rate).
pub fn parse_overrides(overrides: &str, names: &[&str]) -> Result<Vec<(usize, Rate)>, String> {
    let mut parsed = Vec::new();
    for entry in overrides
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, rate) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected rule=burst/seconds"))?;
        let index = names
            .iter()
            .position(|known| *known == name.trim())
            .ok_or_else(|| format!("{name:?} is not a rule; the rules: {}", names.join(", ")))?;
        parsed.push((
            index,
            Rate::parse(rate).map_err(|reason| format!("{name}: {reason}"))?,
        ));
    }
    Ok(parsed)
}

/// Counts one call of `rule` for `key` at `rate`: `Ok(Ok(()))` if taken, `Ok(Err(wait))` if the
/// limit is reached (the next call is allowed after `wait`).
pub async fn take(
    pool: &PgPool,
    rule: &str,
    key: &str,
    rate: Rate,
) -> Result<Result<(), Duration>, sqlx::Error> {
    let hashed = Sha256::digest(format!("{rule}\0{key}").as_bytes()).to_vec();
    let period = rate.period.as_secs_f64();
    let tolerance = period * f64::from(rate.burst);
    // GCRA: the call is taken if, counting it, the theoretical arrival time stays within
    // burst × period of now.
    let taken: Option<i32> = sqlx::query_scalar(
        "INSERT INTO rate_limits AS r (key, tat) \
         VALUES ($1, clock_timestamp() + make_interval(secs => $2)) \
         ON CONFLICT (key) DO UPDATE \
           SET tat = GREATEST(r.tat, clock_timestamp()) + make_interval(secs => $2) \
           WHERE GREATEST(r.tat, clock_timestamp()) + make_interval(secs => $2) \
                 <= clock_timestamp() + make_interval(secs => $3) \
         RETURNING 1",
    )
    .bind(&hashed)
    .bind(period)
    .bind(tolerance)
    .fetch_optional(pool)
    .await?;
    if taken.is_some() {
        return Ok(Ok(()));
    }
    let wait: Option<f64> = sqlx::query_scalar(
        "SELECT GREATEST(0, EXTRACT(EPOCH FROM (GREATEST(tat, clock_timestamp()) \
           + make_interval(secs => $2) - make_interval(secs => $3) - clock_timestamp())))::float8 \
         FROM rate_limits WHERE key = $1",
    )
    .bind(&hashed)
    .bind(period)
    .bind(tolerance)
    .fetch_optional(pool)
    .await?;
    Ok(Err(Duration::from_secs_f64(
        wait.unwrap_or(period).max(0.001),
    )))
}

/// Removes spent limits (their allowance is whole again).
pub async fn sweep<'c>(db: impl sqlx::PgExecutor<'c>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM rate_limits WHERE tat < clock_timestamp()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// The message of a refusal: what was limited and when to come back (whole seconds, rounded
/// up; the exact delay goes in the `google.rpc.RetryInfo`).
pub fn refusal_message(rule: &str, wait: Duration) -> String {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    format!("too many calls ({rule}); retry in {seconds} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_the_unit() {
        assert_eq!(Rate::parse("20/30s"), Ok(Rate::new(20, 30)));
        assert_eq!(Rate::parse(" 3/7 "), Ok(Rate::new(3, 7)));
        for bad in ["", "3", "0/1", "1/0", "a/1", "1/b"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_message_rounds_the_wait_up() {
        assert_eq!(
            refusal_message("x.y", Duration::from_millis(1500)),
            "too many calls (x.y); retry in 2 s"
        );
    }
}
