//! Where a visitor request goes: the 2ptth upstream, or a member of the tunnel its host
//! names.

use super::Conn;
use crate::names::Lookup;
use crate::pages;
use http::Response;
use std::sync::Arc;
use tunneld_core::http_forward::Body;
use tunneld_core::hub::Target;
use tunneld_core::proto::TunnelKind;

/// Where a request is forwarded.
pub(super) enum Route {
    Tunnel {
        tunnel: String,
        target: Arc<dyn Target>,
        proxy_protocol: Option<tunneld_core::proxy_protocol::Version>,
    },
    Upstream2ptth,
}

impl Conn {
    /// The route of a request for `host`, or the answer when there is none.
    pub(super) fn route(&self, host: &str) -> Result<Route, Box<Response<Body>>> {
        let fe = &self.fe;
        if fe
            .cfg
            .compat_2ptth
            .as_ref()
            .is_some_and(|c| c.hostname == host)
        {
            return Ok(Route::Upstream2ptth);
        }
        let misdirected = || {
            fe.count("misdirected");
            pages::misdirected(host, self.sni.as_deref())
        };
        let Some(rest) = host
            .strip_suffix(fe.cfg.domain.as_str())
            .and_then(|s| s.strip_suffix('.'))
        else {
            return Err(Box::new(misdirected()));
        };
        if !fe.resolver.covers(self.sni.as_deref(), host) {
            return Err(Box::new(misdirected()));
        }
        match fe.names.lookup_host(rest, true) {
            (_, Lookup::Unknown) => {
                fe.count("not_found");
                Err(Box::new(pages::not_found(host)))
            }
            (_, Lookup::Reserved) => {
                fe.count("offline");
                Err(Box::new(pages::offline(host)))
            }
            (_, Lookup::Active { kind, .. }) if kind != TunnelKind::Http => {
                Err(Box::new(misdirected()))
            }
            (_, Lookup::Active { members, .. }) => {
                let m = members
                    .iter()
                    .find(|m| m.target.online())
                    .or(members.first())
                    .cloned();
                match m {
                    Some(m) => Ok(Route::Tunnel {
                        tunnel: m.tunnel,
                        target: m.target,
                        proxy_protocol: m.proxy_protocol,
                    }),
                    None => {
                        fe.count("offline");
                        Err(Box::new(pages::offline(host)))
                    }
                }
            }
        }
    }
}
