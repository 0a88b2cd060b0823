//! Smaller hardening findings: ambiguous routing on the websocket port, a normal tunnelc
//! stop that must not count as a protocol error, and HTTP/2 error codes that must not mint
//! metric series.

use anyhow::{ensure, Result};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{self, http_tunnel, Via};
use tunneld_integration_tests::h2raw::{self, frame};
use tunneld_integration_tests::{services, WAIT};

/// The status of one raw request on the websocket transport's own port.
async fn ws_port_status(port: u16, request: &str) -> Result<u16> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let line = attack::status_line(tcp, request.as_bytes().to_vec(), WAIT).await?;
    attack::status_code(&line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_port_refuses_ambiguous_hosts() -> Result<()> {
    let s = attack::server(true, &[]).await?;
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Websocket, &http_tunnel("site", svc)).await?;
    let port = attack::ws_port(&s);
    for (what, request, want) in [
        (
            "one Host",
            "GET / HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n".to_string(),
            200,
        ),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: site.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n".to_string(),
            400,
        ),
        (
            "an absolute-form target naming another host",
            "GET http://other.localhost/ HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n".to_string(),
            400,
        ),
        (
            "an absolute-form target naming the Host",
            format!("GET http://site.localhost:{port}/ HTTP/1.1\r\nHost: site.localhost:{port}\r\nConnection: close\r\n\r\n"),
            200,
        ),
    ] {
        let got = ws_port_status(port, &request).await?;
        ensure!(got == want, "{what}: {got}, want {want}");
    }
    alice.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_tunnelc_stop_is_not_a_protocol_error() -> Result<()> {
    let s = attack::server(false, &[]).await?;
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;
    alice.shutdown().await?;
    let deadline = Instant::now() + WAIT;
    while attack::alice_session(&s).await?.is_some() {
        ensure!(Instant::now() < deadline, "alice's session did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = s.metrics().await;
    let errors = m.get(
        "tunneld_protocol_errors_total",
        &[("transport", "edge"), ("reason", "bad_yamux_frame")],
    );
    ensure!(
        errors == 0.0,
        "a normal stop counted {errors} bad_yamux_frame"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_http2_error_codes_share_one_metric_series() -> Result<()> {
    let s = attack::server(false, &[]).await?;
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;
    // Visitors that end their connection with GOAWAY and made-up error codes.
    for code in [0x1000_u32, 0x2000, 0x3000, 0xdead] {
        let tcp = TcpStream::connect(s.web()).await?;
        let mut tls = attack::tls_to(&s, "site.localhost", b"h2", tcp).await?;
        use tokio::io::AsyncWriteExt;
        tls.write_all(h2raw::PREFACE).await?;
        tls.write_all(&frame(h2raw::SETTINGS, 0, 0, &[])).await?;
        let mut goaway = vec![0u8; 4];
        goaway.extend_from_slice(&code.to_be_bytes());
        tls.write_all(&frame(h2raw::GOAWAY, 0, 0, &goaway)).await?;
        // An invalid frame on stream 0 makes the server end the connection with an error.
        tls.write_all(&frame(h2raw::DATA, 0, 0, b"x")).await?;
        let mut buf = [0u8; 1024];
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + WAIT;
        while !matches!(
            tokio::time::timeout_at(deadline, tls.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_)
        ) {}
    }
    // Each connection's error is counted after it was dropped: wait for all four.
    let errors = |m: &tunneld_integration_tests::metrics::Samples| {
        m.get("tunneld_protocol_errors_total", &[("transport", "web")])
    };
    let text = s.metrics_until(|m| errors(m) >= 4.0).await;
    ensure!(
        errors(&text) >= 4.0,
        "four visitors' errors, counted: {}",
        errors(&text)
    );
    let odd: Vec<_> = text
        .0
        .iter()
        .filter(|x| x.name == "tunneld_protocol_errors_total")
        .filter_map(|x| x.labels.get("reason"))
        .filter(|r| r.contains('(') || r.contains("reason"))
        .collect();
    ensure!(
        odd.is_empty(),
        "metric labels made from peer codes: {odd:?}"
    );
    alice.stop.cancel();
    Ok(())
}

/// `openssl s_client` to the `web` port with `sni`, piping the certificate it got into
/// `openssl x509 <args>`: (exit success, output).
fn served_certificate(port: u16, sni: &str, args: &str) -> Result<(bool, String)> {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout {args}"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_for_claimed_names_only_and_live_90_days() -> Result<()> {
    let s = attack::server(false, &[]).await?;
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;
    let port = s.web().port();
    let checks = tokio::task::spawn_blocking(move || {
        let day = 24 * 3600;
        Ok::<_, anyhow::Error>((
            served_certificate(port, "site.localhost", "-subject")?,
            served_certificate(port, "random-4711.localhost", "-subject")?,
            served_certificate(port, "site.localhost", &format!("-checkend {}", 89 * day))?,
            served_certificate(port, "site.localhost", &format!("-checkend {}", 91 * day))?,
        ))
    })
    .await??;
    let (site, random, in_89_days, in_91_days) = checks;
    ensure!(site.0 && site.1.contains("site.localhost"), "{site:?}");
    // A random name gets the domain's certificate: nothing was signed for it.
    ensure!(random.0 && !random.1.contains("random-4711"), "{random:?}");
    // Valid for 90 days: still valid in 89, expired in 91.
    ensure!(
        in_89_days.0,
        "the leaf expires within 89 days: {in_89_days:?}"
    );
    ensure!(
        !in_91_days.0,
        "the leaf is still valid in 91 days: {in_91_days:?}"
    );
    alice.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_refused_upgrade_are_never_read_as_a_request() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = attack::server(false, &[]).await?;
    let svc = services::http().await;
    let (alice, _) = attack::alice(&s, Via::Yamux, &http_tunnel("site", svc)).await?;
    let tcp = TcpStream::connect(s.web()).await?;
    let mut tls = attack::tls_to(&s, "site.localhost", b"http/1.1", tcp).await?;
    // The service answers the upgrade request with 200 (it does not upgrade); what follows
    // it must not become a second request.
    tls.write_all(
        b"GET /up HTTP/1.1\r\nHost: site.localhost\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: site.localhost\r\n\r\n",
    )
    .await?;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut got)).await?;
    let got = String::from_utf8_lossy(&got);
    ensure!(got.contains("hello /up"), "{got}");
    ensure!(
        !got.contains("smuggled"),
        "a second request was served: {got}"
    );
    // The same when tunneld itself answers the upgrade request (an unknown host, a
    // CONNECT): the connection closes after the answer.
    for first in [
        "GET / HTTP/1.1\r\nHost: nosuch.localhost\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        "CONNECT site.localhost:443 HTTP/1.1\r\nHost: site.localhost\r\n\r\n",
    ] {
        let tcp = TcpStream::connect(s.web()).await?;
        let mut tls = attack::tls_to(&s, "site.localhost", b"http/1.1", tcp).await?;
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: site.localhost\r\n\r\n";
        tls.write_all(format!("{first}{smuggled}").as_bytes())
            .await?;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut got)).await?;
        let got = String::from_utf8_lossy(&got);
        // An answer, or (hyper with CONNECT) a close without one.
        ensure!(
            got.is_empty() || got.starts_with("HTTP/1.1 "),
            "{first:?}: {got}"
        );
        ensure!(
            !got.contains("smuggled"),
            "{first:?}: a second request was served: {got}"
        );
    }
    alice.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_freed_a_moment_later_is_still_granted() -> Result<()> {
    let s = tunneld_integration_tests::TestServer::start().await?;
    let port = s.range.0 + 7;
    // Another program holds the port while tunnelc asks for it, and lets go shortly after.
    let holder = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let echo = services::echo().await;
    let tunnels = format!("  svc:\n    local: \"{echo}\"\n    remote_port: {port}\n");
    let mut c = tunneld_integration_tests::TestClient::spawn(
        s.client_config(tunneld_integration_tests::ALICE_TOKEN, &tunnels)?,
    );
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(holder);
    });
    let ep = c.endpoint("svc").await?;
    release.await?;
    ensure!(ep.port() == port, "got {ep}");
    c.stop.cancel();
    Ok(())
}
