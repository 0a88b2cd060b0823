//! Idle kept-alive streams never keep anyone out of a session: on a session capped at 8
//! streams whose http tunnel left idle kept streams, visitors of a tcp neighbour and requests
//! that may not be kept (`reuse_connections: false`) take the places of idle streams, and an
//! http neighbour's streams are kept in the places of the busy tunnel's streams over its
//! share, over yamux, h2-reverse and websocket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tunneld_integration_tests::attack::{self, Via};
use tunneld_integration_tests::kept::{counting, next_head, visit};
use tunneld_integration_tests::{services, TestClient, TestServer};

/// The transports whose sessions keep streams, each test runs over.
const EVERY: [Via; 3] = [Via::Yamux, Via::H2Reverse, Via::Websocket];

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

/// A tunnelc with `tunnels` connected to `s` over `via`, its session capped at 8 streams:
/// the client, and what it printed once connected.
async fn capped_at_8(
    s: &TestServer,
    via: Via,
    tunnels: &str,
) -> (TestClient, Vec<tunneld_core::proto::TunnelStatus>) {
    let cap = match via {
        Via::H2Reverse => "h2.max_streams=8",
        Via::Yamux => "yamux.max_streams=8",
        Via::Websocket => "max_conversations=8",
    };
    let cfg = attack::client_config_with(s, via, tunnels, &[cap.into()]).expect("cfg");
    let mut alice = TestClient::spawn(cfg);
    let got = alice.connected().await.expect("alice");
    (alice, got)
}

/// A session over `via` capped at 8 streams whose http tunnel `web` just served eight
/// visitors at once (leaving idle kept streams), beside a tcp tunnel `echo` and an http
/// tunnel `own` that keeps no stream (`reuse_connections: false`): the server, the client
/// and the echo tunnel's endpoint.
async fn kept_streams_left(via: Via) -> (TestServer, TestClient, SocketAddr) {
    let s = attack::server(via == Via::Websocket, &[])
        .await
        .expect("server");
    let web = services::slow_http(std::time::Duration::from_millis(100)).await;
    let echo = services::echo().await;
    let (own, _) = counting("own", false).await;
    let tunnels = format!(
        "{}{}{}    reuse_connections: false\n",
        attack::http_tunnel("web", web),
        attack::tcp_tunnel("echo", echo),
        attack::http_tunnel("own", own),
    );
    let (alice, got) = capped_at_8(&s, via, &tunnels).await;
    let ep = tunneld_integration_tests::endpoint_of(&got, "echo").expect("echo endpoint");
    let visits: Vec<_> = (0..8).map(|_| visit(&s, "web")).collect();
    for body in futures::future::join_all(visits).await {
        assert_eq!(body, "ok");
    }
    (s, alice, ep)
}

/// Idle kept streams never keep a neighbour out: right after eight visitors at once of an
/// http tunnel on a session capped at 8 streams (its idle streams are kept for 4 s, at most
/// half the cap, which one tunnel may fill), eight visitors of a tcp neighbour of the
/// same tunnelc are all served at once, the last in the place of an idle kept stream, which
/// closes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_streams_leave_a_neighbour_room_in_the_session() {
    for via in EVERY {
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
    for via in EVERY {
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
    for via in EVERY {
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

/// An HTTP/1.1 keep-alive service that answers `busy` to each request once `n` requests are
/// in flight at once (or after `WAIT`, so a slow start fails the test's checks instead of
/// hanging it).
async fn answers_when_all_arrived(n: usize) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while next_head(&mut s, &mut buf).await.is_some() {
                    arrived.add_permits(1);
                    let all = arrived.acquire_many(n as u32);
                    if let Ok(Ok(p)) =
                        tokio::time::timeout(tunneld_integration_tests::WAIT, all).await
                    {
                        // Each of the `n` takes all and gives them back for the others.
                        drop(p);
                    }
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbusy";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A tunnel within its share keeps its streams although a busy neighbour filled the
/// session's idle streams: on a session capped at 8 streams (4 idle kept streams at most,
/// a share of 2 for each tunnel), four requests at once leave the busy tunnel 4 idle
/// streams, past its share; the neighbour's next request then opens a stream, which is
/// kept in the place of the busy tunnel's oldest (`displaced`, no visitor refused), and its
/// request after that goes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_within_its_share_displaces_a_busy_tunnels_idle_streams() {
    for via in EVERY {
        let s = attack::server(via == Via::Websocket, &[])
            .await
            .expect("server");
        let busy = answers_when_all_arrived(4).await;
        let (calm, counts) = counting("calm", false).await;
        let tunnels = format!(
            "{}{}",
            attack::http_tunnel("busy", busy),
            attack::http_tunnel("calm", calm),
        );
        let (alice, _) = capped_at_8(&s, via, &tunnels).await;
        let visits: Vec<_> = (0..4).map(|_| visit(&s, "busy")).collect();
        for body in futures::future::join_all(visits).await {
            assert_eq!(body, "busy", "{via:?}");
        }
        let series = |m: &tunneld_integration_tests::metrics::Samples, result: &str| {
            m.get(
                "tunneld_kept_streams_total",
                &[("transport", via.label()), ("result", result)],
            )
        };
        let m = s.metrics().await;
        assert_eq!(series(&m, "opened"), 4.0, "{via:?}: four streams at once");
        assert_eq!(visit(&s, "calm").await, "calm", "{via:?}");
        let m = s.metrics().await;
        assert_eq!(series(&m, "evicted"), 0.0, "{via:?}: nobody was refused");
        assert_eq!(
            series(&m, "displaced"),
            1.0,
            "{via:?}: the calm tunnel's stream took the place of one of the busy tunnel's"
        );
        assert_eq!(visit(&s, "calm").await, "calm", "{via:?}");
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            1,
            "{via:?}: the calm tunnel's second request went on its kept stream"
        );
        alice.shutdown().await.expect("alice stops");
    }
}

/// Two busy tunnels at their share (2 each: the session keeps 4 idle streams) fill the
/// session's idle streams; a third tunnel's share is then a third of them (1), so its stream
/// is kept in the place of one of theirs and its next request goes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_tunnels_at_their_share_still_leave_a_third_its_kept_stream() {
    for via in EVERY {
        let s = attack::server(via == Via::Websocket, &[])
            .await
            .expect("server");
        let (one, two) = (
            answers_when_all_arrived(2).await,
            answers_when_all_arrived(2).await,
        );
        let (calm, counts) = counting("calm", false).await;
        let tunnels = format!(
            "{}{}{}",
            attack::http_tunnel("one", one),
            attack::http_tunnel("two", two),
            attack::http_tunnel("calm", calm),
        );
        let (alice, _) = capped_at_8(&s, via, &tunnels).await;
        for name in ["one", "two"] {
            let visits: Vec<_> = (0..2).map(|_| visit(&s, name)).collect();
            for body in futures::future::join_all(visits).await {
                assert_eq!(body, "busy", "{via:?}");
            }
        }
        assert_eq!(visit(&s, "calm").await, "calm", "{via:?}");
        assert_eq!(visit(&s, "calm").await, "calm", "{via:?}");
        let m = s.metrics().await;
        let series = |result: &str| {
            m.get(
                "tunneld_kept_streams_total",
                &[("transport", via.label()), ("result", result)],
            )
        };
        assert_eq!(series("displaced"), 1.0, "{via:?}");
        assert_eq!(series("evicted"), 0.0, "{via:?}: nobody was refused");
        assert_eq!(
            counts.accepted.load(Ordering::SeqCst),
            1,
            "{via:?}: the third tunnel's second request went on its kept stream"
        );
        alice.shutdown().await.expect("alice stops");
    }
}
