//! tunneld's web dashboard (`/ui`, docs/dashboard.md) in headless Chromium against the real
//! binaries: keyboard login, a tunnelc's tunnel appearing and going, counters moving under
//! traffic, a session disconnected from the page, 390 px without overflow, CSRF and origin
//! checks; and (in-process) the revoke and mapping forms, the event stream cap, bearer tokens.

use anyhow::{anyhow, bail, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::browser::{Browser, ENTER};
use tunneld_integration_tests::process::{field, Proc};
use tunneld_integration_tests::{port_block, server_yaml, services, temp_dir, ALICE_TOKEN, WAIT};

const ADMIN_TOKEN: &str = "dashboard-admin-token-0123456789";

struct Daemon {
    _proc: Proc,
    transport: String,
    admin: SocketAddr,
    ca: String,
    dir: std::path::PathBuf,
    range: (u16, u16),
}

async fn daemon() -> Result<Daemon> {
    let dir = temp_dir("dashboard");
    let range = port_block();
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), range, ""))?;
    let token = format!("admin.token={ADMIN_TOKEN}");
    let file = file.to_str().ok_or_else(|| anyhow!("not UTF-8"))?;
    // A stopped tunnelc's port is not kept for it long.
    let grace = "frontends.tcp.reclaim_grace=1s";
    let args = ["--config", file, "--set", &token, "--set", grace];
    let mut proc = Proc::spawn("tunneld", &args, dir.join("tunneld.err"))?;
    let t = proc.line_starting("listening transport=edge").await?;
    let transport = field(&t, "addr").ok_or_else(|| anyhow!("no addr in {t}"))?;
    let a = proc.line_starting("listening admin").await?;
    let admin = field(&a, "addr")
        .ok_or_else(|| anyhow!("no addr in {a}"))?
        .parse()?;
    let trust = proc.line_starting("trust ").await?;
    let ca = field(&trust, "ca").ok_or_else(|| anyhow!("no ca in {trust}"))?;
    proc.line_starting("ready").await?;
    Ok(Daemon {
        _proc: proc,
        transport,
        admin,
        ca,
        dir,
        range,
    })
}

fn client_file(d: &Daemon, local: SocketAddr, port: u16) -> Result<String> {
    let f = d.dir.join("client.yaml");
    std::fs::write(
        &f,
        format!(
            "server: {}\nserver_name: localhost\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 1s }}\ntunnels:\n  svc:\n    local: {local}\n    remote_port: {port}\n",
            d.transport, d.ca
        ),
    )?;
    Ok(f.to_string_lossy().into_owned())
}

/// One echo round trip through the tunnel.
async fn echo_once(addr: SocketAddr, payload: &[u8]) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await??;
    if out != payload {
        bail!("echo answered {} bytes, not {}", out.len(), payload.len());
    }
    Ok(())
}

/// A raw HTTP/1.1 exchange with the admin listener: (status, head, body).
async fn raw(addr: SocketAddr, req: String) -> Result<(u16, String, String)> {
    tunneld_integration_tests::raw_http::exchange(addr, &req).await
}

fn post(addr: SocketAddr, path: &str, cookie: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: tunneld_session={cookie}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Saves `target/screenshots/<name>.png`.
async fn shot(b: &Browser, name: &str) -> Result<()> {
    eprintln!("screenshot: {}", b.screenshot(name).await?.display());
    Ok(())
}

/// Polls `script` (a function body answering a boolean) until it answers true.
async fn until(b: &Browser, what: &str, script: &str, args: Vec<serde_json::Value>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if b.exec(script, args.clone()).await? == serde_json::Value::Bool(true) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser() -> Result<()> {
    let Some(b) = Browser::start("dashboard_in_a_browser").await? else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let d = daemon().await?;
    let base = format!("http://{}", d.admin);

    // Not signed in: the overview sends the browser to the login form, whose input has focus.
    b.goto(&format!("{base}/ui")).await?;
    assert!(b.current_url().await?.ends_with("/ui/login"));
    let focused = b.exec("return document.activeElement.id", vec![]).await?;
    assert_eq!(focused, "token", "the token input has focus");
    shot(&b, "dashboard-login").await?;
    b.send_keys_to_active("not-the-token").await?;
    b.send_keys_to_active(ENTER).await?;
    b.wait_text(".flash.error", WAIT, |t| t.contains("not the admin token"))
        .await?;
    // From the keyboard: type the token, press Enter.
    b.clear_and_type("#token", ADMIN_TOKEN).await?;
    b.send_keys_to_active(ENTER).await?;
    b.wait_text("#live-state", WAIT, |t| t == "live").await?;
    assert!(b.current_url().await?.ends_with("/ui"));
    b.wait_text("#events", WAIT, |t| t.contains("dashboard login refused"))
        .await?;

    // A real tunnelc: its session and tunnel appear without reloading the page.
    let local = services::echo().await;
    let port = d.range.0 + 3;
    let cfg = client_file(&d, local, port)?;
    let mut c = Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("tunnelc.err"))?;
    c.line_starting("tunnel svc").await?;
    let endpoint = format!("tcp://127.0.0.1:{port}");
    b.wait_text("#tunnels", WAIT, |t| t.contains(&endpoint))
        .await?;
    b.wait_text("#sessions", WAIT, |t| t.contains("alice"))
        .await?;
    b.wait_text("#sessions-total", WAIT, |t| t == "1").await?;
    let first = b
        .attr("#sessions tr[data-session]", "data-session")
        .await?
        .ok_or_else(|| anyhow!("no session row"))?;

    // Visitor traffic moves the counters.
    let read = "return ['streams-total', 'bytes-total'].map(id => Number(document.getElementById(id).dataset.value || 0))";
    let before = b.exec(read, vec![]).await?;
    let at = |i: usize| before[i].as_u64().unwrap_or(0);
    let (streams0, bytes0) = (at(0), at(1));
    let public: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let payload = vec![b'x'; 4096];
    for _ in 0..5 {
        echo_once(public, &payload).await?;
    }
    until(
        &b,
        "the stream and byte counters move",
        "return Number(document.getElementById('streams-total').dataset.value) >= arguments[0] \
         && Number(document.getElementById('bytes-total').dataset.value) >= arguments[1]",
        vec![(streams0 + 5).into(), (bytes0 + 5 * 2 * 4096).into()],
    )
    .await?;
    until(
        &b,
        "the bytes graph draws",
        "return document.querySelector('#spark-bytes polyline').getAttribute('points').split(' ').length > 2",
        vec![],
    )
    .await?;
    shot(&b, "dashboard-1280").await?;

    // 390 px wide: nothing wider than the viewport (tables scroll in their own box).
    b.set_size(390, 844).await?;
    let width = b
        .exec("return document.documentElement.scrollWidth", vec![])
        .await?;
    assert!(
        width.as_u64().is_some_and(|w| w <= 390),
        "scrollWidth {width} at 390 px"
    );
    shot(&b, "dashboard-390").await?;
    b.set_size(1280, 900).await?;

    // Disconnect that one session from the page: it leaves the table, tunnelc reconnects
    // with a new session, and its tunnel comes back on the same port.
    b.click(&format!("#sessions tr[data-session=\"{first}\"] button"))
        .await?;
    b.wait_text("#flash", WAIT, |t| {
        t.contains(&format!("Disconnected session {first}"))
    })
    .await?;
    until(
        &b,
        "a new session replaces the disconnected one",
        "const rows = [...document.querySelectorAll('#sessions tr[data-session]')]; \
         return rows.length === 1 && rows[0].dataset.session !== arguments[0]",
        vec![first.clone().into()],
    )
    .await?;
    b.wait_text("#tunnels", WAIT, |t| t.contains(&endpoint))
        .await?;
    b.wait_text("#events", WAIT, |t| t.contains("reason=disconnected"))
        .await?;

    // tunnelc stops: its session and tunnel leave the tables.
    c.signal("TERM")?;
    c.wait().await?;
    b.wait_text("#sessions-total", WAIT, |t| t == "0").await?;
    b.wait_text("#tunnels", WAIT, |t| !t.contains(&endpoint))
        .await?;

    // Keyboard: Tab reaches the navigation's first link with a visible focus ring.
    b.exec(
        "document.activeElement.blur(); window.scrollTo(0, 0)",
        vec![],
    )
    .await?;
    b.send_keys_to_active(tunneld_integration_tests::browser::TAB)
        .await?;
    let outline = b
        .exec(
            "const e = document.activeElement; return [e.tagName, getComputedStyle(e).outlineStyle]",
            vec![],
        )
        .await?;
    assert_eq!(
        outline,
        serde_json::json!(["A", "solid"]),
        "focus is visible"
    );

    csrf_and_origin(d.admin).await?;
    eprintln!("dashboard_in_a_browser: {:?}", started.elapsed());
    Ok(())
}

/// A session's forms need its CSRF token and this origin (raw requests with the cookie).
async fn csrf_and_origin(admin: SocketAddr) -> Result<()> {
    let (cookie, csrf) = sign_in(admin).await?;
    let (status, _, body) = raw(admin, post(admin, "/ui/logout", &cookie, "", "")).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("missing CSRF token"), "{body}");
    let (status, _, body) =
        raw(admin, post(admin, "/ui/logout", &cookie, "", "csrf=forged")).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("wrong CSRF token"), "{body}");

    // The right token from another origin is refused too.
    let evil = "Origin: http://evil.example\r\n";
    let (status, _, body) = raw(
        admin,
        post(admin, "/ui/logout", &cookie, evil, &format!("csrf={csrf}")),
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    // With both, the form works.
    let same = format!("Origin: http://{admin}\r\n");
    let (status, head, _) = raw(
        admin,
        post(admin, "/ui/logout", &cookie, &same, &format!("csrf={csrf}")),
    )
    .await?;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /ui/login"), "{head}");
    Ok(())
}

/// Reads `t` until what came contains `want` (bounded by [`WAIT`]).
async fn read_until(t: &mut TcpStream, want: &str) -> Result<()> {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(want) {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(WAIT, t.read(&mut buf)).await?? {
            0 => bail!("closed before {want:?}: {}", String::from_utf8_lossy(&got)),
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
}

/// Form-encodes `s` (every byte but letters and digits as `%XX`).
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b if b.is_ascii_alphanumeric() => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Signs in with raw requests: (cookie, the page's CSRF token).
async fn sign_in(admin: SocketAddr) -> Result<(String, String)> {
    let login = post(admin, "/ui/login", "", "", &format!("token={ADMIN_TOKEN}"));
    let (status, head, _) = raw(admin, login).await?;
    assert_eq!(status, 303, "{head}");
    assert!(
        head.contains("HttpOnly; SameSite=Strict; Path=/ui"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: tunneld_session="))
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow!("no session cookie in {head}"))?
        .to_string();
    let html = page(admin, &cookie).await?;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| anyhow!("no CSRF field in the page"))?
        .to_string();
    Ok((cookie, csrf))
}

/// `GET /ui` with the cookie.
async fn page(admin: SocketAddr, cookie: &str) -> Result<String> {
    let req = format!(
        "GET /ui HTTP/1.1\r\nHost: {admin}\r\nCookie: tunneld_session={cookie}\r\nConnection: close\r\n\r\n"
    );
    let (status, _, html) = raw(admin, req).await?;
    if status != 200 {
        bail!("GET /ui: {status}");
    }
    Ok(html)
}

/// A form post that answers 303 back to the overview; answers the overview's flash line.
async fn act(admin: SocketAddr, cookie: &str, path: &str, body: &str) -> Result<String> {
    let (status, head, _) = raw(admin, post(admin, path, cookie, "", body)).await?;
    if status != 303 || !head.contains("location: /ui\r\n") {
        bail!("POST {path}: {head}");
    }
    let html = page(admin, cookie).await?;
    html.split("id=\"flash\">")
        .nth(1)
        .and_then(|r| r.split("</p>").next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no flash after POST {path}"))
}

/// In-process tunneld: revoking a stored token cuts its session, the mapping form checks as
/// `PUT /tunnels` does, event streams are capped, bearer tokens work for curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_revoke_change_mappings_and_cap_streams() -> Result<()> {
    use tunneld_integration_tests::{TestClient, TestServer};
    let s = TestServer::start_full("", &[format!("admin.token={ADMIN_TOKEN}")]).await?;
    let admin = s.admin();
    let secret = tunneld_daemon::state_cli::new_token();
    s.running.store.add_token(&tunneld_state::TokenRecord {
        name: "carol".into(),
        digest: tunneld_core::auth::hex(&tunneld_core::auth::sha256(secret.as_bytes())),
        max_ports: Some(2),
        max_names: None,
        expires_at: None,
        single_use: false,
        used_at: None,
        transports: None,
        revoked_at: None,
        created_at: 0,
    })?;
    let sets = ["accept_server_mappings=true".to_string()];
    let mut carol = TestClient::spawn(s.client_config_with(
        &secret,
        "  svc:\n    local: 127.0.0.1:9\n",
        &sets,
    )?);
    carol.connected().await?;
    let (cookie, csrf) = sign_in(admin).await?;
    let html = page(admin, &cookie).await?;
    assert!(
        html.contains("<td>carol</td><td><span class=\"state active\">active</span>"),
        "{html}"
    );
    assert!(!html.contains(&secret), "the page shows no secret");

    // The mapping form: PUT /tunnels's checks and words, then applied.
    let outside = format!(
        r#"[{{"client":"carol","listen_port":{},"target":"127.0.0.1:9"}}]"#,
        s.range.1 + 1
    );
    let (code, put) = s.admin_call("PUT", "/tunnels", Some(&outside)).await;
    assert_eq!(code, 401, "the admin API needs the token: {put}");
    let form = format!("csrf={csrf}&mappings={}", form_encode(&outside));
    let flash = act(admin, &cookie, "/ui/mappings", &form).await?;
    assert!(
        flash.starts_with("Error:") && flash.contains("range"),
        "{flash}"
    );
    let p = s.range.0 + 7;
    let good = format!(r#"[{{"client":"carol","listen_port":{p},"target":"127.0.0.1:9"}}]"#);
    let form = format!("csrf={csrf}&mappings={}", form_encode(&good));
    let flash = act(admin, &cookie, "/ui/mappings", &form).await?;
    assert_eq!(flash, "Mappings applied: 1 port mapping(s).");
    let html = page(admin, &cookie).await?;
    assert!(html.contains(&format!("tcp://127.0.0.1:{p}")), "{html}");
    assert!(html.contains("carol (online)"), "{html}");

    // Revoking carol cuts her session now.
    let flash = act(
        admin,
        &cookie,
        "/ui/tokens/revoke",
        &format!("csrf={csrf}&token=carol"),
    )
    .await?;
    assert_eq!(flash, "Revoked token carol; 1 live session(s) cut.");
    let stored = s
        .running
        .store
        .token("carol")?
        .ok_or_else(|| anyhow!("carol is gone"))?;
    assert!(stored.revoked_at.is_some());
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.running.hub.is_online("carol") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol is still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let html = page(admin, &cookie).await?;
    assert!(
        html.contains("<span class=\"state revoked\">revoked</span>"),
        "{html}"
    );
    let flash = act(
        admin,
        &cookie,
        "/ui/sessions/disconnect",
        &format!("csrf={csrf}&session=999999"),
    )
    .await?;
    assert!(flash.contains("session 999999 is not connected"), "{flash}");

    // At most 16 event streams; each starts with the totals, and ends at drain.
    let events =
        format!("GET /ui/events HTTP/1.1\r\nHost: {admin}\r\nCookie: tunneld_session={cookie}\r\n");
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut t = TcpStream::connect(admin).await?;
        t.write_all(format!("{events}\r\n").as_bytes()).await?;
        read_until(&mut t, "event: totals\ndata: {").await?;
        open.push(t);
    }
    let (status, _, body) = raw(admin, format!("{events}Connection: close\r\n\r\n")).await?;
    assert!(
        status == 503 && body.contains("too many open event streams"),
        "{status} {body}"
    );
    let m = s.metrics().await;
    assert_eq!(m.get("tunneld_dashboard_event_streams", &[]), 16.0);
    let logins = m.get("tunneld_dashboard_logins_total", &[("result", "ok")]);
    assert_eq!(logins, 1.0);
    s.running.stop().await;
    for mut t in open {
        read_until(&mut t, "0\r\n\r\n").await?;
    }

    // curl with the token as a bearer token; a wrong one is refused.
    let bearer = |t: &str| {
        format!("GET /ui/fragment/tables HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")
    };
    let (status, _, body) = raw(admin, bearer(ADMIN_TOKEN)).await?;
    assert!(
        status == 200 && body.contains("Stored tokens"),
        "{status} {body}"
    );
    let (status, _, _) = raw(admin, bearer("wrong-token")).await?;
    assert_eq!(status, 401);
    Ok(())
}
