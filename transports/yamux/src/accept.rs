//! The yamux transport's accept loops: its TLS port and threshold's plain-TCP port, both on
//! core's one accept loop with the same admission.

use crate::server::YamuxTransport;
use std::sync::Arc;
use tokio::net::TcpListener;
use tunneld_core::tls_listener::{accept_loop, Tasks};
use tunneld_core::transport::TransportContext;

/// Which of the transport's listeners a connection came in on.
#[derive(Clone, Copy)]
pub(crate) enum Listener {
    Tls,
    /// threshold's plain-TCP listener.
    Plain,
}

impl YamuxTransport {
    /// Accepts on one listener until the drain ends. An address over its
    /// failed-authentication budget costs no handshake.
    pub(crate) async fn accept_on(
        self: Arc<Self>,
        listener: TcpListener,
        which: Listener,
        cx: TransportContext,
    ) {
        accept_loop(
            &listener,
            &cx.shutdown,
            &cx.name,
            Tasks::Tracked(&cx.tasks),
            |peer| cx.admit(peer),
            |tcp, peer, permit| {
                let (me, cx2) = (self.clone(), cx.clone());
                async move {
                    match which {
                        Listener::Tls => me.handle(tcp, peer, permit, cx2).await,
                        Listener::Plain => me.handle_plain(tcp, peer, permit, cx2).await,
                    }
                }
            },
        )
        .await;
    }
}
