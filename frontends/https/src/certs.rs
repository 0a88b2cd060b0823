//! Certificates for visitors: a configured one (typically `*.<domain>`), or one per name
//! issued from tunneld's own CA, so `https://<name>.localhost` verifies against
//! `state/tls/ca.pem` with no setup.
//!
//! Issued certificates are only for names that are claimed (or reserved for their owner)
//! and for the configured extra host names; any other name gets the domain's certificate and,
//! after the handshake, a 404 page, so random names cost no signing. Certificates are only
//! ever minted on blocking threads, once per name at a time: a claim starts its mint, and a
//! handshake for a claimed name whose certificate is not ready yet waits for that mint
//! ([`Resolver::ready`], before the handshake) instead of signing on the runtime. Leaves live [`LEAF_LIFETIME`] and are renewed in the background once
//! [`RENEW_AFTER`] has passed, while the current one keeps being served.

use crate::cert_source::{CertSource, Claimed, ACME_TLS_ALPN};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tunneld_core::tls::{provider, LocalCa, ServerIdentity, TlsError};

/// Issued certificates kept at most; past it, names no longer claimed are dropped first.
const MAX_CACHED: usize = 10_000;
/// How long an issued leaf is valid (what public CAs issue).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// When a leaf is replaced: 30 days before it expires.
pub const RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

struct Cached {
    key: Arc<CertifiedKey>,
    renew_at: Instant,
}

pub struct Issued {
    ca: LocalCa,
    domain: String,
    extra: Vec<String>,
    cache: Mutex<HashMap<String, Cached>>,
    /// Names being minted in the background now.
    minting: Mutex<HashSet<String>>,
    /// Bumped each time a background mint ends (waiters in [`Resolver::ready`] look again).
    minted: tokio::sync::watch::Sender<u64>,
    claimed: OnceLock<Claimed>,
    fallback: Arc<CertifiedKey>,
    /// Itself, for background work.
    me: Weak<Issued>,
}

pub enum Resolver {
    /// One certificate for every name.
    Fixed(Arc<CertifiedKey>),
    /// A certificate per claimed name, issued from tunneld's CA.
    Issued(Arc<Issued>),
    /// Certificates from a [`CertSource`] (ACME), and `fallback`'s for names it has none for.
    Source {
        source: Arc<dyn CertSource>,
        fallback: Box<Resolver>,
    },
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resolver::Fixed(_) => "Resolver::Fixed",
            Resolver::Issued(_) => "Resolver::Issued",
            Resolver::Source { .. } => "Resolver::Source",
        })
    }
}

/// A certificate chain and its key, ready for rustls' resolvers.
pub fn certified(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Config(format!("unusable private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl Resolver {
    pub fn fixed(id: &ServerIdentity) -> Result<Self, TlsError> {
        Ok(Resolver::Fixed(certified(id.chain.clone(), &id.key)?))
    }

    /// `extra` are exact host names outside the domain that also get certificates (the 2ptth
    /// hostname).
    pub fn issued(ca: LocalCa, domain: &str, extra: Vec<String>) -> Result<Self, TlsError> {
        let (chain, key) = ca.issue(&[domain.to_string()])?;
        let fallback = certified(chain, &key)?;
        Ok(Resolver::Issued(Arc::new_cyclic(|me| Issued {
            ca,
            domain: domain.to_string(),
            extra,
            cache: Mutex::default(),
            minting: Mutex::default(),
            minted: tokio::sync::watch::channel(0).0,
            claimed: OnceLock::new(),
            fallback,
            me: me.clone(),
        })))
    }

    /// Serves `source`'s certificates first, this resolver's for names it has none for.
    pub fn with_source(self, source: Arc<dyn CertSource>) -> Self {
        Resolver::Source {
            source,
            fallback: Box::new(self),
        }
    }

    /// The source's (ACME's) certificate for `name` (lower case), without falling back to
    /// this resolver's own: `None` until one is issued, or without a source.
    pub fn source_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        match self {
            Resolver::Source { source, .. } => source.certificate(name),
            _ => None,
        }
    }

    /// Whether TLS-ALPN-01 validations are answered.
    pub(crate) fn answers_acme(&self) -> bool {
        matches!(self, Resolver::Source { .. })
    }

    /// Tells the resolver which labels are claimed (set once, by the frontend).
    pub(crate) fn set_claimed(&self, claimed: Claimed) {
        match self {
            Resolver::Fixed(_) => {}
            Resolver::Issued(i) => {
                let _ = i.claimed.set(claimed);
            }
            Resolver::Source { source, fallback } => {
                source.set_claimed(claimed.clone());
                fallback.set_claimed(claimed);
            }
        }
    }

    /// Mints the certificate of a newly claimed `host` on a blocking thread (and asks the
    /// source for one).
    pub(crate) fn prepare(&self, host: &str) {
        match self {
            Resolver::Fixed(_) => {}
            Resolver::Issued(i) => i.mint_in_background(host.to_ascii_lowercase()),
            Resolver::Source { source, fallback } => {
                let host = host.to_ascii_lowercase();
                source.claimed(&host);
                if source.certificate(&host).is_none() {
                    fallback.prepare(&host);
                }
            }
        }
    }

    /// Waits until the certificate for `sni` is minted, when it is a name that gets one and
    /// it is not in the cache yet (a mint on a blocking thread is started if none runs).
    /// Callers bound the wait (the handshake timeout); on failure the handshake gets the
    /// domain's certificate.
    pub(crate) async fn ready(&self, sni: Option<&str>) {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return;
        };
        match self {
            Resolver::Fixed(_) => {}
            Resolver::Issued(i) => i.ready(name).await,
            Resolver::Source { source, fallback } => {
                if source.certificate(&name).is_none() {
                    if let Resolver::Issued(i) = &**fallback {
                        i.ready(name).await;
                    }
                }
            }
        }
    }

    /// Whether a certificate this resolver serves for `sni` also covers `host` (so one
    /// connection may carry requests for both).
    pub(crate) fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        match self {
            Resolver::Fixed(_) => true,
            Resolver::Issued(_) | Resolver::Source { .. } => sni.is_none_or(|s| s == host),
        }
    }

    /// Certificates in the cache (for tests).
    pub fn cached(&self) -> usize {
        match self {
            Resolver::Fixed(_) => 0,
            Resolver::Issued(i) => i.lock().len(),
            Resolver::Source { fallback, .. } => fallback.cached(),
        }
    }
}

impl Issued {
    /// See [`Resolver::ready`].
    async fn ready(&self, name: String) {
        let i = self;
        if !i.deserves(&name) {
            return;
        }
        let mut changes = i.minted.subscribe();
        // One mint attempt at most: a failed mint (or a full cache) gets the domain's
        // certificate instead of another signing for every retry.
        let mut started = false;
        loop {
            changes.mark_unchanged();
            if i.lock().contains_key(&name) {
                return;
            }
            if !i.minting_now(&name) {
                if started {
                    return;
                }
                started = true;
                i.mint_in_background(name.clone());
                if !i.minting_now(&name) {
                    // Minted (or failed) already, without a runtime.
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        tunneld_core::sync::lock(&self.cache)
    }

    /// Whether `name` may have a certificate of its own: an extra host, or a claimed label.
    fn deserves(&self, name: &str) -> bool {
        if self.extra.iter().any(|e| e == name) {
            return true;
        }
        let Some(label) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|l| l.strip_suffix('.'))
            .filter(|l| crate::config::valid_label(l))
        else {
            return false;
        };
        self.claimed.get().is_some_and(|c| c(label))
    }

    fn mint(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let issued = self
            .ca
            .issue_for(&[name.to_string()], LEAF_LIFETIME)
            .and_then(|(chain, key)| certified(chain, &key));
        match issued {
            Ok(k) => {
                let mut cache = self.lock();
                if cache.len() >= MAX_CACHED && !cache.contains_key(name) {
                    cache.retain(|n, _| self.deserves(n));
                }
                if cache.len() < MAX_CACHED || cache.contains_key(name) {
                    cache.insert(
                        name.to_string(),
                        Cached {
                            key: k.clone(),
                            renew_at: Instant::now() + RENEW_AFTER,
                        },
                    );
                }
                Some(k)
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "could not issue a certificate");
                None
            }
        }
    }

    fn minting_now(&self, name: &str) -> bool {
        tunneld_core::sync::lock(&self.minting).contains(name)
    }

    /// Mints `name` on a blocking thread (once at a time per name); without a runtime, now.
    fn mint_in_background(&self, name: String) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        if !tunneld_core::sync::lock(&self.minting).insert(name.clone()) {
            return;
        }
        let work = move || {
            me.mint(&name);
            tunneld_core::sync::lock(&me.minting).remove(&name);
            me.minted.send_modify(|n| *n = n.wrapping_add(1));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    fn resolve_name(&self, name: String) -> Arc<CertifiedKey> {
        if !self.deserves(&name) {
            return self.fallback.clone();
        }
        let found = self
            .lock()
            .get(&name)
            .map(|c| (c.key.clone(), Instant::now() >= c.renew_at));
        match found {
            Some((key, due)) => {
                if due {
                    self.mint_in_background(name);
                }
                key
            }
            // Not ready (the listener waits in `ready` first, so this is a name claimed during
            // the handshake, or evicted): never sign on the handshake path.
            None => {
                self.mint_in_background(name);
                self.fallback.clone()
            }
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            Resolver::Fixed(k) => Some(k.clone()),
            Resolver::Issued(i) => Some(match hello.server_name() {
                Some(n) => i.resolve_name(n.to_ascii_lowercase()),
                None => i.fallback.clone(),
            }),
            Resolver::Source { source, fallback } => {
                let name = hello.server_name().map(str::to_ascii_lowercase);
                let acme = hello
                    .alpn()
                    .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
                if acme {
                    // A validation: its answer or nothing (the handshake then fails).
                    return name.and_then(|n| source.challenge(&n));
                }
                match name.as_deref().and_then(|n| source.certificate(n)) {
                    Some(k) => Some(k),
                    None => fallback.resolve(hello),
                }
            }
        }
    }
}
