//! The plug-in: binds the HTTPS listener, routes each connection by its first request, and
//! holds tunnel-name claims.

use crate::config::Config;
use crate::names::Names;
use crate::park::{self, Parker};
use crate::registry::Registry;
use crate::visitor_auth::Nonces;
use crate::{connect_access, visitor};
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tunneld_core::auth::{token_digest, Authenticator};
use tunneld_core::frontend::{
    Claim, ClaimError, ClaimRequest, Frontend, FrontendContext, RouteInfo,
};
use tunneld_core::http1::{self, HeadError};
use tunneld_core::io::BoxIo;
use tunneld_core::limits::{Permit, Setting};
use tunneld_core::metrics::Metrics;
use tunneld_core::proto::TunnelKind;
use tunneld_core::tls_listener::{self, Accepted, BoundListener, ListenerSpec};

/// What every connection of this frontend shares.
pub(crate) struct Inner {
    pub name: String,
    pub cfg: Config,
    pub registry: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    pub nonces: Nonces,
    pub names: Arc<Names>,
    pub metrics: Arc<Metrics>,
    /// `connect_access.users`, digested.
    pub users: HashMap<String, [u8; 32]>,
    /// `connect_access.tokens`, digested.
    pub tokens: HashMap<String, [u8; 32]>,
    /// The server's limits, read per connection: handshake and idle timeouts, connections
    /// per address, `max_request_head` (heads above it are answered 431).
    pub limits: tunneld_core::limits::LiveLimits,
}

impl Inner {
    pub(crate) fn visitor_outcome(&self, outcome: &str) {
        self.registry
            .own
            .rendezvous_visitors_total
            .with_label_values(&[&self.name, outcome])
            .inc();
    }
}

pub struct RendezvousFrontend {
    inner: Arc<Inner>,
    listener: BoundListener,
    tls: TlsAcceptor,
}

impl RendezvousFrontend {
    /// Binds the listener (port 0 works). `tls` is tunneld's server identity for visitors;
    /// heads over `limits.max_request_head` bytes are answered 431.
    #[allow(clippy::too_many_arguments)]
    pub async fn bind(
        name: &str,
        cfg: Config,
        tls: Arc<rustls::ServerConfig>,
        registry: Arc<Registry>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        limits: tunneld_core::limits::LiveLimits,
    ) -> std::io::Result<Arc<Self>> {
        let listener = BoundListener::bind(cfg.listen).await?;
        let digest = |m: &std::collections::BTreeMap<String, tunneld_core::auth::Secret>| {
            m.iter()
                .filter_map(|(k, v)| token_digest(&v.0).ok().map(|d| (k.to_ascii_lowercase(), d)))
                .collect::<HashMap<_, _>>()
        };
        let inner = Inner {
            name: name.to_string(),
            users: digest(&cfg.connect_access.users),
            tokens: digest(&cfg.connect_access.tokens),
            names: Names::new(cfg.reclaim_grace),
            nonces: Nonces::new(Duration::from_secs(300)),
            cfg,
            registry,
            auth,
            metrics,
            limits,
        };
        Ok(Arc::new(Self {
            inner: Arc::new(inner),
            listener,
            tls: TlsAcceptor::from(tls),
        }))
    }

    fn public(&self) -> String {
        match &self.inner.cfg.public_host {
            Some(h) => format!("{h}:{}", self.listener.local_addr().port()),
            None => self.listener.local_addr().to_string(),
        }
    }

    fn endpoint(&self, name: &str) -> String {
        format!("connect://{}/{name}", self.public())
    }
}

#[async_trait]
impl Frontend for RendezvousFrontend {
    fn kind(&self) -> &'static str {
        "rendezvous"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn serves(&self, kind: TunnelKind) -> bool {
        matches!(kind, TunnelKind::Tcp)
    }

    /// Tunnels land here only when they name this frontend.
    fn is_default_for(&self, _: TunnelKind) -> bool {
        false
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: FrontendContext) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let spec = ListenerSpec {
            component: self.inner.name.clone(),
            tls: Some(self.tls.clone()),
            handshake_timeout: Setting::Live(self.inner.limits.clone(), |l| l.handshake_timeout),
            max_connections: self.inner.cfg.max_connections,
            max_per_address: Setting::Live(self.inner.limits.clone(), |l| {
                l.max_connections_per_address
            }),
            metrics: cx.metrics.clone(),
            // Hidden servers park here: the listener stays open for them during the drain.
            shutdown: cx.closing.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
        };
        let inner = self.inner.clone();
        tls_listener::run(listener, spec, move |a| {
            let (inner, cx) = (inner.clone(), cx.clone());
            async move { serve_connection(inner, a, cx).await }
        })
        .await;
    }

    async fn claim(self: Arc<Self>, req: ClaimRequest) -> Result<Claim, ClaimError> {
        // Tunnel names and rendezvous ids are one namespace: `CONNECT <label>:<port>` must
        // reach one owner, and an id (made by the operator) is never shadowed by a name.
        let lower = req.tunnel.to_ascii_lowercase();
        let ids = &self.inner.registry.ids;
        let is_id = match (
            ids.lookup_strict(&req.tunnel).await,
            ids.lookup_strict(&lower).await,
        ) {
            (Ok(a), Ok(b)) => a.is_some() || b.is_some(),
            (Err(e), _) | (_, Err(e)) => {
                return Err(ClaimError::Invalid(format!(
                    "rendezvous ids cannot be checked now ({e}): try again"
                )))
            }
        };
        if is_id {
            return Err(ClaimError::Invalid(format!(
                "`{}` is a rendezvous id on frontend `{}`: pick another tunnel name",
                req.tunnel, self.inner.name
            )));
        }
        let endpoint = self.endpoint(&lower);
        self.inner.names.claim(&req, endpoint)
    }

    fn routes(&self) -> Vec<RouteInfo> {
        self.inner
            .names
            .routes(&self.inner.name, |n| self.endpoint(n))
    }
}

/// Reads requests until one decides what the connection is: a parked hidden server, a
/// CONNECT to a tunnel, or a rendezvous visitor (after any number of challenges).
async fn serve_connection(inner: Arc<Inner>, a: Accepted, cx: FrontendContext) {
    let Accepted {
        mut io,
        peer,
        local,
        cert_cn,
        mut permit,
    } = a;
    let mut buf = Vec::new();
    // Held from the first visitor request on: the drain waits for visitors, not for
    // parked hidden servers.
    let mut visiting = None;
    // Every step but the splice runs boxed, each only while it runs: a connection's task is
    // as large as its largest step, for as long as the connection lives, and a visitor is
    // spliced for the rest of its life.
    loop {
        let Some(head) = Box::pin(read_request(&inner, &mut io, &mut buf)).await else {
            return;
        };
        let parking = head.method.eq_ignore_ascii_case("CONNECT")
            && park::parse_target(&head.target).is_some();
        if !parking && visiting.is_none() {
            if cx.shutdown.is_cancelled() {
                Box::pin(refuse_draining(&inner, &mut io)).await;
                return;
            }
            visiting = Some(cx.tasks.token());
        }
        if head.method.eq_ignore_ascii_case("CONNECT") {
            if parking {
                // A parked connection is no visitor, whatever came before on it: it must not
                // hold the drain up.
                drop(visiting.take());
                if inner.cfg.parking {
                    let who = Parker {
                        peer: peer.ip(),
                        cert_cn,
                    };
                    Box::pin(park(&inner, io, head, buf, who, &mut permit, &cx)).await;
                } else {
                    inner.visitor_outcome("parking_disabled");
                    Box::pin(crate::respond::send(
                        &mut io,
                        &park::error_answer(403, "this listener does not accept parking"),
                        true,
                    ))
                    .await;
                }
            } else {
                connect_access::serve(&inner, io, head, buf, peer, local).await;
            }
            return;
        }
        match Box::pin(visitor::serve(&inner, &mut io, head, &mut buf, peer)).await {
            visitor::Next::Request => continue,
            visitor::Next::Done => return,
            visitor::Next::Splice(parked, prelude, id) => {
                // Its bytes went into the prelude; its room is not held while spliced.
                drop(buf);
                visitor::splice_to(&inner, io, parked, prelude, &id).await;
                return;
            }
        }
    }
}

/// Reads one request head within `header_timeout`; `None` (after any answer) ends the
/// connection.
async fn read_request(
    inner: &Inner,
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
) -> Option<http1::RequestHead> {
    match tokio::time::timeout(
        inner.cfg.header_timeout,
        http1::read_head_limited(io, buf, inner.limits.get().max_request_head),
    )
    .await
    {
        Ok(Ok(h)) => Some(h),
        Ok(Err(HeadError::Closed | HeadError::Io(_))) => None,
        Ok(Err(e)) => {
            inner.visitor_outcome(e.reason());
            let body = format!("{e}\n");
            crate::respond::send(
                io,
                &crate::respond::response(e.status(), &[], "text/plain", &body, true),
                true,
            )
            .await;
            None
        }
        Err(_) => {
            if buf.is_empty() {
                return None;
            }
            inner.visitor_outcome("head_timeout");
            crate::respond::send(
                io,
                &crate::respond::response(408, &[], "text/plain", "request head timed out\n", true),
                true,
            )
            .await;
            None
        }
    }
}

/// Answers a visitor that arrives while tunneld drains: 503.
async fn refuse_draining(inner: &Inner, io: &mut BoxIo) {
    inner.visitor_outcome("draining");
    crate::respond::send(
        io,
        &crate::respond::response(
            503,
            &[],
            "text/plain",
            "tunneld is restarting: try again in a moment\n",
            true,
        ),
        true,
    )
    .await;
}

/// Parks a hidden server's connection, out of its address's visitor cap.
async fn park(
    inner: &Inner,
    io: BoxIo,
    head: http1::RequestHead,
    buf: Vec<u8>,
    who: Parker,
    permit: &mut Permit,
    cx: &FrontendContext,
) {
    // A parked connection counts against no visitor cap of its address either: a hidden
    // server parks many from one address (bounded by `max_parked_per_id` per id).
    permit.leave_address();
    park::serve(
        inner.registry.clone(),
        &inner.auth,
        io,
        head,
        buf,
        who,
        cx.closing.clone(),
    )
    .await;
}
