//! One conversation as a byte stream ([`Conversation`]): reads drain its receive buffer
//! (sending `C` once a paused buffer is below [`LOW_WATER`]), writes become `D` messages of
//! at most [`CHUNK`] bytes on the shared data queue and wait while the peer paused it, a
//! shutdown sends `F` (or `X` to original TPoT clients), and dropping it sends `X` unless it
//! already ended (`X` either way, or `F` both ways).

use super::{Conv, Shared, CHUNK, LOW_WATER};
use crate::wire::{encode, Msg};
use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;

/// One conversation as a byte stream.
pub struct Conversation {
    pub(super) conv: Arc<Conv>,
    pub(super) shared: Arc<Shared>,
    pub(super) sender: PollSender<Bytes>,
}

impl Conversation {
    pub fn id(&self) -> u16 {
        self.conv.id
    }

    /// Answers the peer's open: `A` (connected) or `N` with a reason (not reachable).
    pub fn answer(&self, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                if self.shared.native {
                    self.shared.send_ctl(&Msg::Accepted(self.conv.id));
                }
            }
            Err(reason) => {
                let reason = if self.shared.native { reason } else { "" };
                self.conv.lock().closed = true;
                self.shared.send_ctl(&Msg::Refused {
                    id: self.conv.id,
                    reason: reason.to_string(),
                });
                self.shared.remove(&self.conv);
            }
        }
    }

    fn send_final(&mut self, cx: &mut Context<'_>, msg: Msg) -> Poll<io::Result<()>> {
        ready!(self.sender.poll_reserve(cx)).map_err(|_| broken())?;
        self.sender.send_item(encode(&msg)).map_err(|_| broken())?;
        Poll::Ready(Ok(()))
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the conversation is closed")
}

impl AsyncRead for Conversation {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.conv.lock();
        if let Some(front) = st.rx.front_mut() {
            let n = buf.remaining().min(front.len());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                st.rx.pop_front();
            }
            st.rx_bytes -= n;
            if st.we_paused && st.rx_bytes <= LOW_WATER {
                st.we_paused = false;
                if !st.closed {
                    self.shared.send_ctl(&Msg::Resume(self.conv.id));
                }
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(r) = &st.refused {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                r.clone(),
            )));
        }
        if st.eof {
            return Poll::Ready(Ok(()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Conversation {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        {
            let mut st = self.conv.lock();
            if st.closed || st.sent_fin {
                return Poll::Ready(Err(broken()));
            }
            if st.peer_paused {
                st.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.sender.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(CHUNK);
        let msg = Msg::Data {
            id: self.conv.id,
            payload: Bytes::copy_from_slice(&buf[..n]),
        };
        self.sender.send_item(encode(&msg)).map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (closed, sent_fin) = {
            let st = self.conv.lock();
            (st.closed, st.sent_fin)
        };
        if closed || sent_fin {
            return Poll::Ready(Ok(()));
        }
        let id = self.conv.id;
        if self.shared.native {
            ready!(self.send_final(cx, Msg::Fin(id)))?;
            let done = {
                let mut st = self.conv.lock();
                st.sent_fin = true;
                st.eof
            };
            if done {
                self.shared.remove(&self.conv);
            }
        } else {
            // TPoT has no half-close: `X` ends the conversation both ways.
            ready!(self.send_final(cx, Msg::Close(id)))?;
            {
                let mut st = self.conv.lock();
                st.closed = true;
                st.eof = true;
                st.wake();
            }
            self.shared.remove(&self.conv);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let finished = {
            let mut st = self.conv.lock();
            let finished = st.closed || (st.sent_fin && st.eof);
            st.closed = true;
            finished
        };
        if !finished {
            self.shared.send_ctl(&Msg::Close(self.conv.id));
        }
        self.shared.remove(&self.conv);
    }
}
