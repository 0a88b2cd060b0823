//! A reload that removes a frontend: its listener and the tunnels on it go, their tunnelc is
//! told which and why, and the same client's tunnel on another frontend keeps its visitor.
//! A reload that adds it back serves it again.

use std::net::SocketAddr;
use tokio::net::TcpStream;
use tunneld_client::client::ClientEvent;
use tunneld_integration_tests::{
    endpoint_of, port_block, services, TestClient, TestServer, ALICE_TOKEN, WAIT,
};

use tunneld_integration_tests::services::echo_message as echo_on;

/// Waits until connecting to `addr` is refused (the listener closed), bounded.
async fn until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn reloadable(extra: &str) -> (TestServer, std::path::PathBuf, String) {
    TestServer::reloadable(extra).await.expect("server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_frontend_releases_its_tunnels_and_spares_the_others() {
    let (c, d) = port_block();
    let more = format!("  more:\n    type: ports\n    bind: 127.0.0.1\n    range: {c}-{d}\n  site:\n    type: https-subdomain\n    listen: 127.0.0.1:0\n    domain: localhost\n");
    let (s, file, v1) = reloadable(&more).await;

    let local = services::echo().await;
    let tunnels = format!(
        "  a:\n    local: {local}\n    frontend: tcp\n  b:\n    local: {local}\n    frontend: more\n  c:\n    type: http\n    local: {local}\n    frontend: site\n    subdomain: c\n"
    );
    let cfg = s
        .client_config_with(
            ALICE_TOKEN,
            &tunnels,
            &["accept_server_mappings=true".into()],
        )
        .expect("cfg");
    let mut alice = TestClient::spawn(cfg);
    let up = alice.connected().await.expect("alice connects");
    let (a, b) = (
        endpoint_of(&up, "a").expect("a"),
        endpoint_of(&up, "b").expect("b"),
    );
    assert!((c..=d).contains(&b.port()), "{b}");
    let site = s.running.frontends["site"];
    assert!(
        up.iter().any(|t| t.name == "c" && t.endpoint.is_some()),
        "{up:?}"
    );
    let mut kept_a = TcpStream::connect(a).await.expect("visitor of a");
    echo_on(&mut kept_a, b"before").await.expect("a before");
    let mut kept_b = TcpStream::connect(b).await.expect("visitor of b");
    echo_on(&mut kept_b, b"before").await.expect("b before");

    // An admin mapping on `more` keeps it through a reload that removes it (and `site`).
    let mapping =
        format!(r#"[{{"client":"alice","listen_port":{d},"target":"{local}","frontend":"more"}}]"#);
    let (code, body) = s.admin_call("PUT", "/tunnels", Some(&mapping)).await;
    assert_eq!(code, 200, "{body}");
    std::fs::write(&file, v1.replace(&more, "")).expect("write v2");
    let sum = s.running.reloader.reload().await.expect("reload v2");
    assert_eq!(sum.removed, ["frontends.site"], "{sum:?}");
    assert!(
        sum.needs_restart
            .iter()
            .any(|k| k.starts_with("frontends.more (removed, but admin mappings")),
        "{sum:?}"
    );
    assert!(s.running.hub.frontend("more").is_some());
    until_refused(site).await;
    echo_on(&mut kept_b, b"kept")
        .await
        .expect("b stays while kept");

    // Without the mapping, the same file takes `more` away too.
    let (code, body) = s.admin_call("PUT", "/tunnels", Some("[]")).await;
    assert_eq!(code, 200, "{body}");
    let sum = s.running.reloader.reload().await.expect("reload v2 again");
    assert_eq!(sum.removed, ["frontends.more"], "{sum:?}");
    assert!(sum.needs_restart.is_empty(), "{sum:?}");
    assert!(s.running.hub.frontend("more").is_none());
    until_refused(b).await;
    // alice's tunnelc hears that b went, and why; a is untouched.
    let deadline = tokio::time::Instant::now() + WAIT;
    let changed = loop {
        let ev = tokio::time::timeout_at(deadline, alice.events.recv())
            .await
            .expect("a tunnels message in time")
            .expect("client runs");
        // One message per removed frontend: wait for the one after both.
        if let ClientEvent::TunnelsChanged { tunnels } = ev {
            if tunnels.iter().filter(|t| t.error.is_some()).count() == 2 {
                break tunnels;
            }
        }
    };
    let c_now = changed.iter().find(|t| t.name == "c").expect("c listed");
    assert!(
        c_now
            .error
            .as_deref()
            .is_some_and(|e| e.contains("`site` was removed")),
        "{c_now:?}"
    );
    let b_now = changed.iter().find(|t| t.name == "b").expect("b listed");
    assert!(b_now.endpoint.is_none(), "{b_now:?}");
    assert!(
        b_now
            .error
            .as_deref()
            .is_some_and(|e| e.contains("frontend `more` was removed")),
        "{b_now:?}"
    );
    let a_now = changed.iter().find(|t| t.name == "a").expect("a listed");
    assert_eq!(
        a_now.endpoint.as_deref(),
        Some(format!("tcp://{a}").as_str())
    );
    echo_on(&mut kept_a, b"after")
        .await
        .expect("a's visitor stays through the reload");
    let mut fresh = TcpStream::connect(a).await.expect("a takes new visitors");
    echo_on(&mut fresh, b"new").await.expect("a new visitor");
    assert_eq!(s.running.hub.sessions().len(), 1, "the session stays");

    // Add it back: served again (tunnelc asks for b at its next connection).
    std::fs::write(&file, &v1).expect("write v3");
    let sum = s.running.reloader.reload().await.expect("reload v3");
    assert_eq!(sum.added, ["frontends.more", "frontends.site"], "{sum:?}");
    assert!(s.running.hub.frontend("more").is_some());
    alice.shutdown().await.expect("alice stops");
}

/// The next tunnel list tunneld sends `c` (bounded).
async fn next_tunnels(c: &mut TestClient) -> Vec<tunneld_core::proto::TunnelStatus> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, c.events.recv())
            .await
            .expect("a tunnels message in time")
            .expect("client runs");
        if let ClientEvent::TunnelsChanged { tunnels } = ev {
            return tunnels;
        }
    }
}

/// Waits for the tunnel list in which tunnel `t` has an endpoint other than `not`.
async fn moved(c: &mut TestClient, not: &str) -> Vec<tunneld_core::proto::TunnelStatus> {
    loop {
        let tunnels = next_tunnels(c).await;
        let t = tunnels.iter().find(|x| x.name == "t").expect("t listed");
        if t.endpoint.as_deref().is_some_and(|e| e != not) {
            return tunnels;
        }
    }
}

/// A reload that changes a frontend rebuilds it, and the sessions holding tunnels on it claim
/// them again in place: the same port when the new range has it, a port of the new range
/// when not. No session is cut: the same client's tunnel on another frontend and another
/// client's visitor keep their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_frontend_is_rebuilt_and_its_tunnels_claimed_again_in_place() {
    let (c, d) = port_block();
    let more = |from: u16, extra: &str| {
        format!("  more:\n    type: ports\n    bind: 127.0.0.1\n    range: {from}-{d}\n{extra}")
    };
    let (s, file, v1) = reloadable(&more(c, "")).await;
    let local = services::echo().await;
    let both = format!(
        "  t:\n    local: {local}\n    frontend: more\n  u:\n    local: {local}\n    frontend: tcp\n"
    );
    let mut alice = TestClient::spawn(s.client_config(ALICE_TOKEN, &both).expect("cfg"));
    let up = alice.connected().await.expect("alice");
    let (before, u) = (
        endpoint_of(&up, "t").expect("t"),
        endpoint_of(&up, "u").expect("u"),
    );
    assert!(before.port() < c + 10, "{before}");
    let mut kept_u = TcpStream::connect(u).await.expect("alice's visitor of u");
    echo_on(&mut kept_u, b"before").await.expect("u before");
    let on_tcp = format!("  t:\n    local: {local}\n    frontend: tcp\n");
    let mut bob = TestClient::spawn(
        s.client_config(tunneld_integration_tests::BOB_TOKEN, &on_tcp)
            .expect("cfg"),
    );
    let bob_ep = endpoint_of(&bob.connected().await.expect("bob"), "t").expect("t");
    let mut kept = TcpStream::connect(bob_ep).await.expect("bob's visitor");
    echo_on(&mut kept, b"before").await.expect("before");
    let session = s
        .running
        .hub
        .client_session("alice")
        .expect("alice")
        .info
        .id;

    // A new range without alice's port: t moves into it.
    let v2 = v1.replace(&more(c, ""), &more(c + 10, ""));
    std::fs::write(&file, &v2).expect("write v2");
    let sum = s.running.reloader.reload().await.expect("reload v2");
    assert_eq!(sum.changed, ["frontends.more"], "{sum:?}");
    assert_eq!(sum.sessions_cut, 0, "{sum:?}");
    let old = format!("tcp://{before}");
    let now = moved(&mut alice, &old).await;
    let t = now.iter().find(|x| x.name == "t").expect("t");
    let after: std::net::SocketAddr = t
        .endpoint
        .as_deref()
        .and_then(|e| e.strip_prefix("tcp://"))
        .expect("tcp endpoint")
        .parse()
        .expect("addr");
    assert!(after.port() >= c + 10, "{after}");
    let mut v = TcpStream::connect(after).await.expect("new port");
    echo_on(&mut v, b"new")
        .await
        .expect("served by the new frontend");
    echo_on(&mut kept_u, b"after")
        .await
        .expect("alice's visitor on another frontend stays");
    echo_on(&mut kept, b"after")
        .await
        .expect("bob's visitor on another frontend stays");

    // A change that keeps the range: t keeps its port.
    std::fs::write(
        &file,
        v2.replace(
            &more(c + 10, ""),
            &more(c + 10, "    max_connections_per_port: 64\n"),
        ),
    )
    .expect("write v3");
    let sum = s.running.reloader.reload().await.expect("reload v3");
    assert_eq!(sum.changed, ["frontends.more"], "{sum:?}");
    let tunnels = next_tunnels(&mut alice).await;
    let t = tunnels.iter().find(|x| x.name == "t").expect("t");
    assert_eq!(
        t.endpoint.as_deref(),
        Some(format!("tcp://{after}").as_str())
    );
    let mut again = TcpStream::connect(after).await.expect("the same port");
    echo_on(&mut again, b"same")
        .await
        .expect("served on the same port");
    echo_on(&mut kept_u, b"end")
        .await
        .expect("u kept to the end");
    assert_eq!(
        s.running
            .hub
            .client_session("alice")
            .expect("alice")
            .info
            .id,
        session,
        "alice's session was never cut"
    );
    alice.shutdown().await.expect("alice stops");
    bob.shutdown().await.expect("bob stops");
}
