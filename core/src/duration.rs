//! Human durations in configuration: `250ms`, `10s`, `5m`, `2h`, `30d`.

use std::time::Duration;

/// Why a duration was not understood; the text names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` has no unit (expected e.g. 10s, 500ms, 5m, 1h, 30d)")]
    NoUnit(String),
    #[error("`{0}` does not start with a whole number")]
    NotANumber(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{text}` has unknown unit `{unit}` (expected ms, s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
}

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(t.into()))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(t.into()))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| DurationError::TooLarge(t.into()))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => Err(DurationError::UnknownUnit {
            text: t.into(),
            unit: other.into(),
        }),
    }
}

/// Serde adapter: `#[serde(with = "tunneld_core::duration::serde_human")]`.
pub mod serde_human {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse("10").unwrap_err().to_string().contains("no unit"));
        assert!(parse("10y")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse("s").unwrap_err().to_string().contains("whole number"));
        assert_eq!(
            parse("99999999999999999d"),
            Err(DurationError::TooLarge("99999999999999999d".into()))
        );
        assert_eq!(format(Duration::from_secs(10)), "10s");
    }
}
