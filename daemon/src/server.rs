//! Builds tunneld from its configuration and runs it.

use crate::admin;
use crate::components;
use crate::config::server::{FrontendConfig, ServerConfig, TransportConfig};
use crate::mappings::AdminMappings;
use crate::rendezvous_ids::{self as rendezvous_store, IdStore};
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunneld_core::auth::{token_digest, Authenticator, StoredTokens, TokenEntry};
use tunneld_core::frontend::FrontendContext;
use tunneld_core::hub::Hub;
use tunneld_core::metrics::Metrics;
use tunneld_core::tls::{self, ClientAuth, ServerIdentity};
use tunneld_frontend_rendezvous::registry::{Registry, RegistryConfig};
use tunneld_state::cache::StateCache;
use tunneld_state::{self as state, sqlite::SqliteStore, StateStore};

/// A running tunneld.
pub struct Running {
    /// Bound address of each transport, by name.
    pub transports: BTreeMap<String, SocketAddr>,
    /// Bound address of each frontend with a shared listener (rendezvous), by name.
    pub frontends: BTreeMap<String, SocketAddr>,
    /// Rendezvous ids and parked connections.
    pub rendezvous: Arc<Registry>,
    pub admin: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// The CA file clients should trust, when tunneld issued its own certificate.
    pub ca_file: Option<PathBuf>,
    /// The persistent state (tokens, provisioned tunnels, certificates, rendezvous ids).
    pub store: Arc<dyn StateStore>,
    /// The provisioning API and the plain web port, with a `control` section.
    pub control: Option<crate::control::Bound>,
    /// Fingerprint of the server certificate, for `tls.pin`.
    pub fingerprint: String,
    /// Reads the configuration file again and applies the difference (SIGHUP, `POST /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// Cluster mode's state, with `cluster:`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Cancelled when the drain begins (visitors are turned away).
    accepting: CancellationToken,
    /// Cancelled when the drain ends (tunnel-client listeners close).
    closing: CancellationToken,
    draining: CancellationToken,
    visitors: TaskTracker,
}

impl Running {
    /// Stops accepting, lets open visitor streams finish for up to the drain timeout, then
    /// ends every session. Returns whether everything drained in time.
    /// Tunnel clients stay connected (and may reconnect) during the drain, since their
    /// sessions carry the streams that are draining; after it, the listeners close first and
    /// then every session ends, so clients reconnect to the next tunneld. A cluster node
    /// first hands its clients over ([`crate::cluster::Cluster::hand_over`]): they open
    /// sessions at other nodes at once and take their routes with them.
    pub async fn stop(&self) -> bool {
        self.accepting.cancel();
        self.draining.cancel();
        self.visitors.close();
        let timeout = self.hub.limits.get().drain_timeout;
        let started = std::time::Instant::now();
        if let Some(c) = &self.cluster {
            // Clients move to other nodes first; their old sessions carry what is open.
            c.hand_over(timeout.min(c.cfg.lease_ttl)).await;
        }
        let rest = timeout.saturating_sub(started.elapsed());
        let drained = tokio::time::timeout(rest, self.visitors.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(?timeout, "drain timeout reached; closing open streams");
        }
        self.closing.cancel();
        self.hub.close_all();
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
        self.hub.refusal_log.summarize();
        drained
    }

    /// Cancelled once shutdown begins.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }
}

/// Opens the state store in the state directory (and imports an older `rendezvous.json`).
/// In cluster mode the store is the cluster's Redis, shared by every node (tokens,
/// provisioned tunnels, rendezvous ids and used codes, admin mappings).
pub fn open_store(cfg: &ServerConfig) -> anyhow::Result<Arc<dyn StateStore>> {
    if let Some(c) = &cfg.cluster {
        let store = tunneld_state::redis_store::RedisStore::open(&c.redis, &c.prefix)
            .context("cluster.redis: the state store")?;
        return Ok(Arc::new(store));
    }
    let store = Arc::new(SqliteStore::open(&cfg.state_dir.join(state::FILE))?);
    rendezvous_store::import_legacy(&cfg.state_dir, &*store)?;
    Ok(store)
}

/// The config file's tokens as the authenticator checks them.
pub(crate) fn token_entries(cfg: &ServerConfig) -> anyhow::Result<Vec<TokenEntry>> {
    let mut tokens = Vec::new();
    for (id, t) in &cfg.auth.tokens {
        tokens.push(TokenEntry {
            client_id: id.clone(),
            digest: token_digest(&t.token.0)
                .map_err(|e| anyhow::anyhow!("auth.tokens.{id}.token: {e}"))?,
            max_ports: t.max_ports,
            ssh_keys: t
                .ssh_keys
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    tunneld_core::ssh_keys::parse_line(line)
                        .map(|k| k.fingerprint)
                        .map_err(|e| anyhow::anyhow!("auth.tokens.{id}.ssh_keys[{i}]: {e}"))
                })
                .collect::<anyhow::Result<_>>()?,
        });
    }
    Ok(tokens)
}

fn authenticator(cfg: &ServerConfig, cache: &Arc<StateCache>) -> anyhow::Result<Authenticator> {
    Ok(Authenticator {
        tokens: token_entries(cfg)?.into(),
        certificate_max_ports: cfg.auth.certificate_max_ports,
        stored: Some(StoredTokens(cache.clone())),
        stored_keys: Some(cache.clone()),
    })
}

/// The control plane's shared state.
fn control(
    cfg: &ServerConfig,
    c: &crate::config::control::ControlConfig,
    hub: &Arc<Hub>,
    base: &Base,
    transports: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<crate::control::Control> {
    let domain = match cfg.frontends.get(&c.names_frontend) {
        Some(FrontendConfig::Https(f)) => f.domain.clone(),
        _ => anyhow::bail!("control.names_frontend: not an https-subdomain frontend"),
    };
    let kind = match cfg.transports.get(&c.transport) {
        Some(TransportConfig::Yamux(_)) => "yamux",
        Some(TransportConfig::H2Reverse(_)) => "h2-reverse",
        Some(TransportConfig::Ssh(_)) => "ssh",
        _ => anyhow::bail!("control.transport: not a yamux, h2-reverse or ssh transport"),
    };
    let port = match transports.get(&c.transport) {
        Some(a) => a.port(),
        None => anyhow::bail!(
            "control.transport: `{}` has no listener of its own",
            c.transport
        ),
    };
    let tls_dir = cfg.state_dir.join("tls");
    let ca = tls::LocalCa::open(&tls_dir)?;
    let ca_pem =
        std::fs::read_to_string(&ca.file).with_context(|| format!("{}", ca.file.display()))?;
    let ssh_endpoint = crate::control::endpoint::ssh_endpoint(cfg, c, &domain, transports);
    let ports_range = match c.ports_frontend.as_ref().and_then(|n| cfg.frontends.get(n)) {
        Some(FrontendConfig::Ports(p)) => Some(p.range.to_string()),
        _ => None,
    };
    Ok(crate::control::Control {
        ssh_endpoint,
        ssh_host_key: crate::control::endpoint::ssh_host_key(cfg, c),
        ports_range,
        cfg: c.clone(),
        store: base.store.clone(),
        cache: base.cache.clone(),
        hub: hub.clone(),
        auth: base.auth.clone(),
        ca,
        ca_pem,
        metrics: base.metrics.clone(),
        domain,
        transport: crate::control::SetupTransport {
            kind,
            port,
            local_ca: kind != "ssh" && cfg.tls.cert.is_none(),
        },
        changes: tokio::sync::Mutex::new(()),
        working: tokio::sync::Semaphore::new(crate::control::api::MAX_WORKING),
        acme: base.acme.clone(),
    })
}

/// Binds every listener (port 0 works), starts every component, and returns their addresses.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    let base = Arc::new(Base::new(&cfg)?);
    // h2-reverse transports are bound first: a frontend may share its port with one.
    let h2 = components::bind_h2_transports(&cfg, &base).await?;
    let frontends = components::build_frontends(&cfg, &base, &h2).await?;
    let frontend_addrs = frontends
        .iter()
        .filter_map(|(n, f)| f.local_addr().map(|a| (n.clone(), a)))
        .collect();
    let mut frontend_set = crate::frontend_set::FrontendSet::default();
    for (name, f) in &frontends {
        frontend_set.start(name, f.clone(), &base);
    }
    let hub = Hub::new(
        (*base.auth).clone(),
        frontends,
        base.metrics.clone(),
        base.fcx.limits.clone(),
        base.throttle.clone(),
    );
    summarize_refusals(&hub, base.accepting.clone());
    let cluster = start_cluster(&cfg, &hub, &base).await?;
    let (mappings, mapping_writes) = start_mappings(&hub, &base, cluster.is_some()).await?;
    let transport_set =
        components::start_transports(&cfg, &base, &hub, &h2, &mappings, mapping_writes.clone())
            .await?;
    let transports = transport_set.addrs();
    let control = match &cfg.control {
        Some(c) => Some(start_control(&cfg, c, &base, &hub, &transports).await?),
        None => None,
    };
    crate::control::sweep::spawn(
        hub.clone(),
        base.cache.clone(),
        base.metrics.clone(),
        control.as_ref().map(|(c, _)| c.clone()),
        base.accepting.clone(),
    );

    let draining = CancellationToken::new();
    let reloader = crate::reload::Reloader::new(
        crate::reload::Live {
            cfg: cfg.clone(),
            h2,
            transports: transport_set,
            frontends: frontend_set,
        },
        base.clone(),
        hub.clone(),
    );
    let admin_addr = match &cfg.admin {
        Some(a) => Some(
            admin::start(
                a.clone(),
                hub.clone(),
                mappings,
                base.store.clone(),
                mapping_writes,
                base.metrics.clone(),
                admin::Hooks {
                    draining: draining.clone(),
                    reloader: reloader.clone(),
                    cluster: cluster.clone(),
                },
            )
            .await
            .with_context(|| format!("admin.listen {}", a.listen))?,
        ),
        None => None,
    };
    let fingerprint = base.identity.fingerprint();
    log_identity(&base.identity, &fingerprint);
    Ok(Running {
        transports,
        frontends: frontend_addrs,
        rendezvous: base.registry.clone(),
        admin: admin_addr,
        hub,
        metrics: base.metrics.clone(),
        ca_file: base.identity.ca_file.clone(),
        store: base.store.clone(),
        control: control.map(|(_, b)| b),
        fingerprint,
        reloader,
        cluster,
        accepting: base.accepting.clone(),
        closing: base.closing.clone(),
        draining,
        visitors: base.visitors.clone(),
    })
}

/// The rendezvous registry's limits (`rendezvous:`).
pub(crate) fn registry_config(cfg: &ServerConfig) -> RegistryConfig {
    RegistryConfig {
        max_parked_per_id: cfg.rendezvous.max_parked_per_id,
        max_failures: cfg.rendezvous.max_failures,
        failure_window: cfg.rendezvous.failure_window,
    }
}

/// What every component is built from: metrics, the server's TLS identity, the state store
/// and its cache, authentication, the rendezvous registry, and the shutdown signals.
pub(crate) struct Base {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) identity: ServerIdentity,
    pub(crate) client_auth: ClientAuth,
    pub(crate) fcx: FrontendContext,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) throttle: Arc<tunneld_core::throttle::FailureThrottle>,
    pub(crate) registry: Arc<Registry>,
    /// Cancelled when the drain begins.
    pub(crate) accepting: CancellationToken,
    /// Cancelled when the drain ends.
    pub(crate) closing: CancellationToken,
    pub(crate) visitors: TaskTracker,
    /// Pending ACME validations: HTTP-01 answers for the web port, TLS-ALPN-01 for frontends.
    pub(crate) acme: Arc<crate::acme::challenges::AcmeChallenges>,
    /// Where components keep their own files (the ssh transport's host key).
    pub(crate) state_dir: std::path::PathBuf,
    /// With `tls.acme_from`: that frontend's name and certificate resolver, which the
    /// transports serve too.
    pub(crate) transport_certs: Option<(String, Arc<tunneld_frontend_https::Resolver>)>,
    /// That frontend's domain: the server name that gets its certificate.
    pub(crate) transport_domain: Option<String>,
}

impl Base {
    fn new(cfg: &ServerConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new().context("metrics registry")?);
        metrics
            .plugin::<crate::metrics::DaemonMetrics>()
            .context("metrics registry")?;
        if let Some(a) = cfg.admin.as_ref().filter(|a| a.per_tunnel_metrics) {
            metrics
                .enable_tunnel_series(a.max_tunnel_series)
                .context("metrics registry")?;
        }
        let identity = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => ServerIdentity::load(cert, key)?,
            _ => ServerIdentity::self_signed(&cfg.state_dir.join("tls"), &cfg.tls.names)?,
        };
        let client_auth = match (&cfg.auth.client_ca, cfg.auth.require_client_cert) {
            (Some(ca), true) => ClientAuth::Required(ca.clone()),
            (Some(ca), false) => ClientAuth::Optional(ca.clone()),
            (None, _) => ClientAuth::None,
        };
        let (accepting, closing, visitors) = (
            CancellationToken::new(),
            CancellationToken::new(),
            TaskTracker::new(),
        );
        let fcx = FrontendContext {
            metrics: metrics.clone(),
            shutdown: accepting.clone(),
            closing: closing.clone(),
            tasks: visitors.clone(),
            limits: tunneld_core::limits::LiveLimits::new(cfg.limits.data()),
        };
        let store = open_store(cfg)?;
        // What the data path reads of the store, in memory and kept current.
        let cache = Arc::new(StateCache::start(store.clone(), metrics.clone())?);
        let auth = Arc::new(authenticator(cfg, &cache)?);
        // One failure budget per address for every component that checks credentials.
        let throttle = Arc::new(tunneld_core::throttle::FailureThrottle::new(
            cfg.limits.max_auth_failures,
            cfg.limits.auth_failure_window,
        ));
        let registry = Registry::new(
            Arc::new(IdStore::new(store.clone(), cache.clone())),
            registry_config(cfg),
            metrics.clone(),
            throttle.clone(),
        )
        .context("metrics registry")?;
        // Codes used before a restart stay used (startup: a blocking read is fine here).
        registry.load_used(registry.ids.used_codes());
        let acme = Arc::default();
        let transport_certs =
            crate::https_certs::transport_resolver(cfg, &acme, &metrics, &closing)?;
        let transport_domain =
            cfg.tls
                .acme_from
                .as_ref()
                .and_then(|f| match cfg.frontends.get(f) {
                    Some(FrontendConfig::Https(c)) => Some(c.domain.clone()),
                    _ => None,
                });
        Ok(Self {
            acme,
            transport_certs,
            transport_domain,
            state_dir: cfg.state_dir.clone(),
            metrics,
            identity,
            client_auth,
            fcx,
            store,
            cache,
            auth,
            throttle,
            registry,
            accepting,
            closing,
            visitors,
        })
    }
}

/// Refusals past the log budget are summarized once per window.
fn summarize_refusals(hub: &Hub, stop: CancellationToken) {
    let log = hub.refusal_log.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(log.window());
        loop {
            tokio::select! {
                _ = tick.tick() => log.summarize(),
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// The admin mappings, installed and restored as stored before any transport (and its
/// management API) accepts; in cluster mode they follow the list any node stores. With the
/// lock that keeps updates (admin API, threshold's management API) one at a time.
async fn start_mappings(
    hub: &Arc<Hub>,
    base: &Base,
    in_cluster: bool,
) -> anyhow::Result<(Arc<AdminMappings>, Arc<tokio::sync::Mutex<()>>)> {
    let mappings = AdminMappings::install(hub)?;
    match admin::restore(&mappings, &base.store).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(mappings = n, "restored the admin mappings"),
        Err(e) => tracing::warn!(error = %e, "cannot restore the admin mappings"),
    }
    let writes = Arc::new(tokio::sync::Mutex::new(()));
    if in_cluster {
        mappings.follow_store(base.store.clone(), writes.clone(), base.closing.clone());
    }
    Ok((mappings, writes))
}

/// Joins the cluster, with `cluster:`: the shared routing table is installed in the hub
/// before any session can claim.
async fn start_cluster(
    cfg: &ServerConfig,
    hub: &Arc<Hub>,
    base: &Base,
) -> anyhow::Result<Option<Arc<crate::cluster::Cluster>>> {
    let Some(c) = &cfg.cluster else {
        return Ok(None);
    };
    let (parking, closing) = (&base.registry, base.closing.clone());
    let visitors = base.visitors.clone();
    Ok(Some(
        crate::cluster::start(c.clone(), hub, parking, (&base.metrics, visitors), closing).await?,
    ))
}

/// The provisioning API and the plain web port, after the stored tunnels are leased again.
async fn start_control(
    cfg: &ServerConfig,
    c: &crate::config::control::ControlConfig,
    base: &Base,
    hub: &Arc<Hub>,
    transports: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<(Arc<crate::control::Control>, crate::control::Bound)> {
    let built = Arc::new(control(cfg, c, hub, base, transports)?);
    let restored = built.restore().await?;
    if restored > 0 {
        tracing::info!(tunnels = restored, "restored provisioned tunnels");
    }
    let tls_cfg = tls::server_config(&base.identity, &ClientAuth::None, &[b"http/1.1"])?;
    let bound = built.start(Arc::new(tls_cfg)).await?;
    Ok((built, bound))
}

fn log_identity(identity: &ServerIdentity, fingerprint: &str) {
    match &identity.ca_file {
        Some(ca) => tracing::info!(
            ca = %ca.display(), %fingerprint,
            "using tunneld's own CA: clients trust it with `tls: {{ ca: {} }}` or pin `{fingerprint}`",
            ca.display()
        ),
        None => tracing::info!(%fingerprint, "using the configured certificate"),
    }
}
