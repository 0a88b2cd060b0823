//! What the `connect` transport needs of node-rendezvous parking, without naming the
//! frontend that implements it: a [`Parking`] registry serves one hidden server's
//! `CONNECT uuid:<ID>` connection, and [`error_answer`] is the raw answer both use to refuse.
//! The `rendezvous` frontend implements [`Parking`] for its registry; the daemon hands it to
//! the transport as `Arc<dyn Parking>`.

use crate::auth::Authenticator;
use crate::http1::RequestHead;
use crate::io::BoxIo;
use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Who is parking.
pub struct Parker {
    pub peer: IpAddr,
    /// The common name of a verified client certificate.
    pub cert_cn: Option<String>,
}

/// The error answer, byte for byte: a raw `HTTP/1.1 <code>` and node-rendezvous's JSON body.
pub fn error_answer(code: u16, diagnostic: &str) -> Vec<u8> {
    let text = serde_json::Value::String(diagnostic.to_string());
    format!("HTTP/1.1 {code}\r\n\r\n{{\"error\":{{\"permanent\":false,\"diagnostic\":{text}}}}}")
        .into_bytes()
}

/// Where hidden servers park connections.
#[async_trait]
pub trait Parking: Send + Sync {
    /// Answers one hidden-server CONNECT (its request head already read, `surplus` the
    /// bytes read past it) and, when it parks, holds the socket until a visitor takes it,
    /// the peer closes, a newer connection evicts it, or `shutdown` fires.
    async fn serve_parking(
        self: Arc<Self>,
        auth: &Arc<Authenticator>,
        io: BoxIo,
        head: RequestHead,
        surplus: Vec<u8>,
        who: Parker,
        shutdown: CancellationToken,
    );
}

/// Whether `id` is usable as a rendezvous id: 1-128 letters, digits, `-`, `_`, `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}
