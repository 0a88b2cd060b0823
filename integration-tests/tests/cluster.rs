//! Cluster mode with real parts: `redis-server`, three tunneld processes on loopback (ports
//! frontends on 127.0.0.1-3 with one range, so "the same port" is the same number), tunnelc
//! over yamux and h2-reverse spread over them, and visitors at every node.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_client::config::client::ClientConfig;
use tunneld_integration_tests::cluster::{cluster_dir, Node, Redis};
use tunneld_integration_tests::process::{curl, tool_or_skip};
use tunneld_integration_tests::{
    endpoint_of, pattern, port_block, services, sha256_hex, temp_dir, TestClient, ALICE_TOKEN,
    BOB_TOKEN, WAIT,
};

fn peers(test: &str) -> bool {
    tool_or_skip(
        "redis-server",
        "--version",
        "apt-get install redis-server",
        test,
    ) && tool_or_skip("openssl", "version", "apt-get install openssl", test)
}

async fn cluster(dir: &Path) -> Result<(Redis, Vec<Node>, (u16, u16))> {
    let redis = Redis::start(dir).await?;
    let range = port_block();
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(Node::start(dir, n, &redis.url(), range).await?);
    }
    Ok((redis, nodes, range))
}

/// A tunnelc config: `transport`, its servers in order, `tunnels` YAML.
fn client(
    dir: &Path,
    token: &str,
    transport: &str,
    servers: &[SocketAddr],
    tunnels: &str,
) -> Result<ClientConfig> {
    let list: Vec<String> = servers[1..].iter().map(|s| format!("\"{s}\"")).collect();
    let yaml = format!(
        "server: \"{}\"\nservers: [{}]\nserver_name: localhost\ntransport: {transport}\ntoken: {token}\ntls: {{ ca: {}/ca/ca.pem }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n{tunnels}",
        servers[0],
        list.join(", "),
        dir.display()
    );
    let file = temp_dir("cluster-client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    ClientConfig::load(Some(&file), &[]).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Echoes `msg` through `addr`, retrying until it works (a mirror appears within a sync).
async fn echo_until(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(msg).await?;
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
            anyhow::ensure!(back == msg, "echo differs");
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => bail!("echo through {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// GETs `https://<name>.localhost/path` at a node's web frontend until the answer has `want`.
async fn https_until(node: &Node, name: &str, want: &str) -> Result<String> {
    let host = format!("{name}.localhost");
    let resolve = format!("{host}:{}:127.0.0.1", node.web.port());
    let url = format!("https://{host}:{}/visit", node.web.port());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, out) = curl(&["-k", "--resolve", &resolve, &url]).await?;
        if out.contains(want) {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} at {}: {out}", node.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `len` bytes through an echo tunnel at `addr`, reading them back at once; answers
/// the SHA-256 of what came back.
async fn echo_bulk(addr: SocketAddr, len: usize) -> Result<String> {
    let data = pattern(len, 7);
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(len);
    tokio::time::timeout(WAIT, r.read_to_end(&mut back))
        .await
        .context("bulk echo timed out")??;
    writer.await??;
    Ok(sha256_hex(&back))
}

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

/// One echo round trip on an open visitor connection.
async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
    anyhow::ensure!(back == msg, "echo differs");
    Ok(())
}

/// Fresh visitors at `addr`, one after another, until `stop`: the errors of those that
/// failed, and how many got their echo.
async fn visit_until(
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<String>, usize) {
    let (mut failed, mut ok) = (Vec::new(), 0);
    while !stop.is_cancelled() {
        let r = async {
            let mut s = TcpStream::connect(addr).await?;
            roundtrip(&mut s, b"probe").await
        }
        .await;
        match r {
            Ok(()) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (failed, ok)
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

/// Waits until a TCP connection to `addr` is refused (a route that went).
async fn refused_until(addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let served = async {
            let mut s = TcpStream::connect(addr).await?;
            roundtrip(&mut s, b"still there?").await
        }
        .await;
        if served.is_err() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{addr} is still served");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST|DELETE /v1/...` on a node's provisioning API as `token`: the body.
async fn control_call(
    node: &Node,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String> {
    let port = node.control.port();
    let (_, out) = curl(&[
        "-sk",
        "-X",
        method,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &format!("https://localhost:{port}{path}"),
    ])
    .await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_provisioned_at_one_node_is_served_at_every_node() -> Result<()> {
    if !peers("cluster provisioned tunnels") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, mut nodes, _) = cluster(&dir).await?;
    let out = nodes[0].cli(&["token", "add", "gina"])?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .context("token line")?
        .to_string();
    // Provisioned at n1: a leased port, held for gina whether or not she is connected.
    let made = control_call(
        &nodes[0],
        &token,
        "POST",
        "/v1/tunnels",
        r#"{"protocols":["tcp"]}"#,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&made).with_context(|| made.clone())?;
    let name = v["name"].as_str().context("name")?.to_string();
    let port: u16 = v["endpoints"][0]["url"]
        .as_str()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {v}"))?;
    // Every other node leases it too, on the same port, within the sweep.
    for n in &nodes[1..] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !n
            .proc
            .stderr()
            .contains("leased a tunnel provisioned at another node")
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} never leased {name}",
                n.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // gina's tunnelc at n2: the lease's port; visitors at every node reach her.
    let echo = services::echo().await;
    let servers = [nodes[1].yamux, nodes[2].yamux];
    let mut gina = TestClient::spawn(client(
        &dir,
        &token,
        "yamux",
        &servers,
        &format!("  {name}-tcp: {{ local: \"{echo}\" }}\n"),
    )?);
    let up = gina.connected().await?;
    assert_eq!(
        endpoint_of(&up, &format!("{name}-tcp"))?.port(),
        port,
        "{up:?}"
    );
    for n in &nodes {
        echo_until(
            SocketAddr::new(n.ip, port),
            format!("via {}", n.name).as_bytes(),
        )
        .await?;
    }
    // n2 dies: at n3 gina's tunnelc gets the same lease; n1 and n3 reach her there.
    nodes[1].proc.signal("KILL")?;
    let up = gina.connected().await?;
    assert_eq!(
        endpoint_of(&up, &format!("{name}-tcp"))?.port(),
        port,
        "{up:?}"
    );
    for n in [&nodes[0], &nodes[2]] {
        echo_until(SocketAddr::new(n.ip, port), b"after n2 died").await?;
    }
    // Deleted at n1: the port goes at every node, mirrors included.
    control_call(
        &nodes[0],
        &token,
        "DELETE",
        &format!("/v1/tunnels/{name}"),
        "",
    )
    .await?;
    for n in [&nodes[0], &nodes[2]] {
        refused_until(SocketAddr::new(n.ip, port)).await?;
    }
    let _ = nodes.remove(1);
    gina.shutdown().await?;
    Ok(())
}

/// `PUT /tunnels` (the admin mappings) at a node: (status, body).
async fn put_mappings(node: &Node, body: &str) -> Result<(u16, String)> {
    let url = format!("http://{}/tunnels", node.admin);
    let (_, out) = curl(&[
        "-s",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        "-w",
        "\n%{http_code}",
        &url,
    ])
    .await?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_mapping_put_at_one_node_serves_at_every_node() -> Result<()> {
    if !peers("cluster admin mappings") {
        return Ok(());
    }
    let dir = cluster_dir()?;
    let (_redis, nodes, range) = cluster(&dir).await?;
    let echo = services::echo().await;
    let mut cfg = client(
        &dir,
        BOB_TOKEN,
        "yamux",
        &[nodes[1].yamux],
        &format!("  svc: {{ local: \"{echo}\" }}\n"),
    )?;
    cfg.accept_server_mappings = true;
    let mut bob = TestClient::spawn(cfg);
    bob.connected().await?;
    // Put at n1, where bob is not connected: n1 knows him through the cluster (n2 stands
    // for him within a sync).
    let port = range.0 + 11;
    let list = format!(r#"[{{"client":"bob","listen_port":{port},"target":"{echo}"}}]"#);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = put_mappings(&nodes[0], &list).await?;
        if code == 200 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "PUT /tunnels at n1: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every node opens the port and sends its visitors to bob's tunnelc at n2.
    for n in &nodes {
        echo_until(
            SocketAddr::new(n.ip, port),
            format!("via {}", n.name).as_bytes(),
        )
        .await?;
    }
    // An empty list put at n3 closes it at every node.
    let (code, body) = put_mappings(&nodes[2], "[]").await?;
    assert_eq!(code, 200, "{body}");
    for n in &nodes {
        refused_until(SocketAddr::new(n.ip, port)).await?;
    }
    bob.shutdown().await?;
    Ok(())
}

/// Whether `s` is closed by its peer within `within` (EOF or reset, without sending it
/// anything more).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

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
