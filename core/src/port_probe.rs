//! What a port speaks, when tunnelc's handshake found it speaks something else: one short
//! second connection reads what the server says first (an SSH banner), else asks it in plain
//! HTTP and reads the answer (an HTTP status line, or a TLS record when the port wants TLS).
//! Runs only on the way to a permanent "wrong port" error, so it costs nothing otherwise.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long each of the probe's reads waits.
const WAIT: Duration = Duration::from_millis(700);

/// What the port answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaks {
    /// An SSH server (its banner line, cut to 64 characters).
    Ssh(String),
    /// A plain HTTP server (its status line).
    Http(String),
    /// A TLS server (it answered a TLS record).
    Tls,
    /// Nothing recognisable.
    Unknown,
}

impl Speaks {
    /// The fix for a tunnelc that found this on the port it was given.
    pub fn fix(&self) -> Option<String> {
        match self {
            Speaks::Ssh(banner) => Some(format!(
                "that port speaks SSH (`{banner}`): it is an ssh transport, for OpenSSH (`ssh -R`), not tunnelc; point `server:` at a yamux, h2-reverse, connect or websocket transport's port"
            )),
            Speaks::Http(status) => Some(format!(
                "that port speaks plain HTTP (`{status}`): a websocket transport's port wants `transport: websocket` and `server: http://HOST:PORT` (tunneld's plain web port takes no tunnels)"
            )),
            Speaks::Tls => Some(
                "that port speaks TLS: a yamux, h2-reverse or connect transport wants `transport:` set to it (`server: HOST:PORT`), a websocket transport behind TLS wants `server: https://HOST:PORT`".to_string(),
            ),
            Speaks::Unknown => None,
        }
    }
}

/// Tells what the first bytes of an answer are.
pub fn classify(first: &[u8]) -> Speaks {
    let line = || {
        let end = first
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(first.len())
            .min(64);
        String::from_utf8_lossy(&first[..end]).into_owned()
    };
    match first {
        [b'S', b'S', b'H', b'-', ..] => Speaks::Ssh(line()),
        [b'H', b'T', b'T', b'P', b'/', ..] => Speaks::Http(line()),
        // A TLS record: handshake or alert, version 3.x.
        [0x15 | 0x16, 0x03, ..] => Speaks::Tls,
        _ => Speaks::Unknown,
    }
}

/// Connects to `addr` once more and finds out what it speaks (bounded: two short reads).
pub async fn probe<A: ToSocketAddrs>(addr: A) -> Speaks {
    let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await else {
        return Speaks::Unknown;
    };
    let mut buf = [0u8; 128];
    // Servers that speak first (SSH) say so at once.
    if let Ok(Ok(n)) = tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        if n > 0 {
            return classify(&buf[..n]);
        }
        return Speaks::Unknown;
    }
    let ask = b"GET / HTTP/1.1\r\nHost: tunnelc-probe\r\nConnection: close\r\n\r\n";
    if s.write_all(ask).await.is_err() {
        return Speaks::Unknown;
    }
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => classify(&buf[..n]),
        _ => Speaks::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(
            classify(b"SSH-2.0-tunneld\r\n"),
            Speaks::Ssh("SSH-2.0-tunneld".into())
        );
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"),
            Speaks::Http("HTTP/1.1 400 Bad Request".into())
        );
        assert_eq!(
            classify(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]),
            Speaks::Tls
        );
        assert_eq!(classify(b""), Speaks::Unknown);
        assert_eq!(classify(b"\x00\x01"), Speaks::Unknown);
        let long = [b'S', b'S', b'H', b'-'].repeat(40);
        match classify(&long) {
            Speaks::Ssh(b) => assert_eq!(b.len(), 64),
            other => panic!("{other:?}"),
        }
        assert!(Speaks::Unknown.fix().is_none());
        assert!(Speaks::Tls.fix().is_some_and(|f| f.contains("speaks TLS")));
    }

    #[tokio::test]
    async fn probes_a_banner_and_an_http_answer_on_loopback() {
        let ssh = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ssh_addr = ssh.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = ssh.accept().await {
                let _ = s.write_all(b"SSH-2.0-test\r\n").await;
                let _ = s.read(&mut [0u8; 16]).await;
            }
        });
        assert_eq!(probe(ssh_addr).await, Speaks::Ssh("SSH-2.0-test".into()));

        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http_addr = http.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = http.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
            }
        });
        assert_eq!(
            probe(http_addr).await,
            Speaks::Http("HTTP/1.1 404 Not Found".into())
        );
    }
}
