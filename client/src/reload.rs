//! tunnelc's hot reload (SIGHUP): the config file is read and validated again; on an error
//! the running tunnels stay. Tunnels run in groups, one session each (at start, one group
//! with every tunnel). A reload starts the added tunnels in a new session beside the running
//! ones, stops the sessions of removed or changed tunnels (the unchanged tunnels that shared
//! such a session start again in the new one), and leaves every other session and its
//! visitors alone. A change of anything else (server, credentials, TLS, transport) reconnects
//! every tunnel.

use crate::client::{self, ClientEvent};
use crate::config::client::{ClientConfig, TransportKind};
use crate::inspect::Inspector;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where the configuration came from, read again at each reload.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub sets: Vec<String>,
}

struct Group {
    tunnels: BTreeSet<String>,
    stop: CancellationToken,
}

struct Runner {
    cfg: ClientConfig,
    groups: BTreeMap<u64, Group>,
    next: u64,
    events: mpsc::UnboundedSender<ClientEvent>,
    done: mpsc::UnboundedSender<(u64, anyhow::Result<()>)>,
    stop: CancellationToken,
    /// Started once, kept across reloads (`inspect:` changes need a restart).
    inspector: Option<Arc<Inspector>>,
}

/// The summary's part for changed settings that apply at start only.
fn needs_restart(kept: &[&str]) -> String {
    let verb = if kept.len() == 1 { "needs" } else { "need" };
    format!("{} {verb} a restart (kept as it was)", kept.join(" and "))
}

impl Runner {
    /// Starts one session for `tunnels` (all of `cfg`'s rendezvous ids too).
    fn start(&mut self, tunnels: BTreeSet<String>) {
        let mut cfg = self.cfg.clone();
        cfg.tunnels.retain(|n, _| tunnels.contains(n));
        let (id, stop) = (self.next, self.stop.child_token());
        self.next += 1;
        let (events, done, s) = (self.events.clone(), self.done.clone(), stop.clone());
        let inspector = self.inspector.clone();
        tokio::spawn(async move {
            let r = client::run_inspected(cfg, inspector, events, s).await;
            let _ = done.send((id, r));
        });
        self.groups.insert(id, Group { tunnels, stop });
    }

    fn stop_all(&mut self) {
        for g in std::mem::take(&mut self.groups).into_values() {
            g.stop.cancel();
        }
    }

    /// Applies `new`; returns the summary line.
    fn apply(&mut self, mut new: ClientConfig) -> String {
        // Settings that apply at start only, changed: the running ones stay.
        let mut kept = Vec::new();
        if new.inspect != self.cfg.inspect {
            kept.push("inspect");
        }
        new.inspect = self.cfg.inspect.clone();
        let mut conn_old = self.cfg.clone();
        let mut conn_new = new.clone();
        (conn_old.tunnels, conn_new.tunnels) = (BTreeMap::new(), BTreeMap::new());
        // Log settings and the runtime's threads apply at start only.
        conn_new.log = conn_old.log.clone();
        if new.worker_threads != self.cfg.worker_threads {
            kept.push("worker_threads");
            new.worker_threads = self.cfg.worker_threads;
        }
        conn_new.worker_threads = conn_old.worker_threads;
        let old = std::mem::replace(&mut self.cfg, new);
        if conn_old != conn_new || self.cfg.transport == TransportKind::Connect {
            if old == self.cfg {
                return match kept.is_empty() {
                    false => needs_restart(&kept),
                    true => "nothing changed".into(),
                };
            }
            self.stop_all();
            self.start(self.cfg.tunnels.keys().cloned().collect());
            let all = "reconnected every tunnel (server, credentials or settings changed)";
            return match kept.is_empty() {
                true => all.into(),
                false => format!("{all}; {}", needs_restart(&kept)),
            };
        }
        let removed: Vec<String> = old
            .tunnels
            .keys()
            .filter(|n| !self.cfg.tunnels.contains_key(*n))
            .cloned()
            .collect();
        let changed: BTreeSet<String> = old
            .tunnels
            .iter()
            .filter(|(n, t)| self.cfg.tunnels.get(*n).is_some_and(|now| now != *t))
            .map(|(n, _)| n.clone())
            .collect();
        let added: Vec<String> = self
            .cfg
            .tunnels
            .keys()
            .filter(|n| !old.tunnels.contains_key(*n))
            .cloned()
            .collect();
        let mut restart: BTreeSet<String> = added.iter().chain(&changed).cloned().collect();
        let mut moved = Vec::new();
        let hit: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.tunnels
                    .iter()
                    .any(|t| removed.contains(t) || changed.contains(t))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in hit {
            if let Some(g) = self.groups.remove(&id) {
                g.stop.cancel();
                for t in g.tunnels {
                    if self.cfg.tunnels.contains_key(&t) && !changed.contains(&t) {
                        moved.push(t.clone());
                        restart.insert(t);
                    }
                }
            }
        }
        if !restart.is_empty() {
            self.start(restart);
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("added", added),
            ("removed", removed),
            ("changed", changed.into_iter().collect()),
            ("reconnected with them", moved),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if !kept.is_empty() {
            parts.push(needs_restart(&kept));
        }
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Runs tunnelc like [`client::run_inspected`], reading `source` again at each message on
/// `reloads`.
/// Ends when `stop` is cancelled, or with the error of the last session that stopped for
/// good (a session refused for good while others run is logged and dropped).
pub async fn run(
    cfg: ClientConfig,
    source: Option<Source>,
    inspector: Option<Arc<Inspector>>,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: CancellationToken,
    mut reloads: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut r = Runner {
        cfg,
        groups: BTreeMap::new(),
        next: 0,
        events,
        done,
        stop: stop.clone(),
        inspector,
    };
    r.start(r.cfg.tunnels.keys().cloned().collect());
    loop {
        tokio::select! {
            Some((id, result)) = finished.recv() => {
                let Some(g) = r.groups.remove(&id) else { continue };
                if r.groups.is_empty() || stop.is_cancelled() {
                    return result;
                }
                if let Err(e) = result {
                    let names: Vec<String> = g.tunnels.into_iter().collect();
                    tracing::error!(tunnels = %names.join(","), "{e}");
                }
            }
            Some(()) = reloads.recv() => reload(&mut r, source.as_ref()).await,
        }
    }
}

async fn reload(r: &mut Runner, source: Option<&Source>) {
    let Some(src) = source.cloned() else {
        tracing::warn!(
            "reload: no configuration file (a quick mode or the embedded default); nothing changed"
        );
        let _ = r.events.send(ClientEvent::Reloaded {
            line: "reload failed: no configuration file; nothing changed".into(),
        });
        return;
    };
    let loaded =
        tokio::task::spawn_blocking(move || ClientConfig::load(Some(&src.file), &src.sets))
            .await
            .map_err(|e| vec![e.to_string()])
            .and_then(|r| r.map_err(|e| e.lines));
    let line = match loaded {
        Ok(new) => {
            let summary = r.apply(new);
            tracing::info!("configuration reloaded: {summary}");
            format!("reloaded: {summary}")
        }
        Err(lines) => {
            for l in &lines {
                tracing::error!("reload: {l}");
            }
            tracing::warn!("reload refused: the configuration is invalid; the running one is kept");
            format!("reload failed: {}", lines.join("; "))
        }
    };
    let _ = r.events.send(ClientEvent::Reloaded { line });
}

/// Installs tunnelc's signal handlers: Ctrl-C and SIGTERM cancel `stop`; each SIGHUP is a
/// message on the returned channel.
pub fn signals(stop: &CancellationToken) -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stopper.cancel();
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
