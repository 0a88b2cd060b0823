//! Hidden servers parking: the wire byte for byte and its TOTP rules, node-rendezvous's own
//! hidden server unchanged, strangers who try to lock an id out, tunnelc's own secrets per
//! id, and used codes across a restart.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_server_wire_answers_and_totp_rules() -> Result<()> {
    let s = server().await?;
    let secret = add_id(&s, "wire", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;

    let (got, _) = raw_park(&s, "CONNECT example.com:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!(got, err_answer(403, "request-target must be uuid:<ID>"));
    let (got, _) = raw_park(&s, "CONNECT uuid:wire HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        got,
        err_answer(407, "the response parameter (TOTP code) is missing")
    );
    let (got, _) = raw_park(
        &s,
        "CONNECT uuid:wire?response=123456 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(
        got,
        err_answer(409, "data sent before the answer to CONNECT")
    );

    // A good code from oathtool parks; the visitor's request arrives without Authorization.
    let code = oathtool(&secret, 30).await?;
    let (got, mut parked) = raw_park(
        &s,
        &format!("CONNECT uuid:wire?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    let visitor = spawn_curl_visit(
        &s,
        "/from-visitor",
        &["--digest", "-u", "wire:pw", "-H", "X-Extra: 1"],
    );
    let head = read_head(&mut parked).await?;
    assert!(head.starts_with("GET /from-visitor HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Extra: 1\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
    parked
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhidden")
        .await?;
    parked.shutdown().await?;
    let (_, out) = visitor.await??;
    assert_eq!(out, "hidden");

    // The same code again from the address that used it parks again (the original hidden
    // server re-parks with the current code after each visitor); from another address it is
    // refused. An expired code is refused too.
    let (got, again) = raw_park(
        &s,
        &format!("CONNECT uuid:wire?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    drop(again);
    let (got, _) = raw_park_from(
        &s,
        [127, 0, 0, 3],
        &format!("CONNECT uuid:wire?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(
        got,
        err_answer(401, "this code was already used; wait for the next one")
    );
    let old = totp::code(&key, now_counter(30) - 3);
    let (got, _) = raw_park(
        &s,
        &format!("CONNECT uuid:wire?response={old} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, err_answer(401, "unknown id or wrong code"));
    // An unknown id looks the same as a wrong code.
    let (got, _) = raw_park(&s, "CONNECT uuid:nope?response=000000 HTTP/1.1\r\n\r\n").await;
    assert_eq!(got, err_answer(401, "unknown id or wrong code"));

    let (got, _) = raw_park(&s, "CONNECT uuid:wire?response=12x HTTP/1.1\r\n\r\n").await;
    assert_eq!(got, err_answer(401, "unknown id or wrong code"));

    // The attempt cap (3 here): the next try is refused even with a right code.
    let fresh = totp::code(&key, now_counter(30) + 1);
    let (got, _) = raw_park(
        &s,
        &format!("CONNECT uuid:wire?response={fresh} HTTP/1.1\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 429\r\n\r\n{\"error\":{\"permanent\":false,\"diagnostic\":\"too many failed attempts"), "{text}");
    // The address made three failures (the id `wire` only two): the message says which.
    assert!(
        text.contains("too many failed attempts from 127.0.0.1;"),
        "{text}"
    );

    // A token parks only for an id that names its client.
    let (got, _) = raw_park(
        &s,
        &format!("CONNECT uuid:wire HTTP/1.1\r\nProxy-Authorization: Bearer {BOB_TOKEN}\r\n\r\n"),
    )
    .await;
    assert_eq!(got, err_answer(401, "client `bob` may not park for id `wire` (the id is unknown or belongs to another client)"));

    // Nothing parked for a known id: the visitor waits `visitor_wait` (2 s here), then 404.
    let out = basic_visit(&s, "wire:pw", "/late").await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.ends_with("\"UUID not registered\"}}"), "{out}");

    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_rendezvous_visitors_total",
            &[("frontend", "rdv"), ("outcome", "nothing_parked")]
        ),
        1.0
    );
    for (reason, n) in [
        ("replayed_code", 1.0),
        ("wrong_code", 1.0),
        ("malformed_code", 1.0),
        ("unknown_id", 1.0),
        ("locked_out", 1.0),
    ] {
        assert!(
            m.get(
                "tunneld_rendezvous_totp_failures_total",
                &[("reason", reason)]
            ) >= n,
            "{reason}"
        );
    }
    for outcome in [
        "forbidden_target",
        "missing_response",
        "early_data",
        "ok",
        "unauthorized",
    ] {
        assert!(
            m.get(
                "tunneld_rendezvous_park_requests_total",
                &[("outcome", outcome)]
            ) >= 1.0,
            "{outcome}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_node_hidden_server_works_unchanged() -> Result<()> {
    let s = server().await?;
    let secret = add_id(&s, "node-hidden", None).await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/hidden-server.js");
    let addr = hidden(&s);
    let ca = s.ca_file().display().to_string();
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let mut node = Proc::spawn_program(
        Path::new("node"),
        &[
            script.to_str().unwrap_or_default(),
            &host,
            &port,
            "node-hidden",
            &secret,
            "30",
            &ca,
        ],
        s.dir.join("node.err"),
    )?;
    node.line_starting("parked").await?;
    let out = digest_visit(&s, "node-hidden", "/via-node").await?;
    assert_eq!(out, "node saw GET /via-node HTTP/1.1 authorization=no\n");
    assert!(node.wait().await?.success(), "{}", node.stderr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_hidden_server_loop_reparks_with_the_current_code() -> Result<()> {
    let s = server().await?;
    // Four connections wanted, each parked with the code of the current step from one
    // address: all four park (no `401 already used`).
    let secret = add_id(&s, "loop4", None).await?;
    let mut four = original_hidden_server(&s, "loop4", &secret, 4)?;
    for _ in 0..4 {
        let line = four.next_line().await?;
        anyhow::ensure!(line == "parked", "expected `parked`, got `{line}`");
    }
    wait_parked(&s, "loop4", 4).await?;
    // Sequential visitors: each is served and the hidden server parks again at once, with
    // the same code while the step lasts.
    for i in 1..=10 {
        let out = digest_visit(&s, "loop4", &format!("/seq{i}")).await?;
        anyhow::ensure!(
            out.starts_with("node served ") && out.ends_with(&format!("GET /seq{i} HTTP/1.1\n")),
            "visitor {i}: {out}"
        );
    }
    drop(four);

    // One connection wanted: each next visitor arrives while the hidden server is parking
    // again (or before it parked at all) and waits (`visitor_wait`). The hidden server gets
    // the `200` alone and the request later, in a `data` event, as the original needs.
    let secret = add_id(&s, "loop1", None).await?;
    let early = spawn_curl_visit(&s, "/early", &["--digest", "-u", "loop1:pw"]);
    // Node starts far slower than curl's two round trips: the visitor is already waiting.
    let mut one = original_hidden_server(&s, "loop1", &secret, 1)?;
    let (st, out) = early.await??;
    anyhow::ensure!(st.success(), "the waiting visitor failed: {st} {out}");
    anyhow::ensure!(out == "node served 1 GET /early HTTP/1.1\n", "{out}");
    for i in 2..=6 {
        let out = digest_visit(&s, "loop1", &format!("/one{i}")).await?;
        anyhow::ensure!(
            out == format!("node served {i} GET /one{i} HTTP/1.1\n"),
            "visitor {i}: {out}"
        );
    }
    // Never refused.
    for _ in 0..6 {
        let line = one.next_line().await?;
        anyhow::ensure!(
            line == "parked" || line.starts_with("served "),
            "the hidden server saw `{line}`"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_lock_an_id_out_of_its_own_hidden_servers() -> Result<()> {
    let s = server().await?;
    let secret = add_id(&s, "guarded", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;
    // The hidden server parks from 127.0.0.1.
    let code = totp::code(&key, now_counter(30));
    let (got, first) = raw_park(
        &s,
        &format!("CONNECT uuid:guarded?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    drop(first);
    // Strangers on two other addresses make the id's failure count reach the cap (3), each
    // staying under the per-address cap.
    for (from, n) in [([127, 0, 0, 4], 2), ([127, 0, 0, 5], 1)] {
        for _ in 0..n {
            let (got, _) = raw_park_from(
                &s,
                from,
                "CONNECT uuid:guarded?response=000001 HTTP/1.1\r\n\r\n",
            )
            .await;
            assert_eq!(got, err_answer(401, "unknown id or wrong code"));
        }
    }
    // A new address is locked out by the id's count ...
    let fresh = totp::code(&key, now_counter(30) + 1);
    let (got, _) = raw_park_from(
        &s,
        [127, 0, 0, 6],
        &format!("CONNECT uuid:guarded?response={fresh} HTTP/1.1\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("too many failed attempts for id `guarded`"),
        "{text}"
    );
    // ... the hidden server's own address is not.
    let (got, parked) = raw_park(
        &s,
        &format!("CONNECT uuid:guarded?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(
        got,
        b"HTTP/1.1 200\r\n\r\n",
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(parked);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelc_parks_with_an_ids_own_secret_and_says_when_it_wants_too_many() -> Result<()> {
    let s = server().await?;
    let local = services::http().await;
    // `foreign` belongs to no client: tunnelc (which has a token) parks for it with the
    // id's secret, and a visitor is served.
    let secret = add_id(&s, "foreign", None).await?;
    let c = rendezvous_client(
        &s,
        &format!("  foreign: {{ local: \"{local}\", parked: 2, secret: {secret} }}\n"),
    )?;
    wait_parked(&s, "foreign", 2).await?;
    let out = basic_visit(&s, "foreign:pw", "/f").await?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "{out}");
    c.stop.cancel();

    // 12 parked wanted, tunneld keeps 8 per id: 8 park, the 4 others stop with a message,
    // and no connection is evicted by its own client.
    add_id(&s, "many", Some("alice")).await?;
    let mut c = rendezvous_client(
        &s,
        &format!("  many: {{ local: \"{local}\", parked: 12 }}\n"),
    )?;
    let mut told = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while told < 4 {
        let ev = tokio::time::timeout_at(deadline, c.events.recv())
            .await
            .context("tunnelc did not report the refused workers")?
            .ok_or_else(|| anyhow!("tunnelc stopped"))?;
        if let ClientEvent::Disconnected { reason, .. } = ev {
            anyhow::ensure!(
                reason.contains("max_parked_per_id") && reason.contains("lower `parked`"),
                "{reason}"
            );
            told += 1;
        }
    }
    wait_parked(&s, "many", 8).await?;
    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_rendezvous_parked_dropped_total",
            &[("reason", "evicted")]
        ),
        0.0
    );
    assert!(
        m.get(
            "tunneld_rendezvous_park_requests_total",
            &[("outcome", "full")]
        ) >= 4.0
    );
    c.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_codes_stay_used_across_a_restart() -> Result<()> {
    let s = server().await?;
    let secret = add_id(&s, "durable", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;
    let code = totp::code(&key, now_counter(30));
    let req = format!("CONNECT uuid:durable?response={code} HTTP/1.1\r\n\r\n");
    let (got, parked) = raw_park(&s, &req).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    drop(parked);

    // Stop and start again on the same config and state.
    let TestServer {
        running,
        dir,
        range,
    } = s;
    running.stop().await;
    drop(running);
    let cfg = tunneld_daemon::config::server::ServerConfig::load(
        Some(&dir.join("server.yaml")),
        &["transports.hidden={type: connect, listen: \"127.0.0.1:0\"}".into()],
    )
    .map_err(|e| anyhow!("{e}"))?;
    let running = tunneld_daemon::server::start(cfg).await?;
    let s = TestServer {
        running,
        dir,
        range,
    };

    // From another address the code is still spent; its first user may park with it again.
    let (got, _) = raw_park_from(&s, [127, 0, 0, 7], &req).await;
    assert_eq!(
        got,
        err_answer(401, "this code was already used; wait for the next one")
    );
    let (got, _) = raw_park(&s, &req).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    Ok(())
}
