//! A bounded HTTP/1.x request-head reader, for listeners that hand a connection on as raw
//! bytes after looking at its first request (rendezvous, CONNECT), where a full HTTP server
//! would be in the way.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

pub mod follow;

/// Largest request head accepted.
pub const MAX_HEAD: usize = crate::limits::DEFAULT_MAX_HEAD;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a complete request head")]
    Closed,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

impl HeadError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::Closed => "closed",
            HeadError::TooLarge(_) => "head_too_large",
            HeadError::Malformed(_) => "malformed_head",
            HeadError::Io(_) => "io",
        }
    }
}

impl HeadError {
    /// The HTTP status that answers it: 431 for a head over the limit, else 400.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            _ => 400,
        }
    }
}

/// `text` with every character a header value cannot carry (controls, non-ASCII) replaced
/// by `?`, so a reason can be sent in a header.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Body framing a request may not use: ambiguous framing is how requests are smuggled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding are present")]
    LengthAndEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    EncodingInHttp10,
    #[error("Transfer-Encoding `{0}` has an empty coding")]
    EmptyCoding(String),
    #[error("Transfer-Encoding `{0}` applies chunked more than once")]
    ChunkedTwice(String),
    #[error("Transfer-Encoding `{0}` does not end in chunked")]
    NotChunkedLast(String),
    #[error("Content-Length `{0}` is not a number")]
    BadLength(String),
    #[error("Content-Length is out of range")]
    LengthOutOfRange,
    #[error("more than one Content-Length")]
    TwoLengths,
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Reads one request head. `buf` holds bytes already read (a previous request's surplus);
/// on return it holds the bytes read past the head (the start of the body, or pipelined data).
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<RequestHead, HeadError> {
    read_head_limited(r, buf, MAX_HEAD).await
}

/// [`read_head`] with a head limit of `max` bytes.
pub async fn read_head_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<RequestHead, HeadError> {
    let (head, len) = fill_head(r, buf, max).await?;
    buf.drain(..len);
    Ok(head)
}

/// Reads a connection's first request head, keeping every byte read: the head, its length,
/// and the bytes (the head, then whatever followed it), for a caller that forwards them raw.
pub async fn read_first_head<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max: usize,
) -> Result<(RequestHead, usize, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let (head, len) = fill_head(r, &mut buf, max).await?;
    Ok((head, len, buf))
}

/// Reads into `buf` until it starts with a complete head of at most `max` bytes.
async fn fill_head<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(RequestHead, usize), HeadError> {
    // On the heap, and only once a read is needed: a buffer held across an await is part of
    // the future, and a connection's task is as large as its largest state for as long as
    // the connection lives (docs/benchmarks.md, "Buffers off the connection tasks").
    let mut chunk = Vec::new();
    loop {
        if let Some((head, len)) = parse(buf)? {
            return Ok((head, len));
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
        if chunk.is_empty() {
            chunk = vec![0u8; 4096];
        }
        let want = chunk.len().min(max - buf.len());
        let n = r.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a request head at the start of `buf`: the head and its length, or `None` when
/// more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed(format!(
                "more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let head = RequestHead {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        minor: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, len)))
}

impl RequestHead {
    /// Every value of a header field (names compare case-insensitively).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of a header field, as text.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether a comma-separated header (Connection, Upgrade) lists `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name).any(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }

    /// The head re-encoded without the named fields.
    pub fn encode_without(&self, drop: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor).as_bytes(),
        );
        for (n, v) in &self.headers {
            if drop.iter().any(|d| d.eq_ignore_ascii_case(n)) {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// How the body is delimited; ambiguous framing (the request smuggling vectors) is an
    /// error naming the problem.
    pub fn framing(&self) -> Result<Framing, FramingError> {
        let lengths: Vec<&[u8]> = self.values("content-length").collect();
        let encodings: Vec<&[u8]> = self.values("transfer-encoding").collect();
        if !lengths.is_empty() && !encodings.is_empty() {
            return Err(FramingError::LengthAndEncoding);
        }
        if !encodings.is_empty() {
            if self.minor == 0 {
                return Err(FramingError::EncodingInHttp10);
            }
            let all = encodings
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let codings: Vec<&str> = all.split(',').map(str::trim).collect();
            if codings.iter().any(|c| c.is_empty()) {
                return Err(FramingError::EmptyCoding(all));
            }
            let chunked = codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case("chunked"))
                .count();
            if chunked > 1 {
                return Err(FramingError::ChunkedTwice(all));
            }
            let last = codings.last().copied().unwrap_or("");
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(FramingError::NotChunkedLast(all));
            }
            return Ok(Framing::Chunked);
        }
        match lengths.as_slice() {
            [] => Ok(Framing::None),
            [one] => {
                let s = std::str::from_utf8(one).unwrap_or("").trim();
                if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 19 {
                    return Err(FramingError::BadLength(
                        String::from_utf8_lossy(one).into_owned(),
                    ));
                }
                s.parse::<u64>()
                    .map(Framing::Length)
                    .map_err(|_| FramingError::LengthOutOfRange)
            }
            _ => Err(FramingError::TwoLengths),
        }
    }

    /// Whether the connection closes after this request (HTTP/1.0 default, `Connection: close`).
    pub fn closes(&self) -> bool {
        if self.has_token("connection", "close") {
            return true;
        }
        self.minor == 0 && !self.has_token("connection", "keep-alive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head(bytes: &[u8]) -> (Result<RequestHead, HeadError>, Vec<u8>) {
        let mut r = bytes;
        let mut buf = Vec::new();
        let h = read_head(&mut r, &mut buf).await;
        (h, buf)
    }

    #[tokio::test]
    async fn reads_a_head_and_keeps_the_surplus() {
        let (h, rest) =
            head(b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcNEXT").await;
        let h = h.expect("head");
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/x?y=1");
        assert_eq!(h.header("host"), Some("a"));
        assert_eq!(h.framing(), Ok(Framing::Length(3)));
        assert_eq!(rest, b"abcNEXT");
        assert_eq!(
            h.encode_without(&["host"]),
            b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn refuses_malformed_oversized_and_truncated_heads() {
        assert!(matches!(
            head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await.0,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head(b"GET / HTTP/1.1\r\nHost: a\r\n").await.0,
            Err(HeadError::Closed)
        ));
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert!(matches!(head(&big).await.0, Err(HeadError::TooLarge(_))));
    }

    #[tokio::test]
    async fn ambiguous_framing_is_an_error() {
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip,,chunked\r\n\r\n",
        ] {
            let h = head(bad.as_bytes()).await.0.expect("parses");
            assert!(h.framing().is_err(), "{bad:?} accepted");
        }
        let h = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")
            .await
            .0
            .expect("parses");
        assert_eq!(h.framing(), Ok(Framing::Chunked));
    }

    #[test]
    fn the_head_readers_future_holds_no_read_buffer() {
        // It is part of every connection task that reads a head, for the task's whole life.
        let mut r: &[u8] = b"";
        let mut buf = Vec::new();
        let f = fill_head(&mut r, &mut buf, 8192);
        assert!(
            std::mem::size_of_val(&f) < 512,
            "{} bytes",
            std::mem::size_of_val(&f)
        );
    }
}
