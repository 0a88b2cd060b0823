//! Bytes through a ports tunnel over the yamux transport: bulk, concurrency, a real HTTP
//! client, PROXY protocol, and a local service that is down.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::{
    pattern, process::curl, services, sha256_hex, TestClient, TestServer, ALICE_TOKEN, WAIT,
};

async fn tunnel_to(
    server: &TestServer,
    local: std::net::SocketAddr,
    extra: &str,
) -> (TestClient, std::net::SocketAddr) {
    let cfg = server
        .client_config(ALICE_TOKEN, &format!("  svc:\n    local: {local}\n{extra}"))
        .expect("client config");
    let mut client = TestClient::spawn(cfg);
    let ep = client.endpoint("svc").await.expect("tunnel up");
    (client, ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact() {
    let server = TestServer::start().await.expect("server");
    let (client, ep) = tunnel_to(&server, services::echo().await, "").await;
    const LEN: usize = 64 * 1024 * 1024;
    let data = pattern(LEN, 1);
    let want = sha256_hex(&data);
    let visitor = TcpStream::connect(ep).await.expect("visitor connects");
    let (mut r, mut w) = visitor.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("send");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::with_capacity(LEN);
    tokio::time::timeout(WAIT * 4, r.read_to_end(&mut back))
        .await
        .expect("in time")
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(back.len(), LEN);
    assert_eq!(sha256_hex(&back), want, "the echoed 64 MiB differ");
    let m = server.metrics().await;
    assert!(m.get("tunneld_bytes_total", &[("direction", "in")]) >= LEN as f64);
    assert!(m.get("tunneld_bytes_total", &[("direction", "out")]) >= LEN as f64);
    client.shutdown().await.expect("client stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_visitors() {
    let server = TestServer::start().await.expect("server");
    let (client, ep) = tunnel_to(&server, services::echo().await, "").await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let data = pattern(64 * 1024 + i as usize, i);
            let mut s = TcpStream::connect(ep).await.expect("connect");
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.expect("send");
                w.shutdown().await.expect("shutdown");
            };
            let mut back = Vec::new();
            let recv = r.read_to_end(&mut back);
            let (_, got) = tokio::join!(send, recv);
            got.expect("read");
            assert_eq!(
                sha256_hex(&back),
                sha256_hex(&data),
                "visitor {i} got other bytes"
            );
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("visitor in time")
            .expect("visitor ok");
    }
    let m = server.metrics().await;
    assert!(m.get("tunneld_streams_opened_total", &[("frontend", "tcp")]) >= 200.0);
    assert!(m.get("tunneld_stream_open_seconds_count", &[("frontend", "tcp")]) >= 200.0);
    client.shutdown().await.expect("client stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_a_local_http_server() {
    let server = TestServer::start().await.expect("server");
    let (client, ep) = tunnel_to(&server, services::http().await, "").await;
    let url = format!("http://{ep}/through/the/tunnel");
    let (st, body) = curl(&[&url]).await.expect("curl runs");
    assert!(st.success(), "curl failed: {st}");
    assert_eq!(
        body,
        format!("hello /through/the/tunnel host={ep} body=0\n")
    );
    // Keep-alive: several requests on one connection.
    let (st, body) = curl(&[&url, &url, "--data-binary", "0123456789"])
        .await
        .expect("curl runs");
    assert!(st.success());
    assert_eq!(body.matches("body=10").count(), 2, "{body}");
    client.shutdown().await.expect("client stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_reach_the_local_service() {
    let server = TestServer::start().await.expect("server");
    let (local, mut seen) = services::recorder().await;
    let (client, ep) = tunnel_to(&server, local, "    proxy_protocol: v1\n").await;
    let mut v = TcpStream::connect(ep).await.expect("connect");
    let me = v.local_addr().expect("addr");
    v.write_all(b"x").await.expect("write");
    let first = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("in time")
        .expect("recorded");
    let line = String::from_utf8_lossy(&first).to_string();
    assert!(
        line.starts_with(&format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            me.port(),
            ep.port()
        )),
        "unexpected header: {line:?}"
    );
    client.shutdown().await.expect("client stops");

    let (local, mut seen) = services::recorder().await;
    let cfg = server
        .client_config(
            ALICE_TOKEN,
            &format!("  svc:\n    local: {local}\n    proxy_protocol: v2\n"),
        )
        .expect("client config");
    let mut client = TestClient::spawn(cfg);
    let ep = client.endpoint("svc").await.expect("tunnel up");
    let mut v = TcpStream::connect(ep).await.expect("connect");
    v.write_all(b"y").await.expect("write");
    let first = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("in time")
        .expect("recorded");
    assert_eq!(&first[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(first[13], 0x11, "TCP over IPv4");
    assert_eq!(
        u16::from_be_bytes([first[26], first[27]]),
        ep.port(),
        "destination port"
    );
    client.shutdown().await.expect("client stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_that_is_down_closes_the_visitor_and_counts() {
    let server = TestServer::start().await.expect("server");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (client, ep) = tunnel_to(&server, dead, "").await;
    let mut v = TcpStream::connect(ep).await.expect("connect");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, v.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "visitor must see the connection close");
    let m = server.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "local_refused")]
        ),
        1.0
    );
    client.shutdown().await.expect("client stops");
}

/// Opens `total` visitors through a tunnel whose session carries at most `cap` streams:
/// `cap` are served, the rest refused one by one, and the session survives.
async fn stream_cap_holds(server_sets: &[String], client_sets: &[String], cap: usize, total: u8) {
    let server = TestServer::start_full("", server_sets)
        .await
        .expect("server");
    let echo = services::echo().await;
    let cfg = server
        .client_config_with(
            ALICE_TOKEN,
            &format!("  svc:\n    local: {echo}\n"),
            client_sets,
        )
        .expect("config");
    let mut client = TestClient::spawn(cfg);
    let ep = client.endpoint("svc").await.expect("endpoint");
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..total {
        let mut s = tokio::net::TcpStream::connect(ep).await.expect("connect");
        s.write_all(&[i]).await.expect("write");
        let mut b = [0u8; 1];
        match tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("answer or close in time")
        {
            Ok(1) => {
                assert_eq!(b[0], i);
                open.push(s);
            }
            _ => refused += 1,
        }
    }
    assert_eq!((open.len(), refused), (cap, total as usize - cap));
    drop(open);
    // The same session serves the next visitors once streams are free again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = tokio::net::TcpStream::connect(ep).await.expect("connect");
        s.write_all(b"again").await.expect("write");
        let mut b = [0u8; 5];
        if let Ok(Ok(_)) = tokio::time::timeout(WAIT, s.read_exact(&mut b)).await {
            assert_eq!(&b, b"again");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots never came back"
        );
        tokio::task::yield_now().await;
    }
    let m = server.metrics().await;
    assert_eq!(
        m.get("tunneld_sessions_total", &[]),
        1.0,
        "never reconnected"
    );
    assert!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "too_many_streams")]
        ) >= (total as usize - cap) as f64
    );
    client.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_beyond_the_stream_cap_are_refused_alone_and_the_session_survives() {
    // yamux 0.14 would end the whole session on the stream past its ceiling; tunneld refuses
    // the visitor instead.
    stream_cap_holds(&["transports.edge.yamux.max_streams=8".into()], &[], 8, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_smaller_stream_cap_is_respected() {
    stream_cap_holds(&[], &["yamux.max_streams=4".into()], 4, 12).await;
}
