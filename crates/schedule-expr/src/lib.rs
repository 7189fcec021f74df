//! EventBridge Scheduler's schedule expressions, and when a schedule fires next.
//!
//! - `rate(N minute[s]|hour[s]|day[s])`: every N units from the schedule's anchor (its start
//!   date, or when it was made); the first firing is one period after the anchor.
//! - `cron(Minutes Hours Day-of-month Month Day-of-week Year)` ([`cron`]), in the schedule's
//!   IANA time zone.
//! - `at(yyyy-mm-ddThh:mm:ss)`: once, at that wall-clock time in the schedule's time zone.
//!
//! Wall-clock times that a daylight-saving change skips fire at the first instant after the
//! gap; times it repeats fire once, at their first occurrence. Times are Unix milliseconds.

pub mod cron;

use chrono::{LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

pub use cron::Cron;

/// Why an expression or a time zone is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// The expression does not parse or cannot be.
    #[error("{0}")]
    Invalid(String),
    /// Not an IANA time zone name.
    #[error("{0:?} is not an IANA time zone name (such as UTC or Europe/Paris)")]
    TimeZone(String),
}

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expression {
    /// Every `period_ms`.
    Rate {
        /// The period.
        period_ms: i64,
    },
    /// A cron.
    Cron(Box<Cron>),
    /// Once, at a local time.
    At(NaiveDateTime),
}

impl std::str::FromStr for Expression {
    type Err = ExprError;

    fn from_str(s: &str) -> Result<Self, ExprError> {
        let inner = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
        };
        if let Some(r) = inner("rate(") {
            return rate(r);
        }
        if let Some(c) = inner("cron(") {
            return Ok(Self::Cron(Box::new(c.parse()?)));
        }
        if let Some(a) = inner("at(") {
            return NaiveDateTime::parse_from_str(a, "%Y-%m-%dT%H:%M:%S")
                .map(Self::At)
                .map_err(|_| {
                    ExprError::Invalid(format!("at({a}): the time is yyyy-mm-ddThh:mm:ss"))
                });
        }
        Err(ExprError::Invalid(format!(
            "{s:?} is not rate(...), cron(...) or at(...)"
        )))
    }
}

fn rate(r: &str) -> Result<Expression, ExprError> {
    let (n, unit) = r.split_once(' ').ok_or_else(|| {
        ExprError::Invalid(format!(
            "rate({r}): write rate(VALUE UNIT), e.g. rate(5 minutes)"
        ))
    })?;
    let n: i64 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ExprError::Invalid(format!(
            "rate({r}): the value is a whole number of at least 1"
        ))
    })?;
    let unit_ms = match (unit.trim(), n) {
        ("minute", 1) | ("minutes", 2..) => 60_000,
        ("hour", 1) | ("hours", 2..) => 3_600_000,
        ("day", 1) | ("days", 2..) => 86_400_000,
        (u, _) => {
            return Err(ExprError::Invalid(format!(
                "rate({r}): the unit is minute, hour or day when the value is 1, and minutes, hours or days otherwise, not {u:?}"
            )))
        }
    };
    let period_ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| ExprError::Invalid(format!("rate({r}): too long")))?;
    Ok(Expression::Rate { period_ms })
}

/// Parses an IANA time zone name.
pub fn time_zone(name: &str) -> Result<Tz, ExprError> {
    name.parse::<Tz>()
        .map_err(|_| ExprError::TimeZone(name.to_owned()))
}

/// Everything that decides when a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// What fires.
    pub expression: Expression,
    /// Where its wall-clock times are.
    pub zone: Tz,
    /// Nothing fires before it; also a rate's anchor.
    pub start_ms: Option<i64>,
    /// Nothing fires after it.
    pub end_ms: Option<i64>,
    /// A rate's anchor when there is no start: when the schedule was made.
    pub created_ms: i64,
}

/// The instant of local time `t` in `zone`: the first after a gap, the first of a repeat.
fn instant(zone: Tz, t: NaiveDateTime) -> Option<i64> {
    match zone.from_local_datetime(&t) {
        LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => Some(x.timestamp_millis()),
        LocalResult::None => {
            // In a gap: the first local minute after it is where the clock jumped to.
            (1..=24 * 60).find_map(|m| {
                zone.from_local_datetime(&(t + chrono::Duration::minutes(m)))
                    .earliest()
                    .map(|x| x.timestamp_millis())
            })
        }
    }
}

impl Timing {
    /// The first firing strictly after `after_ms`, if there is one.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after_ms = match self.start_ms {
            // The start itself may fire (a cron at that minute, an at() at that time).
            Some(s) if s > after_ms => s - 1,
            _ => after_ms,
        };
        let next = match &self.expression {
            Expression::Rate { period_ms } => {
                let anchor = self.start_ms.unwrap_or(self.created_ms);
                let k = if after_ms < anchor {
                    1
                } else {
                    (after_ms - anchor) / period_ms + 1
                };
                anchor.checked_add(k.checked_mul(*period_ms)?)
            }
            Expression::At(t) => instant(self.zone, *t).filter(|x| *x > after_ms),
            Expression::Cron(c) => self.next_cron(c, after_ms),
        }?;
        self.end_ms.is_none_or(|end| next <= end).then_some(next)
    }

    fn next_cron(&self, c: &Cron, after_ms: i64) -> Option<i64> {
        let after = self
            .zone
            .timestamp_millis_opt(after_ms)
            .single()?
            .naive_local();
        let last = NaiveDate::from_ymd_opt(c.last_year(), 12, 31)?;
        // A day before the local date of `after`: a gap can move an earlier local time past it.
        let mut day = after.date().pred_opt()?;
        while day <= last {
            if c.fires_on(day) {
                for h in c.hours() {
                    for m in c.minutes() {
                        let t = day.and_hms_opt(h, m, 0)?;
                        if let Some(x) = instant(self.zone, t) {
                            if x > after_ms {
                                return Some(x);
                            }
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod tests;
