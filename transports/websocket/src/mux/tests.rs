//! The multiplexer's own tests: framing, flow control, ids and caps.

use super::*;
use crate::wire::decode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Moves every queued message of `from` into `to`, as a WebSocket would.
fn deliver(from: &mut Outbox, to: &Mux) -> Vec<Msg> {
    let mut seen = Vec::new();
    loop {
        let m = match from.ctl.try_recv() {
            Ok(Out::Msg(b)) => b,
            Ok(Out::Close(..) | Out::Ping) => continue,
            Err(_) => match from.data.try_recv() {
                Ok(b) => b,
                Err(_) => return seen,
            },
        };
        let msg = decode(m).expect("valid");
        seen.push(msg.clone());
        if !matches!(msg, Msg::HttpOpen { .. } | Msg::Open { .. }) {
            to.dispatch(msg);
        }
    }
}

#[tokio::test]
async fn an_unread_control_queue_ends_the_session_instead_of_growing() {
    let (mux, mut out) = Mux::new(true, 2, MuxMetrics::default());
    let stalled = mux.stalled();
    tokio::pin!(stalled);
    // Twice the cap plus the slack fit; the peer reads none of them. Past half of the
    // queue, new conversations are refused first.
    for _ in 0..(2 * 2 + CTL_SLACK) {
        mux.send(&Msg::Pause(1));
    }
    assert_eq!(
        mux.open(Msg::Close, false).err(),
        Some(OpenRefused::TooMany)
    );
    assert!(
        futures::poll!(stalled.as_mut()).is_pending(),
        "stalled before the queue was full"
    );
    mux.send(&Msg::Pause(1));
    tokio::time::timeout(std::time::Duration::from_secs(5), stalled)
        .await
        .expect("an overflowing control queue ends the session");
    assert!(!mux.probe(std::time::Duration::from_millis(1)).await);
    // Nothing beyond the bound was queued.
    let mut queued = 0;
    while out.ctl.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 2 * 2 + CTL_SLACK);
}

#[tokio::test]
async fn pause_resume_and_clean_close_both_ways() {
    let (server, mut s_out) = Mux::new(true, 8, MuxMetrics::default());
    let (client, mut c_out) = Mux::new(true, 8, MuxMetrics::default());
    let (mut s_conv, _) = open_stream(&server).expect("open");
    let seen = deliver(&mut s_out, &client);
    let Some(Msg::Open { id, .. }) = seen.first().cloned() else {
        panic!("no open: {seen:?}")
    };
    let mut c_conv = client.accept(id).expect("accept");
    // Fill the client's buffer past the high-water mark: it answers P.
    let block = vec![7u8; CHUNK];
    let mut sent = 0;
    while sent < HIGH_WATER + CHUNK {
        s_conv.write_all(&block).await.expect("write");
        sent += block.len();
        deliver(&mut s_out, &client);
    }
    let back = deliver(&mut c_out, &server);
    assert!(back.contains(&Msg::Pause(id)), "{back:?}");
    // The server's writer is now paused.
    let stalled =
        tokio::time::timeout(std::time::Duration::from_millis(50), s_conv.write(&block)).await;
    assert!(stalled.is_err(), "write went through a pause");
    // Draining resumes.
    let mut got = vec![0u8; sent];
    c_conv.read_exact(&mut got).await.expect("read");
    let back = deliver(&mut c_out, &server);
    assert!(back.contains(&Msg::Resume(id)), "{back:?}");
    s_conv.write_all(b"tail").await.expect("write after resume");
    s_conv.shutdown().await.expect("fin");
    deliver(&mut s_out, &client);
    let mut rest = Vec::new();
    c_conv.read_to_end(&mut rest).await.expect("eof");
    assert_eq!(rest, b"tail");
    c_conv.shutdown().await.expect("fin back");
    deliver(&mut c_out, &server);
    assert!(server.is_empty() && client.is_empty());
    // Closing first from either side frees both ends.
    let (s2, _) = open_stream(&server).expect("open");
    let c2 = client.accept(s2.id()).expect("accept");
    drop(c2);
    deliver(&mut c_out, &server);
    assert!(server.is_empty() && client.is_empty());
    drop(s2);
    drop(s_conv);
    drop(c_conv);
}

/// Opens a conversation for an HTTP visitor (TPoT's `H`).
fn open(m: &Mux) -> Result<(Conversation, Option<Ack>), OpenRefused> {
    m.open(
        |id| Msg::HttpOpen {
            id,
            visitor: "1.2.3.4:5".parse().expect("addr"),
        },
        false,
    )
}

/// Opens a byte-stream conversation (`tunneld.1`'s `O`, no header).
fn open_stream(m: &Mux) -> Result<(Conversation, Option<Ack>), OpenRefused> {
    m.open(
        |id| Msg::Open {
            id,
            header: Bytes::new(),
        },
        false,
    )
}

#[tokio::test]
async fn the_peers_cap_from_its_hello_bounds_our_openings() {
    let (m, _out) = Mux::new(true, 8, MuxMetrics::default());
    m.peer_accepts(2);
    assert_eq!(m.max_conversations(), 2);
    let a = open(&m).expect("a");
    let _b = open(&m).expect("b");
    assert_eq!(open(&m).err(), Some(OpenRefused::TooMany));
    drop(a);
    assert!(open(&m).is_ok(), "a closed conversation frees a place");
    m.peer_accepts(100);
    assert_eq!(m.max_conversations(), 8, "never past our own cap");
}

#[tokio::test]
async fn ids_wrap_skip_live_and_cap() {
    let (m, _out) = Mux::new(false, 2, MuxMetrics::default());
    let (a, _) = open(&m).expect("a");
    let (b, _) = open(&m).expect("b");
    assert_eq!((a.id(), b.id()), (1, 2));
    assert_eq!(open(&m).err(), Some(OpenRefused::TooMany));
    drop(a);
    let (c, _) = open(&m).expect("c");
    assert_eq!(c.id(), 3);
    m.shared.table().next = 32767;
    drop(c);
    let (d, _) = open(&m).expect("d");
    assert_eq!(
        d.id(),
        1,
        "TPoT ids wrap past 32767 to 1, skipping 0 and live 2"
    );
    drop(b);
    drop(d);

    // tunneld.1 clients take the whole 16-bit range.
    let (n, _out) = Mux::new(true, 4, MuxMetrics::default());
    n.shared.table().next = 32767;
    let (e, _) = open_stream(&n).expect("e");
    assert_eq!(e.id(), 32768);
    n.shared.table().next = 65535;
    let (f, _) = open_stream(&n).expect("f");
    assert_eq!(f.id(), 1, "wraps past 65535 to 1");
}
