//! tunneld side of the ssh transport: the listener, the per-connection handshake deadline,
//! and the russh server configuration.

use crate::channel_io::{BacklogBudget, Pumps};
use crate::config::Config;
use crate::forwards::{Forwards, SshOpener};
use crate::handler::Conn;
use crate::host_key;
use crate::metrics::SshMetrics;
use async_trait::async_trait;
use russh::keys::PrivateKey;
use russh::server::Config as RusshConfig;
use russh::{MethodKind, MethodSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tunneld_core::auth::Authenticator;
use tunneld_core::metrics::Metrics;
use tunneld_core::tls_listener::{accept_loop, set_keepalive, BoundListener, Tasks};
use tunneld_core::transport::{Transport, TransportContext, TransportError};

pub struct SshTransport {
    cfg: Config,
    listener: BoundListener,
    russh: Arc<RusshConfig>,
    auth: Arc<Authenticator>,
    metrics: Arc<SshMetrics>,
    fingerprint: String,
}

impl SshTransport {
    /// Binds the listener now (so port 0 works) and loads or makes the host key: the
    /// configured `host_key`, else `<state_dir>/ssh/host_ed25519_key`.
    pub async fn bind(
        cfg: Config,
        state_dir: &Path,
        auth: Arc<Authenticator>,
        metrics: &Metrics,
    ) -> Result<Self, TransportError> {
        let key = match &cfg.host_key {
            Some(p) => host_key::load_or_create(p, false),
            None => host_key::load_or_create(&state_dir.join(host_key::DEFAULT_FILE), true),
        }
        .map_err(|e| TransportError::Other(format!("host_key: {e}")))?;
        let fingerprint = host_key::fingerprint(&key);
        let own = metrics.plugin::<SshMetrics>()?;
        let listener = BoundListener::for_transport(cfg.listen).await?;
        Ok(Self {
            russh: Arc::new(russh_config(&cfg, key)),
            cfg,
            listener,
            auth,
            metrics: own,
            fingerprint,
        })
    }

    /// The host key's fingerprint (`SHA256:...`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// `ciphers` as russh's names: validated against `KNOWN_CIPHERS`, all of which russh (with
/// ring) has (a unit test says so). Never empty: russh's own list if nothing is left.
fn offered_ciphers(cfg: &Config) -> Vec<russh::cipher::Name> {
    let names: Vec<_> = cfg
        .ciphers
        .iter()
        .filter_map(|c| russh::cipher::Name::try_from(c.as_str()).ok())
        .collect();
    debug_assert_eq!(names.len(), cfg.ciphers.len(), "an unvalidated cipher list");
    if names.is_empty() {
        return russh::Preferred::DEFAULT.cipher.to_vec();
    }
    names
}

fn russh_config(cfg: &Config, key: PrivateKey) -> RusshConfig {
    RusshConfig {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-tunneld_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH's first probe ("none") is answered at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        // Every channel opens with the floor; a forwarded one's reader grants it the rest of
        // `window_size` out of its session's budget (channel_io.rs).
        window_size: cfg.window_size.min(crate::channel_io::FLOOR),
        max_auth_attempts: 6,
        // Keepalives, not inactivity, decide when a quiet `ssh -N` session is dead.
        inactivity_timeout: None,
        keepalive_interval: Some(cfg.keepalive_interval),
        keepalive_max: cfg.keepalive_max,
        limits: russh::Limits {
            rekey_write_limit: cfg.rekey_limit,
            rekey_read_limit: cfg.rekey_limit,
            ..russh::Limits::default()
        },
        // Set on each accepted socket in `connection` (russh only sets it in its own loop).
        nodelay: true,
        preferred: russh::Preferred {
            cipher: offered_ciphers(cfg).into(),
            ..russh::Preferred::DEFAULT
        },
        ..RusshConfig::default()
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let listener = self.listener.take_for_serve()?;
        tracing::info!(transport = %cx.name, addr = %self.listener.local_addr(), host_key = %self.fingerprint, "ssh transport listening");
        accept_loop(
            &listener,
            &cx.shutdown,
            &cx.name,
            Tasks::Tracked(&cx.tasks),
            |peer| cx.admit(peer),
            |tcp, peer, permit| self.clone().connection(tcp, peer, cx.clone(), permit),
        )
        .await;
        Ok(())
    }
}

impl SshTransport {
    /// Runs one connection: the handshake (key exchange and authentication) within the
    /// handshake deadline, holding a handshake permit; then the session until either side
    /// ends it.
    async fn connection<P: Send>(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        cx: TransportContext,
        permit: P,
    ) {
        // russh applies its `nodelay` only on sockets it accepts itself: small packets
        // (channel opens, confirmations, keepalive replies) must not wait for an ACK.
        let _ = tcp.set_nodelay(true);
        set_keepalive(&tcp);
        let admitted = CancellationToken::new();
        let forwards = Arc::new(Forwards::default());
        let pumps = Pumps::new(BacklogBudget::new(
            self.cfg.window_size,
            self.cfg.max_backlog,
            self.cfg.max_session_backlog,
            self.metrics.backlog_cuts_total.clone(),
            self.metrics
                .backlog_bytes
                .with_label_values(&[cx.name.as_str()]),
            cx.name.clone(),
        ));
        let opener = Arc::new(SshOpener {
            handle: OnceLock::new(),
            forwards: forwards.clone(),
            pumps: pumps.clone(),
        });
        let conn = Conn {
            cx: cx.clone(),
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
            peer,
            max_forwards: self.cfg.max_forwards,
            opener,
            forwards,
            pumps,
            admitted: admitted.clone(),
            grant: None,
            guard: None,
            next_tunnel: 0,
            session_channels: Vec::new(),
            data_since_yield: 0,
            shells: Vec::new(),
        };
        let deadline = tokio::time::sleep(cx.handshake_timeout());
        let started = tokio::select! {
            r = russh::server::run_stream(self.russh.clone(), tcp, conn) => r,
            _ = deadline => {
                self.timed_out(&cx);
                return;
            }
        };
        let mut running = match started {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(transport = %cx.name, %peer, error = %e, "SSH handshake failed");
                return;
            }
        };
        let handle = running.handle();
        let remaining = tokio::time::sleep(cx.handshake_timeout());
        tokio::pin!(remaining);
        tokio::select! {
            r = &mut running => {
                Self::ended(&cx, peer, r);
                return;
            }
            _ = admitted.cancelled() => {}
            _ = &mut remaining => {
                self.timed_out(&cx);
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "authentication took too long".into(), "en".into())
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
                return;
            }
        }
        drop(permit);
        tokio::select! {
            r = &mut running => Self::ended(&cx, peer, r),
            _ = cx.shutdown.cancelled() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "tunneld is shutting down".into(), "en".into())
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
            }
        }
    }

    fn timed_out(&self, cx: &TransportContext) {
        cx.metrics
            .handshakes_total
            .with_label_values(&[&cx.name, "timeout"])
            .inc();
    }

    fn ended(cx: &TransportContext, peer: SocketAddr, r: Result<(), russh::Error>) {
        match r {
            Ok(()) => tracing::debug!(transport = %cx.name, %peer, "SSH connection closed"),
            Err(e) => {
                tracing::debug!(transport = %cx.name, %peer, error = %e, "SSH connection ended")
            }
        }
    }
}
