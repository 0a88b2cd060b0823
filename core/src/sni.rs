//! Peeking a TLS ClientHello for its server name (SNI) without terminating TLS: the bytes
//! read are returned so the caller replays them to whoever does terminate it.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a visitor may send before its ClientHello is complete.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the ClientHello was complete")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl SniError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SniError::NotTls(_) => "not_tls",
            SniError::TooLarge => "client_hello_too_large",
            SniError::Malformed(_) => "bad_client_hello",
            SniError::Closed => "closed",
            SniError::Io(_) => "io",
        }
    }
}

/// A peeked ClientHello: every byte read so far, and the server name if one was sent.
#[derive(Debug)]
pub struct Peeked {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

/// Reads TLS records from `io` until one whole ClientHello message is buffered, then parses
/// its server name. Bounded by [`MAX_CLIENT_HELLO`]; the caller bounds the time.
pub async fn read_client_hello<R: AsyncRead + Unpin>(io: &mut R) -> Result<Peeked, SniError> {
    let mut raw = Vec::with_capacity(1024);
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        // One record header, then its body.
        fill(io, &mut raw, pos + 5).await?;
        let hdr = &raw[pos..pos + 5];
        if hdr[0] != 0x16 {
            return Err(SniError::NotTls(hdr[0]));
        }
        if hdr[1] != 3 {
            return Err(SniError::Malformed("record version is not 3.x"));
        }
        let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        if pos + 5 + len > MAX_CLIENT_HELLO {
            return Err(SniError::TooLarge);
        }
        fill(io, &mut raw, pos + 5 + len).await?;
        handshake.extend_from_slice(&raw[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(SniError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let body_len =
                u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if body_len + 4 > MAX_CLIENT_HELLO {
                return Err(SniError::TooLarge);
            }
            if handshake.len() >= body_len + 4 {
                let server_name = parse_client_hello(&handshake[4..4 + body_len])?;
                return Ok(Peeked {
                    bytes: raw,
                    server_name,
                });
            }
        }
    }
}

async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), SniError> {
    // On the heap: an array held across the await would make every visitor's task (whose
    // future holds this one's state) 4 KiB larger for the connection's whole life.
    let mut chunk = Vec::new();
    while buf.len() < want {
        if chunk.is_empty() {
            chunk = vec![0u8; 4096];
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(SniError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_CLIENT_HELLO + 5 {
            return Err(SniError::TooLarge);
        }
    }
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, SniError> {
        Ok(self.take(1, what)?[0] as usize)
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// The server name in a ClientHello body (after the 4-byte handshake header).
pub fn parse_client_hello(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut c = Cursor(body);
    c.take(2 + 32, "truncated version or random")?;
    let n = c.u8("truncated session id")?;
    c.take(n, "truncated session id")?;
    let n = c.u16("truncated cipher suites")?;
    c.take(n, "truncated cipher suites")?;
    let n = c.u8("truncated compression methods")?;
    c.take(n, "truncated compression methods")?;
    if c.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let n = c.u16("truncated extensions")?;
    let mut exts = Cursor(c.take(n, "extensions longer than the message")?);
    while !exts.0.is_empty() {
        let kind = exts.u16("truncated extension")?;
        let len = exts.u16("truncated extension")?;
        let data = exts.take(len, "extension longer than the list")?;
        if kind != 0 {
            continue;
        }
        let mut sn = Cursor(data);
        let list_len = sn.u16("truncated server_name list")?;
        let mut list = Cursor(sn.take(list_len, "server_name list too long")?);
        while !list.0.is_empty() {
            let name_type = list.u8("truncated server name")?;
            let len = list.u16("truncated server name")?;
            let name = list.take(len, "server name too long")?;
            if name_type == 0 {
                let s = std::str::from_utf8(name)
                    .ok()
                    .filter(|s| {
                        !s.is_empty()
                            && s.len() <= 253
                            && s.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
                            })
                    })
                    .ok_or(SniError::Malformed("server name is not a DNS name"))?;
                return Ok(Some(crate::hostglob::normalize(s)));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record carrying `name`, split into records of `split` bytes.
    pub(crate) fn client_hello(name: Option<&str>, split: usize) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        // An unrelated extension first (supported_versions).
        exts.extend([0, 43, 0, 3, 2, 3, 4]);
        if let Some(n) = name {
            let n = n.as_bytes();
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend([0, 0]);
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut out = Vec::new();
        for chunk in hs.chunks(split) {
            out.extend([0x16, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    #[tokio::test]
    async fn finds_the_name_across_records() {
        for split in [5, 40, 4096] {
            let mut hello = client_hello(Some("Api.Example.com"), split);
            hello.extend(b"trailing application bytes");
            let p = read_client_hello(&mut &hello[..]).await.expect("parse");
            assert_eq!(p.server_name.as_deref(), Some("api.example.com"));
            assert!(hello.starts_with(&p.bytes));
        }
        let p = read_client_hello(&mut &client_hello(None, 4096)[..])
            .await
            .expect("parse");
        assert_eq!(p.server_name, None);
    }

    #[tokio::test]
    async fn rejects_garbage_cleanly() {
        let e = read_client_hello(&mut &b"GET / HTTP/1.1\r\n\r\n"[..])
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "not_tls");
        let hello = client_hello(Some("a.example"), 4096);
        let e = read_client_hello(&mut &hello[..20]).await.unwrap_err();
        assert_eq!(e.reason(), "closed");
        let mut big = vec![0x16, 3, 1, 0x40, 0x01];
        big.extend(vec![0u8; 0x4001]);
        let e = read_client_hello(&mut &big[..]).await.unwrap_err();
        assert_eq!(e.reason(), "client_hello_too_large");
        // A body whose lengths lie.
        let mut bad = client_hello(Some("a.example"), 4096);
        let at = bad.len() - 11; // the high byte of the name's length
        bad[at] = 0xff;
        assert!(read_client_hello(&mut &bad[..]).await.is_err());
        // Every truncation of a body is an error, never a panic.
        let hello = client_hello(Some("a.example"), 4096);
        let body = &hello[9..];
        for n in 0..body.len() {
            let _ = parse_client_hello(&body[..n]);
        }
    }

    #[test]
    fn the_peeks_future_holds_no_read_buffer() {
        // It is part of every ports visitor's task, for the task's whole life.
        let mut r: &[u8] = b"";
        let mut buf = Vec::new();
        let f = fill(&mut r, &mut buf, 5);
        assert!(
            std::mem::size_of_val(&f) < 512,
            "{} bytes",
            std::mem::size_of_val(&f)
        );
    }
}
