//! Visitor credentials on the rendezvous frontend: the Digest challenge node-rendezvous sent,
//! tunneld's own expiring nonces with nonce-count replay checks, and Digest or Basic
//! credentials whose username names the rendezvous id.
//!
//! The password is never checked here, as in the original: the hidden server authenticates
//! its visitors itself. The nonce checks stop a captured `Authorization` header from being
//! replayed later.

use ring::hmac;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nonces remembered at once for nonce-count checks; beyond it the oldest go first.
const MAX_TRACKED: usize = 65_536;

/// Credentials a visitor presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Digest {
        username: String,
        nonce: String,
        /// The nonce count (`nc`), when the client used `qop`.
        nc: Option<u32>,
        opaque: Option<String>,
    },
    Basic {
        username: String,
    },
}

impl Credentials {
    pub fn username(&self) -> &str {
        match self {
            Credentials::Digest { username, .. } | Credentials::Basic { username } => username,
        }
    }
}

/// Why an `Authorization` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error(transparent)]
    Basic(#[from] tunneld_core::auth::CredentialsError),
    #[error("authorization scheme `{0}` is not Digest or Basic")]
    Scheme(String),
    #[error("Digest credentials have no username")]
    NoUsername,
    #[error("Digest credentials have no nonce")]
    NoNonce,
    #[error("Digest nc `{0}` is not hex")]
    NcNotHex(String),
    #[error("Digest parameter `{0}` has no value")]
    NoValue(String),
    #[error("Digest parameter `{0}` has an unterminated quote")]
    Unterminated(String),
    #[error("too many Digest parameters")]
    TooMany,
}

/// Parses an `Authorization` value (`Digest k=v, ...` or `Basic base64`).
pub fn parse_authorization(value: &str) -> Result<Credentials, AuthorizationError> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let (username, _) = tunneld_core::auth::basic_credentials(rest)?;
        return Ok(Credentials::Basic { username });
    }
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(AuthorizationError::Scheme(scheme.to_string()));
    }
    let params = parse_params(rest)?;
    let username = params
        .get("username")
        .ok_or(AuthorizationError::NoUsername)?
        .clone();
    let nonce = params
        .get("nonce")
        .ok_or(AuthorizationError::NoNonce)?
        .clone();
    let nc = match params.get("nc") {
        Some(v) => {
            Some(u32::from_str_radix(v, 16).map_err(|_| AuthorizationError::NcNotHex(v.clone()))?)
        }
        None => None,
    };
    Ok(Credentials::Digest {
        username,
        nonce,
        nc,
        opaque: params.get("opaque").cloned(),
    })
}

/// `k=v, k="quoted \"v\""` pairs; keys lower-cased.
fn parse_params(s: &str) -> Result<HashMap<String, String>, AuthorizationError> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        if i >= b.len() {
            return Err(AuthorizationError::NoValue(s[k0..].to_string()));
        }
        let key = s[k0..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        val.push(b[i + 1] as char);
                        i += 2;
                    }
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    c => {
                        val.push(c as char);
                        i += 1;
                    }
                }
            }
            if !closed {
                return Err(AuthorizationError::Unterminated(key));
            }
        } else {
            let v0 = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[v0..i].trim().to_string();
        }
        if out.len() >= 32 {
            return Err(AuthorizationError::TooMany);
        }
        out.insert(key, val);
    }
    Ok(out)
}

/// Why a Digest nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Not issued by this tunneld.
    Foreign,
    /// Issued, but older than the lifetime: the client should retry with a new one.
    Stale,
    /// The nonce count did not go up.
    Replayed,
    /// The opaque value is not ours.
    Opaque,
}

impl NonceError {
    pub fn reason(self) -> &'static str {
        match self {
            NonceError::Foreign => "foreign_nonce",
            NonceError::Stale => "stale_nonce",
            NonceError::Replayed => "replayed_nonce",
            NonceError::Opaque => "bad_opaque",
        }
    }
}

/// Issues and checks tunneld's Digest nonces: `base64url(time || random || mac)`, so a nonce
/// needs no state until it is used; used nonces remember their highest count.
pub struct Nonces {
    key: hmac::Key,
    opaque: String,
    ttl: Duration,
    seen: Mutex<HashMap<String, (u64, u32)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Nonces {
    pub fn new(ttl: Duration) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &tunneld_core::auth::random_bytes::<32>());
        let opaque = tunneld_core::auth::hex(&tunneld_core::auth::random_bytes::<16>());
        Self {
            key,
            opaque,
            ttl,
            seen: Mutex::default(),
        }
    }

    fn mint(&self, issued: u64) -> String {
        let mut raw = Vec::with_capacity(8 + 8 + 16);
        raw.extend_from_slice(&issued.to_be_bytes());
        raw.extend_from_slice(&tunneld_core::auth::random_bytes::<8>());
        let tag = hmac::sign(&self.key, &raw);
        raw.extend_from_slice(&tag.as_ref()[..16]);
        data_encoding::BASE64URL_NOPAD.encode(&raw)
    }

    /// The `WWW-Authenticate` value, as node-rendezvous sent it.
    pub fn challenge(&self, stale: bool) -> String {
        format!(
            "Digest realm=\"rendezvous\", qop=\"auth, auth-int\", nonce=\"{}\", opaque=\"{}\"{}",
            self.mint(unix_now()),
            self.opaque,
            if stale { ", stale=true" } else { "" }
        )
    }

    /// Accepts a nonce once per nonce count (counts must rise; without `nc`, once only).
    pub fn check(
        &self,
        nonce: &str,
        nc: Option<u32>,
        opaque: Option<&str>,
    ) -> Result<(), NonceError> {
        if opaque.is_some_and(|o| o != self.opaque) {
            return Err(NonceError::Opaque);
        }
        let raw = data_encoding::BASE64URL_NOPAD
            .decode(nonce.as_bytes())
            .map_err(|_| NonceError::Foreign)?;
        if raw.len() != 32 {
            return Err(NonceError::Foreign);
        }
        let tag = hmac::sign(&self.key, &raw[..16]);
        let diff = tag.as_ref()[..16]
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(NonceError::Foreign);
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().map_err(|_| NonceError::Foreign)?);
        let now = unix_now();
        if now.saturating_sub(issued) > self.ttl.as_secs() || issued > now + 60 {
            return Err(NonceError::Stale);
        }
        let count = nc.unwrap_or(0);
        let mut seen = tunneld_core::sync::lock(&self.seen);
        if seen.len() >= MAX_TRACKED {
            let ttl = self.ttl.as_secs();
            seen.retain(|_, (t, _)| now.saturating_sub(*t) <= ttl);
            if seen.len() >= MAX_TRACKED {
                // Still full of live nonces: make room by forgetting the oldest half.
                let mut times: Vec<u64> = seen.values().map(|(t, _)| *t).collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                seen.retain(|_, (t, _)| *t > cut);
            }
        }
        match seen.get_mut(nonce) {
            Some((_, last)) if count <= *last || nc.is_none() => Err(NonceError::Replayed),
            Some((_, last)) => {
                *last = count;
                Ok(())
            }
            None => {
                seen.insert(nonce.to_string(), (issued, count));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce_of(challenge: &str) -> String {
        let p = parse_params(challenge.trim_start_matches("Digest ")).expect("params");
        p["nonce"].clone()
    }

    #[test]
    fn parses_curl_style_digest_and_basic() {
        let d = parse_authorization(
            r#"Digest username="abc-1", realm="rendezvous", nonce="N1", uri="/x", cnonce="c", nc=00000001, qop=auth, response="r", opaque="O""#,
        )
        .expect("digest");
        assert_eq!(
            d,
            Credentials::Digest {
                username: "abc-1".into(),
                nonce: "N1".into(),
                nc: Some(1),
                opaque: Some("O".into())
            }
        );
        let b = parse_authorization("Basic YWJjOng=").expect("basic");
        assert_eq!(b.username(), "abc");
        for bad in [
            "Bearer x",
            "Basic !!!",
            "Basic YWJj",
            "Digest nonce=\"x\"",
            "Digest username=\"x",
            "Digest username",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonces_expire_are_ours_and_counts_must_rise() {
        let n = Nonces::new(Duration::from_secs(300));
        let ch = n.challenge(false);
        assert!(ch.starts_with("Digest realm=\"rendezvous\", qop=\"auth, auth-int\", nonce=\""));
        let nonce = nonce_of(&ch);
        assert_eq!(n.check(&nonce, Some(1), None), Ok(()));
        assert_eq!(n.check(&nonce, Some(1), None), Err(NonceError::Replayed));
        assert_eq!(n.check(&nonce, Some(2), None), Ok(()));
        assert_eq!(
            n.check(&nonce, Some(2), Some("nope")),
            Err(NonceError::Opaque)
        );
        let other = Nonces::new(Duration::from_secs(300));
        assert_eq!(other.check(&nonce, Some(1), None), Err(NonceError::Foreign));
        assert_eq!(n.check("garbage", Some(1), None), Err(NonceError::Foreign));
        let old = n.mint(unix_now() - 301);
        assert_eq!(n.check(&old, Some(1), None), Err(NonceError::Stale));
        let once = nonce_of(&n.challenge(false));
        assert_eq!(n.check(&once, None, None), Ok(()));
        assert_eq!(n.check(&once, None, None), Err(NonceError::Replayed));
    }
}
