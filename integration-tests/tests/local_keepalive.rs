//! Visitor requests share kept-alive connections to local HTTP services, over every
//! transport: tunneld keeps the tunnel streams (yamux streams, websocket conversations,
//! h2-reverse `CONNECT` streams), each spliced by tunnelc to one local connection. Twenty visitors one after another reach the service over one connection; a
//! tunnel that writes a PROXY header, or sets `reuse_connections: false`, gets a connection
//! per visitor; a service that closes after each answer still serves every visitor; each
//! tunnel keeps its own; idle kept connections are closed after a few seconds. A service that
//! writes an answer nobody asked for poisons no later visitor, and a flood of one tunnel
//! leaves a neighbour's kept streams answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tunneld_integration_tests::attack::{self, Via};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::{services, TestClient, TestServer};

/// Connections a [`counting`] service accepted, and those its client closed.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// An HTTP/1.1 service answering `tag` to every GET, counting connections; with `close`, it
/// answers `Connection: close` and closes after each answer.
async fn counting(tag: &'static str, close: bool) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let n = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.accepted.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                n.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    buf.drain(..end);
                    let conn = if close { "close" } else { "keep-alive" };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// One visitor request to `name.localhost` through the web frontend: the body.
async fn visit(s: &TestServer, name: &str) -> String {
    visit_with(s, name, &[]).await
}

/// [`visit`] with more curl arguments (headers).
async fn visit_with(s: &TestServer, name: &str, extra: &[&str]) -> String {
    let port = s.web().port();
    let host = format!("{name}.localhost");
    let ca = s.ca_file().display().to_string();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    let (st, body) = curl(&args).await.expect("curl");
    assert!(st.success(), "{name}: {st} {body}");
    body
}

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
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    buf.drain(..end);
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

/// One echo visitor of `ep` that got its stream (tried again, for at most 1 s, while the
/// session's slots are all taken): the connection, held open.
async fn echo_visitor(ep: SocketAddr, seed: u64) -> anyhow::Result<tokio::net::TcpStream> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let mut c = tokio::net::TcpStream::connect(ep).await?;
        let tried = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            attack::echo_on(&mut c, seed),
        )
        .await;
        match tried {
            Ok(Ok(())) => return Ok(c),
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("no echo within 500 ms"),
        }
    }
}

/// A session over `via` capped at 8 streams whose http tunnel `web` just served eight
/// visitors at once (leaving idle kept streams), beside a tcp tunnel `echo` and an http
/// tunnel `own` that keeps no stream (`reuse_connections: false`): the server, the client
/// and the echo tunnel's endpoint.
async fn kept_streams_left(via: Via) -> (TestServer, TestClient, SocketAddr) {
    let s = attack::server(false, &[]).await.expect("server");
    let web = services::slow_http(std::time::Duration::from_millis(100)).await;
    let echo = services::echo().await;
    let (own, _) = counting("own", false).await;
    let tunnels = format!(
        "{}{}{}    reuse_connections: false\n",
        attack::http_tunnel("web", web),
        attack::tcp_tunnel("echo", echo),
        attack::http_tunnel("own", own),
    );
    let token = tunneld_integration_tests::ALICE_TOKEN;
    let cfg = match via {
        Via::H2Reverse => s.h2_client_config_with(token, &tunnels, &["h2.max_streams=8".into()]),
        _ => s.client_config_with(token, &tunnels, &["yamux.max_streams=8".into()]),
    }
    .expect("cfg");
    let mut alice = TestClient::spawn(cfg);
    let got = alice.connected().await.expect("alice");
    let ep = tunneld_integration_tests::endpoint_of(&got, "echo").expect("echo endpoint");
    let visits: Vec<_> = (0..8).map(|_| visit(&s, "web")).collect();
    for body in futures::future::join_all(visits).await {
        assert_eq!(body, "ok");
    }
    (s, alice, ep)
}

/// Idle kept streams never keep a neighbour out: right after eight visitors at once of an
/// http tunnel on a session capped at 8 streams (its idle streams are kept for 4 s, at most
/// half the cap, half of that for one tunnel), eight visitors of a tcp neighbour of the
/// same tunnelc are all served at once, the last in the place of an idle kept stream, which
/// closes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_streams_leave_a_neighbour_room_in_the_session() {
    for via in [Via::Yamux, Via::H2Reverse] {
        neighbour_room(via).await;
    }
}

async fn neighbour_room(via: Via) {
    let (s, alice, ep) = kept_streams_left(via).await;
    let mut held = Vec::new();
    for seed in 0..8 {
        let c = echo_visitor(ep, seed).await.unwrap_or_else(|e| {
            panic!(
                "{via:?}: echo visitor {seed} with {} held: {e:#}",
                held.len()
            )
        });
        held.push(c);
    }
    let m = s.metrics().await;
    let kept = m.get(
        "tunneld_kept_streams_total",
        &[("transport", via.label()), ("result", "opened")],
    );
    assert!(
        kept >= 1.0,
        "{via:?}: the http visitors went on kept streams: {kept}"
    );
    let evicted = m.get(
        "tunneld_kept_streams_total",
        &[("transport", via.label()), ("result", "evicted")],
    );
    assert!(
        evicted >= 1.0,
        "{via:?}: the last neighbour took the place of an idle kept stream: {evicted}"
    );
    drop(held);
    alice.shutdown().await.expect("alice stops");
}

/// The same with the neighbour's eight visitors arriving at once: those refused for want of
/// a stream race each other for the places idle kept streams leave, and every one is
/// served (each within a second, tries included); once they leave, the http tunnel answers
/// again on the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_neighbours_all_get_places_of_kept_streams() {
    for via in [Via::Yamux, Via::H2Reverse] {
        concurrent_neighbours(via).await;
    }
}

async fn concurrent_neighbours(via: Via) {
    let (s, alice, ep) = kept_streams_left(via).await;
    let neighbours: Vec<_> = (0..8).map(|seed| echo_visitor(ep, seed)).collect();
    let held: Vec<_> = futures::future::join_all(neighbours)
        .await
        .into_iter()
        .enumerate()
        .map(|(seed, c)| c.unwrap_or_else(|e| panic!("{via:?}: echo visitor {seed}: {e:#}")))
        .collect();
    let m = s.metrics().await;
    let evicted = m.get(
        "tunneld_kept_streams_total",
        &[("transport", via.label()), ("result", "evicted")],
    );
    assert!(
        evicted >= 1.0,
        "{via:?}: refused neighbours took the places of idle kept streams: {evicted}"
    );
    drop(held);
    // Their streams close as tunneld sees each visitor go: until then the session is full.
    let deadline = tokio::time::Instant::now() + tunneld_integration_tests::WAIT;
    loop {
        let body = visit(&s, "web").await;
        if body == "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{via:?}: the http tunnel answers again: {body}"
        );
    }
    alice.shutdown().await.expect("alice stops");
}

/// A request that may not go on a kept stream (its tunnel says `reuse_connections: false`)
/// takes the place of an idle kept stream too: with six echo visitors held and the idle kept
/// streams, every stream of the session is in use, and the request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_kept_nowhere_takes_the_place_of_an_idle_stream() {
    for via in [Via::Yamux, Via::H2Reverse] {
        let (s, alice, ep) = kept_streams_left(via).await;
        let mut held = Vec::new();
        for seed in 0..6 {
            let c = echo_visitor(ep, seed)
                .await
                .unwrap_or_else(|e| panic!("{via:?}: echo visitor {seed}: {e:#}"));
            held.push(c);
        }
        assert_eq!(visit(&s, "own").await, "own", "{via:?}");
        let evicted = s.metrics().await.get(
            "tunneld_kept_streams_total",
            &[("transport", via.label()), ("result", "evicted")],
        );
        assert!(
            evicted >= 1.0,
            "{via:?}: an idle kept stream gave its place: {evicted}"
        );
        drop(held);
        alice.shutdown().await.expect("alice stops");
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
