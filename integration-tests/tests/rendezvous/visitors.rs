//! Visitors reaching hidden servers: Digest and Basic with curl, `?rendezvous=` WebSockets,
//! tunneld's own Digest nonces, a large POST from Python's Digest handler, what answers may
//! say, and the per-address visitor cap.

use crate::common::*;

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
    let out = basic_visit(&s, "dark:pw", "/x").await?;
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
    let visitor = spawn_curl_visit(&s, "/v", &["-u", "many-parked:pw"]);
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
