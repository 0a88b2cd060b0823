//! docs/grafana/tunneld.json: a well-formed dashboard, and every query of it answers data from
//! a real Prometheus that scraped a tunneld carrying traffic (tcp-ports, https-subdomain,
//! a refused visitor, a stream past its cap, per-tunnel series, a reload, an ACME certificate
//! from pebble).

use anyhow::{anyhow, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::pebble::{free_port, pebble_or_skip, PebblePlan};
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::prometheus::{prometheus_or_skip, Prometheus};
use tunneld_integration_tests::services::{echo, http_echo};
use tunneld_integration_tests::{endpoint_of, TestClient, TestServer, ALICE_TOKEN, WAIT};

fn repo_file(rel: &str) -> String {
    let path = format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (panel title, expression) of every query.
fn queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((title, expr.to_string()));
        }
    }
    out
}

/// The `tunneld_*` metric names an expression reads (histogram suffixes removed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tunneld_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_is_well_formed_and_documented() {
    let dash: Value =
        serde_json::from_str(&repo_file("docs/grafana/tunneld.json")).expect("valid JSON");
    assert_eq!(dash["title"], "tunneld");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id repeats"
        );
        let g = &p["gridPos"];
        let w = g["w"].as_u64().expect("gridPos.w");
        let x = g["x"].as_u64().expect("gridPos.x");
        assert!(x + w <= 24, "{title}: wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let refs: BTreeSet<&str> = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t["refId"].as_str().expect("refId"))
            .collect();
        assert!(!refs.is_empty(), "{title}: no query");
    }
    let doc = repo_file("docs/metrics.md");
    let qs = queries(&dash);
    assert!(qs.len() >= 15, "{} queries", qs.len());
    for (title, expr) in &qs {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "{title}: `{expr}` ignores the instance variable"
        );
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{title}: `{expr}` reads no tunneld metric"
        );
        for n in names {
            assert!(
                doc.contains(&format!("`{n}`")),
                "{title}: {n} is not in docs/metrics.md"
            );
        }
    }
}

/// One echo round trip on a new connection.
async fn echo_once(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"hi").await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await??;
    if out != b"hi" {
        return Err(anyhow!("echo answered {out:?}"));
    }
    Ok(())
}

/// A visitor of a tunnel whose service refuses: closed without an answer.
async fn refused_once(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_answers_from_a_live_scrape() -> Result<()> {
    let test = "every_dashboard_query_answers_from_a_live_scrape";
    if !prometheus_or_skip(test) || !pebble_or_skip(test) {
        return Ok(());
    }
    let dash: Value = serde_json::from_str(&repo_file("docs/grafana/tunneld.json"))?;
    // A second https frontend whose apex certificate comes from pebble (TLS-ALPN-01).
    let plan = PebblePlan::new()?;
    let certs = format!(
        "  certs:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: certs.test\n    acme:\n      directory: {}\n      ca: {}\n      challenges: [tls-alpn-01]\n      retry_after: 1s\n",
        plan.directory,
        plan.wfe_ca.display()
    );
    let s = TestServer::start_web_with(
        &certs,
        &[
            "admin.per_tunnel_metrics=true",
            "limits.max_streams_per_tunnel=1",
        ],
    )
    .await?;
    let _pebble = plan
        .start(free_port()?, s.running.frontends["certs"].port(), None)
        .await?;
    let local = echo().await;
    let web_local = http_echo("served").await;
    let closed = free_port()?;
    let tunnels = format!(
        "  up:\n    local: \"{local}\"\n  down:\n    local: \"127.0.0.1:{closed}\"\n  app:\n    type: http\n    local: \"{web_local}\"\n    subdomain: app\n    frontend: web\n"
    );
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &tunnels)?);
    let up = alice.connected().await?;

    // Traffic before the first scrape, so each series is there in every sample.
    echo_once(endpoint_of(&up, "up")?.port()).await?;
    refused_once(endpoint_of(&up, "down")?.port()).await?;
    // One stream open through `up` (its cap is one): the next visitor is refused.
    let up_port = endpoint_of(&up, "up")?.port();
    let mut held = TcpStream::connect(("127.0.0.1", up_port)).await?;
    tunneld_integration_tests::services::echo_message(&mut held, b"held").await?;
    refused_once(up_port).await?;
    drop(held);
    let port = s.web().port();
    let ca = s.ca_file().display().to_string();
    let (st, body) = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &format!("app.localhost:{port}:127.0.0.1"),
        &format!("https://app.localhost:{port}/"),
    ])
    .await?;
    assert!(st.success() && body.contains("served"), "{body}");
    // No --config file in process: the reload is refused, and counted.
    let (code, _) = s.admin_call("POST", "/reload", None).await;
    assert_ne!(code, 200);
    s.metrics_when(
        "tunneld_stream_open_failures_total",
        &[("reason", "local_refused")],
        1.0,
    )
    .await;
    let issued = [("frontend", "certs"), ("result", "issued")];
    let m = s
        .metrics_when("tunneld_acme_orders_total", &issued, 1.0)
        .await;
    assert_eq!(
        m.get("tunneld_acme_orders_total", &issued),
        1.0,
        "no certificate from pebble"
    );

    let prom = Prometheus::start(s.admin()).await?;
    prom.scraped(3).await?;
    let mut empty = Vec::new();
    for (title, expr) in queries(&dash) {
        // Grafana's variables as Grafana would expand them for one instance.
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let result = prom
            .query(&e)
            .await
            .map_err(|err| anyhow!("panel {title:?}: {err}"))?;
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    alice.shutdown().await
}
