//! tunnelc's runtime threads (`worker_threads`): the default by transport, and its check.

use super::client::{ClientConfig, TransportKind};

/// The most runtime threads `worker_threads` allows.
pub const MAX_WORKER_THREADS: usize = 256;

impl ClientConfig {
    /// The runtime's worker threads (`None`: tokio's choice, one per core or
    /// `TOKIO_WORKER_THREADS`). Unset, one over yamux, h2-reverse and websocket: a session's
    /// link (its multiplexer and TLS) is one task whatever the count, and on one thread no
    /// visitor's bytes change threads on the way (bench: 7 % less CPU a GiB, 10 % a
    /// request); one per core over connect, where every parked visitor has its own TLS.
    pub fn runtime_threads(&self) -> Option<usize> {
        match self.worker_threads {
            Some(n) => Some(n),
            None if self.transport == TransportKind::Connect
                || std::env::var_os("TOKIO_WORKER_THREADS").is_some() =>
            {
                None
            }
            None => Some(1),
        }
    }

    /// `worker_threads`, when set, within 1..=[`MAX_WORKER_THREADS`].
    pub(super) fn check_worker_threads(&self, errors: &mut Vec<String>) {
        if let Some(n) = self
            .worker_threads
            .filter(|n| !(1..=MAX_WORKER_THREADS).contains(n))
        {
            errors.push(format!(
                "worker_threads: {n} is outside 1..={MAX_WORKER_THREADS}"
            ));
        }
    }
}
