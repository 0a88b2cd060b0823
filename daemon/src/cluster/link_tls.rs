//! The link's TLS: every node issues its own certificate (its node name) from the cluster's
//! CA at start, and both ends of a link verify the other against that CA.

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use tunneld_core::tls::{provider, LocalCa};

/// The ALPN id of the link.
pub const ALPN: &[u8] = b"tunneld-cluster/1";
/// How long a node's link certificate is valid (issued again at each start).
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// Both TLS configs of this node's link.
pub struct LinkTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl LinkTls {
    /// Loads the CA in `dir` (which must hold `ca.pem` and `ca.key`; nothing is created) and
    /// issues `node`'s certificate.
    pub fn new(dir: &Path, node: &str) -> anyhow::Result<Self> {
        for f in ["ca.pem", "ca.key"] {
            let p = dir.join(f);
            if !p.is_file() {
                anyhow::bail!(
                    "cluster.ca: {} is missing: every node needs the same cluster CA (see docs/operations.md#cluster)",
                    p.display()
                );
            }
        }
        let ca = LocalCa::open(dir).with_context(|| format!("cluster.ca: {}", dir.display()))?;
        let (chain, key) = ca
            .issue_for(&[node.to_string()], LIFETIME)
            .context("cluster: issuing this node's link certificate")?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.der.clone())
            .context("cluster.ca: unusable CA certificate")?;
        let roots = Arc::new(roots);
        Ok(Self {
            server: Arc::new(server(roots.clone(), chain.clone(), key.clone_key())?),
            client: Arc::new(client(roots, chain, key)?),
        })
    }
}

fn server(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .context("cluster: client verifier")?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("cluster: link certificate")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

fn client(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("cluster: link client certificate")?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}
