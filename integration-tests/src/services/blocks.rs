//! What the services that write 64 KiB blocks of the test pattern share: one task per
//! connection, and a counter of the bytes written.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves every connection of `l` with `serve(connection, block, written)` on its own task:
/// `block` is 64 KiB of [`crate::pattern`] (`seed`), `written` the counter answered with the
/// address.
pub(super) fn block_server<F, Fut>(
    l: TcpListener,
    seed: u64,
    serve: F,
) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream, Arc<Vec<u8>>, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = l.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let block = Arc::new(crate::pattern(64 << 10, seed));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, block.clone(), written.clone()));
        }
    });
    (addr, counter)
}

/// Writes `total` bytes, `block` after `block` (the last one cut), counting them in
/// `written`; false when the peer went away first.
pub(super) async fn write_blocks<W: AsyncWrite + Unpin>(
    w: &mut W,
    block: &[u8],
    total: u64,
    written: &AtomicU64,
) -> bool {
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if w.write_all(&block[..n]).await.is_err() {
            return false;
        }
        written.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
    true
}
