//! The admin API: metrics, health, and the declarative tunnel list.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /readyz` | `ready`, or 503 `draining` after SIGTERM |
//! | `GET /clients` | connected clients (JSON) |
//! | `GET /tunnels` | every route and the admin mappings (JSON) |
//! | `PUT /tunnels` | replaces the admin mappings (JSON array); see docs/admin-api.md |
//! | `GET /ping` | `pong` (threshold's liveness route) |
//! | `POST /reload` | reads the config file again and applies the difference (`reload`) |
//! | `GET /cluster` | cluster mode: nodes, their load, who holds what (`enabled: false` without) |
//! | `GET /openapi.yaml` | this API's OpenAPI document (docs/openapi/admin.yaml) |
//! | `/ui`, `/ui/...` | the web dashboard (`dashboard`, docs/dashboard.md) |
//!
//! `/clients` and `/tunnels` also speak threshold's shapes (`admin_threshold`).

use crate::admin_threshold::{self, Shape};
use crate::config::server::AdminConfig;
use crate::http_serve::{self, error, json_resp, respond, Handler, Limits, Resp};
use crate::mappings::{AdminMappings, Mapping, MappingError};
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::sha256;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;
use tunneld_state::StateStore;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// This API's OpenAPI document, served at `GET /openapi.yaml` (no token needed).
const OPENAPI: &str = include_str!("../../docs/openapi/admin.yaml");

struct State {
    shape: Shape,
    hub: Arc<Hub>,
    mappings: Arc<AdminMappings>,
    /// Where accepted mappings are kept across restarts.
    store: Arc<dyn StateStore>,
    /// One mapping update at a time, applied and stored together (shared by the admin API and
    /// threshold's management API), so the stored list is the live one.
    writes: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
    token_digest: Option<[u8; 32]>,
    draining: CancellationToken,
    /// None on threshold's management API (no `/reload` there).
    reloader: Option<Arc<crate::reload::Reloader>>,
    /// The web dashboard under `/ui` (not on threshold's management API).
    dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    /// Cluster mode (`GET /cluster`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What the admin API reaches of the running tunneld beyond the hub.
pub struct Hooks {
    /// Cancelled once shutdown begins (`/readyz` answers 503).
    pub draining: CancellationToken,
    /// `POST /reload`.
    pub reloader: Arc<crate::reload::Reloader>,
    /// Cluster mode's state, for `GET /cluster`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Binds the admin listener and serves it in the background.
pub async fn start(
    cfg: AdminConfig,
    hub: Arc<Hub>,
    mappings: Arc<AdminMappings>,
    store: Arc<dyn StateStore>,
    writes: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
    hooks: Hooks,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let token_digest = cfg.token.as_ref().map(|t| sha256(t.0.as_bytes()));
    let dashboard = crate::dashboard::Dashboard::start(crate::dashboard::Parts {
        hub: hub.clone(),
        mappings: mappings.clone(),
        store: store.clone(),
        writes: writes.clone(),
        metrics: metrics.clone(),
        token_digest,
        draining: hooks.draining.clone(),
        // The admin listener speaks plain HTTP (no TLS below), so the cookie is not `Secure`.
        secure: false,
    });
    let state = Arc::new(State {
        shape: cfg.shape,
        hub,
        mappings,
        store,
        writes,
        metrics,
        token_digest,
        draining: hooks.draining,
        reloader: Some(hooks.reloader),
        dashboard: Some(dashboard),
        cluster: hooks.cluster,
    });
    tracing::info!(%addr, "admin API listening");
    let handler: Handler = Arc::new(move |req, peer| {
        let state = state.clone();
        Box::pin(async move { handle(&state, req, peer).await })
    });
    http_serve::serve(
        "admin API",
        listener,
        None,
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        },
        handler,
    );
    Ok(addr)
}

fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(want) = &state.token_digest else {
        return true;
    };
    let got = http_serve::bearer(req).map(|t| sha256(t.as_bytes()));
    match got {
        Some(g) => g.iter().zip(want).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0,
        None => false,
    }
}

async fn handle(state: &State, req: Request<Incoming>, peer: std::net::SocketAddr) -> Resp {
    let ui =
        (state.dashboard.as_ref()).filter(|_| crate::dashboard::Dashboard::owns(req.uri().path()));
    let route = match req.uri().path() {
        p @ ("/metrics" | "/healthz" | "/readyz" | "/clients" | "/tunnels" | "/ping"
        | "/reload" | "/openapi.yaml" | "/cluster") => p.to_string(),
        // threshold answered its liveness route with a trailing slash too.
        "/ping/" => "/ping".to_string(),
        _ if ui.is_some() => "/ui".to_string(),
        _ => "other".to_string(),
    };
    let resp = match ui {
        Some(d) => d.handle(req, peer).await,
        None => route_request(state, req, &route, peer).await,
    };
    if let Some(own) = crate::metrics::of(&state.metrics) {
        own.admin_requests_total
            .with_label_values(&[&route, resp.status().as_str()])
            .inc();
    }
    resp
}

async fn route_request(
    state: &State,
    req: Request<Incoming>,
    route: &str,
    peer: std::net::SocketAddr,
) -> Resp {
    let open = matches!(route, "/healthz" | "/readyz" | "/ping" | "/openapi.yaml");
    if !open && state.token_digest.is_some() {
        // Wrong tokens count against the address, with the transports' failures.
        if let Err(wait) = state.hub.throttle.check(peer.ip()) {
            return crate::http_serve::throttled(peer.ip(), wait);
        }
    }
    if !open && !authorized(state, &req) {
        if crate::http_serve::bearer(&req).is_some() {
            state.hub.throttle.failed(peer.ip());
        }
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match (req.method().clone(), route) {
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        (Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (Method::GET, "/readyz") if state.draining.is_cancelled() => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        (Method::GET, "/readyz") => respond(StatusCode::OK, "text/plain", "ready\n"),
        (Method::GET, "/ping") => respond(StatusCode::OK, "text/plain", "pong"),
        (Method::GET, "/openapi.yaml") => respond(StatusCode::OK, "application/yaml", OPENAPI),
        (Method::GET, "/clients" | "/tunnels") => {
            let shape = match Shape::from_query(req.uri().query(), state.shape) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let body = match (route, shape) {
                ("/clients", Shape::Tunneld) => clients(state),
                ("/clients", Shape::Threshold) => {
                    admin_threshold::clients(&state.hub, &state.mappings).await
                }
                (_, Shape::Tunneld) => tunnels(state).await,
                (_, Shape::Threshold) => {
                    admin_threshold::listeners(&state.mappings.mappings().await)
                }
            };
            json_resp(StatusCode::OK, &body)
        }
        (Method::PUT, "/tunnels") => put_tunnels(state, req).await,
        (Method::GET, "/cluster") => crate::cluster::api::respond(state.cluster.as_deref()),
        (Method::POST, "/reload") => reload(state).await,
        (_, "other") => error(
            StatusCode::NOT_FOUND,
            format!("no route {}", req.uri().path()),
        ),
        (m, r) => {
            let allowed = match r {
                "/tunnels" => "GET, PUT",
                "/reload" => "POST",
                _ => "GET",
            };
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{m} is not allowed on {r}"),
            );
            if let Ok(v) = header::HeaderValue::from_str(allowed) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            resp
        }
    }
}

/// `POST /reload`: 200 with what changed, 400 with the errors (nothing changed), 500 when
/// part of a valid change could not be applied.
async fn reload(state: &State) -> Resp {
    use crate::reload::ReloadError;
    let Some(reloader) = &state.reloader else {
        return error(StatusCode::NOT_FOUND, "no route /reload");
    };
    match reloader.reload().await {
        Ok(s) if s.failed.is_empty() => json_resp(StatusCode::OK, &json!({ "reloaded": s })),
        Ok(s) => json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": "part of the change could not be applied", "reloaded": s }),
        ),
        Err(ReloadError::Invalid(lines)) => json_resp(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid configuration; the running one is kept", "errors": lines }),
        ),
        Err(e) => json_resp(
            StatusCode::BAD_REQUEST,
            &json!({ "error": e.to_string(), "errors": [e.to_string()] }),
        ),
    }
}

fn clients(state: &State) -> Value {
    let list: Vec<Value> = state
        .hub
        .sessions()
        .iter()
        .map(|s| {
            json!({
                "client_id": s.info.client_id,
                "session": s.info.id,
                "transport": s.info.transport,
                "transport_type": s.info.transport_kind,
                "remote": s.info.remote.to_string(),
                "auth": s.info.auth_method,
                "connected_at": s.info.connected_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "accept_server_mappings": s.accept_server_mappings,
                "instance": s.info.instance,
                "tunnels": s.tunnels(),
            })
        })
        .collect();
    Value::Array(list)
}

async fn mappings_json(list: Vec<(Mapping, String)>) -> Value {
    Value::Array(
        list.into_iter()
            .map(|(m, endpoint)| {
                let mut v = serde_json::to_value(&m).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("endpoint".into(), Value::String(endpoint));
                }
                v
            })
            .collect(),
    )
}

async fn tunnels(state: &State) -> Value {
    json!({
        "routes": state.mappings.routes_with_owners(&state.hub).await,
        "mappings": mappings_json(state.mappings.mappings().await).await,
    })
}

async fn put_tunnels(state: &State, req: Request<Incoming>) -> Resp {
    let shape = match Shape::from_query(req.uri().query(), state.shape) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Media types compare without regard to case (RFC 9110 section 8.3.1).
    let essence = ct.split(';').next().map(str::trim).unwrap_or("");
    if !essence.eq_ignore_ascii_case("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let body = match http_serve::read_body(req, MAX_BODY, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid JSON: {e}"),
            )
        }
    };
    // An empty list clears every mapping in either shape; it is answered in threshold's
    // (`[]`) when that is the configured or asked-for shape.
    let empty_threshold = value.as_array().is_some_and(Vec::is_empty) && shape == Shape::Threshold;
    if empty_threshold || admin_threshold::is_threshold_body(&value) {
        return put_threshold(state, value).await;
    }
    let desired: Vec<Mapping> = match serde_json::from_value(value) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid mapping list: {e}"),
            )
        }
    };
    match apply(state, desired).await {
        Ok(list) => json_resp(
            StatusCode::OK,
            &json!({ "mappings": mappings_json(list).await }),
        ),
        Err(e) => error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.message,
        ),
    }
}

/// Applies a mapping list and, once applied, stores it (on a blocking thread) so a restart
/// re-applies it. A store failure is logged: the live mappings stand.
async fn apply(
    state: &State,
    desired: Vec<Mapping>,
) -> Result<Vec<(Mapping, String)>, MappingError> {
    (state.mappings)
        .apply_and_store(&state.store, &state.writes, desired)
        .await
}

/// threshold's management API on a `yamux` transport's port (`threshold.management_api`):
/// `PUT /tunnels`, `GET /tunnels`, `GET /clients` in threshold's shape and `GET /ping`, for
/// callers whose client certificate the transport verified (threshold's model: any client of
/// the domain may replace the whole list). It acts on the same mappings as the admin API.
pub struct ThresholdManagement {
    state: Arc<State>,
}

impl ThresholdManagement {
    pub fn new(
        hub: Arc<Hub>,
        mappings: Arc<AdminMappings>,
        store: Arc<dyn StateStore>,
        writes: Arc<tokio::sync::Mutex<()>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Arc::new(State {
                shape: Shape::Threshold,
                hub,
                mappings,
                store,
                writes,
                metrics,
                token_digest: None,
                draining: CancellationToken::new(),
                reloader: None,
                dashboard: None,
                cluster: None,
            }),
        })
    }
}

#[async_trait::async_trait]
impl tunneld_core::transport::ManagementApi for ThresholdManagement {
    async fn serve(&self, io: tunneld_core::io::BoxIo, caller: String, peer: SocketAddr) {
        let state = self.state.clone();
        let handler: Handler = Arc::new(move |req, peer| {
            let (state, caller) = (state.clone(), caller.clone());
            Box::pin(async move {
                let path = req.uri().path().trim_end_matches('/').to_string();
                if !matches!(path.as_str(), "/tunnels" | "/clients" | "/ping") {
                    return respond(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "404 page not found\n",
                    );
                }
                // Threshold's shapes only: the native answers name every session's address.
                if req.uri().query().is_some_and(|q| q.contains("shape=")) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "this port answers in threshold's shape only",
                    );
                }
                if req.method() == Method::PUT {
                    tracing::info!(%caller, %peer, "threshold management: PUT /tunnels on the tunnel port");
                }
                handle(&state, req, peer).await
            })
        });
        let limits = Limits {
            max_connections: 1,
            header_timeout: HEADER_TIMEOUT,
        };
        http_serve::serve_io("threshold management API", io, peer, limits, handler).await;
    }
}

/// Re-applies the mappings stored by the last accepted update (at start).
pub async fn restore(
    mappings: &AdminMappings,
    store: &Arc<dyn StateStore>,
) -> anyhow::Result<usize> {
    let s = store.clone();
    let Some(json) = tokio::task::spawn_blocking(move || s.admin_mappings()).await?? else {
        return Ok(0);
    };
    let desired: Vec<Mapping> = serde_json::from_str(&json)
        .map_err(|e| anyhow::anyhow!("stored admin mappings are unreadable: {e}"))?;
    let n = desired.len();
    mappings
        .restore(desired)
        .await
        .map_err(|e| anyhow::anyhow!("stored admin mappings: {}", e.message))?;
    Ok(n)
}

/// `PUT /tunnels` in threshold's shape: plain-text errors, the listener list on success.
async fn put_threshold(state: &State, value: Value) -> Resp {
    let text = |status: u16, msg: String| {
        respond(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            "text/plain; charset=utf-8",
            format!("{msg}\n"),
        )
    };
    let list: Vec<admin_threshold::Listener> = match serde_json::from_value(value) {
        Ok(l) => l,
        Err(e) => {
            return text(
                422,
                format!("422 Unprocessable Entity: Can't Parse JSON: {e}"),
            )
        }
    };
    let desired = match admin_threshold::to_mappings(list) {
        Ok(d) => d,
        Err((status, msg)) => return text(status, msg),
    };
    match apply(state, desired).await {
        Ok(list) => json_resp(StatusCode::OK, &admin_threshold::listeners(&list)),
        Err(e) => text(e.status, e.message),
    }
}
