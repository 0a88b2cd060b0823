//! Host name patterns for routing by name (TLS SNI, later HTTP Host): an exact name,
//! `*.suffix` (any name with one or more labels before `.suffix`) or `*` (anything, the
//! fallback). When several patterns match, the most specific wins: an exact name beats any
//! glob, and a longer suffix beats a shorter one.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostGlob {
    /// `*`: every name, and visitors that send no name at all.
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    /// `www.example.com`.
    Exact(String),
}

/// Why a pattern was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("host pattern `{pattern}` is invalid: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: &'static str,
}

fn valid_labels(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl HostGlob {
    /// Parses `*`, `*.suffix` or an exact name (case-insensitive; stored lower-case).
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        let err = |reason| GlobError {
            pattern: pattern.to_string(),
            reason,
        };
        let p = pattern.trim().to_ascii_lowercase();
        let p = p.strip_suffix('.').unwrap_or(&p);
        if p == "*" {
            return Ok(HostGlob::Any);
        }
        if let Some(rest) = p.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(err("only one leading `*.` is supported"));
            }
            if !valid_labels(rest) {
                return Err(err("the part after `*.` is not a DNS name"));
            }
            return Ok(HostGlob::Suffix(format!(".{rest}")));
        }
        if p.contains('*') {
            return Err(err("`*` may only appear alone or as a leading `*.` label"));
        }
        if !valid_labels(p) {
            return Err(err("not a DNS name"));
        }
        Ok(HostGlob::Exact(p.to_string()))
    }

    /// Whether `name` (already lower-case, no trailing dot) matches. `None` (no name sent)
    /// matches only `*`.
    pub fn matches(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (HostGlob::Any, _) => true,
            (_, None) => false,
            (HostGlob::Exact(e), Some(n)) => e == n,
            (HostGlob::Suffix(s), Some(n)) => n.len() > s.len() && n.ends_with(s.as_str()),
        }
    }

    /// Specificity order: `Any` < shorter suffix < longer suffix < exact.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostGlob::Any => (0, 0),
            HostGlob::Suffix(s) => (1, s.len()),
            HostGlob::Exact(e) => (2, e.len()),
        }
    }
}

impl fmt::Display for HostGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostGlob::Any => f.write_str("*"),
            HostGlob::Suffix(s) => write!(f, "*{s}"),
            HostGlob::Exact(e) => f.write_str(e),
        }
    }
}

/// Normalises a name as a visitor sent it (SNI or Host): lower-case, no trailing dot.
pub fn normalize(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    n.strip_suffix('.').map(str::to_string).unwrap_or(n)
}

/// The index of the most specific pattern matching `name`, if any.
pub fn best_match<'a, I>(patterns: I, name: Option<&str>) -> Option<usize>
where
    I: IntoIterator<Item = &'a HostGlob>,
{
    patterns
        .into_iter()
        .enumerate()
        .filter(|(_, g)| g.matches(name))
        .max_by(|(ia, a), (ib, b)| {
            a.specificity()
                .cmp(&b.specificity())
                // Equal patterns cannot coexist in a table; prefer the earlier one anyway.
                .then(ib.cmp(ia))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> HostGlob {
        HostGlob::parse(s).expect(s)
    }

    #[test]
    fn parse_and_match() {
        assert_eq!(g("*"), HostGlob::Any);
        assert_eq!(g("*.Example.com."), HostGlob::Suffix(".example.com".into()));
        assert_eq!(
            g("WWW.example.com"),
            HostGlob::Exact("www.example.com".into())
        );
        assert!(g("*.example.com").matches(Some("a.b.example.com")));
        assert!(!g("*.example.com").matches(Some("example.com")));
        assert!(!g("*.example.com").matches(Some("badexample.com")));
        assert!(!g("*.example.com").matches(None));
        assert!(g("*").matches(None));
        for bad in ["", "a*.b", "*.*.b", "*x", "a..b", "-a.b", "a b", "*.."] {
            assert!(HostGlob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_specific_wins() {
        let table = [
            g("*"),
            g("*.example.com"),
            g("*.a.example.com"),
            g("x.a.example.com"),
        ];
        assert_eq!(best_match(&table, Some("x.a.example.com")), Some(3));
        assert_eq!(best_match(&table, Some("y.a.example.com")), Some(2));
        assert_eq!(best_match(&table, Some("b.example.com")), Some(1));
        assert_eq!(best_match(&table, Some("other.org")), Some(0));
        assert_eq!(best_match(&table, None), Some(0));
        assert_eq!(best_match(&table[1..], Some("other.org")), None);
    }
}
