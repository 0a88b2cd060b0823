//! tunnelc's own cap on the visitors it serves at once (`max_conversations` over websocket,
//! `h2.max_streams` over h2-reverse): its hello tells tunneld, which refuses the visitor past
//! it at once (counted as `too_many_streams`) while the held ones keep answering, and takes
//! the next visitor as soon as one closes. (tunnelc used to accept 1024 conversations, a
//! constant tunneld did not know, and reset the 1025th; over h2-reverse the visitor past it
//! waited in hyper's queue for a stream to close.)

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::Proc;
use tunneld_integration_tests::services::echo;
use tunneld_integration_tests::{temp_dir, TestServer, ALICE_TOKEN, WAIT};

/// A visitor whose byte came back through the tunnel, or why not.
async fn visitor(addr: SocketAddr) -> Result<TcpStream, String> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(b"v").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(s)
    };
    tokio::time::timeout(WAIT, go)
        .await
        .map_err(|_| "no echo in time".to_string())?
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Websocket,
    H2Reverse,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelcs_conversation_cap_is_kept_by_tunneld() {
    cap_is_kept(Via::Websocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelcs_h2_stream_cap_is_kept_by_tunneld() {
    cap_is_kept(Via::H2Reverse).await;
}

async fn cap_is_kept(via: Via) {
    let s = TestServer::start_full(
        tunneld_integration_tests::WEB_FRONTEND,
        &[
            "transports.h2.type=h2-reverse".into(),
            "transports.h2.listen=127.0.0.1:0".into(),
            "transports.ws.frontend=web".into(),
            "transports.ws.type=websocket".into(),
            "transports.ws.listen=127.0.0.1:0".into(),
            "transports.ws.domain=localhost".into(),
            "transports.ws.max_conversations=50".into(),
        ],
    )
    .await
    .expect("tunneld");
    let service = echo().await;
    let dir = temp_dir(&format!("{via:?}-cap"));
    let cfg = dir.join("client.yaml");
    let head = match via {
        Via::Websocket => format!(
            "server: http://localhost:{}\ntransport: websocket\nmax_conversations: 3\n",
            s.running.transports["ws"].port()
        ),
        Via::H2Reverse => format!(
            "server: {}\nserver_name: localhost\ntransport: h2-reverse\ntls: {{ ca: {} }}\nh2: {{ max_streams: 3 }}\n",
            s.running.transports["h2"],
            s.ca_file().display()
        ),
    };
    std::fs::write(
        &cfg,
        format!("{head}token: {ALICE_TOKEN}\ntunnels:\n  svc:\n    local: {service}\n"),
    )
    .expect("write");
    let mut c = Proc::spawn(
        "tunnelc",
        &["--config", cfg.to_str().expect("utf8")],
        dir.join("tunnelc.err"),
    )
    .expect("tunnelc");
    let line = c.line_starting("tunnel svc:").await.expect("tunnel up");
    let addr: SocketAddr = line
        .rsplit("tcp://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("endpoint in {line:?}"));

    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            visitor(addr)
                .await
                .unwrap_or_else(|e| panic!("visitor {i}: {e}")),
        );
    }
    // Refused at once, not after waiting for a place (WAIT is far longer than this).
    let refused = tokio::time::timeout(Duration::from_secs(5), visitor(addr))
        .await
        .unwrap_or_else(|_| panic!("{via:?}: the fourth visitor waited instead of being refused"));
    assert!(
        refused.is_err(),
        "{via:?}: a fourth visitor is past tunnelc's cap"
    );
    let m = s
        .metrics_when(
            "tunneld_stream_open_failures_total",
            &[("reason", "too_many_streams")],
            1.0,
        )
        .await;
    assert_eq!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "too_many_streams")]
        ),
        1.0,
        "{via:?}: tunneld refused the fourth visitor itself"
    );
    assert_eq!(
        m.get(
            "tunneld_stream_open_failures_total",
            &[("reason", "local_refused")]
        ),
        0.0,
        "{via:?}: tunnelc was never asked for a fourth stream"
    );
    // The held visitors still answer (the session lived through the refusal).
    for (i, v) in held.iter_mut().enumerate() {
        v.write_all(b"again").await.expect("write");
        let mut back = [0u8; 5];
        tokio::time::timeout(WAIT, v.read_exact(&mut back))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("held visitor {i}: {e}"));
        assert_eq!(&back, b"again");
    }
    // One closes: its place goes to the next visitor (once tunneld saw the close).
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match visitor(addr).await {
            Ok(v) => {
                held.push(v);
                break;
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the freed place was not given again: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(held.len(), 3);
}
