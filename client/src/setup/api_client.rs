//! tunnelc's client of the provisioning API: HTTP/1.1 over TLS, one connection per request.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tunneld_core::tls::{client_config, ClientTrust};

const TIMEOUT: Duration = Duration::from_secs(15);
const MAX_ANSWER: usize = 1 << 20;

/// `https://host[:port]` split up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    pub host: String,
    pub port: u16,
}

impl ApiUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            anyhow!("--server `{url}` must start with https:// (the provisioning API is served over TLS)")
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            bail!("--server `{url}` must be https://host[:port] with no path");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| anyhow!("--server `{url}`: `{p}` is not a port"))?,
            ),
            _ => (rest, 443),
        };
        Ok(Self {
            host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port,
        })
    }
}

/// Resolves a host, `localhost` and `*.localhost` to loopback (RFC 6761) without DNS.
pub async fn resolve(host: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    if host == "localhost" || host.ends_with(".localhost") {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))
}

pub struct ApiClient {
    pub url: ApiUrl,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(
        url: &str,
        trust: &ClientTrust,
        server_name: Option<&str>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let url = ApiUrl::parse(url)?;
        let tls = client_config(trust, None, &[b"http/1.1"])?;
        let name = server_name.unwrap_or(&url.host).to_string();
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| anyhow!("server name `{name}`: {e}"))?;
        Ok(Self {
            url,
            tls: Arc::new(tls),
            server_name,
            token,
        })
    }

    /// Sends one request; returns the status and the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(TIMEOUT, self.call_inner(method, path, content_type, body))
            .await
            .map_err(|_| {
                anyhow!(
                    "{}:{} did not answer within {TIMEOUT:?}",
                    self.url.host,
                    self.url.port
                )
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let addr = resolve(&self.url.host, self.url.port).await?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the provisioning API at {addr}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!(
                "TLS with {}:{} failed (trust tunneld's CA with --ca, or pin its certificate with --pin)",
                self.url.host, self.url.port
            ))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", self.url.host, self.url.port))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// A JSON call that must answer 2xx; other answers become the server's error message.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, answer) = self
            .call(method.clone(), path, "application/json", bytes)
            .await?;
        check(status, &answer, &method, path)?;
        serde_json::from_slice(&answer)
            .with_context(|| format!("{method} {path}: unexpected answer"))
    }
}

/// Turns a non-2xx answer into an error carrying the server's message.
pub fn check(status: StatusCode, answer: &[u8], method: &Method, path: &str) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let msg = serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(answer).trim().to_string());
    bail!("{method} {path}: {status}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ApiUrl::parse("https://localhost:8445").expect("url"),
            ApiUrl {
                host: "localhost".into(),
                port: 8445
            }
        );
        assert_eq!(ApiUrl::parse("https://t.example/").expect("url").port, 443);
        assert!(ApiUrl::parse("http://localhost:8445").is_err());
        assert!(ApiUrl::parse("https://localhost:8445/x").is_err());
        assert!(ApiUrl::parse("https://localhost:http").is_err());
    }
}
