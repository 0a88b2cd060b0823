//! node-rendezvous on tunneld: the `connect` transport (hidden servers parking connections)
//! and the `rendezvous` frontend (visitors by Digest/Basic username or `?rendezvous=`, and
//! `CONNECT <tunnel>:<port>` to named tunnels). Real peers: curl, oathtool, Node, a Rust
//! TLS client speaking the hidden-server wire byte for byte, tokio-tungstenite.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunneld_client::client::ClientEvent;
use tunneld_core::totp;
use tunneld_integration_tests::process::{self, curl, Proc};
use tunneld_integration_tests::{
    services, sha256_hex, temp_dir, TestClient, TestServer, ALICE_TOKEN, BOB_TOKEN, WAIT,
};

const VISITOR_PASSWORD: &str = "visitor-password-0123";

/// tunneld with a `connect` transport (`hidden`) and a `rendezvous` frontend (`rdv`).
async fn server() -> Result<TestServer> {
    let extra = format!(
        "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    visitor_wait: 2s\n    connect_access: {{ auth: basic, users: {{ visitor: {VISITOR_PASSWORD} }} }}\nrendezvous:\n  max_failures: 3\n  max_parked_per_id: 8\n"
    );
    TestServer::start_full(
        &extra,
        &["transports.hidden={type: connect, listen: \"127.0.0.1:0\"}".into()],
    )
    .await
}

fn hidden(s: &TestServer) -> SocketAddr {
    s.running.transports["hidden"]
}

fn rdv(s: &TestServer) -> SocketAddr {
    s.running.frontends["rdv"]
}

/// `tunneld rendezvous add` with the real binary on the server's config; returns the secret.
async fn add_id(s: &TestServer, id: &str, client: Option<&str>) -> Result<String> {
    let mut args = vec![
        "--config".to_string(),
        s.dir.join("server.yaml").display().to_string(),
        "rendezvous".into(),
        "add".into(),
        id.into(),
    ];
    if let Some(c) = client {
        args.extend(["--client".into(), c.into()]);
    }
    let out = tokio::process::Command::new(process::binary("tunneld")?)
        .args(&args)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "rendezvous add failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("id: {id}\n")), "{text}");
    assert!(text.contains("uri: otpauth://totp/tunneld:"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no secret in {text}"))
}

/// An in-process tunnelc serving `id` over the connect transport; waits until it parked.
async fn park_client(
    s: &TestServer,
    id: &str,
    local: SocketAddr,
    parked: usize,
) -> Result<TestClient> {
    let yaml = format!(
        "server: {}\nserver_name: localhost\ntransport: connect\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\nrendezvous:\n  {id}: {{ local: \"{local}\", parked: {parked} }}\n",
        hidden(s),
        s.ca_file().display()
    );
    let file = temp_dir("client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    let cfg = tunneld_client::config::client::ClientConfig::load(Some(&file), &[])
        .map_err(|e| anyhow!("{e}"))?;
    let mut c = TestClient::spawn(cfg);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, c.events.recv())
            .await
            .context("tunnelc did not park in time")?
            .ok_or_else(|| anyhow!("tunnelc stopped"))?;
        match ev {
            ClientEvent::Parked { id: got } if got == id => break,
            ClientEvent::Disconnected { reason, .. } => return Err(anyhow!("tunnelc: {reason}")),
            _ => {}
        }
    }
    wait_parked(s, id, parked).await?;
    Ok(c)
}

/// Polls (bounded) until exactly `n` connections are parked for `id`.
async fn wait_parked(s: &TestServer, id: &str, n: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.running.rendezvous.parked(id) != n {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} parked for {id}, expected {n}",
            s.running.rendezvous.parked(id)
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

fn url(s: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", rdv(s).port())
}

fn resolve(s: &TestServer) -> String {
    format!("localhost:{}:127.0.0.1", rdv(s).port())
}

/// Reads until the peer closes (bounded).
async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await;
    out
}

/// One raw hidden-server exchange: sends `request`, returns everything tunneld answered
/// before closing (or the bytes up to the end of a 200 answer).
async fn raw_park(
    s: &TestServer,
    request: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    raw_park_from(s, [127, 0, 0, 1], request).await
}

/// [`raw_park`] from another loopback source address.
async fn raw_park_from(
    s: &TestServer,
    from: [u8; 4],
    request: &str,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut tls = s.tls_connect_from(from, hidden(s), b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.expect("write");
    tls.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            if got == b"HTTP/1.1 200\r\n\r\n" {
                break;
            }
        }
    })
    .await;
    (got, tls)
}

fn err_answer(code: u16, diagnostic: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code}\r\n\r\n{{\"error\":{{\"permanent\":false,\"diagnostic\":\"{diagnostic}\"}}}}").into_bytes()
}

/// A code from Debian's oathtool (the reference implementation of RFC 6238 here).
async fn oathtool(secret: &str, step: u64) -> Result<String> {
    let out = tokio::process::Command::new("oathtool")
        .args(["--totp", "-b", &format!("--time-step-size={step}s"), secret])
        .output()
        .await
        .context("oathtool is not installed (scripts/test installs it)")?;
    anyhow::ensure!(out.status.success(), "oathtool failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn now_counter(step: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    totp::counter_at(now, step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tunnelc_serves_an_id_to_curl_with_digest_and_basic() -> Result<()> {
    let s = server().await?;
    add_id(&s, "rdv-one", Some("alice")).await?;
    let local = services::http_inspect().await;
    let _c = park_client(&s, "rdv-one", local, 4).await?;
    let (res, ca) = (resolve(&s), s.ca_file().display().to_string());
    let base = ["--resolve", &res, "--cacert", &ca];

    // No credentials: node-rendezvous's Digest challenge.
    let (_, out) = curl(&[&base[..], &["-i", &url(&s, "/x")]].concat()).await?;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.contains(
            "WWW-Authenticate: Digest realm=\"rendezvous\", qop=\"auth, auth-int\", nonce=\""
        ),
        "{out}"
    );
    assert!(out.contains("opaque=\""), "{out}");

    // Digest and Basic, username = id; Authorization never reaches the hidden side.
    for auth in ["--digest", "--basic"] {
        let (st, out) = curl(
            &[
                &base[..],
                &[auth, "-u", "rdv-one:anything", &url(&s, "/digest?q=1")],
            ]
            .concat(),
        )
        .await?;
        assert!(st.success(), "{auth}: {out}");
        assert_eq!(
            out,
            format!(
                "hello /digest?q=1 host=localhost:{} body=0 sha256={} authorization=no\n",
                rdv(&s).port(),
                sha256_hex(b"")
            ),
            "{auth}"
        );
    }

    // An 8 MiB POST arrives intact, with Digest (curl probes with an empty body first) and
    // with Basic (the body follows the head at once).
    let dir = temp_dir("rdv-post");
    let body = tunneld_integration_tests::pattern(8 << 20, 5);
    let file = dir.join("body.bin");
    std::fs::write(&file, &body)?;
    let data = format!("@{}", file.display());
    for auth in ["--digest", "--basic"] {
        let (st, out) = curl(
            &[
                &base[..],
                &[
                    auth,
                    "-u",
                    "rdv-one:x",
                    "--data-binary",
                    &data,
                    &url(&s, "/post"),
                ],
            ]
            .concat(),
        )
        .await?;
        assert!(st.success(), "{out}");
        assert!(
            out.contains(&format!(
                "body={} sha256={} ",
                body.len(),
                sha256_hex(&body)
            )),
            "{auth}: {out}"
        );
    }

    // Unknown id: 404 with the JSON error, at once.
    let (_, out) = curl(&[&base[..], &["-i", "-u", "nobody:x", &url(&s, "/")]].concat()).await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        out.ends_with("{\"error\":{\"permanent\":false,\"diagnostic\":\"UUID not registered\"}}"),
        "{out}"
    );

    // 50 concurrent visitors, each with its own Digest round: the parked pool refills.
    let urls: Vec<String> = (0..50).map(|i| url(&s, &format!("/c{i}"))).collect();
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--digest",
        "-u",
        "rdv-one:x",
        "-Z",
        "--parallel-max",
        "50",
        "--parallel-immediate",
        "-w",
        "%{http_code}\n",
        "-o",
        "/dev/null",
    ]);
    args.extend(urls.iter().map(String::as_str));
    let (_, out) = curl(&args).await?;
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 50, "{out}");

    // curl reuses a matched connection for later requests (it stays spliced to the same
    // hidden server), so matches count connections, not requests.
    let m = s.metrics().await;
    let matched = m.get(
        "tunneld_rendezvous_visitors_total",
        &[("frontend", "rdv"), ("outcome", "matched")],
    );
    assert!(matched >= 5.0, "{matched}");
    assert!(
        m.get(
            "tunneld_rendezvous_visitors_total",
            &[("frontend", "rdv"), ("outcome", "challenged")]
        ) >= 1.0
    );
    assert!(
        m.get(
            "tunneld_rendezvous_visitors_total",
            &[("frontend", "rdv"), ("outcome", "unknown_id")]
        ) >= 1.0
    );
    assert!(
        m.get(
            "tunneld_rendezvous_park_requests_total",
            &[("outcome", "ok")]
        ) >= matched
    );
    Ok(())
}

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
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/from-visitor"),
    );
    let visitor = tokio::spawn(async move {
        curl(&[
            "--resolve",
            &res,
            "--cacert",
            &ca,
            "--digest",
            "-u",
            "wire:pw",
            "-H",
            "X-Extra: 1",
            &u,
        ])
        .await
    });
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, parked.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "parked connection closed");
        head.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
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
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/late"),
    );
    let (_, out) = curl(&[
        "-i",
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "-u",
        "wire:pw",
        &u,
    ])
    .await?;
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
    let (res, u) = (resolve(&s), url(&s, "/via-node"));
    let (_, out) = curl(&[
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "--digest",
        "-u",
        "node-hidden:pw",
        &u,
    ])
    .await?;
    assert_eq!(out, "node saw GET /via-node HTTP/1.1 authorization=no\n");
    assert!(node.wait().await?.success(), "{}", node.stderr());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_echo_through_the_rendezvous_query_parameter() -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = server().await?;
    add_id(&s, "ws-id", Some("alice")).await?;
    let _c = park_client(&s, "ws-id", services::websocket_echo().await, 2).await?;
    let tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(
            format!("wss://localhost:{}/chat?rendezvous=ws-id", rdv(&s).port()),
            tls,
        ),
    )
    .await??;
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await?;
        let back = tokio::time::timeout(WAIT, ws.next())
            .await?
            .ok_or_else(|| anyhow!("closed"))??;
        assert_eq!(back.into_text()?.as_str(), text);
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await?;
    let back = tokio::time::timeout(WAIT, ws.next())
        .await?
        .ok_or_else(|| anyhow!("closed"))??;
    assert_eq!(back.into_data().as_ref(), &big[..]);
    ws.close(None).await?;
    Ok(())
}

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

/// One raw request on a new TLS connection to the rendezvous frontend; the whole answer.
async fn raw_request(s: &TestServer, request: &str) -> String {
    let mut tls = s.tls_connect_to(rdv(s), b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    // One response: the head, then Content-Length bytes.
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_nonces_are_tunnelds_own_and_counts_cannot_repeat() -> Result<()> {
    let s = server().await?;
    let challenge = raw_request(&s, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        challenge.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{challenge}"
    );
    let field = |name: &str| -> String {
        let start = challenge
            .find(&format!("{name}=\""))
            .map(|i| i + name.len() + 2)
            .unwrap_or(0);
        challenge[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (nonce, opaque) = (field("nonce"), field("opaque"));
    let digest = |nonce: &str, nc: &str| {
        format!("GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Digest username=\"no-such-id\", realm=\"rendezvous\", nonce=\"{nonce}\", uri=\"/\", cnonce=\"c\", nc={nc}, qop=auth, response=\"0\", opaque=\"{opaque}\"\r\n\r\n")
    };
    // Accepted nonce: the request goes on to the id (unknown here: 404).
    assert!(raw_request(&s, &digest(&nonce, "00000001"))
        .await
        .starts_with("HTTP/1.1 404 "));
    // The same count again: replayed.
    let again = raw_request(&s, &digest(&nonce, "00000001")).await;
    assert!(
        again.starts_with("HTTP/1.1 401 ") && again.contains("replayed_nonce"),
        "{again}"
    );
    assert!(raw_request(&s, &digest(&nonce, "00000002"))
        .await
        .starts_with("HTTP/1.1 404 "));
    // A nonce tunneld never issued.
    let forged = raw_request(
        &s,
        &digest("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "00000001"),
    )
    .await;
    assert!(
        forged.starts_with("HTTP/1.1 401 ") && forged.contains("foreign_nonce"),
        "{forged}"
    );
    // Smuggling-shaped framing is refused.
    let smuggle = raw_request(&s, "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic eDp4\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    assert!(smuggle.starts_with("HTTP/1.1 400 "), "{smuggle}");
    // A head over limits.max_request_head (64 KiB) gets 431 and one below it is read; a
    // malformed one gets 400.
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(65 * 1024));
    let big = raw_request(&s, &huge).await;
    assert!(
        big.starts_with("HTTP/1.1 431 ") && big.contains("larger than 65536 bytes"),
        "{big}"
    );
    let fits = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(60 * 1024));
    let fits = raw_request(&s, &fits).await;
    assert!(fits.starts_with("HTTP/1.1 401 "), "{fits}");
    let bad = raw_request(&s, "GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(
        bad.starts_with("HTTP/1.1 400 ") && bad.contains("malformed request head"),
        "{bad}"
    );
    let (got, _) = raw_park(&s, "CONNECT uuid:x HTTP/1.1\r\nbroken header\r\n\r\n").await;
    let got = String::from_utf8_lossy(&got).to_string();
    assert!(got.starts_with("HTTP/1.1 400\r\n\r\n{\"error\":{\"permanent\":false,\"diagnostic\":\"malformed request head"), "{got}");

    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_rendezvous_visitors_total",
            &[("frontend", "rdv"), ("outcome", "replayed_nonce")]
        ),
        1.0
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

#[tokio::test]
async fn rendezvous_cli_adds_lists_and_removes_ids() -> Result<()> {
    let dir = temp_dir("rdv-cli");
    let config = dir.join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nauth: {{ tokens: {{ a: {{ token: aaaaaaaaaaaaaaaaaaaa }} }} }}\ntransports: {{ hidden: {{ type: connect, listen: 127.0.0.1:0 }} }}\nfrontends: {{ tcp: {{ type: ports, range: 20000-20010 }} }}\n",
            dir.join("state").display()
        ),
    )?;
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(process::binary("tunneld")?)
                .arg("--config")
                .arg(&config)
                .arg("rendezvous")
                .args(&args)
                .output()
                .await?;
            Ok::<_, anyhow::Error>((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            ))
        }
    };
    let (ok, out) = run(vec!["add".into(), "--step".into(), "60".into()]).await?;
    assert!(ok, "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 36, "a UUID: {out}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_default();
    assert!(out.contains(&format!("uri: otpauth://totp/tunneld:{id}?secret={secret}&issuer=tunneld&algorithm=SHA1&digits=6&period=60")), "{out}");
    let (ok, out) = run(vec!["add".into(), id.clone()]).await?;
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = run(vec!["add".into(), "bad id".into()]).await?;
    assert!(!ok && out.contains("is invalid"), "{out}");
    let (ok, out) = run(vec!["list".into()]).await?;
    assert!(
        ok && out.contains(&format!("{id} step=60 client=-")),
        "{out}"
    );
    assert!(!out.contains(secret), "list never shows secrets: {out}");
    let (ok, out) = run(vec!["list".into(), "--json".into()]).await?;
    let json = out.lines().find(|l| l.starts_with('[')).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json)?;
    assert!(
        ok && v[0]["id"] == id.as_str() && v[0]["step"] == 60,
        "{out}"
    );
    assert!(
        !out.contains(secret),
        "list --json never shows secrets: {out}"
    );
    let (ok, out) = run(vec!["remove".into(), id.clone()]).await?;
    assert!(ok && out.contains(&format!("removed {id}")), "{out}");
    let (ok, out) = run(vec!["remove".into(), id.clone()]).await?;
    assert!(!ok && out.contains("no rendezvous id"), "{out}");
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

/// Spawns `node/original-hidden-server.js` for `id`, keeping `wanted` connections parked.
fn original_hidden_server(s: &TestServer, id: &str, secret: &str, wanted: usize) -> Result<Proc> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/original-hidden-server.js");
    let addr = hidden(s);
    let ca = s.ca_file().display().to_string();
    Proc::spawn_program(
        Path::new("node"),
        &[
            script.to_str().unwrap_or_default(),
            &addr.ip().to_string(),
            &addr.port().to_string(),
            id,
            secret,
            "30",
            &ca,
            &wanted.to_string(),
        ],
        s.dir.join(format!("node-{id}.err")),
    )
}

/// A Digest visitor for `id` with curl; returns the body.
async fn digest_visit(s: &TestServer, id: &str, path: &str) -> Result<String> {
    let (res, ca, u) = (resolve(s), s.ca_file().display().to_string(), url(s, path));
    let user = format!("{id}:pw");
    let (st, out) = curl(&[
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "--digest",
        "-u",
        &user,
        &u,
    ])
    .await?;
    anyhow::ensure!(st.success(), "curl {path}: {st} {out}");
    Ok(out)
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
    let early = {
        let (res, ca, u) = (
            resolve(&s),
            s.ca_file().display().to_string(),
            url(&s, "/early"),
        );
        tokio::spawn(async move {
            curl(&[
                "--resolve",
                &res,
                "--cacert",
                &ca,
                "--digest",
                "-u",
                "loop1:pw",
                &u,
            ])
            .await
        })
    };
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

/// `tunneld rendezvous <args>` with the real binary on the server's config; stdout.
async fn rendezvous_cli(s: &TestServer, args: &[&str]) -> Result<String> {
    let conf = s.dir.join("server.yaml").display().to_string();
    let mut all = vec!["--config", &conf, "rendezvous"];
    all.extend_from_slice(args);
    let out = tokio::process::Command::new(process::binary("tunneld")?)
        .args(&all)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "rendezvous {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_rotated_and_re_added_ids_never_serve_old_parked_connections() -> Result<()> {
    let s = server().await?;
    // Import: a secret brought from an original server parks at once, unchanged.
    let imported = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let out = rendezvous_cli(&s, &["add", "moved", "--secret", imported]).await?;
    assert!(out.contains(&format!("secret: {imported}\n")), "{out}");
    let conf = s.dir.join("server.yaml").display().to_string();
    let short = tokio::process::Command::new(process::binary("tunneld")?)
        .args([
            "--config",
            &conf,
            "rendezvous",
            "add",
            "weak",
            "--secret",
            "JBSWY3DP",
        ])
        .output()
        .await?;
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("at least 10"), "{err}");

    let key = totp::decode_secret(imported).map_err(|e| anyhow!(e))?;
    let park = |key: &[u8]| {
        let code = totp::code(key, now_counter(30));
        format!("CONNECT uuid:moved?response={code} HTTP/1.1\r\n\r\n")
    };
    let (got, mut old) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    wait_parked(&s, "moved", 1).await?;

    // Rotate: the old connection no longer serves; a visitor finds nothing (404 after
    // visitor_wait), and the old connection is closed.
    let out = rendezvous_cli(&s, &["rotate", "moved"]).await?;
    let new_secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .ok_or_else(|| anyhow!("{out}"))?
        .to_string();
    assert_ne!(new_secret, imported);
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/stale"),
    );
    let (_, out) = curl(&[
        "-i",
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "-u",
        "moved:pw",
        &u,
    ])
    .await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        read_all(&mut old).await.is_empty(),
        "the old parked connection received something"
    );
    // The new secret parks and serves.
    let key = totp::decode_secret(&new_secret).map_err(|e| anyhow!(e))?;
    let (got, mut fresh) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    let visitor = {
        let (res, ca, u) = (
            resolve(&s),
            s.ca_file().display().to_string(),
            url(&s, "/new"),
        );
        tokio::spawn(async move {
            curl(&["--resolve", &res, "--cacert", &ca, "-u", "moved:pw", &u]).await
        })
    };
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, fresh.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "parked connection closed");
        head.extend_from_slice(&b[..n]);
    }
    fresh
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnew")
        .await?;
    fresh.shutdown().await?;
    assert_eq!(visitor.await??.1, "new");

    // Remove, then add the same id again: what parked before never serves.
    let (got, mut before) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    rendezvous_cli(&s, &["remove", "moved"]).await?;
    rendezvous_cli(&s, &["add", "moved"]).await?;
    let (_, out) = curl(&[
        "-i",
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "-u",
        "moved:pw",
        &u,
    ])
    .await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(read_all(&mut before).await.is_empty());
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_rendezvous_parked_dropped_total",
            &[("reason", "revoked")]
        ) >= 2.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_from_pythons_digest_handler_reaches_the_hidden_server() -> Result<()> {
    let s = server().await?;
    let secret = add_id(&s, "uploads", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;
    let code = totp::code(&key, now_counter(30));
    let (got, mut parked) = raw_park(
        &s,
        &format!("CONNECT uuid:uploads?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    // Python's urllib sends the whole 4 MiB body without credentials, reads the 401, then
    // sends it all again with Digest credentials (the first body must be read, not reset).
    const LEN: usize = 4 << 20;
    let script = format!(
        r#"
import ssl, urllib.request
ctx = ssl.create_default_context(cafile={ca:?})
pm = urllib.request.HTTPPasswordMgrWithDefaultRealm()
pm.add_password(None, "https://localhost:{port}/", "uploads", "pw")
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), urllib.request.HTTPDigestAuthHandler(pm))
data = b"x" * {LEN}
print(opener.open(urllib.request.Request("https://localhost:{port}/up", data=data, method="POST"), timeout=20).read().decode())
"#,
        ca = s.ca_file().display().to_string(),
        port = rdv(&s).port(),
    );
    let python = tokio::spawn(async move {
        tokio::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .await
    });
    // The hidden server reads the head and the whole body, and answers with its length.
    let mut seen = Vec::new();
    let mut b = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, parked.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "parked connection closed");
        seen.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_string();
    assert!(head.starts_with("POST /up HTTP/1.1\r\n"), "{head}");
    while seen.len() - head_end < LEN {
        let n = tokio::time::timeout(WAIT, parked.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "body cut at {}", seen.len() - head_end);
        seen.extend_from_slice(&b[..n]);
    }
    let body = format!("{}", seen.len() - head_end);
    parked
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    parked.shutdown().await?;
    let out = tokio::time::timeout(WAIT, python).await???;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), LEN.to_string());
    Ok(())
}

/// An in-process tunnelc for the connect transport with `rendezvous` (YAML map entries).
fn rendezvous_client(s: &TestServer, entries: &str) -> Result<TestClient> {
    let yaml = format!(
        "server: {}\nserver_name: localhost\ntransport: connect\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\nrendezvous:\n{entries}",
        hidden(s),
        s.ca_file().display()
    );
    let file = temp_dir("client").join("client.yaml");
    std::fs::write(&file, yaml)?;
    let cfg = tunneld_client::config::client::ClientConfig::load(Some(&file), &[])
        .map_err(|e| anyhow!("{e}"))?;
    Ok(TestClient::spawn(cfg))
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
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/f"),
    );
    let (st, out) = curl(&[
        "-i",
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "-u",
        "foreign:pw",
        &u,
    ])
    .await?;
    anyhow::ensure!(st.success() && out.starts_with("HTTP/1.1 200"), "{out}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_never_name_a_local_service_and_uuid_is_any_case() -> Result<()> {
    let s = server().await?;
    // A service that is down: its address must not reach visitors.
    let down = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };
    let mut c = TestClient::spawn(s.client_config(
        ALICE_TOKEN,
        &format!("  gone:\n    local: \"{down}\"\n    frontend: rdv\n"),
    )?);
    c.connected().await?;
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("visitor:{VISITOR_PASSWORD}").as_bytes())
    );
    let mut tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
    tls.write_all(
        format!("CONNECT gone:80 HTTP/1.1\r\nProxy-Authorization: {basic}\r\n\r\n").as_bytes(),
    )
    .await?;
    let got = String::from_utf8_lossy(&read_all(&mut tls).await).to_string();
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(got.contains("could not reach its local service"), "{got}");
    assert!(!got.contains(&down.port().to_string()), "{got}");

    // The same through a hidden service served by tunnelc: its own 502 names nothing.
    add_id(&s, "dark", Some("alice")).await?;
    let _hidden = park_client(&s, "dark", down, 1).await?;
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/x"),
    );
    let (_, out) = curl(&[
        "-i",
        "--resolve",
        &res,
        "--cacert",
        &ca,
        "-u",
        "dark:pw",
        &u,
    ])
    .await?;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains("the hidden service is not reachable"), "{out}");
    assert!(!out.contains(&down.port().to_string()), "{out}");

    // `UUID:` in upper case parks, as the original accepted.
    let secret = add_id(&s, "upper", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;
    let code = totp::code(&key, now_counter(30));
    let (got, _parked) = raw_park(
        &s,
        &format!("CONNECT UUID:upper?response={code} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    c.stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_hidden_servers_do_not_count_against_the_visitor_cap_of_their_address() -> Result<()>
{
    // The rendezvous port with parking, and a visitor cap of 4 connections per address.
    let extra = format!(
        "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    parking: true\n    visitor_wait: 2s\n    connect_access: {{ auth: basic, users: {{ visitor: {VISITOR_PASSWORD} }} }}\nrendezvous:\n  max_failures: 3\n  max_parked_per_id: 8\n"
    );
    let s = TestServer::start_full(
        &extra,
        &[
            "transports.hidden={type: connect, listen: \"127.0.0.1:0\"}".into(),
            "limits.max_connections_per_address=4".into(),
        ],
    )
    .await?;
    let secret = add_id(&s, "many-parked", None).await?;
    let key = totp::decode_secret(&secret).map_err(|e| anyhow!(e))?;
    let code = totp::code(&key, now_counter(30));
    // Six parked from 127.0.0.1 on the rendezvous port itself (the same code, reused from
    // the address that used it first).
    let mut parked = Vec::new();
    for i in 0..6 {
        let mut tls = s.tls_connect_to(rdv(&s), b"http/1.1").await;
        tls.write_all(
            format!("CONNECT uuid:many-parked?response={code} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut got = [0u8; 16];
        tokio::time::timeout(WAIT, tls.read_exact(&mut got)).await??;
        anyhow::ensure!(&got == b"HTTP/1.1 200\r\n\r\n", "park {i}: {got:?}");
        parked.push(tls);
    }
    wait_parked(&s, "many-parked", 6).await?;
    // A visitor from the same address still gets in (and takes one of them).
    let (res, ca, u) = (
        resolve(&s),
        s.ca_file().display().to_string(),
        url(&s, "/v"),
    );
    let visitor = tokio::spawn(async move {
        curl(&[
            "--resolve",
            &res,
            "--cacert",
            &ca,
            "-u",
            "many-parked:pw",
            &u,
        ])
        .await
    });
    let mut served = false;
    for tls in parked.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(1)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), tls.read(&mut b)).await
        {
            let mut rest = vec![0u8; 4096];
            let _ = tokio::time::timeout(WAIT, tls.read(&mut rest)).await;
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await?;
            tls.shutdown().await?;
            served = true;
            break;
        }
    }
    anyhow::ensure!(served, "no parked connection got the visitor");
    let (st, out) = visitor.await??;
    anyhow::ensure!(st.success() && out == "ok", "{out}");
    Ok(())
}
