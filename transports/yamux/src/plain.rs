//! threshold's plain-TCP listener (`threshold.plain_listen`, for `UseTls: false`
//! deployments): the control CONNECT with the identity from its header, then the same session
//! as over TLS.

use crate::server::YamuxTransport;
use crate::threshold;
use crate::threshold_session::run_threshold;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_core::limits::Permit;
use tunneld_core::transport::TransportContext;

impl YamuxTransport {
    /// A plain-TCP threshold client (`threshold.plain_listen`): the CONNECT head (identity
    /// from the header), then the same session as over TLS.
    pub(crate) async fn handle_plain(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        cx: TransportContext,
    ) {
        let Some(t) = self.cfg.threshold.clone() else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        tunneld_core::tls_listener::set_keepalive(&tcp);
        let hs = tokio::time::timeout(cx.handshake_timeout(), async {
            let mut first = [0u8; 8];
            tcp.read_exact(&mut first)
                .await
                .map_err(|_| threshold::Refusal::closed())?;
            if &first != b"CONNECT " {
                return Err(threshold::Refusal::not_connect());
            }
            let head = threshold::read_head(&mut tcp, &first).await?;
            threshold::identify(&head, None, &t).map(|identity| threshold::Caller {
                identity,
                koding: threshold::is_koding(&head),
            })
        })
        .await;
        let caller = match hs {
            Ok(Ok(c)) => c,
            Ok(Err(r)) => {
                if r.status != 0 {
                    let _ = tcp.write_all(&r.response()).await;
                    let _ = tcp.shutdown().await;
                }
                Self::count_handshake(&cx, r.outcome);
                tracing::warn!(transport = %cx.name, %peer, outcome = r.outcome, "plain threshold handshake refused: {}", r.message);
                return;
            }
            Err(_) => {
                Self::count_handshake(&cx, "timeout");
                return;
            }
        };
        run_threshold(tcp, peer, caller, permit, &t, &self, cx).await;
    }
}
