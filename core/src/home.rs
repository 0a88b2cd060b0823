//! A session's home: the task that drives a session's multiplexer (native yamux and
//! h2-reverse sessions at tunneld and at tunnelc) also runs the relays of its
//! visitors while they carry small exchanges (requests and answers), so a request no longer
//! hands work between a visitor's task and the session's. On h2-reverse, hyper's own task
//! for the HTTP/2 connection runs there too (the link's executor sends it [`Home::run`]).
//! With a task per visitor, tokio's scheduler spreads visitor tasks over its worker threads
//! and every request woke the session's task on another thread (ports over yamux on 2 cores:
//! 8.8-9.0 against 7.4-7.8 µs of tunneld's CPU a request, docs/benchmarks.md).
//! Sessions of different clients still spread over every thread: each is a task of its own.
//! A relay that starts moving bulk data leaves for a task of its own (the ports frontend,
//! [`crate::splice::splice_until_bulk`]), so one download or upload still gets a second
//! core for its copies; one whose other direction has ended (a half-closed connection) stays.
//!
//! A relay sent [`Home::run`] lives as long as the session's task: when the session ends,
//! its relays are dropped with it (their streams ended with the session anyway), unless the
//! session hands its hearth to [`Hearth::finish`] (h2-reverse, whose connection may outlive
//! the session's own work).

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// One visitor's relay, run to its end at home.
pub type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a session's visitors' relays run: cloned into the session's opener.
#[derive(Clone, Debug)]
pub struct Home {
    tx: mpsc::UnboundedSender<Relay>,
}

/// The relays of one [`Home`], polled by the session's own task ([`Hearth::run`]).
pub struct Hearth {
    rx: mpsc::UnboundedReceiver<Relay>,
    relays: FuturesUnordered<Relay>,
}

/// A home and its hearth (the half the session's task polls).
pub fn home() -> (Home, Hearth) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Home { tx },
        Hearth {
            rx,
            relays: FuturesUnordered::new(),
        },
    )
}

impl Home {
    /// Runs `relay` on the session's task; gives it back when the session is gone.
    pub fn run(&self, relay: Relay) -> Result<(), Relay> {
        self.tx.send(relay).map_err(|e| e.0)
    }

    /// Whether both are the home of one session.
    pub fn same(&self, other: &Home) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

/// hyper's executor for a connection whose tasks (a reversed link's connection and pipes,
/// the services of an HTTP/2 connection's streams) run at a home while it takes them, and on
/// tasks of their own once it is closed or when there is none.
#[derive(Clone, Debug, Default)]
pub struct HomeExecutor {
    pub home: Option<Home>,
}

impl<F> hyper::rt::Executor<F> for HomeExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let fut = match &self.home {
            Some(h) => match h.run(Box::pin(fut)) {
                Ok(()) => return,
                Err(fut) => fut,
            },
            None => Box::pin(fut),
        };
        tokio::spawn(fut);
    }
}

impl Hearth {
    /// Relays running now.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether no relay runs.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Takes the relays sent home and polls those that are ready. A relay that panics ends
    /// alone, as it would on a task of its own, not the session's task with every visitor.
    pub fn poll_relays(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(relay)) = self.rx.poll_recv(cx) {
            self.relays.push(Box::pin(
                std::panic::AssertUnwindSafe(relay)
                    .catch_unwind()
                    .map(|_| ()),
            ));
        }
        // Pending once none is ready (FuturesUnordered also yields after a round of every
        // relay, waking the task again), Ready(None) when none is left.
        while let Poll::Ready(Some(())) = self.relays.poll_next_unpin(cx) {}
    }

    /// Runs the relays already home to their ends, then closes the home (relays sent later
    /// run on tasks of their own): for a session whose task ended while its connection may
    /// still carry streams (an HTTP/2 link replaced by a newer session).
    pub async fn finish(mut self) {
        std::future::poll_fn(|cx| {
            self.poll_relays(cx);
            if self.relays.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        self.rx.close();
        // `recv`, not `try_recv`: it also waits for a send already under way.
        while let Some(relay) = self.rx.recv().await {
            tokio::spawn(relay);
        }
    }

    /// Runs `work` on the caller's task with the relays beside it; `work`'s output once it
    /// is ready. In each poll the relays run after `work` and outside tokio's cooperative
    /// budget, so `work`'s reads cannot use it up before they run (FuturesUnordered still
    /// yields after one round of them). Relays still running then stay with the hearth.
    pub async fn beside<F: Future>(&mut self, work: F) -> F::Output {
        let work = std::pin::pin!(work);
        let relays = std::pin::pin!(tokio::task::unconstrained(self.run()));
        match futures::future::select(work, relays).await {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right(((), work)) => work.await,
        }
    }

    /// Runs the relays for as long as the caller polls it: for a branch of the session
    /// task's `select!`, never ready.
    pub async fn run(&mut self) {
        std::future::poll_fn(|cx| {
            self.poll_relays(cx);
            Poll::<()>::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Polls the hearth once.
    async fn poll_once(hearth: &mut Hearth) {
        std::future::poll_fn(|cx| {
            hearth.poll_relays(cx);
            Poll::Ready(())
        })
        .await
    }

    /// Sends home a relay that counts itself done.
    fn counting(home: &Home, done: &Arc<AtomicUsize>) {
        let d = done.clone();
        assert!(home
            .run(Box::pin(async move {
                d.fetch_add(1, Ordering::SeqCst);
            }))
            .is_ok());
    }

    /// A relay that counts once `go` is sent (or dropped).
    fn waiting(home: &Home, done: &Arc<AtomicUsize>) -> tokio::sync::oneshot::Sender<()> {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let d = done.clone();
        assert!(home
            .run(Box::pin(async move {
                let _ = wait.await;
                d.fetch_add(1, Ordering::SeqCst);
            }))
            .is_ok());
        go
    }

    #[tokio::test]
    async fn a_relay_that_panics_ends_alone() {
        let (home, mut hearth) = home();
        let done = Arc::new(AtomicUsize::new(0));
        assert!(home
            .run(Box::pin(async { panic!("a relay's bug") }))
            .is_ok());
        counting(&home, &done);
        poll_once(&mut hearth).await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "the other relay ran");
        assert!(hearth.is_empty(), "the panicked relay is gone");
        assert!(
            home.run(Box::pin(async {})).is_ok(),
            "the home still takes relays"
        );
    }

    #[tokio::test]
    async fn work_beside_the_hearth_gets_its_relays_run_and_keeps_the_unfinished() {
        let (home, mut hearth) = home();
        let done = Arc::new(AtomicUsize::new(0));
        let go = waiting(&home, &done);
        // The work sends a relay home and waits for it: it finishes only if the relays
        // run beside it, on this task.
        let (sent, ran) = tokio::sync::oneshot::channel::<u32>();
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            hearth.beside(async {
                assert!(home
                    .run(Box::pin(async move {
                        let _ = sent.send(7);
                    }))
                    .is_ok());
                ran.await.unwrap_or(0) + 1
            }),
        )
        .await;
        assert_eq!(out.ok(), Some(8), "the relay ran beside the work");
        assert_eq!(hearth.len(), 1, "the waiting relay stays with the hearth");
        drop(go);
        poll_once(&mut hearth).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(hearth.is_empty());
    }

    #[tokio::test]
    async fn relays_run_on_the_task_that_polls_the_hearth_and_end_with_it() {
        let (home, mut hearth) = home();
        let done = Arc::new(AtomicUsize::new(0));
        let go_tx = waiting(&home, &done);
        counting(&home, &done);
        // One poll takes both, finishes the ready one and keeps the waiting one.
        poll_once(&mut hearth).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(hearth.len(), 1);
        let _ = go_tx.send(());
        let finished = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::select! {
                _ = hearth.run() => unreachable!("the hearth never ends"),
                _ = async {
                    while done.load(Ordering::SeqCst) < 2 {
                        tokio::task::yield_now().await;
                    }
                } => {}
            }
        })
        .await;
        assert!(finished.is_ok(), "the waiting relay ran once woken");
        assert!(hearth.is_empty());
        // The session ends: a relay sent now comes back to its sender.
        assert!(home.same(&home.clone()));
        drop(hearth);
        assert!(home.run(Box::pin(async {})).is_err());
    }

    /// A finished session's hearth runs what it holds to the end, then takes no more.
    #[tokio::test]
    async fn a_finishing_hearth_ends_its_relays_then_closes_the_home() {
        let (home, hearth) = home();
        let done = Arc::new(AtomicUsize::new(0));
        let go_tx = waiting(&home, &done);
        let finishing = tokio::spawn(hearth.finish());
        let _ = go_tx.send(());
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), finishing).await;
        assert!(matches!(ended, Ok(Ok(()))), "the hearth finished");
        assert_eq!(done.load(Ordering::SeqCst), 1, "its relay ran to the end");
        assert!(home.run(Box::pin(async {})).is_err(), "the home is closed");
    }
}
