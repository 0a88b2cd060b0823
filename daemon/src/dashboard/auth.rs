//! Who is asking: a session cookie, or the admin token as a bearer token (for curl), or
//! anyone when the admin listener has no token (as the other admin routes). Login compares
//! the token in constant time and counts wrong ones in the failed-authentication budget
//! the admin API and the transports share.

use super::sessions::{cookie_value, Found, COOKIE};
use super::MAX_FORM;
use super::{pages, reply, Dashboard};
use crate::http_serve::{self, read_body, Resp};
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
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

fn digest_matches(want: &[u8; 32], got: &str) -> bool {
    let g = sha256(got.as_bytes());
    g.iter().zip(want).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

impl Dashboard {
    /// The session cookie's value in `req`.
    pub(super) fn cookie(req: &Request<Incoming>) -> Option<&str> {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| cookie_value(h, COOKIE))
    }

    /// Authenticates `req`. Without a token configured, a browser without a session gets one
    /// (`new_cookie`), so its forms still carry a CSRF token.
    pub(super) fn who(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        new_cookie: &mut Option<String>,
    ) -> Result<Who, Refused> {
        if let Some(found) = Self::cookie(req).and_then(|c| self.sessions.touch(c)) {
            return Ok(Who::Session(found));
        }
        let Some(want) = &self.token_digest else {
            let cookie = self.sessions.create().map_err(|e| {
                Refused::Resp(Box::new(reply::text(StatusCode::INTERNAL_SERVER_ERROR, &e)))
            })?;
            let found = self.sessions.touch(&cookie).ok_or_else(|| {
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
                return reply::text(StatusCode::FORBIDDEN, &e);
            }
        }
        if let Err(wait) = self.hub.throttle.check(peer.ip()) {
            self.count_login("refused");
            self.recent.push(
                "dashboard login refused",
                tunneld_core::hub::throttled_reason(peer.ip(), wait),
                1,
            );
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
        let cookie = match self.sessions.create() {
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
    fn digest_comparison() {
        let want = tunneld_core::auth::sha256(b"secret");
        assert!(super::digest_matches(&want, "secret"));
        assert!(!super::digest_matches(&want, "secreT"));
        assert!(!super::digest_matches(&want, ""));
    }
}
