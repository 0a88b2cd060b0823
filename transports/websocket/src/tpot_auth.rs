//! The `TPoT-1` authorization header: PBKDF2-HMAC-SHA256 over a salt made from a nonce and a
//! millisecond timestamp, accepted within ±60 s and never twice with the same nonce.
//!
//! ```text
//! salt   = hex(MD5(nonce + "\n" + ts))            (ASCII)
//! token  = base64(PBKDF2-HMAC-SHA256(key, salt, 32768, 128 bytes))
//! header = "TPoT-1 " + base64(nonce + "\n" + ts + "\n" + token)
//! ```

use data_encoding::BASE64;
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const ITERATIONS: u32 = 32768;
pub const TOKEN_LEN: usize = 128;
/// How far the client's clock may be from ours.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 32;
/// Nonces remembered at most (a flood of valid headers beyond this is refused).
const MAX_NONCES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header (TPoT-1)")]
    Missing,
    #[error("malformed TPoT-1 header: {0}")]
    Malformed(&'static str),
    #[error("TPoT-1 timestamp is more than 60 s away from the server's clock")]
    Expired,
    #[error("TPoT-1 nonce was already used")]
    Replayed,
    #[error("wrong TPoT-1 key")]
    WrongKey,
    #[error("too many recent TPoT-1 logins; try again later")]
    Busy,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Expired => "expired",
            AuthError::Replayed => "replayed",
            AuthError::WrongKey => "wrong_key",
            AuthError::Busy => "busy",
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn salt(nonce: &str, ts: &str) -> String {
    let digest = Md5::digest(format!("{nonce}\n{ts}").as_bytes());
    tunneld_core::auth::hex(&digest)
}

fn iterations() -> NonZeroU32 {
    NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN)
}

/// The header value a TPoT client sends (our tunnelc, and tests).
pub fn header_value(key: &str, nonce: &str, ts_ms: i64) -> String {
    let ts = ts_ms.to_string();
    let mut token = [0u8; TOKEN_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(),
        salt(nonce, &ts).as_bytes(),
        key.as_bytes(),
        &mut token,
    );
    let auth = format!("{nonce}\n{ts}\n{}", BASE64.encode(&token));
    format!("TPoT-1 {}", BASE64.encode(auth.as_bytes()))
}

/// A fresh header value for `key`.
pub fn new_header_value(key: &str) -> String {
    let nonce = BASE64.encode(&tunneld_core::auth::random_bytes::<32>());
    header_value(key, &nonce, now_ms())
}

/// Verifies headers against one key and remembers the nonces it accepted.
pub struct Verifier {
    key: String,
    seen: Mutex<HashMap<String, Instant>>,
}

impl Verifier {
    pub fn new(key: String) -> Self {
        Self {
            key,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks one `Authorization` value. The PBKDF2 step is CPU-heavy (tens of ms): call
    /// it from a blocking task.
    pub fn verify(&self, value: Option<&str>) -> Result<(), AuthError> {
        self.verify_at(value, now_ms())
    }

    #[doc(hidden)]
    pub fn verify_at(&self, value: Option<&str>, now: i64) -> Result<(), AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let b64 = tunneld_core::auth::scheme_param(value, "TPoT-1")
            .ok_or(AuthError::Malformed("the scheme is not TPoT-1"))?;
        let raw = BASE64
            .decode(b64.trim().as_bytes())
            .map_err(|_| AuthError::Malformed("not base64"))?;
        let text = std::str::from_utf8(&raw).map_err(|_| AuthError::Malformed("not text"))?;
        let mut parts = text.split('\n');
        let (Some(nonce), Some(ts), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected nonce, timestamp and token"));
        };
        if nonce.is_empty() || nonce.len() > 256 {
            return Err(AuthError::Malformed("bad nonce"));
        }
        let when: i64 = ts
            .parse()
            .map_err(|_| AuthError::Malformed("the timestamp is not a number"))?;
        if (now - when).unsigned_abs() > WINDOW.as_millis() as u64 {
            return Err(AuthError::Expired);
        }
        let token = BASE64
            .decode(token.as_bytes())
            .map_err(|_| AuthError::Malformed("the token is not base64"))?;
        if self.seen().contains_key(nonce) {
            return Err(AuthError::Replayed);
        }
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations(),
            salt(nonce, ts).as_bytes(),
            self.key.as_bytes(),
            &token,
        )
        .map_err(|_| AuthError::WrongKey)?;
        let mut seen = self.seen();
        let now_i = Instant::now();
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, until| *until > now_i);
            if seen.len() >= MAX_NONCES {
                return Err(AuthError::Busy);
            }
        }
        // Remember it for as long as its timestamp could still be accepted.
        if seen
            .insert(
                nonce.to_string(),
                now_i + 2 * WINDOW + Duration::from_secs(1),
            )
            .is_some()
        {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        tunneld_core::sync::lock(&self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_once_within_the_window() {
        let v = Verifier::new(KEY.into());
        let now = now_ms();
        let h = header_value(KEY, "bm9uY2U=", now - 30_000);
        assert_eq!(v.verify_at(Some(&h), now), Ok(()));
        assert_eq!(v.verify_at(Some(&h), now), Err(AuthError::Replayed));
        let old = header_value(KEY, "b2xk", now - 61_000);
        assert_eq!(v.verify_at(Some(&old), now), Err(AuthError::Expired));
        let future = header_value(KEY, "ZnV0", now + 61_000);
        assert_eq!(v.verify_at(Some(&future), now), Err(AuthError::Expired));
        let wrong = header_value("another key that is long enough!!", "d3Jvbmc=", now);
        assert_eq!(v.verify_at(Some(&wrong), now), Err(AuthError::WrongKey));
        // A wrong key does not burn the nonce for the right one.
        let right = header_value(KEY, "d3Jvbmc=", now);
        assert_eq!(v.verify_at(Some(&right), now), Ok(()));
        assert_eq!(v.verify_at(None, now), Err(AuthError::Missing));
        assert!(matches!(
            v.verify_at(Some("TPoT-1 !!!"), now),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify_at(Some("Bearer abc"), now),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn salt_is_hex_md5_of_nonce_and_timestamp() {
        // MD5("a\n1") computed independently (printf 'a\n1' | md5sum).
        assert_eq!(salt("a", "1"), "21244da99be442519c09014ff2f7fd8a");
    }
}
