//! Tunnel sessions: names belong to their owner and pools share one, an h2-reverse session's
//! floods end in GOAWAY while other tunnels keep working, and Node's 2ptth initiator.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_belong_to_their_owner_and_pools_share_one() -> Result<()> {
    let s = TestServer::start_web("    pools:\n      shop: [alice, bob]\n").await?;
    let a_local = http_echo("alice").await;
    let b_local = http_echo("bob").await;
    let alice_tunnels = format!(
        "{}{}{}",
        http_tunnel("site", a_local, Some("taken")),
        http_tunnel("random", a_local, None),
        http_tunnel("shop", a_local, Some("shop"))
    );
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &alice_tunnels)?);
    let first = alice.connected().await?;
    let random_url = first
        .iter()
        .find(|t| t.name == "random")
        .and_then(|t| t.endpoint.clone())
        .context("random name")?;
    let random = random_url
        .trim_start_matches("https://")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(random.len(), 16, "{random_url}");

    // bob asks for alice's name: refused with a clear reason; the pool name is shared.
    let bob_tunnels = format!(
        "{}{}",
        http_tunnel("mine", b_local, Some("taken")),
        http_tunnel("shop", b_local, Some("shop"))
    );
    let mut bob = TestClient::spawn(s.client_config(BOB_TOKEN, &bob_tunnels)?);
    let got = bob.connected().await?;
    let refused = got.iter().find(|t| t.name == "mine").context("mine")?;
    assert_eq!(
        refused.error.as_deref(),
        Some("name `taken` is held by another client"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|t| t.name == "shop" && t.endpoint.is_some()),
        "{got:?}"
    );

    // The pool answers round-robin from both members.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body, _) = visit(&s, "shop.localhost", "/", &[]).await?;
        assert_eq!(code, 200);
        seen.insert(body.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // alice goes away: the pool fails over to bob; her names stay hers.
    alice.shutdown().await?;
    for _ in 0..4 {
        let (code, body, _) = visit(&s, "shop.localhost", "/", &[]).await?;
        assert_eq!((code, body.lines().next()), (200, Some("tag=bob")));
    }
    let (code, _, _) = visit(&s, "taken.localhost", "/", &[]).await?;
    assert_eq!(code, 502);

    // She comes back within the grace period and gets both names again, the random one too.
    let mut alice = TestClient::spawn(s.h2_client_config(ALICE_TOKEN, &alice_tunnels)?);
    let again = alice.connected().await?;
    assert_eq!(
        again
            .iter()
            .find(|t| t.name == "random")
            .and_then(|t| t.endpoint.clone()),
        Some(random_url)
    );
    let (code, body, _) = visit(&s, "taken.localhost", "/", &[]).await?;
    assert_eq!((code, body.lines().next()), (200, Some("tag=alice")));
    let (code, _, _) = visit(&s, &format!("{random}.localhost"), "/", &[]).await?;
    assert_eq!(code, 200);
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_end_in_goaway_while_other_tunnels_keep_working() -> Result<()> {
    let s = TestServer::start_web("").await?;
    let local = http_echo("steady").await;
    let mut alice = TestClient::spawn(
        s.h2_client_config(ALICE_TOKEN, &http_tunnel("app", local, Some("steady")))?,
    );
    alice.connected().await?;
    let port = s.web().port();

    // Visitors: rapid reset (HEADERS then RST_STREAM, 500 times).
    let mut tls = tls_to(&s, "steady.localhost", b"h2", None).await?;
    let mut burst = h2raw::PREFACE.to_vec();
    burst.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
    let block = h2raw::get_block(&format!("steady.localhost:{port}"));
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &block,
        ));
        burst.extend(frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tls.write_all(&burst).await;
    assert_eq!(
        h2raw::goaway_code(&mut tls).await?,
        h2raw::ENHANCE_YOUR_CALM,
        "rapid reset"
    );

    // Visitors: a header block in endless CONTINUATION frames.
    let mut tls = tls_to(&s, "steady.localhost", b"h2", None).await?;
    let mut burst = h2raw::PREFACE.to_vec();
    burst.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
    burst.extend(frame(h2raw::HEADERS, 0, 1, &block));
    for _ in 0..200 {
        burst.extend(frame(h2raw::CONTINUATION, 0, 1, &h2raw::SMALL_FIELD));
    }
    let _ = tls.write_all(&burst).await;
    assert_eq!(
        h2raw::goaway_code(&mut tls).await?,
        h2raw::ENHANCE_YOUR_CALM,
        "CONTINUATION flood"
    );

    // A tunnel client answering in endless CONTINUATION frames, then one sending empty DATA
    // frames: tunneld ends each connection with GOAWAY.
    for (name, attack) in [("evil-cont", 0u8), ("evil-empty", 1u8)] {
        let mut evil = evil_session(&s, name).await?;
        let host = format!("{name}.localhost");
        let visitor = tokio::spawn({
            let ca = s.ca_file().display().to_string();
            let resolve = format!("{host}:{port}:127.0.0.1");
            let url = format!("https://{host}:{port}/");
            async move {
                curl(&[
                    "--cacert",
                    &ca,
                    "--resolve",
                    &resolve,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ])
                .await
            }
        });
        let stream = next_request(&mut evil).await?;
        let mut burst = Vec::new();
        if attack == 0 {
            burst.extend(frame(h2raw::HEADERS, 0, stream, &h2raw::STATUS_200));
            for _ in 0..200 {
                burst.extend(frame(h2raw::CONTINUATION, 0, stream, &h2raw::SMALL_FIELD));
            }
        } else {
            burst.extend(frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS,
                stream,
                &h2raw::STATUS_200,
            ));
            for _ in 0..300 {
                burst.extend(frame(h2raw::DATA, 0, stream, &[]));
            }
        }
        let _ = evil.write_all(&burst).await;
        assert_eq!(
            h2raw::goaway_code(&mut evil).await?,
            h2raw::ENHANCE_YOUR_CALM,
            "{name}"
        );
        let (_, code) = tokio::time::timeout(WAIT, visitor).await???;
        assert_ne!(code, "200", "{name}");
    }

    // The well-behaved tunnel never noticed.
    let (code, body, _) = visit(&s, "steady.localhost", "/", &["--http2"]).await?;
    assert_eq!((code, body.lines().next()), (200, Some("tag=steady")));
    // Counted after each connection's GOAWAY.
    let calm = |m: &metrics::Samples, transport: &str| {
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", transport), ("reason", "h2_enhance_your_calm")],
        )
    };
    let m = s
        .metrics_until(|m| calm(m, "h2") >= 2.0 && calm(m, "web") >= 2.0)
        .await;
    assert!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", "h2"), ("reason", "h2_enhance_your_calm")]
        ) >= 2.0
    );
    assert!(
        m.get(
            "tunneld_protocol_errors_total",
            &[("transport", "web"), ("reason", "h2_enhance_your_calm")]
        ) >= 2.0
    );
    alice.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2ptth_initiator_from_node_serves_curl() -> Result<()> {
    let s = TestServer::start_web("    compat_2ptth:\n      hostname: legacy.localhost\n").await?;
    // Nobody connected yet: 502 with the original's words.
    let (code, body, _) = visit(&s, "legacy.localhost", "/", &[]).await?;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body, "There is no upstream available\n");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/initiator-2ptth.js");
    let port = s.web().port().to_string();
    let ca = s.ca_file().display().to_string();
    let script = script.display().to_string();
    let mut node = Proc::spawn_program(
        Path::new("node"),
        &[&script, "127.0.0.1", &port, "localhost", &ca],
        s.dir.join("node.err"),
    )?;
    node.line_starting("connected").await?;
    for flag in ["--http1.1", "--http2"] {
        let (code, body, _) = visit(
            &s,
            "legacy.localhost",
            "/hello?x=1",
            &[flag, "--data-binary", "12345"],
        )
        .await?;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body,
            format!("2ptth POST /hello?x=1 authority=legacy.localhost:{port} body=5\n")
        );
    }
    let m = s.metrics().await;
    assert_eq!(
        m.get("tunneld_2ptth_upstreams", &[("frontend", "web")]),
        1.0
    );
    // The same listener still serves an ordinary browser-like client (ALPN h2/http1.1).
    let (code, _, v) = visit(&s, "nobody.localhost", "/", &["-k"]).await?;
    assert_eq!((code, v.as_str()), (404, "2"));
    drop(node);
    Ok(())
}
