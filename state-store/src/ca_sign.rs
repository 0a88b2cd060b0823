//! tunneld's CA signing certificate requests for tunnels: only DNS names the caller owns,
//! with a bounded lifetime, as end-entity server certificates ([`CaSign`], for core's
//! [`LocalCa`]).

use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use std::time::Duration;
use tunneld_core::auth::{hex, random_bytes};
use tunneld_core::tls::LocalCa;

/// Most DNS names one request may carry.
pub const MAX_NAMES: usize = 16;
/// Largest accepted CSR in PEM.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the certificate request is not a valid PEM CSR: {0}")]
    Malformed(String),
    #[error("the certificate request names no DNS name")]
    NoNames,
    #[error("the certificate request names {0} (only DNS names are signed)")]
    NotDns(String),
    #[error("the certificate request names more than {MAX_NAMES} names")]
    TooMany,
    #[error("the certificate request names `{0}`, which this token does not own")]
    NotOwned(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    pub pem: String,
    /// Hex serial.
    pub serial: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: u64,
}

/// Signing tunnels' certificate requests with a CA.
pub trait CaSign {
    /// Signs `csr_pem` when every name in it satisfies `owned` (names are lower-cased), for
    /// `lifetime` from now. The subject is replaced by the first name.
    fn sign_csr(
        &self,
        csr_pem: &str,
        owned: impl Fn(&str) -> bool,
        lifetime: Duration,
    ) -> Result<Signed, CsrError>;
}

impl CaSign for LocalCa {
    fn sign_csr(
        &self,
        csr_pem: &str,
        owned: impl Fn(&str) -> bool,
        lifetime: Duration,
    ) -> Result<Signed, CsrError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::Malformed(format!(
                "larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let mut names = Vec::new();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(n) => names.push(n.as_str().to_ascii_lowercase()),
                SanType::IpAddress(ip) => return Err(CsrError::NotDns(format!("address {ip}"))),
                other => return Err(CsrError::NotDns(format!("{other:?}"))),
            }
        }
        if names.is_empty() {
            return Err(CsrError::NoNames);
        }
        if names.len() > MAX_NAMES {
            return Err(CsrError::TooMany);
        }
        if let Some(n) = names.iter().find(|n| !owned(n)) {
            return Err(CsrError::NotOwned(n.clone()));
        }
        let p = &mut csr.params;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].as_str());
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let mut serial = random_bytes::<16>();
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        let not_after =
            now + time::Duration::seconds(lifetime.as_secs().min(i64::MAX as u64) as i64);
        p.not_after = not_after;
        let cert = csr
            .signed_by(self.issuer())
            .map_err(|e| CsrError::Sign(e.to_string()))?;
        Ok(Signed {
            pem: cert.pem(),
            serial: hex(&serial),
            names,
            not_after: not_after.unix_timestamp().max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr(names: &[&str]) -> String {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn signs_owned_names_only() {
        let dir = std::env::temp_dir().join(format!("tunneld-ca-{}", hex(&random_bytes::<6>())));
        let ca = LocalCa::open(&dir).expect("ca");
        let owned = |n: &str| n == "calm-blue-otter.localhost";
        let day = Duration::from_secs(86_400);
        let s = ca
            .sign_csr(&csr(&["Calm-Blue-Otter.localhost"]), owned, day)
            .expect("signed");
        assert_eq!(s.names, vec!["calm-blue-otter.localhost"]);
        assert!(s.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let left = s.not_after as i64 - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((86_000..=86_400).contains(&left), "{left}");
        assert_eq!(
            ca.sign_csr(
                &csr(&["calm-blue-otter.localhost", "evil.localhost"]),
                owned,
                day
            )
            .err(),
            Some(CsrError::NotOwned("evil.localhost".into()))
        );
        assert_eq!(
            ca.sign_csr(&csr(&[]), owned, day).err(),
            Some(CsrError::NoNames)
        );
        assert!(matches!(
            ca.sign_csr(&csr(&["127.0.0.1"]), owned, day),
            Err(CsrError::NotDns(_))
        ));
        assert!(matches!(
            ca.sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                owned,
                day
            ),
            Err(CsrError::Malformed(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
