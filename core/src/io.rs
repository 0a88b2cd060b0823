//! The one stream type every transport hands out.

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream: a TCP socket, a TLS stream, a yamux stream, an HTTP/2 stream.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// A boxed stream. Boxing costs one allocation per stream, never per byte.
pub type BoxIo = Box<dyn AsyncReadWrite>;
