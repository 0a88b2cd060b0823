//! tunneld's SIGHUP adds a token and a transport and removes a token without losing a visitor
//! of an untouched tunnel.

use tokio::net::TcpStream;
use tunneld_integration_tests::process::field;
use tunneld_integration_tests::{services, ALICE_TOKEN, BOB_TOKEN};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_without_losing_untouched_visitors() {
    let mut d = daemon(&[("alice", ALICE_TOKEN), ("bob", BOB_TOKEN)]).await;
    let local = services::echo().await;
    let (port_a, port_b) = (d.range.0 + 1, d.range.0 + 2);
    let fa = client_file(
        &d,
        "a",
        &d.edge.clone(),
        ALICE_TOKEN,
        &[("a", local, port_a)],
    );
    let mut a = tunnelc(&d, "a", &fa);
    a.line_starting("tunnel a: tcp://").await.expect("tunnel a");
    let fb = client_file(&d, "b", &d.edge.clone(), BOB_TOKEN, &[("b", local, port_b)]);
    let mut b = tunnelc(&d, "b", &fb);
    b.line_starting("tunnel b: tcp://").await.expect("tunnel b");

    // Visitors of A: a long-lived connection, and round trips in a loop.
    let mut kept = TcpStream::connect(public(port_a))
        .await
        .expect("kept visitor");
    echo_on(&mut kept, b"before")
        .await
        .expect("kept echo before");
    let l = load(public(port_a));
    l.past(20).await;

    // Add carol and the `more` transport, remove bob.
    std::fs::write(
        &d.file,
        server_file(
            &d.dir,
            d.range,
            &[("alice", ALICE_TOKEN), ("carol", CAROL_TOKEN)],
            "  more: { type: yamux, listen: 127.0.0.1:0 }\n",
        ),
    )
    .expect("rewrite config");
    d.proc.signal("HUP").expect("SIGHUP");
    let more = field(
        &d.proc
            .line_starting("listening transport=more")
            .await
            .expect("more"),
        "addr",
    )
    .expect("addr");
    let line = d
        .proc
        .line_starting("reloaded: ")
        .await
        .expect("reloaded line");
    for key in ["transports.more", "auth.tokens.carol", "auth.tokens.bob"] {
        assert!(line.contains(key), "{line}");
    }

    // (c) bob's session is cut, and his token no longer works: tunnelc stops (exit 2).
    until_client(&d, "bob", false).await;
    let st = b.wait().await.expect("bob's tunnelc ends");
    assert_eq!(st.code(), Some(2), "{}", b.stderr());
    assert!(
        d.proc.stderr().contains("session cut"),
        "{}",
        d.proc.stderr()
    );

    // (b) carol connects through the new transport.
    let port_c = d.range.0 + 3;
    let fc = client_file(&d, "c", &more, CAROL_TOKEN, &[("c", local, port_c)]);
    let mut c = tunnelc(&d, "c", &fc);
    let tc = c.line_starting("tunnel c").await.expect("tunnel c");
    assert_eq!(tc, format!("tunnel c: tcp://127.0.0.1:{port_c}"));
    echo_once(public(port_c), 1)
        .await
        .expect("echo through carol's tunnel");

    // (a) A lost nothing.
    l.past(20).await;
    let (done, failures) = l.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {done} round trips failed: {failures:?}",
        failures.len()
    );
    echo_on(&mut kept, b"after")
        .await
        .expect("the kept visitor is still up");
    let (code, body) = admin(&d, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("tunneld_config_reloads_total{result=\"ok\"} 1"),
        "{body}"
    );

    // (d) An invalid file: nothing changes, the key path is named everywhere.
    let good = std::fs::read_to_string(&d.file).expect("read");
    std::fs::write(
        &d.file,
        good.replace(
            "  more: { type: yamux, listen:",
            "  more: { type: yamux, listn:",
        ),
    )
    .expect("write bad config");
    let (code, body) = admin(&d, "POST", "/reload").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("transports.more.listn"), "{body}");
    d.proc.signal("HUP").expect("SIGHUP");
    let failed = d
        .proc
        .line_starting("reload failed")
        .await
        .expect("failed line");
    assert!(failed.contains("transports.more.listn"), "{failed}");
    assert!(
        d.proc.stderr().contains("transports.more.listn"),
        "{}",
        d.proc.stderr()
    );
    echo_on(&mut kept, b"still")
        .await
        .expect("the kept visitor survives a bad reload");
    echo_once(public(port_c), 2)
        .await
        .expect("carol's tunnel survives a bad reload");
    let (_, body) = admin(&d, "GET", "/metrics").await;
    assert!(
        body.contains("tunneld_config_reloads_total{result=\"error\"} 2"),
        "{body}"
    );

    // Fixed again: a reload with no difference changes nothing.
    std::fs::write(&d.file, &good).expect("restore");
    let (code, body) = admin(&d, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"added\":[]") && body.contains("\"removed\":[]"),
        "{body}"
    );
    drop((a, c));
}
