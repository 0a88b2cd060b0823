//! Builds each configured transport and frontend (the one place the daemon names its
//! plug-ins) and starts the transports' accept loops.

use crate::admin;
use crate::config::server::{FrontendConfig, ServerConfig, TransportConfig};
use crate::server::Base;
use crate::transport_set::TransportSet;
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::Arc;
use tunneld_core::frontend::Frontend;
use tunneld_core::hub::Hub;
use tunneld_core::tls::{self, ClientAuth};
use tunneld_core::transport::Transport;
use tunneld_transport_h2_reverse::H2ReverseTransport;

pub(crate) type H2Transports = BTreeMap<String, Arc<H2ReverseTransport>>;

/// Binds the h2-reverse transports (first: a frontend may share its port with one).
pub(crate) async fn bind_h2_transports(
    cfg: &ServerConfig,
    base: &Base,
) -> anyhow::Result<H2Transports> {
    let mut h2_transports = BTreeMap::new();
    for (name, t) in &cfg.transports {
        if let TransportConfig::H2Reverse(c) = t {
            h2_transports.insert(name.clone(), bind_h2(name, c, base).await?);
        }
    }
    Ok(h2_transports)
}

/// Binds one h2-reverse transport.
pub(crate) async fn bind_h2(
    name: &str,
    c: &tunneld_transport_h2_reverse::Config,
    base: &Base,
) -> anyhow::Result<Arc<H2ReverseTransport>> {
    let tls_cfg = crate::https_certs::transport_tls(base, &[tunneld_transport_h2_reverse::ALPN])?;
    let built = H2ReverseTransport::bind(c.clone(), Arc::new(tls_cfg))
        .await
        .with_context(|| format!("transports.{name}"))?;
    Ok(Arc::new(built))
}

/// Builds and binds every frontend.
pub(crate) async fn build_frontends(
    cfg: &ServerConfig,
    base: &Base,
    h2_transports: &H2Transports,
) -> anyhow::Result<BTreeMap<String, Arc<dyn Frontend>>> {
    let mut frontends: BTreeMap<String, Arc<dyn Frontend>> = BTreeMap::new();
    for (name, f) in &cfg.frontends {
        frontends.insert(
            name.clone(),
            build_frontend(cfg, name, f, base, h2_transports).await?,
        );
    }
    Ok(frontends)
}

/// Builds and binds one frontend.
pub(crate) async fn build_frontend(
    cfg: &ServerConfig,
    name: &str,
    f: &FrontendConfig,
    base: &Base,
    h2_transports: &H2Transports,
) -> anyhow::Result<Arc<dyn Frontend>> {
    Ok(match f {
        FrontendConfig::Ports(c) => {
            tunneld_frontend_ports::PortsFrontend::new(name, c.clone(), base.fcx.clone())
                .context("metrics registry")?
        }
        FrontendConfig::Rendezvous(c) => {
            let tls_cfg = tls::server_config(&base.identity, &ClientAuth::None, &[b"http/1.1"])?;
            tunneld_frontend_rendezvous::RendezvousFrontend::bind(
                name,
                c.clone(),
                Arc::new(tls_cfg),
                base.registry.clone(),
                base.auth.clone(),
                base.metrics.clone(),
                base.fcx.limits.clone(),
            )
            .await
            .with_context(|| format!("frontends.{name}.listen {}", c.listen))?
        }
        FrontendConfig::Https(c) => {
            let resolver = crate::https_certs::frontend_resolver(cfg, name, c, base)?;
            let shared = c.transport.as_ref().and_then(|t| {
                h2_transports
                    .get(t)
                    .map(|t| t.clone() as Arc<dyn tunneld_core::transport::SharedTransport>)
            });
            // 2ptth initiators' links are the h2-reverse transport's HTTP/2 client.
            let reverse_links: Arc<dyn tunneld_core::reverse_http::ReverseHttpLinks> =
                Arc::new(tunneld_transport_h2_reverse::H2ReverseLinks);
            tunneld_frontend_https::HttpsFrontend::bind(
                name,
                c.clone(),
                resolver,
                shared,
                Some(reverse_links),
                base.metrics.clone(),
                base.fcx.limits.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("frontends.{name}.listen: {e}"))?
        }
    })
}

/// Builds, binds and starts every transport.
pub(crate) async fn start_transports(
    cfg: &ServerConfig,
    base: &Base,
    hub: &Arc<Hub>,
    h2_transports: &H2Transports,
    mappings: &Arc<crate::mappings::AdminMappings>,
    mapping_writes: Arc<tokio::sync::Mutex<()>>,
) -> anyhow::Result<TransportSet> {
    // threshold's management API, for yamux transports that enable it on their port.
    let management: Arc<dyn tunneld_core::transport::ManagementApi> =
        admin::ThresholdManagement::new(
            hub.clone(),
            mappings.clone(),
            base.store.clone(),
            mapping_writes,
            base.metrics.clone(),
        );
    let mut set = TransportSet::new(&hub.limits, management);
    for (name, t) in &cfg.transports {
        set.start(name, t, (base, hub), h2_transports).await?;
    }
    Ok(set)
}

/// Binds one configured transport (h2-reverse ones are bound already, before the frontends
/// that share their port).
pub(crate) async fn bind_transport(
    name: &str,
    t: &TransportConfig,
    base: &Base,
    h2_transports: &H2Transports,
) -> anyhow::Result<Arc<dyn Transport>> {
    Ok(match t {
        TransportConfig::Yamux(c) => {
            let tls_cfg =
                crate::https_certs::transport_tls(base, &[tunneld_transport_yamux::ALPN])?;
            Arc::new(
                tunneld_transport_yamux::YamuxTransport::bind(
                    c.clone(),
                    Arc::new(tls_cfg),
                    &base.metrics,
                )
                .await
                .with_context(|| format!("transports.{name}"))?,
            )
        }
        TransportConfig::Connect(c) => {
            let tls_cfg =
                crate::https_certs::transport_tls(base, &[tunneld_transport_connect::ALPN])?;
            Arc::new(
                tunneld_transport_connect::ConnectTransport::bind(
                    c.clone(),
                    Arc::new(tls_cfg),
                    base.registry.clone(),
                    base.auth.clone(),
                )
                .await
                .with_context(|| format!("transports.{name}"))?,
            )
        }
        TransportConfig::H2Reverse(_) => match h2_transports.get(name) {
            Some(t) => t.clone(),
            None => anyhow::bail!("transports.{name}: not bound"),
        },
        TransportConfig::Websocket(c) => {
            let tls_cfg = match (&c.cert, &c.key) {
                (Some(cert), Some(key)) => {
                    let id = tls::ServerIdentity::load(cert, key)
                        .with_context(|| format!("transports.{name}.cert"))?;
                    Some(Arc::new(tls::server_config(
                        &id,
                        &ClientAuth::None,
                        &[b"http/1.1"],
                    )?))
                }
                _ => None,
            };
            tunneld_transport_websocket::WebsocketTransport::bind(c.clone(), tls_cfg, &base.metrics)
                .await
                .with_context(|| format!("transports.{name}"))?
        }
        TransportConfig::Ssh(c) => Arc::new(
            tunneld_transport_ssh::SshTransport::bind(
                c.clone(),
                &base.state_dir,
                base.auth.clone(),
                &base.metrics,
            )
            .await
            .with_context(|| format!("transports.{name}"))?,
        ),
    })
}
