//! Wall-clock times in the forms AWS's APIs write them.

/// A UTC date and time of day.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

/// The civil date of `unix` seconds (Howard Hinnant's days-from-civil, inverted).
fn civil(unix: i64) -> Civil {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        hour: secs / 3600,
        minute: secs % 3600 / 60,
        second: secs % 60,
    }
}

/// Lambda's timestamps: `2026-11-29T10:54:17.000+0000`.
pub(crate) fn iso8601(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000+0000",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// An instant with milliseconds, as Lambda's invocation records write it:
/// `2026-11-29T10:54:17.123Z`.
pub(crate) fn iso8601_ms(unix_ms: i64) -> String {
    let c = civil(unix_ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        unix_ms.rem_euclid(1000)
    )
}

/// The request time of an HTTP event (`requestContext.time`): `12/Mar/2020:19:03:58 +0000`.
pub(crate) fn common_log_time(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(unix);
    let month = usize::try_from(c.month - 1)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .unwrap_or(&"Jan");
    format!(
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_aws_forms() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000+0000");
        assert_eq!(iso8601(1_795_949_657), "2026-11-29T10:54:17.000+0000");
        assert_eq!(common_log_time(1_583_348_638), "04/Mar/2020:19:03:58 +0000");
        assert_eq!(common_log_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(iso8601_ms(1_795_949_657_123), "2026-11-29T10:54:17.123Z");
    }
}
