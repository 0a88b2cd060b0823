//! Tunnel names claimed on a rendezvous frontend, for `CONNECT <name>:<port>`. A name is
//! bound to its owner: another client asking for it is refused, and after the owner's session
//! ends the name stays reserved for it during the grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tunneld_core::frontend::{Claim, ClaimError, ClaimRequest, RouteInfo};
use tunneld_core::hub::Target;
use tunneld_core::proxy_protocol;

/// Where a name's visitors go.
#[derive(Clone)]
pub(crate) struct Route {
    pub tunnel: String,
    pub target: Arc<dyn Target>,
    pub proxy_protocol: Option<proxy_protocol::Version>,
}

enum State {
    Active(Route),
    Reserved { until: Instant },
}

struct Entry {
    owner: String,
    gen: u64,
    state: State,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    next_gen: u64,
}

pub(crate) struct Names {
    table: Mutex<Table>,
    grace: Duration,
}

struct Release {
    names: Weak<Names>,
    name: String,
    gen: u64,
    reserve: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(names) = self.names.upgrade() else {
            return;
        };
        let mut t = names.lock();
        if t.entries.get(&self.name).is_some_and(|e| e.gen == self.gen) {
            if self.reserve {
                if let Some(e) = t.entries.get_mut(&self.name) {
                    e.state = State::Reserved {
                        until: Instant::now() + names.grace,
                    };
                }
            } else {
                t.entries.remove(&self.name);
            }
        }
    }
}

/// Names a visitor may never reach, whatever is registered: addresses and loopback names.
pub fn forbidden_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<std::net::IpAddr>().is_ok()
        || h.eq_ignore_ascii_case("localhost")
        || h.to_ascii_lowercase().ends_with(".localhost")
}

impl Names {
    pub(crate) fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            grace,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        tunneld_core::sync::lock(&self.table)
    }

    pub(crate) fn claim(
        self: &Arc<Self>,
        req: &ClaimRequest,
        endpoint: String,
    ) -> Result<Claim, ClaimError> {
        let name = req.tunnel.to_ascii_lowercase();
        if forbidden_host(&name) {
            return Err(ClaimError::Invalid(format!(
                "`{name}` cannot be a tunnel name on a rendezvous frontend (it looks like an address)"
            )));
        }
        if req.port.is_some() {
            return Err(ClaimError::Invalid(
                "a rendezvous frontend routes by tunnel name: remove remote_port".into(),
            ));
        }
        let now = Instant::now();
        let mut t = self.lock();
        if let Some(e) = t.entries.get(&name) {
            let held = match e.state {
                State::Active(_) => true,
                State::Reserved { until } => until > now,
            };
            if held && e.owner != req.owner {
                return Err(ClaimError::NameHeld(name));
            }
            if matches!(e.state, State::Active(_)) {
                return Err(ClaimError::HeldBySession {
                    port: None,
                    name: Some(name),
                });
            }
        }
        t.next_gen += 1;
        let gen = t.next_gen;
        t.entries.insert(
            name.clone(),
            Entry {
                owner: req.owner.clone(),
                gen,
                state: State::Active(Route {
                    tunnel: req.tunnel.clone(),
                    target: req.target.clone(),
                    proxy_protocol: req.proxy_protocol,
                }),
            },
        );
        Ok(Claim {
            endpoint,
            port: None,
            name: Some(name.clone()),
            release: Box::new(Release {
                names: Arc::downgrade(self),
                name,
                gen,
                reserve: req.reserve_on_release,
            }),
        })
    }

    /// The route of an active name.
    pub(crate) fn lookup(&self, name: &str) -> Option<Route> {
        match &self.lock().entries.get(&name.to_ascii_lowercase())?.state {
            State::Active(r) => Some(r.clone()),
            State::Reserved { .. } => None,
        }
    }

    /// Whether the name is reserved for an owner whose session is gone.
    pub(crate) fn reserved(&self, name: &str) -> bool {
        let now = Instant::now();
        matches!(
            self.lock().entries.get(&name.to_ascii_lowercase()).map(|e| &e.state),
            Some(State::Reserved { until }) if *until > now
        )
    }

    pub(crate) fn routes(
        &self,
        frontend: &str,
        endpoint: impl Fn(&str) -> String,
    ) -> Vec<RouteInfo> {
        let now = Instant::now();
        let mut v: Vec<RouteInfo> = self
            .lock()
            .entries
            .iter()
            .filter_map(|(name, e)| {
                let state = match e.state {
                    State::Active(_) => "active",
                    State::Reserved { until } if until > now => "reserved",
                    State::Reserved { .. } => return None,
                };
                Some(RouteInfo {
                    frontend: frontend.to_string(),
                    owner: e.owner.clone(),
                    tunnel: name.clone(),
                    endpoint: endpoint(name),
                    state,
                })
            })
            .collect();
        v.sort_by(|a, b| a.tunnel.cmp(&b.tunnel));
        v
    }
}
