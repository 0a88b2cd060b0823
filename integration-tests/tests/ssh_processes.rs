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

/// pipe2me's whole shell workflow against tunneld: `curl -d protocols=... /tunnels/<token>`,
/// `ssh-keygen -t rsa`, `curl --data-binary @id_rsa.pub /tunnels/<id>/id_rsa.pub`, then the
/// autossh command with one `-R` per URL, reaching the host and port of the `TUNNEL=` line.
/// The key binds only its tunnel's ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe2me_workflow_provisions_uploads_a_key_and_serves_through_autossh() {
    if !peer_or_skip("autossh", "pipe2me workflow") || !peer_or_skip("curl", "pipe2me workflow") {
        return;
    }
    let dir = temp_dir("pipe2me-flow");
    let range = port_block();
    let file = dir.join("server.yaml");
    let plane = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\ncontrol:\n  listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n";
    std::fs::write(
        &file,
        tunneld_integration_tests::server_yaml(&dir.join("state"), range, plane),
    )
    .expect("config");
    let cfg = file.to_str().expect("utf8");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(
            tunneld_integration_tests::process::binary("tunneld").expect("binary"),
        )
        .args(["--config", cfg])
        .args(args)
        .output()
        .expect("tunneld cli");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = run(&["token", "add", "gina", "--max-ports", "4"])
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_string))
        .expect("token");
    let sets = [
        "--set",
        "transports.ssh.type=ssh",
        "--set",
        "transports.ssh.listen=127.0.0.1:0",
    ];
    let mut args = vec!["--config", cfg];
    args.extend(sets);
    let mut daemon = Proc::spawn("tunneld", &args, dir.join("tunneld.err")).expect("tunneld");
    let line = daemon
        .line_starting("listening control")
        .await
        .expect("control");
    let api = tunneld_integration_tests::process::field(&line, "addr").expect("addr");
    daemon.line_starting("ready").await.expect("ready");
    let ca = dir.join("state/tls/ca.pem").display().to_string();
    let url = |path: &str| format!("https://{api}{path}");
    let curl = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        tunneld_integration_tests::process::curl(&a)
            .await
            .expect("curl")
            .1
    };

    let body = curl(vec![
        "--cacert".into(),
        ca.clone(),
        "-d".into(),
        "protocols=http,tcp".into(),
        url(&format!("/tunnels/{token}")),
    ])
    .await;
    let lines: std::collections::BTreeMap<String, String> = body
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (id, tunnel) = (&lines["ID"], &lines["TUNNEL"]);
    let port_of = |k: &str| -> u16 {
        lines[k]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("url port")
    };
    let remote = [port_of("URLS_0"), port_of("URLS_1")];
    // TUNNEL=ssh://<user>@<host>:<port>
    let (user, hostport) = tunnel
        .strip_prefix("ssh://")
        .and_then(|t| t.split_once('@'))
        .expect("TUNNEL line");
    let (host, ssh_port) = hostport.rsplit_once(':').expect("host:port");

    let (key, _) = keygen(&dir, "pipe2me.id_rsa", "rsa").expect("keygen");
    let answer = curl(vec![
        "--cacert".into(),
        ca.clone(),
        "--data-binary".into(),
        format!("@{}.pub", key.display()),
        url(&format!("/tunnels/{id}/id_rsa.pub")),
    ])
    .await;
    assert_eq!(answer.trim(), "OK");

    let (a, b) = (services::echo().await, services::echo().await);
    let ssh_config = dir.join("pipe2me.ssh_config");
    std::fs::write(&ssh_config, "ServerAliveInterval 5\nBatchMode yes\n").expect("ssh_config");
    let d = |p: &std::path::Path| p.display().to_string();
    let mut args: Vec<String> = [
        "-M",
        "0",
        "-F",
        &d(&ssh_config),
        &format!("{user}@{host}"),
        "-p",
        ssh_port,
    ]
    .map(String::from)
    .to_vec();
    for (r, l) in remote.iter().zip([a, b]) {
        args.extend(["-R".into(), format!("0.0.0.0:{r}:localhost:{}", l.port())]);
    }
    args.extend(
        [
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
        .map(String::from),
    );
    let _autossh = Ssh::spawn("autossh", &args, &[("AUTOSSH_GATETIME", "0")]).expect("autossh");
    for r in remote {
        wait_echo(SocketAddr::from(([127, 0, 0, 1], r))).await;
    }

    // The same key asking for a port its tunnel does not hold: the forward is refused.
    let outside = (range.0..=range.1)
        .find(|p| !remote.contains(p))
        .expect("a free port");
    let mut args = tunneld_integration_tests::ssh::base_args(ssh_port.parse().expect("port"), &key);
    args.extend(
        [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0.0.0.0:{outside}:localhost:9"),
            &format!("{user}@{host}"),
        ]
        .map(String::from),
    );
    let mut stray = Ssh::spawn("ssh", &args, &[]).expect("ssh");
    stray
        .line_with("remote port forwarding failed")
        .await
        .expect("refused");
    let (code, _) = stray.exit().await.expect("exits");
    assert_eq!(code, Some(255));
}
