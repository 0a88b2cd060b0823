//! TLS for tunneld and tunnelc, on rustls with the `ring` provider passed explicitly.
//!
//! - [`ServerIdentity::load`] reads a configured certificate and key, or
//!   [`ServerIdentity::self_signed`] generates tunneld's own CA and a server certificate into
//!   the state directory on first start and reuses them afterwards.
//! - [`server_config`] / [`client_config`] build rustls configs, with optional mTLS.
//! - [`ClientTrust::Pin`] trusts exactly one server certificate by SHA-256 fingerprint.

use crate::auth::{hex, sha256};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The one crypto provider used everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a DER certificate, the form `ClientTrust::Pin` takes.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&sha256(der)))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("cannot read private key: {e}")))
}

/// Writes a private key: the file is created with mode 0600 (never readable by others, not
/// even for a moment), synced, and renamed into place.
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// A server certificate chain with its key, and where it came from.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA file clients should trust (self-signed mode), for the startup message.
    pub ca_file: Option<PathBuf>,
}

impl ServerIdentity {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: load_certs(cert)?,
            key: load_key(key)?,
            ca_file: None,
        })
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }

    /// tunneld's own CA (`ca.pem`, `ca.key`) and a server certificate for `names`
    /// (`server.pem`, `server.key`) in `dir`, created when missing. The server certificate is
    /// re-issued when the names change.
    pub fn self_signed(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let ca = LocalCa::open(dir)?;
        let (srv_pem, srv_key, srv_names) = (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("server.names"),
        );
        let wanted = names.join("\n");
        let current = std::fs::read_to_string(&srv_names).unwrap_or_default();
        if !srv_pem.exists() || !srv_key.exists() || current != wanted {
            let (pem, key) = ca.issue_pem(names)?;
            write_private(&srv_key, &key)?;
            std::fs::write(&srv_pem, pem).map_err(|e| file_err(&srv_pem, e))?;
            std::fs::write(&srv_names, &wanted).map_err(|e| file_err(&srv_names, e))?;
            tracing::info!(path = %srv_pem.display(), names = %wanted.replace('\n', ","), "issued server certificate");
        }
        let mut chain = load_certs(&srv_pem)?;
        chain.push(ca.der.clone());
        Ok(Self {
            chain,
            key: load_key(&srv_key)?,
            ca_file: Some(ca.file.clone()),
        })
    }
}

/// tunneld's own certificate authority (`ca.pem`, `ca.key` in the state's TLS directory):
/// an ECDSA P-256 key, created on first start.
pub struct LocalCa {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub der: CertificateDer<'static>,
    /// Where its PEM lives, for clients to trust.
    pub file: PathBuf,
}

impl LocalCa {
    /// The CA's certificate and key, to sign with.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Loads the CA from `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        if !ca_pem.exists() || !ca_key.exists() {
            let key = KeyPair::generate().map_err(gen)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "tunneld local CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_after = rcgen::date_time_ymd(2046, 1, 1);
            let cert = params.self_signed(&key).map_err(gen)?;
            write_private(&ca_key, &key.serialize_pem())?;
            std::fs::write(&ca_pem, cert.pem()).map_err(|e| file_err(&ca_pem, e))?;
            tracing::info!(path = %ca_pem.display(), "generated tunneld's own CA");
        }
        let der = load_certs(&ca_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| file_err(&ca_pem, "no certificate in the file"))?;
        let key_pair =
            KeyPair::from_pem(&std::fs::read_to_string(&ca_key).map_err(|e| file_err(&ca_key, e))?)
                .map_err(|e| file_err(&ca_key, e))?;
        let issuer = Issuer::from_ca_cert_der(&der, key_pair).map_err(|e| file_err(&ca_pem, e))?;
        Ok(Self {
            issuer,
            der,
            file: ca_pem,
        })
    }

    /// Issues a leaf certificate for `names` with a fresh ECDSA P-256 key: (certificate PEM,
    /// key PEM).
    pub fn issue_pem(&self, names: &[String]) -> Result<(String, String), TlsError> {
        self.issue_pem_until(names, rcgen::date_time_ymd(2046, 1, 1))
    }

    /// Issues a leaf certificate for `names` valid for `lifetime` from an hour ago (clock
    /// skew): the chain (leaf, CA), the key, and when it expires.
    pub fn issue_for(
        &self,
        names: &[String],
        lifetime: std::time::Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let now = time::OffsetDateTime::now_utc();
        let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let (pem, key) = self.issue_pem_until(names, now + time::Duration::seconds(secs))?;
        let leaf = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok((vec![leaf, self.der.clone()], key))
    }

    fn issue_pem_until(
        &self,
        names: &[String],
        not_after: time::OffsetDateTime,
    ) -> Result<(String, String), TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = KeyPair::generate().map_err(gen)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(gen)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("tunneld"),
        );
        params.distinguished_name = dn;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a leaf certificate for `names` as rustls needs it: the chain (leaf, CA) and key.
    pub fn issue(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let (pem, key) = self.issue_pem(names)?;
        let leaf = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok((vec![leaf, self.der.clone()], key))
    }
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Client certificate policy of a server.
pub enum ClientAuth {
    /// No client certificates asked for.
    None,
    /// Verified against this CA when presented; tokens remain allowed.
    Optional(PathBuf),
    /// Required and verified against this CA.
    Required(PathBuf),
}

/// A rustls server config. `alpn` lists protocols in preference order.
pub fn server_config(
    id: &ServerIdentity,
    client_auth: &ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut cfg = verifier_stage(client_auth)?
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(format!("server certificate and key do not match: {e}")))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A server config whose certificate `resolver` picks per connection (one that changes while
/// tunneld runs, such as an ACME-renewed one).
pub fn server_config_resolved(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_auth: &ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut cfg = verifier_stage(client_auth)?.with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

fn verifier_stage(
    client_auth: &ClientAuth,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let mut v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider());
            if matches!(client_auth, ClientAuth::Optional(_)) {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| file_err(ca, e))?)
        }
    };
    Ok(builder)
}

/// How tunnelc decides to trust tunneld.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Certificates chaining to these CAs (a PEM file: tunneld's `ca.pem` or a system bundle).
    CaFile(PathBuf),
    /// Exactly this leaf certificate, by `sha256:<hex>` fingerprint; names and dates not checked.
    Pin(String),
}

/// A rustls client config, with an optional client certificate for mTLS.
pub fn client_config(
    trust: &ClientTrust,
    client_cert: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match trust {
        ClientTrust::CaFile(path) => builder.with_root_certificates(roots_from(path)?),
        ClientTrust::Pin(pin) => {
            let want = pin.to_ascii_lowercase();
            if !want.starts_with("sha256:") || want.len() != 7 + 64 {
                return Err(TlsError::Config(format!(
                    "pin `{pin}` must be sha256: followed by 64 hex digits"
                )));
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    want,
                    provider: provider(),
                }))
        }
    };
    let mut cfg = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                file_err(
                    cert,
                    format!("client certificate and key do not match: {e}"),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

#[derive(Debug)]
struct PinVerifier {
    want: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate {} does not match the pinned {}",
                fingerprint(end_entity),
                self.want
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a failed TLS accept was about the client's certificate (none, or not valid
/// against the client CA), told apart by rustls's error kind rather than its text.
pub fn is_certificate_error(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)
        )
    )
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

#[cfg(test)]
mod tests;
