//! `tunnelc setup --transport ssh` against the real tunneld (control plane and an `ssh`
//! transport): `GET /v1/config` names the ssh endpoint and host key, setup writes the key
//! pair, known_hosts and ssh_config, and the real `ssh -F <file> -N <name>` (no tunnelc
//! running) serves the tunnel's leased tcp port and its http name through the https frontend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::{binary, curl, field, Proc};
use tunneld_integration_tests::ssh::{peer_or_skip, Ssh};
use tunneld_integration_tests::{port_block, server_yaml, services, temp_dir, WAIT};

const PLANE: &str = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\ncontrol:\n  listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n";

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary(program).expect("binary"))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn echo_once(ep: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(ep).await?;
    s.write_all(b"setup-check").await?;
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    anyhow::ensure!(&buf == b"setup-check", "wrong echo");
    Ok(())
}

/// The value of `KEY='v'` in `tunnelc env`'s output.
fn env_value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {key}=")))
        .map(|v| v.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("no {key} in {env}"))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// tunneld with the control plane and an `ssh` transport (`--set`s added), and a token.
struct Daemon {
    _proc: Proc,
    dir: std::path::PathBuf,
    token: String,
    ssh_addr: String,
    web: SocketAddr,
    api: String,
    host_key: String,
}

async fn start(name: &str, sets: &[&str]) -> Daemon {
    let dir = temp_dir(name);
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), port_block(), PLANE)).expect("config");
    let cfg = file.to_str().expect("utf8");
    let (ok, out, err) = run(
        "tunneld",
        &["--config", cfg, "token", "add", "gina", "--max-ports", "2"],
    );
    assert!(ok, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token")
        .to_string();
    let mut args = vec![
        "--config",
        cfg,
        "--set",
        "transports.ssh.type=ssh",
        "--set",
        "transports.ssh.listen=127.0.0.1:0",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let mut daemon = Proc::spawn("tunneld", &args, dir.join("tunneld.err")).expect("tunneld");
    let line = daemon
        .line_starting("listening transport=ssh")
        .await
        .expect("ssh");
    let ssh_addr = field(&line, "addr").expect("addr");
    let line = daemon
        .line_starting("listening frontend=web")
        .await
        .expect("web");
    let web: SocketAddr = field(&line, "addr")
        .and_then(|a| a.parse().ok())
        .expect("addr");
    let line = daemon
        .line_starting("listening control")
        .await
        .expect("control");
    let api = field(&line, "addr").expect("addr");
    let trust = daemon.line_starting("trust ssh=ssh").await.expect("trust");
    let host_key = trust
        .split_once("known_hosts_key=\"")
        .and_then(|(_, k)| k.strip_suffix('"'))
        .expect("known_hosts_key")
        .to_string();
    daemon.line_starting("ready").await.expect("ready");
    Daemon {
        _proc: daemon,
        dir,
        token,
        ssh_addr,
        web,
        api,
        host_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_transport_ssh_writes_openssh_files_that_serve_the_tunnel() {
    if !peer_or_skip("ssh", "setup --transport ssh") || !peer_or_skip("curl", "setup ssh") {
        return;
    }
    let Daemon {
        _proc,
        dir,
        token,
        ssh_addr,
        web,
        api,
        host_key,
    } = start("ssh-setup", &[]).await;
    let ca = dir.join("state/tls/ca.pem").display().to_string();
    let server = format!("https://{api}");

    // GET /v1/config names the ssh transport and its host key.
    let (_, config) = curl(&["--cacert", &ca, &format!("{server}/v1/config")])
        .await
        .expect("config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(config["transport"], "yamux", "{config}");
    assert_eq!(config["ssh_endpoint"], ssh_addr.as_str(), "{config}");
    assert_eq!(config["ssh_host_key"], host_key.as_str(), "{config}");

    let (echo, http) = (
        services::echo().await,
        services::http_echo("via-ssh-setup").await,
    );
    let tunnels = dir.join("tunnels");
    let d = tunnels.to_str().expect("utf8");
    let ports = format!("{},{}", echo.port(), http.port());
    let setup = |transport: &str| {
        let a = [
            "setup",
            "--server",
            &server,
            "--token",
            &token,
            "--name",
            "shop",
            "--protocols",
            "tcp,http",
            "--ports",
            &ports,
            "--dir",
            d,
            "--ca",
            &ca,
            "--transport",
            transport,
        ];
        run("tunnelc", &a)
    };
    // A transport tunneld does not offer is refused before anything is provisioned.
    let (ok, _, err) = setup("h2-reverse");
    assert!(!ok && err.contains("offers yamux and ssh"), "{err}");
    let (ok, out, err) = setup("ssh");
    assert!(ok, "setup: {out} {err}");
    let tdir = tunnels.join("shop").canonicalize().expect("tunnel dir");
    let ssh_config = tdir.join("shop.ssh_config");
    assert!(
        out.contains(&format!("ssh -F \"{}\" -N shop", ssh_config.display())),
        "{out}"
    );
    assert!(out.contains("autossh -M 0 -F"), "{out}");
    assert_eq!(mode(&tdir.join("shop.id_ed25519")), 0o600);
    assert!(
        !tdir.join("client.yaml").exists(),
        "no tunnelc config for an ssh setup"
    );
    let known = std::fs::read_to_string(tdir.join("shop.known_hosts")).expect("known_hosts");
    let (h, p) = ssh_addr.rsplit_once(':').expect("host:port");
    assert_eq!(known.trim(), format!("[{h}]:{p} {host_key}"));

    // tunnelc env names the leased port and the ssh files.
    let (ok, env, err) = run("tunnelc", &["env", "shop", "--dir", d]);
    assert!(ok, "{err}");
    assert_eq!(
        env_value(&env, "TUNNEL_SSH_CONFIG"),
        ssh_config.display().to_string()
    );
    let leased: u16 = env_value(&env, "TUNNEL_TCP_PORT").parse().expect("port");
    let text = std::fs::read_to_string(&ssh_config).expect("ssh_config");
    assert!(
        text.contains(&format!(
            "RemoteForward 0.0.0.0:{leased} localhost:{}",
            echo.port()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("RemoteForward shop:80 localhost:{}", http.port())),
        "{text}"
    );
    // AES-GCM first where this CPU has AES instructions; OpenSSH's own order elsewhere.
    match tunneld_client::setup::ssh::ciphers_here() {
        Some(list) => assert!(text.contains(&format!("    Ciphers {list}\n")), "{text}"),
        None => assert!(!text.contains("Ciphers"), "{text}"),
    }

    // The real OpenSSH client with only the written files.
    let cfg_arg = ssh_config.display().to_string();
    let mut ssh = Ssh::spawn(
        "ssh",
        &["-F", &cfg_arg, "-N", "shop"].map(String::from),
        &[],
    )
    .expect("ssh");
    let tcp = SocketAddr::from(([127, 0, 0, 1], leased));
    let deadline = tokio::time::Instant::now() + WAIT;
    while echo_once(tcp).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tcp} never echoed: {:?}",
            ssh.seen
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resolve = format!("shop.localhost:{}:127.0.0.1", web.port());
    let url = format!("https://shop.localhost:{}/hello", web.port());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .await;
        if let Ok((_, body)) = &last {
            if body.ends_with("\n200") {
                assert!(body.contains("via-ssh-setup"), "{body}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered 200: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // tunnelc list reaches the API with the ssh set-up's token: online, and the ssh files.
    let (ok, out, err) = run("tunnelc", &["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains("shop (shop.localhost): online"), "{out}");
    assert!(
        out.contains(&format!("via {}", ssh_config.display())),
        "{out}"
    );

    ssh.child.kill().await.expect("kill ssh");
}

/// `control.transport` naming the ssh transport: `GET /v1/config` says `ssh` with its port,
/// and setup without `--transport` writes the OpenSSH files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_transport_ssh_makes_ssh_the_default() {
    if !peer_or_skip("ssh-keygen", "control.transport ssh")
        || !peer_or_skip("curl", "control.transport ssh")
    {
        return;
    }
    let d = start("ssh-default", &["control.transport=ssh"]).await;
    let ca = d.dir.join("state/tls/ca.pem").display().to_string();
    let server = format!("https://{}", d.api);
    let (_, config) = curl(&["--cacert", &ca, &format!("{server}/v1/config")])
        .await
        .expect("config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    let port: u16 = d
        .ssh_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(config["transport"], "ssh", "{config}");
    assert_eq!(config["transport_port"], port, "{config}");
    assert_eq!(config["transport_local_ca"], false, "{config}");
    assert_eq!(config["ssh_host_key"], d.host_key.as_str(), "{config}");
    let tunnels = d.dir.join("tunnels");
    let a = [
        "setup",
        "--server",
        &server,
        "--token",
        &d.token,
        "--name",
        "deflt",
        "--protocols",
        "tcp",
        "--dir",
        tunnels.to_str().expect("utf8"),
        "--ca",
        &ca,
    ];
    let (ok, out, err) = run("tunnelc", &a);
    assert!(ok, "setup: {out} {err}");
    assert!(out.contains("ssh -F"), "{out}");
    let tdir = tunnels.join("deflt");
    for f in [
        "deflt.id_ed25519",
        "deflt.id_ed25519.pub",
        "deflt.known_hosts",
        "deflt.ssh_config",
    ] {
        assert!(tdir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&tdir.join("token")), 0o600);
    assert!(!tdir.join("client.yaml").exists());
    // tunnelc test cannot drive ssh, and says so.
    let (ok, _, err) = run(
        "tunnelc",
        &["test", "--dir", tunnels.to_str().expect("utf8")],
    );
    assert!(!ok && err.contains("set up for OpenSSH"), "{err}");
}
