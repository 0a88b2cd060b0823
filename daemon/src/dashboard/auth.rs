//! Who is asking: a session cookie, or the admin token as a bearer token (for curl), or
//! anyone when the admin listener has no token (as the other admin routes). Login compares
//! the token in constant time and counts wrong ones in the failed-authentication budget
//! the admin API and the transports share.

use super::sessions::{cookie_values, Found, COOKIE};
use super::MAX_FORM;
use super::{pages, reply, Dashboard};
use crate::http_serve::{self, read_body, Resp};
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tunneld_core::auth::sha256;
use tunneld_core::form::Form;

const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated caller.
pub enum Who {
    /// A browser with a session cookie (forms need its CSRF token).
    Session(Found),
    /// The admin token in `Authorization: Bearer` (no cookie, no CSRF: browsers do not send
    /// that header on their own).
    Bearer,
}

/// The answer when the caller is not authenticated.
pub enum Refused {
    /// To the login form.
    Login,
    Resp(Box<Resp>),
}

/// Whether a Host header names an IP address or `localhost` (a DNS-rebinding page's Host is
/// the attacker's name).
fn literal_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

fn digest_matches(want: &[u8; 32], got: &str) -> bool {
    let g = sha256(got.as_bytes());
    g.iter().zip(want).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

impl Dashboard {
    /// The live session of `req`'s cookies (every `tunneld_session` value is tried: another
    /// service on the same host may have set one too), used from `ip`.
    pub(super) fn session(&self, req: &Request<Incoming>, ip: IpAddr) -> Option<Found> {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|h| cookie_values(h, COOKIE))
            .find_map(|c| self.sessions.touch(c, ip))
    }

    /// Authenticates `req`. Without a token configured, a browser that opens `/ui` without a
    /// session gets one (`new_cookie`), so its forms still carry a CSRF token; only by a Host
    /// that is an address or `localhost` (no DNS rebinding: the only guard left there).
    pub(super) fn who(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        new_cookie: &mut Option<String>,
    ) -> Result<Who, Refused> {
        if self.token_digest.is_none() && !literal_host(reply::header_str(req, header::HOST)) {
            return Err(Refused::Resp(Box::new(reply::text(
                StatusCode::MISDIRECTED_REQUEST,
                "without admin.token the dashboard answers only at an IP address or localhost (set admin.token to reach it by name)",
            ))));
        }
        if let Some(found) = self.session(req, peer.ip()) {
            return Ok(Who::Session(found));
        }
        let Some(want) = &self.token_digest else {
            let page =
                req.method() == http::Method::GET && matches!(req.uri().path(), "/ui" | "/ui/");
            if !page {
                return Err(Refused::Resp(Box::new(reply::text(
                    StatusCode::FORBIDDEN,
                    "no dashboard session: open /ui first",
                ))));
            }
            let cookie = self.sessions.create(peer.ip()).map_err(|e| {
                Refused::Resp(Box::new(reply::text(StatusCode::INTERNAL_SERVER_ERROR, &e)))
            })?;
            let found = self.sessions.touch(&cookie, peer.ip()).ok_or_else(|| {
                Refused::Resp(Box::new(reply::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "session lost",
                )))
            })?;
            *new_cookie = Some(cookie);
            return Ok(Who::Session(found));
        };
        let Some(bearer) = http_serve::bearer(req) else {
            return Err(Refused::Login);
        };
        if let Err(wait) = self.hub.throttle.check(peer.ip()) {
            return Err(Refused::Resp(Box::new(http_serve::throttled(
                peer.ip(),
                wait,
            ))));
        }
        if digest_matches(want, bearer) {
            Ok(Who::Bearer)
        } else {
            self.hub.throttle.failed(peer.ip());
            self.recent.push(
                "dashboard bearer token refused",
                format!("from {}", peer.ip()),
                1,
            );
            Err(Refused::Resp(Box::new(reply::text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ))))
        }
    }

    /// `POST /ui/login`: the admin token from the form; a session cookie and 303 to `/ui`.
    pub(super) async fn login(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let Some(want) = self.token_digest else {
            return reply::see_other("/ui");
        };
        let origin = reply::header_str(&req, header::ORIGIN).map(str::to_string);
        let host = reply::header_str(&req, header::HOST).map(str::to_string);
        if let Some(o) = origin.as_deref() {
            if let Err(e) = super::csrf::check_origin(o, host.as_deref()) {
                self.count_login("refused");
                self.recent.push("dashboard login refused", e.clone(), 1);
                return reply::text(StatusCode::FORBIDDEN, &e);
            }
        }
        // Throttled attempts are counted, not listed: a flood would push out every other row.
        if let Err(wait) = self.hub.throttle.check(peer.ip()) {
            self.count_login("refused");
            return http_serve::throttled(peer.ip(), wait);
        }
        let body = match read_body(req, MAX_FORM, BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let form = match Form::parse(&body) {
            Ok(f) => f,
            Err(e) => return reply::text(StatusCode::BAD_REQUEST, &e),
        };
        let token = form.get("token").unwrap_or("");
        if token.is_empty() || !digest_matches(&want, token) {
            self.hub.throttle.failed(peer.ip());
            self.count_login("refused");
            self.recent.push(
                "dashboard login refused",
                format!("wrong token from {}", peer.ip()),
                1,
            );
            return reply::html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("That is not the admin token.")),
            );
        }
        let cookie = match self.sessions.create(peer.ip()) {
            Ok(c) => c,
            Err(e) => return reply::text(StatusCode::INTERNAL_SERVER_ERROR, &e),
        };
        self.count_login("ok");
        tracing::info!(peer = %peer, "dashboard login");
        let mut r = reply::see_other("/ui");
        self.set_cookie(&mut r, &cookie);
        r
    }

    /// Adds the session cookie to `r`.
    pub(super) fn set_cookie(&self, r: &mut Resp, cookie: &str) {
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/ui{secure}");
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// Tells the browser to forget the session cookie.
    pub(super) fn clear_cookie(&self, r: &mut Resp) {
        let v = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0");
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    fn count_login(&self, result: &str) {
        if let Some(own) = crate::metrics::of(&self.metrics) {
            own.dashboard_logins_total
                .with_label_values(&[result])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn literal_hosts() {
        use super::literal_host as l;
        for ok in [
            "127.0.0.1:7001",
            "localhost:7001",
            "LOCALHOST",
            "[::1]:7001",
            "::1",
            "10.0.0.5",
        ] {
            assert!(l(Some(ok)), "{ok}");
        }
        for bad in ["rebind.evil.example:7001", "tunnels.example.com", ""] {
            assert!(!l(Some(bad)), "{bad}");
        }
        assert!(!l(None));
    }

    #[test]
    fn digest_comparison() {
        let want = tunneld_core::auth::sha256(b"secret");
        assert!(super::digest_matches(&want, "secret"));
        assert!(!super::digest_matches(&want, "secreT"));
        assert!(!super::digest_matches(&want, ""));
    }
}
