//! Hand-written HTTP/2 frames, for tests that must misbehave on purpose (floods) or act as a
//! hostile tunnel client. Header blocks use only static-table and literal encodings.

use anyhow::{anyhow, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;
pub const ACK: u8 = 1;
/// GOAWAY/RST_STREAM error code ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 11;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The header block of `GET https://<authority>/`.
pub fn get_block(authority: &str) -> Vec<u8> {
    // :method GET, :scheme https, :path / (static table), :authority as a literal.
    let mut b = vec![0x82, 0x87, 0x84, 0x01, authority.len() as u8];
    b.extend_from_slice(authority.as_bytes());
    b
}

/// A literal header field `a: b` without indexing (5 bytes).
pub const SMALL_FIELD: [u8; 5] = [0x00, 0x01, b'a', 0x01, b'b'];

/// The block of a `:status 200` response.
pub const STATUS_200: [u8; 1] = [0x88];

/// Reads one frame: (type, flags, stream, payload).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = ((head[0] as usize) << 16) | ((head[1] as usize) << 8) | head[2] as usize;
    if len > 1 << 24 {
        return Err(anyhow!("frame of {len} bytes"));
    }
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// Reads frames until a GOAWAY and returns its error code.
pub async fn goaway_code<R: AsyncRead + Unpin>(r: &mut R) -> Result<u32> {
    tokio::time::timeout(crate::WAIT, async {
        loop {
            let (kind, _, _, payload) = read_frame(r).await?;
            if kind == GOAWAY && payload.len() >= 8 {
                return Ok(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no GOAWAY within {:?}", crate::WAIT))?
}
