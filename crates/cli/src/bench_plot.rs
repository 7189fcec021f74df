//! The benchmark's plot: one latency distribution (CDF) per mode, as SVG, log-scaled time.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#444444", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
];

/// Draws the CDFs of `series` (name, latencies in ms).
pub(crate) fn cdf_svg(title: &str, series: &[(String, Vec<f64>)]) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|x| *x > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (l0, l1) = (lo.log10().floor(), hi.log10().ceil());
    let x = |ms: f64| LEFT + (ms.max(lo).log10() - l0) / (l1 - l0) * (W - LEFT - RIGHT);
    let y = |q: f64| TOP + (1.0 - q) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Decades on x, quartiles on y.
    let mut d = l0;
    while d <= l1 {
        let px = x(10f64.powf(d));
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#ddd"/>"##,
            H - BOTTOM
        );
        let _ = write!(
            s,
            r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 16.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
        let py = y(q);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/>"##,
            W - RIGHT
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{q}</text>"#,
            LEFT - 6.0,
            py + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (ms, log scale)</text>"#,
        W / 2.0,
        H - 12.0
    );
    let _ = write!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fraction of invocations</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, v)) in series.iter().enumerate() {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        for (k, ms) in v.iter().enumerate() {
            let q = (k + 1) as f64 / v.len() as f64;
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if k == 0 { "M" } else { "L" },
                x(*ms),
                y(q)
            );
        }
        let _ = write!(
            s,
            r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
        let ly = TOP + 16.0 * i as f64 + 10.0;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            W - 200.0,
            W - 180.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}">{} (n={})</text>"#,
            W - 175.0,
            ly + 4.0,
            escape(name),
            v.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_curve_per_series() {
        let svg = cdf_svg(
            "t <1>",
            &[
                ("a".into(), vec![1.0, 2.0, 30.0]),
                ("b".into(), vec![100.0]),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("a (n=3)"));
    }
}
