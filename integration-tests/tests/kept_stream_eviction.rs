//! Idle kept-alive streams never keep anyone out of a session: on a session capped at 8
//! streams whose http tunnel left idle kept streams, visitors of a tcp neighbour and requests
//! that may not be kept (`reuse_connections: false`) take the places of idle streams, over
//! yamux, h2-reverse and websocket.

use std::net::SocketAddr;
use tunneld_integration_tests::attack::{self, Via};
use tunneld_integration_tests::kept::{counting, visit};
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
    let cap = match via {
        Via::H2Reverse => "h2.max_streams=8",
        Via::Yamux => "yamux.max_streams=8",
        Via::Websocket => "max_conversations=8",
    };
    let cfg = attack::client_config_with(&s, via, &tunnels, &[cap.into()]).expect("cfg");
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
