use chrono::{Datelike, TimeZone, Timelike, Utc};
use proptest::prelude::*;

use super::*;

fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .unwrap()
        .timestamp_millis()
}

fn timing(expr: &str, zone: &str, created_ms: i64) -> Timing {
    Timing {
        expression: expr.parse().unwrap(),
        zone: time_zone(zone).unwrap(),
        start_ms: None,
        end_ms: None,
        created_ms,
    }
}

#[test]
fn rates_fire_every_period_from_their_anchor() {
    let made = utc_ms(2026, 12, 2, 7, 3) + 12_345;
    let t = timing("rate(5 minutes)", "UTC", made);
    assert_eq!(t.next_after(made), Some(made + 300_000));
    assert_eq!(t.next_after(made + 300_000), Some(made + 600_000));
    assert_eq!(t.next_after(made + 299_999), Some(made + 300_000));
    let t = Timing {
        start_ms: Some(made + 3_600_000),
        end_ms: Some(made + 3_600_000 + 600_000),
        ..t
    };
    assert_eq!(t.next_after(made), Some(made + 3_600_000 + 300_000));
    assert_eq!(
        t.next_after(made + 3_600_000 + 600_000),
        None,
        "past the end"
    );
}

#[test]
fn expressions_parse_and_bad_ones_say_why() {
    assert_eq!(
        "rate(1 minute)".parse::<Expression>().unwrap(),
        Expression::Rate { period_ms: 60_000 }
    );
    assert_eq!(
        "rate(2 days)".parse::<Expression>().unwrap(),
        Expression::Rate {
            period_ms: 2 * 86_400_000
        }
    );
    for (bad, says) in [
        ("rate(0 minutes)", "at least 1"),
        ("rate(1 minutes)", "unit"),
        ("rate(5 minute)", "unit"),
        ("rate(5 weeks)", "unit"),
        ("rate(five minutes)", "whole number"),
        ("at(2026-13-01T00:00:00)", "yyyy-mm-dd"),
        ("every day", "not rate"),
        ("cron(0 12 * * MON *)", "both be set"),
    ] {
        let e = bad.parse::<Expression>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(time_zone("Europe/Paris").is_ok());
    assert!(time_zone("Mars/Olympus").is_err());
}

#[test]
fn at_fires_once_in_its_zone() {
    let t = timing("at(2027-01-15T09:30:00)", "Europe/Paris", 0);
    let when = utc_ms(2027, 1, 15, 8, 30);
    assert_eq!(t.next_after(0), Some(when));
    assert_eq!(t.next_after(when), None);
}

#[test]
fn a_time_skipped_by_daylight_saving_fires_when_the_clock_jumps() {
    // New York springs forward at 02:00 on 8 March 2026: 02:30 does not exist that day.
    let t = timing("cron(30 2 * * ? *)", "America/New_York", 0);
    let before = utc_ms(2026, 3, 7, 12, 0);
    let first = t.next_after(before).unwrap();
    assert_eq!(first, utc_ms(2026, 3, 8, 7, 0), "03:00 EDT");
    assert_eq!(
        t.next_after(first),
        Some(utc_ms(2026, 3, 9, 6, 30)),
        "02:30 EDT"
    );
}

#[test]
fn a_time_repeated_by_daylight_saving_fires_once() {
    // New York falls back at 02:00 EDT on 1 November 2026: 01:30 happens twice.
    let t = timing("cron(30 1 * * ? *)", "America/New_York", 0);
    let first = t.next_after(utc_ms(2026, 10, 31, 12, 0)).unwrap();
    assert_eq!(first, utc_ms(2026, 11, 1, 5, 30), "01:30 EDT");
    assert_eq!(
        t.next_after(first),
        Some(utc_ms(2026, 11, 2, 6, 30)),
        "not 01:30 EST the same night"
    );
}

#[test]
fn crons_that_never_fire_have_no_next() {
    let t = timing("cron(0 0 30 2 ? *)", "UTC", 0);
    assert_eq!(t.next_after(utc_ms(2026, 1, 1, 0, 0)), None);
    let t = timing("cron(0 0 1 1 ? 2020)", "UTC", 0);
    assert_eq!(t.next_after(utc_ms(2026, 1, 1, 0, 0)), None);
}

const ZONES: [&str; 5] = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

fn list(items: &[u32]) -> String {
    items
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn cron_strategy() -> impl Strategy<Value = String> {
    (
        proptest::collection::btree_set(0u32..60, 1..4),
        proptest::collection::btree_set(0u32..24, 1..6),
        proptest::option::of(proptest::collection::btree_set(1u32..=7, 1..4)),
    )
        .prop_map(|(minutes, hours, days)| {
            let m: Vec<u32> = minutes.into_iter().collect();
            let h: Vec<u32> = hours.into_iter().collect();
            match days {
                None => format!("cron({} {} * * ? *)", list(&m), list(&h)),
                Some(d) => {
                    let d: Vec<u32> = d.into_iter().collect();
                    format!("cron({} {} ? * {} *)", list(&m), list(&h), list(&d))
                }
            }
        })
}

/// Whether the cron names the local minute of instant `u` and `u` is that local time's first
/// occurrence (what must fire).
fn should_fire(c: &Cron, zone: Tz, u: i64) -> bool {
    let local = zone.timestamp_millis_opt(u).unwrap().naive_local();
    c.fires_on(local.date())
        && c.hours().any(|h| h == local.hour())
        && c.minutes().any(|m| m == local.minute())
        && zone
            .from_local_datetime(&local)
            .earliest()
            .map(|x| x.timestamp_millis())
            == Some(u)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The next firing is after `after`, and no minute between them should have fired: checked
    /// minute by minute, in zones with and without daylight saving (Lord Howe's moves by 30
    /// minutes), across the year's changes.
    #[test]
    fn the_next_firing_is_the_first_one(
        expr in cron_strategy(),
        zone in 0usize..ZONES.len(),
        after_min in 0i64..(2 * 365 * 24 * 60),
    ) {
        let t = timing(&expr, ZONES[zone], 0);
        let Expression::Cron(c) = &t.expression else { unreachable!() };
        let after = utc_ms(2026, 1, 1, 0, 0) + after_min * 60_000 + 17_000;
        let next = t.next_after(after).expect("a weekly cron fires");
        prop_assert!(next > after);
        prop_assert!(next - after <= 8 * 86_400_000, "{expr}: {} h", (next - after) / 3_600_000);
        let first_minute = (after / 60_000 + 1) * 60_000;
        let mut u = first_minute;
        while u < next {
            prop_assert!(!should_fire(c, t.zone, u), "{expr} in {}: {u} was skipped", ZONES[zone]);
            u += 60_000;
        }
        // What fired is a time the cron names, or the end of a gap that swallowed one.
        let local = t.zone.timestamp_millis_opt(next).unwrap().naive_local();
        let named = should_fire(c, t.zone, next);
        let after_gap = t.zone.timestamp_millis_opt(next - 60_000).unwrap().naive_local()
            + chrono::Duration::minutes(1) != local;
        prop_assert!(named || after_gap, "{expr}: {local}");
        prop_assert_eq!(next % 60_000, 0);
        let _ = local.weekday();
    }
}
