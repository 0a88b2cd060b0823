//! TLS through tunneld's rustls, whose connections give back their buffers whenever a read
//! finds nothing (vendor/rustls, "(tunneld patch)"): records that arrive in pieces, with reads
//! that find nothing in between, and quiet moments between messages lose no byte, in the
//! handshake and after it.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tunneld_core::tls::{client_config, server_config, ClientAuth, ClientTrust, ServerIdentity};

/// A TCP stream that writes at most `piece` bytes a poll and lets its task be polled again
/// between pieces, so the peer's reads see records arrive in pieces and find nothing between
/// them.
struct Trickle {
    tcp: TcpStream,
    piece: usize,
    /// Whether the next write waits for a poll of its own first.
    pause: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pause {
            self.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(self.piece);
        let this = &mut *self;
        let r = Pin::new(&mut this.tcp).poll_write(cx, &buf[..n]);
        if matches!(r, Poll::Ready(Ok(_))) {
            this.pause = true;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tunneld-tls-quiet-{}", std::process::id()))
}

fn message(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

/// Echoes every byte until the peer ends, then ends too.
async fn echo(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) -> io::Result<u64> {
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
async fn records_in_pieces_and_quiet_reads_between_them_lose_nothing() {
    let dir = state_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let id = ServerIdentity::self_signed(&dir, &["localhost".to_string()]).expect("identity");
    let server = server_config(&id, &ClientAuth::None, &[]).expect("server config");
    let client =
        client_config(&ClientTrust::CaFile(dir.join("ca.pem")), None, &[]).expect("client config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");

    // (bytes a write, the largest message): one byte at a time through the handshake and
    // records around the 4 KiB read size; then a few bytes; then bulk in larger pieces.
    let cases: [(usize, usize); 3] = [(1, 4097), (7, 20_000), (1000, 300_000)];
    let sizes = [
        1usize, 5, 4095, 4096, 4097, 16_384, 16_385, 20_000, 100_000, 300_000,
    ];
    let run = async {
        for (case, (piece, largest)) in cases.into_iter().enumerate() {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.set_nodelay(true).expect("nodelay");
            let (accepted, _) = listener.accept().await.expect("accept");
            let served = tokio::spawn(echo(acceptor.clone(), accepted));
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let trickle = Trickle {
                tcp,
                piece,
                pause: false,
            };
            let mut tls = connector
                .connect(name, trickle)
                .await
                .unwrap_or_else(|e| panic!("handshake in pieces of {piece}: {e}"));
            let mut sent = 0u64;
            for (i, len) in sizes.into_iter().filter(|&l| l <= largest).enumerate() {
                let out = message(len, case * 100 + i);
                tls.write_all(&out).await.expect("write");
                tls.flush().await.expect("flush");
                let mut back = vec![0u8; len];
                tls.read_exact(&mut back).await.expect("echo");
                assert!(
                    back == out,
                    "message {i} ({len} bytes in pieces of {piece}) came back changed"
                );
                sent += len as u64;
            }
            tls.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.expect("the server's end");
            assert!(rest.is_empty(), "nothing more after the echoes");
            let echoed = served.await.expect("echo task").expect("echo");
            assert_eq!(
                echoed, sent,
                "the server echoed every byte (pieces of {piece})"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("within two minutes");
    let _ = std::fs::remove_dir_all(&dir);
}
