//! The HTTPS rows: visitors speak TLS to the public side, with HTTP/1.1 and with HTTP/2
//! (`h2load` from Debian's nghttp2-client, keep-alive connections), and the public side
//! reaches the same local service: tunneld's https-subdomain frontend over h2-reverse and
//! over yamux, and the anchor, nginx terminating TLS with an upstream keep-alive pool (1
//! and 2 workers).

use crate::process::TICKS_PER_SEC;
use crate::systems::{start_tunnelc, start_tunneld, Proc};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name visitors ask for (SNI and Host); `--connect-to` takes them to the public side.
const HOST: &str = "bench.localhost";

#[derive(Debug, Clone, Serialize)]
pub struct HttpsRow {
    pub system: String,
    pub h1_req_s: f64,
    pub h1_mean_ms: f64,
    /// CPU time of the public side's processes (tunneld and tunnelc; nginx's master and
    /// workers) per request, in µs.
    pub h1_cpu_us: Option<f64>,
    /// `None` where the public side speaks HTTP/1.1 only.
    pub h2_req_s: Option<f64>,
    pub h2_mean_ms: Option<f64>,
    pub h2_cpu_us: Option<f64>,
}

/// One h2load run's figures: requests per second, mean time per request in ms, and the
/// public side's CPU time per request in µs.
pub struct Run {
    pub req_s: f64,
    pub mean_ms: f64,
    pub cpu_us: Option<f64>,
}

/// A public side under test: where visitors connect, and its processes (kept alive).
pub struct Public {
    pub name: String,
    pub addr: SocketAddr,
    procs: Vec<Proc>,
    /// nginx's master: stopped with SIGTERM so it takes its workers along (a SIGKILL
    /// would leave them holding the port).
    graceful: bool,
    /// `https`, or `http` for a plain port.
    scheme: &'static str,
    /// A header every request carries (the rendezvous visitors' credentials).
    header: Option<String>,
    /// Whether HTTP/2 visitors are measured too (TLS with ALPN h2).
    h2: bool,
    /// The websocket transport's own (plain HTTP) port, where visitors also come by Host.
    ws_port: Option<SocketAddr>,
}

impl Public {
    /// tunneld and tunnelc behind an HTTPS port that speaks HTTP/1.1 and HTTP/2.
    pub fn new(name: &str, addr: SocketAddr, procs: Vec<Proc>) -> Self {
        Self {
            name: name.to_string(),
            addr,
            procs,
            graceful: false,
            scheme: "https",
            header: None,
            h2: true,
            ws_port: None,
        }
    }

    /// HTTP/1.1 visitors only, each request with `header`.
    pub fn h1_with(mut self, header: String) -> Self {
        self.header = Some(header);
        self.h2 = false;
        self
    }

    /// Visited by Host on the websocket transport's own plain HTTP port instead.
    pub fn websocket_by_host(mut self) -> Result<Self> {
        self.addr = self.ws_port.context("not a websocket row")?;
        self.name = "tunneld websocket, its own port by Host (plain HTTP)".into();
        self.scheme = "http";
        self.h2 = false;
        Ok(self)
    }
}

impl Drop for Public {
    fn drop(&mut self) {
        if !self.graceful {
            return;
        }
        for p in &mut self.procs {
            if let Some(pid) = p.pid() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !p.exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Public {
    /// CPU time its processes (and their children) used so far, in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        self.procs
            .iter()
            .filter_map(Proc::cpu_ticks)
            .reduce(|a, b| a + b)
    }

    /// tunneld's rows: tunneld as "server", tunnelc as "client" (empty for nginx).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        if self.graceful {
            return Vec::new();
        }
        ["server", "client"]
            .into_iter()
            .zip(self.procs.iter().filter_map(Proc::pid))
            .collect()
    }
}

pub fn h2load_missing() -> Option<String> {
    let found = std::process::Command::new("h2load")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    (!found).then(|| {
        "https rows: h2load is not installed (apt-get install nghttp2-client); skipped".into()
    })
}

pub fn nginx_path() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// tunneld's https-subdomain frontend with one http tunnel `bench` over `transport`
/// (`h2-reverse`, on the frontend's shared port, `yamux` or `websocket`); `reuse`: the
/// tunnel's `reuse_connections` (kept-alive connections to the service, and over yamux and
/// websocket tunneld's kept-alive tunnel streams).
pub async fn tunneld(
    transport: &str,
    reuse: bool,
    bins: &Path,
    service: SocketAddr,
    dir: &Path,
) -> Result<Public> {
    // The edge transport: yamux, or websocket (plain, its own port; visitors still come
    // through the https frontend).
    let edge = match transport {
        "websocket" => "edge: { type: websocket, listen: 127.0.0.1:0, domain: localhost, frontend: web, max_conversations: 4096 }",
        _ => "edge: { type: yamux, listen: 127.0.0.1:0, yamux: { max_streams: 4096 } }",
    };
    // h2-reverse takes as many streams at once as yamux: idle kept-alive streams get half
    // the link's cap and one tunnel half of that, and HTTP/2 visitors keep 640 requests in
    // flight (with the default 1024, 256 kept streams: the others opened a stream and a
    // local connection for one request each).
    let components = format!("transports: {{ h2: {{ type: h2-reverse, h2: {{ max_concurrent_streams: 4096 }} }}, {edge} }}\nfrontends: {{ web: {{ type: https-subdomain, listen: 127.0.0.1:0, domain: localhost, transport: h2 }} }}\n");
    let (server, addrs, ca) = start_tunneld(
        bins,
        dir,
        "",
        &components,
        &["transport=edge", "frontend=web"],
    )
    .await?;
    let (edge, web) = (&addrs[0], &addrs[1]);
    let server_lines = match transport {
        "h2-reverse" => format!(
            "server: {web}\nserver_name: localhost\ntransport: h2-reverse\ntls: {{ ca: {ca} }}\n"
        ),
        "websocket" => {
            let port = edge.rsplit(':').next().unwrap_or_default();
            format!("server: http://localhost:{port}\ntransport: websocket\n")
        }
        _ => format!(
            "server: {edge}\nserver_name: localhost\ntransport: yamux\ntls: {{ ca: {ca} }}\n"
        ),
    };
    let yaml = format!(
        "{server_lines}tunnels:\n  bench:\n    type: http\n    local: {service}\n    subdomain: bench\n    reuse_connections: {reuse}\n"
    );
    let (client, _) = start_tunnelc(bins, dir, &yaml).await?;
    let name = format!(
        "tunneld https-subdomain over {transport}{}",
        if reuse {
            ""
        } else {
            ", reuse_connections: false"
        }
    );
    let mut public = Public::new(&name, web.parse()?, vec![server, client]);
    if transport == "websocket" {
        public.ws_port = Some(edge.parse()?);
    }
    Ok(public)
}

/// nginx with `workers` worker processes terminating TLS for `bench.localhost` and
/// proxying to `service` over a keep-alive upstream pool.
pub async fn nginx(
    nginx: &Path,
    workers: usize,
    service: SocketAddr,
    dir: &Path,
) -> Result<Public> {
    let (cert, key) = pki(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    for d in ["tmp", "logs"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  # As many requests per connection as tunneld allows (the default 1000 ends HTTP/2
  # connections mid-run with GOAWAY).
  keepalive_requests 10000000;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  # Idle upstream connections kept: tunneld's own per-tunnel pool (kept_streams::PER_TUNNEL).
  upstream service {{ server {service}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name {HOST};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://service;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"#,
        d = dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf)?;
    let (f, p) = (file.display().to_string(), dir.display().to_string());
    let proc = Proc::spawn(
        nginx,
        &["-p", &p, "-c", &f],
        &dir.join("nginx.stderr"),
        "nginx",
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "nginx did not start: {}{}",
                std::fs::read_to_string(dir.join("nginx.stderr")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = format!(
        "nginx, {workers} worker{} (TLS + keep-alive proxy)",
        if workers == 1 { "" } else { "s" }
    );
    let mut public = Public::new(&name, addr, vec![proc]);
    public.graceful = true;
    Ok(public)
}

/// A certificate for `bench.localhost` (nginx's; h2load does not verify).
fn pki(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![HOST.to_string()])?.self_signed(&key)?;
    let (c, k) = (dir.join("nginx.pem"), dir.join("nginx.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// h2load against `public` for `secs` with `conns` keep-alive connections (HTTP/2: 10
/// streams each): requests per second, mean time per request, and the CPU time per request.
pub async fn h2load(public: &Public, h2: bool, conns: usize, secs: f64, dir: &Path) -> Result<Run> {
    let url = format!("{}://{HOST}:{}/", public.scheme, public.addr.port());
    let connect = public.addr.to_string();
    let (c, d) = (
        conns.to_string(),
        format!("{}", secs.max(1.0).ceil() as u64),
    );
    let mut args = vec!["-c", &c, "-D", &d, "-t", "1", "--connect-to", &connect];
    if h2 {
        args.extend(["-m", "10"]);
    } else {
        args.push("--h1");
    }
    if let Some(h) = &public.header {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let cpu = public.cpu_ticks();
    let out = tokio::time::timeout(
        Duration::from_secs_f64(secs + 60.0),
        tokio::process::Command::new("h2load")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("h2load timed out")?
    .context("h2load")?;
    let spent = cpu
        .zip(public.cpu_ticks())
        .and_then(|(a, b)| b.checked_sub(a));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(
        dir.join(format!("h2load-{}.txt", if h2 { "h2" } else { "h1" })),
        &text,
    )?;
    let (req_s, mean_ms, done) =
        parse_h2load(&text).ok_or_else(|| anyhow!("h2load said:\n{text}"))?;
    Ok(Run {
        req_s,
        mean_ms,
        cpu_us: spent.map(|t| t as f64 * 1e6 / TICKS_PER_SEC / done as f64),
    })
}

/// (req/s, mean request time in ms, requests done) from h2load's summary, when every
/// request succeeded.
fn parse_h2load(text: &str) -> Option<(f64, f64, u64)> {
    let line = text.lines().find(|l| l.starts_with("requests:"))?;
    let num = |key: &str| -> Option<u64> {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(key).map(str::trim))
            .and_then(|n| n.split_whitespace().last()?.parse().ok())
    };
    let (done, ok) = (num("done")?, num("succeeded")?);
    if done == 0 || ok != done {
        return None;
    }
    let rps = text
        .lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" req/s")))?
        .trim()
        .parse()
        .ok()?;
    let mean = text
        .lines()
        .find(|l| l.starts_with("time for request:"))?
        .split_whitespace()
        .nth(5)
        .and_then(ms)?;
    Some((rps, mean, done))
}

/// h2load's duration (`1.23ms`, `456us`, `1.2s`) in ms.
fn ms(v: &str) -> Option<f64> {
    if let Some(n) = v.strip_suffix("us") {
        n.parse::<f64>().ok().map(|n| n / 1000.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        n.parse().ok()
    } else if let Some(n) = v.strip_suffix('s') {
        n.parse::<f64>().ok().map(|n| n * 1000.0)
    } else {
        None
    }
}

/// Both kinds of visitors against `public`.
pub async fn measure(public: &Public, conns: usize, secs: f64, dir: &Path) -> Result<HttpsRow> {
    let h1 = h2load(public, false, conns, secs, dir).await?;
    let h2 = if public.h2 {
        Some(h2load(public, true, conns, secs, dir).await?)
    } else {
        None
    };
    if h1.req_s <= 0.0 || h2.as_ref().is_some_and(|r| r.req_s <= 0.0) {
        bail!("{}: no request succeeded", public.name);
    }
    Ok(HttpsRow {
        system: public.name.clone(),
        h1_req_s: h1.req_s,
        h1_mean_ms: h1.mean_ms,
        h1_cpu_us: h1.cpu_us,
        h2_req_s: h2.as_ref().map(|r| r.req_s),
        h2_mean_ms: h2.as_ref().map(|r| r.mean_ms),
        h2_cpu_us: h2.and_then(|r| r.cpu_us),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_summary() {
        let text = "finished in 4.00s, 3712.25 req/s, 1.10MB/s\nrequests: 14849 total, 14849 started, 14849 done, 14849 succeeded, 0 failed, 0 errored, 0 timeout\n                     min         max         mean         sd        +/- sd\ntime for request:      295us     32.47ms      4.29ms      2.74ms    71.86%\n";
        let (rps, mean, done) = parse_h2load(text).expect("parsed");
        assert_eq!(done, 14849);
        assert!((rps - 3712.25).abs() < 0.01);
        assert!((mean - 4.29).abs() < 0.001);
        let failed = text.replace("14849 succeeded, 0 failed", "14000 succeeded, 849 failed");
        assert!(parse_h2load(&failed).is_none());
    }
}
