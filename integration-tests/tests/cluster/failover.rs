//! Nodes that go away: kill -9 moves the tunnel, a redis restart keeps visitors, and SIGTERM
//! hands clients over before the node stops.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_moves_the_tunnel_and_a_redis_restart_keeps_visitors() -> Result<()> {
    if !peers("cluster failover") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (mut redis, mut nodes, range) = cluster(&dir).await?;
    let (echo, http_a) = (
        services::echo().await,
        services::http_echo("from-alice").await,
    );
    let port = range.0 + 5;
    let yamux: Vec<SocketAddr> = nodes.iter().map(|n| n.yamux).collect();
    let mut alice = TestClient::spawn(client(&dir, ALICE_TOKEN, "yamux", &yamux, &format!(
        "  svc: {{ local: \"{echo}\", remote_port: {port} }}\n  app: {{ type: http, local: \"{http_a}\", subdomain: app }}\n"
    ))?);
    alice.connected().await?;
    let at_n3 = SocketAddr::new(nodes[2].ip, port);
    echo_until(at_n3, b"first").await?;

    // Redis restarts (empty): a visitor connected through n3 keeps going, new visitors
    // still get through, and the nodes put their routes back.
    let mut kept = TcpStream::connect(at_n3).await?;
    let roundtrip = async |s: &mut TcpStream, msg: &[u8]| -> Result<()> {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
        anyhow::ensure!(back == msg);
        Ok(())
    };
    roundtrip(&mut kept, b"before").await?;
    redis.restart().await?;
    roundtrip(&mut kept, b"during").await?;
    echo_until(at_n3, b"new visitor while the table is empty").await?;
    nodes[2]
        .cluster_until("redis back with n1's routes", |v| {
            v["redis"] == "up"
                && v["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["port"] == port && r["node"] == "n1"))
        })
        .await?;
    roundtrip(&mut kept, b"after").await?;
    drop(kept);

    // kill -9 of the node holding alice: she is back through another node with the same
    // port and name, and visitors at the surviving nodes reach her within 5 s.
    let killed = Instant::now();
    nodes[0].proc.signal("KILL")?;
    let up = alice.connected().await?;
    assert_eq!(
        endpoint_of(&up, "svc")?.port(),
        port,
        "same port after failover: {up:?}"
    );
    assert!(
        up.iter()
            .any(|t| t.name == "app" && t.subdomain.as_deref() == Some("app")),
        "{up:?}"
    );
    echo_until(at_n3, b"after failover").await?;
    let back_in = killed.elapsed();
    assert!(
        back_in < Duration::from_secs(5),
        "the tunnel took {back_in:?} to come back"
    );
    echo_until(SocketAddr::new(nodes[1].ip, port), b"at n2").await?;
    https_until(&nodes[2], "app", "from-alice").await?;
    let _ = nodes.remove(0);
    alice.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_clients_over_before_the_node_stops() -> Result<()> {
    if !peers("cluster handover") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, mut nodes, range) = cluster(&dir).await?;
    let echo = services::echo().await;
    let yamux: Vec<SocketAddr> = nodes.iter().map(|n| n.yamux).collect();
    let h2: Vec<SocketAddr> = nodes.iter().map(|n| n.h2).collect();
    let plan = [
        (ALICE_TOKEN, "yamux", range.0 + 7, yamux),
        (BOB_TOKEN, "h2-reverse", range.0 + 8, h2),
    ];
    let mut clients = Vec::new();
    let mut kept = Vec::new();
    for (token, transport, port, servers) in &plan {
        let mut c = TestClient::spawn(client(
            &dir,
            token,
            transport,
            servers,
            &format!("  svc: {{ local: \"{echo}\", remote_port: {port} }}\n"),
        )?);
        let (server, _) = c.connected_via().await?;
        assert_eq!(server, servers[0].to_string(), "{transport} starts at n1");
        clients.push(c);
        // A visitor at n3, open through n1's session, that the drain must not cut.
        let at_n3 = SocketAddr::new(nodes[2].ip, *port);
        echo_until(at_n3, b"up").await?;
        let mut s = TcpStream::connect(at_n3).await?;
        roundtrip(&mut s, b"before").await?;
        kept.push(s);
    }
    // Fresh visitors at n3 through the whole handover: none may fail.
    let stop_probes = tokio_util::sync::CancellationToken::new();
    let probes: Vec<_> = plan
        .iter()
        .map(|(_, _, port, _)| {
            tokio::spawn(visit_until(
                SocketAddr::new(nodes[2].ip, *port),
                stop_probes.clone(),
            ))
        })
        .collect();

    let term = Instant::now();
    nodes[0].proc.signal("TERM")?;
    for (c, (_, transport, port, servers)) in clients.iter_mut().zip(&plan) {
        let (server, up) = c.connected_via().await?;
        assert_eq!(server, servers[1].to_string(), "{transport} moves to n2");
        assert_eq!(endpoint_of(&up, "svc")?.port(), *port, "same port: {up:?}");
    }
    let moved_in = term.elapsed();
    nodes[2]
        .cluster_until("n2 holds both routes", |v| {
            plan.iter().all(|(_, _, port, _)| {
                v["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["port"] == *port && r["node"] == "n2"))
            })
        })
        .await?;
    // n1 is still draining once its handover is done: the visitors open through it keep
    // echoing on the old sessions.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !nodes[0].proc.stderr().contains("handover done") {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "n1 never finished its handover: {}",
            nodes[0].proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &mut kept {
        roundtrip(s, b"during the drain").await?;
    }
    assert!(
        nodes[0].proc.child.try_wait()?.is_none(),
        "n1 stopped before its visitors finished"
    );
    // A leaving node refuses new sessions, retriable, saying why.
    let mut late = TestClient::spawn(client(
        &dir,
        BOB_TOKEN,
        "yamux",
        &[nodes[0].yamux],
        &format!("  late: {{ local: \"{echo}\" }}\n"),
    )?);
    let refused = loop {
        let ev = tokio::time::timeout(WAIT, late.events.recv())
            .await
            .context("no answer from the leaving node")?
            .context("tunnelc ended")?;
        match ev {
            tunneld_client::client::ClientEvent::Disconnected { reason, .. } => break reason,
            tunneld_client::client::ClientEvent::Connected { .. } => {
                bail!("a leaving node took a new session")
            }
            _ => {}
        }
    };
    assert!(refused.contains("is leaving the cluster"), "{refused}");
    late.shutdown().await?;
    stop_probes.cancel();
    for p in probes {
        let (failed, ok) = p.await?;
        assert!(
            failed.is_empty(),
            "visitors at n3 failed during the handover ({ok} got through): {failed:?}"
        );
        assert!(ok > 0, "no probe went through");
    }
    // Once they close, n1 ends its drain and exits cleanly.
    drop(kept);
    let status = nodes[0].proc.wait().await?;
    assert!(status.success(), "n1 exited with {status}");
    let log = nodes[0].proc.stderr();
    assert!(log.contains("handover done"), "{log}");
    assert!(log.contains("drained=true"), "{log}");
    assert!(
        moved_in < Duration::from_secs(2),
        "the clients took {moved_in:?} to move"
    );
    for c in clients {
        c.shutdown().await?;
    }
    Ok(())
}
