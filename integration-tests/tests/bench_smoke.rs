//! The benchmark runner in smoke mode (tiny sizes), so it never rots: it must start every
//! system it knows without peers (tunneld over yamux, h2-reverse and websocket to ports,
//! CONNECT through the rendezvous frontend to a named tunnel and to a parked connection),
//! measure each, hold a crowd of idle visitors through one tunnelc per multiplexing
//! transport, measure the targeted ratios by turns (alternated pairs, and the transports to
//! ports against each other), and write a table and a JSON file. The
//! `tunneld ssh (OpenSSH -R)` row needs the OpenSSH client: without it the runner leaves the
//! row out with a note (and under CI, which installs it, the test fails).

use tunneld_integration_tests::process::{binary, tool_or_skip};
use tunneld_integration_tests::ssh::peer_or_skip;
use tunneld_integration_tests::temp_dir;

#[test]
fn bench_runner_smoke_mode_measures_every_system() {
    let ssh = peer_or_skip("ssh", "bench_smoke's ssh row")
        && peer_or_skip("ssh-keygen", "bench_smoke's ssh row");
    let h2load = tool_or_skip(
        "h2load",
        "--version",
        "apt-get install nghttp2-client",
        "bench_smoke's https rows",
    );
    let out = temp_dir("bench");
    let run = std::process::Command::new(binary("tunneld-bench").expect("runner"))
        .args(["--smoke", "--no-peers", "--out"])
        .arg(&out)
        .output()
        .expect("run the runner");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("| tunneld yamux+tls |"), "{table}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("json");
    let rows = json["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["system"].as_str()).collect();
    let mut expected = vec![
        "direct",
        "two relays",
        "tunneld yamux+tls",
        "tunneld h2-reverse+tls",
        "tunneld websocket",
        "tunneld rendezvous CONNECT <tunnel> (yamux+tls)",
        "tunneld rendezvous CONNECT <id> (connect, parked)",
    ];
    // The cluster row (two nodes sharing a redis-server) when Redis is installed.
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if redis {
        expected.push("tunneld yamux+tls, 2-node cluster (visitor at n2)");
    } else {
        assert!(table.contains("`redis-server` is not installed"), "{table}");
    }
    if ssh {
        expected.push("tunneld ssh (OpenSSH -R)");
    } else {
        assert!(
            table.contains("(OpenSSH client) is not installed"),
            "{table}"
        );
    }
    assert_eq!(names, expected);
    for r in rows {
        for key in [
            "throughput_gbit_s",
            "download_gbit_s",
            "http_req_s",
            "http_p50_ms",
            "setup_p50_ms",
        ] {
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
        }
    }
    // What each figure cost, both sides' CPU time: none for the direct row. (The smoke
    // mode's 4 MiB may cost less than one clock tick, so only the HTTP figure must be
    // above zero.)
    assert!(rows[0]["cpu_ms_per_gib"].is_null(), "{}", rows[0]);
    assert!(rows[0]["download_cpu_ms_per_gib"].is_null(), "{}", rows[0]);
    for r in &rows[1..] {
        for key in ["cpu_ms_per_gib", "download_cpu_ms_per_gib"] {
            assert!(r[key].as_f64().is_some_and(|v| v >= 0.0), "{key} in {r}");
        }
        assert!(
            r["cpu_us_per_req"].as_f64().is_some_and(|v| v > 0.0),
            "cpu_us_per_req in {r}"
        );
    }
    for tunneld in &rows[2..] {
        for key in [
            "rss_idle_server_mib",
            "rss_idle_client_mib",
            "rss_loaded_mib",
        ] {
            assert!(
                tunneld[key].as_f64().is_some_and(|v| v > 0.0),
                "{key} in {tunneld}"
            );
        }
    }
    // The HTTPS rows: tunneld's https-subdomain frontend over every transport that carries
    // http tunnels, beside nginx.
    let https: Vec<&str> = json["https"]
        .as_array()
        .expect("https")
        .iter()
        .filter_map(|r| r["system"].as_str())
        .collect();
    if h2load {
        assert_eq!(
            https,
            [
                "tunneld https-subdomain over h2-reverse",
                "tunneld https-subdomain over h2-reverse, reuse_connections: false",
                "tunneld https-subdomain over yamux",
                "tunneld https-subdomain over yamux, reuse_connections: false",
                "tunneld https-subdomain over websocket",
                "tunneld websocket, its own port by Host (plain HTTP)",
                "tunneld rendezvous, node-rendezvous visitors (connect, parked)",
                "nginx, 1 worker (TLS + keep-alive proxy)",
                "nginx, 2 workers (TLS + keep-alive proxy)",
            ]
        );
        for r in json["https"].as_array().expect("https") {
            // The websocket port by Host and the rendezvous frontend speak HTTP/1.1 only.
            let h1_only = r["system"]
                .as_str()
                .is_some_and(|s| s.contains("by Host") || s.contains("rendezvous"));
            let keys: &[&str] = if h1_only {
                assert!(r["h2_req_s"].is_null(), "{r}");
                &["h1_req_s", "h1_mean_ms"]
            } else {
                &["h1_req_s", "h2_req_s", "h1_mean_ms", "h2_mean_ms"]
            };
            for key in keys {
                assert!(r[*key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
            }
            assert!(
                r["h1_cpu_us"].as_f64().is_some_and(|v| v >= 0.0),
                "h1_cpu_us in {r}"
            );
        }
        assert!(table.contains("× nginx 1 worker"), "{table}");
    } else {
        assert!(table.contains("h2load is not installed"), "{table}");
    }
    // Idle visitors held at once through one tunnelc (50 in smoke mode), each proven by an
    // echo, and one more visitor's echo beside them.
    let crowd = json["crowd"].as_array().expect("crowd");
    let names: Vec<&str> = crowd.iter().filter_map(|r| r["system"].as_str()).collect();
    assert_eq!(
        names,
        [
            "tunneld websocket",
            "tunneld h2-reverse+tls",
            "tunneld yamux+tls"
        ]
    );
    for r in crowd {
        assert_eq!(r["held"], r["visitors"], "{r}");
        assert!(r["stopped_by"].is_null(), "{r}");
        assert!(r["fresh_echo_ms"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    }
    assert!(table.contains("Idle visitors held at once"), "{table}");
    // The targeted ratios measured by turns (one round in smoke mode): against two plain
    // relays here (--no-peers), and HTTPS over yamux against nginx with one worker.
    let pairs = json["pairs"].as_array().expect("pairs");
    let figures: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|p| Some((p["baseline"].as_str()?, p["figure"].as_str()?)))
        .collect();
    let mut expected = vec![
        ("two relays", "throughput"),
        ("two relays", "download throughput"),
        ("two relays", "HTTP req/s"),
        ("two relays", "HTTP p99 latency (lower is better)"),
    ];
    if h2load {
        let nginx = "nginx, 1 worker (TLS + keep-alive proxy)";
        expected.extend([
            (nginx, "HTTPS HTTP/1.1 req/s"),
            (nginx, "HTTPS HTTP/2 req/s"),
            (nginx, "HTTPS HTTP/1.1 CPU a request (lower is better)"),
            (nginx, "HTTPS HTTP/2 CPU a request (lower is better)"),
        ]);
    }
    // The transports to ports by turns: each over yamux+tls, then the spread.
    let turns = |figure: &'static str| {
        let mut rows = vec![("tunneld yamux+tls", figure), ("tunneld yamux+tls", figure)];
        if ssh {
            rows.push(("tunneld yamux+tls", figure));
        }
        rows
    };
    for (figure, spread) in [
        ("throughput", "throughput (target ≤ 1.5)"),
        ("download throughput", "download throughput (target ≤ 1.5)"),
        ("HTTP req/s", "HTTP req/s (target ≤ 1.5)"),
    ] {
        expected.extend(turns(figure));
        expected.push(("the worst transport", spread));
    }
    assert_eq!(figures, expected, "{table}");
    // The rates and latency (a one-second smoke run may count no CPU clock tick, which
    // leaves the CPU pairs without a round).
    let https = if h2load { 4 } else { 0 };
    let rates = (0..4 + https / 2).chain(4 + https..pairs.len());
    for p in rates.map(|i| &pairs[i]) {
        assert!(p["subject"].as_str().is_some(), "{p}");
        let ratios = p["ratios"].as_array().expect("ratios");
        assert_eq!(ratios.len(), 1, "one round: {p}");
        assert!(p["median"].as_f64().is_some_and(|v| v > 0.0), "{p}");
    }
    assert!(table.contains("Alternated pairs"), "{table}");
    assert!(out.join("results.md").exists());
}
