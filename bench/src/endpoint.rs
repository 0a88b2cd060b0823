//! Where a visitor connects: a plain TCP port (most systems), or tunneld's rendezvous
//! frontend, where a visitor opens TLS and asks `CONNECT <name>:80` (a named tunnel, or a
//! rendezvous id that takes a parked connection) before its bytes reach the service.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A visitor's connection, whatever is under it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// TLS to `addr` (trusting `tls`'s roots, SNI `localhost`), then `CONNECT <target>`
    /// with `Proxy-Authorization: Basic <basic>`.
    Connect {
        addr: SocketAddr,
        tls: tokio_rustls::TlsConnector,
        target: String,
        basic: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Connect { addr, target, .. } => write!(f, "CONNECT {target} at {addr}"),
        }
    }
}

impl Endpoint {
    /// A rendezvous frontend at `addr` whose certificate chains to the CA in `ca_pem`.
    pub fn rendezvous(addr: SocketAddr, ca_pem: &str, target: &str, basic: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("CA certificate")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Endpoint::Connect {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            target: target.to_string(),
            basic: basic.to_string(),
        })
    }

    /// A connection that reaches the service (after the CONNECT exchange, for those).
    pub async fn connect(&self) -> Result<Box<dyn Io>> {
        let addr = match self {
            Endpoint::Tcp(a) | Endpoint::Connect { addr: a, .. } => *a,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        tcp.set_nodelay(true)?;
        let Endpoint::Connect {
            tls, target, basic, ..
        } = self
        else {
            return Ok(Box::new(tcp));
        };
        let handshake = async {
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let mut s = tls.connect(name, tcp).await?;
            s.write_all(
                format!(
                    "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            // The answer's head, byte by byte: the tunnel's bytes follow it at once.
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() > 4096 {
                    bail!("answer head over 4 KiB");
                }
                head.push(s.read_u8().await?);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "CONNECT {target}: {}",
                    String::from_utf8_lossy(&head).trim()
                );
            }
            Ok::<_, anyhow::Error>(s)
        };
        let s = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .context("CONNECT timed out")??;
        Ok(Box::new(s))
    }
}
