//! Starting the inspector from tunnelc's flags and config: `--inspect ADDR|off`, then
//! `inspect.address`, then (for `tunnelc http`) 127.0.0.1:4040 or the next free port.

use super::store::Caps;
use super::Inspector;
use crate::config::client::ClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the inspector goes: an address and whether the next nine ports may stand in.
pub struct Plan {
    address: SocketAddr,
    fallback: bool,
    caps: Caps,
}

pub fn plan(
    flag: Option<&str>,
    cfg: &ClientConfig,
    http_mode: bool,
) -> Result<Option<Plan>, String> {
    let caps = cfg.inspect.caps();
    let (address, fallback) = match (flag, cfg.inspect.address) {
        (Some("off"), _) => return Ok(None),
        (Some(a), _) => {
            let address: SocketAddr = a
                .parse()
                .map_err(|_| format!("--inspect: `{a}` is not ip:port (or `off`)"))?;
            if !address.ip().is_loopback() {
                return Err(format!("--inspect: {address} is not a loopback address; the inspector shows request bodies and cookies to whoever reaches it"));
            }
            (address, false)
        }
        (None, Some(a)) => (a, false),
        (None, None) if http_mode => (
            crate::config::inspect::QUICK_DEFAULT
                .parse()
                .map_err(|_| "the default inspector address".to_string())?,
            true,
        ),
        (None, None) => return Ok(None),
    };
    Ok(Some(Plan {
        address,
        fallback,
        caps,
    }))
}

/// Binds and serves the inspector; `None` (with a warning) when a default address and its
/// stand-ins are all taken.
pub async fn start(plan: Plan) -> anyhow::Result<Option<(Arc<Inspector>, SocketAddr)>> {
    let tries = if plan.fallback { 10 } else { 1 };
    let mut last = None;
    for i in 0..tries {
        let mut address = plan.address;
        address.set_port(plan.address.port().saturating_add(i));
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                let bound = listener.local_addr()?;
                let inspector = Inspector::new(plan.caps);
                super::web::serve(inspector.clone(), listener)?;
                return Ok(Some((inspector, bound)));
            }
            Err(e) => last = Some((address, e)),
        }
    }
    let Some((address, e)) = last else {
        return Ok(None);
    };
    if plan.fallback {
        tracing::warn!(
            "no request inspector: ports {}..={} are taken ({e})",
            plan.address.port(),
            address.port()
        );
        return Ok(None);
    }
    Err(anyhow::anyhow!(
        "cannot serve the inspector at {address}: {e}"
    ))
}
