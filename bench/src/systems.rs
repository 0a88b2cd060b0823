//! Starting each system under test in front of the local service: a direct connection, two
//! plain relays, tunneld (per transport; the ssh one in [`crate::openssh`]), rathole and bore. Each yields the visitor endpoint
//! and the processes whose memory is measured.

use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const START: Duration = Duration::from_secs(60);

pub use crate::process::Proc;

/// One system in front of the service.
pub struct System {
    pub name: String,
    pub endpoint: crate::endpoint::Endpoint,
    /// The public side (tunneld, rathole server, bore server, first relay).
    pub server: Option<Proc>,
    /// The private side (tunnelc, rathole client, bore local, second relay).
    pub client: Option<Proc>,
    /// More processes of the public side, their memory added to `server`'s (a cluster's
    /// other nodes).
    pub server_more: Vec<Proc>,
    /// Processes the system needs that are not measured (a cluster's Redis), held only so
    /// they live (and are killed) with it.
    pub _helpers: Vec<Proc>,
}

impl System {
    /// The processes to profile: the public side as "server", the private as "client".
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let server = self
            .server
            .as_ref()
            .and_then(Proc::pid)
            .map(|p| ("server", p));
        let client = self
            .client
            .as_ref()
            .and_then(Proc::pid)
            .map(|p| ("client", p));
        // A cluster's other nodes: the visitors' node is the first of them.
        let more = self
            .server_more
            .iter()
            .filter_map(Proc::pid)
            .zip(["server-n2", "server-n3", "server-n4"])
            .map(|(p, n)| (n, p));
        server.into_iter().chain(more).chain(client).collect()
    }

    /// The anonymous part of [`System::rss_kib`].
    pub fn anon_kib(&self) -> (Option<u64>, Option<u64>) {
        self.sides(Proc::anon_kib)
    }

    /// Resident memory of the public side (every process of it, summed) and of the private
    /// side, in KiB.
    pub fn rss_kib(&self) -> (Option<u64>, Option<u64>) {
        self.sides(Proc::rss_kib)
    }

    /// CPU time used so far by the public side (its processes summed) and by the private
    /// side, in clock ticks.
    pub fn cpu_ticks(&self) -> (Option<u64>, Option<u64>) {
        self.sides(Proc::cpu_ticks)
    }

    /// `figure` of the public side (its processes summed) and of the private side.
    fn sides(&self, figure: fn(&Proc) -> Option<u64>) -> (Option<u64>, Option<u64>) {
        let server = self
            .server
            .iter()
            .chain(&self.server_more)
            .filter_map(figure)
            .reduce(|a, b| a + b);
        (server, self.client.as_ref().and_then(figure))
    }
}

pub(crate) fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn direct(service: SocketAddr) -> System {
    System {
        name: "direct".into(),
        endpoint: crate::endpoint::Endpoint::Tcp(service),
        server: None,
        client: None,
        server_more: Vec::new(),
        _helpers: Vec::new(),
    }
}

/// Two chained relays (this program's `relay` subcommand): the floor of any tunnel.
pub async fn relays(service: SocketAddr, dir: &Path) -> Result<System> {
    let me = std::env::current_exe()?;
    let to = service.to_string();
    let mut first = Proc::spawn(
        &me,
        &["relay", "--to", &to],
        &dir.join("relay1.log"),
        "relay 1",
    )?;
    let a = first.line_with("listening").await?;
    let a = field(&a, "addr").ok_or_else(|| anyhow!("relay printed {a}"))?;
    let mut second = Proc::spawn(
        &me,
        &["relay", "--to", &a],
        &dir.join("relay2.log"),
        "relay 2",
    )?;
    let b = second.line_with("listening").await?;
    let b = field(&b, "addr").ok_or_else(|| anyhow!("relay printed {b}"))?;
    Ok(System {
        name: "two relays".into(),
        endpoint: crate::endpoint::Endpoint::Tcp(b.parse()?),
        server: Some(first),
        client: Some(second),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}

pub(crate) const TOKEN: &str = "bench-token-0123456789abcdef";

/// The transport a tunneld row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS, a yamux stream per visitor.
    Yamux,
    /// TLS, an HTTP/2 CONNECT stream per visitor (tunnelc serves HTTP/2).
    H2Reverse,
    /// Plain WebSocket (TLS belongs to a proxy in front), a conversation per visitor.
    Websocket,
}

impl Transport {
    pub fn row(self) -> &'static str {
        match self {
            Transport::Yamux => "tunneld yamux+tls",
            Transport::H2Reverse => "tunneld h2-reverse+tls",
            Transport::Websocket => "tunneld websocket",
        }
    }

    /// The transport's `type:`.
    pub fn kind(self) -> &'static str {
        match self {
            Transport::Yamux => "yamux",
            Transport::H2Reverse => "h2-reverse",
            Transport::Websocket => "websocket",
        }
    }

    /// Whether the row is compared with rathole's TLS transport (else its plain one).
    pub fn tls(self) -> bool {
        self != Transport::Websocket
    }

    /// tunneld's `edge` transport (and any frontend it needs), for `room` visitors at once
    /// (within the transport's own ceiling).
    fn server_side(self, room: usize) -> (String, &'static str) {
        match self {
            Transport::Yamux => (
                format!("edge: {{ type: yamux, listen: 127.0.0.1:0, yamux: {{ max_streams: {} }} }}", room.min(YAMUX_CEILING)),
                "",
            ),
            // Streams at once on the link (tunnelc says the same in its hello); tunneld lowers
            // the stream windows if needed so the connection window covers every one.
            Transport::H2Reverse => (
                format!(
                    "edge: {{ type: h2-reverse, listen: 127.0.0.1:0, h2: {{ max_concurrent_streams: {room} }} }}"
                ),
                "",
            ),
            Transport::Websocket => (
                format!("edge: {{ type: websocket, listen: 127.0.0.1:0, domain: localhost, frontend: web, max_conversations: {room} }}"),
                ", web: { type: https-subdomain, listen: 127.0.0.1:0, domain: localhost }",
            ),
        }
    }

    /// tunnelc's lines that reach `edge`.
    pub(crate) fn client_side(self, edge: &str, ca: &str) -> String {
        self.client_sized(edge, ca, ROW_STREAMS)
    }

    /// [`Transport::client_side`], taking `room` visitors at once (within yamux's ceiling).
    fn client_sized(self, edge: &str, ca: &str, room: usize) -> String {
        match self {
            Transport::Yamux => format!(
                "server: {edge}\nserver_name: localhost\ntls: {{ ca: {ca} }}\nyamux: {{ max_streams: {} }}\n",
                room.min(YAMUX_CEILING)
            ),
            Transport::H2Reverse => format!(
                "server: {edge}\nserver_name: localhost\ntransport: h2-reverse\ntls: {{ ca: {ca} }}\nh2: {{ max_streams: {room} }}\n"
            ),
            // The transport's own requests are told from visitors by Host: its domain.
            Transport::Websocket => {
                let port = edge.rsplit(':').next().unwrap_or_default();
                format!("server: http://localhost:{port}\ntransport: websocket\nmax_conversations: {room}\n")
            }
        }
    }
}

/// The most visitor streams one yamux session carries (`yamux.max_streams`' ceiling on
/// 64-bit builds).
pub(crate) const YAMUX_CEILING: usize = 16384;

/// Visitor streams at once the rows other than the crowd make room for.
const ROW_STREAMS: usize = 4096;

/// The `limits:` every tunneld row runs with: every benchmark visitor comes from 127.0.0.1.
pub(crate) const OPEN_LIMITS: &str = "limits: { max_connections_per_address: 65536, max_streams_per_tunnel: 65536, max_streams_per_address: 65536 }";

/// tunneld with token `bench` (`token_extra`: more keys of it) and `components` (its
/// `transports:` and `frontends:` lines), once ready: the process, the address of each
/// `listening <what>` line asked for (in the order tunneld prints them), and its CA file.
pub(crate) async fn start_tunneld(
    bins: &Path,
    dir: &Path,
    token_extra: &str,
    components: &str,
    listening: &[&str],
) -> Result<(Proc, Vec<String>, String)> {
    let conf = dir.join("tunneld.yaml");
    std::fs::write(
        &conf,
        format!(
            "state_dir: {state}\nlog: {{ level: warn }}\nauth: {{ tokens: {{ bench: {{ token: {TOKEN}{token_extra} }} }} }}\nadmin: {{ listen: 127.0.0.1:0 }}\n{OPEN_LIMITS}\n{components}",
            state = dir.join("state").display()
        ),
    )?;
    let c = conf.display().to_string();
    let mut server = Proc::spawn(
        &bins.join("tunneld"),
        &["--config", &c],
        &dir.join("tunneld.log"),
        "tunneld",
    )?;
    let mut addrs = Vec::new();
    for what in listening {
        let line = server.line_with(&format!("listening {what}")).await?;
        addrs.push(field(&line, "addr").ok_or_else(|| anyhow!("tunneld printed {line}"))?);
    }
    let trust = server.line_with("trust ").await?;
    let ca = field(&trust, "ca").ok_or_else(|| anyhow!("tunneld printed {trust}"))?;
    server.line_with("ready").await?;
    Ok((server, addrs, ca))
}

/// tunnelc with `yaml` (how to reach tunneld, and `tunnels:` with one named `bench`), once
/// that tunnel is up: the process and the line that says where.
pub(crate) async fn start_tunnelc(bins: &Path, dir: &Path, yaml: &str) -> Result<(Proc, String)> {
    start_tunnelc_until(bins, dir, yaml, "tunnel bench:").await
}

/// tunnelc with `yaml`, once it printed a line with `needle`.
pub(crate) async fn start_tunnelc_until(
    bins: &Path,
    dir: &Path,
    yaml: &str,
    needle: &str,
) -> Result<(Proc, String)> {
    let conf = dir.join("tunnelc.yaml");
    std::fs::write(
        &conf,
        format!("token: {TOKEN}\nlog: {{ level: warn }}\n{yaml}"),
    )?;
    let c = conf.display().to_string();
    let mut client = Proc::spawn(
        &bins.join("tunnelc"),
        &["--config", &c],
        &dir.join("tunnelc.log"),
        "tunnelc",
    )?;
    let line = client.line_with(needle).await?;
    Ok((client, line))
}

/// tunneld + tunnelc over `transport`, one tunnel on the ports frontend.
pub async fn tunneld(
    transport: Transport,
    bins: &Path,
    service: SocketAddr,
    dir: &Path,
) -> Result<System> {
    tunneld_sized(transport, ROW_STREAMS, bins, service, dir).await
}

/// [`tunneld`] with room for `room` visitors at once (the port's and the transport's caps).
pub async fn tunneld_sized(
    transport: Transport,
    room: usize,
    bins: &Path,
    service: SocketAddr,
    dir: &Path,
) -> Result<System> {
    let (edge_yaml, more_frontends) = transport.server_side(room);
    let components = format!("transports: {{ {edge_yaml} }}\nfrontends: {{ tcp: {{ type: ports, bind: 127.0.0.1, range: 12000-12999, max_connections_per_port: {room} }}{more_frontends} }}\n");
    let (server, addrs, ca) =
        start_tunneld(bins, dir, "", &components, &["transport=edge"]).await?;
    let yaml = format!(
        "{}tunnels:\n  bench:\n    local: {service}\n",
        transport.client_sized(&addrs[0], &ca, room)
    );
    let (client, line) = start_tunnelc(bins, dir, &yaml).await?;
    let ep = line
        .rsplit("tcp://")
        .next()
        .ok_or_else(|| anyhow!("tunnelc printed {line}"))?;
    Ok(System {
        name: transport.row().into(),
        endpoint: crate::endpoint::Endpoint::Tcp(ep.trim().parse()?),
        server: Some(server),
        client: Some(client),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}

/// A CA and a server certificate for `localhost`, as PEM files, plus the PKCS#12 bundle
/// rathole's TLS transport reads (made with openssl).
fn rathole_pki(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &issuer)?;
    let (ca_pem, cert_pem, key_pem, p12) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("identity.pfx"),
    );
    std::fs::write(&ca_pem, ca_cert.pem())?;
    std::fs::write(&cert_pem, cert.pem())?;
    std::fs::write(&key_pem, key.serialize_pem())?;
    let st = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:bench", "-out"])
        .arg(&p12)
        .arg("-inkey")
        .arg(&key_pem)
        .arg("-in")
        .arg(&cert_pem)
        .arg("-certfile")
        .arg(&ca_pem)
        .status()
        .context("openssl (needed for rathole's PKCS#12 file)")?;
    if !st.success() {
        bail!("openssl pkcs12 failed");
    }
    Ok((ca_pem, p12))
}

/// rathole server + client with the `tls` or `tcp` transport.
pub async fn rathole(bin: &Path, tls: bool, service: SocketAddr, dir: &Path) -> Result<System> {
    let (control, public) = (free_port()?, free_port()?);
    let (server_tls, client_tls) = if tls {
        let (ca, p12) = rathole_pki(dir)?;
        (
            format!(
                "[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"bench\"\n",
                p12.display()
            ),
            format!(
                "[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n",
                ca.display()
            ),
        )
    } else {
        (
            "[server.transport]\ntype = \"tcp\"\n".to_string(),
            "[client.transport]\ntype = \"tcp\"\n".to_string(),
        )
    };
    let server_toml = dir.join("rathole-server.toml");
    std::fs::write(
        &server_toml,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n{server_tls}[server.services.bench]\ntoken = \"{TOKEN}\"\nbind_addr = \"127.0.0.1:{public}\"\n"
        ),
    )?;
    let client_toml = dir.join("rathole-client.toml");
    std::fs::write(
        &client_toml,
        format!(
            "[client]\nremote_addr = \"localhost:{control}\"\n{client_tls}[client.services.bench]\ntoken = \"{TOKEN}\"\nlocal_addr = \"{service}\"\n"
        ),
    )?;
    let s = server_toml.display().to_string();
    let c = client_toml.display().to_string();
    let server = Proc::spawn(
        bin,
        &["--server", &s],
        &dir.join("rathole-server.log"),
        "rathole server",
    )?;
    let client = Proc::spawn(
        bin,
        &["--client", &c],
        &dir.join("rathole-client.log"),
        "rathole client",
    )?;
    let endpoint = crate::endpoint::Endpoint::Tcp(format!("127.0.0.1:{public}").parse()?);
    crate::load::wait_ready(&endpoint, START).await?;
    Ok(System {
        name: format!("rathole {}", if tls { "tls" } else { "tcp" }),
        endpoint,
        server: Some(server),
        client: Some(client),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}

/// bore server + `bore local` (plain TCP, no encryption).
pub async fn bore(bin: &Path, service: SocketAddr, dir: &Path) -> Result<System> {
    let public = free_port()?;
    let p = public.to_string();
    let server = Proc::spawn(
        bin,
        &[
            "server",
            "--min-port",
            &p,
            "--max-port",
            &p,
            "--bind-addr",
            "127.0.0.1",
            "--bind-tunnels",
            "127.0.0.1",
        ],
        &dir.join("bore-server.log"),
        "bore server",
    )?;
    let local_port = service.port().to_string();
    // bore's control port is fixed (7835); wait for it before starting the client.
    let deadline = tokio::time::Instant::now() + START;
    while tokio::net::TcpStream::connect("127.0.0.1:7835")
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            bail!("bore server did not listen on 127.0.0.1:7835");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Proc::spawn(
        bin,
        &[
            "local",
            &local_port,
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            &p,
        ],
        &dir.join("bore-local.log"),
        "bore local",
    )?;
    let endpoint = crate::endpoint::Endpoint::Tcp(format!("127.0.0.1:{public}").parse()?);
    crate::load::wait_ready(&endpoint, START).await?;
    Ok(System {
        name: "bore".into(),
        endpoint,
        server: Some(server),
        client: Some(client),
        server_more: Vec::new(),
        _helpers: Vec::new(),
    })
}
