//! Checks a parsed configuration as a whole: each component's own keys, then what ties
//! them together (shared ports, authentication, the control plane), every error naming its
//! key path; and resolves paths against the config file's directory.

use super::*;
use tunneld_core::auth::token_digest;

type Transports = BTreeMap<String, TransportConfig>;
type Frontends = BTreeMap<String, FrontendConfig>;

pub(super) fn validate(raw: Raw, file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
    let mut errors = Vec::new();
    let transports = parse_transports(&raw, &mut errors);
    let frontends = parse_frontends(&raw, &mut errors);
    let tpot_clients = check_sharing(&transports, &frontends, &mut errors);
    if raw.transports.is_empty() {
        errors.push("transports: at least one transport is needed (e.g. `edge: { type: yamux, listen: 127.0.0.1:7000 }`)".into());
    }
    if raw.frontends.is_empty() {
        errors.push("frontends: at least one frontend is needed (e.g. `tcp: { type: ports, range: 20000-20999 }`)".into());
    }
    for (id, t) in &raw.auth.tokens {
        if let Err(e) = token_digest(&t.token.0) {
            errors.push(format!("auth.tokens.{id}.token: {e}"));
        }
    }
    check_auth(&raw, &transports, tpot_clients, &mut errors);
    check_tls(&raw, &mut errors);
    check_limits(&raw, &mut errors);
    check_control(&raw, &transports, &frontends, &mut errors);
    check_acme(&raw, &frontends, &mut errors);
    if let Some(c) = &raw.cluster {
        c.check(&mut errors);
    }
    let max = tunneld_client::config::runtime::MAX_WORKER_THREADS;
    if let Some(n) = raw.worker_threads.filter(|n| !(1..=max).contains(n)) {
        errors.push(format!("worker_threads: {n} is outside 1..={max}"));
    }
    if !errors.is_empty() {
        return Err(ConfigError { lines: errors });
    }
    let cfg = resolve(raw, file, transports, frontends);
    let later = super::listeners::check(&cfg);
    if !later.is_empty() {
        return Err(ConfigError { lines: later });
    }
    Ok(cfg)
}

fn parse_transports(raw: &Raw, errors: &mut Vec<String>) -> Transports {
    let mut transports = BTreeMap::new();
    for (name, value) in &raw.transports {
        let parsed = load::component_type("transports", name, value, TRANSPORT_TYPES).and_then(
            |ty| match ty.as_str() {
                "yamux" => {
                    let c: tunneld_transport_yamux::Config =
                        load::component("transports", name, value)?;
                    c.yamux.validate().map_err(|(k, m)| {
                        ConfigError::one(format!("transports.{name}.yamux.{k}: {m}"))
                    })?;
                    if let Some(t) = &c.threshold {
                        t.validate().map_err(|(k, m)| {
                            ConfigError::one(format!("transports.{name}.threshold.{k}: {m}"))
                        })?;
                    }
                    Ok(TransportConfig::Yamux(c))
                }
                "connect" => {
                    let c: tunneld_transport_connect::Config =
                        load::component("transports", name, value)?;
                    c.validate().map_err(|(k, m)| {
                        ConfigError::one(format!("transports.{name}.{k}: {m}"))
                    })?;
                    Ok(TransportConfig::Connect(c))
                }
                "h2-reverse" => {
                    let c: tunneld_transport_h2_reverse::Config =
                        load::component("transports", name, value)?;
                    c.validate().map_err(|(k, m)| {
                        ConfigError::one(format!("transports.{name}.{k}: {m}"))
                    })?;
                    Ok(TransportConfig::H2Reverse(c))
                }
                "websocket" => {
                    let c: tunneld_transport_websocket::Config =
                        load::component("transports", name, value)?;
                    c.validate().map_err(|(k, m)| {
                        ConfigError::one(format!("transports.{name}.{k}: {m}"))
                    })?;
                    Ok(TransportConfig::Websocket(c))
                }
                "ssh" => {
                    let c: tunneld_transport_ssh::Config =
                        load::component("transports", name, value)?;
                    c.validate().map_err(|(k, m)| {
                        ConfigError::one(format!("transports.{name}.{k}: {m}"))
                    })?;
                    Ok(TransportConfig::Ssh(c))
                }
                _ => unreachable_type(&ty),
            },
        );
        match parsed {
            Ok(t) => {
                transports.insert(name.clone(), t);
            }
            Err(e) => errors.extend(e.lines),
        }
    }
    transports
}

fn parse_frontends(raw: &Raw, errors: &mut Vec<String>) -> Frontends {
    let mut frontends = BTreeMap::new();
    for (name, value) in &raw.frontends {
        let parsed =
            load::component_type("frontends", name, value, FRONTEND_TYPES).and_then(|ty| match ty
                .as_str()
            {
                "ports" => Ok(FrontendConfig::Ports(load::component(
                    "frontends",
                    name,
                    value,
                )?)),
                "rendezvous" => {
                    let c: tunneld_frontend_rendezvous::Config =
                        load::component("frontends", name, value)?;
                    c.validate()
                        .map_err(|(k, m)| ConfigError::one(format!("frontends.{name}.{k}: {m}")))?;
                    Ok(FrontendConfig::Rendezvous(c))
                }
                "https-subdomain" => {
                    let c: tunneld_frontend_https::Config =
                        load::component("frontends", name, value)?;
                    c.validate()
                        .map_err(|(k, m)| ConfigError::one(format!("frontends.{name}.{k}: {m}")))?;
                    Ok(FrontendConfig::Https(c))
                }
                _ => unreachable_type(&ty),
            });
        match parsed {
            Ok(f) => {
                frontends.insert(name.clone(), f);
            }
            Err(e) => errors.extend(e.lines),
        }
    }
    frontends
}

/// Port sharing: a frontend's `transport` names an h2-reverse transport, and a transport
/// without a listener of its own must be shared by some frontend. Returns whether a
/// websocket transport admits TPoT clients.
fn check_sharing(transports: &Transports, frontends: &Frontends, errors: &mut Vec<String>) -> bool {
    let mut shared = std::collections::BTreeSet::new();
    for (name, f) in frontends {
        let FrontendConfig::Https(c) = f else {
            continue;
        };
        if let Some(t) = &c.transport {
            match transports.get(t) {
                Some(TransportConfig::H2Reverse(_)) => {
                    if !shared.insert(t.clone()) {
                        errors.push(format!("frontends.{name}.transport: transport `{t}` is already shared by another frontend"));
                    }
                }
                Some(_) => errors.push(format!(
                    "frontends.{name}.transport: `{t}` is not an h2-reverse transport"
                )),
                None => errors.push(format!(
                    "frontends.{name}.transport: there is no transport named `{t}`"
                )),
            }
        }
    }
    let mut tpot_clients = false;
    for (name, t) in transports {
        if let TransportConfig::H2Reverse(c) = t {
            if c.listen.is_none() && !shared.contains(name) {
                errors.push(format!("transports.{name}.listen: required unless an https-subdomain frontend shares its port (`transport: {name}`)"));
            }
        }
        if let TransportConfig::Websocket(c) = t {
            tpot_clients |= c.auth_key.is_some() || c.allow_anonymous;
            if !matches!(frontends.get(&c.frontend), Some(FrontendConfig::Https(_))) {
                errors.push(format!(
                    "transports.{name}.frontend: `{}` is not an https-subdomain frontend of this config",
                    c.frontend
                ));
            }
        }
    }
    tpot_clients
}

fn check_auth(raw: &Raw, transports: &Transports, tpot_clients: bool, errors: &mut Vec<String>) {
    let mut header_identity = false;
    for (name, t) in transports {
        let TransportConfig::Yamux(c) = t else {
            continue;
        };
        if c.threshold.as_ref().is_some_and(|t| t.header_identity) {
            header_identity = true;
            if raw.auth.client_ca.is_some() {
                errors.push(format!(
                    "transports.{name}.threshold.header_identity: must be false when auth.client_ca is set (anyone without a certificate could claim a certificate holder's id)"
                ));
            }
        }
    }
    if raw.auth.tokens.is_empty()
        && raw.auth.client_ca.is_none()
        && !header_identity
        && !tpot_clients
        && raw.control.is_none()
    {
        errors.push("auth: configure at least one of auth.tokens or auth.client_ca (or a websocket transport's auth_key, or a control section for tokens made with `tunneld token add`), or no client can connect".into());
    }
    if raw.auth.require_client_cert && raw.auth.client_ca.is_none() {
        errors.push("auth.require_client_cert: needs auth.client_ca".into());
    }
}

fn check_tls(raw: &Raw, errors: &mut Vec<String>) {
    match (&raw.tls.cert, &raw.tls.key) {
        (Some(_), None) => errors.push("tls.key: required when tls.cert is set".into()),
        (None, Some(_)) => errors.push("tls.cert: required when tls.key is set".into()),
        _ => {}
    }
    if raw.tls.cert.is_none() && raw.tls.names.is_empty() {
        errors
            .push("tls.names: at least one name is needed for the self-issued certificate".into());
    }
    if let Some(a) = &raw.admin {
        if !(1..=100_000).contains(&a.max_tunnel_series) {
            errors.push(format!(
                "admin.max_tunnel_series: {} is out of range (1 to 100000)",
                a.max_tunnel_series
            ));
        }
    }
}

fn check_limits(raw: &Raw, errors: &mut Vec<String>) {
    if raw.limits.max_pending_handshakes == 0 {
        errors.push("limits.max_pending_handshakes: must be at least 1".into());
    }
    if raw.limits.max_pending_per_address == 0 {
        errors.push("limits.max_pending_per_address: must be at least 1".into());
    }
    for (key, v) in [
        ("max_request_head", raw.limits.max_request_head),
        ("max_response_head", raw.limits.max_response_head),
    ] {
        if !(4096..=16 << 20).contains(&v) {
            errors.push(format!(
                "limits.{key}: {v} bytes is outside 4096 to 16777216"
            ));
        }
    }
    if raw.limits.max_streams_per_tunnel == 0 {
        errors.push("limits.max_streams_per_tunnel: must be at least 1".into());
    }
    if raw.limits.max_streams_per_address == 0 {
        errors.push("limits.max_streams_per_address: must be at least 1".into());
    }
    if raw.limits.stream_stall_timeout < Duration::from_secs(1) {
        errors.push("limits.stream_stall_timeout: must be at least 1s".into());
    }
    if raw.limits.max_connections_per_address == 0 {
        errors.push("limits.max_connections_per_address: must be at least 1".into());
    }
    if !raw.limits.idle_timeout.is_zero() && raw.limits.idle_timeout < Duration::from_secs(1) {
        errors.push("limits.idle_timeout: must be at least 1s (or 0s for never)".into());
    }
    if raw.limits.max_auth_failures == 0 {
        errors.push("limits.max_auth_failures: must be at least 1".into());
    }
    if raw.limits.auth_failure_window < Duration::from_secs(1) {
        errors.push("limits.auth_failure_window: must be at least 1s".into());
    }
    if raw.limits.http_idle_timeout < Duration::from_secs(1) {
        errors.push("limits.http_idle_timeout: must be at least 1s".into());
    }
    if raw.rendezvous.max_parked_per_id == 0 || raw.rendezvous.max_parked_per_id > 1024 {
        errors.push("rendezvous.max_parked_per_id: must be 1-1024".into());
    }
    if raw.rendezvous.max_failures == 0 {
        errors.push("rendezvous.max_failures: must be at least 1".into());
    }
    if raw.rendezvous.failure_window < Duration::from_secs(1) {
        errors.push("rendezvous.failure_window: must be at least 1s".into());
    }
    if raw.limits.keepalive < Duration::from_secs(1) {
        errors.push("limits.keepalive: must be at least 1s".into());
    }
}

/// HTTP-01 is answered on the plain web port only: `acme.challenges: [http-01]` needs one.
fn check_acme(raw: &Raw, frontends: &Frontends, errors: &mut Vec<String>) {
    let web = raw.control.as_ref().is_some_and(|c| c.web_listen.is_some());
    for (name, f) in frontends {
        let FrontendConfig::Https(c) = f else {
            continue;
        };
        let only_http = c.acme.as_ref().is_some_and(|a| {
            a.challenges == [tunneld_frontend_https::config::ChallengeKind::Http01]
        });
        if only_http && !web {
            errors.push(format!("frontends.{name}.acme.challenges: http-01 is answered on the plain web port; set control.web_listen or add tls-alpn-01"));
        }
    }
    if let Some(from) = &raw.tls.acme_from {
        match frontends.get(from) {
            Some(FrontendConfig::Https(c)) if c.acme.is_some() => {}
            Some(FrontendConfig::Https(_)) => errors.push(format!(
                "tls.acme_from: frontend `{from}` has no `acme:` section"
            )),
            _ => errors.push(format!(
                "tls.acme_from: `{from}` is not an https-subdomain frontend of this config"
            )),
        }
        if raw.tls.cert.is_some() {
            errors.push("tls.acme_from: set either tls.cert or tls.acme_from, not both".into());
        }
    }
}

fn check_control(
    raw: &Raw,
    transports: &Transports,
    frontends: &Frontends,
    errors: &mut Vec<String>,
) {
    if let Some(c) = &raw.control {
        if let Err((k, m)) = c.validate() {
            errors.push(format!("control.{k}: {m}"));
        }
        if !matches!(
            frontends.get(&c.names_frontend),
            Some(FrontendConfig::Https(_))
        ) {
            errors.push(format!(
                "control.names_frontend: `{}` is not an https-subdomain frontend of this config",
                c.names_frontend
            ));
        }
        if let Some(p) = &c.ports_frontend {
            if !matches!(frontends.get(p), Some(FrontendConfig::Ports(_))) {
                errors.push(format!(
                    "control.ports_frontend: `{p}` is not a ports frontend of this config"
                ));
            }
        }
        if !matches!(
            transports.get(&c.transport),
            Some(
                TransportConfig::Yamux(_) | TransportConfig::H2Reverse(_) | TransportConfig::Ssh(_)
            )
        ) {
            errors.push(format!(
                "control.transport: `{}` is not a yamux, h2-reverse or ssh transport of this config",
                c.transport
            ));
        }
    }
}

fn resolve(
    raw: Raw,
    file: Option<&Path>,
    transports: Transports,
    frontends: Frontends,
) -> ServerConfig {
    let r = |p: &PathBuf| load::resolve(file, p);
    ServerConfig {
        state_dir: r(&raw.state_dir),
        log: raw.log,
        tls: TlsConfig {
            cert: raw.tls.cert.as_ref().map(r),
            key: raw.tls.key.as_ref().map(r),
            names: raw.tls.names,
            acme_from: raw.tls.acme_from,
        },
        auth: AuthConfig {
            client_ca: raw.auth.client_ca.as_ref().map(r),
            ..raw.auth
        },
        limits: raw.limits,
        admin: raw.admin,
        rendezvous: raw.rendezvous,
        transports: transports
            .into_iter()
            .map(|(n, t)| {
                let t = match t {
                    TransportConfig::Websocket(c) => {
                        TransportConfig::Websocket(tunneld_transport_websocket::Config {
                            cert: c.cert.as_ref().map(r),
                            key: c.key.as_ref().map(r),
                            ..c
                        })
                    }
                    TransportConfig::Ssh(c) => {
                        TransportConfig::Ssh(tunneld_transport_ssh::Config {
                            host_key: c.host_key.as_ref().map(r),
                            ..c
                        })
                    }
                    t => t,
                };
                (n, t)
            })
            .collect(),
        frontends: frontends
            .into_iter()
            .map(|(n, f)| {
                let f = match f {
                    FrontendConfig::Https(c) => {
                        FrontendConfig::Https(tunneld_frontend_https::Config {
                            cert: c.cert.as_ref().map(r),
                            key: c.key.as_ref().map(r),
                            acme: c.acme.as_ref().map(|a| {
                                Box::new(tunneld_frontend_https::config::AcmeConfig {
                                    ca: a.ca.as_ref().map(r),
                                    ..(**a).clone()
                                })
                            }),
                            ..c
                        })
                    }
                    f => f,
                };
                (n, f)
            })
            .collect(),
        control: raw.control,
        cluster: raw
            .cluster
            .map(|c| super::super::cluster::ClusterConfig { ca: r(&c.ca), ..c }),
        worker_threads: raw.worker_threads,
    }
}
