//! tunneld side: a TLS listener where hidden servers park connections.

use crate::config::Config;
use async_trait::async_trait;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;
use tunneld_core::auth::Authenticator;
use tunneld_core::http1;
use tunneld_core::limits::Setting;
use tunneld_core::parking::{error_answer, Parker, Parking};
use tunneld_core::tls_listener::{self, Accepted, BoundListener, ListenerSpec};
use tunneld_core::transport::{Transport, TransportContext, TransportError};

pub struct ConnectTransport {
    cfg: Config,
    listener: BoundListener,
    tls: TlsAcceptor,
    parking: Arc<dyn Parking>,
    auth: Arc<Authenticator>,
}

impl ConnectTransport {
    pub async fn bind(
        cfg: Config,
        tls: Arc<rustls::ServerConfig>,
        parking: Arc<dyn Parking>,
        auth: Arc<Authenticator>,
    ) -> Result<Self, TransportError> {
        let listener = BoundListener::for_transport(cfg.listen).await?;
        Ok(Self {
            cfg,
            listener,
            tls: TlsAcceptor::from(tls),
            parking,
            auth,
        })
    }
}

#[async_trait]
impl Transport for ConnectTransport {
    fn kind(&self) -> &'static str {
        "connect"
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.listener.local_addr())
    }

    async fn serve(self: Arc<Self>, cx: TransportContext) -> Result<(), TransportError> {
        let listener = self.listener.take_for_serve()?;
        let spec = ListenerSpec {
            component: cx.name.clone(),
            tls: Some(self.tls.clone()),
            handshake_timeout: Setting::Live(cx.hub.limits.clone(), |l| l.handshake_timeout),
            max_connections: self.cfg.max_connections,
            // Hidden servers park many connections from one address: the total cap only.
            max_per_address: Setting::Fixed(self.cfg.max_connections),
            metrics: cx.metrics.clone(),
            shutdown: cx.shutdown.clone(),
            tasks: cx.tasks.clone(),
        };
        let me = self.clone();
        tls_listener::run(listener, spec, move |a| {
            let (me, cx) = (me.clone(), cx.clone());
            async move { me.handle(a, cx).await }
        })
        .await;
        Ok(())
    }
}

impl ConnectTransport {
    async fn handle(&self, a: Accepted, cx: TransportContext) {
        let Accepted {
            mut io,
            peer,
            cert_cn,
            ..
        } = a;
        let mut buf = Vec::new();
        let head =
            match tokio::time::timeout(cx.handshake_timeout(), http1::read_head(&mut io, &mut buf))
                .await
            {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    cx.metrics
                        .protocol_errors_total
                        .with_label_values(&[&cx.name, e.reason()])
                        .inc();
                    if !matches!(e, http1::HeadError::Closed | http1::HeadError::Io(_)) {
                        let _ = io
                            .write_all(&error_answer(e.status(), &e.to_string()))
                            .await;
                        let _ = io.shutdown().await;
                    }
                    return;
                }
                Err(_) => {
                    cx.metrics
                        .protocol_errors_total
                        .with_label_values(&[&cx.name, "head_timeout"])
                        .inc();
                    return;
                }
            };
        if !head.method.eq_ignore_ascii_case("CONNECT") {
            cx.metrics
                .rendezvous_park_requests_total
                .with_label_values(&["forbidden_target"])
                .inc();
            let msg = format!(
                "this listener takes only CONNECT uuid:<ID>, not {}",
                head.method
            );
            let _ = io.write_all(&error_answer(403, &msg)).await;
            let _ = io.shutdown().await;
            return;
        }
        self.parking
            .clone()
            .serve_parking(
                &self.auth,
                io,
                head,
                buf,
                Parker {
                    peer: peer.ip(),
                    cert_cn,
                },
                cx.shutdown.clone(),
            )
            .await;
    }
}
