//! `acme:` of an `https-subdomain` frontend: certificates from an ACME (RFC 8555) CA for the
//! apex and each claimed name. The frontend only reads this; the daemon runs the client.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tunneld_core::duration::serde_human;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// An e-mail address the CA may write to about the account.
    #[serde(default)]
    pub contact: Option<String>,
    /// A PEM file with the root that signs the directory's own TLS certificate (a test CA
    /// such as pebble); without it, the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Challenge types offered to the CA, in order of preference.
    #[serde(default = "both")]
    pub challenges: Vec<ChallengeKind>,
    /// A certificate is renewed this long before it expires (at half its remaining life
    /// when it lives shorter than twice this).
    #[serde(default = "d30d", with = "serde_human")]
    pub renew_before: Duration,
    /// Orders in flight at once.
    #[serde(default = "d2")]
    pub max_orders: usize,
    /// After a failed order, a name waits this long before the next; doubled after each
    /// further failure, up to a day.
    #[serde(default = "d10m", with = "serde_human")]
    pub retry_after: Duration,
}

/// An ACME challenge type tunneld answers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `/.well-known/acme-challenge/<token>` on the plain web port (`control.web_listen`).
    #[serde(rename = "http-01")]
    Http01,
    /// A ClientHello with ALPN `acme-tls/1` on the frontend's own port.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

fn both() -> Vec<ChallengeKind> {
    vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01]
}
fn d30d() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn d2() -> usize {
    2
}
fn d10m() -> Duration {
    Duration::from_secs(600)
}

impl AcmeConfig {
    /// Checks values serde cannot: returns (key under `acme.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("acme.{k}"), m.to_string()));
        if !self.directory.starts_with("https://") || self.directory.len() <= "https://".len() {
            return err(
                "directory",
                "must be an https:// URL (ACME runs over HTTPS)",
            );
        }
        if let Some(c) = &self.contact {
            let c = c.strip_prefix("mailto:").unwrap_or(c);
            if !c.contains('@')
                || c.starts_with('@')
                || c.ends_with('@')
                || c.contains(char::is_whitespace)
            {
                return err("contact", "must be an e-mail address");
            }
        }
        if self.challenges.is_empty() {
            return err("challenges", "list at least one of http-01, tls-alpn-01");
        }
        if self.challenges.len() == 2 && self.challenges[0] == self.challenges[1] {
            return err("challenges", "a challenge type is listed twice");
        }
        if self.max_orders == 0 {
            return err("max_orders", "must be at least 1");
        }
        if self.renew_before < Duration::from_secs(1) {
            return err("renew_before", "must be at least 1s");
        }
        if self.retry_after < Duration::from_secs(1) {
            return err("retry_after", "must be at least 1s");
        }
        Ok(())
    }

    /// The account's contact URIs (`mailto:`).
    pub fn contact_uri(&self) -> Option<String> {
        self.contact
            .as_ref()
            .map(|c| match c.strip_prefix("mailto:") {
                Some(_) => c.clone(),
                None => format!("mailto:{c}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with `directory`.
    fn cfg(directory: &str) -> AcmeConfig {
        AcmeConfig {
            directory: directory.to_string(),
            contact: None,
            ca: None,
            challenges: both(),
            renew_before: d30d(),
            max_orders: d2(),
            retry_after: d10m(),
        }
    }

    #[test]
    fn validation_names_the_key() {
        assert!(cfg("https://ca.example/dir").validate().is_ok());
        let key = |c: AcmeConfig| c.validate().err().map(|e| e.0);
        assert_eq!(
            key(cfg("http://ca.example/dir")),
            Some("acme.directory".into())
        );
        let mut c = cfg("https://ca.example/dir");
        c.contact = Some("not an address".into());
        assert_eq!(key(c), Some("acme.contact".into()));
        let mut c = cfg("https://ca.example/dir");
        c.challenges = vec![ChallengeKind::Http01, ChallengeKind::Http01];
        assert_eq!(key(c), Some("acme.challenges".into()));
        let mut c = cfg("https://ca.example/dir");
        c.max_orders = 0;
        assert_eq!(key(c), Some("acme.max_orders".into()));
    }

    #[test]
    fn contact_becomes_a_mailto_uri() {
        let mut c = cfg("https://ca.example/dir");
        c.contact = Some("ops@example.com".into());
        assert_eq!(c.contact_uri().as_deref(), Some("mailto:ops@example.com"));
        c.contact = Some("mailto:ops@example.com".into());
        assert_eq!(c.contact_uri().as_deref(), Some("mailto:ops@example.com"));
    }
}
