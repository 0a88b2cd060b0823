//! The websocket port's own reading of a visitor's first request: the head, the authority of
//! an absolute-form target, the host without its port, and where the request came from
//! (believing `X-Forwarded-*` only from trusted proxies).

use crate::config::Cidr;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncRead;
use tunneld_core::http1::{read_first_head, HeadError, RequestHead};

/// The lower-cased authority of an absolute-form request target (`http://host:port/path`);
/// `None` for origin-form (`/path`) and anything else.
pub fn absolute_authority(target: &str) -> Option<String> {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo is not part of the host.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(host.to_ascii_lowercase())
}

/// Reads the first request head: the head and every byte read (head and what followed).
/// A head over `max_head` bytes is answered `431`; a connection closed first, not at all
/// (code 0).
pub async fn read_head<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max_head: usize,
) -> Result<(RequestHead, usize, Vec<u8>), (u16, String)> {
    read_first_head(r, max_head).await.map_err(|e| match e {
        HeadError::TooLarge(_) => (
            431,
            format!("the request header block is larger than {max_head} bytes"),
        ),
        HeadError::Closed => (0, "closed".into()),
        e => (400, e.to_string()),
    })
}

/// What the request says about where it came from, believing proxies only when trusted.
pub struct Origin {
    pub visitor: SocketAddr,
    pub scheme: &'static str,
}

/// Where a request came from: the peer itself, unless the peer is a trusted proxy, in which
/// case the right-most `X-Forwarded-For` address that is not a trusted proxy, and the scheme
/// of `X-Forwarded-Proto` (`own` when absent or neither `http` nor `https`).
pub fn origin(head: &RequestHead, peer: SocketAddr, own: &'static str, proxies: &[Cidr]) -> Origin {
    let trusted = |ip: IpAddr| proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer.ip()) {
        return Origin {
            visitor: peer,
            scheme: own,
        };
    }
    // The right-most address that is not a trusted proxy is the visitor.
    let chain: Vec<IpAddr> = head
        .values("x-forwarded-for")
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let visitor = chain
        .iter()
        .rev()
        .find(|ip| !trusted(**ip))
        .or(chain.first())
        .map(|ip| SocketAddr::new(*ip, 0))
        .unwrap_or(peer);
    let scheme = match head.header("x-forwarded-proto").map(|p| p.trim()) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => own,
    };
    Origin { visitor, scheme }
}

/// The host of `host[:port]` (a bracketed IPv6 literal is returned whole).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}
