//! PROXY protocol headers (v1 text, v2 binary) that tunnelc writes toward a local service so
//! it sees the visitor's address. Specification: haproxy's `proxy-protocol.txt`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Encodes the header for a connection from `src` to `dst`. Mixed address families are
/// mapped to IPv6 (v4-mapped), since the header carries one family.
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, command PROXY
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            out
        }
    }
}

fn v6(a: SocketAddr) -> std::net::Ipv6Addr {
    match a {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (
            SocketAddr::new(v6(src).into(), src.port()),
            SocketAddr::new(v6(dst).into(), dst.port()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_layouts() {
        let s: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let d: SocketAddr = "127.0.0.1:20000".parse().expect("addr");
        assert_eq!(
            encode(Version::V1, s, d),
            b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 20000\r\n"
        );
        let v2 = encode(Version::V2, s, d);
        assert_eq!(&v2[..12], &V2_SIGNATURE);
        assert_eq!(v2[12], 0x21);
        assert_eq!(v2[13], 0x11);
        assert_eq!(u16::from_be_bytes([v2[14], v2[15]]), 12);
        assert_eq!(&v2[16..20], &[192, 0, 2, 1]);
        assert_eq!(v2.len(), 16 + 12);
        let s6: SocketAddr = "[2001:db8::1]:1".parse().expect("addr");
        let mixed = encode(Version::V1, s6, d);
        assert_eq!(
            mixed,
            b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 20000\r\n"
        );
        assert_eq!(encode(Version::V2, s6, d).len(), 16 + 36);
    }
}
