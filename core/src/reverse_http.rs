//! Reversed HTTP links a frontend accepts on its own port: a peer that dialled tunneld and
//! serves HTTP/2 on that connection while tunneld is the client (an original 2ptth initiator
//! on the `https-subdomain` frontend). The `h2-reverse` transport's crate implements
//! [`ReverseHttpLinks`]; the daemon passes it to the frontend, so no frontend depends on a
//! transport.

use crate::http2::H2Tuning;
use crate::io::BoxIo;
use crate::limits::DataLimits;
use crate::session::OpenStream;
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The connection task of a reversed link: runs until the connection ends.
pub type LinkDriver = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// A live reversed link: visitor requests go to its peer with [`OpenStream::request`].
pub trait HttpUpstream: OpenStream {
    /// Whether the connection can no longer carry requests.
    fn is_closed(&self) -> bool;
}

/// Makes tunneld's end of reversed HTTP links.
#[async_trait]
pub trait ReverseHttpLinks: Send + Sync {
    /// The ALPN id original 2ptth initiators offer.
    fn alpn_2ptth(&self) -> &'static [u8];

    /// Runs the HTTP/2 client handshake over `io` (a 2ptth initiator's TLS stream), with
    /// `tuning` made fit for a link ([`H2Tuning::for_link`]). The upstream carries plain
    /// requests only, without tunneld's own headers; the driver runs until the connection
    /// ends.
    async fn connect_2ptth(
        &self,
        io: BoxIo,
        tuning: &H2Tuning,
        limits: &DataLimits,
        keepalive: Duration,
    ) -> Result<(Arc<dyn HttpUpstream>, LinkDriver), hyper::Error>;
}
