//! Hot reload with the real binaries: a SIGHUP that adds a token and a transport and removes
//! another token loses no visitor of an untouched tunnel (round trips in a loop and one
//! long-lived connection); the new transport and token work; the removed token's session is
//! cut; an invalid file changes nothing (the log and `POST /reload` name the key path); and
//! tunnelc's SIGHUP brings a new tunnel up beside a running one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::{curl, field, Proc};
use tunneld_integration_tests::{port_block, services, temp_dir, ALICE_TOKEN, BOB_TOKEN, WAIT};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const CAROL_TOKEN: &str = "carol-token-0123456789abcdef";

/// The server file: `tokens` (client, token) pairs, `transports` extra YAML lines under
/// `transports:` after `edge`.
fn server_file(dir: &Path, range: (u16, u16), tokens: &[(&str, &str)], transports: &str) -> String {
    let mut t = String::new();
    for (id, token) in tokens {
        t.push_str(&format!("    {id}: {{ token: {token} }}\n"));
    }
    format!(
        "state_dir: {state}\nlog: {{ level: info }}\nauth:\n  tokens:\n{t}limits: {{ handshake_timeout: 2s, keepalive: 1s, drain_timeout: 5s }}\nadmin: {{ listen: 127.0.0.1:0, token: {ADMIN_TOKEN} }}\ntransports:\n  edge: {{ type: yamux, listen: 127.0.0.1:0 }}\n{transports}frontends:\n  tcp: {{ type: ports, bind: 127.0.0.1, range: {a}-{b}, reclaim_grace: 30s }}\n",
        state = dir.join("state").display(),
        a = range.0,
        b = range.1,
    )
}

struct Daemon {
    proc: Proc,
    file: PathBuf,
    dir: PathBuf,
    range: (u16, u16),
    edge: String,
    admin: String,
    ca: String,
}

async fn daemon(tokens: &[(&str, &str)]) -> Daemon {
    let dir = temp_dir("reload");
    let range = port_block();
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_file(&dir, range, tokens, "")).expect("write config");
    let mut proc = Proc::spawn(
        "tunneld",
        &["--config", file.to_str().expect("utf8")],
        dir.join("tunneld.err"),
    )
    .expect("spawn tunneld");
    let edge = field(
        &proc
            .line_starting("listening transport=edge")
            .await
            .expect("edge"),
        "addr",
    )
    .expect("addr");
    let admin = field(
        &proc.line_starting("listening admin").await.expect("admin"),
        "addr",
    )
    .expect("addr");
    let ca = field(&proc.line_starting("trust ").await.expect("trust"), "ca").expect("ca");
    proc.line_starting("ready").await.expect("ready");
    Daemon {
        proc,
        file,
        dir,
        range,
        edge,
        admin,
        ca,
    }
}

/// A tunnelc config file with tcp tunnels `(name, local, port)`.
fn client_file(
    d: &Daemon,
    tag: &str,
    server: &str,
    token: &str,
    tunnels: &[(&str, SocketAddr, u16)],
) -> PathBuf {
    let mut t = String::new();
    for (name, local, port) in tunnels {
        t.push_str(&format!(
            "  {name}:\n    local: {local}\n    remote_port: {port}\n"
        ));
    }
    let f = d.dir.join(format!("client-{tag}.yaml"));
    std::fs::write(
        &f,
        format!(
            "server: {server}\nserver_name: localhost\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 1s }}\ntunnels:\n{t}",
            d.ca
        ),
    )
    .expect("write client config");
    f
}

fn tunnelc(d: &Daemon, tag: &str, file: &Path) -> Proc {
    Proc::spawn(
        "tunnelc",
        &["--config", file.to_str().expect("utf8")],
        d.dir.join(format!("{tag}.err")),
    )
    .expect("spawn tunnelc")
}

fn public(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One round trip through an echo tunnel on a new connection.
async fn echo_once(addr: SocketAddr, n: u64) -> std::io::Result<()> {
    let msg = format!("ping {n}");
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    if out != msg.as_bytes() {
        return Err(std::io::Error::other(format!("echo answered {out:?}")));
    }
    Ok(())
}

use tunneld_integration_tests::services::echo_message as echo_on;

/// Round trips in a loop until `stop`: (done, failures as text).
struct Load {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

fn load(addr: SocketAddr) -> Load {
    let (done, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (d, s) = (done.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            match tokio::time::timeout(WAIT, echo_once(addr, n)).await {
                Ok(Ok(())) => {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => failures.push(format!("round trip {n}: {e}")),
                Err(_) => failures.push(format!("round trip {n}: timed out")),
            }
        }
        failures
    });
    Load { done, stop, task }
}

impl Load {
    /// Waits until `more` round trips past the current count are done (bounded).
    async fn past(&self, more: u64) {
        let target = self.done.load(Ordering::Relaxed) + more;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.done.load(Ordering::Relaxed) < target {
            assert!(tokio::time::Instant::now() < deadline, "the load stalled");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("load ends")
            .expect("load task");
        (self.done.load(Ordering::Relaxed), failures)
    }
}

async fn admin(d: &Daemon, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", d.admin);
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let (_, out) = curl(&["-X", method, "-H", &auth, "-w", "\n%{http_code}", &url])
        .await
        .expect("curl");
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `GET /clients` until `client` is listed (`present`) or not; bounded.
async fn until_client(d: &Daemon, client: &str, present: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = admin(d, "GET", "/clients").await;
        assert_eq!(code, 200, "{body}");
        let listed = body.contains(&format!("\"client_id\":\"{client}\""));
        if listed == present {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "client {client} listed={listed} after {WAIT:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_without_losing_untouched_visitors() {
    let mut d = daemon(&[("alice", ALICE_TOKEN), ("bob", BOB_TOKEN)]).await;
    let local = services::echo().await;
    let (port_a, port_b) = (d.range.0 + 1, d.range.0 + 2);
    let fa = client_file(
        &d,
        "a",
        &d.edge.clone(),
        ALICE_TOKEN,
        &[("a", local, port_a)],
    );
    let mut a = tunnelc(&d, "a", &fa);
    a.line_starting("tunnel a: tcp://").await.expect("tunnel a");
    let fb = client_file(&d, "b", &d.edge.clone(), BOB_TOKEN, &[("b", local, port_b)]);
    let mut b = tunnelc(&d, "b", &fb);
    b.line_starting("tunnel b: tcp://").await.expect("tunnel b");

    // Visitors of A: a long-lived connection, and round trips in a loop.
    let mut kept = TcpStream::connect(public(port_a))
        .await
        .expect("kept visitor");
    echo_on(&mut kept, b"before")
        .await
        .expect("kept echo before");
    let l = load(public(port_a));
    l.past(20).await;

    // Add carol and the `more` transport, remove bob.
    std::fs::write(
        &d.file,
        server_file(
            &d.dir,
            d.range,
            &[("alice", ALICE_TOKEN), ("carol", CAROL_TOKEN)],
            "  more: { type: yamux, listen: 127.0.0.1:0 }\n",
        ),
    )
    .expect("rewrite config");
    d.proc.signal("HUP").expect("SIGHUP");
    let more = field(
        &d.proc
            .line_starting("listening transport=more")
            .await
            .expect("more"),
        "addr",
    )
    .expect("addr");
    let line = d
        .proc
        .line_starting("reloaded: ")
        .await
        .expect("reloaded line");
    for key in ["transports.more", "auth.tokens.carol", "auth.tokens.bob"] {
        assert!(line.contains(key), "{line}");
    }

    // (c) bob's session is cut, and his token no longer works: tunnelc stops (exit 2).
    until_client(&d, "bob", false).await;
    let st = b.wait().await.expect("bob's tunnelc ends");
    assert_eq!(st.code(), Some(2), "{}", b.stderr());
    assert!(
        d.proc.stderr().contains("session cut"),
        "{}",
        d.proc.stderr()
    );

    // (b) carol connects through the new transport.
    let port_c = d.range.0 + 3;
    let fc = client_file(&d, "c", &more, CAROL_TOKEN, &[("c", local, port_c)]);
    let mut c = tunnelc(&d, "c", &fc);
    let tc = c.line_starting("tunnel c").await.expect("tunnel c");
    assert_eq!(tc, format!("tunnel c: tcp://127.0.0.1:{port_c}"));
    echo_once(public(port_c), 1)
        .await
        .expect("echo through carol's tunnel");

    // (a) A lost nothing.
    l.past(20).await;
    let (done, failures) = l.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {done} round trips failed: {failures:?}",
        failures.len()
    );
    echo_on(&mut kept, b"after")
        .await
        .expect("the kept visitor is still up");
    let (code, body) = admin(&d, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("tunneld_config_reloads_total{result=\"ok\"} 1"),
        "{body}"
    );

    // (d) An invalid file: nothing changes, the key path is named everywhere.
    let good = std::fs::read_to_string(&d.file).expect("read");
    std::fs::write(
        &d.file,
        good.replace(
            "  more: { type: yamux, listen:",
            "  more: { type: yamux, listn:",
        ),
    )
    .expect("write bad config");
    let (code, body) = admin(&d, "POST", "/reload").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("transports.more.listn"), "{body}");
    d.proc.signal("HUP").expect("SIGHUP");
    let failed = d
        .proc
        .line_starting("reload failed")
        .await
        .expect("failed line");
    assert!(failed.contains("transports.more.listn"), "{failed}");
    assert!(
        d.proc.stderr().contains("transports.more.listn"),
        "{}",
        d.proc.stderr()
    );
    echo_on(&mut kept, b"still")
        .await
        .expect("the kept visitor survives a bad reload");
    echo_once(public(port_c), 2)
        .await
        .expect("carol's tunnel survives a bad reload");
    let (_, body) = admin(&d, "GET", "/metrics").await;
    assert!(
        body.contains("tunneld_config_reloads_total{result=\"error\"} 2"),
        "{body}"
    );

    // Fixed again: a reload with no difference changes nothing.
    std::fs::write(&d.file, &good).expect("restore");
    let (code, body) = admin(&d, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"added\":[]") && body.contains("\"removed\":[]"),
        "{body}"
    );
    drop((a, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelc_sighup_adds_a_tunnel_beside_a_running_one() {
    let d = daemon(&[("alice", ALICE_TOKEN)]).await;
    let local = services::echo().await;
    let (port_a, port_b) = (d.range.0 + 1, d.range.0 + 2);
    let edge = d.edge.clone();
    let f = client_file(&d, "a", &edge, ALICE_TOKEN, &[("a", local, port_a)]);
    let mut c = tunnelc(&d, "c", &f);
    c.line_starting("tunnel a: tcp://").await.expect("tunnel a");
    let mut kept = TcpStream::connect(public(port_a))
        .await
        .expect("kept visitor");
    echo_on(&mut kept, b"before").await.expect("echo before");

    client_file(
        &d,
        "a",
        &edge,
        ALICE_TOKEN,
        &[("a", local, port_a), ("b", local, port_b)],
    );
    c.signal("HUP").expect("SIGHUP tunnelc");
    let tb = c.line_starting("tunnel b").await.expect("tunnel b");
    assert_eq!(tb, format!("tunnel b: tcp://127.0.0.1:{port_b}"));
    echo_once(public(port_b), 1)
        .await
        .expect("echo through the new tunnel");
    echo_on(&mut kept, b"after")
        .await
        .expect("the kept visitor of a is still up");

    // Removing `b` again stops it and keeps `a`.
    client_file(&d, "a", &edge, ALICE_TOKEN, &[("a", local, port_a)]);
    c.signal("HUP").expect("SIGHUP tunnelc");
    // The first reload's own line ("reloaded: added: b") may come after its "tunnel b" line,
    // unread so far: skip it.
    let mut line = c.line_starting("reloaded").await.expect("reloaded line");
    if line.contains("added: b") {
        line = c.line_starting("reloaded").await.expect("reloaded line");
    }
    assert!(line.contains("removed: b"), "{line}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while echo_once(public(port_b), 2).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tunnel b still answers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    echo_on(&mut kept, b"again")
        .await
        .expect("a is untouched by b's removal");

    // The runtime's threads are set at start: a change is reported and kept as it was,
    // and the running tunnel is left alone.
    let mut text = std::fs::read_to_string(&f).expect("read client config");
    text.push_str("worker_threads: 4\n");
    std::fs::write(&f, text).expect("write client config");
    c.signal("HUP").expect("SIGHUP tunnelc");
    let line = c.line_starting("reloaded").await.expect("reloaded line");
    assert!(
        line.contains("worker_threads needs a restart (kept as it was)"),
        "{line}"
    );
    echo_on(&mut kept, b"threads")
        .await
        .expect("a is untouched by a start-only change");
}

/// In-process: without a file a reload changes nothing; with one, a transport and a frontend
/// are added, a limit is reported as needing a restart (and again at the next reload), and a
/// removed transport's sessions end while another transport's visitor stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_and_frontends_come_and_go_in_process() {
    use tunneld_daemon::reload::{ReloadError, Source};
    use tunneld_integration_tests::{server_yaml, TestClient, TestServer};
    let s = TestServer::start().await.expect("server");
    let err = s.running.reloader.reload().await.expect_err("no file");
    assert!(matches!(err, ReloadError::NoFile), "{err}");
    let (code, body) = s.admin_call("POST", "/reload", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no configuration file"), "{body}");

    let file = s.dir.join("server.yaml");
    s.running.reloader.set_source(Some(Source {
        file: file.clone(),
        sets: Vec::new(),
    }));
    let base = server_yaml(&s.dir.join("state"), s.range, "");
    let side = "  side:\n    type: yamux\n    listen: 127.0.0.1:0\nfrontends:\n";
    let v2 = base
        .replacen("frontends:\n", side, 1)
        .replace("log: { level: info }", "log: { level: debug }")
        + "  rdv:\n    type: rendezvous\n    listen: 127.0.0.1:0\n    connect_access: { auth: none }\n";
    std::fs::write(&file, &v2).expect("write v2");
    let sum = s.running.reloader.reload().await.expect("reload v2");
    assert_eq!(sum.added, ["transports.side", "frontends.rdv"], "{sum:?}");
    assert_eq!(sum.needs_restart, ["log.level"], "{sum:?}");
    assert!(s.running.hub.frontend("rdv").is_some());
    let side_addr = sum.listening["transports.side"];
    assert!(sum.listening.contains_key("frontends.rdv"), "{sum:?}");

    // alice on edge with a kept visitor; bob on side.
    let local = services::echo().await;
    let tunnel = |port: u16| format!("  t:\n    local: {local}\n    remote_port: {port}\n");
    let mut alice = TestClient::spawn(
        s.client_config(ALICE_TOKEN, &tunnel(s.range.0 + 1))
            .expect("cfg"),
    );
    let a = alice.endpoint("t").await.expect("alice connects");
    let mut kept = TcpStream::connect(a).await.expect("kept visitor");
    echo_on(&mut kept, b"before").await.expect("echo before");
    let bob_yaml = s
        .client_yaml(BOB_TOKEN, &tunnel(s.range.0 + 2))
        .replace(&s.transport().to_string(), &side_addr.to_string());
    let bob_file = s.dir.join("bob.yaml");
    std::fs::write(&bob_file, bob_yaml).expect("bob file");
    let bob_cfg =
        tunneld_client::config::client::ClientConfig::load(Some(&bob_file), &[]).expect("bob cfg");
    let mut bob = TestClient::spawn(bob_cfg);
    bob.endpoint("t").await.expect("bob connects through side");
    assert!(s
        .running
        .hub
        .sessions()
        .iter()
        .any(|x| x.info.transport == "side"));

    // Remove `side`: bob's session ends, alice's visitor stays; the log level is still pending.
    std::fs::write(&file, v2.replacen(side, "frontends:\n", 1)).expect("write v3");
    let sum = s.running.reloader.reload().await.expect("reload v3");
    assert_eq!(sum.removed, ["transports.side"], "{sum:?}");
    assert_eq!(sum.sessions_cut, 1, "{sum:?}");
    assert_eq!(sum.needs_restart, ["log.level"], "{sum:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while s
        .running
        .hub
        .sessions()
        .iter()
        .any(|x| x.info.client_id == "bob")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's session stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        TcpStream::connect(side_addr).await.is_err(),
        "side still listens"
    );
    echo_on(&mut kept, b"after")
        .await
        .expect("alice's visitor stays");
    bob.shutdown().await.ok();
    alice.shutdown().await.expect("alice stops");
}
