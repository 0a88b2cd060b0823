//! Applying a reload's plan: tokens first (so a removed token can no longer start a session
//! when its old ones are cut), then limits, then transports (stopped ones before new ones, so a port can
//! pass from one to another), then removed frontends, then new ones.

use super::diff::Plan;
use super::{Live, Reloader, Summary};
use crate::config::server::{ServerConfig, TransportConfig};

pub(super) async fn apply(
    r: &Reloader,
    live: &mut Live,
    plan: &Plan,
    mut eff: ServerConfig,
) -> Summary {
    let mut s = Summary {
        needs_restart: plan.needs_restart.clone(),
        ..Summary::default()
    };
    tokens(r, live, plan, &mut eff, &mut s);
    if !plan.limits_changed.is_empty() {
        // Before the components: a transport or frontend started below reads the new ones.
        r.hub.limits.set(eff.limits.data());
        r.base
            .throttle
            .set_budget(eff.limits.max_auth_failures, eff.limits.auth_failure_window);
        r.base
            .registry
            .set_config(crate::server::registry_config(&eff));
        s.changed.extend(plan.limits_changed.iter().cloned());
    }
    for name in &plan.transports_removed {
        s.sessions_cut += live.transports.stop(name, &r.hub).await;
        live.h2.remove(name);
        tracing::info!(transport = %name, "transport removed");
        s.removed.push(format!("transports.{name}"));
    }
    for name in &plan.transports_changed {
        s.sessions_cut += live.transports.stop(name, &r.hub).await;
        live.h2.remove(name);
        start_transport(r, live, name, &mut eff, &mut s, "changed").await;
    }
    for name in &plan.transports_added {
        start_transport(r, live, name, &mut eff, &mut s, "added").await;
    }
    // Removed and changed frontends before new ones, so a port can pass from one to another.
    for name in &plan.frontends_removed {
        if held(r, live, name, &mut eff, &mut s, "removed").await {
            continue;
        }
        let touched = live.frontends.stop(name, &r.hub).await;
        tracing::info!(frontend = %name, sessions = touched, "frontend removed; its tunnels were released");
        s.removed.push(format!("frontends.{name}"));
    }
    for name in &plan.frontends_changed {
        if held(r, live, name, &mut eff, &mut s, "changed").await {
            continue;
        }
        // The sessions holding tunnels on it claim them again on the new one, in place.
        live.frontends.stop_quietly(name, &r.hub).await;
        start_frontend(r, live, name, &mut eff, &mut s, "changed").await;
        let touched = r.hub.reclaim_frontend(name).await;
        tracing::info!(frontend = %name, sessions = touched, "frontend rebuilt; its tunnels were claimed again on it");
    }
    for name in &plan.frontends_added {
        start_frontend(r, live, name, &mut eff, &mut s, "added").await;
    }
    live.cfg = eff;
    s
}

/// Replaces the configured tokens and cuts the sessions of removed ones and of ones whose
/// secret changed or lost an SSH key (as a revocation does); other sessions stay. A changed
/// `max_ports` applies to claims made from now on.
fn tokens(r: &Reloader, live: &Live, plan: &Plan, eff: &mut ServerConfig, s: &mut Summary) {
    if plan.tokens_added.is_empty()
        && plan.tokens_removed.is_empty()
        && plan.tokens_changed.is_empty()
    {
        return;
    }
    match crate::server::token_entries(eff) {
        Ok(entries) => r.base.auth.tokens.replace(entries),
        Err(e) => {
            s.failed.push(format!("{e:#}"));
            eff.auth.tokens = live.cfg.auth.tokens.clone();
            return;
        }
    }
    let metrics = &r.base.metrics;
    for id in &plan.tokens_added {
        s.added.push(format!("auth.tokens.{id}"));
    }
    for id in &plan.tokens_removed {
        s.removed.push(format!("auth.tokens.{id}"));
        s.sessions_cut += crate::control::sweep::cut_client(
            &r.hub,
            metrics,
            id,
            "removed",
            "its token was removed from the configuration",
        );
    }
    for c in &plan.tokens_changed {
        s.changed.push(format!("auth.tokens.{}", c.client));
        if c.cut {
            s.sessions_cut += crate::control::sweep::cut_client(
                &r.hub,
                metrics,
                &c.client,
                "changed",
                "its token or SSH keys changed in the configuration",
            );
        }
    }
}

/// Binds and starts transport `name` as `eff` has it; a failure leaves it out of what
/// runs (the next reload tries again).
async fn start_transport(
    r: &Reloader,
    live: &mut Live,
    name: &str,
    eff: &mut ServerConfig,
    s: &mut Summary,
    how: &str,
) {
    let Some(t) = eff.transports.get(name).cloned() else {
        return;
    };
    let started = async {
        if let TransportConfig::H2Reverse(c) = &t {
            let built = crate::components::bind_h2(name, c, &r.base).await?;
            live.h2.insert(name.to_string(), built);
        }
        live.transports
            .start(name, &t, (&r.base, &r.hub), &live.h2)
            .await
    }
    .await;
    match started {
        Ok(addr) => {
            if let Some(a) = addr {
                s.listening.insert(format!("transports.{name}"), a);
            }
            tracing::info!(transport = %name, kind = super::diff::transport_kind(&t), "transport {how}");
            let key = format!("transports.{name}");
            if how == "added" {
                s.added.push(key);
            } else {
                s.changed.push(key);
            }
        }
        Err(e) => {
            live.h2.remove(name);
            s.failed.push(keyed(&format!("transports.{name}"), &e));
            eff.transports.remove(name);
        }
    }
}

/// Whether frontend `name` must stay as it runs (admin mappings or leases hold routes on it):
/// then it is reported as needing a restart and kept.
async fn held(
    r: &Reloader,
    live: &Live,
    name: &str,
    eff: &mut ServerConfig,
    s: &mut Summary,
    how: &str,
) -> bool {
    let Some(why) = r.hub.frontend_held_by(name).await else {
        return false;
    };
    s.needs_restart.push(format!(
        "frontends.{name} ({how}, but {why}; it serves as it was until a restart)"
    ));
    if let Some(was) = live.cfg.frontends.get(name) {
        eff.frontends.insert(name.to_string(), was.clone());
    }
    true
}

/// Builds, binds and starts frontend `name` of `eff`.
async fn start_frontend(
    r: &Reloader,
    live: &mut Live,
    name: &str,
    eff: &mut ServerConfig,
    s: &mut Summary,
    how: &str,
) {
    let Some(f) = eff.frontends.get(name).cloned() else {
        return;
    };
    let key = format!("frontends.{name}");
    match crate::components::build_frontend(eff, name, &f, &r.base, &live.h2).await {
        Ok(built) => {
            if !r.hub.add_frontend(name, built.clone()) {
                s.failed
                    .push(format!("{key}: a frontend of that name runs already"));
                return;
            }
            live.frontends.start(name, built.clone(), &r.base);
            if let Some(a) = built.local_addr() {
                s.listening.insert(key.clone(), a);
            }
            tracing::info!(frontend = %name, "frontend {how}");
            if how == "added" {
                s.added.push(key);
            } else {
                s.changed.push(key);
            }
        }
        Err(e) => {
            s.failed.push(keyed(&key, &e));
            eff.frontends.remove(name);
        }
    }
}

/// `e` with its chain, led by `key` once (the error may name it already).
fn keyed(key: &str, e: &anyhow::Error) -> String {
    let m = format!("{e:#}");
    if m.starts_with(key) {
        m
    } else {
        format!("{key}: {m}")
    }
}
