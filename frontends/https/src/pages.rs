//! The short answers tunneld gives itself, each saying which side failed.

use http::{header, Response, StatusCode};
use tunneld_core::http_forward::{full, Body};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} {}</title></head><body><h1>{} {}</h1><p>{}</p><hr><p>tunneld</p></body></html>\n",
        status.as_u16(),
        escape(title),
        status.as_u16(),
        escape(title),
        escape(text)
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

pub(crate) fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn not_found(host: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "Not Found",
        &format!("No tunnel is registered for {host}."),
    )
}

pub(crate) fn offline(host: &str) -> Response<Body> {
    page(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        &format!("The tunnel for {host} is offline: its client is not connected."),
    )
}

pub(crate) fn local_refused(host: &str, why: &str) -> Response<Body> {
    page(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        &format!(
            "The tunnel for {host} is connected, but its local service could not be reached: {why}"
        ),
    )
}

pub(crate) fn timeout(host: &str) -> Response<Body> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout",
        &format!("The tunnel for {host} did not answer in time."),
    )
}

pub(crate) fn busy(host: &str, why: &str) -> Response<Body> {
    let mut r = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &format!("The tunnel for {host} has {why}; try again shortly."),
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

pub(crate) fn misdirected(host: &str, sni: Option<&str>) -> Response<Body> {
    let text = match sni {
        Some(s) if s != host => {
            format!("This connection was opened for {s}; {host} needs a connection of its own.")
        }
        _ => format!("{host} is not served on this listener."),
    };
    page(
        StatusCode::MISDIRECTED_REQUEST,
        "Misdirected Request",
        &text,
    )
}
