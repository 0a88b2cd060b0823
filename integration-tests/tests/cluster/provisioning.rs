//! Tunnels provisioned and admin mappings put at one node, served at every node.

use crate::common::*;

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
