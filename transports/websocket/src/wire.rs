//! TPoT framing: binary WebSocket messages, integers little-endian.
//!
//! ```text
//! control:       0x11 <cmd:u8> <data...>
//! conversation:  0x12 <id:u16le> <cmd:u8> <data...>
//! ```
//!
//! Base commands are TPoT's. The tunneld extensions (`T`, `R`, `A`, `F`) are only sent on a
//! connection that negotiated the `tunneld.1` subprotocol, so an original client never sees
//! them.

use bytes::{BufMut, Bytes, BytesMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

pub const CONTROL: u8 = 0x11;
pub const CONVERSATION: u8 = 0x12;

/// The WebSocket subprotocol our tunnelc asks for to use the extensions.
pub const SUBPROTOCOL: &str = "tunneld.1";
/// The close code for an unknown message type.
pub const CLOSE_UNKNOWN_MESSAGE: u16 = 4180;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `0x11 'G' "TPoT/1 <subdomain>"`: server greeting.
    Greeting(String),
    /// `0x11 'H' <id> <ipv4:4> <port:u16le>`: a new HTTP conversation (TPoT).
    HttpOpen { id: u16, visitor: SocketAddrV4 },
    /// `0x11 'R' <id> <json StreamHeader>`: a new conversation with tunneld's stream header
    /// (extension: any tunnel kind, IPv6 visitors).
    Open { id: u16, header: Bytes },
    /// `0x11 'T' <json>`: hello / welcome / control messages (extension).
    Control(Bytes),
    /// `0x12 <id> 'D' <payload>`.
    Data { id: u16, payload: Bytes },
    /// `0x12 <id> 'P'`: stop sending on this conversation.
    Pause(u16),
    /// `0x12 <id> 'C'`: resume.
    Resume(u16),
    /// `0x12 <id> 'X'`: closed.
    Close(u16),
    /// `0x12 <id> 'N' [reason]`: the local target could not be reached.
    Refused { id: u16, reason: String },
    /// `0x12 <id> 'A'`: connected to the local target (extension).
    Accepted(u16),
    /// `0x12 <id> 'F'`: no more data from the sender; half-close (extension).
    Fin(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("unknown command `{c}` (0x{0:02x})", c = char::from(*.0))]
    UnknownCommand(u8),
    #[error("truncated `{0}` message")]
    Truncated(char),
}

fn id_at(b: &[u8], at: usize, cmd: char) -> Result<u16, WireError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(WireError::Truncated(cmd))
}

/// Decodes one binary message.
pub fn decode(msg: Bytes) -> Result<Msg, WireError> {
    match msg.first() {
        None => Err(WireError::Empty),
        Some(&CONTROL) => {
            let cmd = *msg.get(1).ok_or(WireError::Truncated('?'))?;
            match cmd {
                b'G' => Ok(Msg::Greeting(
                    String::from_utf8_lossy(&msg[2..]).into_owned(),
                )),
                b'H' => {
                    let id = id_at(&msg, 2, 'H')?;
                    let b = msg.get(4..10).ok_or(WireError::Truncated('H'))?;
                    Ok(Msg::HttpOpen {
                        id,
                        visitor: SocketAddrV4::new(
                            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                            u16::from_le_bytes([b[4], b[5]]),
                        ),
                    })
                }
                b'R' => Ok(Msg::Open {
                    id: id_at(&msg, 2, 'R')?,
                    header: msg.slice(4..),
                }),
                b'T' => Ok(Msg::Control(msg.slice(2..))),
                other => Err(WireError::UnknownCommand(other)),
            }
        }
        Some(&CONVERSATION) => {
            let id = id_at(&msg, 1, '?')?;
            let cmd = *msg.get(3).ok_or(WireError::Truncated('?'))?;
            match cmd {
                b'D' => Ok(Msg::Data {
                    id,
                    payload: msg.slice(4..),
                }),
                b'P' => Ok(Msg::Pause(id)),
                b'C' => Ok(Msg::Resume(id)),
                b'X' => Ok(Msg::Close(id)),
                b'N' => Ok(Msg::Refused {
                    id,
                    reason: String::from_utf8_lossy(&msg[4..]).into_owned(),
                }),
                b'A' => Ok(Msg::Accepted(id)),
                b'F' => Ok(Msg::Fin(id)),
                other => Err(WireError::UnknownCommand(other)),
            }
        }
        Some(&other) => Err(WireError::UnknownType(other)),
    }
}

fn conv(id: u16, cmd: u8, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(4 + extra);
    b.put_u8(CONVERSATION);
    b.put_u16_le(id);
    b.put_u8(cmd);
    b
}

fn control(cmd: u8, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(2 + extra);
    b.put_u8(CONTROL);
    b.put_u8(cmd);
    b
}

/// Encodes one message.
pub fn encode(msg: &Msg) -> Bytes {
    match msg {
        Msg::Greeting(s) => {
            let mut b = control(b'G', s.len());
            b.put_slice(s.as_bytes());
            b.freeze()
        }
        Msg::HttpOpen { id, visitor } => {
            let mut b = control(b'H', 8);
            b.put_u16_le(*id);
            b.put_slice(&visitor.ip().octets());
            b.put_u16_le(visitor.port());
            b.freeze()
        }
        Msg::Open { id, header } => {
            let mut b = control(b'R', 2 + header.len());
            b.put_u16_le(*id);
            b.put_slice(header);
            b.freeze()
        }
        Msg::Control(json) => {
            let mut b = control(b'T', json.len());
            b.put_slice(json);
            b.freeze()
        }
        Msg::Data { id, payload } => {
            let mut b = conv(*id, b'D', payload.len());
            b.put_slice(payload);
            b.freeze()
        }
        Msg::Pause(id) => conv(*id, b'P', 0).freeze(),
        Msg::Resume(id) => conv(*id, b'C', 0).freeze(),
        Msg::Close(id) => conv(*id, b'X', 0).freeze(),
        Msg::Refused { id, reason } => {
            let mut b = conv(*id, b'N', reason.len());
            b.put_slice(reason.as_bytes());
            b.freeze()
        }
        Msg::Accepted(id) => conv(*id, b'A', 0).freeze(),
        Msg::Fin(id) => conv(*id, b'F', 0).freeze(),
    }
}

/// The visitor address in a TPoT `H` message: IPv4 as is, IPv4-mapped IPv6 unmapped, other
/// IPv6 as `0.0.0.0` (the original client cannot read more; the `R` extension carries it).
pub fn v4_visitor(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(
            a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            a.port(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_exact_bytes() {
        let h = Msg::HttpOpen {
            id: 0x8001,
            visitor: "10.1.2.3:513".parse().expect("addr"),
        };
        assert_eq!(
            &encode(&h)[..],
            &[0x11, b'H', 0x01, 0x80, 10, 1, 2, 3, 0x01, 0x02]
        );
        assert_eq!(decode(encode(&h)), Ok(h));
        let d = Msg::Data {
            id: 40000,
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(&encode(&d)[..], &[0x12, 0x40, 0x9c, b'D', b'h', b'i']);
        assert_eq!(decode(encode(&d)), Ok(d));
        for m in [
            Msg::Pause(1),
            Msg::Resume(2),
            Msg::Close(65535),
            Msg::Accepted(3),
            Msg::Fin(4),
            Msg::Refused {
                id: 5,
                reason: "no".into(),
            },
            Msg::Greeting("TPoT/1 abc".into()),
            Msg::Control(Bytes::from_static(b"{}")),
            Msg::Open {
                id: 9,
                header: Bytes::from_static(b"{}"),
            },
        ] {
            assert_eq!(decode(encode(&m)), Ok(m));
        }
    }

    #[test]
    fn malformed_messages_are_named() {
        assert_eq!(decode(Bytes::new()), Err(WireError::Empty));
        assert_eq!(
            decode(Bytes::from_static(&[0x13])),
            Err(WireError::UnknownType(0x13))
        );
        assert_eq!(
            decode(Bytes::from_static(&[0x12, 1, 0, b'Z'])),
            Err(WireError::UnknownCommand(b'Z'))
        );
        assert_eq!(
            decode(Bytes::from_static(&[0x11, b'H', 1])),
            Err(WireError::Truncated('H'))
        );
        assert_eq!(
            decode(Bytes::from_static(&[0x12, 1])),
            Err(WireError::Truncated('?'))
        );
    }
}
