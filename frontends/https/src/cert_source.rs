//! Certificates from outside the frontend: the daemon's ACME client implements
//! [`CertSource`], and a [`crate::Resolver`] made with [`crate::Resolver::with_source`] serves
//! its certificates, answers TLS-ALPN-01 challenges (ALPN `acme-tls/1`, RFC 8737) with it,
//! and serves its fallback (tunneld's own CA) for names the source has nothing for yet.

use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The ALPN id of a TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Whether a label under the domain is claimed (or reserved) now.
pub type Claimed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Where certificates come from when they are not tunneld's own.
pub trait CertSource: Send + Sync {
    /// The certificate for `name` (lower case), once there is one.
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>>;
    /// The TLS-ALPN-01 answer for `name` while a validation of it is pending.
    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>>;
    /// `name` (`<label>.<domain>`) was just claimed: get it a certificate if it has none.
    fn claimed(&self, name: &str);
    /// Which labels are claimed now (set once, by the frontend, before it serves).
    fn set_claimed(&self, claimed: Claimed);
}
