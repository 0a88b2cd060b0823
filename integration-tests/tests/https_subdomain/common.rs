//! Helpers the https-subdomain tests share: tunnels' YAML, curl visitors, patterns to
//! download, raw TLS connections to the frontend, and an h2-reverse session of our own.

pub(crate) use anyhow::{anyhow, Context, Result};
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::sync::Arc;
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub(crate) use tunneld_core::proto::{
    encode_frame, read_frame, Hello, ServerHello, TunnelKind, TunnelRequest, MAGIC, VERSION,
};
pub(crate) use tunneld_integration_tests::h2body;
pub(crate) use tunneld_integration_tests::h2raw::{self, frame};
pub(crate) use tunneld_integration_tests::process::{curl, Proc};
pub(crate) use tunneld_integration_tests::services::{http_echo, tls_local, websocket_echo};
pub(crate) use tunneld_integration_tests::{
    metrics, pattern, server_pki, sha256_hex, temp_dir, TestClient, TestServer, ALICE_TOKEN,
    BOB_TOKEN, WAIT,
};

pub(crate) fn http_tunnel(name: &str, local: SocketAddr, subdomain: Option<&str>) -> String {
    let mut t = format!("  {name}:\n    type: http\n    local: \"{local}\"\n");
    if let Some(s) = subdomain {
        t.push_str(&format!("    subdomain: \"{s}\"\n"));
    }
    t
}

/// curl against `https://<host>:<web port><path>`, resolved to loopback and trusting
/// tunneld's CA. Answers (status, body, HTTP version).
pub(crate) async fn visit(
    s: &TestServer,
    host: &str,
    path: &str,
    extra: &[&str],
) -> Result<(u16, String, String)> {
    let port = s.web().port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = s.ca_file().display().to_string();
    let mut args = vec![
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (status, out) = curl(&args).await?;
    if !status.success() {
        return Err(anyhow!("curl {url} failed: {status} {out}"));
    }
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", &out));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    Ok((
        code.parse().unwrap_or(0),
        body.to_string(),
        version.to_string(),
    ))
}

pub(crate) fn write_pattern(dir: &Path, len: usize) -> (PathBuf, String) {
    let data = pattern(len, 7);
    let file = dir.join("upload.bin");
    std::fs::write(&file, &data).expect("write upload");
    (file, sha256_hex(&data))
}

/// Everything until the peer closes (with or without TLS close_notify: the answers carry
/// their lengths).
pub(crate) async fn read_all<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(WAIT, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// TLS to the `web` listener with `sni`, trusting `ca` (default: tunneld's CA).
pub(crate) async fn tls_to(
    s: &TestServer,
    sni: &str,
    alpn: &[u8],
    ca: Option<&Path>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ca = ca.map(Path::to_path_buf).unwrap_or_else(|| s.ca_file());
    let cfg = tunneld_core::tls::client_config(
        &tunneld_core::tls::ClientTrust::CaFile(ca),
        None,
        &[alpn],
    )?;
    let tcp = tokio::net::TcpStream::connect(s.web()).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni.to_string().try_into()?, tcp)
        .await?)
}

/// A hostile tunnel client: authenticates over the shared port, then answers tunneld's
/// requests with `misbehave`.
pub(crate) async fn evil_session(
    s: &TestServer,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tls = s
        .tls_connect_to(s.web(), tunneld_transport_h2_reverse::ALPN)
        .await;
    let hello = Hello {
        version: VERSION,
        token: Some(BOB_TOKEN.into()),
        tunnels: vec![TunnelRequest {
            name: name.into(),
            kind: TunnelKind::Http,
            remote_port: None,
            frontend: None,
            proxy_protocol: None,
            subdomain: Some(name.into()),
        }],
        accept_server_mappings: false,
        agent: "evil".into(),
        max_streams: None,
        instance: None,
    };
    let mut pre = MAGIC.to_vec();
    pre.extend(encode_frame(&hello)?);
    tls.write_all(&pre).await?;
    let welcome: ServerHello = read_frame(&mut tls).await?;
    assert!(
        matches!(welcome, ServerHello::Welcome { .. }),
        "{welcome:?}"
    );
    let mut preface = [0u8; 24];
    tls.read_exact(&mut preface).await?;
    assert_eq!(&preface[..], h2raw::PREFACE);
    tls.write_all(&frame(h2raw::SETTINGS, 0, 0, &[])).await?;
    Ok(tls)
}

/// Reads frames until tunneld's request HEADERS arrives; returns its stream id.
pub(crate) async fn next_request(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<u32> {
    tokio::time::timeout(WAIT, async {
        loop {
            let (kind, flags, stream, _) = h2raw::read_frame(tls).await?;
            if kind == h2raw::SETTINGS && flags & h2raw::ACK == 0 {
                tls.write_all(&frame(h2raw::SETTINGS, h2raw::ACK, 0, &[]))
                    .await?;
            }
            if kind == h2raw::HEADERS {
                return Ok::<_, anyhow::Error>(stream);
            }
        }
    })
    .await?
}
