//! The `litestream-timestamp` metadata value: Go's `time.RFC3339Nano` in UTC (trailing
//! zeros of the fraction trimmed, the dot with them), of a millisecond-precision time.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `t` truncated to milliseconds, e.g. `2026-11-24T07:18:55.99Z` or `…:55Z`.
pub fn format(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let ms = dt.millisecond();
    let frac = if ms == 0 {
        String::new()
    } else {
        let digits = format!("{ms:03}");
        format!(".{}", digits.trim_end_matches('0'))
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Any RFC 3339 time (any fraction length, `Z` or an offset).
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&s.to_ascii_uppercase(), &Rfc3339))
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn ms(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(n)
    }

    #[test]
    fn go_rfc3339nano_shape() {
        let base = 1_795_504_735_000; // 2026-11-24T07:18:55Z
        assert_eq!(format(ms(base + 993)), "2026-11-24T07:18:55.993Z");
        assert_eq!(format(ms(base + 990)), "2026-11-24T07:18:55.99Z");
        assert_eq!(format(ms(base + 5)), "2026-11-24T07:18:55.005Z");
        assert_eq!(format(ms(base)), "2026-11-24T07:18:55Z");
        assert_eq!(
            format(ms(base + 1) + Duration::from_micros(999)),
            "2026-11-24T07:18:55.001Z"
        );
    }

    #[test]
    fn parse_round_trip() {
        for n in [0, 1, 10, 999, 1_795_504_735_993] {
            assert_eq!(parse(&format(ms(n))), Some(ms(n)));
        }
        assert_eq!(
            parse("2026-11-24T08:18:55.993000+01:00"),
            Some(ms(1_795_504_735_993))
        );
        assert_eq!(parse("nope"), None);
    }
}
