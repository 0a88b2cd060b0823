//! `servers`: parsing, validation, the order tunnelc tries them in, and per-server names.

use super::*;

/// Loads `yaml` (a whole tunnelc config) from a file of its own.
fn load_yaml(name: &str, yaml: &str) -> Result<ClientConfig, ConfigError> {
    let dir = std::env::temp_dir().join(format!("tunnelc-servers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write config");
    let r = ClientConfig::load(Some(&file), &[]);
    let _ = std::fs::remove_file(&file);
    r
}

const BASE: &str =
    "token: a-token-of-some-length-0123456789\ntunnels:\n  web:\n    local: 127.0.0.1:8080\n";

#[test]
fn without_servers_the_list_is_server_alone() {
    let cfg = ClientConfig::load(None, &[]).expect("embedded config");
    assert!(cfg.servers.is_empty());
    assert_eq!(cfg.server_list(), vec![cfg.server.clone()]);
}

#[test]
fn servers_come_after_server_each_once() {
    let cfg = load_yaml(
        "good",
        &format!(
            "server: tunnel-a.example.com:7000\nservers:\n  - tunnel-b.example.com:7000\n  - \"[::1]:7000\"\n  - tunnel-a.example.com:7000\n  - 10.0.0.3:7000\n  - tunnel-b.example.com:7000\n{BASE}"
        ),
    )
    .expect("valid config");
    assert_eq!(cfg.servers.len(), 5);
    assert_eq!(
        cfg.server_list(),
        [
            "tunnel-a.example.com:7000",
            "tunnel-b.example.com:7000",
            "[::1]:7000",
            "10.0.0.3:7000"
        ]
    );
}

#[test]
fn servers_from_a_set_flag() {
    let sets = ["servers=[127.0.0.1:7001, 127.0.0.2:7000]".to_string()];
    let cfg = ClientConfig::load(None, &sets).expect("valid config");
    assert_eq!(cfg.servers, ["127.0.0.1:7001", "127.0.0.2:7000"]);
    assert_eq!(cfg.server_list()[1..], ["127.0.0.1:7001", "127.0.0.2:7000"]);
}

#[test]
fn a_bad_entry_is_named_by_its_index() {
    let err = load_yaml(
        "bad",
        &format!("server: a.example:7000\nservers: [b.example:7000, b.example, \"c:0\"]\n{BASE}"),
    )
    .expect_err("invalid entries");
    assert_eq!(
        err.lines,
        [
            "servers[1]: `b.example` is not host:port",
            "servers[2]: `c:0` is not host:port"
        ]
    );
}

#[test]
fn servers_must_be_a_list() {
    let err = ClientConfig::load(None, &["servers=a.example:7000".to_string()])
        .expect_err("a string is not a list");
    assert!(
        err.lines.iter().any(|l| l.starts_with("servers: ")),
        "{:?}",
        err.lines
    );
}

#[test]
fn websocket_servers_are_urls() {
    let ws = "server: http://a.example:8088\ntransport: websocket\n";
    let cfg = load_yaml(
        "ws-good",
        &format!("{ws}servers: [\"https://b.example\", \"http://10.0.0.2:8088\"]\n{BASE}"),
    )
    .expect("valid config");
    assert_eq!(cfg.server_list().len(), 3);
    let err = load_yaml(
        "ws-bad",
        &format!("{ws}servers: [\"https://b.example\", \"b.example:8088\"]\n{BASE}"),
    )
    .expect_err("host:port is not a URL");
    assert_eq!(err.lines.len(), 1, "{:?}", err.lines);
    assert!(err.lines[0].starts_with("servers[1]: "), "{:?}", err.lines);
}

#[test]
fn server_name_defaults_to_each_servers_host() {
    let mut cfg = load_yaml(
        "names",
        &format!("server: a.example:7000\nservers: [\"b.example:7001\", \"[::1]:7002\"]\n{BASE}"),
    )
    .expect("valid config");
    let names = |c: &ClientConfig| -> Vec<String> {
        c.server_list()
            .iter()
            .map(|s| c.for_server(s).server_name())
            .collect()
    };
    assert_eq!(names(&cfg), ["a.example", "b.example", "::1"]);
    let b = cfg.for_server("b.example:7001");
    assert_eq!((b.server.as_str(), b.servers.len()), ("b.example:7001", 0));
    cfg.server_name = Some("tunnel.example".into());
    assert_eq!(
        names(&cfg),
        ["tunnel.example", "tunnel.example", "tunnel.example"]
    );

    let ws = load_yaml(
        "ws-names",
        &format!("server: http://a.example:8088\ntransport: websocket\nservers: [\"https://b.example\"]\n{BASE}"),
    )
    .expect("valid config");
    assert_eq!(names(&ws), ["a.example", "b.example"]);
}
