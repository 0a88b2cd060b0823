//! Fuzz entry points: one function per parser that reads bytes from a peer (or from an
//! operator's config file). Each takes arbitrary bytes, feeds them to the real parser and
//! ignores the result; none may panic, whatever the input.
//!
//! The cargo-fuzz harness in `fuzz/` (nightly, libFuzzer) calls these functions, one fuzz
//! target each, and `tests/replay_corpus.rs` replays the corpus kept in `fuzz/corpus/`
//! through them on stable as part of `cargo test`. See `docs/fuzzing.md`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tunneld_core::http1::{self, RequestHead};
use tunneld_core::proto::{self, Control, Hello, ServerHello, StreamReply};
use tunneld_core::session::StreamHeader;

mod requests;
pub use requests::{config_loader, connect_target, ssh_requests, visitor_heads};

/// Runs a future to completion on one current-thread runtime, built once per process
/// (building one per input would dominate the cost of most targets; a static one is never
/// dropped, so no thread's exit tears it down). The inputs are in memory: nothing ever
/// waits on I/O or timers.
fn block_on<F: Future>(f: F) -> Option<F::Output> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
    });
    rt.as_ref().map(|rt| rt.block_on(f))
}

/// An in-memory reader that hands out at most `step` bytes per read, so stateful parsers
/// also see their input split at awkward places.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8], step: usize) -> Self {
        Self {
            data,
            step: step.max(1),
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// A read size that varies with the input (1 to 13 bytes).
fn split_of(data: &[u8]) -> usize {
    1 + data.len() % 13
}

/// Decodes a frame body as every control-protocol message and re-encodes what decodes.
async fn frames_from(data: &[u8]) {
    if let Ok(h) = proto::read_frame::<Hello, _>(&mut &data[..]).await {
        let _ = h.to_string();
        let _ = proto::encode_frame(&h);
    }
    if let Ok(w) = proto::read_frame::<ServerHello, _>(&mut &data[..]).await {
        let _ = proto::encode_frame(&w);
    }
    if let Ok(h) = proto::read_frame::<StreamHeader, _>(&mut &data[..]).await {
        let _ = proto::encode_frame(&h);
    }
    if let Ok(r) = proto::read_frame::<StreamReply, _>(&mut &data[..]).await {
        let _ = proto::encode_frame(&r);
    }
}

/// `core/src/proto.rs`: the preamble and every frame type (hello, welcome, control, stream
/// header, stream reply), as a single frame and as the streams that carry them.
pub fn proto_frames(data: &[u8]) {
    block_on(async {
        frames_from(data).await;
        // tunneld's accept path: MAGIC, then one hello frame.
        let mut r = data;
        if proto::read_magic(&mut r).await.is_ok() {
            let _ = proto::read_frame::<Hello, _>(&mut r).await;
        }
        // A control stream: frames until the first error (each consumes at least 4 bytes).
        let mut r = data;
        while let Ok(c) = proto::read_frame::<Control, _>(&mut r).await {
            let _ = proto::encode_frame(&c);
        }
        let e = proto::read_frame::<Control, _>(&mut Trickle::new(data, split_of(data))).await;
        if let Err(e) = e {
            let _ = (e.reason(), e.to_string());
        }
    });
}

/// Everything a caller asks of a parsed head.
fn use_head(h: &RequestHead) {
    let _ = h.framing();
    let _ = h.closes();
    let _ = h.header("host");
    let _ = h.has_token("connection", "upgrade");
    let again = h.encode_without(&["authorization", "proxy-authorization"]);
    let _ = http1::parse(&again);
}

/// `core/src/http1.rs`: `parse` on the bytes, `read_head` on them as one read, and
/// `read_head_limited` (a small limit) on them in small reads, head after head.
pub fn http1_head(data: &[u8]) {
    if let Ok(Some((h, _))) = http1::parse(data) {
        use_head(&h);
    }
    block_on(async {
        let mut buf = Vec::new();
        if let Ok(h) = http1::read_head(&mut &data[..], &mut buf).await {
            use_head(&h);
        }
        let mut r = Trickle::new(data, split_of(data));
        let mut buf = Vec::new();
        loop {
            match http1::read_head_limited(&mut r, &mut buf, 512).await {
                Ok(h) => use_head(&h),
                Err(e) => {
                    let _ = (e.reason(), e.status(), e.to_string());
                    break;
                }
            }
        }
    });
}

/// `frontends/https/src/framing_guard.rs`: the guard over the bytes, read to the end, once in one read
/// with the default head limit and once in small reads with a 1 KiB limit.
pub fn framing_guard(data: &[u8]) {
    use tunneld_frontend_https::fuzzing::FramingGuard;
    block_on(async {
        let mut out = Vec::new();
        let mut g = FramingGuard::new(data);
        let _ = g.read_to_end(&mut out).await;
        let _ = g.refused();
        out.clear();
        let mut g = FramingGuard::new(Trickle::new(data, split_of(data))).max_head(1024);
        let _ = g.read_to_end(&mut out).await;
        let _ = g.refused();
    });
}

/// `client/src/host_rewrite.rs`: the request follower fed the bytes whole and in small pieces,
/// as a visitor's writes arrive.
pub fn host_rewrite(data: &[u8]) {
    use tunneld_client::host_rewrite::RequestFollower;
    for split in [data.len().max(1), split_of(data)] {
        let mut f = RequestFollower::new("service.internal:8080");
        let mut out = Vec::new();
        for piece in data.chunks(split) {
            if f.feed(piece, &mut out).is_err() {
                break;
            }
        }
        let _ = f.requests();
    }
}

/// `client/src/inspect/tap.rs`: the inspector's recorder. The bytes up to the first `|`
/// go toward the service (requests), the rest come back (responses), interleaved in small
/// pieces, then the end of stream; every recorded exchange is shown as the pages show it.
/// The store's caps must hold.
pub fn inspect_tap(data: &[u8]) {
    use std::sync::Arc;
    use tunneld_client::inspect::store::{Caps, Store};
    use tunneld_client::inspect::tap::Recorder;
    use tunneld_client::inspect::view;
    let (requests, responses) = match data.iter().position(|b| *b == b'|') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let caps = Caps {
        max_requests: 8,
        max_body: 64,
        max_memory: 8 << 10,
    };
    let store = Arc::new(Store::new(caps));
    {
        let mut rec = Recorder::new(store.clone(), "fuzz", "127.0.0.1:1", None, None);
        let step = split_of(data);
        let (mut w, mut r) = (requests.chunks(step), responses.chunks(step));
        loop {
            let (a, b) = (w.next(), r.next());
            if a.is_none() && b.is_none() {
                break;
            }
            a.into_iter().for_each(|p| rec.on_write(p));
            b.into_iter().for_each(|p| rec.on_read(p));
        }
        rec.on_read(b"");
    }
    let (kept, _, _) = store.stats();
    assert!(kept <= caps.max_requests, "{kept} exchanges kept");
    for e in store.all() {
        assert!(e.request_body.bytes.len() <= caps.max_body);
        let _ = view::show(&e.request.headers, &e.request_body);
        if let Some(r) = &e.response {
            assert!(r.body.bytes.len() <= caps.max_body);
            let _ = view::show(&r.headers, &r.body);
        }
    }
}

/// `core/src/sni.rs`: `parse_client_hello` on the bytes as a message body, and
/// `read_client_hello` on them as a connection's first bytes (one read, then small reads).
pub fn sni_client_hello(data: &[u8]) {
    use tunneld_core::sni;
    let _ = sni::parse_client_hello(data);
    // The body of a record-wrapped hello, too, so seeds of whole records reach the parser.
    if let Some(body) = data.get(9..) {
        let _ = sni::parse_client_hello(body);
    }
    block_on(async {
        if let Err(e) = sni::read_client_hello(&mut &data[..]).await {
            let _ = (e.reason(), e.to_string());
        }
        let _ = sni::read_client_hello(&mut Trickle::new(data, split_of(data))).await;
    });
}

/// `core/src/proxy_protocol.rs`. tunneld only writes PROXY headers (toward local services)
/// and has no parser for them; what it reads is the `proxy_protocol` version in hellos and
/// config, and the addresses it encodes come from connections. So: the bytes as a JSON
/// version, and the encoder for both versions over addresses taken from the bytes.
pub fn proxy_protocol(data: &[u8]) {
    use tunneld_core::proxy_protocol::{encode, Version};
    let _ = serde_json::from_slice::<Version>(data);
    let mut b = [0u8; 40];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let addr = |fam: u8, ip: &[u8], port: [u8; 2]| -> SocketAddr {
        let port = u16::from_be_bytes(port);
        if fam & 1 == 0 {
            SocketAddr::new(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into(), port)
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&ip[..16]);
            SocketAddr::new(Ipv6Addr::from(o).into(), port)
        }
    };
    let src = addr(b[0], &b[1..17], [b[17], b[18]]);
    let dst = addr(b[19], &b[20..36], [b[36], b[37]]);
    for v in [Version::V1, Version::V2] {
        let _ = encode(v, src, dst);
    }
}

/// `core/src/hostglob.rs`: every line as a pattern and as a visitor's name, matched against
/// every pattern that parsed.
pub fn hostglob(data: &[u8]) {
    use tunneld_core::hostglob::{best_match, normalize, HostGlob};
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').take(64).collect();
    let globs: Vec<HostGlob> = lines
        .iter()
        .filter_map(|l| HostGlob::parse(l).ok())
        .collect();
    for g in &globs {
        let _ = g.specificity();
        let _ = HostGlob::parse(&g.to_string());
    }
    let _ = best_match(&globs, None);
    for l in &lines {
        let name = normalize(l);
        for g in &globs {
            let _ = g.matches(Some(&name));
        }
        let _ = best_match(&globs, Some(&name));
    }
}

/// `frontends/rendezvous/src/visitor_auth.rs`: the bytes as an `Authorization` value (Digest
/// parameters or Basic), and a Digest nonce through the nonce checks. A nonce of `-` is
/// replaced by a fresh genuine one, so the nonce-count path is reached too.
pub fn visitor_auth(data: &[u8]) {
    use tunneld_frontend_rendezvous::visitor_auth::{parse_authorization, Credentials, Nonces};
    let text = String::from_utf8_lossy(data);
    let Ok(creds) = parse_authorization(&text) else {
        return;
    };
    let _ = creds.username();
    if let Credentials::Digest {
        nonce, nc, opaque, ..
    } = creds
    {
        let nonces = Nonces::new(Duration::from_secs(300));
        let nonce = if nonce == "-" {
            let challenge = nonces.challenge(false);
            let fresh = challenge
                .strip_prefix("Digest ")
                .map(|p| format!("Digest username=\"u\", {p}"))
                .and_then(|v| parse_authorization(&v).ok());
            match fresh {
                Some(Credentials::Digest { nonce, .. }) => nonce,
                _ => nonce,
            }
        } else {
            nonce
        };
        for _ in 0..2 {
            if let Err(e) = nonces.check(&nonce, nc, opaque.as_deref()) {
                let _ = e.reason();
            }
        }
    }
}

/// `core/src/totp.rs`: the first line as a base32 secret, the second as a code
/// checked against it (or the RFC 6238 secret when the first does not decode).
pub fn totp(data: &[u8]) {
    use tunneld_core::totp;
    let text = String::from_utf8_lossy(data);
    let (secret, code) = text.split_once('\n').unwrap_or((&text, ""));
    let secret = match totp::decode_secret(secret) {
        Ok(s) => {
            let _ = totp::encode_secret(&s);
            s
        }
        Err(_) => b"12345678901234567890".to_vec(),
    };
    let code = code.strip_suffix('\n').unwrap_or(code);
    // The step and the clock are the server's, not the peer's: fixed.
    let _ = totp::check(&secret, 30, code, 1_111_111_109);
}

/// The key the TPoT verifier of [`websocket_wire`] checks against.
pub const TPOT_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The verifier's clock in [`websocket_wire`] (ms since the epoch), fixed so that seeds
/// with a timestamp near it stay inside the ±60 s window.
pub const TPOT_NOW_MS: i64 = 1_700_000_000_000;

/// `transports/websocket/src/wire.rs` and `tpot_auth.rs`: the bytes as one binary message
/// (and the JSON an `R` or `T` message carries), and as a `TPoT-1` Authorization value.
pub fn websocket_wire(data: &[u8]) {
    use tunneld_transport_websocket::tpot_auth::Verifier;
    use tunneld_transport_websocket::wire::{self, Msg};
    match wire::decode(Bytes::copy_from_slice(data)) {
        Ok(m) => {
            match &m {
                Msg::Open { header, .. } => {
                    let _ = serde_json::from_slice::<StreamHeader>(header);
                }
                Msg::Control(json) => {
                    let _ = serde_json::from_slice::<Hello>(json);
                    let _ = serde_json::from_slice::<ServerHello>(json);
                    let _ = serde_json::from_slice::<Control>(json);
                }
                _ => {}
            }
            let _ = wire::decode(wire::encode(&m));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let v = Verifier::new(TPOT_KEY.to_string());
        if let Err(e) = v.verify_at(Some(text), TPOT_NOW_MS) {
            let _ = e.reason();
        }
    }
}

/// `transports/yamux/src/threshold.rs`: the bytes as a connection whose first 8 bytes the
/// server already read (`read_head`), then the head through `identify` with and without a
/// client certificate; and the bytes as a head directly.
pub fn threshold_head(data: &[u8]) {
    use tunneld_transport_yamux::threshold::{identify, read_head, ThresholdConfig};
    let cfg = |header_identity| ThresholdConfig {
        domain: "example.test".into(),
        header_identity,
        pair_timeout: Duration::from_secs(10),
        max_pending: 4,
        management_api: false,
        plain_listen: None,
    };
    let (by_cert, by_header) = (cfg(false), cfg(true));
    let check = |head: &str| {
        for r in [
            identify(head, Some("node1@example.test"), &by_cert),
            identify(head, None, &by_header),
        ] {
            if let Err(refusal) = r {
                let _ = refusal.response();
            }
        }
    };
    let (first, rest) = data.split_at(data.len().min(8));
    let read = block_on(async {
        let mut rest = rest;
        read_head(&mut rest, first).await
    });
    match read {
        Some(Ok(head)) => check(&head),
        Some(Err(refusal)) => {
            let _ = refusal.response();
        }
        None => {}
    }
    check(&String::from_utf8_lossy(data));
}
