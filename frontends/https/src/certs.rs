//! Certificates for visitors: a configured one (typically `*.<domain>`), or one per name
//! issued on demand from tunneld's own CA, so `https://<name>.localhost` verifies against
//! `state/tls/ca.pem` with no setup.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tunneld_core::tls::{provider, LocalCa, ServerIdentity, TlsError};

/// Issued certificates kept at most; the cache starts over when full.
const MAX_CACHED: usize = 10_000;

pub enum Resolver {
    /// One certificate for every name.
    Fixed(Arc<CertifiedKey>),
    /// A certificate per name, issued from tunneld's CA.
    Issued {
        ca: Box<LocalCa>,
        domain: String,
        extra: Vec<String>,
        cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
        fallback: Arc<CertifiedKey>,
    },
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resolver::Fixed(_) => "Resolver::Fixed",
            Resolver::Issued { .. } => "Resolver::Issued",
        })
    }
}

fn certified(
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
        Ok(Resolver::Issued {
            fallback: certified(chain, &key)?,
            ca: Box::new(ca),
            domain: domain.to_string(),
            extra,
            cache: Mutex::default(),
        })
    }

    /// Whether a certificate this resolver serves for `sni` also covers `host` (so one
    /// connection may carry requests for both).
    pub(crate) fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        match self {
            Resolver::Fixed(_) => true,
            Resolver::Issued { .. } => sni.is_none_or(|s| s == host),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            Resolver::Fixed(k) => Some(k.clone()),
            Resolver::Issued {
                ca,
                domain,
                extra,
                cache,
                fallback,
            } => {
                let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
                    return Some(fallback.clone());
                };
                let ours = name
                    .strip_suffix(domain.as_str())
                    .and_then(|l| l.strip_suffix('.'))
                    .is_some_and(crate::config::valid_label)
                    || extra.contains(&name);
                if !ours {
                    return Some(fallback.clone());
                }
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = cache.get(&name) {
                    return Some(k.clone());
                }
                let issued = ca
                    .issue(std::slice::from_ref(&name))
                    .and_then(|(chain, key)| certified(chain, &key));
                match issued {
                    Ok(k) => {
                        if cache.len() >= MAX_CACHED {
                            cache.clear();
                        }
                        cache.insert(name, k.clone());
                        Some(k)
                    }
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "could not issue a certificate");
                        Some(fallback.clone())
                    }
                }
            }
        }
    }
}
