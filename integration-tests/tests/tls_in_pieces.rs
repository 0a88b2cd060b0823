//! TLS whose records arrive in pieces. tunneld's rustls gives back a connection's buffers
//! whenever a read finds nothing (vendor/rustls, "(tunneld patch)"), so every quiet moment
//! frees them and the next bytes allocate them again (a read into an empty buffer going
//! through a small one on the stack first); a buffer holding part of a record must be kept.
//! First rustls alone: in memory, every piece read after a `WouldBlock` (TLS 1.2 and 1.3,
//! single bytes of records and handshake messages cut into 64-byte fragments, pieces
//! around the stack buffer's size across small and whole records), then an echo over
//! loopback; then tunneld's https frontend: a visitor's ClientHello larger than that small
//! buffer, visitors of one tunnel writing their handshakes and requests a few bytes at a
//! time, others quiet and then asking, while a neighbour tunnel of the same client keeps
//! answering.

use anyhow::{ensure, Context, Result};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tunneld_core::tls::{
    client_config, provider, server_config, ClientAuth, ClientTrust, ServerIdentity,
};
use tunneld_integration_tests::attack::{
    self, healthy, http_tunnels, server, tagged, tls_connector, verdict, SessionMark, Via, ATTACK,
};
use tunneld_integration_tests::neighbour::{read_response, Neighbour, Probe};
use tunneld_integration_tests::trickle::Trickle;
use tunneld_integration_tests::{pattern, services, sha256_hex, temp_dir, TestServer};

/// Visitors writing in pieces, and quiet visitors, of the `pieces` tunnel.
const VISITORS: usize = 8;
const QUIET: usize = 24;
/// Bound of one handshake or one answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
const HOST: &str = "pieces.localhost";

/// A reader of `wire` that answers `WouldBlock` before every piece and then gives up to
/// `piece` bytes (as many as the read asks for, at most): each read of a TLS connection
/// finds nothing, then some bytes more.
struct PieceAfterBlock<'a> {
    wire: &'a mut VecDeque<u8>,
    piece: usize,
    blocked: bool,
}

impl Read for PieceAfterBlock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.blocked = !self.blocked;
        if self.blocked || self.wire.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.piece.min(buf.len()).min(self.wire.len());
        for (slot, b) in buf.iter_mut().zip(self.wire.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }
}

/// Moves everything `from` has to send into `to` in pieces of `piece` bytes, `to`
/// processing after every piece; the plaintext `to` received meanwhile.
fn transfer(from: &mut Connection, to: &mut Connection, piece: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut out)?;
    }
    let mut wire = VecDeque::from(out);
    let mut got = Vec::new();
    while !wire.is_empty() {
        let mut reader = PieceAfterBlock {
            wire: &mut wire,
            piece,
            blocked: false,
        };
        for _ in 0..2 {
            match to.read_tls(&mut reader) {
                Ok(_) => {
                    to.process_new_packets()?;
                    take_plaintext(to, &mut got)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(got)
}

/// Appends the plaintext `conn` holds to `got`.
fn take_plaintext(conn: &mut Connection, got: &mut Vec<u8>) -> Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// (the largest record, bytes a read gives): single bytes through 64-byte records; then
/// pieces around the 1,536 bytes a read into an empty buffer takes through the stack
/// (vendor/rustls, `read_probe`) and the 4 KiB a grown buffer reads, across small records
/// and whole 16 KiB ones.
const PIECES: [(Option<usize>, usize); 6] = [
    (Some(64), 1),
    (Some(64), 1537),
    (None, 1535),
    (None, 1536),
    (None, 1537),
    (None, 5000),
];

#[test]
fn every_byte_read_after_a_would_block_loses_nothing() -> Result<()> {
    let dir = temp_dir("tls-bytes");
    let id = ServerIdentity::self_signed(&dir, &["localhost".to_string()])?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &id.chain[1..] {
        roots.add(ca.clone())?;
    }
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (fragment, piece) in PIECES {
            let case = format!("{version:?}, records of {fragment:?}, reads of {piece}");
            let mut server = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])?
                .with_no_client_auth()
                .with_single_cert(id.chain.clone(), id.key.clone_key())?;
            // Records, and so handshake messages such as the certificate, in fragments: a
            // read finds nothing while a handshake message is half reassembled.
            server.max_fragment_size = fragment;
            let mut client = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            client.max_fragment_size = fragment;
            let mut c = Connection::Client(ClientConnection::new(
                Arc::new(client),
                "localhost".try_into()?,
            )?);
            let mut s = Connection::Server(ServerConnection::new(Arc::new(server))?);
            let mut flights = 0;
            while c.is_handshaking() || s.is_handshaking() {
                ensure!(flights < 10, "{case}: no handshake after {flights} flights");
                transfer(&mut c, &mut s, piece)?;
                transfer(&mut s, &mut c, piece)?;
                flights += 1;
            }
            for (i, len) in [1usize, 63, 64, 65, 1536, 4095, 4097, 16_385, 40_000]
                .into_iter()
                .enumerate()
            {
                let out = pattern(len, 200 + i as u64);
                c.writer().write_all(&out)?;
                let got = transfer(&mut c, &mut s, piece)?;
                ensure!(
                    got == out,
                    "{case}: message {i} ({len} bytes) arrived changed"
                );
                s.writer().write_all(&got)?;
                ensure!(
                    transfer(&mut s, &mut c, piece)? == out,
                    "{case}: message {i} ({len} bytes) came back changed"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Echoes every byte until the peer ends, then ends too: the number of bytes.
async fn echo(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) -> std::io::Result<u64> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            tls.shutdown().await?;
            return Ok(total);
        }
        tls.write_all(&buf[..n]).await?;
        tls.flush().await?;
        total += n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_pieces_and_quiet_reads_between_them_lose_nothing() -> Result<()> {
    let dir = temp_dir("tls-pieces");
    let id = ServerIdentity::self_signed(&dir, &["localhost".to_string()])?;
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&id, &ClientAuth::None, &[])?));
    let connector = TlsConnector::from(Arc::new(client_config(
        &ClientTrust::CaFile(dir.join("ca.pem")),
        None,
        &[],
    )?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // (bytes a write, the largest message): one byte at a time through the handshake and
    // records around the 4 KiB read size; then a few bytes; then bulk in larger pieces.
    let cases: [(usize, usize); 4] = [(1, 4097), (7, 20_000), (1000, 300_000), (1537, 300_000)];
    let sizes = [
        1usize, 5, 4095, 4096, 4097, 16_384, 16_385, 20_000, 100_000, 300_000,
    ];
    let run = async {
        for (case, (piece, largest)) in cases.into_iter().enumerate() {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (accepted, _) = listener.accept().await?;
            let served = tokio::spawn(echo(acceptor.clone(), accepted));
            let mut tls = connector
                .connect("localhost".try_into()?, Trickle::new(tcp, piece))
                .await
                .with_context(|| format!("handshake in pieces of {piece}"))?;
            let mut sent = 0u64;
            for (i, len) in sizes.into_iter().filter(|&l| l <= largest).enumerate() {
                let out = pattern(len, (case * 100 + i) as u64);
                let mut back = vec![0u8; len];
                // Written and read at once: the echo need not fit the sockets' buffers.
                let (mut r, mut w) = tokio::io::split(tls);
                let (wrote, read) = tokio::join!(
                    async {
                        w.write_all(&out).await?;
                        w.flush().await
                    },
                    r.read_exact(&mut back)
                );
                wrote?;
                read.context("echo")?;
                tls = r.unsplit(w);
                ensure!(
                    back == out,
                    "message {i} ({len} bytes in pieces of {piece}) came back changed"
                );
                sent += len as u64;
            }
            tls.shutdown().await?;
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest)
                .await
                .context("the server's end")?;
            ensure!(rest.is_empty(), "nothing more after the echoes");
            let echoed = served.await??;
            ensure!(
                echoed == sent,
                "the server echoed {echoed} of {sent} bytes (pieces of {piece})"
            );
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("within two minutes")??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One request with a body of `len` bytes and its answer from [`services::http_echo`],
/// which must carry the body's digest.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    len: usize,
    seed: usize,
) -> Result<()> {
    let body = pattern(len, seed as u64);
    let mut req = format!("POST /{seed} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes();
    req.extend_from_slice(&body);
    tls.write_all(&req).await.context("write")?;
    tls.flush().await.context("flush")?;
    let (status, answer) = tokio::time::timeout(ANSWER_WAIT, read_response(tls))
        .await
        .with_context(|| format!("no answer within {ANSWER_WAIT:?}"))??;
    ensure!(status == 200, "status {status}");
    let want = format!("sha256={} body={len}", sha256_hex(&body));
    ensure!(
        String::from_utf8_lossy(&answer).contains(&want),
        "the answer does not carry {want}"
    );
    Ok(())
}

/// TLS to the `web` frontend for [`HOST`], its writes in pieces of `piece` bytes.
async fn visit(
    connector: &TlsConnector,
    web: SocketAddr,
    piece: usize,
) -> Result<tokio_rustls::client::TlsStream<Trickle<TcpStream>>> {
    let tcp = TcpStream::connect(web).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let hs = connector.connect(HOST.try_into()?, Trickle::new(tcp, piece));
    tokio::time::timeout(ANSWER_WAIT, hs)
        .await
        .context("handshake in time")?
        .context("handshake in pieces")
}

/// One visitor until `until`: requests with bodies of 0 to 6,000 bytes, each written a few
/// bytes at a time and answered before the next. The number answered.
async fn in_pieces(
    connector: TlsConnector,
    web: SocketAddr,
    seed: usize,
    until: Instant,
) -> Result<u64> {
    let mut tls = visit(&connector, web, 1 + seed % 7).await?;
    let mut answered = 0u64;
    while Instant::now() < until {
        let n = answered as usize;
        let len = (seed * 131 + n * 977) % 6000;
        ask(&mut tls, len, seed * 10_000 + n)
            .await
            .with_context(|| format!("request {n} ({len} bytes)"))?;
        answered += 1;
    }
    Ok(answered)
}

/// A connector whose ClientHello is larger than the 1,536 bytes a read into an empty
/// buffer takes through the stack (vendor/rustls, `read_probe`), as a browser's with
/// post-quantum key shares is (about 1.8 KB): 24 made-up ALPN ids of 100 bytes before
/// `http/1.1`, about 2.7 KB in all.
fn large_hello(ca: PathBuf) -> Result<TlsConnector> {
    let made_up: Vec<Vec<u8>> = (0..24)
        .map(|i| format!("x-{i:02}-{}", "y".repeat(95)).into_bytes())
        .collect();
    let mut ids: Vec<&[u8]> = made_up.iter().map(Vec::as_slice).collect();
    ids.push(b"http/1.1");
    let cfg = client_config(&ClientTrust::CaFile(ca), None, &ids)?;
    Ok(TlsConnector::from(Arc::new(cfg)))
}

async fn pieces_beside_a_neighbour(via: Via) -> Result<Vec<String>> {
    let s: TestServer = server(via == Via::Websocket, &[]).await?;
    let pieces = services::http_echo("pieces").await;
    let nb = services::http_body(4096).await;
    let (mut alice, _) =
        attack::alice(&s, via, &http_tunnels(&[("pieces", pieces), ("nb", nb)])).await?;
    let connector = tls_connector(s.ca_file(), b"http/1.1")?;
    let web = s.web();
    let mut problems = Vec::new();

    // Quiet visitors: a handshake, one request, then nothing until the attack is over.
    let mut quiet = Vec::new();
    for q in 0..QUIET {
        let mut tls = visit(&connector, web, 64).await?;
        ask(&mut tls, 100 + q, 50_000 + q)
            .await
            .with_context(|| format!("quiet visitor {q}'s first request"))?;
        quiet.push(tls);
    }
    // A ClientHello larger than what a read into an empty buffer takes first, written at
    // once: the frontend's acceptor reads it in two.
    let large = large_hello(s.ca_file())?;
    let mut tls = visit(&large, web, 65_536)
        .await
        .context("a visitor with a large ClientHello")?;
    ask(&mut tls, 3000, 70_000)
        .await
        .context("a visitor with a large ClientHello")?;
    let mark = SessionMark::take(&s, via).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(4096)));
    let until = Instant::now() + ATTACK;
    let mut visitors = JoinSet::new();
    for seed in 0..VISITORS {
        visitors.spawn(in_pieces(connector.clone(), web, seed, until));
    }
    let mut answered = 0u64;
    while let Some(done) = visitors.join_next().await {
        match done {
            Ok(Ok(n)) if n > 0 => answered += n,
            Ok(Ok(_)) => problems.push("a visitor in pieces got no answer".into()),
            Ok(Err(e)) => problems.push(format!("visitor in pieces: {e:#}")),
            Err(e) => problems.push(format!("visitor task: {e}")),
        }
    }
    let report = probe.finish().await;
    healthy(
        &report,
        &format!("neighbour https tunnel over {via:?} beside {VISITORS} visitors in pieces"),
        &mut problems,
    );
    // After their quiet, each quiet visitor asks again on the same connection.
    for (q, tls) in quiet.iter_mut().enumerate() {
        if let Err(e) = ask(tls, 5000 + q, 60_000 + q).await {
            problems.push(format!("quiet visitor {q} after the attack: {e:#}"));
        }
    }
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!("{via:?}: {answered} requests in pieces answered; neighbour {report}");
    alice.shutdown().await.ok();
    Ok(tagged(via, problems))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_visitors_in_pieces_over_yamux_lose_nothing_and_spare_the_neighbour() -> Result<()> {
    verdict(pieces_beside_a_neighbour(Via::Yamux).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_visitors_in_pieces_over_h2_reverse_lose_nothing_and_spare_the_neighbour(
) -> Result<()> {
    verdict(pieces_beside_a_neighbour(Via::H2Reverse).await?)
}
