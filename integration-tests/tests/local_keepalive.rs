//! Visitor requests share kept-alive connections to local HTTP services, over every
//! transport: tunneld keeps the tunnel streams (yamux streams, websocket conversations,
//! h2-reverse `CONNECT` streams), each spliced by tunnelc to one local connection. Twenty
//! visitors one after another reach the service over one connection; a tunnel that writes a PROXY header, or sets `reuse_connections: false`, gets a connection
//! per visitor; a service that closes after each answer still serves every visitor; each
//! tunnel keeps its own; idle kept connections are closed after a few seconds. A service that
//! writes an answer nobody asked for poisons no later visitor, and a flood of one tunnel
//! leaves a neighbour's kept streams answering, and so does a service whose answers are
//! hostile (endless heads, chunk extensions, bodies). (Idle kept streams giving their places:
//! `kept_stream_eviction.rs`.)

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tunneld_integration_tests::attack::{self, Via};
use tunneld_integration_tests::kept::{counting, next_head, visit, visit_with};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::{services, TestClient, TestServer};

/// The scenario of the module's doc over `via`.
async fn kept_connections(via: Via) {
    let s = attack::server(via == Via::Websocket, &[])
        .await
        .expect("server");
    let (kept, kept_n) = counting("kept", false).await;
    let (proxied, proxied_n) = counting("proxied", false).await;
    let (closing, closing_n) = counting("closing", true).await;
    let (own, own_n) = counting("own", false).await;
    let tunnels = format!(
        "  kept:\n    type: http\n    local: \"{kept}\"\n    subdomain: kept\n  proxied:\n    type: http\n    local: \"{proxied}\"\n    subdomain: proxied\n    proxy_protocol: v1\n  closing:\n    type: http\n    local: \"{closing}\"\n    subdomain: closing\n  own:\n    type: http\n    local: \"{own}\"\n    subdomain: own\n    reuse_connections: false\n"
    );
    let mut alice = TestClient::spawn(attack::client_config(&s, via, &tunnels).expect("cfg"));
    alice.connected().await.expect("alice");

    for _ in 0..20 {
        assert_eq!(visit(&s, "kept").await, "kept");
    }
    let n = kept_n.accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "{via:?}: 20 visitors one after another took {n} connections to the service"
    );
    // A PROXY header is per visitor: never shared.
    for _ in 0..5 {
        assert_eq!(visit(&s, "proxied").await, "proxied");
    }
    assert_eq!(proxied_n.accepted.load(Ordering::SeqCst), 5);
    // A service that closes after each answer: every visitor is still served.
    for _ in 0..5 {
        assert_eq!(visit(&s, "closing").await, "closing");
    }
    assert_eq!(closing_n.accepted.load(Ordering::SeqCst), 5);
    // Opted out: a connection per request.
    for _ in 0..3 {
        assert_eq!(visit(&s, "own").await, "own");
    }
    assert_eq!(own_n.accepted.load(Ordering::SeqCst), 3);
    // The first tunnel's kept connection still serves it, untouched by its neighbours.
    assert_eq!(visit(&s, "kept").await, "kept");
    assert!(kept_n.accepted.load(Ordering::SeqCst) <= 2);
    // tunneld kept the streams: the counter says so.
    let m = s.metrics().await;
    let reused = m.get(
        "tunneld_kept_streams_total",
        &[("transport", via.label()), ("result", "reused")],
    );
    assert!(reused >= 15.0, "{via:?}: {reused} requests on kept streams");
    // Idle, it is closed a few seconds later (idle connections are kept 4 s).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while kept_n.closed.load(Ordering::SeqCst) < kept_n.accepted.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{via:?}: an idle kept connection stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    alice.shutdown().await.expect("alice stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_share_kept_streams_over_h2_reverse() {
    kept_connections(Via::H2Reverse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_share_kept_streams_over_yamux() {
    kept_connections(Via::Yamux).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_share_kept_streams_over_websocket() {
    kept_connections(Via::Websocket).await
}

/// A service that answers `ok-<connection>-<request>`, and after the first answer on its first
/// connection writes a second, unasked-for answer `EVIL` on the same connection.
async fn smuggling() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            let first = n;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                while next_head(&mut s, &mut buf).await.is_some() {
                    answered += 1;
                    let tag = format!("ok-{first}-{answered}");
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if first == 1 && answered == 1 {
                        answer.push_str("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
                    }
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A service that writes an extra answer after its first must not hand it to the next
/// visitor of a kept stream: every visitor gets an answer of its own, over yamux and
/// h2-reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_for_answer_poisons_no_later_visitor() {
    for via in [Via::Yamux, Via::H2Reverse] {
        unasked_for_answer(via).await;
    }
}

async fn unasked_for_answer(via: Via) {
    let s = attack::server(false, &[]).await.expect("server");
    let liar = smuggling().await;
    let tunnels = attack::http_tunnel("liar", liar);
    let mut alice = TestClient::spawn(attack::client_config(&s, via, &tunnels).expect("cfg"));
    alice.connected().await.expect("alice");
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(visit(&s, "liar").await);
    }
    assert!(
        bodies.iter().all(|b| b.starts_with("ok-")),
        "{via:?}: a visitor got an answer it did not ask for: {bodies:?}"
    );
    // The poisoned connection was dropped; the next one was kept and reused.
    assert!(
        bodies
            .iter()
            .any(|b| b.starts_with("ok-2-") && b != "ok-2-1"),
        "{via:?}: no later visitor reused a kept stream: {bodies:?}"
    );
    alice.shutdown().await.expect("alice stops");
}

/// One visitor of `slow.localhost` from 127.0.0.2 (its own connection): the status code.
async fn slow_visit(s: &TestServer) -> anyhow::Result<u16> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.2:0".parse()?)?;
    let tcp = sock.connect(s.web()).await?;
    let tls = attack::tls_to(s, "slow.localhost", b"http/1.1", tcp).await?;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: slow.localhost:{}\r\nConnection: close\r\n\r\n",
        s.web().port()
    );
    let line = attack::status_line(tls, req.into_bytes(), FLOOD_WAIT).await?;
    attack::status_code(&line)
}

/// How long one flood visitor may wait for its answer.
const FLOOD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// 40 visitors at a time, for 7 s, on a tunnel whose service takes 300 ms per answer (its
/// kept streams fill their per-tunnel share), while a neighbour tunnel of the same tunnelc
/// keeps answering on its own kept streams.
async fn flooded_neighbour(via: Via) {
    let s = std::sync::Arc::new(
        attack::server(via == Via::Websocket, &[])
            .await
            .expect("server"),
    );
    let slow = services::slow_http(std::time::Duration::from_millis(300)).await;
    let nb = services::http_body(attack::NB_BODY).await;
    let tunnels = attack::http_tunnels(&[("slow", slow), ("nb", nb)]);
    let (mut alice, _) = attack::alice(&s, via, &tunnels).await.expect("alice");
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(attack::NB_BODY)));
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(7);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let s = s.clone();
        flood.spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while tokio::time::Instant::now() < until {
                match slow_visit(&s).await {
                    Ok(200) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = flood.join_next().await {
        let (o, f) = r.expect("flood task");
        ok += o;
        failed.extend(f);
    }
    let report = probe.finish().await;
    report
        .assert_healthy(&format!("neighbour of a flooded tunnel over {via:?}"))
        .expect("neighbour");
    assert!(
        failed.is_empty() && ok > 200,
        "{via:?}: the flood itself: {ok} answered, failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    let m = s.metrics().await;
    let reused = m.get(
        "tunneld_kept_streams_total",
        &[("transport", via.label()), ("result", "reused")],
    );
    assert!(
        reused > 100.0,
        "{via:?}: only {reused} requests reused a kept stream"
    );
    eprintln!(
        "{via:?}: neighbour {report}; flood {ok} answered; {reused} requests on kept streams"
    );
    attack::assert_no_reconnect(&mut alice).expect("one session throughout");
    alice.shutdown().await.expect("alice stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tunnel_leaves_its_neighbour_answering_on_kept_streams() {
    flooded_neighbour(Via::Yamux).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tunnel_leaves_its_neighbour_answering_on_kept_h2_streams() {
    flooded_neighbour(Via::H2Reverse).await
}

/// One visitor of `hostile.localhost{path}` from 127.0.0.2: the status line, or why none came.
async fn hostile_visit(s: &TestServer, path: &str) -> anyhow::Result<String> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.2:0".parse()?)?;
    let tcp = sock.connect(s.web()).await?;
    let tls = attack::tls_to(s, "hostile.localhost", b"http/1.1", tcp).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: hostile.localhost:{}\r\nConnection: close\r\n\r\n",
        s.web().port()
    );
    attack::status_line(tls, req.into_bytes(), FLOOD_WAIT).await
}

/// A service that answers with endless chunk extensions, a head without end, malformed
/// chunks and a body that never ends, to 16 visitors at a time for 7 s: tunneld refuses or
/// cuts those answers (bounded work for each), a neighbour tunnel of the same tunnelc keeps
/// answering on its kept streams, and the hostile tunnel still answers a plain request.
async fn hostile_service(via: Via) {
    let s = std::sync::Arc::new(attack::server(false, &[]).await.expect("server"));
    let bad = tunneld_integration_tests::kept::hostile().await;
    let nb = services::http_body(attack::NB_BODY).await;
    let tunnels = attack::http_tunnels(&[("hostile", bad), ("nb", nb)]);
    let (mut alice, _) = attack::alice(&s, via, &tunnels).await.expect("alice");
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(attack::NB_BODY)));
    // Long enough for the probe's 100 requests (one each 50 ms) with room to spare.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(7);
    let mut attackers = tokio::task::JoinSet::new();
    for path in ["/ext", "/head", "/bad", "/trickle"].repeat(4) {
        let s = s.clone();
        attackers.spawn(async move {
            let mut lines = Vec::new();
            while tokio::time::Instant::now() < until {
                lines.push(hostile_visit(&s, path).await.map_err(|e| e.to_string()));
            }
            (path, lines)
        });
    }
    let mut refused_heads = 0;
    while let Some(r) = attackers.join_next().await {
        let (path, lines) = r.expect("attacker");
        assert!(!lines.is_empty(), "{via:?}: no visit of {path} ended");
        if path == "/head" {
            refused_heads += lines
                .iter()
                .filter(|l| matches!(l, Ok(l) if l.contains(" 502 ")))
                .count();
        }
    }
    assert!(
        refused_heads > 0,
        "{via:?}: no endless head was refused with a 502"
    );
    let report = probe.finish().await;
    report
        .assert_healthy(&format!("neighbour of a hostile service over {via:?}"))
        .expect("neighbour");
    let line = hostile_visit(&s, "/plain").await.expect("a plain request");
    assert!(
        line.contains(" 200 "),
        "{via:?}: the hostile tunnel after: {line}"
    );
    eprintln!("{via:?}: neighbour {report}; {refused_heads} endless heads refused");
    attack::assert_no_reconnect(&mut alice).expect("one session throughout");
    alice.shutdown().await.expect("alice stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_service_leaves_its_neighbour_answering() {
    for via in [Via::Yamux, Via::H2Reverse] {
        hostile_service(via).await;
    }
}

/// A connection-bound login (NTLM, Negotiate) must never pass to another visitor: requests
/// that carry one are not sent on kept connections, nor leave theirs behind, over every
/// transport; plain requests of the same tunnel still share theirs.
async fn logins_are_not_shared(via: Via) {
    let s = attack::server(via == Via::Websocket, &[])
        .await
        .expect("server");
    let (svc, n) = counting("svc", false).await;
    let tunnels = attack::http_tunnel("svc", svc);
    let mut alice = TestClient::spawn(attack::client_config(&s, via, &tunnels).expect("cfg"));
    alice.connected().await.expect("alice");
    for auth in [
        "NTLM TlRMTVNTUAABAAAA",
        "Negotiate YIIFzwYGKwYBBQUCoIIF",
        "ntlm abc",
    ] {
        let header = format!("Authorization: {auth}");
        assert_eq!(visit_with(&s, "svc", &["-H", &header]).await, "svc");
    }
    assert_eq!(
        n.accepted.load(Ordering::SeqCst),
        3,
        "{via:?}: each login took a connection of its own"
    );
    for _ in 0..5 {
        assert_eq!(visit(&s, "svc").await, "svc");
    }
    assert!(
        n.accepted.load(Ordering::SeqCst) <= 5,
        "{via:?}: plain visitors did not share their connections"
    );
    alice.shutdown().await.expect("alice stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_bound_logins_are_never_shared() {
    for via in [Via::H2Reverse, Via::Yamux, Via::Websocket] {
        logins_are_not_shared(via).await;
    }
}
