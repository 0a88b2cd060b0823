//! The provisioning API (HTTPS, JSON, `Authorization: Bearer <token>`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /cacert` | tunneld's CA (PEM), no token needed |
//! | `GET /v1/config` | domain, transport, protocols, ssh endpoint and host key ([`ServerInfo`]), no token needed |
//! | `GET /v1/tunnels` | the caller's tunnels |
//! | `POST /v1/tunnels` | creates one ([`CreateRequest`]) |
//! | `GET /v1/tunnels/<name>` | one of the caller's tunnels |
//! | `POST /v1/tunnels/<name>/renew` | extends its leases |
//! | `DELETE /v1/tunnels/<name>` | releases it |
//! | `POST /v1/tunnels/<name>/certificate` | signs a PEM CSR for its name |
//! | `POST /v1/tunnels/<name>/ssh-key` | binds the public key line in the body to it |
//!
//! pipe2me's own API shape (`/tunnels/...`, `/config`) is served beside it ([`super::pipe2me`]).

use super::tunnel_keys::Upload;
use super::types::{CreateRequest, ServerInfo};
use super::Control;
use crate::http_serve::{bearer, error, json_resp, read_body, respond, Resp};
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::auth::Identity;

const MAX_BODY: usize = 64 * 1024;
/// Authenticated requests served on blocking threads at once.
pub const MAX_WORKING: usize = 16;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn handle(c: &Arc<Control>, req: Request<Incoming>, peer: std::net::SocketAddr) -> Resp {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(route) = super::pipe2me::route_of(&parts) {
        let key = parts.get(1).copied().unwrap_or_default().to_string();
        let resp = super::pipe2me::handle(c, req, route, &key, peer).await;
        c.count(route, resp.status());
        return resp;
    }
    let route = match parts.as_slice() {
        ["cacert"] => "/cacert",
        ["v1", "config"] => "/v1/config",
        ["v1", "tunnels"] => "/v1/tunnels",
        ["v1", "tunnels", _] => "/v1/tunnels/{name}",
        ["v1", "tunnels", _, "renew"] => "/v1/tunnels/{name}/renew",
        ["v1", "tunnels", _, "certificate"] => "/v1/tunnels/{name}/certificate",
        ["v1", "tunnels", _, "ssh-key"] => "/v1/tunnels/{name}/ssh-key",
        _ => "other",
    };
    let name = parts.get(2).map(|s| s.to_string()).unwrap_or_default();
    let resp = route_request(c, req, route, &name, peer).await;
    c.count(route, resp.status());
    resp
}

fn refused((status, msg): (StatusCode, String)) -> Resp {
    error(status, msg)
}

async fn authenticate(
    c: &Control,
    req: &Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Identity, Box<Resp>> {
    // Wrong tokens count against the address, with the transports' failures.
    if let Err(wait) = c.hub.throttle.check(peer.ip()) {
        return Err(Box::new(crate::http_serve::throttled(peer.ip(), wait)));
    }
    let Some(token) = bearer(req) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "send your token as `Authorization: Bearer <token>`",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return Err(Box::new(r));
    };
    c.auth
        .authenticate_async(Some(token), None)
        .await
        .map_err(|e| {
            if e.is_guess() {
                c.hub.throttle.failed(peer.ip());
            }
            let status = if e.is_permanent() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Box::new(error(status, e))
        })
}

async fn route_request(
    c: &Arc<Control>,
    req: Request<Incoming>,
    route: &str,
    name: &str,
    peer: std::net::SocketAddr,
) -> Resp {
    let method = req.method().clone();
    match (route, &method) {
        ("/cacert", &Method::GET) => {
            return respond(StatusCode::OK, "application/x-pem-file", c.ca_pem.clone())
        }
        ("/v1/config", &Method::GET) => {
            let info = ServerInfo {
                domain: c.domain.clone(),
                transport: c.transport.kind.to_string(),
                transport_port: c.transport.port,
                transport_host: c.cfg.public_host.clone(),
                transport_local_ca: c.transport.local_ca,
                protocols: super::provision::PROTOCOLS
                    .iter()
                    .filter(|p| **p != "tcp" || c.cfg.ports_frontend.is_some())
                    .map(|p| p.to_string())
                    .collect(),
                version: env!("CARGO_PKG_VERSION").into(),
                ssh_endpoint: c.ssh_endpoint.clone(),
                ssh_host_key: c.ssh_host_key.clone(),
            };
            return json_resp(StatusCode::OK, &serde_json::json!(info));
        }
        ("other", _) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no route {}", req.uri().path()),
            )
        }
        _ => {}
    }
    let allowed = match route {
        "/cacert" | "/v1/config" => "GET",
        "/v1/tunnels" => "GET, POST",
        "/v1/tunnels/{name}" => "GET, DELETE",
        _ => "POST",
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {route}"),
        );
        if let Ok(v) = header::HeaderValue::from_str(allowed) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    let who = match authenticate(c, &req, peer).await {
        Ok(w) => w,
        Err(r) => return *r,
    };
    // Bodies are read here, on the runtime; what follows reads and writes the state store,
    // so it runs on a blocking thread (no runtime thread ever waits on SQLite).
    let body = match (route, &method) {
        ("/v1/tunnels", &Method::POST)
        | ("/v1/tunnels/{name}/certificate", _)
        | ("/v1/tunnels/{name}/ssh-key", _) => match read_body(req, MAX_BODY, BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        _ => Default::default(),
    };
    let Ok(_working) = c.working.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let (c, route, name) = (c.clone(), route.to_string(), name.to_string());
    let rt = tokio::runtime::Handle::current();
    let work = move || rt.block_on(authorized(&c, &who, &route, method, &name, &body));
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        ),
    }
}

/// The routes that need a caller (authenticated as `who`), with the body already read.
async fn authorized(
    c: &Control,
    who: &Identity,
    route: &str,
    method: Method,
    name: &str,
    body: &[u8],
) -> Resp {
    match (route, method) {
        ("/v1/tunnels", Method::GET) => match c.store.tunnels(Some(&who.client_id)) {
            Ok(list) => {
                let infos: Vec<_> = list.iter().map(|t| c.info(t)).collect();
                json_resp(StatusCode::OK, &serde_json::json!(infos))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        ("/v1/tunnels", Method::POST) => {
            let create: CreateRequest = if body.iter().all(u8::is_ascii_whitespace) {
                CreateRequest::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(c) => c,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("the body is not a tunnel request: {e}"),
                        )
                    }
                }
            };
            match c.create(who, create).await {
                Ok(info) => json_resp(StatusCode::CREATED, &serde_json::json!(info)),
                Err(r) => refused(r),
            }
        }
        ("/v1/tunnels/{name}", Method::GET) => match c.owned(who, name) {
            Ok(t) => json_resp(StatusCode::OK, &serde_json::json!(c.info(&t))),
            Err(r) => refused(r),
        },
        ("/v1/tunnels/{name}", Method::DELETE) => match c.delete(who, name).await {
            Ok(()) => respond(StatusCode::NO_CONTENT, "text/plain", ""),
            Err(r) => refused(r),
        },
        ("/v1/tunnels/{name}/renew", _) => match c.renew(who, name).await {
            Ok(info) => json_resp(StatusCode::OK, &serde_json::json!(info)),
            Err(r) => refused(r),
        },
        ("/v1/tunnels/{name}/ssh-key", _) => {
            let bound = match (c.owned(who, name), std::str::from_utf8(body)) {
                (Err(r), _) => Err(r),
                (_, Err(_)) => Err((StatusCode::BAD_REQUEST, "the key is not text".into())),
                (Ok(t), Ok(line)) => c.bind_key(&t, line, Upload::Add).await,
            };
            match bound {
                Ok(fingerprint) => json_resp(
                    StatusCode::CREATED,
                    &serde_json::json!({ "tunnel": name, "fingerprint": fingerprint }),
                ),
                Err(r) => refused(r),
            }
        }
        (_, _) => {
            let Ok(csr) = std::str::from_utf8(body) else {
                return error(StatusCode::BAD_REQUEST, "the CSR is not PEM text");
            };
            match c.sign(who, name, csr) {
                Ok(s) => json_resp(StatusCode::CREATED, &serde_json::json!(s)),
                Err(r) => refused(r),
            }
        }
    }
}
