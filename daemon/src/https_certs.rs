//! Certificates of `https-subdomain` frontends (a fixed one, or tunneld's CA's issued on
//! demand, with ACME's first when configured), and the transports' certificates: tunneld's
//! own identity, or with `tls.acme_from` the named frontend's resolver, so tunnelc can trust
//! a public CA for the transports too.

use crate::acme::challenges::AcmeChallenges;
use crate::config::server::{FrontendConfig, ServerConfig};
use crate::server::Base;
use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tunneld_core::metrics::Metrics;
use tunneld_core::tls::{self, ServerIdentity};
use tunneld_frontend_https::Resolver;

/// The resolver of frontend `name`.
pub(crate) fn https_resolver(
    cfg: &ServerConfig,
    name: &str,
    c: &tunneld_frontend_https::Config,
    acme: &Arc<AcmeChallenges>,
    metrics: &Arc<Metrics>,
    closing: &CancellationToken,
) -> anyhow::Result<Arc<Resolver>> {
    let resolver = match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => Resolver::fixed(
            &ServerIdentity::load(cert, key).with_context(|| format!("frontends.{name}.cert"))?,
        )?,
        _ => Resolver::issued(
            tls::LocalCa::open(&cfg.state_dir.join("tls"))?,
            &c.domain,
            c.compat_2ptth.iter().map(|x| x.hostname.clone()).collect(),
        )?,
    };
    // With ACME: the CA's certificates, tunneld's CA's while none is issued.
    let resolver = match &c.acme {
        Some(a) => resolver.with_source(crate::acme::AcmeIssuer::start(
            name,
            c,
            a,
            &cfg.state_dir,
            acme.clone(),
            crate::metrics::of(metrics),
            closing.clone(),
        )),
        None => resolver,
    };
    Ok(Arc::new(resolver))
}

/// With `tls.acme_from`: the named frontend's resolver, built before any listener (the
/// transports and the frontend share it).
pub(crate) fn transport_resolver(
    cfg: &ServerConfig,
    acme: &Arc<AcmeChallenges>,
    metrics: &Arc<Metrics>,
    closing: &CancellationToken,
) -> anyhow::Result<Option<(String, Arc<Resolver>)>> {
    let Some(from) = &cfg.tls.acme_from else {
        return Ok(None);
    };
    let Some(FrontendConfig::Https(c)) = cfg.frontends.get(from) else {
        anyhow::bail!("tls.acme_from: `{from}` is not an https-subdomain frontend");
    };
    let r = https_resolver(cfg, from, c, acme, metrics, closing)?;
    tracing::info!(
        frontend = %from,
        domain = %c.domain,
        "transports serve the frontend's ACME certificate to clients whose server_name is its domain (trust the ACME CA; a pin would change at each renewal), tunneld's own to the others"
    );
    Ok(Some((from.clone(), r)))
}

/// The TLS config of a transport's listener, with its ALPN ids.
pub(crate) fn transport_tls(base: &Base, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
    Ok(match &base.transport_certs {
        Some((from, r)) => {
            let domain = base
                .transport_domain
                .clone()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let own =
                tunneld_frontend_https::certified(base.identity.chain.clone(), &base.identity.key)
                    .with_context(|| format!("tls.acme_from {from}"))?;
            let both = Arc::new(TransportCerts {
                acme: r.clone(),
                domain,
                own,
            });
            tls::server_config_resolved(both, &base.client_auth, alpn)?
        }
        None => tls::server_config(&base.identity, &base.client_auth, alpn)?,
    })
}

/// A transport's certificates with `tls.acme_from`: the frontend's ACME one for clients that
/// name its domain (none until it is issued), tunneld's own for every other client (so clients trusting tunneld's CA or
/// pinning its certificate keep working).
#[derive(Debug)]
struct TransportCerts {
    acme: Arc<Resolver>,
    domain: String,
    own: Arc<CertifiedKey>,
}

impl ResolvesServerCert for TransportCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            // Until the CA issued it: no certificate, so the client's handshake fails and it
            // retries (tunneld's CA's for the domain would end a tunnelc trusting the public
            // CA as untrusted, which is permanent).
            Some(n) if n.eq_ignore_ascii_case(&self.domain) => {
                self.acme.source_certificate(&self.domain)
            }
            _ => Some(self.own.clone()),
        }
    }
}

/// The resolver frontend `name` uses: the one built for the transports when it is theirs.
pub(crate) fn frontend_resolver(
    cfg: &ServerConfig,
    name: &str,
    c: &tunneld_frontend_https::Config,
    base: &Base,
) -> anyhow::Result<Arc<Resolver>> {
    match &base.transport_certs {
        Some((from, r)) if from == name => Ok(r.clone()),
        _ => https_resolver(cfg, name, c, &base.acme, &base.metrics, &base.closing),
    }
}
