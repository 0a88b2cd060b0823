//! `tunnelc http` with curl visitors, and backpressure from a visitor that stops reading.

use crate::common::*;

#[tokio::test]
async fn tunnelc_http_quick_mode() {
    let s = server().await;
    let port = ws_port(&s);
    let local = http_echo("quick").await;
    let server_url = format!("http://localhost:{port}");
    let target = local.to_string();
    let (mut p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--token",
            ALICE_TOKEN,
            "-s",
            "quick",
        ],
        "ws-quick",
    )
    .await;
    assert_eq!(url, format!("http://quick.localhost:{port}"));
    quick_mode_checks(&url, local, None).await;
    // The same name over the https-subdomain frontend.
    let web = s.web().port();
    let ca = s.ca_file().display().to_string();
    let (code, body) = visit(
        &format!("https://quick.localhost:{web}/tls"),
        &["--cacert", &ca],
    )
    .await
    .expect("visit");
    assert_eq!(code, 200, "{body}");
    // Quick mode serves the request inspector on its own (4040, or the next free port):
    // it recorded the visit as the local service received it (Host rewritten).
    let inspector = p
        .line_starting("inspector: ")
        .await
        .expect("inspector line");
    let api = format!(
        "{}/api/requests",
        inspector.trim_start_matches("inspector: ")
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, list) = curl(&[&api]).await.expect("curl");
        let list: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        let tls = list["requests"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["target"] == "/tls"));
        if let Some(r) = tls {
            let headers = r["request_headers"].to_string();
            assert!(
                headers.contains(&local.to_string()),
                "Host rewritten: {headers}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {list}");
        tokio::task::yield_now().await;
    }
    // A second client cannot take the name: the error names it.
    let mut other = Proc::spawn(
        "tunnelc",
        &[
            "http",
            &target,
            "--server",
            &server_url,
            "--token",
            BOB_TOKEN,
            "-s",
            "quick",
        ],
        temp_dir("ws-quick-2").join("stderr"),
    )
    .expect("tunnelc");
    // Its only tunnel refused, it says so in one line and stops.
    let status = tokio::time::timeout(WAIT, other.wait())
        .await
        .expect("gives up in time")
        .expect("status");
    assert!(!status.success());
    let err = other.stderr();
    assert!(
        err.contains("refused every tunnel: http: name `quick` is held by another client"),
        "{err}"
    );
    // A random name survives a reconnect: the session is cut, tunnelc comes back with it.
    let (mut r, random_url) = tunnelc_http(
        &[&target, "--server", &server_url, "--auth-key", KEY],
        "ws-quick-random",
    )
    .await;
    let name = random_url
        .strip_prefix("http://")
        .and_then(|u| u.split('.').next())
        .expect("name")
        .to_string();
    assert_eq!(name.len(), 8, "{random_url}");
    let (code, _) = visit(&format!("{random_url}/"), &[]).await.expect("visit");
    assert_eq!(code, 200);
    for sess in s.running.hub.sessions() {
        if sess.info.client_id == format!("tpot:{name}") {
            sess.closed.cancel();
        }
    }
    r.line_starting("connected").await.expect("reconnected");
    let again = r.line_starting("http").await.expect("url");
    assert_eq!(again, random_url);
    p.signal("TERM").expect("term");
    let _ = p.wait().await;
}

#[tokio::test]
async fn a_visitor_that_stops_reading_stalls_the_service_not_memory() {
    let s = server().await;
    let port = ws_port(&s);
    // A local service that streams forever, counting what it managed to write.
    let written = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = l.local_addr().expect("addr");
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = c.read(&mut head).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .await;
                let block = vec![b'z'; 64 << 10];
                while c.write_all(&block).await.is_ok() {
                    w.fetch_add(block.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let target = local.to_string();
    let server_url = format!("http://localhost:{port}");
    let (_p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--token",
            ALICE_TOKEN,
            "-s",
            "stream",
            "--no-host-rewrite",
        ],
        "ws-stall",
    )
    .await;
    assert_eq!(url, format!("http://stream.localhost:{port}"));
    let mut v = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("visitor");
    v.write_all(format!("GET /big HTTP/1.1\r\nHost: stream.localhost:{port}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut first = [0u8; 4096];
    let n = v.read(&mut first).await.expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // The visitor reads no more. Wait until the service is stuck (no progress for 1 s).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = written.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service never stalled ({now} bytes)"
        );
    }
    // Everything in between (socket buffers, conversation buffers, queues) is bounded.
    assert!(
        last < 48 << 20,
        "the service wrote {last} bytes into a stalled tunnel"
    );
    let m = s.metrics().await;
    assert!(m.get("tunneld_ws_pauses_total", &[("transport", "ws")]) >= 1.0);
    // Reading again drains it and the stream goes on.
    let mut more = vec![0u8; 1 << 20];
    v.read_exact(&mut more).await.expect("resumes");
    drop(v);
}
