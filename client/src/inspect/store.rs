//! The inspector's memory: the last requests of tunnelc's http tunnels, bounded by count
//! and by bytes (heads and captured bodies), the oldest dropped first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tunneld_core::http1::RequestHead;
use tunneld_core::sync::lock;

/// A captured body: its first bytes as they crossed the wire (chunked framing included), up
/// to the inspector's cap.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Bytes the body had on the wire, captured or not.
    pub wire_len: u64,
    /// Whether `bytes` stops before the body did.
    pub truncated: bool,
    pub chunked: bool,
    /// Whether the body was followed to its end (a request still arriving, or one whose
    /// connection ended first, is not).
    pub complete: bool,
}

/// A response as tunnelc read it from the local service.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
}

/// Where an exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request is on its way or the response has not ended.
    Pending,
    Complete,
    /// The connection ended (or stopped being HTTP tunnelc can follow) first: why.
    Failed(String),
}

/// One request and its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub id: u64,
    pub tunnel: String,
    /// The local service it went to.
    pub local: String,
    pub at: SystemTime,
    pub started: Instant,
    pub request: RequestHead,
    pub request_body: Body,
    pub response: Option<Response>,
    pub duration: Option<Duration>,
    pub outcome: Outcome,
    /// The exchange this one replayed.
    pub replay_of: Option<u64>,
    /// The PROXY protocol header tunnelc sent first on the connection (a replay sends it
    /// again, so the service sees the same visitor).
    pub proxy_header: Option<Vec<u8>>,
}

impl Exchange {
    /// Bytes it holds, for the memory cap.
    fn weight(&self) -> usize {
        // A field's strings, their two allocations and the pair.
        let head = |h: &[(String, Vec<u8>)]| -> usize {
            h.iter().map(|(n, v)| n.len() + v.len() + 64).sum()
        };
        let req: usize = head(&self.request.headers) + self.request.target.len();
        let resp = self
            .response
            .as_ref()
            .map(|r| head(&r.headers) + r.body.bytes.len() + r.reason.len())
            .unwrap_or(0);
        256 + req + self.request_body.bytes.len() + resp
    }
}

/// Caps of the store.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_requests: usize,
    pub max_body: usize,
    pub max_memory: usize,
}

struct Inner {
    /// Shared with readers: a page copies pointers under the lock, not bodies.
    list: VecDeque<Arc<Exchange>>,
    next_id: u64,
    weight: usize,
    dropped: u64,
}

/// The shared store; every change bumps a generation that the pages watch.
pub struct Store {
    caps: Caps,
    inner: Mutex<Inner>,
    /// Body bytes captured by connections and not stored yet, bounded by `max_memory`.
    in_transit: AtomicUsize,
    generation: watch::Sender<u64>,
}

impl Store {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            inner: Mutex::new(Inner {
                list: VecDeque::new(),
                next_id: 1,
                weight: 0,
                dropped: 0,
            }),
            in_transit: AtomicUsize::new(0),
            generation: watch::Sender::new(0),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A receiver that changes with every change of the store.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Records a request whose head was just read; its id.
    pub fn begin(
        &self,
        tunnel: &str,
        local: &str,
        proxy_header: Option<Vec<u8>>,
        request: RequestHead,
        replay_of: Option<u64>,
    ) -> u64 {
        let id = {
            let mut g = lock(&self.inner);
            let id = g.next_id;
            g.next_id += 1;
            let e = Exchange {
                id,
                tunnel: tunnel.to_string(),
                local: local.to_string(),
                at: SystemTime::now(),
                started: Instant::now(),
                request,
                request_body: Body::default(),
                response: None,
                duration: None,
                outcome: Outcome::Pending,
                replay_of,
                proxy_header,
            };
            g.weight += e.weight();
            g.list.push_back(Arc::new(e));
            self.evict(&mut g);
            id
        };
        self.changed();
        id
    }

    /// Changes exchange `id` (gone already: nothing happens).
    pub fn update(&self, id: u64, change: impl FnOnce(&mut Exchange)) {
        {
            let mut g = lock(&self.inner);
            let Some(pos) = g.list.iter().position(|e| e.id == id) else {
                return;
            };
            let e = Arc::make_mut(&mut g.list[pos]);
            let before = e.weight();
            change(e);
            let after = e.weight();
            g.weight = g.weight + after - before;
            self.evict(&mut g);
        }
        self.changed();
    }

    /// Marks `id` complete with its response.
    pub fn finish(&self, id: u64, response: Response) {
        self.update(id, |e| {
            e.duration = Some(e.started.elapsed());
            e.response = Some(response);
            e.outcome = Outcome::Complete;
        });
    }

    /// Marks `id` failed, unless it completed.
    pub fn fail(&self, id: u64, why: &str) {
        self.update(id, |e| {
            if e.outcome == Outcome::Pending {
                e.duration = Some(e.started.elapsed());
                e.outcome = Outcome::Failed(why.to_string());
            }
        });
    }

    fn evict(&self, g: &mut Inner) {
        // The newest exchange stays even when it alone is over the memory cap (its bodies
        // are already capped at max_body).
        while g.list.len() > 1
            && (g.list.len() > self.caps.max_requests || g.weight > self.caps.max_memory)
        {
            if let Some(old) = g.list.pop_front() {
                g.weight -= old.weight();
                g.dropped += 1;
            }
        }
    }

    /// Reserves `n` bytes for a body capture in transit; false when that would pass
    /// `max_memory` (the capture stops there, marked cut).
    pub fn reserve(&self, n: usize) -> bool {
        self.in_transit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| *t <= self.caps.max_memory)
            })
            .is_ok()
    }

    /// Gives back `n` reserved bytes (the capture was stored, or dropped).
    pub fn release(&self, n: usize) {
        let _ = self
            .in_transit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Every exchange kept, oldest first.
    pub fn all(&self) -> Vec<Arc<Exchange>> {
        lock(&self.inner).list.iter().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        lock(&self.inner).list.iter().find(|e| e.id == id).cloned()
    }

    /// (exchanges kept, bytes they hold, exchanges dropped for the caps).
    pub fn stats(&self) -> (usize, usize, u64) {
        let g = lock(&self.inner);
        (g.list.len(), g.weight, g.dropped)
    }

    /// Forgets every exchange.
    pub fn clear(&self) {
        {
            let mut g = lock(&self.inner);
            g.dropped += g.list.len() as u64;
            g.list.clear();
            g.weight = 0;
        }
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(target: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: target.into(),
            minor: 1,
            headers: vec![("Host".into(), b"x".to_vec())],
        }
    }

    #[test]
    fn keeps_the_newest_within_count_and_memory() {
        let s = Store::new(Caps {
            max_requests: 3,
            max_body: 100,
            max_memory: 1 << 20,
        });
        for i in 0..5 {
            s.begin("web", "127.0.0.1:1", None, head(&format!("/{i}")), None);
        }
        let kept: Vec<String> = s
            .all()
            .into_iter()
            .map(|e| e.request.target.clone())
            .collect();
        assert_eq!(kept, ["/2", "/3", "/4"]);
        assert_eq!(s.stats().2, 2);

        let small = Store::new(Caps {
            max_requests: 100,
            max_body: 100,
            max_memory: 700,
        });
        for i in 0..5 {
            let id = small.begin("web", "l", None, head(&format!("/{i}")), None);
            small.update(id, |e| e.request_body.bytes = vec![b'x'; 100]);
        }
        let (n, weight, _) = small.stats();
        assert!(n < 5 && weight <= 700, "{n} kept, {weight} bytes");
        assert_eq!(small.all().last().map(|e| e.id), Some(5));
    }

    #[test]
    fn a_failure_does_not_undo_a_completion_and_changes_bump_the_generation() {
        let s = Store::new(Caps {
            max_requests: 10,
            max_body: 10,
            max_memory: 1 << 20,
        });
        let w = s.watch();
        let id = s.begin("web", "l", None, head("/"), None);
        s.finish(
            id,
            Response {
                status: 204,
                reason: "No Content".into(),
                headers: vec![],
                body: Body::default(),
            },
        );
        s.fail(id, "closed");
        assert_eq!(
            s.get(id).map(|e| e.outcome.clone()),
            Some(Outcome::Complete)
        );
        assert!(*w.borrow() >= 2);
    }
}
