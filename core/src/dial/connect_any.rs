//! TCP to a server name that may stand for several addresses (a cluster behind one DNS
//! name): every address is tried, starting at a random one, each for a bounded time, so
//! sessions spread over the nodes and a dead node's address (refused, or silent) costs at
//! most [`PER_ADDRESS`] before the next is tried.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long one address of several may take to connect before the next is tried (the last
/// one tried has the caller's whole deadline).
pub const PER_ADDRESS: Duration = Duration::from_secs(3);

/// Connects to one of the addresses `server` resolves to; the error names each address tried.
pub async fn connect_any<A: ToSocketAddrs>(server: A) -> io::Result<TcpStream> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(server).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolves to no address",
        ));
    }
    let pick = u64::from_le_bytes(crate::auth::random_bytes::<8>()) % addrs.len() as u64;
    addrs.rotate_left(pick as usize);
    let last = addrs.len() - 1;
    let mut failed = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let attempt = TcpStream::connect(addr);
        let result = if i == last {
            attempt.await
        } else {
            match tokio::time::timeout(PER_ADDRESS, attempt).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {PER_ADDRESS:?}"),
                )),
            }
        };
        match result {
            Ok(s) => return Ok(s),
            Err(e) if last == 0 => return Err(e),
            Err(e) => failed.push((addr, e)),
        }
    }
    let kind = failed
        .last()
        .map_or(io::ErrorKind::Other, |(_, e)| e.kind());
    let text: Vec<String> = failed.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    Err(io::Error::new(kind, text.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An address where nothing listens (a listener bound, then closed).
    async fn closed() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_dead_address_among_several_is_skipped() {
        let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = [
            closed().await,
            live.local_addr().expect("addr"),
            closed().await,
        ];
        for _ in 0..20 {
            let s = tokio::time::timeout(Duration::from_secs(10), connect_any(&addrs[..]))
                .await
                .expect("bounded")
                .expect("connects to the live address");
            assert_eq!(s.peer_addr().expect("peer"), addrs[1]);
        }
    }

    #[tokio::test]
    async fn every_address_dead_names_each() {
        let addrs = [closed().await, closed().await];
        let e = connect_any(&addrs[..]).await.expect_err("nothing listens");
        let text = e.to_string();
        assert!(
            text.contains(&addrs[0].to_string()) && text.contains(&addrs[1].to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_single_address_keeps_its_own_error() {
        let a = closed().await;
        let e = connect_any(a).await.expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
