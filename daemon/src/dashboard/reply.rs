//! The dashboard's replies: HTML pages with a strict content security policy (no inline
//! script or style, nothing from other origins), redirects, plain-text errors.

use crate::http_serve::{respond, Resp};
use http::{header, HeaderName, HeaderValue, Request, StatusCode};

/// Only this origin's own files; no inline script or style; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn harden(r: &mut Resp) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

pub fn html(status: StatusCode, body: String) -> Resp {
    let mut r = respond(status, "text/html; charset=utf-8", body);
    harden(&mut r);
    r
}

/// A plain-text error or notice.
pub fn text(status: StatusCode, message: &str) -> Resp {
    let mut r = respond(status, "text/plain; charset=utf-8", format!("{message}\n"));
    harden(&mut r);
    r
}

/// `303 See Other` to `to` (a path on this listener).
pub fn see_other(to: &'static str) -> Resp {
    let mut r = respond(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        format!("see {to}\n"),
    );
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    harden(&mut r);
    r
}

/// An embedded file, cached briefly.
pub fn asset(content_type: &'static str, body: &'static str) -> Resp {
    let mut r = respond(StatusCode::OK, content_type, body);
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

/// A request header as text (absent or not ASCII: none).
pub fn header_str<B>(req: &Request<B>, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub use tunneld_core::html::esc;
