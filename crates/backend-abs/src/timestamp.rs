//! The `litestreamtimestamp` metadata value: Go's RFC3339Nano in UTC, which trims
//! trailing zeros of the fraction (and the dot with them), of a millisecond timestamp.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats `t`, truncated to milliseconds, as Litestream writes it:
/// `2026-11-24T07:18:55.993Z`, `…:55.99Z`, `…:55.9Z` or `…:55Z`.
pub fn format(t: SystemTime) -> String {
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

    #[test]
    fn round_trip_and_go_format() {
        let base = UNIX_EPOCH + Duration::from_millis(1_795_504_735_990);
        assert_eq!(format(base), "2026-11-24T07:18:55.99Z");
        for ms in [0u64, 1, 999, 1_795_504_735_993] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse(&format(t)), Some(t));
        }
        assert_eq!(parse("nope"), None);
    }
}
