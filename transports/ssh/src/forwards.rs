//! Remote forwards: what an OpenSSH client's `-R` asks for, turned into a tunnel request on
//! tunneld's frontends, and the [`OpenStream`] that turns each visitor into a
//! `forwarded-tcpip` channel naming the forward exactly as the client asked for it (OpenSSH
//! matches the channel to its `-R` by that address and port).

use crate::channel_io::{ChannelIo, Pumps};
use async_trait::async_trait;
use russh::server::Handle;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tunneld_core::io::BoxIo;
use tunneld_core::proto::TunnelKind;
use tunneld_core::session::{OpenError, OpenStream, StreamHeader, OPEN_REPLY_DEADLINE};
use tunneld_core::sync::lock;

/// One forward the client holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forward {
    /// The bind address as the client sent it (echoed in each channel).
    pub address: String,
    /// The port as the client knows it: the one it asked for, or the allocated one.
    pub port: u32,
    pub kind: TunnelKind,
    pub endpoint: String,
}

/// What a `tcpip-forward` request asks tunneld for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A port on a ports frontend (`None`: any free one).
    Port(Option<u16>),
    /// A name on the https frontend: `Http` terminates TLS (`-R name:80:...`), `Tls` passes it
    /// through by SNI (`-R name:443:...`); no name lets tunneld pick one.
    Name {
        kind: TunnelKind,
        name: Option<String>,
    },
}

/// Addresses that mean "no name, just bind" in a forward request.
fn is_bind_address(address: &str) -> bool {
    matches!(address, "" | "*" | "localhost") || address.parse::<IpAddr>().is_ok()
}

/// Why a forward request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WantedError {
    #[error("port {0} is out of range")]
    Port(u32),
    #[error("a named forward (`-R {0}:PORT:...`) must use port 80 (HTTP, TLS ended by tunneld) or 443 (TLS passed through)")]
    NamedPort(String),
}

/// Reads a forward request: a name only with port 80 or 443; port 80 or 443 without a name
/// is a name tunneld picks; anything else is a port.
pub fn wanted(address: &str, port: u32) -> Result<Wanted, WantedError> {
    let named = !is_bind_address(address);
    let kind = match port {
        80 => Some(TunnelKind::Http),
        443 => Some(TunnelKind::Tls),
        _ => None,
    };
    match (named, kind) {
        (true, Some(kind)) => Ok(Wanted::Name {
            kind,
            name: Some(address.to_ascii_lowercase()),
        }),
        (true, None) => Err(WantedError::NamedPort(address.to_string())),
        (false, Some(kind)) => Ok(Wanted::Name { kind, name: None }),
        (false, None) => match u16::try_from(port) {
            Ok(0) => Ok(Wanted::Port(None)),
            Ok(p) => Ok(Wanted::Port(Some(p))),
            Err(_) => Err(WantedError::Port(port)),
        },
    }
}

/// The forwards of one SSH session, by tunnel name.
#[derive(Default)]
pub(crate) struct Forwards {
    by_tunnel: Mutex<HashMap<String, Forward>>,
}

impl Forwards {
    pub(crate) fn insert(&self, tunnel: String, f: Forward) {
        lock(&self.by_tunnel).insert(tunnel, f);
    }

    pub(crate) fn get(&self, tunnel: &str) -> Option<Forward> {
        lock(&self.by_tunnel).get(tunnel).cloned()
    }

    /// The tunnel holding the forward the client names by address and port.
    pub(crate) fn remove_by_request(&self, address: &str, port: u32) -> Option<String> {
        let mut all = lock(&self.by_tunnel);
        let tunnel = all
            .iter()
            .find(|(_, f)| f.address == address && f.port == port)
            .map(|(t, _)| t.clone())?;
        all.remove(&tunnel);
        Some(tunnel)
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.by_tunnel).len()
    }

    /// Every forward, sorted by endpoint.
    pub(crate) fn all(&self) -> Vec<Forward> {
        let mut v: Vec<_> = lock(&self.by_tunnel).values().cloned().collect();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        v
    }
}

/// tunneld's side of the session's streams: a `forwarded-tcpip` channel per visitor.
pub(crate) struct SshOpener {
    pub(crate) handle: OnceLock<Handle>,
    pub(crate) forwards: Arc<Forwards>,
    pub(crate) pumps: Arc<Pumps>,
}

/// The address a probe channel names: no client forwards it, so a live client answers at
/// once with a refusal.
const PROBE_ADDRESS: &str = "tunneld-probe.invalid";

#[async_trait]
impl OpenStream for SshOpener {
    async fn open(&self, header: StreamHeader) -> Result<BoxIo, OpenError> {
        let Some(f) = self.forwards.get(&header.tunnel) else {
            return Err(OpenError::Session(format!(
                "the SSH client no longer forwards tunnel `{}`",
                header.tunnel
            )));
        };
        let handle = self.handle.get().ok_or(OpenError::Offline)?;
        let budget = &self.pumps.budget;
        if !budget.reserve() {
            return Err(OpenError::Capped("for the SSH session's window budget"));
        }
        let open = handle.channel_open_forwarded_tcpip(
            f.address,
            f.port,
            header.visitor.ip().to_string(),
            u32::from(header.visitor.port()),
        );
        let opened = tokio::time::timeout(OPEN_REPLY_DEADLINE, open).await;
        if !matches!(opened, Ok(Ok(_))) {
            budget.unreserve();
        }
        match opened {
            Ok(Ok(channel)) => Ok(Box::new(ChannelIo::start(
                channel,
                handle.clone(),
                self.pumps.clone(),
            ))),
            Ok(Err(russh::Error::ChannelOpenFailure(why))) => Err(OpenError::LocalRefused(
                format!("the SSH client refused the channel ({why:?})"),
            )),
            Ok(Err(e)) => Err(OpenError::Session(e.to_string())),
            Err(_) => Err(OpenError::Timeout),
        }
    }

    /// Opens a channel for a forward the client never asked for: a live OpenSSH client
    /// refuses it at once; a dead one does not answer.
    async fn probe(&self, deadline: Duration) -> bool {
        let Some(handle) = self.handle.get() else {
            return false;
        };
        let open = handle.channel_open_forwarded_tcpip(PROBE_ADDRESS, 1, "127.0.0.1", 1);
        match tokio::time::timeout(deadline, open).await {
            Ok(Ok(channel)) => {
                // Its queue is dropped first: nothing the client sends on it can fill it.
                let (queue, write) = channel.split();
                drop(queue);
                let _ = write.close().await;
                true
            }
            Ok(Err(russh::Error::ChannelOpenFailure(_))) => true,
            Ok(Err(_)) | Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_requests() {
        assert_eq!(wanted("0.0.0.0", 20001), Ok(Wanted::Port(Some(20001))));
        assert_eq!(wanted("localhost", 0), Ok(Wanted::Port(None)));
        assert_eq!(wanted("", 0), Ok(Wanted::Port(None)));
        assert_eq!(
            wanted("MyApp", 80),
            Ok(Wanted::Name {
                kind: TunnelKind::Http,
                name: Some("myapp".into())
            })
        );
        assert_eq!(
            wanted("myapp", 443),
            Ok(Wanted::Name {
                kind: TunnelKind::Tls,
                name: Some("myapp".into())
            })
        );
        assert_eq!(
            wanted("localhost", 80),
            Ok(Wanted::Name {
                kind: TunnelKind::Http,
                name: None
            })
        );
        assert!(matches!(
            wanted("myapp", 8080),
            Err(WantedError::NamedPort(_))
        ));
        assert_eq!(wanted("::", 70000), Err(WantedError::Port(70000)));
    }

    #[test]
    fn forwards_by_request() {
        let f = Forwards::default();
        f.insert(
            "tcp-1".into(),
            Forward {
                address: "0.0.0.0".into(),
                port: 20001,
                kind: TunnelKind::Tcp,
                endpoint: "tcp://127.0.0.1:20001".into(),
            },
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f.remove_by_request("0.0.0.0", 20002), None);
        assert_eq!(
            f.remove_by_request("0.0.0.0", 20001).as_deref(),
            Some("tcp-1")
        );
        assert_eq!(f.len(), 0);
    }
}
