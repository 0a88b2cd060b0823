//! Debian's Prometheus server on loopback, scraping tunneld's `/metrics` every second, and
//! queried through its HTTP API with curl, as Grafana queries it.

use crate::pebble::free_port;
use crate::process::{curl, Proc};
use crate::{temp_dir, WAIT};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// Whether `prometheus` is installed; when not, the test is skipped with a note, or fails
/// under CI (`CI=true`), where scripts/test installs it.
pub fn prometheus_or_skip(test: &str) -> bool {
    crate::process::tool_or_skip(
        "prometheus",
        "--version",
        "apt-get install prometheus",
        test,
    )
}

/// A running Prometheus (killed on drop).
pub struct Prometheus {
    proc: Proc,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (an admin address) every second and waits until
    /// it answers ready.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: tunneld\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::spawn_program(
            std::path::Path::new("prometheus"),
            &args,
            dir.join("prometheus.err"),
        )?;
        let p = Self { proc, addr };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let url = format!("http://{addr}/-/ready");
            if let Ok((st, body)) = curl(&["-sf", &url]).await {
                if st.success() && body.contains("Ready") {
                    return Ok(p);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "prometheus on {addr} not ready in time: {}",
                    p.proc.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query; answers the result vector (an error carries Prometheus' own message,
    /// such as a PromQL parse error).
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let q = format!("query={expr}");
        let (_, body) = curl(&["-s", "--get", "--data-urlencode", &q, &url]).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("answer to {expr}: {body}"))?;
        if v["status"] != "success" {
            return Err(anyhow!("{expr}: {} {}", v["errorType"], v["error"]));
        }
        v["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("{expr}: no result vector in {body}"))
    }

    /// Waits until Prometheus holds at least `n` successful scrapes of the target.
    pub async fn scraped(&self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.query("sum_over_time(up[1m])").await?;
            let got = r
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if got >= n as f64 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("prometheus scraped tunneld {got} times, wanted {n}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
