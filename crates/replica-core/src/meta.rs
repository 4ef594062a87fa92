//! What backends persist beside an object's bytes, shared so that every backend writes
//! the same names and the same time format: the LTX time in Litestream's
//! `litestream-timestamp` metadata (Go's RFC 3339 with nanoseconds, trailing zeros
//! trimmed) and the put id that makes create-only puts idempotent.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The metadata name of the LTX time on S3 and GCS, as Litestream writes it.
pub const TIMESTAMP: &str = "litestream-timestamp";

/// The same on Azure, where metadata names must be C# identifiers (no hyphens).
pub const TIMESTAMP_AZURE: &str = "litestreamtimestamp";

/// Formats `t`, truncated to milliseconds, as Litestream writes it:
/// `2026-11-24T07:18:55.993Z`, `…:55.99Z`, `…:55.9Z` or `…:55Z`.
pub fn format_timestamp(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let ms = dt.millisecond();
    if ms != 0 {
        let frac = format!("{ms:03}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses any RFC 3339 timestamp (any number of fraction digits, `Z` or an offset,
/// `t`/`z` in either case).
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
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

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        // 2026-11-24T07:18:55Z
        let base = 1_795_504_735_000;
        assert_eq!(
            format_timestamp(at_ms(base + 993)),
            "2026-11-24T07:18:55.993Z"
        );
        assert_eq!(
            format_timestamp(at_ms(base + 990)),
            "2026-11-24T07:18:55.99Z"
        );
        assert_eq!(
            format_timestamp(at_ms(base + 900)),
            "2026-11-24T07:18:55.9Z"
        );
        assert_eq!(
            format_timestamp(at_ms(base + 5)),
            "2026-11-24T07:18:55.005Z"
        );
        assert_eq!(format_timestamp(at_ms(base)), "2026-11-24T07:18:55Z");
        // Sub-millisecond precision is dropped, not rounded.
        assert_eq!(
            format_timestamp(at_ms(base + 993) + Duration::from_micros(999)),
            "2026-11-24T07:18:55.993Z"
        );
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_flexibly() {
        let base = 1_795_504_735_000;
        for (s, ms) in [
            ("2026-11-24T07:18:55.993Z", base + 993),
            ("2026-11-24T07:18:55.99Z", base + 990),
            ("2026-11-24T07:18:55Z", base),
            ("2026-11-24T07:18:55.993000000Z", base + 993),
            ("2026-11-24T08:18:55.993+01:00", base + 993),
            ("2026-11-24t07:18:55.993z", base + 993),
            (" 2026-11-24T07:18:55.993Z\n", base + 993),
        ] {
            assert_eq!(parse_timestamp(s), Some(at_ms(ms)), "{s}");
        }
        assert_eq!(
            parse_timestamp("2026-11-24T07:18:55.123456789Z"),
            Some(at_ms(base + 123) + Duration::from_nanos(456_789))
        );
        for s in ["", "yesterday", "2026-11-24", "1795504735"] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn round_trips_at_millisecond_precision() {
        for ms in [0, 1, 10, 100, 999, 1_795_504_735_993] {
            assert_eq!(
                parse_timestamp(&format_timestamp(at_ms(ms))),
                Some(at_ms(ms))
            );
        }
    }
}
