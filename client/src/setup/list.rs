//! `tunnelc list`: each set-up tunnel with its endpoints, its state at tunneld, and when its
//! certificate and lease run out.

use super::api_client::ApiClient;
use super::files::{cert_not_after, TunnelDir, CA, CERT, CONFIG};
use super::ssh;
use crate::config::client::ClientConfig;
use crate::provision_api::TunnelInfo;
use anyhow::Context;
use http::Method;
use tunneld_core::clock::{now, rfc3339};

fn until(t: u64) -> String {
    let n = now();
    if t <= n {
        format!("{} (expired)", rfc3339(t))
    } else {
        format!("{} (in {} days)", rfc3339(t), (t - n) / 86_400)
    }
}

/// The API client of a set-up tunnel: from its `client.yaml`, or for an ssh set-up from
/// `tunnel.json` and the `token` file.
fn api_of(t: &TunnelDir) -> anyhow::Result<ApiClient> {
    if let Some(s) = &t.record.ssh {
        let file = t.file(ssh::TOKEN);
        let token =
            std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        let trust = crate::client::trust_of(Some(&t.file(CA)), s.pin.as_ref());
        return ApiClient::new(
            &t.record.server,
            &trust,
            s.server_name.as_deref(),
            Some(token.trim().to_string()),
        );
    }
    let cfg = ClientConfig::load(Some(&t.file(CONFIG)), &[])
        .map_err(|e| anyhow::anyhow!("{}", e.lines.join("; ")))?;
    let trust = crate::client::trust_of(Some(&t.file(CA)), cfg.tls.pin.as_ref());
    ApiClient::new(
        &t.record.server,
        &trust,
        cfg.server_name.as_deref(),
        cfg.token.map(|s| s.0),
    )
}

async fn remote(t: &TunnelDir) -> anyhow::Result<TunnelInfo> {
    let api = api_of(t)?;
    api.json(
        Method::GET,
        &format!("/v1/tunnels/{}", t.record.tunnel.name),
        None,
    )
    .await
}

/// One tunnel as `tunnelc list --json` shows it.
async fn json_of(t: &TunnelDir) -> serde_json::Value {
    let r = &t.record;
    let (state, lease) = match remote(t).await {
        Ok(info) => (info.state, info.expires_at),
        Err(e) => (format!("unknown ({e:#})"), None),
    };
    let endpoints: Vec<_> = r
        .tunnel
        .endpoints
        .iter()
        .map(|e| {
            serde_json::json!({
                "protocol": e.protocol,
                "url": e.url,
                "local_port": r.local.get(&e.protocol).copied(),
            })
        })
        .collect();
    serde_json::json!({
        "name": r.tunnel.name,
        "fqdn": r.tunnel.fqdn,
        "state": state,
        "endpoints": endpoints,
        "certificate_expires_at": cert_not_after(&t.file(CERT)).ok(),
        "lease_expires_at": lease,
        "directory": t.path,
        "ssh_config": r.ssh.as_ref().map(|_| t.file(&ssh::config_file(&r.tunnel.name))),
    })
}

pub async fn run(tunnels: &[TunnelDir], json: bool) {
    if json {
        let mut all = Vec::new();
        for t in tunnels {
            all.push(json_of(t).await);
        }
        say!("{}", serde_json::Value::Array(all));
        return;
    }
    for t in tunnels {
        let r = &t.record;
        let (state, lease) = match remote(t).await {
            Ok(info) => (info.state, info.expires_at.map(until)),
            Err(e) => (format!("unknown ({e:#})"), None),
        };
        say!("{} ({}): {state}", r.tunnel.name, r.tunnel.fqdn);
        for e in &r.tunnel.endpoints {
            let local = r.local.get(&e.protocol).copied().unwrap_or(0);
            say!("  {:<5} {} -> 127.0.0.1:{local}", e.protocol, e.url);
        }
        match cert_not_after(&t.file(CERT)) {
            Ok(at) => say!("  certificate expires {}", until(at)),
            Err(e) => say!("  certificate unreadable: {e:#}"),
        }
        if let Some(l) = lease {
            say!("  lease expires {l}");
        }
        say!("  directory {}", t.path.display());
        if let Some(s) = &r.ssh {
            let cfg = t.file(&ssh::config_file(&r.tunnel.name));
            say!("  ssh {} via {}", s.endpoint, cfg.display());
            say!("  run ssh -F \"{}\" -N {}", cfg.display(), r.tunnel.name);
        }
    }
}
