//! The quick modes' configs (`tunnelc tcp ...`, `tunnelc http ...`): a whole client config
//! from the command line, with TPoT's user defaults for `http`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tunneld_client::config::client::{
    ClientConfig, ClientTls, Reconnect, TransportKind, TunnelConfig,
};
use tunneld_client::config::log::LogConfig;
use tunneld_core::auth::Secret;
use tunneld_core::proto::TunnelKind;
use tunneld_core::proxy_protocol;

use crate::{HttpArgs, Quick, TrustArgs};

/// A `tunnelc http` target that is none of the forms it takes.
#[derive(Debug, thiserror::Error)]
#[error("target `{0}`: give a port, host:port or http://host:port")]
struct BadTarget(String);

/// `port`, `host:port` or `http://host:port` -> (address to connect, Host to send).
fn http_target(t: &str) -> Result<(String, String), BadTarget> {
    let t = t.trim().trim_end_matches('/');
    let t = t.strip_prefix("http://").unwrap_or(t);
    if let Ok(port) = t.parse::<u16>() {
        return Ok((format!("127.0.0.1:{port}"), format!("localhost:{port}")));
    }
    match tunneld_client::config::client::split_host_port(t) {
        Some(_) => Ok((t.to_string(), t.to_string())),
        None => Err(BadTarget(t.to_string())),
    }
}

fn http_config(a: HttpArgs) -> Result<ClientConfig, Vec<String>> {
    let file = tunneld_client::config::user::path();
    let d = tunneld_client::config::user::load(file.as_deref()).map_err(|e| vec![e])?;
    let (local, host) = http_target(&a.target).map_err(|e| vec![e.to_string()])?;
    let Some(server) = a.server.or(d.server) else {
        return Err(vec![format!(
            "server: give --server http(s)://host[:port] or set `server:` in {}",
            file.map(|f| f.display().to_string())
                .unwrap_or_else(|| "~/.config/tunnelc/config.yaml".into())
        )]);
    };
    let no_rewrite = a.no_host_rewrite || (d.no_host_rewrite && a.http_host.is_none());
    let host_header = if no_rewrite {
        None
    } else {
        Some(a.http_host.or(d.http_host).unwrap_or(host))
    };
    let token = a.token.or(d.token.map(|t| t.0));
    let auth_key = a.auth_key.or(d.auth_key.map(|k| k.0));
    let mut tunnels = BTreeMap::new();
    tunnels.insert(
        "http".to_string(),
        TunnelConfig {
            reuse_connections: true,
            kind: TunnelKind::Http,
            local,
            remote_port: None,
            frontend: None,
            subdomain: a.subdomain.or(d.subdomain),
            proxy_protocol: None,
            host_header,
        },
    );
    let mut cfg = quick_base(
        server,
        a.trust.server_name.or(d.server_name),
        TransportKind::Websocket,
        (a.trust.ca.or(d.ca), a.trust.pin.or(d.pin)),
        tunnels,
    );
    cfg.token = token.map(Secret);
    cfg.auth_key = auth_key.map(Secret);
    Ok(cfg)
}

/// A quick mode's config: defaults everywhere but the server, trust and tunnels.
fn quick_base(
    server: String,
    server_name: Option<String>,
    transport: TransportKind,
    (ca, pin): (Option<PathBuf>, Option<String>),
    tunnels: BTreeMap<String, TunnelConfig>,
) -> ClientConfig {
    ClientConfig {
        server,
        servers: Vec::new(),
        server_name,
        transport,
        token: None,
        auth_key: None,
        max_message: 1 << 20,
        max_conversations: 4096,
        tls: ClientTls {
            ca,
            pin,
            cert: None,
            key: None,
        },
        reconnect: Reconnect::default(),
        yamux: Default::default(),
        h2: Default::default(),
        accept_server_mappings: false,
        connect_timeout: std::time::Duration::from_secs(10),
        log: LogConfig::default(),
        worker_threads: None,
        tunnels,
        rendezvous: BTreeMap::new(),
        inspect: Default::default(),
    }
}

/// The client config of a quick mode (`tcp` or `http`).
pub(crate) fn quick_config(q: Quick) -> Result<ClientConfig, Vec<String>> {
    let q = match q {
        Quick::Http(a) => return http_config(a),
        tcp => tcp,
    };
    let Quick::Tcp {
        local,
        server,
        token,
        trust: TrustArgs {
            ca,
            pin,
            server_name,
        },
        remote_port,
        name,
        proxy_protocol: pp,
    } = q
    else {
        return Err(vec!["unknown quick mode".into()]);
    };
    let mut tunnels = BTreeMap::new();
    tunnels.insert(
        name,
        TunnelConfig {
            reuse_connections: true,
            kind: TunnelKind::Tcp,
            local,
            remote_port,
            frontend: None,
            subdomain: None,
            host_header: None,
            proxy_protocol: pp.map(|v| {
                if v == "v2" {
                    proxy_protocol::Version::V2
                } else {
                    proxy_protocol::Version::V1
                }
            }),
        },
    );
    let mut cfg = quick_base(
        server,
        server_name,
        TransportKind::Yamux,
        (ca, pin),
        tunnels,
    );
    cfg.token = Some(Secret(token));
    Ok(cfg)
}
