//! The admin API against its OpenAPI document (docs/openapi/admin.yaml), checked by a real
//! third-party client: schemathesis loads the document tunneld serves at `/openapi.yaml`
//! and fuzzes every operation with `--checks all` (status codes, content types, response
//! schemas, auth, methods). Plus the regressions it and its review found: media types
//! compare without case, and two spellings of one port are one port.

use std::time::Duration;
use tokio::process::Command;
use tunneld_integration_tests::process::tool_or_skip;
use tunneld_integration_tests::TestServer;

const TOKEN: &str = "admin-token-for-openapi-0123456789";

/// A server with an admin token that reloads from its own file (so `POST /reload` works).
async fn server() -> TestServer {
    let sets = vec![
        format!("admin.token={TOKEN}"),
        // schemathesis sends wrong tokens on purpose; the throttle would then answer 429
        // to its correct ones too (as documented), hiding every other answer.
        "limits.max_auth_failures=1000000".into(),
    ];
    let s = TestServer::start_full("", &sets).await.expect("server");
    s.running
        .reloader
        .set_source(Some(tunneld_daemon::reload::Source {
            file: s.dir.join("server.yaml"),
            sets,
        }));
    s
}

/// curl against the admin API with the token: (status, body).
async fn call(s: &TestServer, args: &[&str], path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", s.admin());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let mut all = vec!["-H", auth.as_str(), "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    all.push(&url);
    let (_, out) = tunneld_integration_tests::process::curl(&all)
        .await
        .expect("curl");
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_api_as_documented() {
    let test = "schemathesis_finds_the_api_as_documented";
    if !tool_or_skip(
        "schemathesis",
        "--version",
        "pip install schemathesis",
        test,
    ) {
        return;
    }
    let s = server().await;
    // The document served is the one in the repository, and needs no token.
    let url = format!("http://{}/openapi.yaml", s.admin());
    let (st, served) = tunneld_integration_tests::process::curl(&["--fail", &url])
        .await
        .expect("curl");
    assert!(st.success(), "GET /openapi.yaml: {st}");
    let repo = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/admin.yaml"),
    )
    .expect("docs/openapi/admin.yaml");
    assert_eq!(served, repo, "tunneld serves another document");

    let base = format!("http://{}", s.admin());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let run = Command::new("schemathesis")
        .args(["run", &url, "--url", &base, "-H", &auth])
        .args([
            "--checks",
            "all",
            "--max-time",
            "25",
            "--request-timeout",
            "10",
        ])
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("schemathesis ends within its time budget")
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(text.contains("No issues found"), "{text}");
    // It exercised every operation of the document.
    let counts = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Operations:"))
        .map(|c| c.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(
        counts.len() >= 4 && counts[0] == counts[3] && counts[0] != "0",
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_ignore_case_and_one_port_has_one_spelling() {
    let s = server().await;
    let (code, body) = call(
        &s,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: Application/JSON",
            "--data-binary",
            "[]",
        ],
        "/tunnels",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(
        &s,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "[]",
        ],
        "/tunnels",
    )
    .await;
    assert_eq!(code, 415, "{body}");

    // One port, spelled with and without its (default) frontend and address: one port
    // with two routes, not a conflict with itself.
    let mut alice = tunneld_integration_tests::TestClient::spawn(
        s.client_config_with(
            tunneld_integration_tests::ALICE_TOKEN,
            "  svc:\n    local: 127.0.0.1:9\n",
            &["accept_server_mappings=true".into()],
        )
        .expect("cfg"),
    );
    alice.connected().await.expect("alice");
    let p = s.range.0 + 5;
    let two = format!(
        r#"[{{"client":"alice","listen_port":{p},"target":"127.0.0.1:9"}},
            {{"client":"alice","listen_port":{p},"target":"127.0.0.1:9","frontend":"tcp","listen_address":"127.0.0.1","hostname_glob":"*.x.test"}}]"#
    );
    let (code, body) = call(
        &s,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &two,
        ],
        "/tunnels",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["mappings"].as_array().map(Vec::len), Some(2), "{body}");
    let (code, body) = call(&s, &[], "/tunnels").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ports: Vec<&serde_json::Value> = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["tunnel"] == format!("mapping-{p}"))
        .collect();
    assert_eq!(ports.len(), 1, "{body}");
    assert_eq!(ports[0]["owner"], "alice", "each client once: {body}");
    alice.shutdown().await.expect("alice stops");
}
