//! Times on the command line and in what is printed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses RFC 3339 (`2024-05-01T12:00:00Z`) or Unix seconds.
pub(crate) fn parse(text: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| format!("{secs} is too far in the future"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is not a time ({e}); use RFC 3339 such as 2024-05-01T12:00:00Z, or Unix seconds")
    })
}

/// RFC 3339, in UTC, to the second.
pub(crate) fn show(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds_are_the_same_time() {
        let unix = parse("1714564800").unwrap();
        assert_eq!(parse("2024-05-01T12:00:00Z").unwrap(), unix);
        assert_eq!(show(unix), "2024-05-01T12:00:00Z");
        let err = parse("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
