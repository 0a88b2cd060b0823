//! tunnelc side: open one TLS connection, send `CONNECT uuid:<ID>`, read the answer. On
//! success the connection is parked at tunneld and the next bytes are a visitor's.

use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tunneld_core::dial::DialError;

/// How to reach tunneld's `connect` transport.
#[derive(Clone)]
pub struct ParkOptions {
    pub server: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Sent as `Proxy-Authorization: Bearer`; the id must belong to this token's client.
    pub token: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    #[error("cannot reach {server}: {detail}")]
    Connect { server: String, detail: String },
    /// The TLS handshake failed: told apart as the other transports do (an untrusted
    /// certificate or a port that speaks something else is permanent).
    #[error(transparent)]
    Tls(DialError),
    #[error("tunneld refused to park ({status}): {diagnostic}")]
    Refused { status: u16, diagnostic: String },
    #[error("unexpected answer from tunneld: {0}")]
    Protocol(String),
}

impl ParkError {
    /// Retrying cannot help: the credentials or the id are wrong.
    pub fn is_permanent(&self, with_token: bool) -> bool {
        match self {
            ParkError::Tls(e) => e.is_permanent(),
            ParkError::Refused {
                status: 401 | 403 | 407,
                ..
            } => with_token,
            _ => false,
        }
    }
}

/// A parked connection and any visitor bytes read with the answer.
pub struct Parked {
    pub stream: TlsStream<TcpStream>,
    pub surplus: Vec<u8>,
}

/// Parks one connection for `id`, with a TOTP `code` when given.
pub async fn park(opts: &ParkOptions, id: &str, code: Option<&str>) -> Result<Parked, ParkError> {
    let connect_err = |detail: String| ParkError::Connect {
        server: opts.server.clone(),
        detail,
    };
    let attempt = async {
        let tcp = tunneld_core::dial::connect_any(opts.server.as_str())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = match TlsConnector::from(opts.tls.clone())
            .connect(opts.server_name.clone(), tcp)
            .await
        {
            Ok(tls) => tls,
            // Told apart (and the port probed) after the deadline, as `dial` does.
            Err(e) => return Err(ParkError::Tls(DialError::of_tls(&opts.server, e))),
        };
        let mut req = format!("CONNECT uuid:{id}");
        if let Some(c) = code {
            req.push_str(&format!("?response={c}"));
        }
        req.push_str(&format!(" HTTP/1.1\r\nHost: uuid:{id}\r\n"));
        if let Some(t) = &opts.token {
            req.push_str(&format!("Proxy-Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        tls.flush().await.map_err(|e| connect_err(e.to_string()))?;
        Ok::<_, ParkError>(tls)
    };
    let mut tls = match tokio::time::timeout(opts.timeout, attempt).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(ParkError::Tls(e))) => return Err(ParkError::Tls(e.probed(&opts.server).await)),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(connect_err("timed out".into())),
    };
    // The answer: up to the blank line (bounded); what follows a 200 is a visitor's.
    let mut buf = Vec::new();
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 4096 {
            return Err(ParkError::Protocol("answer head larger than 4 KiB".into()));
        }
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout(opts.timeout, tls.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => return Err(connect_err("no answer to CONNECT in time".into())),
        };
        if n == 0 {
            return Err(ParkError::Protocol("closed before answering".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ParkError::Protocol(format!("bad status line {:?}", head.lines().next())))?;
    let mut rest = buf.split_off(end);
    if status == 200 {
        return Ok(Parked {
            stream: tls,
            surplus: rest,
        });
    }
    // The error body runs to the end of the connection (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut chunk = [0u8; 1024];
        while rest.len() < 4096 {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let diagnostic = serde_json::from_slice::<serde_json::Value>(&rest)
        .ok()
        .and_then(|v| v["error"]["diagnostic"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&rest).into_owned());
    Err(ParkError::Refused { status, diagnostic })
}
