//! EventBridge's six-field cron: `Minutes Hours Day-of-month Month Day-of-week Year`.
//!
//! Fields take values, ranges (`a-b`), lists (`a,b`), steps (`*/n`, `a/n`, `a-b/n`) and `*`;
//! months also `JAN`-`DEC`, days of the week `1`-`7` or `SUN`-`SAT` (1 is Sunday). Exactly one of
//! the two day fields is `?`. Day-of-month also takes `L` (the last day), `nW` (the weekday
//! nearest the n-th) and `LW` (the last weekday); day-of-week `nL` (the month's last such day)
//! and `n#k` (its k-th). Years run from 1970 to 2199.

use chrono::{Datelike, NaiveDate, Weekday};

use crate::ExprError;

/// A set of small numbers (bit `i` is `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bits(u64);

impl Bits {
    fn has(self, i: u32) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |i| self.has(*i))
    }
}

/// The day-of-month field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MonthDays {
    /// `?`: the day-of-week field decides.
    Unset,
    /// Days 1-31.
    Days(Bits),
    /// `L`.
    Last,
    /// `LW`.
    LastWeekday,
    /// `nW`.
    NearestWeekday(u32),
}

/// The day-of-week field (1 = Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeekDays {
    /// `?`: the day-of-month field decides.
    Unset,
    /// Days 1-7.
    Days(Bits),
    /// `nL`: the month's last day `n`.
    Last(u32),
    /// `n#k`: the month's k-th day `n`.
    Nth(u32, u32),
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Bits,
    hours: Bits,
    month_days: MonthDays,
    months: Bits,
    week_days: WeekDays,
    /// Years from 1970 (`None`: every year).
    years: Option<Vec<bool>>,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// The years a cron may name.
pub(crate) const YEARS: std::ops::RangeInclusive<u32> = 1970..=2199;

fn invalid(field: &str, why: impl std::fmt::Display) -> ExprError {
    ExprError::Invalid(format!("cron {field} field: {why}"))
}

/// One value: a number or, where the field has them, a name (`JAN`, `MON`).
fn value(field: &str, s: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, ExprError> {
    let upper = s.to_ascii_uppercase();
    let v = match names.iter().position(|n| *n == upper) {
        Some(i) => u32::try_from(i).unwrap_or(0) + min,
        None => s
            .parse::<u32>()
            .map_err(|_| invalid(field, format!("{s:?} is not a number from {min} to {max}")))?,
    };
    if !(min..=max).contains(&v) {
        return Err(invalid(field, format!("{v} is outside {min}-{max}")));
    }
    Ok(v)
}

/// Every value a list of values, ranges and steps names.
fn values(field: &str, s: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, ExprError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let step = st.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid(field, format!("step {st:?} is not a positive number"))
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (
                    value(field, a, min, max, names)?,
                    value(field, b, min, max, names)?,
                ),
                None if step > 1 => (value(field, r, min, max, names)?, max),
                None => {
                    let v = value(field, r, min, max, names)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(invalid(field, format!("range {range:?} goes backwards")));
        }
        out.extend((lo..=hi).step_by(usize::try_from(step).unwrap_or(1)));
    }
    Ok(out)
}

fn bits(field: &str, s: &str, min: u32, max: u32, names: &[&str]) -> Result<Bits, ExprError> {
    Ok(Bits(
        values(field, s, min, max, names)?
            .into_iter()
            .fold(0, |acc, v| acc | (1 << v)),
    ))
}

fn month_days(s: &str) -> Result<MonthDays, ExprError> {
    const F: &str = "day-of-month";
    Ok(match s {
        "?" => MonthDays::Unset,
        "L" => MonthDays::Last,
        "LW" => MonthDays::LastWeekday,
        w if w.ends_with('W') => {
            MonthDays::NearestWeekday(value(F, &w[..w.len() - 1], 1, 31, &[])?)
        }
        d => MonthDays::Days(bits(F, d, 1, 31, &[])?),
    })
}

fn week_days(s: &str) -> Result<WeekDays, ExprError> {
    const F: &str = "day-of-week";
    Ok(match s {
        "?" => WeekDays::Unset,
        "L" => WeekDays::Days(Bits(1 << 7)),
        l if l.ends_with('L') => WeekDays::Last(value(F, &l[..l.len() - 1], 1, 7, &DAYS)?),
        n if n.contains('#') => {
            let (d, k) = n.split_once('#').unwrap_or((n, ""));
            let k = k
                .parse::<u32>()
                .ok()
                .filter(|k| (1..=5).contains(k))
                .ok_or_else(|| invalid(F, format!("{n:?}: the week after # is 1 to 5")))?;
            WeekDays::Nth(value(F, d, 1, 7, &DAYS)?, k)
        }
        d => WeekDays::Days(bits(F, d, 1, 7, &DAYS)?),
    })
}

impl std::str::FromStr for Cron {
    type Err = ExprError;

    /// Parses the six fields (what is inside `cron(...)`).
    fn from_str(s: &str) -> Result<Self, ExprError> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [minutes, hours, dom, month, dow, year] = fields[..] else {
            return Err(ExprError::Invalid(format!(
                "cron needs 6 fields (minutes hours day-of-month month day-of-week year), not {}",
                fields.len()
            )));
        };
        let month_days = month_days(dom)?;
        let week_days = week_days(dow)?;
        match (month_days, week_days) {
            (MonthDays::Unset, WeekDays::Unset) => {
                return Err(ExprError::Invalid(
                    "cron: day-of-month and day-of-week cannot both be ?".to_owned(),
                ))
            }
            (MonthDays::Unset, _) | (_, WeekDays::Unset) => {}
            _ => {
                return Err(ExprError::Invalid(
                    "cron: day-of-month and day-of-week cannot both be set; use ? in one of them"
                        .to_owned(),
                ))
            }
        }
        let years = match year {
            "*" => None,
            y => {
                let mut set = vec![false; YEARS.clone().count()];
                for v in values("year", y, *YEARS.start(), *YEARS.end(), &[])? {
                    if let Some(slot) = set.get_mut((v - YEARS.start()) as usize) {
                        *slot = true;
                    }
                }
                Some(set)
            }
        };
        Ok(Self {
            minutes: bits("minutes", minutes, 0, 59, &[])?,
            hours: bits("hours", hours, 0, 23, &[])?,
            month_days,
            months: bits("month", month, 1, 12, &MONTHS)?,
            week_days,
            years,
        })
    }
}

fn last_day(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

fn is_weekday(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The weekday nearest day `n` of the month, within the month (Quartz's `nW`).
fn nearest_weekday(year: i32, month: u32, n: u32) -> Option<u32> {
    let last = last_day(year, month);
    if n > last {
        return None;
    }
    let d = NaiveDate::from_ymd_opt(year, month, n)?;
    Some(match d.weekday() {
        Weekday::Sat if n == 1 => 3,
        Weekday::Sat => n - 1,
        Weekday::Sun if n == last => n - 2,
        Weekday::Sun => n + 1,
        _ => n,
    })
}

impl Cron {
    /// The minutes of an hour it fires at, ascending.
    pub(crate) fn minutes(&self) -> impl Iterator<Item = u32> + '_ {
        self.minutes.iter()
    }

    /// The hours of a day it fires at, ascending.
    pub(crate) fn hours(&self) -> impl Iterator<Item = u32> + '_ {
        self.hours.iter()
    }

    /// Whether it fires on local date `d`.
    pub(crate) fn fires_on(&self, d: NaiveDate) -> bool {
        let year_ok = match &self.years {
            None => true,
            Some(set) => u32::try_from(d.year())
                .ok()
                .and_then(|y| y.checked_sub(*YEARS.start()))
                .and_then(|i| set.get(i as usize))
                .copied()
                .unwrap_or(false),
        };
        if !year_ok || !self.months.has(d.month()) {
            return false;
        }
        let (y, m, day) = (d.year(), d.month(), d.day());
        let last = last_day(y, m);
        let week_day = d.weekday().number_from_sunday();
        match (self.month_days, self.week_days) {
            (MonthDays::Days(b), _) => b.has(day),
            (MonthDays::Last, _) => day == last,
            (MonthDays::LastWeekday, _) => {
                let mut l = last;
                while NaiveDate::from_ymd_opt(y, m, l).is_some_and(|x| !is_weekday(x)) {
                    l -= 1;
                }
                day == l
            }
            (MonthDays::NearestWeekday(n), _) => nearest_weekday(y, m, n) == Some(day),
            (MonthDays::Unset, WeekDays::Days(b)) => b.has(week_day),
            (MonthDays::Unset, WeekDays::Last(n)) => week_day == n && day + 7 > last,
            (MonthDays::Unset, WeekDays::Nth(n, k)) => week_day == n && (day - 1) / 7 + 1 == k,
            (MonthDays::Unset, WeekDays::Unset) => false,
        }
    }

    /// The last year it can fire in.
    pub(crate) fn last_year(&self) -> i32 {
        let last = match &self.years {
            None => *YEARS.end(),
            Some(set) => set
                .iter()
                .rposition(|b| *b)
                .map_or(0, |i| YEARS.start() + u32::try_from(i).unwrap_or(0)),
        };
        i32::try_from(last).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn fields_parse_as_eventbridge_documents_them() {
        let c: Cron = "0/15 8-17 ? * MON-FRI *".parse().unwrap();
        assert_eq!(c.minutes().collect::<Vec<_>>(), [0, 15, 30, 45]);
        assert_eq!(c.hours().count(), 10);
        assert!(c.fires_on(d(2026, 12, 2)), "a Wednesday");
        assert!(!c.fires_on(d(2026, 12, 6)), "a Sunday");
        let c: Cron = "0 12 L * ? 2026-2027".parse().unwrap();
        assert!(c.fires_on(d(2026, 2, 28)));
        assert!(!c.fires_on(d(2028, 2, 29)), "outside the years");
        let c: Cron = "0 9 ? * 6#3 *".parse().unwrap();
        assert!(c.fires_on(d(2026, 12, 18)), "the third Friday");
        assert!(!c.fires_on(d(2026, 12, 11)));
        let c: Cron = "0 9 ? * 2L *".parse().unwrap();
        assert!(c.fires_on(d(2026, 11, 30)), "the last Monday");
        let c: Cron = "0 9 1W * ? *".parse().unwrap();
        assert!(
            c.fires_on(d(2026, 8, 3)),
            "Aug 1 2026 is a Saturday: Monday the 3rd"
        );
        let c: Cron = "0 9 LW * ? *".parse().unwrap();
        assert!(c.fires_on(d(2026, 10, 30)), "Oct 31 2026 is a Saturday");
        let c: Cron = "0 0 1 JAN,jul ? *".parse().unwrap();
        assert!(c.fires_on(d(2027, 7, 1)));
    }

    #[test]
    fn bad_crons_are_refused_naming_the_field() {
        for (expr, says) in [
            ("0 12 * * MON *", "both be set"),
            ("0 12 ? * ? *", "both be ?"),
            ("60 12 * * ? *", "minutes"),
            ("0 24 * * ? *", "hours"),
            ("0 12 32 * ? *", "day-of-month"),
            ("0 12 * 13 ? *", "month"),
            ("0 12 ? * 8 *", "day-of-week"),
            ("0 12 * * ? 1969", "year"),
            ("0 12 * * ?", "6 fields"),
            ("0/0 12 * * ? *", "step"),
            ("5-1 12 * * ? *", "backwards"),
            ("0 12 ? * 2#6 *", "#"),
        ] {
            let e = expr.parse::<Cron>().unwrap_err().to_string();
            assert!(e.contains(says), "{expr}: {e}");
        }
    }
}
