//! Answers to the CA's validations while an order waits: HTTP-01 key authorizations by
//! token (served on the plain web port) and TLS-ALPN-01 certificates by name (served on
//! the https frontend's port to ALPN `acme-tls/1`).

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tunneld_core::sync::lock;

/// The path prefix of HTTP-01 answers (RFC 8555, 8.3).
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending validations of every ACME frontend.
#[derive(Default)]
pub struct AcmeChallenges {
    http: Mutex<HashMap<String, String>>,
    tls: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeChallenges {
    /// The key authorization for an HTTP-01 `token`, while its validation is pending.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    pub(super) fn put_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_string(), key_authorization.to_string());
    }

    pub(super) fn remove_http(&self, token: &str) {
        lock(&self.http).remove(token);
    }

    /// The TLS-ALPN-01 certificate for `name`, while its validation is pending.
    pub fn tls_answer(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls).get(name).cloned()
    }

    pub(super) fn put_tls(&self, name: &str, key: Arc<CertifiedKey>) {
        lock(&self.tls).insert(name.to_string(), key);
    }

    pub(super) fn remove_tls(&self, name: &str) {
        lock(&self.tls).remove(name);
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer: `name` as its only SAN and the
/// critical acmeIdentifier extension holding SHA-256 of the key authorization (RFC 8737).
pub(super) fn alpn_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = tunneld_core::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}
