//! Parked hidden-server connections per rendezvous id, and the TOTP guard (failed attempts
//! capped per id and per source address).
//!
//! Codes and replays: node-rendezvous's hidden server re-parks right after each visitor with
//! the code of the current step, so a code is accepted again for parking **from the address
//! that first used it** while it is valid (±1 step); from any other address a used code is
//! refused. Parking travels over TLS, so a code is never seen on the wire; what replay
//! protection guards against is a code that leaked (a log, a screen) being used from
//! elsewhere, and that stays refused.
//!
//! Lockout: failures count per source address and per id. The id is public (it is every
//! visitor's user name), so a lockout of the id does not apply to addresses that parked for
//! it successfully within [`TRUSTED_FOR`]: strangers cannot lock out the id's own hidden
//! servers.
//!
//! A parked connection is owned by its own task (see [`crate::park`]), which watches the
//! socket so a dead one leaves the queue at once. The queue holds a handoff channel per
//! connection: a visitor pops one, asks for the socket, and gets it back through the channel.

use crate::ids::{IdEntry, IdSource};
use crate::metrics::RendezvousMetrics;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};
use tunneld_core::io::BoxIo;
use tunneld_core::metrics::Metrics;
use tunneld_core::totp;

mod remote;
pub use remote::RemoteParking;

/// How long a successful park keeps an address exempt from its id's lockout.
pub const TRUSTED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Addresses remembered per id as having parked successfully (the oldest is forgotten).
const TRUSTED_PER_ID: usize = 64;

/// Limits of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Parked connections kept per id; a newer one evicts the oldest beyond it.
    pub max_parked_per_id: usize,
    /// Failed TOTP attempts allowed per id and per source address within `failure_window`.
    pub max_failures: u32,
    pub failure_window: Duration,
}

/// Asks a parked connection's task for its socket.
pub type Handoff = oneshot::Sender<BoxIo>;

/// Why a code did not park.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRefusal {
    Wrong,
    Malformed,
    Replayed,
    UnknownId,
    /// Too many failures: `by_address` when the source address is locked out (whatever id
    /// it asks for), otherwise the id is.
    LockedOut {
        retry_after: Duration,
        by_address: bool,
    },
}

impl CodeRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            CodeRefusal::Wrong => "wrong_code",
            CodeRefusal::Malformed => "malformed_code",
            CodeRefusal::Replayed => "replayed_code",
            CodeRefusal::UnknownId => "unknown_id",
            CodeRefusal::LockedOut { .. } => "locked_out",
        }
    }
}

/// One parked connection.
struct Parked {
    n: u64,
    /// The secret of the id it parked under: a connection parked before the id was removed,
    /// re-added or rotated never serves.
    secret: String,
    /// Where it came from.
    addr: IpAddr,
    tx: oneshot::Sender<Handoff>,
}

struct Queue {
    parked: VecDeque<Parked>,
    notify: Arc<Notify>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            parked: VecDeque::new(),
            notify: Arc::new(Notify::new()),
        }
    }
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// Per id: the accepted TOTP counters and the address that first used each.
    used: HashMap<String, Vec<(u64, IpAddr)>>,
    /// Per id: addresses that parked successfully, and when last.
    trusted: HashMap<String, Vec<(IpAddr, Instant)>>,
    /// Per id: the secret its used codes and trusted addresses belong to (a rotated,
    /// removed or re-added id starts afresh).
    secret_of: HashMap<String, String>,
    fail_id: HashMap<String, Window>,
    fail_addr: HashMap<IpAddr, Window>,
}

pub struct Registry {
    pub ids: Arc<dyn IdSource>,
    /// Parked connections at other nodes (cluster mode).
    remote: std::sync::OnceLock<Arc<dyn RemoteParking>>,
    /// Failed authentications per address, shared with the hub (Bearer tokens when parking,
    /// CONNECT visitors' credentials).
    pub throttle: Arc<tunneld_core::throttle::FailureThrottle>,
    /// Replaced by a reload ([`Registry::set_config`]).
    cfg: std::sync::RwLock<RegistryConfig>,
    metrics: Arc<Metrics>,
    /// This frontend's own series.
    pub(crate) own: Arc<RendezvousMetrics>,
    state: Mutex<State>,
    next: AtomicU64,
}

/// Held by a parked connection's task; dropping it takes the connection out of the queue.
pub struct Ticket {
    registry: Arc<Registry>,
    id: String,
    n: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.registry.lock();
        if let Some(q) = st.queues.get_mut(&self.id) {
            let before = q.parked.len();
            q.parked.retain(|p| p.n != self.n);
            if q.parked.len() != before {
                self.registry
                    .own
                    .rendezvous_parked
                    .with_label_values(&[&self.id])
                    .set(q.parked.len() as i64);
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registry {
    pub fn new(
        ids: Arc<dyn IdSource>,
        cfg: RegistryConfig,
        metrics: Arc<Metrics>,
        throttle: Arc<tunneld_core::throttle::FailureThrottle>,
    ) -> Result<Arc<Self>, tunneld_core::metrics::MetricsError> {
        let own = metrics.plugin::<RendezvousMetrics>()?;
        Ok(Arc::new(Self {
            ids,
            remote: std::sync::OnceLock::new(),
            throttle,
            cfg: std::sync::RwLock::new(cfg),
            metrics,
            own,
            state: Mutex::default(),
            next: AtomicU64::new(1),
        }))
    }

    /// The limits as they are now.
    fn cfg(&self) -> RegistryConfig {
        tunneld_core::sync::read(&self.cfg).clone()
    }

    /// Replaces the limits (a reload): parking and TOTP failures from now on follow them;
    /// a queue longer than a lowered `max_parked_per_id` shrinks as visitors take its
    /// connections (a new parking from the queue's own address is refused while it is full).
    pub fn set_config(&self, cfg: RegistryConfig) {
        *tunneld_core::sync::write(&self.cfg) = cfg;
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        tunneld_core::sync::lock(&self.state)
    }

    fn locked_for(&self, w: Option<&Window>) -> Option<Duration> {
        let w = w?;
        let age = w.start.elapsed();
        let cfg = self.cfg();
        (age < cfg.failure_window && w.count >= cfg.max_failures).then(|| cfg.failure_window - age)
    }

    fn record_failure(&self, st: &mut State, id: Option<&str>, addr: IpAddr) {
        let window = self.cfg().failure_window;
        let bump = |w: &mut Window| {
            if w.start.elapsed() >= window {
                *w = Window {
                    start: Instant::now(),
                    count: 0,
                };
            }
            w.count += 1;
        };
        let fresh = Window {
            start: Instant::now(),
            count: 0,
        };
        if st.fail_addr.len() >= 16_384 {
            st.fail_addr.retain(|_, w| w.start.elapsed() < window);
        }
        bump(st.fail_addr.entry(addr).or_insert(fresh));
        if let Some(id) = id {
            bump(st.fail_id.entry(id.to_string()).or_insert(fresh));
        }
    }

    fn refuse(&self, r: CodeRefusal) -> CodeRefusal {
        self.own
            .rendezvous_totp_failures_total
            .with_label_values(&[r.reason()])
            .inc();
        r
    }

    /// Loads the codes used before a restart (see [`IdSource::used_codes`]); their addresses
    /// parked successfully, so they stay exempt from their id's lockout.
    pub fn load_used(&self, used: Vec<(String, u64, IpAddr)>) {
        let mut st = self.lock();
        for (id, counter, addr) in used {
            let trusted = st.trusted.entry(id.clone()).or_default();
            if !trusted.iter().any(|(a, _)| *a == addr) && trusted.len() < TRUSTED_PER_ID {
                trusted.push((addr, Instant::now()));
            }
            let codes = st.used.entry(id).or_default();
            if !codes.iter().any(|(c, _)| *c == counter) {
                codes.push((counter, addr));
            }
        }
    }

    /// Checks a TOTP code for `id` from `addr`. `Ok(Some(counter))` for a code used for the
    /// first time (the caller records it with [`IdSource::remember_code`]), `Ok(None)` for
    /// the same address using it again.
    pub fn check_code(
        &self,
        id: &str,
        entry: Option<&IdEntry>,
        code: &str,
        addr: IpAddr,
    ) -> Result<Option<u64>, CodeRefusal> {
        let mut st = self.lock();
        let by_addr = self.locked_for(st.fail_addr.get(&addr));
        let trusted = st.trusted.get(id).is_some_and(|t| {
            t.iter()
                .any(|(a, at)| *a == addr && at.elapsed() < TRUSTED_FOR)
        });
        let by_id = if trusted {
            None
        } else {
            self.locked_for(st.fail_id.get(id))
        };
        let locked = match (by_addr, by_id) {
            (Some(a), Some(i)) if i > a => Some((i, false)),
            (Some(a), _) => Some((a, true)),
            (None, Some(i)) => Some((i, false)),
            (None, None) => None,
        };
        if let Some((retry_after, by_address)) = locked {
            return Err(self.refuse(CodeRefusal::LockedOut {
                retry_after,
                by_address,
            }));
        }
        let Some(entry) = entry else {
            self.record_failure(&mut st, None, addr);
            return Err(self.refuse(CodeRefusal::UnknownId));
        };
        match st.secret_of.get(id) {
            Some(known) if *known == entry.secret => {}
            // The id got a new secret since (rotate, or remove and add): its old codes and
            // trusted addresses no longer count.
            Some(_) => {
                st.used.remove(id);
                st.trusted.remove(id);
                st.secret_of.insert(id.to_string(), entry.secret.clone());
            }
            None => {
                st.secret_of.insert(id.to_string(), entry.secret.clone());
            }
        }
        let secret = match totp::decode_secret(&entry.secret) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%id, error = %e, "rendezvous id has an unusable secret");
                return Err(self.refuse(CodeRefusal::Wrong));
            }
        };
        let now = unix_now();
        match totp::check(&secret, entry.step, code, now) {
            Ok(counter) => {
                let current = totp::counter_at(now, entry.step);
                let used = st.used.entry(id.to_string()).or_default();
                used.retain(|(c, _)| *c + 2 >= current);
                let fresh = match used.iter().find(|(c, _)| *c == counter) {
                    // The same hidden server parking again with the current code.
                    Some((_, first)) if *first == addr => None,
                    Some(_) => return Err(self.refuse(CodeRefusal::Replayed)),
                    None => {
                        used.push((counter, addr));
                        Some(counter)
                    }
                };
                let trusted = st.trusted.entry(id.to_string()).or_default();
                trusted.retain(|(a, at)| *a != addr && at.elapsed() < TRUSTED_FOR);
                if trusted.len() >= TRUSTED_PER_ID {
                    trusted.remove(0);
                }
                trusted.push((addr, Instant::now()));
                Ok(fresh)
            }
            Err(e) => {
                self.record_failure(&mut st, Some(id), addr);
                Err(self.refuse(match e {
                    totp::CodeError::Malformed => CodeRefusal::Malformed,
                    totp::CodeError::Wrong => CodeRefusal::Wrong,
                }))
            }
        }
    }

    /// Queues a connection for `id`, parked under `entry`. The receiver yields a handoff
    /// when a visitor takes it, or an error when it was evicted by a newer one.
    pub fn park(
        self: &Arc<Self>,
        id: &str,
        entry: &IdEntry,
        addr: IpAddr,
    ) -> (Ticket, oneshot::Receiver<Handoff>) {
        let mut st = self.lock();
        self.push(&mut st, id, entry, addr)
    }

    /// [`Registry::park`], unless the queue is full and its oldest came from `addr`: a client
    /// asking for more connections than `max_parked_per_id` would evict its own forever
    /// (another address evicts the oldest, so a replacement host takes over). Checked and
    /// parked under one lock, so concurrent connections of one client cannot all pass the
    /// check and then evict each other.
    pub fn park_unless_full(
        self: &Arc<Self>,
        id: &str,
        entry: &IdEntry,
        addr: IpAddr,
    ) -> Option<(Ticket, oneshot::Receiver<Handoff>)> {
        let mut st = self.lock();
        let full = st.queues.get(id).is_some_and(|q| {
            q.parked.len() >= self.max_parked() && q.parked.front().is_some_and(|p| p.addr == addr)
        });
        (!full).then(|| self.push(&mut st, id, entry, addr))
    }

    /// Parks at the back of `id`'s queue, evicting the oldest when it is full.
    fn push(
        self: &Arc<Self>,
        st: &mut State,
        id: &str,
        entry: &IdEntry,
        addr: IpAddr,
    ) -> (Ticket, oneshot::Receiver<Handoff>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let q = st.queues.entry(id.to_string()).or_default();
        let max = self.max_parked();
        while q.parked.len() >= max {
            q.parked.pop_front();
            self.own
                .rendezvous_parked_dropped_total
                .with_label_values(&["evicted"])
                .inc();
        }
        q.parked.push_back(Parked {
            n,
            secret: entry.secret.clone(),
            addr,
            tx,
        });
        self.own
            .rendezvous_parked
            .with_label_values(&[id])
            .set(q.parked.len() as i64);
        q.notify.notify_waiters();
        (
            Ticket {
                registry: self.clone(),
                id: id.to_string(),
                n,
            },
            rx,
        )
    }

    /// The most connections parked per id.
    pub fn max_parked(&self) -> usize {
        self.cfg().max_parked_per_id.max(1)
    }

    /// Connections parked for `id` now.
    pub fn parked(&self, id: &str) -> usize {
        self.lock().queues.get(id).map_or(0, |q| q.parked.len())
    }

    /// The oldest connection parked under `current`'s secret; older ones (parked before the
    /// id was removed, re-added or rotated) are dropped on the way.
    fn pop(&self, id: &str, current: &IdEntry) -> Option<oneshot::Sender<Handoff>> {
        let mut st = self.lock();
        let q = st.queues.entry(id.to_string()).or_default();
        let before = q.parked.len();
        let mut got = None;
        while let Some(p) = q.parked.pop_front() {
            if p.secret == current.secret {
                got = Some(p.tx);
                break;
            }
            self.own
                .rendezvous_parked_dropped_total
                .with_label_values(&["revoked"])
                .inc();
        }
        if q.parked.len() != before {
            self.own
                .rendezvous_parked
                .with_label_values(&[id])
                .set(q.parked.len() as i64);
        }
        got
    }

    /// Takes a connection parked here for `id` under its `current` entry, waiting up to
    /// `wait` for one to arrive.
    pub async fn take_local(&self, id: &str, current: &IdEntry, wait: Duration) -> Option<BoxIo> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.notify_for(id);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(tx) = self.pop(id, current) {
                let (back_tx, back_rx) = oneshot::channel();
                if tx.send(back_tx).is_ok() {
                    if let Ok(io) = back_rx.await {
                        return Some(io);
                    }
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn notify_for(&self, id: &str) -> Arc<Notify> {
        self.lock()
            .queues
            .entry(id.to_string())
            .or_default()
            .notify
            .clone()
    }
}
