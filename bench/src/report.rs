//! The results: one row per system, printed as a markdown table and written as JSON.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    /// Whether the system encrypts (rows are compared with rathole of the same kind).
    pub tls: bool,
    pub throughput_gbit_s: f64,
    /// CPU time of both sides together per GiB carried in the throughput runs, in ms
    /// (`None` for the direct row): what a figure costs, which a shared machine's noise
    /// moves far less than the rate itself.
    pub cpu_ms_per_gib: Option<f64>,
    /// The same bytes the other way: the visitor reads them from the service.
    pub download_gbit_s: f64,
    /// CPU time of both sides together per GiB of the download runs, in ms.
    pub download_cpu_ms_per_gib: Option<f64>,
    pub http_req_s: f64,
    /// CPU time of both sides together per HTTP request of the load runs, in µs.
    pub cpu_us_per_req: Option<f64>,
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    /// Resident memory of the public side / the private side, idle, in MiB.
    pub rss_idle_server_mib: Option<f64>,
    pub rss_idle_client_mib: Option<f64>,
    /// The anonymous part of the idle figures (heap and stacks, without file-mapped pages
    /// of the program itself).
    pub anon_idle_server_mib: Option<f64>,
    pub anon_idle_client_mib: Option<f64>,
    /// Both sides together at the peak of the HTTP load, in MiB.
    pub rss_loaded_mib: Option<f64>,
    /// The public side / the private side holding `idle_conns` idle visitor connections,
    /// in MiB.
    pub rss_conns_server_mib: Option<f64>,
    pub rss_conns_client_mib: Option<f64>,
    /// The public side / the private side once those connections are closed and memory
    /// has settled (what the allocator gave back), in MiB.
    pub rss_closed_server_mib: Option<f64>,
    pub rss_closed_client_mib: Option<f64>,
    pub idle_conns: usize,
    /// Growth of both sides per idle visitor connection, in KiB.
    pub per_conn_kib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub settings: String,
    pub rows: Vec<Row>,
    /// HTTPS visitors (h2load): tunneld's https-subdomain frontend beside nginx.
    pub https: Vec<crate::https::HttpsRow>,
    /// Many idle visitors through one tunnelc, per transport.
    pub crowd: Vec<crate::crowd::CrowdRow>,
    /// The targeted ratios, measured by turns.
    pub pairs: Vec<crate::pairs::PairRow>,
    pub notes: Vec<String>,
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn mib(v: Option<f64>) -> String {
    figure(v, 1)
}

/// `v` with `decimals` places, or a dash.
fn figure(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    fn find(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.system == name)
    }

    pub fn markdown(&self) -> String {
        let direct = self.find("direct");
        let mut out = format!(
            "Machine: {}\n\nSettings: {}\n\n| system | throughput Gbit/s | × direct | × rathole | CPU ms/GiB | download Gbit/s | × rathole | CPU ms/GiB | HTTP req/s | × direct | × rathole | CPU µs/req | p50 ms | p99 ms | setup p50 ms | setup p99 ms | RSS idle server / client MiB | of it anon server / client MiB | RSS under load MiB | RSS with idle conns server / client MiB | RSS after they close MiB | KiB per idle conn |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            self.machine, self.settings
        );
        for r in &self.rows {
            let peer = self.find(if r.tls { "rathole tls" } else { "rathole tcp" });
            out.push_str(&format!(
                "| {} | {:.2} | {} | {} | {} | {:.2} | {} | {} | {:.0} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} / {} | {} / {} | {} | {} / {} | {} / {} | {} |\n",
                r.system,
                r.throughput_gbit_s,
                ratio(r.throughput_gbit_s, direct.map(|d| d.throughput_gbit_s)),
                ratio(r.throughput_gbit_s, peer.map(|p| p.throughput_gbit_s)),
                figure(r.cpu_ms_per_gib, 0),
                r.download_gbit_s,
                ratio(r.download_gbit_s, peer.map(|p| p.download_gbit_s)),
                figure(r.download_cpu_ms_per_gib, 0),
                r.http_req_s,
                ratio(r.http_req_s, direct.map(|d| d.http_req_s)),
                ratio(r.http_req_s, peer.map(|p| p.http_req_s)),
                figure(r.cpu_us_per_req, 1),
                r.http_p50_ms,
                r.http_p99_ms,
                r.setup_p50_ms,
                r.setup_p99_ms,
                mib(r.rss_idle_server_mib),
                mib(r.rss_idle_client_mib),
                mib(r.anon_idle_server_mib),
                mib(r.anon_idle_client_mib),
                mib(r.rss_loaded_mib),
                mib(r.rss_conns_server_mib),
                mib(r.rss_conns_client_mib),
                mib(r.rss_closed_server_mib),
                mib(r.rss_closed_client_mib),
                figure(r.per_conn_kib, 1),
            ));
        }
        if !self.https.is_empty() {
            let nginx = self
                .https
                .iter()
                .find(|r| r.system.starts_with("nginx, 1 worker"));
            out.push_str("\nHTTPS visitors (h2load, keep-alive; HTTP/2 with 10 streams per connection), same service:\n\n| system | HTTP/1.1 req/s | × nginx 1 worker | mean ms | CPU µs/req | HTTP/2 req/s | × nginx 1 worker | mean ms | CPU µs/req |\n|---|---|---|---|---|---|---|---|---|\n");
            for r in &self.https {
                // Rows that speak HTTP/1.1 only show a dash for HTTP/2.
                let h2 = match (r.h2_req_s, r.h2_mean_ms) {
                    (Some(req), Some(mean)) => format!(
                        "{req:.0} | {} | {mean:.3} | {}",
                        ratio(req, nginx.and_then(|n| n.h2_req_s)),
                        figure(r.h2_cpu_us, 1),
                    ),
                    _ => "– | – | – | –".into(),
                };
                out.push_str(&format!(
                    "| {} | {:.0} | {} | {:.3} | {} | {h2} |\n",
                    r.system,
                    r.h1_req_s,
                    ratio(r.h1_req_s, nginx.map(|n| n.h1_req_s)),
                    r.h1_mean_ms,
                    figure(r.h1_cpu_us, 1),
                ));
            }
        }
        if !self.crowd.is_empty() {
            out.push_str(&crate::crowd::markdown(&self.crowd));
        }
        if !self.pairs.is_empty() {
            out.push_str(&crate::pairs::markdown(&self.pairs));
        }
        for n in &self.notes {
            out.push_str(&format!("\n- {n}"));
        }
        out.push('\n');
        out
    }
}
