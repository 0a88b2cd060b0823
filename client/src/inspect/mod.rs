//! The request inspector (`tunnelc --inspect 127.0.0.1:4040`): the last requests of tunnelc's
//! http tunnels as the local service received and answered them, served as web pages with
//! replay.
//!
//! Layout: [`tap`] watches a connection to a local service and records each HTTP/1.x
//! exchange into [`store`] (bounded by count, body size and memory); [`view`] turns captures
//! into readable text; [`web`] serves the pages ([`pages`]) and a JSON API; [`replay`] sends
//! a request again.

pub mod pages;
pub mod replay;
pub mod start;
pub mod store;
pub mod tap;
pub mod view;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use store::{Caps, Store};
use tap::{Recorder, Tap};

/// The inspector of one tunnelc: its store, and the token its forms carry.
pub struct Inspector {
    pub store: Arc<Store>,
    /// Every form posts it back: another web page open in the same browser cannot make
    /// the inspector replay or clear (it cannot read the token).
    csrf: String,
}

impl Inspector {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(Store::new(caps)),
            csrf: tunneld_core::auth::random_bytes::<16>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }

    /// `io`, a new connection to the local service `local` of http tunnel `tunnel`, with a
    /// recorder on it; `proxy_header` is the PROXY header already written on it.
    pub fn tap<T>(
        &self,
        io: T,
        tunnel: &str,
        local: &str,
        proxy_header: Option<Vec<u8>>,
    ) -> Tap<T> {
        let rec = Recorder::new(self.store.clone(), tunnel, local, proxy_header, None);
        Tap::new(io, rec)
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The inspector's place and caps (`inspect:` in tunnelc's config, `--inspect`).
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub address: SocketAddr,
    pub caps: Caps,
}
