//! ACME for the `https-subdomain` frontend against Debian's `pebble` on loopback: pebble's
//! validator connects to tunneld's own listeners (TLS-ALPN-01 on the frontend's port,
//! HTTP-01 on the plain web port), curl verifies what tunneld serves against pebble's root.

use anyhow::{anyhow, bail, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_integration_tests::attack::http_tunnel;
use tunneld_integration_tests::pebble::{free_port, pebble_or_skip, PebblePlan};
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::services::http_echo;
use tunneld_integration_tests::{TestClient, TestServer, ALICE_TOKEN, WAIT};

/// What tunneld logs in this test process (tests tell theirs apart by domain).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().map(|l| l.clone()).unwrap_or_default()).into_owned()
}

/// A server whose `web` frontend (`domain`) gets certificates from pebble (`plan`: its
/// directory URL and the root of its own HTTPS);
/// `acme_extra` holds more keys of `acme:` (six spaces in).
async fn server(domain: &str, plan: (&str, &Path), acme_extra: &str) -> Result<TestServer> {
    let extra = format!(
        "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: {domain}\n    reclaim_grace: 30s\n    acme:\n      directory: {dir}\n      ca: {ca}\n      contact: ops@{domain}\n      retry_after: 1s\n{acme_extra}control:\n  listen: 127.0.0.1:0\n  web_listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n",
        dir = plan.0,
        ca = plan.1.display(),
    );
    TestServer::start_with(&extra).await
}

fn web_port(s: &TestServer) -> u16 {
    s.running.frontends["web"].port()
}

fn plain_web(s: &TestServer) -> SocketAddr {
    s.running.control.and_then(|c| c.web).expect("web port")
}

async fn orders(s: &TestServer, result: &str, at_least: f64) -> Result<()> {
    let labels = [("frontend", "web"), ("result", result)];
    let m = s
        .metrics_when("tunneld_acme_orders_total", &labels, at_least)
        .await;
    let n = m.get("tunneld_acme_orders_total", &labels);
    if n < at_least {
        bail!(
            "tunneld_acme_orders_total{{result={result}}} is {n}, not {at_least}; log:\n{}",
            log_text()
        );
    }
    Ok(())
}

/// curl `https://<host>:<port>/` trusting `ca`: Ok(body) when TLS verified.
async fn visit(host: &str, port: u16, ca: &Path) -> Result<String> {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let ca = ca.display().to_string();
    let (status, out) = curl(&["--cacert", &ca, "--resolve", &resolve, &url]).await?;
    if !status.success() {
        bail!("curl {url} trusting {ca}: {status}");
    }
    Ok(out)
}

/// A TLS connection to `host` on the frontend, trusting `root`.
async fn tls_to(
    port: u16,
    host: &str,
    root: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pem = std::fs::read(root)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(tunneld_core::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?)
}

/// The serial of the certificate served for `host`, verified against `root`.
async fn serial(port: u16, host: &str, root: &Path) -> Result<Vec<u8>> {
    let tls = tls_to(port, host, root).await?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no certificate"))?
        .clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow!("{e}"))?;
    Ok(cert.tbs_certificate.raw_serial().to_vec())
}

/// One GET on a kept-alive connection; Ok when the tunnel's service answered with `tag`.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    tag: &str,
) -> Result<()> {
    io.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&got).contains(tag) {
        let n = tokio::time::timeout_at(deadline, io.read(&mut buf)).await??;
        if n == 0 {
            bail!("connection closed; got {}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn mode(p: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

fn acme_dir(s: &TestServer) -> PathBuf {
    s.dir.join("state").join("acme").join("web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_for_the_apex_and_claimed_names_only_over_tls_alpn() -> Result<()> {
    if !pebble_or_skip("acme issuance") {
        return Ok(());
    }
    capture_logs();
    let plan = PebblePlan::new()?;
    let s = server("issue.test", (&plan.directory, &plan.wfe_ca), "").await?;
    let port = web_port(&s);
    let pebble = plan.start(plain_web(&s).port(), port, None).await?;
    // The apex at start (the first try may have met pebble still starting).
    orders(&s, "issued", 1.0).await?;
    let root = pebble.root().await?;
    visit("issue.test", port, &root).await?;

    let local = http_echo("acme-app").await;
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &http_tunnel("app", local))?);
    alice.connected().await?;
    orders(&s, "issued", 2.0).await?;
    let body = visit("app.issue.test", port, &root).await?;
    assert!(body.contains("acme-app"), "served {body}");
    let log = log_text();
    assert!(
        log.contains("ACME certificate issued") && log.contains("name=app.issue.test"),
        "{log}"
    );

    // An unclaimed name: no order, tunneld's CA's certificate (pebble's root refuses it).
    assert!(visit("nobody.issue.test", port, &root).await.is_err());
    let dir = acme_dir(&s);
    assert!(!dir.join("certs/nobody.issue.test.pem").exists());
    assert!(!log.contains("nobody.issue.test"), "{log}");
    // Stored, private.
    for f in [
        "account.json",
        "certs/issue.test.key",
        "certs/app.issue.test.key",
        "certs/app.issue.test.pem",
    ] {
        assert_eq!(mode(&dir.join(f))?, 0o600, "{f}");
    }
    // Only TLS-ALPN-01 was answered (preferred by default); HTTP-01 saw nothing.
    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_control_requests_total",
            &[("route", "acme-challenge"), ("code", "200")]
        ),
        0.0
    );
    alice.shutdown().await?;

    // A restart serves the stored certificate (the same serial): nothing is ordered again.
    let apex = serial(port, "issue.test", &root).await?;
    s.running.stop().await;
    let again = TestServer::from_file(&s.dir.join("server.yaml"), &[]).await?;
    assert_eq!(serial(web_port(&again), "issue.test", &root).await?, apex);
    let m = again.metrics().await;
    assert!(
        m.get(
            "tunneld_acme_certificate_expiry_seconds",
            &[("frontend", "web")]
        ) > 0.0
    );
    assert!(log_text().contains("ACME certificates read back from the state dir"));
    again.running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_over_http01_while_connections_keep_working() -> Result<()> {
    if !pebble_or_skip("acme renewal") {
        return Ok(());
    }
    capture_logs();
    let plan = PebblePlan::new()?;
    // Certificates live 20 s, less than renew_before: each is renewed at half its life.
    let s = server(
        "renew.test",
        (&plan.directory, &plan.wfe_ca),
        "      challenges: [http-01]\n      renew_before: 1h\n",
    )
    .await?;
    let port = web_port(&s);
    let pebble = plan
        .start(plain_web(&s).port(), port, Some(Duration::from_secs(20)))
        .await?;
    let local = http_echo("renewed-app").await;
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &http_tunnel("app", local))?);
    alice.connected().await?;
    let root = pebble.root().await?;
    let host = "app.renew.test";
    // Wait (bounded) for app's first certificate.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        if let Ok(s) = serial(port, host, &root).await {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no ACME certificate for {host}; log:\n{}", log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A connection opened on the first certificate.
    let mut kept = tls_to(port, host, &root).await?;
    get(&mut kept, host, "renewed-app").await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let second = loop {
        let now = serial(port, host, &root).await?;
        if now != first {
            break now;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{host} was not renewed; log:\n{}", log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(first, second);
    get(&mut kept, host, "renewed-app").await?;
    let body = visit(host, port, &root).await?;
    assert!(body.contains("renewed-app"), "served {body}");
    // HTTP-01 answers went out on the plain web port.
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_control_requests_total",
            &[("route", "acme-challenge"), ("code", "200")]
        ) >= 2.0
    );
    assert!(
        m.get(
            "tunneld_acme_certificate_expiry_seconds",
            &[("frontend", "web")]
        ) > 0.0
    );
    alice.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_is_logged_and_counted_and_tunneld_keeps_serving() -> Result<()> {
    if !pebble_or_skip("acme failure") {
        return Ok(());
    }
    capture_logs();
    let plan = PebblePlan::new()?;
    // pebble's validator goes to a port nobody answers.
    let nobody = free_port()?;
    let (directory, ca) = (plan.directory.clone(), plan.wfe_ca.clone());
    let _pebble = plan.start(nobody, nobody, None).await?;
    let s = server(
        "fail.test",
        (&directory, &ca),
        "      challenges: [tls-alpn-01]\n      retry_after: 1h\n",
    )
    .await?;
    orders(&s, "failed", 1.0).await?;
    let log = log_text();
    let line = log
        .lines()
        .find(|l| l.contains("ACME order failed") && l.contains("name=fail.test"))
        .ok_or_else(|| anyhow!("no failure logged:\n{log}"))?;
    assert!(line.contains("challenge=tls-alpn-01"), "{line}");
    // The CA's own detail: where its validator could not connect, and the problem type.
    assert!(line.contains(&format!("127.0.0.1:{nobody}")), "{line}");
    assert!(line.contains("urn:ietf:params:acme:error:"), "{line}");
    // Logged once: the next try waits retry_after.
    assert_eq!(log.matches("name=fail.test").count(), 1, "{log}");
    // tunneld keeps serving, with its own CA's certificates.
    let local = http_echo("still-served").await;
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &http_tunnel("app", local))?);
    alice.connected().await?;
    let body = visit("app.fail.test", web_port(&s), &s.ca_file()).await?;
    assert!(body.contains("still-served"), "served {body}");
    alice.shutdown().await?;
    Ok(())
}

/// `tls.acme_from: web`: the yamux transport serves the frontend's ACME certificate to a
/// tunnelc whose `server_name` is the domain (it trusts pebble's root, not tunneld's CA), and
/// tunneld's own certificate to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_serve_the_frontends_acme_certificate() -> Result<()> {
    if !pebble_or_skip("acme for transports") {
        return Ok(());
    }
    capture_logs();
    let plan = PebblePlan::new()?;
    let s = server(
        "transport.test",
        (&plan.directory, &plan.wfe_ca),
        "tls:\n  acme_from: web\n",
    )
    .await?;
    let pebble = plan.start(plain_web(&s).port(), web_port(&s), None).await?;
    orders(&s, "issued", 1.0).await?;
    let root = pebble.root().await?;

    let file = s.dir.join("acme-client.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {}\nserver_name: transport.test\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n  app:\n    local: 127.0.0.1:9\n",
            s.transport(),
            root.display()
        ),
    )?;
    let cfg = tunneld_client::config::client::ClientConfig::load(Some(&file), &[])
        .map_err(|e| anyhow!("{e}"))?;
    let mut alice = TestClient::spawn(cfg);
    alice.connected().await?;
    alice.shutdown().await?;

    // Clients naming another server name (here `localhost`, trusting tunneld's CA) keep
    // getting tunneld's own certificate.
    let local = s.client_config(ALICE_TOKEN, "  b:\n    local: 127.0.0.1:9\n")?;
    let mut own = TestClient::spawn(local);
    own.connected().await?;
    own.shutdown().await?;
    Ok(())
}
