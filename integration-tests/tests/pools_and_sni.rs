//! Admin routes that share a port by TLS server name (checked with `openssl s_client`), pools
//! of clients with failover when one is killed, and repointing a port without closing it.

use rcgen::{CertificateParams, DnType, KeyPair};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_rustls::TlsAcceptor;
use tunneld_core::tls::{server_config, ClientAuth, ServerIdentity};
use tunneld_integration_tests::process::Proc;
use tunneld_integration_tests::services::{tagged_echo, visit_tagged};
use tunneld_integration_tests::{temp_dir, TestClient, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT};

/// A local TLS server with a self-signed certificate for `name` that greets and closes.
async fn tls_server(name: &str) -> SocketAddr {
    let dir = temp_dir("tls-backend");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("cert");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    let id = ServerIdentity::load(&c, &k).expect("identity");
    let cfg = server_config(&id, &ClientAuth::None, &[]).expect("config");
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let greeting = format!("I am {name}\n");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, greeting) = (acceptor.clone(), greeting.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// `openssl s_client -servername NAME` through `port`: (peer certificate subject line, whether
/// the backend's greeting arrived).
async fn s_client(port: u16, name: &str) -> (String, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", name, "-ign_eof"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl in time")
    .expect("openssl is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let subject = text
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string();
    let greeting = text
        .lines()
        .find(|l| l.starts_with("I am "))
        .unwrap_or("")
        .to_string();
    (subject, greeting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_carries_several_tls_backends_chosen_by_sni() {
    let server = TestServer::start().await.expect("server");
    let (a, b, fallback) = (
        tls_server("a.test").await,
        tls_server("b.test").await,
        tls_server("fallback.test").await,
    );
    let cfg = server
        .client_config_with(
            ALICE_TOKEN,
            "  own:\n    local: 127.0.0.1:9\n",
            &["accept_server_mappings=true".into()],
        )
        .expect("config");
    let mut alice = TestClient::spawn(cfg);
    alice.connected().await.expect("alice up");
    let p = server.range.0 + 7;
    let route = |glob: &str, target: SocketAddr| {
        format!(
            r#"{{"client":"alice","listen_port":{p},"hostname_glob":"{glob}","target":"{target}"}}"#
        )
    };
    let (code, body) = server
        .admin_call(
            "PUT",
            "/tunnels",
            Some(&format!("[{},{}]", route("a.test", a), route("*.test", b))),
        )
        .await;
    assert_eq!(code, 200, "{body}");

    let (subject, greeting) = s_client(p, "a.test").await;
    assert!(
        subject.contains("CN = a.test"),
        "exact name wins: {subject}"
    );
    assert_eq!(greeting, "I am a.test");
    let (subject, greeting) = s_client(p, "x.test").await;
    assert!(subject.contains("CN = b.test"), "glob: {subject}");
    assert_eq!(greeting, "I am b.test");
    // No route for this name and no fallback: the visitor is closed, nothing reaches a backend.
    let (subject, greeting) = s_client(p, "other.org").await;
    assert!(
        subject.is_empty() && greeting.is_empty(),
        "{subject} {greeting}"
    );
    // Plain bytes are not a ClientHello.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", p))
        .await
        .expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, plain.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "non-TLS visitor is closed");

    // Adding `*` (kept port, updated in place) catches the rest.
    let (code, body) = server
        .admin_call(
            "PUT",
            "/tunnels",
            Some(&format!(
                "[{},{},{}]",
                route("a.test", a),
                route("*.test", b),
                route("*", fallback)
            )),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (subject, greeting) = s_client(p, "other.org").await;
    assert!(subject.contains("CN = fallback.test"), "{subject}");
    assert_eq!(greeting, "I am fallback.test");
    let (_, greeting) = s_client(p, "a.test").await;
    assert_eq!(greeting, "I am a.test");

    let m = server.metrics().await;
    assert!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "no_route")]
        ) >= 1.0
    );
    assert!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "not_tls")]
        ) >= 1.0
    );
    assert_eq!(
        m.get(
            "tunneld_pool_streams_total",
            &[("route", &format!("mapping-{p}-a.test"))]
        ),
        2.0
    );
    alice.shutdown().await.expect("stop");
}

/// A real tunnelc process serving tunnel `svc` from `local`, accepting server mappings.
async fn tunnelc(server: &TestServer, token: &str, local: SocketAddr, tag: &str) -> Proc {
    let yaml = format!(
        "{}accept_server_mappings: true\n",
        server.client_yaml(token, &format!("  svc:\n    local: {local}\n"))
    );
    let file = server.dir.join(format!("{tag}.yaml"));
    std::fs::write(&file, yaml).expect("write");
    let mut p = Proc::spawn(
        "tunnelc",
        &["--config", &file.display().to_string()],
        server.dir.join(format!("{tag}.err")),
    )
    .expect("spawn tunnelc");
    p.line_starting("connected")
        .await
        .expect("tunnelc connects");
    p
}

struct Visit {
    after_detection: bool,
    after_mark: bool,
    result: anyhow::Result<String>,
}

/// Runs `total` visits (more if the mark comes late) with `workers` in parallel. `mark`
/// flips when the caller changes something; each visit records whether it started after that
/// and after alice's session was gone.
async fn visitors(
    server: &TestServer,
    port: u16,
    total: usize,
    workers: usize,
    started: Arc<AtomicUsize>,
    mark: Arc<AtomicBool>,
) -> Vec<Visit> {
    let hub = server.running.hub.clone();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (hub, started, mark) = (hub.clone(), started.clone(), mark.clone());
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<Visit> = Vec::new();
            loop {
                let i = started.fetch_add(1, Ordering::SeqCst);
                // Past `total`, a worker goes on until it made a visit after the mark (a
                // change that is slow under load must still see visitors after it), up to
                // ten times `total` in all.
                let saw_mark = out.iter().any(|v| v.after_mark);
                if i >= total && (saw_mark || i >= total * 10) {
                    return out;
                }
                let after_mark = mark.load(Ordering::SeqCst);
                let after_detection = !hub.sessions().iter().any(|s| s.info.client_id == "alice");
                let result =
                    visit_tagged(SocketAddr::from(([127, 0, 0, 1], port)), 1024, i as u64).await;
                out.push(Visit {
                    after_detection,
                    after_mark,
                    result,
                });
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_fail_over_when_a_member_dies_and_ports_repoint_without_closing() {
    let server = TestServer::start().await.expect("server");
    let (svc_a, svc_b) = (tagged_echo("alice-svc").await, tagged_echo("bob-svc").await);
    let mut alice = tunnelc(&server, ALICE_TOKEN, svc_a, "alice").await;
    let _bob = tunnelc(&server, BOB_TOKEN, svc_b, "bob").await;
    let p = server.range.0 + 9;
    let one =
        |client: &str| format!(r#"[{{"client":"{client}","listen_port":{p},"target":"svc"}}]"#);
    let (code, body) = server
        .admin_call("PUT", "/tunnels", Some(&one("alice")))
        .await;
    assert_eq!(code, 200, "{body}");

    // Hot repoint: visitors keep connecting while the port moves from alice to bob.
    let started = Arc::new(AtomicUsize::new(0));
    let mark = Arc::new(AtomicBool::new(false));
    let load = {
        let (started, mark) = (started.clone(), mark.clone());
        let server = &server;
        async move { visitors(server, p, 300, 4, started, mark).await }
    };
    let repoint = async {
        while started.load(Ordering::SeqCst) < 100 {
            tokio::task::yield_now().await;
        }
        let (code, body) = server
            .admin_call("PUT", "/tunnels", Some(&one("bob")))
            .await;
        mark.store(true, Ordering::SeqCst);
        (code, body)
    };
    let (visits, (code, body)) = tokio::join!(load, repoint);
    assert_eq!(code, 200, "{body}");
    let failed: Vec<_> = visits.iter().filter(|v| v.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "no visitor fails across a repoint: {:?}",
        failed.first().map(|v| v.result.as_ref().err())
    );
    let late: Vec<&String> = visits
        .iter()
        .filter(|v| v.after_mark)
        .filter_map(|v| v.result.as_ref().ok())
        .collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|t| *t == "bob-svc"),
        "after the PUT only bob serves"
    );
    // `/tunnels` names the port's owner as it is now.
    let (code, body) = server.admin_call("GET", "/tunnels", None).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let route = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["tunnel"] == format!("mapping-{p}"))
        .expect("the admin port's route");
    assert_eq!(route["owner"], "bob", "{body}");

    // A pool of both, then alice is killed in the middle of 500 visitor connections.
    let pool = format!(r#"[{{"clients":["alice","bob"],"listen_port":{p},"target":"svc"}}]"#);
    let (code, body) = server.admin_call("PUT", "/tunnels", Some(&pool)).await;
    assert_eq!(code, 200, "{body}");
    let before = server.metrics().await;
    let started = Arc::new(AtomicUsize::new(0));
    let mark = Arc::new(AtomicBool::new(false));
    let load = {
        let (started, mark) = (started.clone(), mark.clone());
        let server = &server;
        async move { visitors(server, p, 500, 4, started, mark).await }
    };
    let kill = async {
        while started.load(Ordering::SeqCst) < 100 {
            tokio::task::yield_now().await;
        }
        alice.signal("KILL").expect("kill -9 alice");
        mark.store(true, Ordering::SeqCst);
    };
    let (visits, ()) = tokio::join!(load, kill);
    let before_kill: Vec<&String> = visits
        .iter()
        .filter(|v| !v.after_mark)
        .filter_map(|v| v.result.as_ref().ok())
        .collect();
    assert!(
        before_kill.iter().any(|t| *t == "alice-svc")
            && before_kill.iter().any(|t| *t == "bob-svc"),
        "round robin over both members before the kill"
    );
    let detected: Vec<&Visit> = visits.iter().filter(|v| v.after_detection).collect();
    assert!(
        detected.len() > 100,
        "most visits start after the drop is detected ({})",
        detected.len()
    );
    for v in &detected {
        match &v.result {
            Ok(tag) => assert_eq!(tag, "bob-svc"),
            Err(e) => panic!("a visitor failed after the drop was detected: {e}"),
        }
    }
    let lost = visits.iter().filter(|v| v.result.is_err()).count();
    eprintln!("visits: 500, failed while alice was dying: {lost}");

    let after = server.metrics().await;
    let route = format!("mapping-{p}");
    let served = |m: &tunneld_integration_tests::metrics::Samples, c: &str| {
        m.get(
            "tunneld_pool_streams_total",
            &[("route", &route), ("client", c)],
        )
    };
    assert!(served(&after, "bob") - served(&before, "bob") > 250.0);
    assert!(served(&after, "alice") - served(&before, "alice") < 250.0);
    assert!(
        after.get(
            "tunneld_pool_failovers_total",
            &[("route", &route), ("reason", "offline")]
        ) >= 1.0,
        "the switch shows in the metrics"
    );
    assert_eq!(
        after.get("tunneld_sessions_active", &[("transport", "edge")]),
        1.0
    );
    let _ = alice.wait().await;
}
