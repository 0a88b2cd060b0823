//! The one HTTP/1.1 framing follower: where a request's body ends in a byte stream
//! (`Content-Length`, or chunks and trailers), so a reader that checks or rewrites each head
//! of a keep-alive connection finds the next one. The https frontend's framing guard and
//! tunnelc's `Host` rewriting both follow bodies with it; neither changes body bytes.
//!
//! Strict where two parsers could disagree: chunk-size and trailer lines end in exactly one
//! CRLF, chunk sizes are at most 16 hex digits, chunk data is followed by CRLF.

use super::{Framing, FramingError, RequestHead};

/// Longest chunk-size or trailer line accepted.
pub const MAX_LINE: usize = 4096;

/// What follows a request head in the stream.
#[derive(Debug)]
pub enum AfterHead {
    /// The next request head (no body).
    Head,
    /// A body to follow before the next head.
    Body(BodyFollower),
    /// Not HTTP/1 messages any more: after `CONNECT` or an upgrade request.
    Raw,
}

/// What follows `head`: its body, the next head, or raw bytes after `CONNECT` or an
/// upgrade (a server that refuses the upgrade answers with `Connection: close`). Ambiguous
/// framing is refused.
pub fn after_request_head(head: &RequestHead) -> Result<AfterHead, FramingError> {
    let framing = head.framing()?;
    if head.method.eq_ignore_ascii_case("CONNECT")
        || (head.has_token("connection", "upgrade") && head.header("upgrade").is_some())
    {
        return Ok(AfterHead::Raw);
    }
    Ok(match BodyFollower::new(framing) {
        Some(body) => AfterHead::Body(body),
        None => AfterHead::Head,
    })
}

/// Why a body could not be followed (the stream is cut rather than guessed at).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("a chunk or trailer line longer than {MAX_LINE} bytes")]
    LongLine,
    #[error("a chunk or trailer line not ended by CRLF")]
    NoCrlf,
    #[error("a malformed chunk size line `{0}` (not hexadecimal)")]
    ChunkSize(String),
    #[error("chunk data not followed by CRLF")]
    NoCrlfAfterData,
    #[error("more than {MAX_TRAILERS} trailer fields")]
    TooManyTrailers,
    #[error("chunk extensions and trailers over {MAX_EXTRAS} bytes")]
    TooMuchExtra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Body bytes of a known length still due.
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its bytes are still due.
    ChunkEnd(u8),
    Trailers,
    /// Every byte, until the connection closes (a response without framing).
    UntilClose,
}

/// Follows one message body.
#[derive(Debug)]
pub struct BodyFollower {
    state: State,
    /// An incomplete chunk-size or trailer line.
    line: Vec<u8>,
    /// The trailer lines seen (without their CRLF), when kept ([`Self::keep_trailers`]).
    trailers: Option<Vec<Vec<u8>>>,
    /// Bytes of chunk extensions and trailers still allowed, when trailers are kept.
    extras_left: usize,
}

/// Most trailer lines a body may carry when they are kept.
pub const MAX_TRAILERS: usize = 100;
/// Most bytes of chunk extensions and trailers together a body may carry when its trailers
/// are kept (hyper's client allows 16 KiB of each).
pub const MAX_EXTRAS: usize = 16 * 1024;

/// One step of [`BodyFollower::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input that belong to the body (framing included).
    pub used: usize,
    /// Where in the input the payload bytes of this step are (none: framing only).
    pub data: Option<std::ops::Range<usize>>,
    /// The body ended at `used`.
    pub ended: bool,
}

impl BodyFollower {
    /// A follower for a body framed as `framing`; `None` when there is no body.
    pub fn new(framing: Framing) -> Option<Self> {
        let state = match framing {
            Framing::None | Framing::Length(0) => return None,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        Some(Self {
            state,
            line: Vec::new(),
            trailers: None,
            extras_left: MAX_EXTRAS,
        })
    }

    /// A follower for a response body that lasts until the connection closes.
    pub fn until_close() -> Self {
        Self {
            state: State::UntilClose,
            line: Vec::new(),
            trailers: None,
            extras_left: MAX_EXTRAS,
        }
    }

    /// Whether the body lasts until the connection closes.
    pub fn is_until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Keeps the trailer lines of a chunked body ([`Self::take_trailers`]), at most
    /// [`MAX_TRAILERS`] of them and [`MAX_EXTRAS`] bytes with the chunk extensions.
    pub fn keep_trailers(mut self) -> Self {
        self.trailers = Some(Vec::new());
        self
    }

    /// The trailer lines kept, without their CRLF.
    pub fn take_trailers(&mut self) -> Vec<Vec<u8>> {
        self.trailers.take().unwrap_or_default()
    }

    /// The payload bytes still due of a body framed by length (`None` when chunked).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Decodes the body from `input` up to its first run of payload bytes: how much of
    /// the input was used, where that payload is in it, and whether the body ended.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, BodyError> {
        self.step(input, true)
            .map(|(used, data, ended)| Decoded { used, data, ended })
    }

    /// Follows the body through `input`: how many of its bytes belong to the body, and
    /// whether the body ended there (the rest is the next message).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), BodyError> {
        self.step(input, false)
            .map(|(used, _, ended)| (used, ended))
    }

    /// Follows the body through `input`; with `stop_at_data`, only up to the end of the
    /// first run of payload bytes, which it names.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        input: &[u8],
        stop_at_data: bool,
    ) -> Result<(usize, Option<std::ops::Range<usize>>, bool), BodyError> {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Length(n) => {
                    let take = (rest.len() as u64).min(n);
                    let data = Some(pos..pos + take as usize).filter(|_| stop_at_data);
                    pos += take as usize;
                    if n == take {
                        self.state = State::Length(0);
                        return Ok((pos, data, true));
                    }
                    self.state = State::Length(n - take);
                    if data.is_some() {
                        return Ok((pos, data, false));
                    }
                }
                State::UntilClose => {
                    let data = Some(pos..input.len()).filter(|_| stop_at_data);
                    return Ok((input.len(), data, false));
                }
                State::ChunkData(n) => {
                    let take = (rest.len() as u64).min(n);
                    let data = pos..pos + take as usize;
                    pos += take as usize;
                    self.state = match n - take {
                        0 => State::ChunkEnd(2),
                        left => State::ChunkData(left),
                    };
                    if stop_at_data {
                        return Ok((pos, Some(data), false));
                    }
                }
                State::ChunkEnd(due) => {
                    let take = rest.len().min(usize::from(due));
                    let expect = &b"\r\n"[2 - usize::from(due)..][..take];
                    if &rest[..take] != expect {
                        return Err(BodyError::NoCrlfAfterData);
                    }
                    pos += take;
                    self.state = match usize::from(due) - take {
                        0 => State::ChunkSize,
                        left => State::ChunkEnd(left as u8),
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                        self.collect(rest)?;
                        return Ok((input.len(), None, false));
                    };
                    self.collect(&rest[..=nl])?;
                    pos += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    if self.end_line(&line)? {
                        return Ok((pos, None, true));
                    }
                }
            }
        }
        Ok((pos, None, false))
    }

    fn collect(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        self.line.extend_from_slice(bytes);
        if self.line.len() > MAX_LINE {
            return Err(BodyError::LongLine);
        }
        Ok(())
    }

    /// Checks a whole chunk-size or trailer line and moves on; `true` when it was the blank
    /// line that ends the trailers (and the body).
    fn end_line(&mut self, line: &[u8]) -> Result<bool, BodyError> {
        // Exactly one CRLF, at the end: a bare LF (or CR) inside a line is where two
        // parsers could disagree on where the trailers end.
        let crlf =
            line.len() >= 2 && line.ends_with(b"\r\n") && !line[..line.len() - 2].contains(&b'\r');
        if !crlf {
            return Err(BodyError::NoCrlf);
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 2]);
        if self.state == State::Trailers {
            if let (Some(kept), false) = (&mut self.trailers, text.is_empty()) {
                if kept.len() >= MAX_TRAILERS {
                    return Err(BodyError::TooManyTrailers);
                }
                self.extras_left =
                    (self.extras_left.checked_sub(line.len())).ok_or(BodyError::TooMuchExtra)?;
                kept.push(line[..line.len() - 2].to_vec());
            }
            return Ok(text.is_empty());
        }
        let size = text.split(';').next().unwrap_or("").trim();
        if self.trailers.is_some() {
            let extension = text.len() - text.split(';').next().unwrap_or("").len();
            self.extras_left =
                (self.extras_left.checked_sub(extension)).ok_or(BodyError::TooMuchExtra)?;
        }
        let valid =
            !size.is_empty() && size.len() <= 16 && size.bytes().all(|c| c.is_ascii_hexdigit());
        self.state = match u64::from_str_radix(size, 16) {
            Ok(0) if valid => State::Trailers,
            Ok(n) if valid => State::ChunkData(n),
            _ => return Err(BodyError::ChunkSize(text.into_owned())),
        };
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `split`; the body's length and whether it ended.
    fn follow(framing: Framing, input: &[u8], split: usize) -> Result<(usize, bool), BodyError> {
        let mut f = BodyFollower::new(framing).expect("a body");
        let mut used = 0;
        for piece in input.chunks(split) {
            let (n, done) = f.feed(piece)?;
            used += n;
            if done {
                return Ok((used, true));
            }
            assert_eq!(n, piece.len(), "a body that has not ended takes every byte");
        }
        Ok((used, false))
    }

    #[test]
    fn lengths_and_chunks_end_where_the_body_ends_at_any_split() {
        let chunked =
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let body_len = chunked.len() - b"GET / HTTP/1.1\r\n".len();
        for split in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                follow(Framing::Chunked, chunked, split),
                Ok((body_len, true)),
                "split {split}"
            );
            assert_eq!(
                follow(Framing::Length(5), b"Host:GET", split),
                Ok((5, true)),
                "split {split}"
            );
        }
        assert_eq!(follow(Framing::Length(9), b"abc", 2), Ok((3, false)));
        assert!(BodyFollower::new(Framing::Length(0)).is_none());
        assert!(BodyFollower::new(Framing::None).is_none());
    }

    /// Decodes `input` fed in pieces of `split`: the payload, the trailers, whether it ended.
    fn decode_all(framing: Framing, input: &[u8], split: usize) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
        let mut f = BodyFollower::new(framing).expect("a body").keep_trailers();
        let (mut payload, mut pending) = (Vec::new(), Vec::new());
        for piece in input.chunks(split) {
            pending.extend_from_slice(piece);
            while !pending.is_empty() {
                let d = f.decode(&pending).expect("decodes");
                if let Some(r) = d.data.clone() {
                    payload.extend_from_slice(&pending[r]);
                }
                pending.drain(..d.used);
                if d.ended {
                    return (payload, f.take_trailers(), true);
                }
                if d.data.is_none() {
                    break;
                }
            }
        }
        (payload, f.take_trailers(), false)
    }

    #[test]
    fn decoding_gives_the_payload_and_the_trailers_at_any_split() {
        let chunked = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 4096] {
            let (payload, trailers, ended) = decode_all(Framing::Chunked, chunked, split);
            assert_eq!(payload, b"abc0123456789abcdef", "split {split}");
            assert_eq!(trailers, vec![b"X-T: 1".to_vec(), b"Y: 2".to_vec()]);
            assert!(ended);
            let (payload, _, ended) = decode_all(Framing::Length(5), b"hello", split);
            assert_eq!((payload.as_slice(), ended), (&b"hello"[..], true));
        }
        let mut f = BodyFollower::new(Framing::Length(5)).expect("a body");
        let d = f.decode(b"helloNEXT").expect("decodes");
        assert_eq!((d.used, d.data, d.ended), (5, Some(0..5), true));
        let mut f = BodyFollower::new(Framing::Length(9)).expect("a body");
        assert_eq!(f.decode(b"abc").map(|d| d.ended), Ok(false));
        assert_eq!(f.remaining(), Some(6));
        let many = format!("0\r\n{}\r\n", "X: 1\r\n".repeat(MAX_TRAILERS + 1));
        let mut f = BodyFollower::new(Framing::Chunked)
            .expect("a body")
            .keep_trailers();
        assert_eq!(f.decode(many.as_bytes()), Err(BodyError::TooManyTrailers));
        let extended = format!("1;{}\r\nx\r\n", "e".repeat(4000)).repeat(5);
        let mut f = BodyFollower::new(Framing::Chunked)
            .expect("a body")
            .keep_trailers();
        let mut input = extended.as_bytes();
        let err = loop {
            match f.decode(input) {
                Ok(d) if d.used > 0 => input = &input[d.used..],
                Ok(_) => panic!("extensions accepted"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, BodyError::TooMuchExtra);
    }

    #[test]
    fn ambiguous_chunking_is_refused_with_its_reason() {
        let cases: [(&[u8], BodyError); 6] = [
            (b"zz\r\n", BodyError::ChunkSize("zz".into())),
            (b"3\nabc\r\n", BodyError::NoCrlf),
            (b"3\r\nabcXY", BodyError::NoCrlfAfterData),
            (b"0\r\nX: 1\n\r\n", BodyError::NoCrlf),
            (
                b"11111111111111111\r\n",
                BodyError::ChunkSize("11111111111111111".into()),
            ),
            (&[b'1'; MAX_LINE + 2], BodyError::LongLine),
        ];
        for (input, want) in cases {
            assert_eq!(
                follow(Framing::Chunked, input, 3),
                Err(want.clone()),
                "{want}"
            );
        }
        assert!(BodyError::ChunkSize("zz".into())
            .to_string()
            .contains("not hexadecimal"));
    }

    #[test]
    fn connect_and_upgrades_end_http() {
        let head = |text: &[u8]| super::super::parse(text).expect("parses").expect("whole").0;
        let upgrade =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(matches!(after_request_head(&upgrade), Ok(AfterHead::Raw)));
        let connect = head(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert!(matches!(after_request_head(&connect), Ok(AfterHead::Raw)));
        let post = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n");
        assert!(matches!(after_request_head(&post), Ok(AfterHead::Body(_))));
        let get = head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(after_request_head(&get), Ok(AfterHead::Head)));
        let both = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(after_request_head(&both).is_err());
    }
}
