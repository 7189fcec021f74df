//! A function's last hour as charts, drawn on the node as SVG (no script, no library): one bar
//! or point per minute, from the history the API keeps ([`ignition_api::history`]).

use ignition_api::history::Minute;
use maud::{html, Markup};

/// Minutes a chart shows.
pub(crate) const WINDOW: u64 = 60;

// About the size a chart is drawn at in the page's three columns, so that its text is too.
const W: f64 = 360.0;
const H: f64 = 130.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 16.0;
const TOP: f64 = 8.0;

/// The window's minutes, oldest first: each with its bucket, if it had traffic.
fn slots(minutes: &[Minute], now_ms: u64) -> Vec<(u64, Option<&Minute>)> {
    let last = now_ms / 60_000;
    (0..WINDOW)
        .map(|i| {
            let minute = last + 1 + i - WINDOW;
            (minute, minutes.iter().find(|m| m.at_ms / 60_000 == minute))
        })
        .collect()
}

fn x_of(i: usize) -> f64 {
    LEFT + (W - LEFT) * (i as f64 + 0.5) / WINDOW as f64
}

fn y_of(v: f64, max: f64) -> f64 {
    H - BOTTOM - (H - BOTTOM - TOP) * (v / max).min(1.0)
}

/// A round top for an axis holding `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&m| m >= max)
        .unwrap_or(10.0 * p)
}

fn fmt_count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `850 ms`, `2.5 s`, `40 s`.
fn fmt_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0} s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

/// The grid, its labels (`ticks` values, each written by `label`) and the minutes' clock.
fn frame(
    max: f64,
    ticks: &[f64],
    label: fn(f64) -> String,
    slots: &[(u64, Option<&Minute>)],
) -> Markup {
    html! {
        @for v in ticks {
            line.grid x1=(LEFT) x2=(W) y1=(y_of(*v, max)) y2=(y_of(*v, max)) {}
            text.axis x=(LEFT - 4.0) y=(y_of(*v, max) + 3.5) text-anchor="end" {
                (label(*v))
            }
        }
        @for (i, (minute, _)) in slots.iter().enumerate() {
            @if i % 20 == 0 || i + 1 == slots.len() {
                text.axis x=(x_of(i)) y=(H - 3.0)
                    text-anchor=(if i + 1 == slots.len() { "end" } else { "middle" }) {
                    (crate::time::clock(minute * 60_000))
                }
            }
        }
    }
}

/// Invocations per minute, errors in their own colour on top of successes.
pub(crate) fn invocations(minutes: &[Minute], now_ms: u64) -> Markup {
    let slots = slots(minutes, now_ms);
    let max = nice_max(
        slots
            .iter()
            .filter_map(|(_, m)| m.map(|m| f64::from(m.invocations)))
            .fold(0.0, f64::max),
    );
    let bar = (W - LEFT) / WINDOW as f64 * 0.7;
    let total: u64 = slots
        .iter()
        .filter_map(|(_, m)| m.map(|m| u64::from(m.invocations)))
        .sum();
    let errors: u64 = slots
        .iter()
        .filter_map(|(_, m)| m.map(|m| u64::from(m.errors)))
        .sum();
    html! {
        figure.chart #chart-invocations data-total=(total) data-errors=(errors) {
            figcaption {
                "Invocations per minute "
                span.key.ok { "succeeded" } " "
                span.key.bad { "failed" }
                span.muted { " · " (total) " in the hour, " (errors) " failed" }
            }
            svg viewBox=(format!("0 0 {W} {H}")) role="img"
                aria-label=(format!("{total} invocations in the last hour, {errors} failed")) {
                (frame(max, &[0.0, max], fmt_count, &slots))
                @for (i, (_, m)) in slots.iter().enumerate() {
                    @if let Some(m) = m {
                        @let ok = f64::from(m.invocations - m.errors.min(m.invocations));
                        @let bad = f64::from(m.errors.min(m.invocations));
                        rect.ok x=(x_of(i) - bar / 2.0) width=(bar)
                            y=(y_of(ok, max)) height=(y_of(0.0, max) - y_of(ok, max))
                            data-count=(m.invocations) {
                            title { (crate::time::clock(m.at_ms)) ": " (m.invocations) " invocations, " (m.errors) " failed" }
                        }
                        @if bad > 0.0 {
                            rect.bad x=(x_of(i) - bar / 2.0) width=(bar)
                                y=(y_of(ok + bad, max)) height=(y_of(ok, max) - y_of(ok + bad, max)) {}
                        }
                    }
                }
            }
        }
    }
}

/// A line of a chart: its name, its CSS class, and its value in a minute.
struct Series {
    name: &'static str,
    class: &'static str,
    value: fn(&Minute) -> Option<f64>,
}

/// One line per series: the points of minutes that have a value, joined.
fn lines(id: &str, caption: &str, minutes: &[Minute], now_ms: u64, series: &[Series]) -> Markup {
    let slots = slots(minutes, now_ms);
    let max = nice_max(
        slots
            .iter()
            .filter_map(|(_, m)| *m)
            .flat_map(|m| series.iter().filter_map(|s| (s.value)(m)))
            .fold(0.0, f64::max),
    );
    html! {
        figure.chart id=(id) {
            figcaption {
                (caption) " "
                @for s in series { span class=(format!("key {}", s.class)) { (s.name) } " " }
            }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(caption) {
                (frame(max, &[0.0, max / 2.0, max], fmt_ms, &slots))
                @for Series { name, class, value } in series {
                    @let points: Vec<(f64, f64, f64)> = slots.iter().enumerate()
                        .filter_map(|(i, (_, m))| m.and_then(value).map(|v| (x_of(i), y_of(v, max), v)))
                        .collect();
                    @if points.len() > 1 {
                        polyline class=(format!("line {class}")) points=(points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")) {}
                    }
                    @for (x, y, v) in &points {
                        circle class=(format!("dot {class}")) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2.5" {
                            title { (name) ": " (fmt_ms(*v)) }
                        }
                    }
                }
            }
        }
    }
}

/// P50 and P99 of every invocation that ran, per minute.
pub(crate) fn durations(minutes: &[Minute], now_ms: u64) -> Markup {
    lines(
        "chart-durations",
        "Duration",
        minutes,
        now_ms,
        &[
            Series {
                name: "P50",
                class: "p50",
                value: |m| m.p50_ms,
            },
            Series {
                name: "P99",
                class: "p99",
                value: |m| m.p99_ms,
            },
        ],
    )
}

/// Medians of cold starts (booted or restored) and warm ones (pool slot or kept VM).
pub(crate) fn cold_and_warm(minutes: &[Minute], now_ms: u64) -> Markup {
    lines(
        "chart-starts",
        "Cold start vs warm (median)",
        minutes,
        now_ms,
        &[
            Series {
                name: "cold (boot or restore)",
                class: "cold",
                value: |m| m.cold_p50_ms,
            },
            Series {
                name: "warm (pool or kept VM)",
                class: "warm",
                value: |m| m.warm_p50_ms,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(at_ms: u64, invocations: u32, errors: u32) -> Minute {
        Minute {
            at_ms,
            invocations,
            errors,
            throttles: 0,
            p50_ms: Some(12.0),
            p99_ms: Some(40.0),
            cold_p50_ms: None,
            warm_p50_ms: Some(12.0),
        }
    }

    #[test]
    fn a_chart_has_a_bar_per_minute_with_traffic_inside_the_hour() {
        let now = 100 * 60_000 + 5_000;
        let minutes = [
            minute(30 * 60_000, 9, 0),
            minute(99 * 60_000, 3, 1),
            minute(100 * 60_000, 2, 0),
        ];
        let svg = invocations(&minutes, now).into_string();
        assert_eq!(svg.matches("data-count=").count(), 2, "{svg}");
        assert!(svg.contains("data-total=\"5\""));
        assert!(svg.contains("data-errors=\"1\""));
        assert_eq!(svg.matches("class=\"bad\"").count(), 1);
        let lines = durations(&minutes, now).into_string();
        assert!(lines.contains("polyline"), "{lines}");
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(fmt_ms(850.4), "850 ms");
        assert_eq!(fmt_ms(2_500.0), "2.5 s");
        assert_eq!(fmt_ms(20_000.0), "20 s");
        assert_eq!(fmt_count(1.0), "1");
        assert_eq!(fmt_count(2.5), "2.5");
    }

    #[test]
    fn axes_round_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(21.0), 25.0);
        assert_eq!(nice_max(1000.0), 1000.0);
    }
}
