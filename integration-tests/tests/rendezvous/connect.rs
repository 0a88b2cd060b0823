//! `CONNECT <tunnel>:<port>` to named tunnels: over every transport, with a token per tunnel,
//! and one namespace with the rendezvous ids.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_reaches_named_tunnels_over_every_transport_and_nothing_else() -> Result<()> {
    let s = server().await?;
    let local = services::http().await;
    // A yamux tunnel that names the rendezvous frontend.
    let mut c = TestClient::spawn(s.client_config(
        ALICE_TOKEN,
        &format!("  web:\n    local: \"{local}\"\n    frontend: rdv\n"),
    )?);
    let tunnels = c.connected().await?;
    assert_eq!(
        tunnels[0].endpoint.as_deref(),
        Some(format!("connect://{}/web", rdv(&s)).as_str()),
        "{tunnels:?}"
    );
    // A rendezvous id served over the connect transport.
    add_id(&s, "parked-id", Some("alice")).await?;
    let _p = park_client(&s, "parked-id", local, 2).await?;

    // A parked socket whose peer goes away leaves the queue without a visitor finding it.
    let (got, raw) = raw_park(
        &s,
        &format!(
            "CONNECT uuid:parked-id HTTP/1.1\r\nProxy-Authorization: Bearer {ALICE_TOKEN}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    wait_parked(&s, "parked-id", 3).await?;
    drop(raw);
    wait_parked(&s, "parked-id", 2).await?;
    // Counted just after the ticket leaves the queue.
    assert!(
        s.metrics_when(
            "tunneld_rendezvous_parked_dropped_total",
            &[("reason", "closed")],
            1.0
        )
        .await
        .get(
            "tunneld_rendezvous_parked_dropped_total",
            &[("reason", "closed")]
        ) >= 1.0
    );

    let ca = s.ca_file().display().to_string();
    let proxy = format!("https://localhost:{}", rdv(&s).port());
    let res = resolve(&s);
    let user = format!("visitor:{VISITOR_PASSWORD}");
    for (name, path) in [("web", "/over-yamux"), ("parked-id", "/over-connect")] {
        let target = format!("http://{name}:80{path}");
        let (st, out) = curl(&[
            "--resolve",
            &res,
            "--proxy-cacert",
            &ca,
            "-p",
            "-x",
            &proxy,
            "--proxy-user",
            &user,
            &target,
        ])
        .await?;
        assert!(st.success(), "{name}: {out}");
        assert_eq!(out, format!("hello {path} host={name} body=0\n"));
    }

    // Refusals, with the bytes of a raw client.
    let bystander = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let forbidden = format!("127.0.0.1:{}", bystander.local_addr()?.port());
    let basic = format!("Basic {}", data_encoding::BASE64.encode(user.as_bytes()));
    for (target, auth, want) in [
        (forbidden.as_str(), basic.as_str(), "HTTP/1.1 403 "),
        ("127.0.0.1:22", basic.as_str(), "HTTP/1.1 403 "),
        ("[::1]:22", basic.as_str(), "HTTP/1.1 403 "),
        ("localhost:80", basic.as_str(), "HTTP/1.1 403 "),
        ("nosuch:80", basic.as_str(), "HTTP/1.1 403 "),
        ("web:80", "Basic d3Jvbmc6d3Jvbmc=", "HTTP/1.1 407 "),
        ("web", basic.as_str(), "HTTP/1.1 400 "),
    ] {
        let mut tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
        tls.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n").as_bytes()).await?;
        let got = String::from_utf8_lossy(&read_all(&mut tls).await).to_string();
        assert!(got.starts_with(want), "{target}: {got}");
    }
    // tunneld never dialled the address it was asked for.
    let dialled = tokio::time::timeout(std::time::Duration::ZERO, bystander.accept()).await;
    assert!(dialled.is_err(), "tunneld connected to {forbidden}");

    // A name is bound to its owner.
    let mut bob = TestClient::spawn(s.client_config(
        BOB_TOKEN,
        &format!("  web:\n    local: \"{local}\"\n    frontend: rdv\n"),
    )?);
    // Its only tunnel refused, bob's tunnelc says why and stops.
    assert!(bob.connected().await.is_err());
    let err = tokio::time::timeout(WAIT, bob.task)
        .await??
        .expect_err("bob's tunnelc stops")
        .to_string();
    assert!(
        err.contains("web: name `web` is held by another client"),
        "{err}"
    );

    // After the owner leaves the name is reserved: 502, not someone else's service.
    c.shutdown().await?;
    let mut tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
    tls.write_all(
        format!("CONNECT web:80 HTTP/1.1\r\nProxy-Authorization: {basic}\r\n\r\n").as_bytes(),
    )
    .await?;
    let got = String::from_utf8_lossy(&read_all(&mut tls).await).to_string();
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");

    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_connect_requests_total",
            &[("frontend", "rdv"), ("outcome", "ok")]
        ) >= 2.0
    );
    assert!(
        m.get(
            "tunneld_connect_requests_total",
            &[("frontend", "rdv"), ("outcome", "forbidden")]
        ) >= 4.0
    );
    assert!(
        m.get(
            "tunneld_connect_requests_total",
            &[("frontend", "rdv"), ("outcome", "unauthorized")]
        ) >= 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_token_per_tunnel() -> Result<()> {
    let web_token = "web-visitor-token-0123456";
    let extra = format!(
        "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    connect_access: {{ auth: token, tokens: {{ web: {web_token} }} }}\n"
    );
    let s = TestServer::start_with(&extra).await?;
    let local = services::echo().await;
    let mut c = TestClient::spawn(s.client_config(
        ALICE_TOKEN,
        &format!("  web:\n    local: \"{local}\"\n    frontend: rdv\n  other:\n    local: \"{local}\"\n    frontend: rdv\n"),
    )?);
    c.connected().await?;
    for (target, auth, want) in [
        (
            "web:22",
            format!("Bearer {web_token}"),
            "HTTP/1.1 200 Connection established\r\n\r\n",
        ),
        (
            "web:22",
            "Bearer wrong-token-0000000000".to_string(),
            "HTTP/1.1 407 ",
        ),
        ("other:22", format!("Bearer {web_token}"), "HTTP/1.1 403 "),
    ] {
        let mut tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
        tls.write_all(
            format!("CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\nping")
                .as_bytes(),
        )
        .await?;
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(WAIT, tls.read_exact(&mut got)).await??;
        assert_eq!(String::from_utf8_lossy(&got), want, "{target}");
        if want.contains("200") {
            // Bytes sent right behind the CONNECT head reach the service.
            let mut echo = [0u8; 4];
            tokio::time::timeout(WAIT, tls.read_exact(&mut echo)).await??;
            assert_eq!(&echo, b"ping");
        }
    }
    Ok(())
}

/// Tunnel names and rendezvous ids are one namespace on a rendezvous frontend: a name that
/// is someone's id is refused, and an id made while a name of that label is claimed takes
/// the label over (`CONNECT <label>:<port>` reaches the id's hidden servers, never the name's
/// service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_name_never_captures_a_rendezvous_id() -> Result<()> {
    let s = server().await?;
    let local = services::http().await;
    add_id(&s, "r1", Some("bob")).await?;
    let mut alice = TestClient::spawn(s.client_config(
        ALICE_TOKEN,
        &format!("  r1:\n    local: \"{local}\"\n    frontend: rdv\n"),
    )?);
    assert!(alice.connected().await.is_err());
    let err = tokio::time::timeout(WAIT, alice.task)
        .await??
        .expect_err("alice's tunnelc stops")
        .to_string();
    assert!(err.contains("`r1` is a rendezvous id"), "{err}");

    // A name first, then an id of the same label: the id owns it.
    let mut alice = TestClient::spawn(s.client_config(
        ALICE_TOKEN,
        &format!("  later:\n    local: \"{local}\"\n    frontend: rdv\n"),
    )?);
    alice.connected().await?;
    add_id(&s, "later", Some("bob")).await?;
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("visitor:{VISITOR_PASSWORD}").as_bytes())
    );
    let got = raw_request(
        &s,
        &format!("CONNECT later:80 HTTP/1.1\r\nProxy-Authorization: {basic}\r\n\r\nGET / HTTP/1.1\r\nHost: later\r\n\r\n"),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 502 ") && got.contains("no hidden server is waiting"),
        "{got}"
    );
    alice.stop.cancel();
    Ok(())
}
