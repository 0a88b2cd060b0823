//! pipe2me's provisioning API shape against the tunneld binary, with curl and ssh-keygen as
//! pipe2me's shell workflow uses them: `POST /tunnels/<token>` answers shell lines (one port
//! per protocol, `TUNNEL=ssh://<name>@<host>:<port>`), an `ssh-keygen -t rsa -b 3072` key
//! uploaded to `/tunnels/<id>/id_rsa.pub` shows in `tunneld token ssh-key list`, verify,
//! wrong ids (404, throttled), no listing, and the same ports after a restart.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use tunneld_integration_tests::process::{field, tunneld_cli, Proc};
use tunneld_integration_tests::{port_block, server_yaml, temp_dir};

const PLANE: &str = "  web:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\ncontrol:\n  listen: 127.0.0.1:0\n  names_frontend: web\n  ports_frontend: tcp\n  transport: edge\n  ssh_endpoint: ssh.localhost:2222\n";

struct Plane {
    dir: PathBuf,
    config: PathBuf,
    _proc: Proc,
    api: SocketAddr,
}

impl Plane {
    async fn run(dir: PathBuf, config: PathBuf) -> Result<Self> {
        let n = std::fs::read_dir(&dir)?.count();
        let mut proc = Proc::spawn(
            "tunneld",
            &["--config", config.to_str().context("utf8")?],
            dir.join(format!("tunneld-{n}.log")),
        )?;
        let line = proc.line_starting("listening control").await?;
        let api = field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no addr in {line}"))?;
        proc.line_starting("ready").await?;
        Ok(Self {
            dir,
            config,
            _proc: proc,
            api,
        })
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        tunneld_cli(&self.config, args)
    }

    /// curl against the API: (status, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.dir.join("state/tls/ca.pem"))
            .args(args)
            .arg(format!("https://localhost:{}{path}", self.api.port()))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// `KEY=value` lines as a map.
fn shell_lines(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn keygen(dir: &Path, name: &str, kind: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(kind)
        .args(["-q", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen (openssh-client)")
        .success();
    assert!(ok, "ssh-keygen");
    dir.join(format!("{name}.pub"))
}

fn fingerprint(pub_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .expect("-lf");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

#[tokio::test]
async fn pipe2me_shell_workflow() {
    tokio::time::timeout(std::time::Duration::from_secs(120), workflow())
        .await
        .expect("within 120 s")
        .expect("workflow");
}

async fn workflow() -> Result<()> {
    let dir = temp_dir("pipe2me");
    let config = dir.join("server.yaml");
    let range = port_block();
    std::fs::write(&config, server_yaml(&dir.join("state"), range, PLANE))?;
    let p = Plane::run(dir.clone(), config.clone()).await?;
    let out = p.cli(&["token", "add", "gina", "--max-ports", "4"])?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .context("token")?
        .to_string();

    // pipe2me's setup: curl -d protocols=... /tunnels/<token>.
    let (code, body) = p.curl(
        &["-d", "protocols=http,https"],
        &format!("/tunnels/{token}"),
    );
    assert_eq!(code, 201, "{body}");
    let v = shell_lines(&body);
    let (id, fqdn) = (&v["ID"], &v["FQDN"]);
    let name = fqdn.strip_suffix(".localhost").context("fqdn")?.to_string();
    assert!(id.len() >= 32, "an id of at least 192 bits: {id}");
    let port_of = |url: &str, scheme: &str| -> u16 {
        let port = url
            .strip_prefix(&format!("{scheme}://{fqdn}:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{url}"));
        assert!((range.0..=range.1).contains(&port), "{port} in {range:?}");
        port
    };
    let ports = (
        port_of(&v["URLS_0"], "http"),
        port_of(&v["URLS_1"], "https"),
    );
    assert_ne!(ports.0, ports.1, "one port per protocol");
    assert_eq!(v["TUNNEL"], format!("ssh://{name}@ssh.localhost:2222"));
    assert_eq!(body.lines().count(), 5, "{body}");

    // The native API sees it: each protocol a tcp lease named <name>-<protocol>.
    let (code, info) = p.curl(
        &["-H", &format!("Authorization: Bearer {token}")],
        &format!("/v1/tunnels/{name}"),
    );
    assert_eq!(code, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info)?;
    for (e, port) in info["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .zip([ports.0, ports.1])
    {
        assert_eq!(e["kind"], "tcp", "{e}");
        assert_eq!(e["url"], format!("tcp://127.0.0.1:{port}"), "{e}");
        assert!(
            e["tunnel"].as_str().is_some_and(
                |t| t == format!("{name}-{}", e["protocol"].as_str().unwrap_or_default())
            ),
            "{e}"
        );
    }

    // pipe2me's key upload with an ssh-keygen RSA key; then listed by the CLI.
    let keys = temp_dir("pipe2me-keys");
    let rsa = keygen(&keys, "pipe2me.id_rsa", &["-t", "rsa", "-b", "3072"]);
    let upload = format!("@{}", rsa.display());
    let (code, body) = p.curl(
        &["--data-binary", &upload],
        &format!("/tunnels/{id}/id_rsa.pub"),
    );
    assert_eq!((code, body.trim()), (200, "OK"));
    let list = p.cli(&["token", "ssh-key", "list", "gina"])?;
    let row = list
        .lines()
        .find(|l| l.starts_with(&fingerprint(&rsa)))
        .context("listed")?;
    assert!(
        row.contains("\tssh-rsa\t")
            && row.ends_with(&format!(
                "\tgina\t{name}\t{}",
                row.rsplit('\t').next().unwrap_or_default()
            )),
        "{row}"
    );

    // The same key for another tunnel is refused; a new key replaces the tunnel's key.
    let (code, body) = p.curl(&["-d", "protocols=tcp"], &format!("/tunnels/{token}"));
    assert_eq!(code, 201, "{body}");
    let id2 = shell_lines(&body)["ID"].clone();
    let (code, _) = p.curl(
        &["--data-binary", &upload],
        &format!("/tunnels/{id2}/id_rsa.pub"),
    );
    assert_eq!(code, 409);
    let ed = keygen(&keys, "new", &["-t", "ed25519"]);
    let (code, _) = p.curl(
        &["--data-binary", &format!("@{}", ed.display())],
        &format!("/tunnels/{id}/id_rsa.pub"),
    );
    assert_eq!(code, 200);
    let list = p.cli(&["token", "ssh-key", "list", "gina"])?;
    assert!(
        list.contains(&fingerprint(&ed)) && !list.contains(&fingerprint(&rsa)),
        "{list}"
    );
    let (code, body) = p.curl(
        &["--data-binary", "ssh-rsa !!!"],
        &format!("/tunnels/{id}/id_rsa.pub"),
    );
    assert_eq!((code, body.trim()), (400, "the key is not valid base64"));

    // Show and verify; no listing; the quota counts one port per protocol.
    let (code, again) = p.curl(&[], &format!("/tunnels/{id}"));
    assert_eq!((code, shell_lines(&again)), (200, v.clone()));
    let (code, left) = p.curl(&[], &format!("/tunnels/{id}/verify"));
    let secs: u64 = left
        .strip_suffix(" seconds left.\n")
        .and_then(|s| s.parse().ok())
        .context("verify")?;
    assert!(code == 200 && secs > 60, "{left}");
    assert_eq!(p.curl(&[], "/tunnels/").0, 404);
    assert_eq!(p.curl(&[], "/tunnels").0, 404);
    let (code, body) = p.curl(
        &["-d", "protocols=http,https"],
        &format!("/tunnels/{token}"),
    );
    assert!(code == 403 && body.contains("max_ports"), "{code} {body}");
    let (code, body) = p.curl(&["-d", "protocols=gopher"], &format!("/tunnels/{token}"));
    assert!(code == 400 && body.contains("gopher"), "{body}");

    // Restart: the same ports, the same answer.
    drop(p);
    let p = Plane::run(dir.clone(), config).await?;
    let (code, again) = p.curl(&[], &format!("/tunnels/{id}"));
    assert_eq!((code, shell_lines(&again)), (200, v));

    // Wrong ids and tokens: 404/403, counted against the address until it is throttled.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let path = match i % 3 {
            0 => format!("/tunnels/wrong{i}"),
            1 => format!("/tunnels/wrong{i}/verify"),
            _ => format!("/tunnels/wrong-token-{i}-0123456789"),
        };
        let args: &[&str] = if i % 3 == 2 {
            &["-d", "protocols=http"]
        } else {
            &[]
        };
        statuses.push(p.curl(args, &path).0);
    }
    assert_eq!(&statuses[..3], [404, 404, 403], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let _ = std::fs::remove_dir_all(&keys);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
