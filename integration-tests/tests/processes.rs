//! The real binaries: kill and restart tunnelc, SIGTERM drain of tunneld, refusal reasons in
//! the logs, and the quick mode.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::{field, Proc};
use tunneld_integration_tests::{port_block, server_yaml, services, temp_dir, ALICE_TOKEN, WAIT};

struct Daemon {
    proc: Proc,
    transport: String,
    ca: String,
    dir: std::path::PathBuf,
    range: (u16, u16),
}

async fn daemon() -> Daemon {
    let dir = temp_dir("proc");
    let range = port_block();
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), range, "")).expect("write config");
    let mut proc = Proc::spawn(
        "tunneld",
        &[
            "--config",
            file.to_str().expect("utf8"),
            "--set",
            "limits.drain_timeout=60s",
        ],
        dir.join("tunneld.err"),
    )
    .expect("spawn tunneld");
    let t = proc
        .line_starting("listening transport=edge")
        .await
        .expect("transport line");
    let transport = field(&t, "addr").expect("addr");
    let trust = proc.line_starting("trust ").await.expect("trust line");
    let ca = field(&trust, "ca").expect("ca");
    proc.line_starting("ready").await.expect("ready");
    Daemon {
        proc,
        transport,
        ca,
        dir,
        range,
    }
}

fn client_file(d: &Daemon, token: &str, local: SocketAddr, port: u16) -> String {
    let f = d.dir.join(format!("client-{port}.yaml"));
    std::fs::write(
        &f,
        format!(
            "server: {}\nserver_name: localhost\ntoken: {token}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 1s }}\ntunnels:\n  svc:\n    local: {local}\n    remote_port: {port}\n",
            d.transport, d.ca
        ),
    )
    .expect("write");
    f.to_string_lossy().into_owned()
}

async fn echo_once(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"ping").await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// Connect attempts until one is refused; bounded by [`WAIT`].
async fn until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("{addr} still accepts connections")
            }
            Ok(mut s) => {
                // Accepted while the session winds down: tunneld closes it at once.
                let mut b = [0u8; 1];
                let _ = tokio::time::timeout(WAIT, s.read(&mut b)).await;
            }
            Err(_) => {}
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tunnelc_is_refused_promptly_and_gets_its_port_back() {
    let d = daemon().await;
    let local = services::echo().await;
    let port = d.range.0 + 5;
    let cfg = client_file(&d, ALICE_TOKEN, local, port);
    let mut c =
        Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("c1.err")).expect("spawn tunnelc");
    let line = c.line_starting("tunnel svc").await.expect("tunnel line");
    assert_eq!(line, format!("tunnel svc: tcp://127.0.0.1:{port}"));
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert_eq!(echo_once(public).await.expect("echo"), b"ping");

    c.signal("KILL").expect("kill -9");
    c.wait().await.expect("reaped");
    until_refused(public).await;

    let mut c2 =
        Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("c2.err")).expect("respawn");
    let line = c2.line_starting("tunnel svc").await.expect("tunnel line");
    assert_eq!(
        line,
        format!("tunnel svc: tcp://127.0.0.1:{port}"),
        "the same port comes back"
    );
    assert_eq!(echo_once(public).await.expect("echo again"), b"ping");
    drop(c2);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_and_a_second_signal_exits_at_once() {
    let mut d = daemon().await;
    let local = services::echo().await;
    let port = d.range.0 + 6;
    let cfg = client_file(&d, ALICE_TOKEN, local, port);
    let mut c = Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("c.err")).expect("tunnelc");
    c.line_starting("tunnel svc:").await.expect("up");
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut open = TcpStream::connect(public).await.expect("visitor");
    open.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.expect("echo before");

    d.proc.signal("TERM").expect("SIGTERM");
    until_refused(public).await;
    // The open stream still works during the drain.
    open.write_all(b"during").await.expect("write during drain");
    open.read_exact(&mut buf).await.expect("echo during drain");
    assert_eq!(&buf, b"during");
    open.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.expect("end");
    let status = d.proc.wait().await.expect("tunneld exits after the drain");
    assert!(status.success(), "{status}");
    assert!(d.proc.stderr().contains("draining"), "{}", d.proc.stderr());

    // Second signal: exits before the drain timeout although a stream stays open.
    let mut d2 = daemon().await;
    let cfg = client_file(&d2, ALICE_TOKEN, local, d2.range.0 + 7);
    let mut c = Proc::spawn("tunnelc", &["--config", &cfg], d2.dir.join("c.err")).expect("tunnelc");
    let line = c.line_starting("tunnel svc:").await.expect("up");
    let public: SocketAddr = line
        .trim_start_matches("tunnel svc: tcp://")
        .parse()
        .expect("addr");
    let mut held = TcpStream::connect(public).await.expect("visitor");
    held.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.expect("echo");
    d2.proc.signal("TERM").expect("first");
    until_refused(public).await;
    d2.proc.signal("TERM").expect("second");
    let status = d2.proc.wait().await.expect("exits");
    assert_eq!(
        status.code(),
        Some(130),
        "second signal exits at once with 130"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explained_in_both_logs() {
    let d = daemon().await;
    let cfg = client_file(
        &d,
        "definitely-the-wrong-token-00",
        "127.0.0.1:9".parse().expect("addr"),
        d.range.0,
    );
    let mut c =
        Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("bad.err")).expect("tunnelc");
    let status = c.wait().await.expect("tunnelc exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        c.stderr()
            .contains("tunneld refused the session: invalid token"),
        "{}",
        c.stderr()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    // The server logs before it answers, so the line is there once tunnelc has the answer.
    while !d.proc.stderr().contains("client rejected: invalid token") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            d.proc.stderr()
        );
        tokio::task::yield_now().await;
    }

    // A port outside the range is refused with words tunnelc prints.
    let cfg = client_file(&d, ALICE_TOKEN, "127.0.0.1:9".parse().expect("addr"), 80);
    let mut c =
        Proc::spawn("tunnelc", &["--config", &cfg], d.dir.join("range.err")).expect("tunnelc");
    // It was its only tunnel: tunnelc says so in one line and stops instead of looping.
    let status = c.wait().await.expect("tunnelc exits");
    assert_eq!(status.code(), Some(2));
    let err = c.stderr();
    assert!(
        err.contains("tunneld refused every tunnel: svc: port 80 is outside the range"),
        "{err}"
    );
    assert_eq!(err.matches("refused every tunnel").count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_exposes_one_port_without_a_config_file() {
    let d = daemon().await;
    let local = services::echo().await;
    let mut c = Proc::spawn(
        "tunnelc",
        &[
            "tcp",
            &local.to_string(),
            "--server",
            &d.transport,
            "--token",
            ALICE_TOKEN,
            "--ca",
            &d.ca,
            "--server-name",
            "localhost",
        ],
        d.dir.join("quick.err"),
    )
    .expect("tunnelc tcp");
    let line = c
        .line_starting("tunnel tcp:")
        .await
        .expect("endpoint printed");
    let public: SocketAddr = line
        .trim_start_matches("tunnel tcp: tcp://")
        .parse()
        .expect("addr");
    assert_eq!(
        tokio::time::timeout(WAIT, echo_once(public))
            .await
            .expect("in time")
            .expect("echo"),
        b"ping"
    );
}

/// tunnelc ends at once (exit 2, one line naming the fix) on what retrying cannot heal: a
/// server certificate it does not trust, a port of another transport, a port that is not TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_dial_failures_end_tunnelc_with_the_fix() {
    let d = daemon().await;
    let write = |name: &str, yaml: String| {
        let f = d.dir.join(name);
        std::fs::write(&f, yaml).expect("write");
        f.display().to_string()
    };
    let tunnels = "tunnels:\n  svc:\n    local: 127.0.0.1:9\n";
    // A port that answers in plain HTTP, as a websocket transport's port does.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let cases = [
        (
            "untrusted",
            // No `tls: ca`: the system roots do not know tunneld's own CA.
            format!("server: {}\nserver_name: localhost\ntoken: {ALICE_TOKEN}\n{tunnels}", d.transport),
            "certificate is not trusted",
            "--ca",
        ),
        (
            "not-tls",
            format!(
                "server: {}\nserver_name: localhost\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\n{tunnels}",
                plain_addr, d.ca
            ),
            "does not speak this transport",
            "transport: websocket",
        ),
    ];
    for (name, yaml, what, fix) in cases {
        let cfg = write(&format!("{name}.yaml"), yaml);
        let mut c = Proc::spawn(
            "tunnelc",
            &["--config", &cfg],
            d.dir.join(format!("{name}.err")),
        )
        .expect("tunnelc");
        let status = tokio::time::timeout(WAIT, c.wait())
            .await
            .expect("tunnelc ends instead of retrying")
            .expect("exit");
        let err = c.stderr();
        assert_eq!(status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(what) && err.contains(fix), "{name}: {err}");
    }
}

/// A yamux tunnelc pointed at an h2-reverse port: the TLS alert `no_application_protocol`
/// ends it with exit 2 and the line naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_of_another_transport_ends_tunnelc_with_the_fix() {
    let s = tunneld_integration_tests::TestServer::start_web("")
        .await
        .expect("server");
    let dir = temp_dir("wrong-transport");
    let cfg = dir.join("client.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {}\nserver_name: localhost\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\ntunnels:\n  svc:\n    local: 127.0.0.1:9\n",
            s.running.transports["h2"],
            s.ca_file().display()
        ),
    )
    .expect("write");
    let mut c = Proc::spawn(
        "tunnelc",
        &["--config", cfg.to_str().expect("utf8")],
        dir.join("tunnelc.err"),
    )
    .expect("tunnelc");
    let status = tokio::time::timeout(WAIT, c.wait())
        .await
        .expect("tunnelc ends instead of retrying")
        .expect("exit");
    let err = c.stderr();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("does not speak this transport")
            && err.contains("check `server:` and `transport:`"),
        "{err}"
    );
}
