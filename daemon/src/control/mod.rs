//! The control plane: tunnels provisioned through the API ([`provision`]), their leases
//! restored at start and lapsed by the [`sweep`], the HTTPS API ([`api`]) and the plain web
//! port ([`web`]).

pub mod api;
pub mod endpoint;
mod lease_sync;
pub mod pipe2me;
pub mod provision;
pub mod sweep;
pub mod tunnel_keys;
/// The API's JSON shapes, shared with `tunnelc setup` (`tunneld_client::provision_api`).
pub use tunneld_client::provision_api as types;
pub mod web;

use crate::config::control::ControlConfig;
use crate::http_serve::{self, Handler, Limits};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tunneld_core::auth::Authenticator;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;
use tunneld_core::tls::LocalCa;
use tunneld_state::StateStore;

/// What the transport `tunnelc setup` configures looks like from outside.
#[derive(Debug, Clone)]
pub struct SetupTransport {
    /// `yamux`, `h2-reverse` or `ssh`.
    pub kind: &'static str,
    pub port: u16,
    /// Whether its certificate comes from tunneld's CA (clients then trust `/cacert`).
    pub local_ca: bool,
}

/// Shared by the API, the web port and the sweep.
pub struct Control {
    pub cfg: ControlConfig,
    pub store: Arc<dyn StateStore>,
    /// The store's tunnels, tokens and ids in memory, for the web port's lookups.
    pub cache: Arc<tunneld_state::cache::StateCache>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub ca: LocalCa,
    pub ca_pem: String,
    pub metrics: Arc<Metrics>,
    /// The names frontend's domain.
    pub domain: String,
    pub transport: SetupTransport,
    /// `host:port` of the ssh transport for pipe2me-shape answers ([`endpoint`]).
    pub ssh_endpoint: Option<String>,
    /// The ssh transport's host key line (`ssh-ed25519 AAAA...`), for clients' `known_hosts`.
    pub ssh_host_key: Option<String>,
    /// The ports frontend's range (`20000-20999`), for pipe2me's `GET /config`.
    pub ports_range: Option<String>,
    /// One provisioning change at a time, so quota checks and inserts do not interleave.
    pub changes: tokio::sync::Mutex<()>,
    /// Authenticated requests being served on blocking threads at once (the rest wait on
    /// the runtime), so a burst cannot take the blocking pool from token and id lookups.
    pub working: tokio::sync::Semaphore,
    /// Pending ACME HTTP-01 validations, answered on the web port.
    pub acme: Arc<crate::acme::challenges::AcmeChallenges>,
}

/// Bound addresses of the control listeners.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub web: Option<SocketAddr>,
}

impl Control {
    /// Binds the API (TLS) and the web port, and serves them in the background.
    pub async fn start(self: &Arc<Self>, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<Bound> {
        use anyhow::Context;
        let limits = Limits {
            max_connections: self.cfg.max_connections,
            header_timeout: self.cfg.header_timeout,
        };
        let listener = TcpListener::bind(self.cfg.listen)
            .await
            .with_context(|| format!("control.listen {}", self.cfg.listen))?;
        let api = listener.local_addr()?;
        let me = self.clone();
        let handler: Handler = Arc::new(move |req, peer| {
            let me = me.clone();
            Box::pin(async move { api::handle(&me, req, peer).await })
        });
        http_serve::serve(
            "provisioning API",
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            limits,
            handler,
        );
        tracing::info!(addr = %api, "provisioning API listening");
        let web = match self.cfg.web_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("control.web_listen {addr}"))?;
                let bound = listener.local_addr()?;
                let me = self.clone();
                let handler: Handler = Arc::new(move |req, _peer| {
                    let me = me.clone();
                    Box::pin(async move { web::handle(&me, req).await })
                });
                http_serve::serve("web port", listener, None, limits, handler);
                tracing::info!(addr = %bound, "plain web port listening");
                Some(bound)
            }
            None => None,
        };
        Ok(Bound { api, web })
    }

    /// Counts one request in the metrics.
    pub(crate) fn count(&self, route: &str, status: http::StatusCode) {
        if let Some(own) = crate::metrics::of(&self.metrics) {
            own.control_requests_total
                .with_label_values(&[route, status.as_str()])
                .inc();
        }
    }
}
