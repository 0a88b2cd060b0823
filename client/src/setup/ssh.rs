//! `tunnelc setup --transport ssh`: the tunnel served by stock OpenSSH (`ssh -R`), no tunnelc
//! needed, as pipe2me's client did. Beside the certificate files, the tunnel's directory
//! gets `<name>.id_ed25519` (+ `.pub`, made by `ssh-keygen` and bound to the tunnel through
//! `POST /v1/tunnels/<name>/ssh-key`), `<name>.known_hosts` (tunneld's ssh host key from
//! `GET /v1/config`), `<name>.ssh_config` (a `Host <name>` block with one `RemoteForward`
//! per endpoint) and `token` (for `tunnelc list`'s lookups at the API).

use super::api_client::{self, ApiClient};
use super::files;
use crate::provision_api::{ServerInfo, TunnelInfo};
use anyhow::{anyhow, bail, Context};
use http::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The private file holding the token in an ssh set-up (there is no `client.yaml`).
pub const TOKEN: &str = "token";

/// Where tunneld's ssh transport is, from `GET /v1/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshServer {
    pub host: String,
    pub port: u16,
    /// `ssh-ed25519 AAAA...`.
    pub host_key: String,
}

/// `tunnel.json`'s `ssh`: what `list` and `env` need of an ssh set-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRecord {
    /// `host:port` of tunneld's ssh transport.
    pub endpoint: String,
    /// How the provisioning API's certificate was trusted at setup (`--pin`, `--server-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The private key's file name (the public key adds `.pub`).
pub fn key_file(name: &str) -> String {
    format!("{name}.id_ed25519")
}
pub fn known_hosts_file(name: &str) -> String {
    format!("{name}.known_hosts")
}
pub fn config_file(name: &str) -> String {
    format!("{name}.ssh_config")
}

/// Whether setup configures ssh: `--transport ssh`, or no `--transport` and a server whose
/// `control.transport` is ssh. `Some` with the ssh transport's address and host key.
pub fn chosen(asked: Option<&str>, info: &ServerInfo) -> anyhow::Result<Option<SshServer>> {
    let offered = match (&info.ssh_endpoint, info.transport.as_str()) {
        (Some(_), "ssh") => "ssh".to_string(),
        (Some(_), t) => format!("{t} and ssh"),
        (None, t) => t.to_string(),
    };
    let ssh = match asked {
        None => info.transport == "ssh",
        Some("ssh") => true,
        Some(t) if t == info.transport => false,
        Some(t) => bail!("--transport {t}: tunneld offers {offered} (GET /v1/config)"),
    };
    if !ssh {
        return Ok(None);
    }
    let (Some(endpoint), Some(host_key)) = (&info.ssh_endpoint, &info.ssh_host_key) else {
        bail!("--transport ssh: tunneld has no ssh transport to offer (GET /v1/config names no ssh_endpoint and ssh_host_key; it offers {offered})");
    };
    let (host, port) = split_endpoint(endpoint)?;
    Ok(Some(SshServer {
        host,
        port,
        host_key: host_key.trim().to_string(),
    }))
}

/// `host:port` (`[v6]:port` too) split up.
pub fn split_endpoint(e: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = e
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| anyhow!("ssh endpoint `{e}` is not host:port"))?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("ssh endpoint `{e}`: `{p}` is not a port"))?;
    Ok((h.trim_matches(|c| c == '[' || c == ']').to_string(), port))
}

/// Fails clearly, before anything is provisioned, when `ssh-keygen` cannot run.
pub fn check_keygen() -> anyhow::Result<()> {
    match std::process::Command::new("ssh-keygen")
        .arg("-?")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--transport ssh needs `ssh-keygen`, which is not installed (it comes with OpenSSH: apt-get install openssh-client)"
        ),
        Err(e) => Err(e).context("cannot run ssh-keygen"),
    }
}

/// `ssh-keygen -t ed25519 -N '' -f <path>`; returns the public key line.
fn keygen(path: &Path, comment: &str) -> anyhow::Result<String> {
    let public = PathBuf::from(format!("{}.pub", path.display()));
    for f in [path, public.as_path()] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("{}", f.display()))
            }
            _ => {}
        }
    }
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let line = std::fs::read_to_string(&public).with_context(|| format!("{}", public.display()))?;
    Ok(line.trim().to_string())
}

/// The `known_hosts` line for tunneld's host key (`[host]:port`, plain `host` on port 22).
pub fn known_hosts_line(s: &SshServer) -> String {
    if s.port == 22 {
        format!("{} {}\n", s.host, s.host_key)
    } else {
        format!("[{}]:{} {}\n", s.host, s.port, s.host_key)
    }
}

/// One `RemoteForward` per endpoint: tcp as its leased port on all addresses, http as
/// `<name>:80` (TLS ended by tunneld), https (tls) as `<name>:443` (passed through by SNI).
pub fn forwards(t: &TunnelInfo, local: &BTreeMap<String, u16>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in &t.endpoints {
        let to = local.get(&e.protocol).copied().unwrap_or(0);
        let from = match e.kind.as_str() {
            "tcp" => {
                let port = e
                    .url
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .ok_or_else(|| anyhow!("endpoint {} names no port", e.url))?;
                format!("0.0.0.0:{port}")
            }
            "http" => format!("{}:80", t.name),
            _ => format!("{}:443", t.name),
        };
        out.push(format!("RemoteForward {from} localhost:{to}"));
    }
    Ok(out)
}

/// Double-quotes a path for ssh_config.
fn quoted(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// OpenSSH's default ciphers with AES-GCM first: OpenSSH takes
/// `chacha20-poly1305@openssh.com` whenever a server offers it, and over tunneld (which
/// offers both) AES-GCM moves about 1.9x the bytes up and 1.6x down on a CPU with AES
/// instructions (docs/transports.md). The rest of the list keeps any tunneld's choice of
/// ciphers working.
pub const AES_FIRST_CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

/// The `Ciphers` line for this machine: AES-GCM first where the CPU has AES and carry-less
/// multiply instructions; elsewhere (a Raspberry Pi 4, say) ChaCha20 is the faster one and
/// OpenSSH's own order stays. Only ciphers this machine's `ssh -Q cipher` lists (an OpenSSH
/// built without OpenSSL has no AES-GCM, a FIPS one may lack ChaCha20, and either refuses to
/// start on a name it does not know); no line when it lists no AES-GCM or cannot be asked.
pub fn ciphers_here() -> Option<String> {
    if !aes_in_hardware() {
        return None;
    }
    let out = std::process::Command::new("ssh")
        .args(["-Q", "cipher"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    supported_first(&String::from_utf8_lossy(&out.stdout))
}

/// [`AES_FIRST_CIPHERS`] less what `known` (`ssh -Q cipher`'s lines) lacks, when AES-GCM is
/// left at its head.
fn supported_first(known: &str) -> Option<String> {
    let known: Vec<&str> = known.lines().map(str::trim).collect();
    let kept: Vec<&str> = AES_FIRST_CIPHERS
        .split(',')
        .filter(|c| known.contains(c))
        .collect();
    kept.first()
        .filter(|c| c.contains("-gcm@"))
        .map(|_| kept.join(","))
}

#[cfg(target_arch = "x86_64")]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

/// The `Host <name>` block; `ciphers`: a `Ciphers` line's list ([`ciphers_here`]).
pub fn config_text(
    t: &TunnelInfo,
    s: &SshServer,
    tdir: &Path,
    forwards: &[String],
    ciphers: Option<&str>,
) -> String {
    let mut out = format!(
        "# Written by `tunnelc setup --transport ssh` for tunnel {} ({}).\n# Run it: ssh -F {} -N {}\nHost {}\n",
        t.name,
        t.fqdn,
        quoted(&tdir.join(config_file(&t.name))),
        t.name,
        t.name
    );
    let key = quoted(&tdir.join(key_file(&t.name)));
    let known = quoted(&tdir.join(known_hosts_file(&t.name)));
    for (k, v) in [
        ("HostName", s.host.clone()),
        ("Port", s.port.to_string()),
        ("User", t.name.clone()),
        ("IdentityFile", key),
        ("IdentitiesOnly", "yes".into()),
        ("UserKnownHostsFile", known),
        ("StrictHostKeyChecking", "yes".into()),
        ("ExitOnForwardFailure", "yes".into()),
        ("ServerAliveInterval", "15".into()),
        ("ServerAliveCountMax", "2".into()),
    ] {
        out.push_str(&format!("    {k} {v}\n"));
    }
    if let Some(c) = ciphers {
        out.push_str(&format!("    Ciphers {c}\n"));
    }
    for f in forwards {
        out.push_str(&format!("    {f}\n"));
    }
    out
}

/// Makes the key pair, binds it to the tunnel, writes `known_hosts`, `ssh_config` and the
/// token.
pub async fn install(
    s: &SshServer,
    api: &ApiClient,
    t: &TunnelInfo,
    local: &BTreeMap<String, u16>,
    tdir: &Path,
    token: &str,
) -> anyhow::Result<()> {
    let line = keygen(
        &tdir.join(key_file(&t.name)),
        &format!("tunnelc-{}", t.name),
    )?;
    let path = format!("/v1/tunnels/{}/ssh-key", t.name);
    let (status, answer) = api
        .call(Method::POST, &path, "text/plain", line.into_bytes())
        .await?;
    api_client::check(status, &answer, &Method::POST, &path)?;
    files::write(
        &tdir.join(known_hosts_file(&t.name)),
        known_hosts_line(s).as_bytes(),
        false,
    )?;
    let ciphers = ciphers_here();
    let text = config_text(t, s, tdir, &forwards(t, local)?, ciphers.as_deref());
    files::write(&tdir.join(config_file(&t.name)), text.as_bytes(), false)?;
    files::write(&tdir.join(TOKEN), format!("{token}\n").as_bytes(), true)
}

/// What to run, printed after setup.
pub fn print_run(tdir: &Path, name: &str) {
    let cfg = quoted(&tdir.join(config_file(name)));
    say!("run it:   ssh -F {cfg} -N {name}");
    say!("or kept up by autossh: autossh -M 0 -F {cfg} -N {name}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision_api::Endpoint;

    fn info(transport: &str, ssh: bool) -> ServerInfo {
        ServerInfo {
            domain: "t.example".into(),
            transport: transport.into(),
            transport_port: 4443,
            transport_host: None,
            transport_local_ca: true,
            protocols: vec!["http".into()],
            version: "0".into(),
            ssh_endpoint: ssh.then(|| "t.example:2222".into()),
            ssh_host_key: ssh.then(|| "ssh-ed25519 AAAAC3".into()),
        }
    }

    #[test]
    fn transport_choice() {
        assert_eq!(chosen(None, &info("yamux", true)).expect("ok"), None);
        assert_eq!(
            chosen(Some("yamux"), &info("yamux", true)).expect("ok"),
            None
        );
        let s = chosen(Some("ssh"), &info("yamux", true))
            .expect("ok")
            .expect("ssh");
        assert_eq!((s.host.as_str(), s.port), ("t.example", 2222));
        assert!(chosen(None, &info("ssh", true)).expect("ok").is_some());
        let e = chosen(Some("ssh"), &info("yamux", false)).expect_err("no ssh");
        assert!(e.to_string().contains("no ssh transport"), "{e}");
        let e = chosen(Some("h2-reverse"), &info("yamux", true)).expect_err("other");
        assert!(e.to_string().contains("offers yamux and ssh"), "{e}");
    }

    #[test]
    fn endpoints_and_lines() {
        assert_eq!(
            split_endpoint("[::1]:22").expect("v6"),
            ("::1".to_string(), 22)
        );
        assert!(split_endpoint("host").is_err());
        assert!(split_endpoint("host:0").is_err());
        let s = SshServer {
            host: "h".into(),
            port: 2222,
            host_key: "ssh-ed25519 K".into(),
        };
        assert_eq!(known_hosts_line(&s), "[h]:2222 ssh-ed25519 K\n");
        let ep = |p: &str, url: &str, kind: &str| Endpoint {
            protocol: p.into(),
            url: url.into(),
            tunnel: "x".into(),
            kind: kind.into(),
        };
        let t = TunnelInfo {
            name: "calm".into(),
            fqdn: "calm.h".into(),
            owner: "o".into(),
            protocols: vec![],
            endpoints: vec![
                ep("http", "https://calm.h:8443", "http"),
                ep("https", "https://calm.h:8443", "tls"),
                ep("tcp", "tcp://h:20001", "tcp"),
            ],
            state: "offline".into(),
            created_at: 0,
            expires_at: None,
            certificates: vec![],
        };
        let local = BTreeMap::from([
            ("http".into(), 8080),
            ("https".into(), 9443),
            ("tcp".into(), 22),
        ]);
        let f = forwards(&t, &local).expect("forwards");
        assert_eq!(
            f,
            [
                "RemoteForward calm:80 localhost:8080",
                "RemoteForward calm:443 localhost:9443",
                "RemoteForward 0.0.0.0:20001 localhost:22"
            ]
        );
        let all = "3des-cbc\naes128-cbc\naes128-ctr\naes192-ctr\naes256-ctr\naes128-gcm@openssh.com\naes256-gcm@openssh.com\nchacha20-poly1305@openssh.com\n";
        assert_eq!(supported_first(all).as_deref(), Some(AES_FIRST_CIPHERS));
        assert_eq!(
            supported_first("aes128-ctr\naes256-gcm@openssh.com\naes256-ctr\n").as_deref(),
            Some("aes256-gcm@openssh.com,aes128-ctr,aes256-ctr"),
            "only what this ssh knows"
        );
        assert_eq!(
            supported_first("aes128-ctr\nchacha20-poly1305@openssh.com\n"),
            None
        );
        assert_eq!(supported_first(""), None);
        let text = config_text(&t, &s, Path::new("/d"), &f, None);
        assert!(!text.contains("Ciphers"), "{text}");
        let text = config_text(&t, &s, Path::new("/d"), &f, Some(AES_FIRST_CIPHERS));
        assert!(
            text.contains("    Ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,"),
            "{text}"
        );
        assert!(
            text.contains("Host calm\n    HostName h\n    Port 2222\n    User calm\n"),
            "{text}"
        );
        assert!(
            text.contains("IdentityFile \"/d/calm.id_ed25519\""),
            "{text}"
        );
        assert!(text.contains("StrictHostKeyChecking yes"), "{text}");
    }
}
