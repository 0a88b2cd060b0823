//! Many sessions per client id: tunnelc processes sharing one token serve their own tunnels
//! side by side, a claim held by a live session is refused with that session named (no
//! flapping), the same tunnelc reconnecting or a holder that no longer answers gives the claim
//! up at once, and TPoT names follow the same rule.

use anyhow::{anyhow, Context, Result};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_core::proto::{
    encode_frame, read_frame, Hello, ServerHello, TunnelKind, TunnelRequest,
};
use tunneld_integration_tests::{services, TestClient, TestServer, ALICE_TOKEN, WAIT};

async fn echo_roundtrip(addr: std::net::SocketAddr) -> Result<()> {
    let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(b"ping-0123456789ab").await?;
    let mut back = [0u8; 17];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await??;
    anyhow::ensure!(&back == b"ping-0123456789ab", "echo mismatch");
    Ok(())
}

fn tcp_tunnel(name: &str, local: std::net::SocketAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("  {name}: {{ type: tcp, local: \"{local}\", remote_port: {p} }}\n"),
        None => format!("  {name}: {{ type: tcp, local: \"{local}\" }}\n"),
    }
}

/// A hello with alice's token.
fn alice_hello(agent: &str, tunnels: Vec<TunnelRequest>, instance: Option<String>) -> Hello {
    Hello {
        version: tunneld_core::proto::VERSION,
        token: Some(ALICE_TOKEN.into()),
        tunnels,
        accept_server_mappings: false,
        agent: agent.into(),
        max_streams: None,
        instance,
    }
}

/// Sends `hello` on a new connection to the yamux transport and reads tunneld's answer.
async fn hello_answer(server: &TestServer, hello: &Hello) -> Result<serde_json::Value> {
    let mut tls = server.tls_connect().await;
    let mut out = tunneld_core::proto::MAGIC.to_vec();
    out.extend(encode_frame(hello)?);
    tls.write_all(&out).await?;
    Ok(tokio::time::timeout(WAIT, read_frame(&mut tls)).await??)
}

/// The sessions `GET /clients` lists for `client`.
async fn sessions_of(server: &TestServer, client: &str) -> Result<Vec<serde_json::Value>> {
    let (code, body) = server.admin_call("GET", "/clients", None).await;
    anyhow::ensure!(code == 200, "GET /clients: {code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["client_id"] == client)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnelc_with_one_token_serve_side_by_side_and_conflicts_are_refused() -> Result<()> {
    let server = TestServer::start_web("").await?;
    let (a_local, b_local) = (services::echo().await, services::echo().await);
    let port = server.range.0 + 3;

    // Two tunnelc with alice's token on two transports, different tunnels.
    let mut a = TestClient::spawn(
        server.client_config(ALICE_TOKEN, &tcp_tunnel("a", a_local, Some(port)))?,
    );
    let a_ep = a.endpoint("a").await?;
    let mut b =
        TestClient::spawn(server.h2_client_config(ALICE_TOKEN, &tcp_tunnel("b", b_local, None))?);
    let b_ep = b.endpoint("b").await?;
    for _ in 0..5 {
        echo_roundtrip(a_ep).await.context("tunnel a")?;
        echo_roundtrip(b_ep).await.context("tunnel b")?;
    }
    let listed = sessions_of(&server, "alice").await?;
    assert_eq!(listed.len(), 2, "both sessions listed: {listed:?}");
    assert!(
        listed.iter().all(|s| s["instance"].is_string()),
        "{listed:?}"
    );
    let a_session = listed
        .iter()
        .find(|s| s["transport"] == "edge")
        .map(|s| s["session"].clone())
        .ok_or_else(|| anyhow!("no yamux session in {listed:?}"))?;

    // A third tunnelc asking for a's port is refused, names the holder, and stops.
    let sessions_before = server
        .metrics()
        .await
        .get("tunneld_sessions_total", &[("transport", "edge")]);
    let mut c = TestClient::spawn(
        server.client_config(ALICE_TOKEN, &tcp_tunnel("c", a_local, Some(port)))?,
    );
    let refused = c.connected().await;
    assert!(
        refused.is_err(),
        "the conflicting tunnelc must not connect: {refused:?}"
    );
    let err = tokio::time::timeout(WAIT, c.task)
        .await??
        .expect_err("the conflicting tunnelc ends with an error");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "port {port} is held by another session of client `alice`"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("session {a_session}")) && text.contains("edge from 127.0.0.1"),
        "{text}"
    );
    // No flapping: a still serves, and its session was not replaced.
    for _ in 0..5 {
        echo_roundtrip(a_ep)
            .await
            .context("tunnel a after the refusal")?;
    }
    let listed = sessions_of(&server, "alice").await?;
    assert!(
        listed.iter().any(|s| s["session"] == a_session),
        "{listed:?}"
    );
    let m = server.metrics().await;
    assert_eq!(
        m.get("tunneld_sessions_total", &[("transport", "edge")]),
        sessions_before + 1.0,
        "one refused session, no replacement loop"
    );
    assert!(m.get("tunneld_session_conflicts_total", &[("outcome", "refused")]) >= 1.0);

    // Stopping a frees its port for the next tunnelc at once.
    a.shutdown().await?;
    let started = Instant::now();
    let mut d = TestClient::spawn(
        server.client_config(ALICE_TOKEN, &tcp_tunnel("a", a_local, Some(port)))?,
    );
    let d_ep = d.endpoint("a").await?;
    assert_eq!(d_ep.port(), port);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    echo_roundtrip(d_ep).await?;
    echo_roundtrip(b_ep).await.context("tunnel b untouched")?;
    d.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// A session that completed its hello, then went silent: it holds its port until a newer
/// session asks for the port, probes it, and replaces it within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_does_not_answer_is_replaced_within_a_second() -> Result<()> {
    let server = TestServer::start().await?;
    let local = services::echo().await;
    let port = server.range.0 + 4;
    let mut silent = server.tls_connect().await;
    let hello = Hello {
        version: tunneld_core::proto::VERSION,
        token: Some(ALICE_TOKEN.into()),
        tunnels: vec![TunnelRequest {
            name: "web".into(),
            kind: TunnelKind::Tcp,
            remote_port: Some(port),
            frontend: None,
            proxy_protocol: None,
            subdomain: None,
        }],
        accept_server_mappings: false,
        agent: "silent".into(),
        max_streams: None,
        instance: Some("silent-instance".into()),
    };
    let mut out = tunneld_core::proto::MAGIC.to_vec();
    out.extend(encode_frame(&hello)?);
    silent.write_all(&out).await?;
    let answer: ServerHello = tokio::time::timeout(WAIT, read_frame(&mut silent)).await??;
    assert!(matches!(answer, ServerHello::Welcome { .. }), "{answer:?}");

    let started = Instant::now();
    let mut c = TestClient::spawn(
        server.client_config(ALICE_TOKEN, &tcp_tunnel("web", local, Some(port)))?,
    );
    let ep = c.endpoint("web").await?;
    let took = started.elapsed();
    assert_eq!(ep.port(), port);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    echo_roundtrip(ep).await?;
    let m = server.metrics().await;
    assert!(
        m.get(
            "tunneld_session_conflicts_total",
            &[("outcome", "replaced")]
        ) >= 1.0
    );
    c.shutdown().await?;
    drop(silent);
    Ok(())
}

/// A tunnel refused because another session of the client holds it is not asked for again
/// after a reconnect: when tunneld drops both sessions at once (a restart, say), the holder
/// gets it back whichever tunnelc reconnects first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_is_not_asked_for_again_so_reconnects_cannot_take_it() -> Result<()> {
    let server = TestServer::start().await?;
    let (holder_svc, other_svc) = (
        services::tagged_echo("holder").await,
        services::tagged_echo("other").await,
    );
    let free_svc = services::echo().await;
    let port = server.range.0 + 5;
    let mut h = TestClient::spawn(
        server.client_config(ALICE_TOKEN, &tcp_tunnel("shared", holder_svc, Some(port)))?,
    );
    let shared = h.endpoint("shared").await?;
    let both = format!(
        "{}{}",
        tcp_tunnel("shared", other_svc, Some(port)),
        tcp_tunnel("free", free_svc, None)
    );
    let mut c = TestClient::spawn(server.client_config(ALICE_TOKEN, &both)?);
    let first = c.connected().await?;
    let refused = first
        .iter()
        .find(|t| t.name == "shared")
        .and_then(|t| t.error.clone());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("held by another session")),
        "{first:?}"
    );
    for round in 0..5u64 {
        assert!(server.running.hub.cut("alice"));
        h.connected().await?;
        let again = c.connected().await?;
        assert!(again.iter().all(|t| t.name != "shared"), "{again:?}");
        let tag = services::visit_tagged(shared, 1000, round).await?;
        assert_eq!(tag, "holder", "round {round}");
        echo_roundtrip(tunneld_integration_tests::endpoint_of(&again, "free")?).await?;
    }
    h.shutdown().await?;
    c.shutdown().await?;
    Ok(())
}

/// An instance id must be short printable text: anything else is refused at the hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_instance_id_is_refused() -> Result<()> {
    let server = TestServer::start().await?;
    for bad in ["x".repeat(129), String::new(), "a b".into()] {
        let hello = alice_hello("bad instance", Vec::new(), Some(bad.clone()));
        let answer: ServerHello = serde_json::from_value(hello_answer(&server, &hello).await?)?;
        match answer {
            ServerHello::Rejected { reason, permanent } => {
                assert!(
                    permanent && reason.contains("instance id is invalid"),
                    "{reason}"
                );
            }
            other => return Err(anyhow!("{bad:?} was admitted: {other:?}")),
        }
    }
    Ok(())
}

/// A port held by another program is not refused for the whole session: the status says
/// `retrying`, tunnelc stays connected (its other tunnel serves meanwhile), and once the
/// program lets go tunneld claims the port by itself and tells tunnelc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_claimed_once_it_is_free() -> Result<()> {
    let server = TestServer::start().await?;
    let (a_local, b_local) = (services::echo().await, services::echo().await);
    let port = server.range.0 + 7;
    let squatter = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let tunnels = format!(
        "{}{}",
        tcp_tunnel("busy", a_local, Some(port)),
        tcp_tunnel("other", b_local, None)
    );
    let mut c = TestClient::spawn(server.client_config(ALICE_TOKEN, &tunnels)?);
    let first = c.connected().await?;
    let busy = first
        .iter()
        .find(|t| t.name == "busy")
        .ok_or_else(|| anyhow!("no status for busy: {first:?}"))?;
    assert!(
        busy.retrying
            && busy.endpoint.is_none()
            && busy
                .error
                .as_deref()
                .is_some_and(|e| e.contains(&format!("port {port} cannot be bound"))),
        "{busy:?}"
    );
    // The neighbour tunnel serves while the busy one waits.
    let other = tunneld_integration_tests::endpoint_of(&first, "other")?;
    echo_roundtrip(other).await.context("the other tunnel")?;

    drop(squatter);
    let freed = Instant::now();
    let deadline = tokio::time::Instant::now() + WAIT;
    let changed = loop {
        let ev = tokio::time::timeout_at(deadline, c.events.recv())
            .await
            .context("no tunnels message after the port was freed")?
            .ok_or_else(|| anyhow!("tunnelc stopped"))?;
        match ev {
            tunneld_client::client::ClientEvent::TunnelsChanged { tunnels } => break tunnels,
            tunneld_client::client::ClientEvent::Disconnected { reason, .. } => {
                return Err(anyhow!("tunnelc disconnected: {reason}"))
            }
            _ => {}
        }
    };
    let ep = tunneld_integration_tests::endpoint_of(&changed, "busy")?;
    assert_eq!(ep.port(), port);
    eprintln!("claimed {:?} after the port was freed", freed.elapsed());
    for _ in 0..3 {
        echo_roundtrip(ep).await.context("the once-busy tunnel")?;
        echo_roundtrip(other).await.context("the other tunnel")?;
    }
    let m = server.metrics().await;
    assert!(
        m.get(
            "tunneld_claims_refused_total",
            &[("frontend", "tcp"), ("reason", "busy")]
        ) >= 1.0
    );
    c.shutdown().await?;
    // The session's end gives the port back.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the port is not released after tunnelc stopped")?;
    Ok(())
}

/// The hello of a tunnelc that does not say `+retrying` (older ones refuse unknown fields in
/// a tunnel status) gets the refusal without the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_is_only_told_to_clients_that_read_it() -> Result<()> {
    let server = TestServer::start().await?;
    let port = server.range.0 + 9;
    let _squatter = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    for (agent, told) in [("tunnelc 0.1.0", false), ("tunnelc 0.1.0 +retrying", true)] {
        let busy = TunnelRequest {
            name: "busy".into(),
            kind: TunnelKind::Tcp,
            remote_port: Some(port),
            frontend: None,
            proxy_protocol: None,
            subdomain: None,
        };
        let hello = alice_hello(agent, vec![busy], None);
        let answer = hello_answer(&server, &hello).await?;
        let status = &answer["tunnels"][0];
        assert!(
            status["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot be bound")),
            "{answer}"
        );
        assert_eq!(
            status.get("retrying").is_some(),
            told,
            "agent `{agent}`: {answer}"
        );
    }
    Ok(())
}

/// A retry that ends refused for good (here: the client's port quota filled up meanwhile)
/// stops a tunnelc whose every tunnel is then refused, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_refused_for_good_stops_a_tunnelc_with_nothing_left() -> Result<()> {
    let server = TestServer::start().await?;
    let local = services::echo().await;
    let port = server.range.0 + 11;
    let squatter = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut first =
        TestClient::spawn(server.client_config(ALICE_TOKEN, &tcp_tunnel("p", local, Some(port)))?);
    let t = first.connected().await?;
    assert!(t[0].retrying, "{t:?}");
    // Another tunnelc of alice takes her whole quota (max_ports: 3) meanwhile.
    let three = format!(
        "{}{}{}",
        tcp_tunnel("a", local, None),
        tcp_tunnel("b", local, None),
        tcp_tunnel("c", local, None)
    );
    let mut second = TestClient::spawn(server.client_config(ALICE_TOKEN, &three)?);
    let got = second.connected().await?;
    assert!(got.iter().all(|t| t.endpoint.is_some()), "{got:?}");
    drop(squatter);
    let err = tokio::time::timeout(WAIT, &mut first.task)
        .await
        .context("the retrying tunnelc did not stop")??
        .expect_err("it stops with an error");
    assert!(
        err.to_string().contains("refused every tunnel") && err.to_string().contains("quota"),
        "{err}"
    );
    // The other tunnelc is untouched.
    echo_roundtrip(tunneld_integration_tests::endpoint_of(&got, "a")?).await?;
    second.shutdown().await?;
    Ok(())
}
