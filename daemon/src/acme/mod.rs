//! ACME (RFC 8555) certificates for an `https-subdomain` frontend with `acme:`: one
//! [`AcmeIssuer`] per such frontend is its resolver's [`CertSource`]. It orders for the apex
//! (and the 2ptth hostname) at start and for a name when it is claimed, never for others;
//! serves nothing of its own for a name until the CA issued (the resolver then serves
//! tunneld's CA); renews in the background; keeps its account and certificates in
//! `<state_dir>/acme/<frontend>/` ([`store`]); runs `max_orders` orders at once and waits
//! `retry_after` (doubling) after a name's failed order.

pub mod challenges;
mod order;
mod store;

use crate::metrics::DaemonMetrics;
use challenges::AcmeChallenges;
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Held;
use tokio_util::sync::CancellationToken;
use tunneld_core::sync::lock;
use tunneld_frontend_https::config::AcmeConfig;
use tunneld_frontend_https::{CertSource, Claimed};

/// The longest wait after failures, and between two looks at what is due.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// One order at most, from the account to the stored certificate (a CA that stops
/// answering frees its slot).
const ORDER_DEADLINE: Duration = Duration::from_secs(300);

pub struct AcmeIssuer {
    frontend: String,
    domain: String,
    /// Names outside the domain that are always served (the 2ptth hostname).
    extra: Vec<String>,
    cfg: AcmeConfig,
    dir: PathBuf,
    challenges: Arc<AcmeChallenges>,
    account: tokio::sync::Mutex<Option<instant_acme::Account>>,
    certs: Mutex<HashMap<String, Held>>,
    /// Names with an order waiting or running.
    busy: Mutex<HashSet<String>>,
    /// Per name: when it may be ordered again, and its failures in a row.
    failures: Mutex<HashMap<String, (SystemTime, u32)>>,
    slots: tokio::sync::Semaphore,
    claimed: OnceLock<Claimed>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Option<Arc<DaemonMetrics>>,
    me: Weak<AcmeIssuer>,
}

impl AcmeIssuer {
    /// Reads what is stored and starts the background orders and renewals (until `stop`).
    pub fn start(
        frontend: &str,
        cfg: &tunneld_frontend_https::Config,
        acme: &AcmeConfig,
        state_dir: &std::path::Path,
        challenges: Arc<AcmeChallenges>,
        metrics: Option<Arc<DaemonMetrics>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let dir = state_dir.join("acme").join(frontend);
        let certs = store::load_certs(&dir, acme.renew_before);
        if !certs.is_empty() {
            tracing::info!(
                frontend,
                certificates = certs.len(),
                "ACME certificates read back from the state dir"
            );
        }
        let me = Arc::new_cyclic(|me| AcmeIssuer {
            frontend: frontend.to_string(),
            domain: cfg.domain.clone(),
            extra: cfg
                .compat_2ptth
                .iter()
                .map(|c| c.hostname.clone())
                .collect(),
            cfg: acme.clone(),
            dir,
            challenges,
            account: tokio::sync::Mutex::new(None),
            certs: Mutex::new(certs.into_iter().collect()),
            busy: Mutex::default(),
            failures: Mutex::default(),
            slots: tokio::sync::Semaphore::new(acme.max_orders),
            claimed: OnceLock::new(),
            wake: Arc::default(),
            metrics,
            me: me.clone(),
        });
        me.expiry_gauge();
        // The task holds the issuer weakly: when its frontend goes (a reload removed it), so
        // does the issuer, and the task ends.
        tokio::spawn(Self::renewals(Arc::downgrade(&me), me.wake.clone(), stop));
        me
    }

    /// The apex and the configured extra names: ordered whether or not anything is claimed.
    fn always(&self, name: &str) -> bool {
        name == self.domain || self.extra.iter().any(|e| e == name)
    }

    /// Whether `name` gets a certificate: always-names, and claimed labels of the domain.
    fn wanted(&self, name: &str) -> bool {
        if self.always(name) {
            return true;
        }
        let Some(label) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|l| l.strip_suffix('.'))
            .filter(|l| tunneld_frontend_https::config::valid_label(l))
        else {
            return false;
        };
        self.claimed.get().is_some_and(|c| c(label))
    }

    /// When `name` should be ordered next (`None`: not now, nothing to do or already busy).
    fn due_at(&self, name: &str) -> Option<SystemTime> {
        if !self.wanted(name) || lock(&self.busy).contains(name) {
            return None;
        }
        let at = match lock(&self.certs).get(name) {
            Some(h) => h.renew_at,
            None => UNIX_EPOCH,
        };
        let retry = lock(&self.failures).get(name).map(|f| f.0);
        Some(retry.map_or(at, |r| r.max(at)))
    }

    /// Starts an order for `name` if it is due and no order for it runs.
    fn request(&self, name: &str) {
        let Some(at) = self.due_at(name) else {
            return;
        };
        if at > SystemTime::now()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return;
        }
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        if !lock(&self.busy).insert(name.to_string()) {
            return;
        }
        let name = name.to_string();
        rt.spawn(async move {
            if let Ok(_slot) = me.slots.acquire().await {
                let result = tokio::time::timeout(ORDER_DEADLINE, order::order(&me, &name))
                    .await
                    .unwrap_or(Err(order::OrderError::Timeout(ORDER_DEADLINE)));
                me.finished(&name, result);
            }
            lock(&me.busy).remove(&name);
            me.wake.notify_one();
        });
    }

    fn finished(&self, name: &str, result: Result<Held, order::OrderError>) {
        let outcome = match result {
            Ok(held) => {
                tracing::info!(frontend = %self.frontend, %name, serial = %held.serial,
                    expires = %unix(held.not_after), "ACME certificate issued");
                lock(&self.certs).insert(name.to_string(), held);
                lock(&self.failures).remove(name);
                "issued"
            }
            Err(e) => {
                let mut failures = lock(&self.failures);
                let n = failures.get(name).map_or(0, |f| f.1) + 1;
                let wait = self
                    .cfg
                    .retry_after
                    .saturating_mul(1 << (n - 1).min(16))
                    .min(MAX_WAIT);
                failures.insert(name.to_string(), (SystemTime::now() + wait, n));
                drop(failures);
                tracing::warn!(frontend = %self.frontend, %name,
                    challenge = %e.challenge().unwrap_or("none"), error = %e,
                    retry_in = ?wait, "ACME order failed");
                "failed"
            }
        };
        if let Some(m) = &self.metrics {
            m.acme_orders_total
                .with_label_values(&[&self.frontend, outcome])
                .inc();
        }
        self.expiry_gauge();
    }

    /// `tunneld_acme_certificate_expiry_seconds`: the earliest expiry (Unix time).
    fn expiry_gauge(&self) {
        let earliest = lock(&self.certs).values().map(|h| h.not_after).min();
        if let (Some(m), Some(t)) = (&self.metrics, earliest) {
            m.acme_certificate_expiry_seconds
                .with_label_values(&[&self.frontend])
                .set(unix(t) as i64);
        }
    }

    /// Orders what is due (the apex and extra names when missing, renewals), then sleeps
    /// until the next is due or an order ends.
    async fn renewals(me: Weak<Self>, wake: Arc<tokio::sync::Notify>, stop: CancellationToken) {
        loop {
            let Some(this) = me.upgrade() else {
                tracing::debug!("ACME renewals stopped: the frontend is gone");
                return;
            };
            let wait = this.round();
            drop(this);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Starts the orders that are due; answers how long to wait for the next.
    fn round(&self) -> Duration {
        let mut names: Vec<String> = std::iter::once(self.domain.clone())
            .chain(self.extra.iter().cloned())
            .collect();
        names.extend(lock(&self.certs).keys().cloned());
        names.extend(lock(&self.failures).keys().cloned());
        names.sort();
        names.dedup();
        let now = SystemTime::now();
        let mut next = now + MAX_WAIT;
        for n in &names {
            self.request(n);
            if let Some(at) = self.due_at(n).filter(|at| *at > now) {
                next = next.min(at);
            }
        }
        next.duration_since(now)
            .unwrap_or_default()
            .max(Duration::from_millis(100))
    }
}

/// The frontend went: its renewals task wakes to end.
impl Drop for AcmeIssuer {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl CertSource for AcmeIssuer {
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if !self.wanted(name) {
            return None;
        }
        lock(&self.certs).get(name).map(|h| h.key.clone())
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.challenges.tls_answer(name)
    }

    fn claimed(&self, name: &str) {
        self.request(name);
    }

    fn set_claimed(&self, claimed: Claimed) {
        let _ = self.claimed.set(claimed);
    }
}
