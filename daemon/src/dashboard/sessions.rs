//! The dashboard's login sessions: a bounded map from the SHA-256 of a session cookie to its
//! CSRF token and last use. Owned by the admin listener's state (no global); the oldest
//! session makes room when the map is full, and a session idle for [`IDLE_EXPIRY`] is gone.

use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tunneld_core::auth::sha256;

/// Most sessions at once; a new login past it ends the least recently used one.
pub const MAX_SESSIONS: usize = 64;
/// A session unused this long is forgotten (its cookie no longer works).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "tunneld_session";

struct Entry {
    csrf: String,
    last_used: Instant,
    /// The address that logged in: the cookie works from there only (a cookie that leaked,
    /// say to a tenant's port on the same host, is useless elsewhere).
    ip: IpAddr,
    /// The outcome of the last action, shown once on the next page.
    flash: Option<String>,
}

/// A session found by its cookie: its CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub csrf: String,
    /// The map key (the cookie's digest), to end the session or check it is still there.
    pub key: [u8; 32],
}

pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
    rng: SystemRandom,
    cap: usize,
    idle: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS, IDLE_EXPIRY)
    }
}

/// 32 random bytes from ring's system generator, base64url without padding.
pub fn random_token(rng: &SystemRandom) -> Result<String, ring::error::Unspecified> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)?;
    Ok(data_encoding::BASE64URL_NOPAD.encode(&b))
}

impl Sessions {
    pub fn new(cap: usize, idle: Duration) -> Self {
        Self {
            map: Mutex::default(),
            rng: SystemRandom::new(),
            cap: cap.max(1),
            idle,
        }
    }

    /// Starts a session for a browser at `ip`: answers its cookie value (the only copy; the
    /// map keeps its digest).
    pub fn create(&self, ip: IpAddr) -> Result<String, String> {
        let cookie = random_token(&self.rng).map_err(|_| "no random bytes for a session")?;
        let csrf = random_token(&self.rng).map_err(|_| "no random bytes for a CSRF token")?;
        let now = Instant::now();
        let mut map = tunneld_core::sync::lock(&self.map);
        map.retain(|_, e| now.duration_since(e.last_used) < self.idle);
        while map.len() >= self.cap {
            let oldest = map.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            sha256(cookie.as_bytes()),
            Entry {
                csrf,
                last_used: now,
                ip,
                flash: None,
            },
        );
        Ok(cookie)
    }

    /// The live session of `cookie` presented from `ip`, marked as used now.
    pub fn touch(&self, cookie: &str, ip: IpAddr) -> Option<Found> {
        let key = sha256(cookie.as_bytes());
        let now = Instant::now();
        let mut map = tunneld_core::sync::lock(&self.map);
        let e = map.get_mut(&key)?;
        if e.ip != ip {
            return None;
        }
        if now.duration_since(e.last_used) >= self.idle {
            map.remove(&key);
            return None;
        }
        e.last_used = now;
        Some(Found {
            csrf: e.csrf.clone(),
            key,
        })
    }

    /// Whether the session with `key` is still there and not idle past its expiry (without
    /// marking it used: a live event stream does not keep a session alive).
    pub fn alive(&self, key: &[u8; 32]) -> bool {
        let map = tunneld_core::sync::lock(&self.map);
        map.get(key)
            .is_some_and(|e| e.last_used.elapsed() < self.idle)
    }

    /// Keeps `message` for the session's next page.
    pub fn set_flash(&self, key: &[u8; 32], message: String) {
        if let Some(e) = tunneld_core::sync::lock(&self.map).get_mut(key) {
            e.flash = Some(message);
        }
    }

    /// The message kept for the session's next page, once.
    pub fn take_flash(&self, key: &[u8; 32]) -> Option<String> {
        tunneld_core::sync::lock(&self.map)
            .get_mut(key)
            .and_then(|e| e.flash.take())
    }

    /// Ends the session with `key` (logout).
    pub fn end(&self, key: &[u8; 32]) {
        tunneld_core::sync::lock(&self.map).remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        tunneld_core::sync::lock(&self.map).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every value of cookie `name` in a `Cookie` header (another site on the same host may
/// have set one of the same name).
pub fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// Constant-time equality of two strings' bytes (lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn create_touch_end() {
        let s = Sessions::default();
        let c = s.create(IP).expect("random");
        assert_eq!(c.len(), 43, "32 bytes base64url");
        let found = s.touch(&c, IP).expect("live");
        assert_eq!(found.csrf.len(), 43);
        assert_ne!(found.csrf, c);
        assert!(s.touch("not-a-session", IP).is_none());
        let elsewhere = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert!(
            s.touch(&c, elsewhere).is_none(),
            "a cookie works from its own address only"
        );
        assert!(s.alive(&found.key));
        s.set_flash(&found.key, "done".into());
        assert_eq!(s.take_flash(&found.key).as_deref(), Some("done"));
        assert_eq!(s.take_flash(&found.key), None);
        s.end(&found.key);
        assert!(s.touch(&c, IP).is_none());
        assert!(!s.alive(&found.key));
    }

    #[test]
    fn bounded_oldest_evicted() {
        let s = Sessions::new(3, IDLE_EXPIRY);
        let first = s.create(IP).expect("random");
        let second = s.create(IP).expect("random");
        let third = s.create(IP).expect("random");
        // `first` is used again, so `second` is now the least recently used.
        assert!(s.touch(&first, IP).is_some());
        let fourth = s.create(IP).expect("random");
        assert_eq!(s.len(), 3);
        assert!(s.touch(&second, IP).is_none());
        for c in [&first, &third, &fourth] {
            assert!(s.touch(c, IP).is_some());
        }
    }

    #[test]
    fn idle_sessions_expire() {
        let s = Sessions::new(8, Duration::ZERO);
        let c = s.create(IP).expect("random");
        assert!(s.touch(&c, IP).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn cookies_and_comparison() {
        let h = "a=1; tunneld_session=abc ; b=2";
        assert_eq!(cookie_values(h, COOKIE).collect::<Vec<_>>(), ["abc"]);
        assert_eq!(cookie_values(h, "b").collect::<Vec<_>>(), ["2"]);
        assert_eq!(cookie_values("tunneld_sessionx=1", COOKIE).count(), 0);
        let two = "tunneld_session=bogus; tunneld_session=real";
        assert_eq!(
            cookie_values(two, COOKIE).collect::<Vec<_>>(),
            ["bogus", "real"]
        );
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
