//! Each function's recent past on this node, for people to look at (the console's charts and
//! lists, `GET /v1/functions/{name}/history`): per-minute buckets of invocations, errors and
//! durations for a day, and the last invocations one by one.
//!
//! Prometheus' counters (`/metrics`) say how much since start; this says when. It is kept in
//! memory, per node, and bounded: a minute with traffic costs one bucket, a minute without
//! none. A bucket of the last [`FULL_MINUTES`] keeps its durations' histogram (about 150 bytes
//! with a few distinct durations, at most about 1.4 KiB); an older one only its quantiles
//! (about 100 bytes). A function keeps at most [`MINUTES`] buckets and [`RECENT`] invocations
//! (about 8 KiB), and at most [`MAX_FUNCTIONS`] functions are kept (the one invoked longest ago
//! goes first): at most about 84 + 138 + 8 KiB a function busy every minute of a day, about
//! 115 MiB in all for 512 of them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Minutes of buckets a function keeps: a day.
pub const MINUTES: u64 = 24 * 60;
/// Minutes that keep their duration histograms; older ones keep their quantiles only.
pub const FULL_MINUTES: u64 = 60;
/// Invocations a function keeps one by one.
pub const RECENT: usize = 50;
/// Functions kept.
pub const MAX_FUNCTIONS: usize = 512;

/// Duration buckets per doubling: a bucket is 19% wide, finer than a chart shows.
const STEPS_PER_DOUBLING: f64 = 4.0;

/// How an invocation ended, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The function answered.
    Success,
    /// The function raised, or its runtime failed to start.
    FunctionError,
    /// The function ran past its timeout.
    Timeout,
    /// No VM answered.
    VmError,
    /// A concurrency limit refused it; nothing ran.
    Throttled,
}

impl Status {
    fn is_error(self) -> bool {
        !matches!(self, Self::Success)
    }
}

/// One invocation, as [`History::record`] takes it.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    /// Lambda's request id.
    pub request_id: String,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How it ended.
    pub status: Status,
    /// From acceptance to answer, ms (`None` when nothing ran).
    pub duration_ms: Option<u64>,
    /// How its VM started: `boot`, `restore`, `pool`, `warm` (`None` when none did).
    pub start: Option<&'static str>,
    /// The node that ran it.
    pub node: String,
}

impl Invocation {
    /// A cold start: the VM was booted or restored for this invocation.
    fn cold(&self) -> bool {
        matches!(self.start, Some("boot" | "restore"))
    }
}

/// Counts of durations in logarithmic buckets, only the buckets that have any.
#[derive(Debug, Default, Clone)]
struct Durations {
    buckets: Vec<(u8, u32)>,
}

impl Durations {
    fn add(&mut self, ms: u64) {
        let b = bucket_of(ms);
        match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
    }

    fn merge(&mut self, other: &Self) {
        for &(b, n) in &other.buckets {
            match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
                Err(i) => self.buckets.insert(i, (b, n)),
            }
        }
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// The `q` quantile (0..=1), as its bucket's geometric middle; `None` when empty.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(b, n) in &self.buckets {
            seen += u64::from(n);
            if seen >= rank {
                return Some(middle_of(b));
            }
        }
        self.buckets.last().map(|&(b, _)| middle_of(b))
    }
}

/// Bucket 0 holds 0 and 1 ms; bucket `b` holds `[2^((b-1)/4), 2^(b/4))` ms.
fn bucket_of(ms: u64) -> u8 {
    if ms <= 1 {
        return 0;
    }
    let b = ((ms as f64).log2() * STEPS_PER_DOUBLING).floor() as i64 + 1;
    u8::try_from(b).unwrap_or(u8::MAX)
}

fn middle_of(b: u8) -> f64 {
    if b == 0 {
        return 1.0;
    }
    let lo = 2f64.powf(f64::from(b - 1) / STEPS_PER_DOUBLING);
    let hi = 2f64.powf(f64::from(b) / STEPS_PER_DOUBLING);
    (lo * hi).sqrt()
}

/// One minute of one function.
#[derive(Debug, Clone)]
struct Bucket {
    /// Minutes since the Unix epoch.
    minute: u64,
    invocations: u32,
    errors: u32,
    throttles: u32,
    /// Booted or restored for the invocation.
    cold: Durations,
    /// A pool slot or a kept VM.
    warm: Durations,
    /// Once the minute is older than [`FULL_MINUTES`]: its quantiles, the histograms dropped.
    summary: Option<Summary>,
}

/// A minute's quantiles, kept instead of its histograms once it is old enough.
#[derive(Debug, Clone, Copy)]
struct Summary {
    p50: Option<f32>,
    p99: Option<f32>,
    cold_p50: Option<f32>,
    warm_p50: Option<f32>,
}

impl Bucket {
    /// Keeps the quantiles and drops the histograms (a late invocation into this minute then
    /// counts but no longer moves them).
    fn compact(&mut self) {
        if self.summary.is_some() {
            return;
        }
        let m = Minute::from(&*self);
        let f = |v: Option<f64>| v.map(|v| v as f32);
        self.summary = Some(Summary {
            p50: f(m.p50_ms),
            p99: f(m.p99_ms),
            cold_p50: f(m.cold_p50_ms),
            warm_p50: f(m.warm_p50_ms),
        });
        self.cold = Durations::default();
        self.warm = Durations::default();
    }
}

/// One minute of a function, as the API answers it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Minute {
    /// The minute's start, ms since the Unix epoch.
    pub at_ms: u64,
    /// Invocations that ended in it (throttles included).
    pub invocations: u32,
    /// Of those, the ones that did not succeed (throttles included).
    pub errors: u32,
    /// Of those, the ones a concurrency limit refused.
    pub throttles: u32,
    /// Median duration of the ones that ran, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile duration of the ones that ran, ms.
    pub p99_ms: Option<f64>,
    /// Median duration of cold starts (boot or restore), ms.
    pub cold_p50_ms: Option<f64>,
    /// Median duration of warm ones (pool slot or kept VM), ms.
    pub warm_p50_ms: Option<f64>,
}

impl From<&Bucket> for Minute {
    fn from(b: &Bucket) -> Self {
        if let Some(q) = b.summary {
            let f = |v: Option<f32>| v.map(f64::from);
            return Self {
                at_ms: b.minute * 60_000,
                invocations: b.invocations,
                errors: b.errors,
                throttles: b.throttles,
                p50_ms: f(q.p50),
                p99_ms: f(q.p99),
                cold_p50_ms: f(q.cold_p50),
                warm_p50_ms: f(q.warm_p50),
            };
        }
        let mut all = b.cold.clone();
        all.merge(&b.warm);
        Self {
            at_ms: b.minute * 60_000,
            invocations: b.invocations,
            errors: b.errors,
            throttles: b.throttles,
            p50_ms: all.quantile(0.5),
            p99_ms: all.quantile(0.99),
            cold_p50_ms: b.cold.quantile(0.5),
            warm_p50_ms: b.warm.quantile(0.5),
        }
    }
}

#[derive(Debug, Default)]
struct FunctionPast {
    minutes: VecDeque<Bucket>,
    recent: VecDeque<Invocation>,
    last_ms: u64,
}

/// A function's past, as the API answers it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Past {
    /// Minutes with traffic, oldest first.
    pub minutes: Vec<Minute>,
    /// The last invocations, newest first.
    pub recent: Vec<Invocation>,
    /// When it was last invoked, ms since the Unix epoch.
    pub last_invoked_ms: Option<u64>,
}

/// A function's last hour in a line.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct HourSummary {
    /// Invocations in the last 60 minutes.
    pub invocations: u64,
    /// Of those, the ones that did not succeed.
    pub errors: u64,
    /// When it was last invoked, ms since the Unix epoch.
    pub last_invoked_ms: Option<u64>,
}

/// Every function's past on this node.
#[derive(Debug, Default)]
pub struct History {
    functions: Mutex<HashMap<String, FunctionPast>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FunctionPast>> {
        // Nothing here is left half-updated by a panic worth refusing to read.
        self.functions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an invocation of `function` (its stored name).
    pub fn record(&self, function: &str, inv: Invocation) {
        let mut all = self.lock();
        if !all.contains_key(function) && all.len() >= MAX_FUNCTIONS {
            let oldest = all
                .iter()
                .min_by_key(|(_, p)| p.last_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                all.remove(&k);
            }
        }
        let past = all.entry(function.to_owned()).or_default();
        let minute = inv.at_ms / 60_000;
        past.last_ms = past.last_ms.max(inv.at_ms);
        let newest = past.minutes.back().map_or(minute, |b| b.minute.max(minute));
        if minute + MINUTES <= newest {
            // Older than the day kept: only its line in the recent list.
            past.recent.push_front(inv);
            past.recent.truncate(RECENT);
            return;
        }
        // Invocations end nearly in order; one that ends a little late goes into its minute.
        let i = match past.minutes.binary_search_by_key(&minute, |b| b.minute) {
            Ok(i) => i,
            Err(i) => {
                past.minutes.insert(
                    i,
                    Bucket {
                        minute,
                        invocations: 0,
                        errors: 0,
                        throttles: 0,
                        cold: Durations::default(),
                        warm: Durations::default(),
                        summary: None,
                    },
                );
                i
            }
        };
        let Some(bucket) = past.minutes.get_mut(i) else {
            return;
        };
        bucket.invocations = bucket.invocations.saturating_add(1);
        if inv.status.is_error() {
            bucket.errors = bucket.errors.saturating_add(1);
        }
        if inv.status == Status::Throttled {
            bucket.throttles = bucket.throttles.saturating_add(1);
        }
        if let Some(ms) = inv.duration_ms {
            if inv.cold() {
                bucket.cold.add(ms);
            } else {
                bucket.warm.add(ms);
            }
        }
        past.recent.push_front(inv);
        past.recent.truncate(RECENT);
        while past
            .minutes
            .front()
            .is_some_and(|b| b.minute + MINUTES <= newest)
        {
            past.minutes.pop_front();
        }
        for b in past.minutes.iter_mut().rev() {
            if b.minute + FULL_MINUTES <= newest {
                if b.summary.is_some() {
                    break;
                }
                b.compact();
            }
        }
    }

    /// `function`'s past since `since_ms` (its recent invocations whatever their age).
    pub fn past(&self, function: &str, since_ms: u64) -> Past {
        let all = self.lock();
        let Some(p) = all.get(function) else {
            return Past::default();
        };
        Past {
            minutes: p
                .minutes
                .iter()
                .filter(|b| (b.minute + 1) * 60_000 > since_ms)
                .map(Minute::from)
                .collect(),
            recent: p.recent.iter().cloned().collect(),
            last_invoked_ms: Some(p.last_ms),
        }
    }

    /// `function`'s 60 minutes before `now_ms`.
    pub fn last_hour(&self, function: &str, now_ms: u64) -> HourSummary {
        let all = self.lock();
        let Some(p) = all.get(function) else {
            return HourSummary::default();
        };
        let from = (now_ms / 60_000).saturating_sub(59);
        let (invocations, errors) = p
            .minutes
            .iter()
            .filter(|b| b.minute >= from)
            .fold((0, 0), |(i, e), b| {
                (i + u64::from(b.invocations), e + u64::from(b.errors))
            });
        HourSummary {
            invocations,
            errors,
            last_invoked_ms: Some(p.last_ms),
        }
    }

    /// Forgets `function` (deleted): a function made again under its name starts afresh.
    pub fn forget(&self, function: &str) {
        self.lock().remove(function);
    }
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(at_ms: u64, status: Status, ms: Option<u64>, start: Option<&'static str>) -> Invocation {
        Invocation {
            request_id: format!("r{at_ms}"),
            at_ms,
            status,
            duration_ms: ms,
            start,
            node: "n1".into(),
        }
    }

    #[test]
    fn buckets_by_minute_with_percentiles_and_cold_and_warm_apart() {
        let h = History::default();
        let t0 = 1_000 * 60_000;
        for i in 0..99 {
            h.record("f", inv(t0 + i, Status::Success, Some(10), Some("pool")));
        }
        h.record(
            "f",
            inv(t0 + 500, Status::Success, Some(1000), Some("restore")),
        );
        h.record(
            "f",
            inv(t0 + 60_000, Status::FunctionError, Some(20), Some("warm")),
        );
        h.record("f", inv(t0 + 60_001, Status::Throttled, None, None));
        let past = h.past("f", 0);
        assert_eq!(past.minutes.len(), 2);
        let m = &past.minutes[0];
        assert_eq!((m.invocations, m.errors, m.at_ms), (100, 0, t0));
        let p50 = m.p50_ms.unwrap();
        assert!((9.0..=11.5).contains(&p50), "p50 {p50}");
        let p99 = m.p99_ms.unwrap();
        assert!((9.0..=11.5).contains(&p99), "99 of 100 are 10 ms: {p99}");
        let cold = m.cold_p50_ms.unwrap();
        assert!((900.0..=1100.0).contains(&cold), "cold {cold}");
        assert!((9.0..=11.5).contains(&m.warm_p50_ms.unwrap()));
        let m = &past.minutes[1];
        assert_eq!((m.invocations, m.errors, m.throttles), (2, 2, 1));
        assert_eq!(past.recent.len(), RECENT, "recent is bounded");
        assert_eq!(past.recent[0].status, Status::Throttled, "newest first");
        assert_eq!(past.last_invoked_ms, Some(t0 + 60_001));
        let hour = h.last_hour("f", t0 + 60_001);
        assert_eq!((hour.invocations, hour.errors), (102, 2));
        assert_eq!(h.last_hour("f", t0 + 60 * 60_000).invocations, 2);
        assert_eq!(h.last_hour("f", t0 + 61 * 60_000).invocations, 0);
        assert_eq!(h.past("f", t0 + 60_000).minutes.len(), 1, "since");
    }

    #[test]
    fn keeps_a_day_and_a_bounded_number_of_functions() {
        let h = History::default();
        for m in 0..(MINUTES + 10) {
            h.record("f", inv(m * 60_000, Status::Success, Some(5), Some("pool")));
        }
        let past = h.past("f", 0);
        assert_eq!(past.minutes.len() as u64, MINUTES);
        assert_eq!(past.minutes[0].at_ms, 10 * 60_000, "the oldest went");
        for i in 0..=MAX_FUNCTIONS {
            h.record(
                &format!("g{i}"),
                inv(
                    (MINUTES + 20) * 60_000 + i as u64,
                    Status::Success,
                    Some(1),
                    None,
                ),
            );
        }
        assert_eq!(h.lock().len(), MAX_FUNCTIONS);
        assert!(
            h.past("f", 0).minutes.is_empty(),
            "invoked longest ago, gone"
        );
        h.forget("g1");
        assert!(h.past("g1", 0).last_invoked_ms.is_none());
    }

    #[test]
    fn minutes_past_the_hour_keep_their_quantiles_only() {
        let h = History::default();
        h.record("f", inv(0, Status::Success, Some(100), Some("restore")));
        h.record("f", inv(1, Status::Success, Some(10), Some("pool")));
        let before = h.past("f", 0).minutes[0].clone();
        h.record(
            "f",
            inv(
                FULL_MINUTES * 60_000,
                Status::Success,
                Some(5),
                Some("pool"),
            ),
        );
        {
            let all = h.lock();
            let b = &all["f"].minutes[0];
            assert!(b.summary.is_some() && b.cold.buckets.is_empty() && b.warm.buckets.is_empty());
        }
        let after = h.past("f", 0).minutes[0].clone();
        assert_eq!(before.invocations, after.invocations);
        for (a, b) in [
            (before.p50_ms, after.p50_ms),
            (before.p99_ms, after.p99_ms),
            (before.cold_p50_ms, after.cold_p50_ms),
            (before.warm_p50_ms, after.warm_p50_ms),
        ] {
            assert!((a.unwrap() - b.unwrap()).abs() < 1e-3, "{a:?} {b:?}");
        }
    }

    #[test]
    fn a_late_invocation_lands_in_its_minute() {
        let h = History::default();
        h.record("f", inv(60_000, Status::Success, Some(5), None));
        h.record("f", inv(120_000, Status::Success, Some(5), None));
        h.record("f", inv(60_500, Status::Timeout, Some(5), None));
        let past = h.past("f", 0);
        assert_eq!(past.minutes[0].invocations, 2);
        assert_eq!(past.minutes[0].errors, 1);
        assert_eq!(past.minutes[1].invocations, 1);
    }

    #[test]
    fn buckets_grow_by_a_fifth() {
        for ms in [2u64, 3, 10, 100, 1_000, 900_000] {
            let mid = middle_of(bucket_of(ms));
            assert!(
                (mid / ms as f64 - 1.0).abs() < 0.2,
                "{ms} ms lands in a bucket around {mid}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(u64::MAX - 1));
    }
}
