//! The link port between nodes turns away garbage and silent floods.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_link_port_turns_away_garbage_and_silent_floods() -> Result<()> {
    if !peers("cluster link port") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, nodes, range) = cluster(&dir).await?;
    let echo = services::echo().await;
    let port = range.0 + 13;
    let mut alice = TestClient::spawn(client(
        &dir,
        ALICE_TOKEN,
        "yamux",
        &[nodes[0].yamux],
        &format!("  svc: {{ local: \"{echo}\", remote_port: {port} }}\n"),
    )?);
    alice.connected().await?;
    // From another address (127.0.0.9): 20 connections to n1's link port that say nothing;
    // from 127.0.0.10 one that sends HTTP instead of a TLS handshake.
    let link = nodes[0].link;
    let from = |n: u8| -> Result<tokio::net::TcpSocket> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(std::net::IpAddr::from([127, 0, 0, n]), 0))?;
        Ok(s)
    };
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(from(9)?.connect(link).await?);
    }
    let mut garbage = from(10)?.connect(link).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    // A node's first link to n1 (a visitor at n3) is not held up by them.
    echo_until(SocketAddr::new(nodes[2].ip, port), b"across the flood").await?;
    // Past 8 handshakes from one address, connections are closed at once; the 8 held ones
    // within the 5 s handshake deadline; the garbage at once.
    let mut closed_at_once = 0;
    for s in silent.iter_mut().skip(8) {
        closed_at_once += usize::from(closed_within(s, Duration::from_secs(2)).await);
    }
    assert_eq!(closed_at_once, 12, "connections past the per-address cap");
    assert!(
        closed_within(&mut garbage, Duration::from_secs(2)).await,
        "garbage kept open"
    );
    for s in silent.iter_mut().take(8) {
        assert!(
            closed_within(s, WAIT).await,
            "a silent handshake outlived its deadline"
        );
    }
    let m = curl(&[&format!("http://{}/metrics", nodes[0].admin)])
        .await?
        .1;
    let count = |result: &str| -> f64 {
        let head = format!("tunneld_cluster_link_connections_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&head))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("too_many_pending_from_address") >= 12.0, "{m}");
    assert!(count("timeout") >= 8.0, "{m}");
    assert!(count("tls_error") >= 1.0, "{m}");
    assert!(count("ok") >= 1.0, "{m}");
    // Still serving across nodes.
    echo_until(SocketAddr::new(nodes[1].ip, port), b"after").await?;
    alice.shutdown().await?;
    Ok(())
}
