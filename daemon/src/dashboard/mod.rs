//! The web dashboard under `/ui` on the admin listener (docs/dashboard.md): server-side
//! rendered pages, live numbers by server-sent events, and forms for a few actions, with
//! its CSS and JavaScript embedded in the binary.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ui/login`, `POST /ui/login` | the login form; the admin token sets a session cookie |
//! | `POST /ui/logout` | ends the session |
//! | `GET /ui` | the overview |
//! | `GET /ui/fragment/tables` | the overview's tables alone (the page swaps them in) |
//! | `GET /ui/events` | `text/event-stream`: the totals once a second |
//! | `POST /ui/sessions/disconnect` | ends one session |
//! | `POST /ui/tokens/revoke` | revokes a stored token and cuts its sessions |
//! | `POST /ui/mappings` | replaces the admin mappings (as `PUT /tunnels`) |
//! | `GET /ui/assets/dashboard.css`, `.js` | the embedded assets |

mod actions;
mod auth;
mod csrf;
mod events;
mod pages;
mod recent;
mod reply;
mod sessions;
mod stats;
mod tables;

use crate::http_serve::Resp;
use crate::mappings::AdminMappings;
use auth::{Refused, Who};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;
use tunneld_state::StateStore;

/// Largest form body accepted (the mapping form has its own, larger cap).
pub const MAX_FORM: usize = 4 * 1024;
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// What the dashboard reaches of the admin listener's state.
pub struct Parts {
    pub hub: Arc<Hub>,
    pub mappings: Arc<AdminMappings>,
    pub store: Arc<dyn StateStore>,
    pub writes: Arc<tokio::sync::Mutex<()>>,
    pub metrics: Arc<Metrics>,
    pub token_digest: Option<[u8; 32]>,
    pub draining: CancellationToken,
    /// Whether the listener speaks TLS (the cookie is then `Secure`).
    pub secure: bool,
}

pub struct Dashboard {
    hub: Arc<Hub>,
    mappings: Arc<AdminMappings>,
    store: Arc<dyn StateStore>,
    writes: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
    token_digest: Option<[u8; 32]>,
    draining: CancellationToken,
    secure: bool,
    sessions: sessions::Sessions,
    recent: Arc<recent::Recent>,
    totals: watch::Receiver<stats::Totals>,
    /// Open event streams ([`events::MAX_STREAMS`]).
    streams: Arc<Semaphore>,
}

impl Dashboard {
    /// Starts the once-a-second sampler (it ends at drain).
    pub fn start(p: Parts) -> Arc<Self> {
        let recent = Arc::new(recent::Recent::default());
        let totals = stats::spawn(
            p.hub.clone(),
            p.metrics.clone(),
            recent.clone(),
            p.draining.clone(),
        );
        Arc::new(Self {
            hub: p.hub,
            mappings: p.mappings,
            store: p.store,
            writes: p.writes,
            metrics: p.metrics,
            token_digest: p.token_digest,
            draining: p.draining,
            secure: p.secure,
            sessions: sessions::Sessions::default(),
            recent,
            totals,
            streams: Arc::new(Semaphore::new(events::MAX_STREAMS)),
        })
    }

    /// Whether `path` is the dashboard's.
    pub fn owns(path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/")
    }

    /// Answers one request under `/ui`.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/ui/assets/dashboard.css") => {
                return reply::asset("text/css; charset=utf-8", CSS)
            }
            (&Method::GET, "/ui/assets/dashboard.js") => {
                return reply::asset("text/javascript; charset=utf-8", JS)
            }
            (&Method::GET, "/ui/login") => {
                return match (&self.token_digest, self.session(&req, peer.ip())) {
                    (None, _) | (_, Some(_)) => reply::see_other("/ui"),
                    _ => reply::html(StatusCode::OK, pages::login(None)),
                };
            }
            (&Method::POST, "/ui/login") => return self.login(req, peer).await,
            _ => {}
        }
        let mut new_cookie = None;
        let who = match self.who(&req, peer, &mut new_cookie) {
            Ok(w) => w,
            Err(Refused::Login) => return reply::see_other("/ui/login"),
            Err(Refused::Resp(r)) => return *r,
        };
        let mut resp = self.route(req, &method, &path, who).await;
        if let Some(c) = new_cookie {
            self.set_cookie(&mut resp, &c);
        }
        resp
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        method: &Method,
        path: &str,
        who: Who,
    ) -> Resp {
        match (method, path) {
            (&Method::GET, "/ui" | "/ui/") => {
                let (csrf, flash) = match &who {
                    Who::Session(f) => (f.csrf.clone(), self.sessions.take_flash(&f.key)),
                    Who::Bearer => (String::new(), None),
                };
                let page =
                    pages::overview(self, &csrf, flash.as_deref(), self.token_digest.is_some())
                        .await;
                reply::html(StatusCode::OK, page)
            }
            (&Method::GET, "/ui/fragment/tables") => {
                let csrf = match &who {
                    Who::Session(f) => f.csrf.clone(),
                    Who::Bearer => String::new(),
                };
                reply::html(StatusCode::OK, tables::all(self, &csrf).await)
            }
            (&Method::GET, "/ui/events") => self.events(&who),
            (&Method::POST, p) if actions::is_action(p) => self.act(req, p, who).await,
            (_, p)
                if actions::is_action(p)
                    || matches!(p, "/ui" | "/ui/" | "/ui/events" | "/ui/fragment/tables") =>
            {
                reply::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not allowed on {p}"),
                )
            }
            (_, p) => reply::text(StatusCode::NOT_FOUND, &format!("no dashboard page {p}")),
        }
    }
}
