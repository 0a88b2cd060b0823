//! The `https-subdomain` frontend: its listener, claims and routes.

use crate::certs::Resolver;
use crate::config::Config;
use crate::listener;
use crate::metrics::HttpsMetrics;
use crate::names::{Lookup, Names};
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tunneld_core::frontend::{
    Claim, ClaimError, ClaimRequest, Frontend, FrontendContext, NameRoute, RouteInfo,
};
use tunneld_core::metrics::Metrics;
use tunneld_core::proto::TunnelKind;
use tunneld_core::reverse_http::{HttpUpstream, ReverseHttpLinks};
use tunneld_core::tls::provider;
use tunneld_core::tls_listener::BoundListener;
use tunneld_core::transport::SharedTransport;

pub struct HttpsFrontend {
    pub(crate) name: String,
    pub(crate) cfg: Config,
    listener: BoundListener,
    pub(crate) names: Arc<Names>,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) visitor_tls: Arc<rustls::ServerConfig>,
    /// TLS-ALPN-01 validations (ALPN `acme-tls/1`), with a certificate source.
    pub(crate) acme_tls: Option<Arc<rustls::ServerConfig>>,
    /// 2ptth compat mode, when configured.
    pub(crate) compat_2ptth: Option<Compat2ptthLinks>,
    pub(crate) shared: Option<Arc<dyn SharedTransport>>,
    /// The connected 2ptth initiator, if any.
    pub(crate) upstream_2ptth: Mutex<Option<Arc<dyn HttpUpstream>>>,
    pub(crate) metrics: Arc<Metrics>,
    /// This frontend's own series.
    pub(crate) own: Arc<HttpsMetrics>,
    /// The series every forwarded request touches, with this frontend's labels resolved
    /// once (a label lookup hashes and locks: five a request, about 2 % of tunneld's samples in
    /// a profile of HTTPS visitors).
    pub(crate) per_request: RequestSeries,
    /// The server's limits, read per connection: handshake timeout (the ClientHello and the
    /// TLS handshake), head limits (431 above the request limit), stall and idle timeouts.
    pub(crate) limits: tunneld_core::limits::LiveLimits,
}

/// A frontend's series of forwarded requests, labels resolved.
pub(crate) struct RequestSeries {
    pub(crate) opened: prometheus::IntCounter,
    pub(crate) bytes_in: prometheus::IntCounter,
    pub(crate) bytes_out: prometheus::IntCounter,
    pub(crate) open_seconds: prometheus::Histogram,
    pub(crate) forwarded: prometheus::IntCounter,
}

impl RequestSeries {
    fn new(m: &Metrics, own: &HttpsMetrics, name: &str) -> Self {
        RequestSeries {
            opened: m.streams_opened_total.with_label_values(&[name]),
            bytes_in: m.bytes_total.with_label_values(&[name, "in"]),
            bytes_out: m.bytes_total.with_label_values(&[name, "out"]),
            open_seconds: m.stream_open_seconds.with_label_values(&[name]),
            forwarded: own
                .http_requests_total
                .with_label_values(&[name, "forwarded"]),
        }
    }
}

/// What 2ptth compat mode accepts initiators with: a TLS config offering their ALPN id, and
/// the reversed links the daemon passed in.
pub(crate) struct Compat2ptthLinks {
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) links: Arc<dyn ReverseHttpLinks>,
}

/// Why an https frontend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("compat_2ptth needs the reversed HTTP links of the h2-reverse transport")]
    NoReverseLinks,
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Metrics(#[from] tunneld_core::metrics::MetricsError),
}

fn tls_config(
    resolver: &Arc<Resolver>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

impl HttpsFrontend {
    /// Binds the listener now, so the caller learns the real address (port 0 works).
    /// `reverse_links` makes the links of 2ptth initiators; `compat_2ptth` needs it.
    #[allow(clippy::too_many_arguments)]
    pub async fn bind(
        name: &str,
        cfg: Config,
        resolver: Arc<Resolver>,
        shared: Option<Arc<dyn SharedTransport>>,
        reverse_links: Option<Arc<dyn ReverseHttpLinks>>,
        metrics: Arc<Metrics>,
        limits: tunneld_core::limits::LiveLimits,
    ) -> Result<Arc<Self>, BindError> {
        let own = metrics.plugin::<HttpsMetrics>()?;
        let links_2ptth = match (&cfg.compat_2ptth, reverse_links) {
            (Some(_), None) => return Err(BindError::NoReverseLinks),
            (Some(_), links) => links,
            (None, _) => None,
        };
        let listener =
            BoundListener::bind(cfg.listen)
                .await
                .map_err(|error| BindError::Listen {
                    addr: cfg.listen,
                    error,
                })?;
        let visitor_tls = tls_config(&resolver, &[b"h2", b"http/1.1"])?;
        let acme_tls = match resolver.answers_acme() {
            true => Some(tls_config(&resolver, &[crate::ACME_TLS_ALPN])?),
            false => None,
        };
        let compat_2ptth = match links_2ptth {
            Some(links) => Some(Compat2ptthLinks {
                tls: tls_config(&resolver, &[links.alpn_2ptth()])?,
                links,
            }),
            None => None,
        };
        let names = Names::new(
            cfg.reclaim_grace,
            cfg.pools.clone(),
            own.http_names_active.with_label_values(&[name]),
        );
        // Certificates only for names someone holds (claimed, reserved, or a pool).
        let held = names.clone();
        resolver.set_claimed(Arc::new(move |label| {
            !matches!(held.lookup_host(label, false).1, Lookup::Unknown)
        }));
        let per_request = RequestSeries::new(&metrics, &own, name);
        Ok(Arc::new(Self {
            per_request,
            name: name.to_string(),
            cfg,
            listener,
            names,
            resolver,
            visitor_tls,
            acme_tls,
            compat_2ptth,
            shared,
            upstream_2ptth: Mutex::new(None),
            metrics,
            own,
            limits,
        }))
    }

    /// The port in public URLs.
    fn public_port(&self) -> u16 {
        self.cfg
            .public_port
            .unwrap_or_else(|| self.listener.local_addr().port())
    }

    /// `https://<name>.<domain>[:port]`.
    pub fn endpoint(&self, name: &str) -> String {
        let port = self.public_port();
        if port == 443 {
            format!("https://{name}.{}", self.cfg.domain)
        } else {
            format!("https://{name}.{}:{port}", self.cfg.domain)
        }
    }

    pub(crate) fn count(&self, outcome: &str) {
        if outcome == "forwarded" {
            return self.per_request.forwarded.inc();
        }
        self.own
            .http_requests_total
            .with_label_values(&[&self.name, outcome])
            .inc();
    }
}

#[async_trait]
impl Frontend for HttpsFrontend {
    fn kind(&self) -> &'static str {
        "https-subdomain"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn serves(&self, kind: TunnelKind) -> bool {
        matches!(kind, TunnelKind::Http | TunnelKind::Tls)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: FrontendContext) {
        let Some(l) = self.listener.take() else {
            return;
        };
        tracing::info!(frontend = %self.name, addr = %self.listener.local_addr(), domain = %self.cfg.domain, "https-subdomain frontend listening");
        listener::run(self, l, cx).await;
    }

    async fn claim(self: Arc<Self>, req: ClaimRequest) -> Result<Claim, ClaimError> {
        if req.ask.name().is_some_and(|s| s.starts_with("*.")) && req.kind != TunnelKind::Tls {
            return Err(ClaimError::Invalid(
                "a wildcard subdomain (`*.name`) is only for `tls` (passthrough) tunnels".into(),
            ));
        }
        let claim = self.names.claim(&req, |n| self.endpoint(n))?;
        if req.kind != TunnelKind::Tls {
            if let Some(n) = claim.name.as_deref().filter(|n| !n.starts_with("*.")) {
                self.resolver.prepare(&format!("{n}.{}", self.cfg.domain));
            }
        }
        Ok(claim)
    }

    fn routes(&self) -> Vec<RouteInfo> {
        self.names.routes(&self.name, |n| self.endpoint(n))
    }

    fn route_name(&self, rest: &str) -> NameRoute {
        self.names.lookup_host(rest, true).1
    }
}
