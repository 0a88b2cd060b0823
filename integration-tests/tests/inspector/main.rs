//! tunnelc's request inspector (`--inspect`): a real tunnelc (yamux, h2-reverse) and curl
//! visitors through tunneld's https frontend. It records, replays (as it was and edited),
//! refuses cross-site forms and foreign Hosts, keeps a flooded tunnel's neighbour apart, and
//! headless Chromium drives its pages (keyboard, live list, replay, 390 px wide).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;
use tunneld_integration_tests::browser::{Browser, ENTER, TAB};
use tunneld_integration_tests::process::{curl, Proc};
use tunneld_integration_tests::services::{self, RequestLog};
use tunneld_integration_tests::{port_block, temp_dir, TestServer, ALICE_TOKEN};

mod browser;

const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    server: TestServer,
    tunnelc: Proc,
    log: RequestLog,
    /// The tunnel's public URL, `https://insp.localhost:PORT`.
    url: String,
    inspector: SocketAddr,
}

/// tunneld (https frontend), a logged service, tunnelc over `transport` plus `extra` YAML.
async fn setup(transport: &str, extra: &str) -> Result<Setup> {
    let server = TestServer::start_web("").await?;
    let (local, log) = services::http_logged().await;
    let server_addr = match transport {
        "h2-reverse" => server.web(),
        _ => server.transport(),
    };
    let yaml = format!(
        "server: {server_addr}\nserver_name: localhost\ntransport: {transport}\ntoken: {ALICE_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\ntunnels:\n  site: {{ type: http, local: \"{local}\", subdomain: insp }}\n{extra}",
        server.ca_file().display(),
        extra = extra.replace("{local}", &local.to_string()),
    );
    let dir = temp_dir("inspector");
    let file = dir.join("client.yaml");
    std::fs::write(&file, yaml)?;
    let inspector: SocketAddr = format!("127.0.0.1:{}", port_block().0).parse()?;
    let addr = inspector.to_string();
    let file = file.to_string_lossy().into_owned();
    let args = ["--config", file.as_str(), "--inspect", addr.as_str()];
    let mut tunnelc = Proc::spawn("tunnelc", &args, dir.join("tunnelc.err"))?;
    let line = tunnelc.line_starting("tunnel site").await?;
    let url = line
        .split_whitespace()
        .last()
        .context("endpoint")?
        .to_string();
    let shown = tunnelc.line_starting("inspector:").await?;
    assert_eq!(shown, format!("inspector: http://{inspector}"));
    Ok(Setup {
        server,
        tunnelc,
        log,
        url,
        inspector,
    })
}

impl Setup {
    /// A visitor's request through the public URL with curl; its body.
    async fn visit(&self, path: &str, args: &[&str]) -> Result<String> {
        self.visit_name("insp", path, args).await
    }

    /// [`Setup::visit`] to the tunnel with subdomain `name`.
    async fn visit_name(&self, name: &str, path: &str, args: &[&str]) -> Result<String> {
        let port = self.url.rsplit(':').next().context("port")?;
        let resolve = format!("{name}.localhost:{port}:127.0.0.1");
        let ca = self.server.ca_file().to_string_lossy().into_owned();
        let url = format!("https://{name}.localhost:{port}{path}");
        let mut all = vec!["--cacert", &ca, "--resolve", &resolve, "--fail"];
        all.extend_from_slice(args);
        all.push(&url);
        let (status, body) = curl(&all).await?;
        if !status.success() {
            bail!("curl {path}: {status}");
        }
        Ok(body)
    }

    fn received(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

/// One HTTP/1.1 request to the inspector: (status, head, body).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tunneld_integration_tests::raw_http::exchange(addr, &req).await
}

async fn api(addr: SocketAddr, path: &str) -> Result<Value> {
    let (status, _, body) = call(addr, "GET", path, &[], "").await?;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Polls the API until `ok` holds for the request list.
async fn requests_when(addr: SocketAddr, ok: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = api(addr, "/api/requests").await?;
        let list = v["requests"].as_array().cloned().unwrap_or_default();
        if ok(&list) {
            return Ok(list);
        }
        if Instant::now() > deadline {
            bail!("the inspector's list never matched: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The inspector's form token, from its list page.
async fn csrf(addr: SocketAddr) -> Result<String> {
    let (_, _, page) = call(addr, "GET", "/", &[], "").await?;
    let at = page
        .find("name=\"csrf\" value=\"")
        .context("a csrf field")?
        + 19;
    Ok(page[at..at + 32].to_string())
}

fn location(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .map(str::to_string)
}

async fn records_and_replays(transport: &str) -> Result<()> {
    let s = setup(transport, "").await?;
    let body = s
        .visit(
            "/hook?x=1",
            &[
                "-H",
                "Authorization: Bearer s3cret",
                "-H",
                "Content-Type: application/json",
                "--data",
                "{\"a\":1}",
            ],
        )
        .await?;
    assert!(body.contains("hello /hook?x=1"), "{body}");
    let list = requests_when(s.inspector, |l| {
        l.len() == 1 && l[0]["outcome"] == "complete"
    })
    .await?;
    let first = &list[0];
    assert_eq!(
        (first["method"].as_str(), first["target"].as_str()),
        (Some("POST"), Some("/hook?x=1"))
    );
    assert_eq!(first["status"], 200);
    let auth = first["request_headers"]
        .as_array()
        .and_then(|h| {
            h.iter().find(|p| {
                p[0].as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
            })
        })
        .with_context(|| format!("an Authorization header in {first}"))?;
    assert_eq!(
        auth[1], "•••••• (13 bytes, masked)",
        "secrets are masked in the list"
    );
    let id = first["id"].as_u64().context("id")?;
    let whole = api(s.inspector, &format!("/api/requests/{id}")).await?;
    assert_eq!(whole["request_body"], "{\"a\":1}");
    assert!(whole["response"]["body"]
        .as_str()
        .is_some_and(|b| b.contains("hello /hook?x=1")));

    // Replay as it was: the service receives the request a second time.
    let token = csrf(s.inspector).await?;
    let (status, head, _) = call(
        s.inspector,
        "POST",
        &format!("/requests/{id}/replay"),
        &[],
        &format!("csrf={token}"),
    )
    .await?;
    assert_eq!(status, 303, "{head}");
    let new = location(&head).context("a Location")?;
    assert_eq!(s.received(), ["POST /hook?x=1", "POST /hook?x=1"]);
    let replayed = api(s.inspector, &format!("/api{new}")).await?;
    assert_eq!(
        (replayed["replay_of"].as_u64(), replayed["status"].as_u64()),
        (Some(id), Some(200))
    );
    let (_, _, page) = call(s.inspector, "GET", &new, &[], "").await?;
    assert!(
        page.contains("Replay of") && page.contains("id=\"original-status\""),
        "the original beside the replay"
    );

    // Edited: another method, path, header and body.
    let form = format!("csrf={token}&edited=1&method=PUT&target=%2Fedited&headers=Host%3A+insp.localhost%0D%0AX-Edit%3A+yes&body=changed");
    let (status, head, _) = call(
        s.inspector,
        "POST",
        &format!("/requests/{id}/replay"),
        &[],
        &form,
    )
    .await?;
    assert_eq!(status, 303, "{head}");
    let edited = api(
        s.inspector,
        &format!("/api{}", location(&head).context("Location")?),
    )
    .await?;
    assert!(
        edited["response"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("body=7")),
        "{edited}"
    );
    assert_eq!(s.received().last().map(String::as_str), Some("PUT /edited"));

    // Refused: no token, another site's form, a foreign Host (DNS rebinding), a bad edit.
    let path = format!("/requests/{id}/replay");
    let (status, _, _) = call(s.inspector, "POST", &path, &[], "").await?;
    assert_eq!(status, 403);
    let evil = [("Origin", "http://evil.example")];
    let (status, _, _) = call(s.inspector, "POST", &path, &evil, &format!("csrf={token}")).await?;
    assert_eq!(status, 403);
    let rebound = [("Host", "evil.example:4040")];
    let (status, _, _) = call(s.inspector, "GET", "/api/requests", &rebound, "").await?;
    assert_eq!(status, 421);
    let bad = format!("csrf={token}&edited=1&method=GE+T&target=%2F&headers=&body=");
    let (status, _, page) = call(s.inspector, "POST", &path, &[], &bad).await?;
    assert_eq!(status, 400);
    assert!(page.contains("is not an HTTP method token"), "{page}");
    assert_eq!(s.received().len(), 3, "refused forms reach nothing");

    // A body over the cap reaches the service whole; the record keeps its first bytes.
    let big = temp_dir("inspector-big").join("body");
    let data = tunneld_integration_tests::pattern(3 << 20, 7);
    std::fs::write(&big, &data)?;
    let at = format!("@{}", big.display());
    let body = s.visit("/big", &["--data-binary", &at]).await?;
    let sha = tunneld_integration_tests::sha256_hex(&data);
    assert!(body.contains(&format!("sha256={sha}")), "{body}");
    let list = requests_when(s.inspector, |l| {
        l.first()
            .is_some_and(|e| e["target"] == "/big" && e["outcome"] == "complete")
    })
    .await?;
    let whole = api(s.inspector, &format!("/api/requests/{}", list[0]["id"])).await?;
    assert_eq!(whole["request_body_truncated"], true);
    drop(s.tunnelc);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_replays_over_yamux() {
    records_and_replays("yamux").await.expect("yamux");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_replays_over_h2_reverse() {
    records_and_replays("h2-reverse").await.expect("h2-reverse");
}

/// A flooded tunnel's neighbour on the same tunnelc and local service (one h2-reverse pool)
/// keeps answering; each request records under its own tunnel, within the memory cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_tunnel_leaves_its_neighbour_answering_and_recorded_apart() {
    const MAX_MEMORY: u64 = 262_144;
    let extra = "  other: { type: http, local: \"{local}\", subdomain: other }\ninspect: { max_requests: 1000, max_body: 4096, max_memory: 262144 }\n";
    let s = setup("h2-reverse", extra).await.expect("setup");
    let big = temp_dir("inspector-flood").join("body");
    std::fs::write(&big, tunneld_integration_tests::pattern(64 << 10, 3)).expect("body");
    let at = format!("@{}", big.display());
    // 300 uploads of 64 KiB to `site`, 50 at a time, in one curl.
    let flood_args = ["--parallel", "--parallel-max", "50", "--data-binary", &at];
    let flood = s.visit("/flood[1-300]", &flood_args);
    let neighbour = async {
        for i in 0..20 {
            let body = s.visit_name("other", &format!("/n{i}"), &[]).await?;
            anyhow::ensure!(body.contains(&format!("hello /n{i}")), "{body}");
        }
        anyhow::Ok(())
    };
    let (flood, neighbour) = tokio::join!(flood, neighbour);
    flood.expect("the flooded tunnel answers too");
    neighbour.expect("the neighbour keeps answering");
    let received = s.received();
    assert_eq!(
        received
            .iter()
            .filter(|r| r.starts_with("POST /flood"))
            .count(),
        300
    );
    assert_eq!(
        received.iter().filter(|r| r.starts_with("GET /n")).count(),
        20
    );
    let v = api(s.inspector, "/api/requests").await.expect("api");
    let list = v["requests"].as_array().cloned().unwrap_or_default();
    for e in &list {
        let target = e["target"].as_str().unwrap_or_default();
        let want = if target.starts_with("/n") {
            "other"
        } else {
            "site"
        };
        assert_eq!(e["tunnel"], want, "{e}");
    }
    assert!(
        v["bytes"].as_u64().is_some_and(|b| b <= MAX_MEMORY),
        "{}",
        v["bytes"]
    );
    let seen = v["kept"].as_u64().unwrap_or(0) + v["dropped"].as_u64().unwrap_or(0);
    assert_eq!(seen, 320, "every request recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_keep_the_newest_requests() {
    let s = setup(
        "yamux",
        "inspect: { max_requests: 3, max_body: 1024, max_memory: 65536 }",
    )
    .await
    .expect("setup");
    for i in 0..5 {
        s.visit(&format!("/n{i}"), &[]).await.expect("visit");
    }
    let list = requests_when(s.inspector, |l| {
        l.first()
            .is_some_and(|e| e["target"] == "/n4" && e["outcome"] == "complete")
    })
    .await
    .expect("list");
    let targets: Vec<&str> = list.iter().filter_map(|e| e["target"].as_str()).collect();
    assert_eq!(targets, ["/n4", "/n3", "/n2"]);
    let v = api(s.inspector, "/api/requests").await.expect("api");
    assert_eq!(v["dropped"], 2);
}
