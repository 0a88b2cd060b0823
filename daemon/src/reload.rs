//! Hot reload (SIGHUP, admin `POST /reload`): the configuration file is read and validated
//! again exactly as `--check` does; on any error the running configuration stays and every
//! error is logged with its key path. Otherwise the difference is applied
//! ([`diff::plan`], [`apply`]): tokens, limits, transports and frontends live, without touching
//! the sessions and visitors the change does not concern; keys that only apply at start are
//! reported as needing a restart and left as they run.

use crate::components::H2Transports;
use crate::config::server::ServerConfig;
use crate::server::Base;
use crate::transport_set::TransportSet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tunneld_core::hub::Hub;

mod apply;
pub mod diff;

/// Where the configuration came from, read again at each reload.
#[derive(Debug, Clone)]
pub struct Source {
    /// The `--config` file.
    pub file: PathBuf,
    /// The `--set` overrides, applied again on top.
    pub sets: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Key paths added, removed and changed live.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Key paths that differ from what runs but apply only at the next start.
    pub needs_restart: Vec<String>,
    /// Sessions ended: of removed or changed tokens, of removed or rebuilt transports.
    pub sessions_cut: usize,
    /// Listeners bound by this reload (`transports.<name>`, `frontends.<name>`).
    pub listening: BTreeMap<String, SocketAddr>,
    /// Changes that could not be applied (a port taken by another program, say); those
    /// components run as they were, or not at all when they were new.
    pub failed: Vec<String>,
}

impl Summary {
    /// One line for the log and the terminal.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
            ("needs restart", &self.needs_restart),
            ("failed", &self.failed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if self.sessions_cut > 0 {
            parts.push(format!("sessions cut: {}", self.sessions_cut));
        }
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to read again: tunneld runs the embedded default (start it with --config FILE); nothing changed")]
    NoFile,
    #[error("invalid configuration; the running one is kept: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// What runs now, changed one reload at a time.
pub(crate) struct Live {
    pub(crate) cfg: ServerConfig,
    pub(crate) h2: H2Transports,
    pub(crate) transports: TransportSet,
    pub(crate) frontends: crate::frontend_set::FrontendSet,
}

/// Reloads the running tunneld.
pub struct Reloader {
    source: std::sync::Mutex<Option<Source>>,
    live: tokio::sync::Mutex<Live>,
    base: Arc<Base>,
    hub: Arc<Hub>,
}

impl Reloader {
    pub(crate) fn new(live: Live, base: Arc<Base>, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            source: std::sync::Mutex::new(None),
            live: tokio::sync::Mutex::new(live),
            base,
            hub,
        })
    }

    /// Sets the file a reload reads (none: the embedded default, which cannot be reloaded).
    pub fn set_source(&self, source: Option<Source>) {
        *tunneld_core::sync::lock(&self.source) = source;
    }

    /// Bound address of each running transport with its own listener.
    pub async fn transport_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.live.lock().await.transports.addrs()
    }

    /// Reads, validates and applies the configuration file again; one reload at a time.
    /// Logs the outcome (each error with its key path) and counts it.
    pub async fn reload(&self) -> Result<Summary, ReloadError> {
        let source = tunneld_core::sync::lock(&self.source).clone();
        let result = self.reload_from(source).await;
        let ok = matches!(&result, Ok(s) if s.failed.is_empty());
        if let Some(own) = crate::metrics::of(&self.base.metrics) {
            own.config_reloads_total
                .with_label_values(&[if ok { "ok" } else { "error" }])
                .inc();
        }
        match &result {
            Ok(s) if s.failed.is_empty() => tracing::info!("configuration reloaded: {}", s.line()),
            Ok(s) => tracing::warn!("configuration reloaded in part: {}", s.line()),
            Err(ReloadError::Invalid(lines)) => {
                for line in lines {
                    tracing::error!("reload: {line}");
                }
                tracing::warn!(
                    "reload refused: the configuration is invalid; the running one is kept"
                );
            }
            Err(e) => tracing::warn!("reload: {e}"),
        }
        result
    }

    async fn reload_from(&self, source: Option<Source>) -> Result<Summary, ReloadError> {
        let Some(src) = source else {
            return Err(ReloadError::NoFile);
        };
        let loaded =
            tokio::task::spawn_blocking(move || ServerConfig::load(Some(&src.file), &src.sets))
                .await
                .map_err(|e| ReloadError::Invalid(vec![format!("reading the file: {e}")]))?;
        let new = loaded.map_err(|e| ReloadError::Invalid(e.lines))?;
        let mut live = self.live.lock().await;
        let (plan, effective) = diff::plan(&live.cfg, &new);
        Ok(apply::apply(self, &mut live, &plan, effective).await)
    }
}
