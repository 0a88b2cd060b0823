//! The single task that owns a yamux connection. All socket I/O of the session happens while
//! this task polls the connection, so it never blocks; other tasks ask it for outbound
//! streams over a channel.

use crate::coalesce::{Coalesce, PollEpoch};
use std::future::poll_fn;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use yamux::{Connection, ConnectionError, Mode, Stream};

pub type OpenReply = oneshot::Sender<Result<Stream, ConnectionError>>;

/// Encrypted bytes a yamux link's TLS (tunnelc's session, a cluster link) may hold unsent
/// (`set_buffer_limit`; rustls's default is 64 KiB): a frame of the default
/// `yamux.split_send_size` (256 KiB) with its 12-byte header, and some room. A visitor's read
/// of 128 KiB becomes one yamux frame, and with its header it goes to TLS in one write
/// ([`Coalesce`]); under the default limit each such frame took three writes, its last 12
/// bytes a record, a syscall and a loopback packet of their own. Per session, not per
/// visitor, and only while the socket is backed up. (HTTP/2 links measured no different with
/// it: left at the default.)
pub const LINK_TLS_BUFFER: usize = (256 + 8) * 1024;

/// Gives a yamux link's TLS connection (client or server side) [`LINK_TLS_BUFFER`].
pub fn widen_tls_buffer<C, D>(conn: &mut C)
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    conn.set_buffer_limit(Some(LINK_TLS_BUFFER));
}

/// A yamux connection whose socket writes are coalesced ([`Coalesce`]), flushed by the polls
/// of the task that [`drive`]s it.
pub struct Driven<T> {
    conn: Connection<Compat<Coalesce<T>>>,
    epoch: PollEpoch,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driven<T> {
    pub fn new(io: T, config: yamux::Config, mode: Mode) -> Self {
        let epoch = PollEpoch::default();
        Self {
            conn: Connection::new(Coalesce::new(io, epoch.clone()).compat(), config, mode),
            epoch,
        }
    }
}

/// Drives the connection until it closes. Outbound stream requests come from `open_rx`;
/// inbound streams go to `on_inbound`.
pub async fn drive<T, F>(
    driven: Driven<T>,
    mut open_rx: mpsc::Receiver<OpenReply>,
    mut on_inbound: F,
) -> Result<(), ConnectionError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Stream),
{
    let Driven { mut conn, epoch } = driven;
    let mut pending: Option<OpenReply> = None;
    let mut openers_gone = false;
    poll_fn(|cx| {
        // Writes put off in the last poll go out now (`Coalesce`).
        epoch.advance();
        loop {
            if pending.is_none() && !openers_gone {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => pending = Some(reply),
                    Poll::Ready(None) => openers_gone = true,
                    Poll::Pending => {}
                }
            }
            if let Some(reply) = pending.take() {
                if reply.is_closed() {
                    continue; // the visitor gave up meanwhile
                }
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(result) => {
                        let fatal =
                            matches!(&result, Err(e) if !matches!(e, ConnectionError::TooManyStreams));
                        let _ = reply.send(result);
                        if fatal {
                            // The connection is gone; poll_next_inbound reports how it ended.
                        } else {
                            continue;
                        }
                    }
                    Poll::Pending => pending = Some(reply),
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => on_inbound(stream),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Why a session's yamux connection ended, counting malformed frames.
pub(crate) fn driver_end(
    r: Result<(), ConnectionError>,
    cx: &tunneld_core::transport::TransportContext,
) -> String {
    match r {
        Ok(()) => "connection closed".to_string(),
        // The connection ending under a frame (a reset, or TLS closed without close_notify
        // when tunnelc stops) is not a malformed frame.
        Err(ConnectionError::Decode(yamux::FrameDecodeError::Io(e))) => {
            format!("connection lost: {e}")
        }
        Err(ConnectionError::Decode(e)) => {
            cx.metrics
                .protocol_errors_total
                .with_label_values(&[&cx.name, "bad_yamux_frame"])
                .inc();
            format!("malformed yamux frame: {e}")
        }
        Err(e) => format!("yamux: {e}"),
    }
}
