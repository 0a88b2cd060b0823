//! The threshold dialect of the yamux transport, against a client built on the reference
//! yamux implementation (hashicorp/yamux, Go, from Debian), and threshold's admin API shapes.

use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_integration_tests::process::go_threshold_client_or_skip;
use tunneld_integration_tests::services::{recorder, tagged_echo, visit_tagged};
use tunneld_integration_tests::{client_pki, metrics, temp_dir, TestServer, WAIT};

mod handshakes;
mod identity;

/// `tunneld_handshakes_total{outcome}`.
fn hs(m: &metrics::Samples, outcome: &str) -> f64 {
    m.get("tunneld_handshakes_total", &[("outcome", outcome)])
}

fn threshold_sets(header_identity: bool) -> Vec<String> {
    vec![
        "transports.edge.threshold.domain=example.test".into(),
        format!("transports.edge.threshold.header_identity={header_identity}"),
        "transports.edge.threshold.pair_timeout=5s".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_threshold_client_serves_visitors_with_fifo_pairing_and_proxy_v1() {
    let Some(go) = go_threshold_client_or_skip("threshold interop") else {
        return;
    };
    let server = TestServer::start_full("", &threshold_sets(true))
        .await
        .expect("server");
    let (svc_a, svc_b) = (
        tagged_echo("service-a").await,
        tagged_echo("service-b").await,
    );
    let (rec, mut recorded) = recorder().await;
    let mut node = server
        .spawn_threshold_client(
            &go,
            &["-id", "node1"],
            &[("a", svc_a), ("b", svc_b), ("rec", rec)],
            "node1",
        )
        .expect("spawn the Go client");
    node.line_starting("connected")
        .await
        .expect("go client connects");

    let (pa, pb, pr) = (server.range.0 + 1, server.range.0 + 2, server.range.0 + 3);
    let listeners = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"a","HaProxyProxyProtocol":false}},
            {{"ClientIdentifier":"node1","ListenPort":{pb},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"b","HaProxyProxyProtocol":false}},
            {{"ClientIdentifier":"node1","ListenPort":{pr},"ListenAddress":"127.0.0.1","ListenHostnameGlob":"","BackEndService":"rec","HaProxyProxyProtocol":true}}]"#
    );
    let (code, body) = server.admin_call("PUT", "/tunnels", Some(&listeners)).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("threshold listener list");
    assert_eq!(answer[2]["HaProxyProxyProtocol"], true, "{body}");
    assert_eq!(answer[0]["ClientIdentifier"], "node1", "{body}");

    // 120 concurrent visitors over two services: a wrong pairing would hand a visitor of
    // one service the other's tag.
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let (port, want) = if i % 2 == 0 {
            (pa, "service-a")
        } else {
            (pb, "service-b")
        };
        tasks.push(tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let tag = visit_tagged(addr, 4096 + i as usize * 97, i).await?;
            anyhow::ensure!(tag == want, "visitor {i} of {want} got {tag}");
            Ok(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("visitor");
    }

    // PROXY v1: the local service sees the line threshold's server wrote.
    let mut v = tokio::net::TcpStream::connect(("127.0.0.1", pr))
        .await
        .expect("visitor");
    let local = v.local_addr().expect("addr");
    let first = tokio::time::timeout(WAIT, recorded.recv())
        .await
        .expect("recorded in time")
        .expect("recorded");
    let line = String::from_utf8_lossy(&first);
    assert!(
        line.starts_with(&format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {pr}\r\n",
            local.port()
        )),
        "{line:?}"
    );
    v.write_all(b"after-proxy").await.expect("write");
    let mut back = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&back).contains("after-proxy") {
        let n = tokio::time::timeout(WAIT, v.read(&mut buf))
            .await
            .expect("echo in time")
            .expect("read");
        assert!(n > 0, "closed early");
        back.extend_from_slice(&buf[..n]);
    }

    // Threshold's management shapes.
    let (code, clients) = server
        .admin_call("GET", "/clients?shape=threshold", None)
        .await;
    assert_eq!(code, 200);
    let clients: serde_json::Value = serde_json::from_str(&clients).expect("json");
    assert_eq!(clients["node1"]["CurrentState"], "ClientConnected");
    let (code, pong) = server.admin_call("GET", "/ping", None).await;
    assert_eq!((code, pong.as_str()), (200, "pong"));
    let (code, listed) = server
        .admin_call("GET", "/tunnels?shape=threshold", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed).expect("json"),
        answer
    );
    // Threshold's error semantics: 422, 400, 404, 409, as plain text.
    let bad_addr = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"nowhere","BackEndService":"a"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&bad_addr)).await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("is not an IP address"), "{msg}");
    let unknown = format!(
        r#"[{{"ClientIdentifier":"ghost","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"a"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&unknown)).await;
    assert_eq!(code, 404, "{msg}");
    let (code, msg) = server
        .admin_call(
            "PUT",
            "/tunnels",
            Some(r#"[{"ClientIdentifier":"node1","ListenPort":"x"}]"#),
        )
        .await;
    assert_eq!(code, 422, "{msg}");
    let twice = format!(
        r#"[{{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"a"}},
            {{"ClientIdentifier":"node1","ListenPort":{pa},"ListenAddress":"127.0.0.1","BackEndService":"b"}}]"#
    );
    let (code, msg) = server.admin_call("PUT", "/tunnels", Some(&twice)).await;
    assert_eq!(code, 409, "{msg}");
    assert_eq!(
        visit_tagged(std::net::SocketAddr::from(([127, 0, 0, 1], pa)), 10, 1)
            .await
            .expect("failed updates keep the listeners"),
        "service-a"
    );

    let m = server.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_pool_streams_total",
            &[("route", &format!("mapping-{pa}")), ("client", "node1")]
        ),
        61.0
    );
    assert_eq!(
        m.get("tunneld_sessions_active", &[("transport", "edge")]),
        1.0
    );
    assert_eq!(m.get("tunneld_threshold_pairs_pending", &[]), 0.0);
    drop(node);
}
