//! Latency summaries for the benchmark.

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// The nearest-rank percentile `p` (0..=100) of sorted `v`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0);
    // rank is in 1..=len, so the index is in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idx = (rank as usize).min(sorted.len()) - 1;
    sorted[idx]
}

/// Summarizes `samples` (any order).
pub(crate) fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        p50_ms: percentile(&v, 50.0),
        p90_ms: percentile(&v, 90.0),
        p99_ms: percentile(&v, 99.0),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!(
            (s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50_ms, s.max_ms), (2.0, 3.0));
        assert!(summarize(&[]).p50_ms.is_nan());
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
