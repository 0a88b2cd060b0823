//! Tunnel names claimed on a rendezvous frontend, for `CONNECT <name>:<port>`. A name is
//! bound to its owner: another client asking for it is refused, and after the owner's session
//! ends the name stays reserved for it during the grace period.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunneld_core::claim_table::{ClaimTable, Refusal, ReleaseGuard, Releases, Status};
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

/// Names, their owners, and each active name's route.
type Table = ClaimTable<String, (), Route>;

pub(crate) struct Names {
    table: Mutex<Table>,
    grace: Duration,
}

impl Releases<String> for Names {
    fn release(&self, name: &String, gen: u64, reserve: bool) {
        let grace = reserve.then_some(self.grace);
        self.lock().release(name, gen, grace, Instant::now());
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
        if req.ask.port().is_some() {
            return Err(ClaimError::Invalid(
                "a rendezvous frontend routes by tunnel name: remove remote_port".into(),
            ));
        }
        let mut t = self.lock();
        match t.check(&name, &req.owner, Instant::now()) {
            Err(Refusal::OtherOwner) => return Err(ClaimError::NameHeld(name)),
            Err(Refusal::Active) => {
                return Err(ClaimError::HeldBySession {
                    port: None,
                    name: Some(name),
                })
            }
            Ok(()) => {}
        }
        let route = Route {
            tunnel: req.tunnel.clone(),
            target: req.target.clone(),
            proxy_protocol: req.proxy_protocol,
        };
        let gen = t.join(name.clone(), &req.owner, route, |_| ());
        Ok(ReleaseGuard::name_claim(
            Arc::downgrade(self),
            endpoint,
            name,
            gen,
            req.reserve_on_release,
        ))
    }

    /// The route of an active name.
    pub(crate) fn lookup(&self, name: &str) -> Option<Route> {
        let name = name.to_ascii_lowercase();
        self.lock().get(&name)?.holders().next().cloned()
    }

    /// Whether the name is reserved for an owner whose session is gone.
    pub(crate) fn reserved(&self, name: &str) -> bool {
        let now = Instant::now();
        let t = self.lock();
        t.get(&name.to_ascii_lowercase())
            .is_some_and(|e| e.status(now) == Status::Reserved)
    }

    pub(crate) fn routes(
        &self,
        frontend: &str,
        endpoint: impl Fn(&str) -> String,
    ) -> Vec<RouteInfo> {
        self.lock()
            .name_routes(frontend, Instant::now(), endpoint, |_| None)
    }
}
