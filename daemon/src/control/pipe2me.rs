//! pipe2me's provisioning API shape on the control listener, beside the native `/v1/` API,
//! so pipe2me's shell workflow (curl, ssh-keygen, autossh) runs unchanged. Answers are
//! shell lines (`KEY=value`, `text/plain`):
//!
//! | route | answer |
//! |---|---|
//! | `POST /tunnels/<token>` (form `protocols=http,https,tcp`) | a new tunnel: `ID=`, `FQDN=`, `URLS_<n>=`, `TUNNEL=` |
//! | `GET /tunnels/<id>` | the same lines |
//! | `GET /tunnels/<id>/verify` | `<n> seconds left.`, 404 once expired |
//! | `POST /tunnels/<id>/id_rsa.pub` | binds the public key in the body to the tunnel (`OK`) |
//! | `GET /config` | JSON: domain, ports, version, url |
//!
//! Unlike pipe2me, the id is a random secret (192 bits; only its SHA-256 is stored), no
//! route lists tunnels, and a wrong id counts against the caller's failed-authentication
//! budget like a wrong token. Each protocol gets one port of `control.ports_frontend`
//! (raw TCP, pipe2me's model), leased as tunnel `<name>-<protocol>` of kind `tcp`.

use super::provision::Refusal;
use super::tunnel_keys::Upload;
use super::Control;
use crate::http_serve::{read_body, respond, throttled, Resp};
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::auth::{hex, random_bytes, sha256, Identity};
use tunneld_state::{TunnelFlavour, TunnelRecord};

const MAX_BODY: usize = 16 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocols a pipe2me-shape tunnel may list (each gets a port).
pub const PROTOCOLS: &[&str] = &["http", "https", "tcp"];

/// The metrics route of a pipe2me path, or `None` when it is not one.
pub fn route_of(parts: &[&str]) -> Option<&'static str> {
    Some(match parts {
        ["config"] => "/config",
        ["tunnels", ..] if parts.len() == 1 => "/tunnels",
        ["tunnels", _] => "/tunnels/{id}",
        ["tunnels", _, "verify"] => "/tunnels/{id}/verify",
        ["tunnels", _, "id_rsa.pub"] => "/tunnels/{id}/id_rsa.pub",
        ["tunnels", ..] => "/tunnels/other",
        _ => return None,
    })
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut b = body.into();
    if !b.ends_with('\n') {
        b.push('\n');
    }
    respond(status, "text/plain; charset=utf-8", b)
}

fn refused((status, msg): Refusal) -> Resp {
    text(status, msg)
}

pub async fn handle(
    c: &Arc<Control>,
    req: Request<Incoming>,
    route: &str,
    key: &str,
    peer: SocketAddr,
) -> Resp {
    let method = req.method().clone();
    let allowed = match route {
        "/config" | "/tunnels/{id}/verify" => "GET",
        "/tunnels/{id}" => "GET, POST",
        "/tunnels/{id}/id_rsa.pub" => "POST",
        // Listing tunnels (pipe2me's `GET /tunnels/`) is deliberately not offered.
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no route {}", req.uri().path()),
            )
        }
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {route}"),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
        return r;
    }
    if route == "/config" {
        return config(c, &req);
    }
    // Tokens and ids are credentials: a caller over its failure budget is turned away.
    if let Err(wait) = c.hub.throttle.check(peer.ip()) {
        return throttled(peer.ip(), wait);
    }
    if method == Method::POST && route == "/tunnels/{id}" {
        return create(c, req, key, peer).await;
    }
    let t = match by_id(c, key, peer).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match route {
        "/tunnels/{id}" => text(StatusCode::OK, lines(c, &t, key)),
        "/tunnels/{id}/verify" => {
            let left = t
                .expires_at
                .map_or(u64::MAX, |e| e.saturating_sub(tunneld_state::now()));
            text(StatusCode::OK, format!("{left} seconds left."))
        }
        _ => upload_key(c, req, t).await,
    }
}

/// The tunnel of a secret id: 404 for a wrong id (counted as a failed authentication) and
/// for an expired tunnel.
async fn by_id(c: &Control, id: &str, peer: SocketAddr) -> Result<TunnelRecord, Box<Resp>> {
    let digest = hex(&sha256(id.as_bytes()));
    let t = match c.cache.tunnel_by_id_digest(&digest).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            c.hub.throttle.failed(peer.ip());
            return Err(Box::new(text(StatusCode::NOT_FOUND, "no such tunnel")));
        }
        Err(e) => {
            return Err(Box::new(text(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            )))
        }
    };
    if t.expires_at.is_some_and(|e| e <= tunneld_state::now()) {
        return Err(Box::new(text(StatusCode::NOT_FOUND, "tunnel expired")));
    }
    Ok(t)
}

/// The shell lines describing a tunnel (pipe2me's order: id, fqdn, urls, tunnel).
pub fn lines(c: &Control, t: &TunnelRecord, id: &str) -> String {
    let fqdn = format!("{}.{}", t.name, c.domain);
    let mut out = format!("ID={id}\nFQDN={fqdn}\n");
    for (i, p) in t.protocols.iter().enumerate() {
        if let Some(port) = t.ports.get(p) {
            out.push_str(&format!("URLS_{i}={p}://{fqdn}:{port}\n"));
        }
    }
    // No ssh transport: no TUNNEL line (pipe2me's client parser takes only `KEY=value`
    // lines, so no comment either); `GET /config` and the docs say why.
    if let Some(e) = &c.ssh_endpoint {
        out.push_str(&format!("TUNNEL=ssh://{}@{e}\n", t.name));
    }
    out
}

/// The `protocols` of a form body or query (`http,https`; pipe2me's default is `http`).
fn protocols_of(query: Option<&str>, body: &[u8]) -> Result<Vec<String>, Refusal> {
    let bad = |m: String| Err((StatusCode::BAD_REQUEST, m));
    let body = std::str::from_utf8(body).unwrap_or_default();
    let value = [body, query.unwrap_or_default()]
        .iter()
        .flat_map(|s| s.split('&'))
        .find_map(|kv| kv.trim().strip_prefix("protocols="))
        .map(percent_decode)
        .transpose()?
        .unwrap_or_else(|| "http".into());
    let mut out: Vec<String> = Vec::new();
    for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !PROTOCOLS.contains(&p) {
            return bad(format!(
                "protocol `{p}` is unknown (use {})",
                PROTOCOLS.join(", ")
            ));
        }
        if out.iter().any(|q| q == p) {
            return bad(format!("protocol `{p}` is listed twice"));
        }
        out.push(p.to_string());
    }
    if out.is_empty() {
        return bad("no protocols: send protocols=http,https,...".into());
    }
    Ok(out)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
fn percent_decode(s: &str) -> Result<String, Refusal> {
    tunneld_core::form::decode(s).map_err(|e| (StatusCode::BAD_REQUEST, format!("protocols: {e}")))
}

/// Runs store work on a blocking thread (no runtime thread waits on SQLite).
async fn blocking<F, Fut>(c: &Arc<Control>, f: F) -> Resp
where
    F: FnOnce(Arc<Control>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Resp>,
{
    let Ok(_working) = c.working.acquire().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let (c, rt) = (c.clone(), tokio::runtime::Handle::current());
    match tokio::task::spawn_blocking(move || rt.block_on(f(c))).await {
        Ok(r) => r,
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        ),
    }
}

/// `POST /tunnels/<token>`.
async fn create(c: &Arc<Control>, req: Request<Incoming>, token: &str, peer: SocketAddr) -> Resp {
    let who: Identity = match c.auth.authenticate_async(Some(token), None).await {
        Ok(w) => w,
        Err(e) => {
            if e.is_guess() {
                c.hub.throttle.failed(peer.ip());
            }
            let status = match e.is_permanent() {
                true => StatusCode::FORBIDDEN,
                false => StatusCode::SERVICE_UNAVAILABLE,
            };
            return text(status, format!("Not allowed: {e}"));
        }
    };
    let query = req.uri().query().map(str::to_string);
    let body = match read_body(req, MAX_BODY, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let protocols = match protocols_of(query.as_deref(), &body) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    if c.cfg.ports_frontend.is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            "this tunneld offers no pipe2me tunnels (control.ports_frontend is not set)",
        );
    }
    let id = data_encoding::BASE64URL_NOPAD.encode(&random_bytes::<24>());
    let digest = hex(&sha256(id.as_bytes()));
    blocking(c, move |c| async move {
        match c
            .create_record(&who, protocols, None, TunnelFlavour::Pipe2me, Some(digest))
            .await
        {
            Ok(t) => text(StatusCode::CREATED, lines(&c, &t, &id)),
            Err((status, msg)) => text(status, format!("Not allowed: {msg}")),
        }
    })
    .await
}

/// `POST /tunnels/<id>/id_rsa.pub`: the tunnel's key, replacing the one uploaded before.
async fn upload_key(c: &Arc<Control>, req: Request<Incoming>, t: TunnelRecord) -> Resp {
    let body = match read_body(req, MAX_BODY, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(line) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "the key is not text");
    };
    blocking(c, move |c| async move {
        match c.bind_key(&t, &line, Upload::Replace).await {
            Ok(_) => text(StatusCode::OK, "OK"),
            Err(r) => refused(r),
        }
    })
    .await
}

/// `GET /config`: pipe2me's server description.
fn config(c: &Control, req: &Request<Incoming>) -> Resp {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| c.domain.clone());
    let v = serde_json::json!({
        "domain": c.domain,
        "ports": c.ports_range,
        "version": env!("CARGO_PKG_VERSION"),
        "url": format!("https://{host}"),
        "tunnel": c.ssh_endpoint.as_ref().map(|e| format!("ssh://{e}")),
    });
    crate::http_serve::json_resp(StatusCode::OK, &v)
}
