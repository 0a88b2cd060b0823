//! Human durations in configuration: `250ms`, `10s`, `5m`, `2h`, `30d`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{t}` has no unit (expected e.g. 10s, 500ms, 5m, 1h, 30d)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` does not start with a whole number"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{t}` is too large"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => Err(format!(
            "`{t}` has unknown unit `{other}` (expected ms, s, m, h or d)"
        )),
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
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10y").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("whole number"));
        assert_eq!(format(Duration::from_secs(10)), "10s");
    }
}
