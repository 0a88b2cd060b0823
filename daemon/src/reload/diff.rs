//! What a reload changes: the difference between the running configuration and a new one,
//! split into what can be applied live and what needs a restart. Pure: nothing is touched.

use crate::config::server::{FrontendConfig, ServerConfig, TransportConfig};
use std::collections::BTreeSet;

/// How a configured token changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenChange {
    pub client: String,
    /// Its live sessions end: the secret changed, or an SSH key was taken away.
    pub cut: bool,
}

/// The changes a reload applies, and the keys it leaves as they were.
#[derive(Debug, Default)]
pub struct Plan {
    pub tokens_added: Vec<String>,
    pub tokens_removed: Vec<String>,
    pub tokens_changed: Vec<TokenChange>,
    pub transports_added: Vec<String>,
    pub transports_removed: Vec<String>,
    pub transports_changed: Vec<String>,
    pub frontends_added: Vec<String>,
    pub frontends_removed: Vec<String>,
    pub frontends_changed: Vec<String>,
    /// `limits.<key>` and `rendezvous.<key>` paths that differ: applied live to what starts
    /// from now on.
    pub limits_changed: Vec<String>,
    /// Key paths that differ but apply only at the next start, with why when not obvious.
    pub needs_restart: Vec<String>,
}

impl Plan {
    /// Whether the reload changes anything at all (needing a restart included).
    pub fn is_empty(&self) -> bool {
        self.tokens_added.is_empty()
            && self.tokens_removed.is_empty()
            && self.tokens_changed.is_empty()
            && self.transports_added.is_empty()
            && self.transports_removed.is_empty()
            && self.transports_changed.is_empty()
            && self.frontends_added.is_empty()
            && self.frontends_removed.is_empty()
            && self.frontends_changed.is_empty()
            && self.limits_changed.is_empty()
            && self.needs_restart.is_empty()
    }
}

/// Pushes `section.field` for each listed field that differs.
macro_rules! fields {
    ($out:expr, $section:literal, $old:expr, $new:expr, [$($f:ident),* $(,)?]) => {
        $(if $old.$f != $new.$f {
            $out.push(concat!($section, ".", stringify!($f)).to_string());
        })*
    };
}

/// Compares `old` (what runs) with `new` (validated). Returns the plan and the configuration
/// that will run after it: `new`, with every key that needs a restart kept as in `old`, so
/// the next reload compares against what really runs.
pub fn plan(old: &ServerConfig, new: &ServerConfig) -> (Plan, ServerConfig) {
    let mut p = Plan::default();
    let mut eff = new.clone();
    restart_only(old, new, &mut p.needs_restart);
    // Sections that apply only at start run as they were.
    eff.state_dir = old.state_dir.clone();
    eff.log = old.log.clone();
    eff.tls = old.tls.clone();
    eff.auth.client_ca = old.auth.client_ca.clone();
    eff.auth.require_client_cert = old.auth.require_client_cert;
    eff.auth.certificate_max_ports = old.auth.certificate_max_ports;
    eff.admin = old.admin.clone();
    eff.control = old.control.clone();
    eff.cluster = old.cluster.clone();
    eff.worker_threads = old.worker_threads;
    limits(old, new, &mut p.limits_changed);
    tokens(old, new, &mut p);
    frontends(old, new, &mut p, &mut eff);
    transports(old, &mut p, &mut eff);
    (p, eff)
}

/// Every key of `limits:` and `rendezvous:` applies live (connections, handshakes, streams
/// and parkings that start after the reload get the new values; the stream caps also bind
/// open sessions).
fn limits(old: &ServerConfig, new: &ServerConfig, out: &mut Vec<String>) {
    fields!(
        out,
        "rendezvous",
        old.rendezvous,
        new.rendezvous,
        [max_parked_per_id, max_failures, failure_window]
    );
    fields!(
        out,
        "limits",
        old.limits,
        new.limits,
        [
            handshake_timeout,
            max_pending_handshakes,
            max_pending_per_address,
            keepalive,
            drain_timeout,
            max_request_head,
            max_response_head,
            max_streams_per_tunnel,
            max_streams_per_address,
            stream_stall_timeout,
            max_connections_per_address,
            idle_timeout,
            http_idle_timeout,
            max_auth_failures,
            auth_failure_window,
        ]
    );
}

fn restart_only(old: &ServerConfig, new: &ServerConfig, out: &mut Vec<String>) {
    if old.state_dir != new.state_dir {
        out.push("state_dir".into());
    }
    if old.worker_threads != new.worker_threads {
        out.push("worker_threads".into());
    }
    fields!(out, "log", old.log, new.log, [level, format]);
    fields!(out, "tls", old.tls, new.tls, [cert, key, names, acme_from]);
    fields!(
        out,
        "auth",
        old.auth,
        new.auth,
        [client_ca, require_client_cert, certificate_max_ports]
    );
    match (&old.admin, &new.admin) {
        (Some(a), Some(b)) => {
            fields!(
                out,
                "admin",
                a,
                b,
                [listen, token, shape, per_tunnel_metrics, max_tunnel_series]
            );
        }
        (a, b) if a != b => out.push("admin".into()),
        _ => {}
    }
    if old.control != new.control {
        out.push("control".into());
    }
    if old.cluster != new.cluster {
        out.push("cluster".into());
    }
}

fn tokens(old: &ServerConfig, new: &ServerConfig, p: &mut Plan) {
    let (o, n) = (&old.auth.tokens, &new.auth.tokens);
    p.tokens_added = n.keys().filter(|k| !o.contains_key(*k)).cloned().collect();
    p.tokens_removed = o.keys().filter(|k| !n.contains_key(*k)).cloned().collect();
    for (id, was) in o {
        let Some(now) = n.get(id) else { continue };
        if was == now {
            continue;
        }
        let kept: BTreeSet<&String> = now.ssh_keys.iter().collect();
        let cut = was.token != now.token || was.ssh_keys.iter().any(|k| !kept.contains(k));
        p.tokens_changed.push(TokenChange {
            client: id.clone(),
            cut,
        });
    }
}

/// Frontends are added, removed and changed live (a removed one's tunnels are released and
/// their tunnelc told; a changed one is rebuilt and the sessions' tunnels on it are claimed
/// again on the new one, in place), except one that something else still names.
fn frontends(old: &ServerConfig, new: &ServerConfig, p: &mut Plan, eff: &mut ServerConfig) {
    for (name, f) in &new.frontends {
        match old.frontends.get(name) {
            None => p.frontends_added.push(name.clone()),
            Some(was) if was != f => match kept_by(old, name, was) {
                Some(why) => {
                    p.needs_restart
                        .push(format!("frontends.{name} (changed, but {why})"));
                    eff.frontends.insert(name.clone(), was.clone());
                }
                None => p.frontends_changed.push(name.clone()),
            },
            Some(_) => {}
        }
    }
    for (name, was) in &old.frontends {
        if new.frontends.contains_key(name) {
            continue;
        }
        match kept_by(old, name, was) {
            Some(why) => {
                p.needs_restart.push(format!(
                    "frontends.{name} (removed, but {why}; it serves until a restart)"
                ));
                eff.frontends.insert(name.clone(), was.clone());
            }
            None => p.frontends_removed.push(name.clone()),
        }
    }
}

/// Why frontend `name` (as it runs: `was`) cannot go live: a transport shares its port, or a
/// section that applies only at start names it.
fn kept_by(old: &ServerConfig, name: &str, was: &FrontendConfig) -> Option<String> {
    if let FrontendConfig::Https(h) = was {
        if let Some(t) = &h.transport {
            return Some(format!("transport `{t}` shares its port"));
        }
    }
    if old.tls.acme_from.as_deref() == Some(name) {
        return Some("tls.acme_from names it".into());
    }
    let control = old.control.as_ref();
    if control.is_some_and(|c| c.names_frontend == name) {
        return Some("control.names_frontend names it".into());
    }
    if control.is_some_and(|c| c.ports_frontend.as_deref() == Some(name)) {
        return Some("control.ports_frontend names it".into());
    }
    None
}

/// The frontend (as it will run) that shares `name`'s port, if any.
fn sharer(eff: &ServerConfig, name: &str) -> Option<String> {
    eff.frontends.iter().find_map(|(f, c)| match c {
        FrontendConfig::Https(h) if h.transport.as_deref() == Some(name) => Some(f.clone()),
        _ => None,
    })
}

/// Transports are added, removed and rebuilt live, except one whose port a frontend shares
/// or that the control plane's answers name (`control.transport`).
fn transports(old: &ServerConfig, p: &mut Plan, eff: &mut ServerConfig) {
    let control = eff.control.as_ref().map(|c| c.transport.clone());
    let pinned = |eff: &ServerConfig, name: &str| -> Option<String> {
        if let Some(f) = sharer(eff, name) {
            return Some(format!("frontends.{f} shares its port"));
        }
        (control.as_deref() == Some(name)).then(|| "control.transport names it".to_string())
    };
    let new_names: Vec<String> = eff.transports.keys().cloned().collect();
    for name in new_names {
        let now = eff.transports[&name].clone();
        match old.transports.get(&name) {
            None => p.transports_added.push(name),
            Some(was) if *was != now => match pinned(eff, &name) {
                Some(why) => {
                    p.needs_restart.push(format!("transports.{name} ({why})"));
                    eff.transports.insert(name, was.clone());
                }
                None => p.transports_changed.push(name),
            },
            Some(_) => {}
        }
    }
    for (name, was) in &old.transports {
        if eff.transports.contains_key(name) {
            continue;
        }
        match pinned(eff, name) {
            Some(why) => {
                p.needs_restart
                    .push(format!("transports.{name} (removed; {why})"));
                eff.transports.insert(name.clone(), was.clone());
            }
            None => p.transports_removed.push(name.clone()),
        }
    }
}

/// The `type:` of a transport, for log lines.
pub fn transport_kind(t: &TransportConfig) -> &'static str {
    match t {
        TransportConfig::Yamux(_) => "yamux",
        TransportConfig::Connect(_) => "connect",
        TransportConfig::H2Reverse(_) => "h2-reverse",
        TransportConfig::Websocket(_) => "websocket",
        TransportConfig::Ssh(_) => "ssh",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ServerConfig {
        let yaml = format!(
            "state_dir: /tmp/x\nauth:\n  tokens:\n    alice: {{ token: alice-token-0123456789 }}\n    bob: {{ token: bob-token-0123456789ab }}\ntransports:\n  edge: {{ type: yamux, listen: 127.0.0.1:0 }}\nfrontends:\n  tcp: {{ type: ports, range: 20000-20010 }}\n{extra}"
        );
        let dir = std::env::temp_dir().join(format!("tunneld-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // One file per test thread: tests run in parallel, and two configs may be as long.
        let thread = format!("{:?}", std::thread::current().id());
        let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
        let file = dir.join(format!("c{thread}-{}.yaml", yaml.len()));
        std::fs::write(&file, yaml).expect("write");
        ServerConfig::load(Some(&file), &[]).expect("valid")
    }

    #[test]
    fn nothing_changed_is_empty() {
        let (p, _) = plan(&cfg(""), &cfg(""));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn tokens_transports_and_restart_keys() {
        let old = cfg("");
        let mut new = old.clone();
        new.auth.tokens.remove("bob");
        let mut carol = new.auth.tokens["alice"].clone();
        carol.max_ports = Some(3);
        new.auth.tokens.insert("carol".into(), carol.clone());
        new.auth.tokens.insert("alice".into(), carol);
        new.limits.max_streams_per_tunnel = 7;
        new.state_dir = old.state_dir.join("elsewhere");
        new.worker_threads = Some(1);
        new.transports
            .insert("more".into(), old.transports["edge"].clone());
        new.frontends.clear();
        let (p, eff) = plan(&old, &new);
        assert_eq!(p.tokens_added, ["carol"]);
        assert_eq!(p.tokens_removed, ["bob"]);
        // Only max_ports changed: sessions stay.
        assert_eq!(
            p.tokens_changed,
            [TokenChange {
                client: "alice".into(),
                cut: false
            }]
        );
        assert_eq!(p.transports_added, ["more"]);
        assert_eq!(p.limits_changed, ["limits.max_streams_per_tunnel"]);
        assert_eq!(p.needs_restart, ["state_dir", "worker_threads"]);
        assert_eq!(p.frontends_removed, ["tcp"]);
        // What runs next: the new limits and the old state dir, without the removed frontend.
        assert_eq!(eff.limits.max_streams_per_tunnel, 7);
        assert_eq!(eff.state_dir, old.state_dir);
        assert_eq!(eff.worker_threads, None);
        assert!(!eff.frontends.contains_key("tcp"));
        let (again, _) = plan(&eff, &eff);
        assert!(again.is_empty());
    }
}
