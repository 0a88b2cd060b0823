use super::*;
use crate::inspect::store::{Caps, Outcome};
use crate::inspect::view::payload;

fn store(max_body: usize) -> Arc<Store> {
    Arc::new(Store::new(Caps {
        max_requests: 100,
        max_body,
        max_memory: 1 << 20,
    }))
}

/// Feeds `bytes` in pieces of `split`.
fn feed(split: usize, bytes: &[u8], mut f: impl FnMut(&[u8])) {
    for piece in bytes.chunks(split) {
        f(piece);
    }
}

#[test]
fn pipelined_exchanges_are_paired_at_any_split() {
    let requests = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let responses = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndone\r\n0\r\n\r\n";
    for split in [1, 2, 7, 64, 4096] {
        let s = store(1024);
        let mut rec = Recorder::new(s.clone(), "web", "127.0.0.1:1", None, None);
        feed(split, requests, |p| rec.on_write(p));
        feed(split, responses, |p| rec.on_read(p));
        assert_eq!(rec.completed(), 3, "split {split}");
        let all = s.all();
        let got: Vec<(String, u16)> = all
            .iter()
            .map(|e| {
                (
                    e.request.target.clone(),
                    e.response.as_ref().map_or(0, |r| r.status),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("/a".into(), 201), ("/b".into(), 200), ("/c".into(), 200)]
        );
        assert_eq!(all[0].request_body.bytes, b"hello");
        assert_eq!(payload(&all[2].request_body), b"abc");
        let last = all[2].response.as_ref().expect("response");
        assert_eq!(payload(&last.body), b"done");
        assert!(all.iter().all(|e| e.outcome == Outcome::Complete));
    }
}

#[test]
fn bodies_are_cut_at_the_cap_and_a_close_ends_an_undelimited_response() {
    let s = store(4);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
    rec.on_read(b"HTTP/1.0 200 OK\r\n\r\nstream until close");
    rec.on_read(b"");
    let e = &s.all()[0];
    assert_eq!(e.request_body.bytes, b"0123");
    assert!(e.request_body.truncated);
    assert_eq!(e.request_body.wire_len, 10);
    let r = e.response.as_ref().expect("response");
    assert_eq!(
        (r.body.bytes.as_slice(), r.body.wire_len),
        (&b"stre"[..], 18)
    );
    assert_eq!(e.outcome, Outcome::Complete);
}

#[test]
fn what_cannot_be_followed_stops_the_recording_with_the_reason() {
    let s = store(64);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    rec.on_read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    rec.on_write(b"GET /after HTTP/1.1\r\n\r\n");
    let all = s.all();
    assert_eq!(all.len(), 1, "nothing is recorded after the stop");
    assert!(
        matches!(&all[0].outcome, Outcome::Failed(why) if why.contains("response framing")),
        "{:?}",
        all[0].outcome
    );

    // A connection that ends with a request unanswered.
    let s = store(64);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(b"GET /slow HTTP/1.1\r\n\r\n");
    drop(rec);
    assert!(matches!(&s.all()[0].outcome, Outcome::Failed(why) if why.contains("ended")));
}

#[test]
fn an_upgrade_is_recorded_then_the_bytes_pass_unwatched() {
    let s = store(64);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(
        b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    rec.on_read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi");
    rec.on_write(b"not http at all");
    let all = s.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].response.as_ref().map(|r| r.status), Some(101));
    assert_eq!(all[0].outcome, Outcome::Complete);
}

#[tokio::test]
async fn the_tap_passes_every_byte_unchanged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, mut b) = tokio::io::duplex(64);
    let s = store(8);
    let mut tap = Tap::new(a, Recorder::new(s.clone(), "web", "l", None, None));
    let req = b"POST /x HTTP/1.1\r\nContent-Length: 300\r\n\r\n"
        .iter()
        .copied()
        .chain((0..300).map(|i| i as u8))
        .collect::<Vec<u8>>();
    let writer = async {
        tap.write_all(&req).await.expect("write");
        let mut got = vec![0u8; 51];
        tap.read_exact(&mut got).await.expect("read");
        got
    };
    let peer = async {
        let mut got = vec![0u8; req.len()];
        b.read_exact(&mut got).await.expect("peer read");
        b.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n\r\n0123456")
            .await
            .expect("peer write");
        got
    };
    let (back, sent) = tokio::join!(writer, peer);
    assert_eq!(sent, req);
    assert_eq!(
        &back,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n\r\n0123456"
    );
    assert_eq!(tap.recorder().completed(), 1);
}

#[test]
fn a_body_cut_short_is_kept_as_far_as_it_came_and_marked_incomplete() {
    let s = store(64);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(b"POST /up HTTP/1.1\r\nContent-Length: 1000\r\n\r\n0123456789");
    rec.on_read(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
    drop(rec);
    let e = &s.all()[0];
    assert_eq!(e.request_body.bytes, b"0123456789");
    assert!(!e.request_body.complete);
    assert_eq!(e.response.as_ref().map(|r| r.status), Some(413));
    assert_eq!(e.outcome, Outcome::Complete);
}

#[test]
fn captures_in_transit_stay_within_the_memory_cap() {
    let s = Arc::new(Store::new(Caps {
        max_requests: 100,
        max_body: 1000,
        max_memory: 64 << 10,
    }));
    // 100 uploads stall after 1000 bytes each: at most 64 KiB of them is held.
    let mut open = Vec::new();
    for _ in 0..100 {
        let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
        rec.on_write(b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n");
        rec.on_write(&[b'x'; 1000]);
        open.push(rec);
    }
    assert!(!s.reserve(1000), "the budget is spent");
    drop(open);
    assert!(s.reserve(64 << 10), "every reservation is given back");
}

#[test]
fn a_malformed_request_stops_requests_and_earlier_exchanges_still_complete() {
    let s = store(64);
    let mut rec = Recorder::new(s.clone(), "web", "l", None, None);
    rec.on_write(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP\x00/1.1\r\n\r\n");
    rec.on_read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let all = s.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].outcome, Outcome::Complete);
}
