//! Debian's `pebble` (Let's Encrypt's test ACME CA) on loopback, with
//! `pebble-challtestsrv` as its DNS server (every name is 127.0.0.1), so tunneld's ACME
//! client can be tested end to end: the CA's validator connects to tunneld's own listeners.

use crate::{server_pki, temp_dir, WAIT};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Whether `pebble` and `pebble-challtestsrv` are installed; when not, the test is skipped
/// with a note, or fails under CI (`CI=true`), where scripts/test installs them.
pub fn pebble_or_skip(test: &str) -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|p| {
        std::process::Command::new(p)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: pebble is not installed (apt-get install pebble; scripts/test does)");
        }
        eprintln!("SKIPPED {test}: pebble is not installed (apt-get install pebble)");
    }
    found
}

/// A free loopback port (bound, then released for a program that cannot take port 0).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Pebble's ports and files, chosen before tunneld starts (tunneld needs the directory URL,
/// pebble needs tunneld's ports).
pub struct PebblePlan {
    /// The ACME directory URL.
    pub directory: String,
    /// The root that signs pebble's own HTTPS (for `acme.ca`).
    pub wfe_ca: PathBuf,
    pub dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// (ACME, management, DNS, DNS management) ports.
    ports: (u16, u16, u16, u16),
}

/// A running pebble and its DNS server; both are killed on drop.
pub struct Pebble {
    pub dir: PathBuf,
    management: SocketAddr,
    _pebble: Child,
    _dns: Child,
}

impl PebblePlan {
    pub fn new() -> Result<Self> {
        let dir = temp_dir("pebble");
        let (wfe_ca, cert, key) = server_pki(&dir, "pebble-wfe", &["localhost", "127.0.0.1"]);
        // From a private block below the ephemeral range: a port picked with port 0 and
        // released may be taken by any connection or listener before pebble binds it (a
        // CI run lost pebble's listener that way).
        let (a, _) = crate::port_block();
        let ports = (a, a + 1, a + 2, a + 3);
        Ok(Self {
            directory: format!("https://127.0.0.1:{}/dir", ports.0),
            wfe_ca,
            dir,
            cert,
            key,
            ports,
        })
    }

    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid `validity` (pebble's default: 5 years).
    pub async fn start(
        self,
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Result<Pebble> {
        let (listen, management, dns, dns_mgmt) = self.ports;
        let dir = self.dir;
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": self.cert, "privateKey": self.key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        let file = dir.join("pebble.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&cfg)?)?;
        let log = |n: &str| std::fs::File::create(dir.join(n));
        let dns_proc = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-defaultIPv4",
                "127.0.0.1",
            ])
            .args([
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(log("challtestsrv.log")?)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn pebble-challtestsrv")?;
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log")?)
            .stderr(log("pebble.err")?)
            .kill_on_drop(true)
            .spawn()
            .context("spawn pebble")?;
        let me = Pebble {
            dir,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            _pebble: pebble,
            _dns: dns_proc,
        };
        me.wait_up(listen).await?;
        Ok(me)
    }
}

impl Pebble {
    /// Waits until pebble answers on both ports (bounded).
    async fn wait_up(&self, port: u16) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(self.management)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "pebble did not start: {}{}",
                    self.log(),
                    std::fs::read_to_string(self.dir.join("pebble.err")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// pebble's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root of the certificates pebble issues (from its management interface), as a file.
    pub async fn root(&self) -> Result<PathBuf> {
        let file = self.dir.join("issuing-root.pem");
        let url = format!("https://{}/roots/0", self.management);
        let ca = self.dir.join("pebble-wfe-ca.pem").display().to_string();
        let path = file.display().to_string();
        let (status, _) = crate::process::curl(&["--cacert", &ca, "-o", &path, &url]).await?;
        if !status.success() {
            return Err(anyhow!("curl {url}: {status}"));
        }
        Ok(file)
    }
}
