//! pipe2me's own command, unchanged, against the real tunneld binary: autossh keeping
//! OpenSSH's `-R 0.0.0.0:<port>:localhost:<local>` up with an RSA key (`pipe2me.id_rsa`), and
//! the same port served again after tunneld is killed and restarted; a client that stops
//! answering is dropped by the server's keepalives.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::Proc;
use tunneld_integration_tests::ssh::{keygen, peer_or_skip, Ssh};
use tunneld_integration_tests::{metrics, port_block, services, temp_dir, ALICE_TOKEN, WAIT};

/// A free loopback port (bound and released: tunneld must get the same one after a restart).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn config(
    dir: &std::path::Path,
    ssh_port: u16,
    admin: u16,
    range: (u16, u16),
    key: &str,
) -> std::path::PathBuf {
    let file = dir.join("server.yaml");
    std::fs::write(
        &file,
        format!(
            "state_dir: {state}\nlog: {{ level: info }}\nauth:\n  tokens:\n    alice:\n      token: {ALICE_TOKEN}\n      max_ports: 3\n      ssh_keys: [\"{key}\"]\nlimits:\n  handshake_timeout: 5s\nadmin:\n  listen: 127.0.0.1:{admin}\ntransports:\n  ssh:\n    type: ssh\n    listen: 127.0.0.1:{ssh_port}\n    keepalive_interval: 1s\n    keepalive_max: 2\nfrontends:\n  tcp:\n    type: ports\n    bind: 127.0.0.1\n    range: {a}-{b}\n    reclaim_grace: 30s\n",
            state = dir.join("state").display(),
            a = range.0,
            b = range.1,
        ),
    )
    .expect("write config");
    file
}

async fn tunneld(file: &std::path::Path, err: std::path::PathBuf) -> Proc {
    let mut p = Proc::spawn("tunneld", &["--config", file.to_str().expect("utf8")], err)
        .expect("spawn tunneld");
    let trust = p
        .line_starting("trust ssh=ssh")
        .await
        .expect("host key line");
    assert!(trust.contains("host_key=SHA256:"), "{trust}");
    p.line_starting("ready").await.expect("ready");
    p
}

async fn echo_once(ep: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(ep).await?;
    s.write_all(b"pipe2me-check").await?;
    let mut buf = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    anyhow::ensure!(&buf == b"pipe2me-check", "wrong echo");
    Ok(())
}

async fn wait_echo(ep: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while echo_once(ep).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "{ep} never echoed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sessions(admin: u16) -> f64 {
    let (_, out) =
        tunneld_integration_tests::process::curl(&[&format!("http://127.0.0.1:{admin}/metrics")])
            .await
            .expect("metrics");
    metrics::parse(&out)
        .expect("metrics parse")
        .get("tunneld_sessions_active", &[("transport", "ssh")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe2me_autossh_command_survives_a_tunneld_restart() {
    if !peer_or_skip("autossh", "pipe2me autossh") || !peer_or_skip("ssh", "pipe2me autossh") {
        return;
    }
    let dir = temp_dir("pipe2me-autossh");
    let (key, public) = keygen(&dir, "pipe2me.id_rsa", "rsa").expect("keygen rsa");
    let (ssh_port, admin) = (free_port(), free_port());
    let range = port_block();
    let file = config(&dir, ssh_port, admin, range, &public);
    let mut daemon = tunneld(&file, dir.join("tunneld-1.err")).await;
    let ssh_config = dir.join("pipe2me.ssh_config");
    std::fs::write(
        &ssh_config,
        "ServerAliveInterval 1\nServerAliveCountMax 3\nBatchMode yes\n",
    )
    .expect("ssh_config");
    let echo = services::echo().await;
    let remote = range.0 + 5;
    let d = |p: &std::path::Path| p.display().to_string();
    // pipe2me v0.3's command, argument for argument.
    let args: Vec<String> = [
        "-M",
        "0",
        "-F",
        &d(&ssh_config),
        "alice@127.0.0.1",
        "-p",
        &ssh_port.to_string(),
        "-R",
        &format!("0.0.0.0:{remote}:localhost:{}", echo.port()),
        "-i",
        &d(&key),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        &format!("UserKnownHostsFile={}", d(&dir.join("pipe2me.known_hosts"))),
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "ExitOnForwardFailure=yes",
        "-N",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _autossh = Ssh::spawn("autossh", &args, &[("AUTOSSH_GATETIME", "0")]).expect("autossh");
    let ep = SocketAddr::from(([127, 0, 0, 1], remote));
    wait_echo(ep).await;

    // tunneld dies and comes back: autossh reconnects, the same port serves again.
    daemon.child.start_kill().expect("kill tunneld");
    let _ = daemon.child.wait().await;
    let _daemon = tunneld(&file, dir.join("tunneld-2.err")).await;
    let back = tokio::time::Instant::now();
    wait_echo(ep).await;
    let took = back.elapsed();
    eprintln!("port {remote} served again {took:?} after the restart");
    assert!(
        took < Duration::from_secs(5),
        "port {remote} came back after {took:?}"
    );
    assert_eq!(sessions(admin).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_dropped_by_keepalives() {
    if !peer_or_skip("ssh", "ssh keepalive") {
        return;
    }
    let dir = temp_dir("ssh-keepalive");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let (ssh_port, admin) = (free_port(), free_port());
    let file = config(&dir, ssh_port, admin, port_block(), &public);
    let _daemon = tunneld(&file, dir.join("tunneld.err")).await;
    let mut args = tunneld_integration_tests::ssh::base_args(ssh_port, &key);
    args.extend(["-N", "-R", "0:127.0.0.1:9", "alice@127.0.0.1"].map(String::from));
    let mut ssh = Ssh::spawn("ssh", &args, &[]).expect("ssh");
    ssh.allocated_port().await.expect("forward");
    assert_eq!(sessions(admin).await, 1.0);
    // SIGSTOP: the TCP connection stays open but nothing answers.
    let pid = ssh.child.id().expect("pid").to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let t = tokio::time::Instant::now();
    let deadline = t + WAIT;
    while sessions(admin).await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stopped client's session is still live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("a silent client was dropped after {:?}", t.elapsed());
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
}
