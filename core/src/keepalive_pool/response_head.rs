//! A kept connection's response head, read by a request's own task ([`super::raw`]): parsed
//! with httparse within the head limit, and its body's framing by RFC 9112 section 6.3.

use crate::http1::follow::BodyFollower;
use crate::http1::{Framing, MAX_HEADERS};
use crate::session::OpenError;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// A parsed response head.
pub(super) struct Parts {
    pub(super) status: StatusCode,
    /// A reason phrase other than the status code's own, passed on as hyper does.
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
}

pub(super) fn too_large(max_head: usize) -> OpenError {
    OpenError::LocalRefused(format!(
        "the local service answered with a response head over the limit ({max_head} bytes, {MAX_HEADERS} fields)"
    ))
}

fn malformed(what: impl std::fmt::Display) -> OpenError {
    OpenError::LocalRefused(format!(
        "the local service answered with a malformed response head: {what}"
    ))
}

/// A response head at the start of `buf`, and its length; `None` when more is needed.
pub(super) fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<(Parts, usize)>, OpenError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(too_large(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(e)),
    };
    let code = resp.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| malformed(format!("status {code}")))?;
    let reason = resp
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| malformed(format!("field name `{}`", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| malformed(format!("the value of `{}`", h.name)))?;
        headers.append(name, value);
    }
    Ok(Some((
        Parts {
            status,
            reason,
            version,
            headers,
        },
        len,
    )))
}

/// Whether `Content-Length` is one field of digits without leading zeros (as written back).
fn single_canonical(h: &HeaderMap) -> bool {
    let mut all = h.get_all(header::CONTENT_LENGTH).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => {
            let b = v.as_bytes();
            !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0')
        }
        _ => false,
    }
}

/// Whether a comma-separated field of `headers` lists `token`.
pub(super) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How the response's body is framed (`None`: it has none), and whether the connection may
/// be kept after it. Framing headers a body read until close would contradict go.
pub(super) fn framing(
    method: &Method,
    parts: &mut Parts,
) -> Result<(Option<BodyFollower>, bool), OpenError> {
    let h = &mut parts.headers;
    let mut keep = !has_token(h, &header::CONNECTION, "close")
        && (parts.version == Version::HTTP_11 || has_token(h, &header::CONNECTION, "keep-alive"));
    let status = parts.status;
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((None, keep));
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        // The last coding of the last line; a line that is not text is not chunked.
        let chunked_last = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').map(str::trim).rfind(|c| !c.is_empty()))
            .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        if h.remove(header::CONTENT_LENGTH).is_some() {
            keep = false;
        }
        if chunked_last && parts.version == Version::HTTP_11 {
            let f = BodyFollower::new(Framing::Chunked).map(BodyFollower::keep_trailers);
            return Ok((f, keep));
        }
        // Read until close; the encodings stay for the visitor to undo.
        return Ok((Some(BodyFollower::until_close()), false));
    }
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let text = std::str::from_utf8(part).unwrap_or("").trim();
            let n =
                (!text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| malformed(format!("Content-Length `{text}`")))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("two different Content-Length values"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => {
            // One field, as the visitor's side accepts it (left as it is when it is that).
            if !single_canonical(h) {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((BodyFollower::new(Framing::Length(n)), keep))
        }
        None => Ok((Some(BodyFollower::until_close()), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Content-Length` the visitor's side gets, for a response head.
    fn length_after(head: &[u8]) -> Vec<Vec<u8>> {
        let (mut parts, _) = parse_head(head, 8192).ok().flatten().expect("a whole head");
        framing(&Method::GET, &mut parts).expect("framed");
        parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn content_length_goes_on_as_one_field_of_plain_digits() {
        for (head, want) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n"[..],
                &b"13"[..],
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"0"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n", b"7"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n", b"2"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
                b"2",
            ),
        ] {
            assert_eq!(length_after(head), [want.to_vec()], "{head:?}");
        }
    }
}
