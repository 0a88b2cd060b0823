//! Visitors at every node: every tunnel reachable and names cluster-wide, rendezvous ids and
//! token revocation across nodes, and a flooded tunnel's neighbour still answering.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visitors_at_every_node_reach_every_tunnel_and_names_are_cluster_wide() -> Result<()> {
    if !peers("cluster visitors") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, nodes, range) = cluster(&dir).await?;
    let (echo, http_a, http_b) = (
        services::echo().await,
        services::http_echo("from-alice").await,
        services::http_echo("from-bob").await,
    );
    let (p_alice, p_bob) = (range.0 + 3, range.0 + 4);
    // alice over yamux to n1, bob over h2-reverse to n2.
    let yamux: Vec<SocketAddr> = nodes.iter().map(|n| n.yamux).collect();
    let h2: Vec<SocketAddr> = [1, 2, 0].iter().map(|&i| nodes[i].h2).collect();
    let mut alice = TestClient::spawn(client(&dir, ALICE_TOKEN, "yamux", &yamux, &format!(
        "  svc: {{ local: \"{echo}\", remote_port: {p_alice} }}\n  app: {{ type: http, local: \"{http_a}\", subdomain: app }}\n"
    ))?);
    let up = alice.connected().await?;
    assert_eq!(endpoint_of(&up, "svc")?.port(), p_alice, "{up:?}");
    let mut bob = TestClient::spawn(client(&dir, BOB_TOKEN, "h2-reverse", &h2, &format!(
        "  db: {{ local: \"{echo}\", remote_port: {p_bob} }}\n  api: {{ type: http, local: \"{http_b}\", subdomain: api }}\n"
    ))?);
    let up = bob.connected().await?;
    assert_eq!(endpoint_of(&up, "db")?.port(), p_bob, "{up:?}");

    // Every node serves every tunnel: ports and https-subdomain.
    for n in &nodes {
        echo_until(SocketAddr::new(n.ip, p_alice), b"to alice").await?;
        echo_until(SocketAddr::new(n.ip, p_bob), b"to bob").await?;
        https_until(n, "app", "from-alice").await?;
        https_until(n, "api", "from-bob").await?;
    }
    // 64 MiB from a visitor at n3 to alice's service behind n1, and back.
    let len = 64 << 20;
    let got = echo_bulk(SocketAddr::new(nodes[2].ip, p_alice), len).await?;
    assert_eq!(
        got,
        sha256_hex(&pattern(len, 7)),
        "64 MiB crossed n3 -> n1 intact"
    );

    // Names and ports are unique across the cluster: carol's claims at n3 are refused while
    // alice's and bob's are live elsewhere; her free tunnel is served.
    let mut carol = TestClient::spawn(client(&dir, BOB_TOKEN, "yamux", &[nodes[2].yamux], &format!(
        "  steal: {{ local: \"{echo}\", remote_port: {p_alice} }}\n  name: {{ type: http, local: \"{http_b}\", subdomain: app }}\n  mine: {{ local: \"{echo}\" }}\n"
    ))?);
    let up = carol.connected().await?;
    let status = |name: &str| up.iter().find(|t| t.name == name).cloned();
    let steal = status("steal").context("steal")?;
    assert!(
        steal
            .error
            .as_deref()
            .is_some_and(|e| e.contains("held by another client")),
        "{steal:?}"
    );
    let name = status("name").context("name")?;
    assert!(
        name.error
            .as_deref()
            .is_some_and(|e| e.contains("held by another client")),
        "{name:?}"
    );
    assert!(endpoint_of(&up, "mine").is_ok(), "{up:?}");

    // Quotas count across nodes: alice (max_ports 2) holds one port at n1, so a second
    // tunnelc of hers at n3 gets one more port and no third.
    let mut alice2 = TestClient::spawn(client(
        &dir,
        ALICE_TOKEN,
        "yamux",
        &[nodes[2].yamux],
        &format!("  one: {{ local: \"{echo}\" }}\n  two: {{ local: \"{echo}\" }}\n"),
    )?);
    let up = alice2.connected().await?;
    let refused: Vec<_> = up.iter().filter_map(|t| t.error.clone()).collect();
    assert_eq!(
        up.iter().filter(|t| t.endpoint.is_some()).count(),
        1,
        "{up:?}"
    );
    assert!(
        refused.len() == 1 && refused[0].contains("at most 2 ports"),
        "{up:?}"
    );
    alice2.shutdown().await?;

    // The admin API and the metrics show who holds what and what crossed.
    let view = nodes[2]
        .cluster_until("three nodes and five routes", |v| {
            v["nodes"].as_array().is_some_and(|n| n.len() == 3)
                && v["routes"].as_array().is_some_and(|r| r.len() == 5)
        })
        .await?;
    let held_by = |port: u16| {
        view["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["port"] == port))
            .map(|r| r["node"].clone())
    };
    assert_eq!(held_by(p_alice), Some("n1".into()), "{view}");
    assert_eq!(held_by(p_bob), Some("n2".into()), "{view}");
    let metrics = |n: &Node| {
        let url = format!("http://{}/metrics", n.admin);
        async move { curl(&[&url]).await.map(|(_, b)| b) }
    };
    let m3 = metrics(&nodes[2]).await?;
    assert!(
        m3.lines().any(|l| l.starts_with(
            "tunneld_cluster_link_streams_total{direction=\"out\",node=\"n1\",result=\"ok\"}"
        )),
        "{m3}"
    );
    let m1 = metrics(&nodes[0]).await?;
    assert!(
        m1.lines().any(|l| l.starts_with(
            "tunneld_cluster_link_streams_total{direction=\"in\",node=\"n3\",result=\"ok\"}"
        )),
        "{m1}"
    );
    for c in [alice, bob, carol] {
        c.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rendezvous_and_token_revocation_span_the_cluster() -> Result<()> {
    if !peers("cluster rendezvous") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, nodes, _) = cluster(&dir).await?;
    // One id, added at n1, is known to every node (the state store is the cluster's Redis).
    nodes[0].cli(&["rendezvous", "add", "rdv-x", "--client", "alice"])?;
    let hidden = services::http_echo("from-hidden").await;
    let yaml = format!(
        "server: \"{}\"\nserver_name: localhost\ntransport: connect\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {}/ca/ca.pem }}\nreconnect: {{ initial: 50ms, max: 500ms }}\nrendezvous:\n  rdv-x: {{ local: \"{hidden}\", parked: 2 }}\n",
        nodes[0].hidden,
        dir.display()
    );
    let file = temp_dir("cluster-client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    let cfg = ClientConfig::load(Some(&file), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let parker = TestClient::spawn(cfg);
    // Visitors at every node (Digest, the id as user name) reach the server parked at n1.
    for n in [&nodes[1], &nodes[2], &nodes[0]] {
        let resolve = format!("localhost:{}:127.0.0.1", n.rdv.port());
        let url = format!("https://localhost:{}/via-{}", n.rdv.port(), n.name);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, out) = curl(&[
                "-k",
                "--resolve",
                &resolve,
                "--digest",
                "-u",
                "rdv-x:any",
                &url,
            ])
            .await?;
            if out.contains("from-hidden") && out.contains(&format!("/via-{}", n.name)) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("rendezvous visitor at {}: {out}", n.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    parker.shutdown().await?;

    // A token added at n1 works at n2 and n3; revoked at n1, its sessions on both are cut
    // within 2 s.
    let out = nodes[0].cli(&["token", "add", "dave"])?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .context("token line")?
        .to_string();
    let echo = services::echo().await;
    let mut daves = Vec::new();
    for n in [&nodes[1], &nodes[2]] {
        let mut c = TestClient::spawn(client(
            &dir,
            &token,
            "yamux",
            &[n.yamux],
            &format!("  t: {{ local: \"{echo}\" }}\n"),
        )?);
        c.connected().await?;
        daves.push(c);
    }
    nodes[0].cli(&["token", "revoke", "dave"])?;
    let revoked = Instant::now();
    for c in &mut daves {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, c.events.recv())
                .await
                .context("a revoked session was not cut")?;
            match ev {
                Some(tunneld_client::client::ClientEvent::Disconnected { .. }) | None => break,
                Some(_) => {}
            }
        }
    }
    let cut_in = revoked.elapsed();
    assert!(
        cut_in < Duration::from_secs(2),
        "revocation took {cut_in:?} to cut every session"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooded_tunnel_leaves_its_neighbour_answering_across_nodes() -> Result<()> {
    use tunneld_integration_tests::neighbour::{Neighbour, Probe};
    if !peers("cluster neighbour") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, nodes, range) = cluster(&dir).await?;
    let echo = services::echo().await;
    let (victim, written) = services::endless().await;
    let port = range.0 + 6;
    let mut alice = TestClient::spawn(client(&dir, ALICE_TOKEN, "yamux", &[nodes[0].yamux], &format!(
        "  svc: {{ local: \"{victim}\", remote_port: {port} }}\n  nb: {{ local: \"{echo}\", remote_port: {} }}\n",
        port + 1
    ))?);
    alice.connected().await?;
    let (flooded, neighbour) = (
        SocketAddr::new(nodes[2].ip, port),
        SocketAddr::new(nodes[2].ip, port + 1),
    );
    echo_until(neighbour, b"ready").await?;
    // The neighbour: alice's other tunnel, visited at n3, crossing the same link to n1 and
    // the same session to tunnelc as the flood.
    let probe = Neighbour::start(Probe::Echo(neighbour));
    // The attack (as the single-node isolation tests): visitors at n3 of a service that
    // streams without end, which never read, so every window on the way (n3's visitor, the
    // link, n1's session, tunnelc) fills; 6 of them, then 30 more, held for 6 s.
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut stalled = Vec::new();
    for wave in [6, 30] {
        for _ in 0..wave {
            let connected = connected.clone();
            stalled.push(tokio::spawn(async move {
                let Ok(s) = TcpStream::connect(flooded).await else {
                    return;
                };
                connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep_until(until).await;
                drop(s);
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for f in stalled {
        let _ = tokio::time::timeout(WAIT, f).await;
    }
    let connected = connected.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(connected, 36, "every stalled visitor connected");
    let wrote = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        wrote > 1 << 20,
        "the attack never engaged: the victim wrote {wrote} bytes"
    );
    probe
        .finish()
        .await
        .assert_healthy("echo neighbour across nodes")?;
    alice.shutdown().await?;
    Ok(())
}
