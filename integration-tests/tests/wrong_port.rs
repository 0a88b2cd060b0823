//! tunnelc pointed at a port that speaks something else ends at once with exit 2 and one line
//! naming what the port speaks and the fix, found from what the port answered: an SSH banner,
//! a plain HTTP answer, a TLS record. One tunneld runs the example config (every transport).

use std::path::Path;
use tunneld_integration_tests::process::Proc;
use tunneld_integration_tests::{port_block, temp_dir, TestServer, WAIT};

const DEMO_TOKEN: &str = "demo-token-change-me-0123456789";

async fn example_server() -> TestServer {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.yaml");
    let state = temp_dir("wrong-port").join("state");
    let (a, b) = port_block();
    let mut sets = vec![
        format!("state_dir={}", state.display()),
        format!("frontends.tcp.range={a}-{b}"),
    ];
    for listener in [
        "admin.listen",
        "transports.edge.listen",
        "transports.hidden.listen",
        "frontends.rendezvous.listen",
        "transports.h2.listen",
        "frontends.web.listen",
        "transports.ws.listen",
        "transports.ssh.listen",
        "control.listen",
        "control.web_listen",
    ] {
        sets.push(format!("{listener}=127.0.0.1:0"));
    }
    TestServer::from_file(&example, &sets)
        .await
        .expect("tunneld on the example config")
}

/// Runs tunnelc with `args` and waits for it to end; answers (exit code, stderr).
async fn tunnelc_ends(tag: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = temp_dir(tag);
    let mut c = Proc::spawn("tunnelc", args, dir.join("tunnelc.err")).expect("tunnelc");
    let status = tokio::time::timeout(WAIT, c.wait())
        .await
        .unwrap_or_else(|_| panic!("{tag}: tunnelc retried instead of ending"))
        .expect("exit");
    (status.code(), c.stderr())
}

fn yamux_config(s: &TestServer, tag: &str, server: std::net::SocketAddr) -> String {
    let file = temp_dir(tag).join("client.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {server}\nserver_name: localhost\ntoken: {DEMO_TOKEN}\ntls: {{ ca: {} }}\ntunnels:\n  svc:\n    local: 127.0.0.1:9\n",
            s.ca_file().display()
        ),
    )
    .expect("write");
    file.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelc_names_what_a_wrong_port_speaks() {
    let s = example_server().await;
    let ssh = s.running.transports["ssh"];
    let ws = s.running.transports["ws"];
    let edge = s.running.transports["edge"];

    // A TLS client (yamux) at the ssh transport's port: the SSH banner.
    let cfg = yamux_config(&s, "wrong-port-ssh", ssh);
    let (code, err) = tunnelc_ends("wrong-port-ssh", &["--config", &cfg]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("speaks SSH (`SSH-2.0-") && err.contains("ssh -R"),
        "{err}"
    );

    // A TLS client at the websocket transport's plain-HTTP port: the HTTP answer.
    let cfg = yamux_config(&s, "wrong-port-http", ws);
    let (code, err) = tunnelc_ends("wrong-port-http", &["--config", &cfg]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("speaks plain HTTP (`HTTP/1.1 ") && err.contains("transport: websocket"),
        "{err}"
    );

    // A plain-HTTP websocket client at the yamux transport's TLS port: a TLS record.
    let url = format!("http://{edge}");
    let (code, err) = tunnelc_ends(
        "wrong-port-tls",
        &["http", "9", "--server", &url, "--token", DEMO_TOKEN],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("speaks TLS"), "{err}");
    // One line per event: the error is said once.
    assert_eq!(err.matches("speaks TLS").count(), 1, "{err}");
}

/// A connect (hidden-server) tunnelc config parking id `demo` at `server`, trusting `ca`.
fn connect_config(tag: &str, server: std::net::SocketAddr, ca: &Path) -> String {
    let file = temp_dir(tag).join("client.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {server}\nserver_name: localhost\ntransport: connect\ntoken: {DEMO_TOKEN}\ntls: {{ ca: {} }}\nreconnect: {{ initial: 50ms, max: 500ms }}\nrendezvous:\n  demo: {{ local: 127.0.0.1:9, parked: 2 }}\n",
            ca.display()
        ),
    )
    .expect("write");
    file.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_server_parking_at_the_wrong_place_ends_with_the_fix() {
    let s = example_server().await;
    let edge = s.running.transports["edge"];
    let hidden = s.running.transports["hidden"];

    // The yamux transport's port: another ALPN id.
    let cfg = connect_config("park-wrong-alpn", edge, &s.ca_file());
    let (code, err) = tunnelc_ends("park-wrong-alpn", &["--config", &cfg]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another transport's"), "{err}");

    // The ssh transport's port: its banner.
    let ssh = s.running.transports["ssh"];
    let cfg = connect_config("park-wrong-ssh", ssh, &s.ca_file());
    let (code, err) = tunnelc_ends("park-wrong-ssh", &["--config", &cfg]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("speaks SSH"), "{err}");

    // The right port, but a CA that did not sign tunneld's certificate.
    let other =
        tunneld_integration_tests::server_pki(&temp_dir("park-other-ca"), "other", &["localhost"])
            .0;
    let cfg = connect_config("park-untrusted", hidden, &other);
    let (code, err) = tunnelc_ends("park-untrusted", &["--config", &cfg]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("certificate is not trusted") && err.contains("--ca"),
        "{err}"
    );
    assert_eq!(err.matches("not trusted").count(), 1, "one line: {err}");
}
