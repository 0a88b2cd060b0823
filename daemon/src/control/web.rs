//! The plain web port: `GET /cacert`, ACME HTTP-01 answers
//! (`/.well-known/acme-challenge/<token>`), and visitors at `<name>.<domain>` redirected (302) to
//! the tunnel's HTTPS endpoint. It only ever redirects up to https, never down; a
//! pipe2me-shape tunnel without an https port redirects to its http port, as pipe2me did.

use super::provision::hello_name;
use super::Control;
use crate::acme::challenges::HTTP_PREFIX;
use crate::http_serve::{error, respond, Resp};
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;

pub async fn handle(c: &Control, req: Request<Incoming>) -> Resp {
    // ACME HTTP-01 validations, whatever the Host (it is the name being validated).
    if let Some(token) = req.uri().path().strip_prefix(HTTP_PREFIX) {
        let (status, body) = match c.acme.http_answer(token) {
            Some(answer) => (StatusCode::OK, answer),
            None => (
                StatusCode::NOT_FOUND,
                "no such ACME challenge\n".to_string(),
            ),
        };
        c.count("acme-challenge", status);
        return respond(status, "application/octet-stream", body);
    }
    // The tunnel named by Host, from the in-memory view of the store.
    let found = match label_of(c, &req) {
        Some(label) => {
            let r = c.cache.tunnel(&label).await;
            Some((label, r))
        }
        None => None,
    };
    let (route, resp) = answer(c, &req, found);
    c.count(route, resp.status());
    resp
}

fn host_of(req: &Request<Incoming>) -> Option<String> {
    let h = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())?;
    let h = match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    };
    Some(h.trim_end_matches('.').to_ascii_lowercase())
}

/// The tunnel label a request's Host names under the domain.
fn label_of(c: &Control, req: &Request<Incoming>) -> Option<String> {
    host_of(req).and_then(|h| {
        h.strip_suffix(&format!(".{}", c.domain))
            .filter(|l| !l.is_empty() && !l.contains('.'))
            .map(str::to_string)
    })
}

/// A native tunnel's https endpoint (of its `https` or `http` protocol, never plain http).
fn native_target(c: &Control, t: &tunneld_state::TunnelRecord, label: &str) -> Option<String> {
    ["https", "http"].iter().find_map(|p| {
        t.protocols
            .iter()
            .any(|q| q == p)
            .then(|| c.hub.lease_endpoint(&t.owner, &hello_name(label, p)))
            .flatten()
            .filter(|url| url.starts_with("https://"))
    })
}

type Found = Option<(
    String,
    Result<Option<tunneld_state::TunnelRecord>, tunneld_state::StateError>,
)>;

fn answer(c: &Control, req: &Request<Incoming>, found: Found) -> (&'static str, Resp) {
    if let Some((label, looked)) = found {
        let tunnel = match looked {
            Ok(Some(t)) => t,
            Ok(None) => {
                return (
                    "redirect",
                    error(StatusCode::NOT_FOUND, format!("no tunnel named `{label}`")),
                )
            }
            Err(e) => return ("redirect", error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
        let target = match tunnel.flavour {
            // pipe2me-shape: its https port, else its http port (pipe2me's redirect).
            tunneld_state::TunnelFlavour::Pipe2me => ["https", "http"].iter().find_map(|p| {
                let port = tunnel.ports.get(*p)?;
                Some(format!("{p}://{label}.{}:{port}", c.domain))
            }),
            tunneld_state::TunnelFlavour::Native => native_target(c, &tunnel, &label),
        };
        let Some(base) = target else {
            return (
                "redirect",
                error(
                    StatusCode::NOT_FOUND,
                    format!("tunnel `{label}` has no https endpoint"),
                ),
            );
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut r = respond(
            StatusCode::FOUND,
            "text/plain",
            format!("moved to {base}{path}\n"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&format!("{base}{path}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return ("redirect", r);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/cacert") => (
            "/cacert",
            respond(StatusCode::OK, "application/x-pem-file", c.ca_pem.clone()),
        ),
        _ => (
            "other",
            error(
                StatusCode::NOT_FOUND,
                format!("no route {}", req.uri().path()),
            ),
        ),
    }
}
