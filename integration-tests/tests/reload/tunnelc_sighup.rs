//! tunnelc's SIGHUP brings a new tunnel up beside a running one.

use tokio::net::TcpStream;
use tunneld_integration_tests::{services, ALICE_TOKEN, WAIT};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelc_sighup_adds_a_tunnel_beside_a_running_one() {
    let d = daemon(&[("alice", ALICE_TOKEN)]).await;
    let local = services::echo().await;
    let (port_a, port_b) = (d.range.0 + 1, d.range.0 + 2);
    let edge = d.edge.clone();
    let f = client_file(&d, "a", &edge, ALICE_TOKEN, &[("a", local, port_a)]);
    let mut c = tunnelc(&d, "c", &f);
    c.line_starting("tunnel a: tcp://").await.expect("tunnel a");
    let mut kept = TcpStream::connect(public(port_a))
        .await
        .expect("kept visitor");
    echo_on(&mut kept, b"before").await.expect("echo before");

    client_file(
        &d,
        "a",
        &edge,
        ALICE_TOKEN,
        &[("a", local, port_a), ("b", local, port_b)],
    );
    c.signal("HUP").expect("SIGHUP tunnelc");
    let tb = c.line_starting("tunnel b").await.expect("tunnel b");
    assert_eq!(tb, format!("tunnel b: tcp://127.0.0.1:{port_b}"));
    echo_once(public(port_b), 1)
        .await
        .expect("echo through the new tunnel");
    echo_on(&mut kept, b"after")
        .await
        .expect("the kept visitor of a is still up");

    // Removing `b` again stops it and keeps `a`.
    client_file(&d, "a", &edge, ALICE_TOKEN, &[("a", local, port_a)]);
    c.signal("HUP").expect("SIGHUP tunnelc");
    // The first reload's own line ("reloaded: added: b") may come after its "tunnel b" line,
    // unread so far: skip it.
    let mut line = c.line_starting("reloaded").await.expect("reloaded line");
    if line.contains("added: b") {
        line = c.line_starting("reloaded").await.expect("reloaded line");
    }
    assert!(line.contains("removed: b"), "{line}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while echo_once(public(port_b), 2).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tunnel b still answers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    echo_on(&mut kept, b"again")
        .await
        .expect("a is untouched by b's removal");

    // The runtime's threads are set at start: a change is reported and kept as it was,
    // and the running tunnel is left alone.
    let mut text = std::fs::read_to_string(&f).expect("read client config");
    text.push_str("worker_threads: 4\n");
    std::fs::write(&f, text).expect("write client config");
    c.signal("HUP").expect("SIGHUP tunnelc");
    let line = c.line_starting("reloaded").await.expect("reloaded line");
    assert!(
        line.contains("worker_threads needs a restart (kept as it was)"),
        "{line}"
    );
    echo_on(&mut kept, b"threads")
        .await
        .expect("a is untouched by a start-only change");
}
