//! A request head over the https frontend's limit gets 431, and the session and the
//! neighbour tunnel carry on.

use anyhow::{ensure, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tunneld_integration_tests::attack::{
    self, healthy, http_tunnels, server, verdict, SessionMark, Via, ATTACK,
};
use tunneld_integration_tests::neighbour::{Neighbour, Probe};
use tunneld_integration_tests::services;
use tunneld_integration_tests::TestServer;

use crate::common::{status_of, SERIAL};

/// The https frontend's default `limits.max_request_head`.
const MAX_HEAD: usize = 65536;

/// `GET /` for `<name>.localhost` with one `X-Big` header of `size` bytes of value.
fn big_get(s: &TestServer, name: &str, size: usize) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {name}.localhost:{}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        s.web().port(),
        "a".repeat(size)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431_and_spares_the_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let s = server(false, &[]).await?;
    let victim = services::http().await;
    let neighbour = services::http_body(4096).await;
    let bighead = services::big_response_head().await;
    let tunnels = http_tunnels(&[("victim", victim), ("nb", neighbour), ("bighead", bighead)]);
    let (mut alice, _) = attack::alice(&s, Via::H2Reverse, &tunnels).await?;

    // Anything below the limit crosses the link.
    let below = status_of(&s, "victim", big_get(&s, "victim", 60_000)).await;
    ensure!(
        matches!(below, Ok(200)),
        "a 60,000-byte header below the {MAX_HEAD}-byte limit: {below:?}"
    );

    let mark = SessionMark::take(&s, Via::H2Reverse).await?;
    let probe = Neighbour::start(Probe::https(&s, "nb", Some(4096)));
    let end = Instant::now() + ATTACK;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut visitors: JoinSet<(&'static str, Result<u16>)> = JoinSet::new();
    let s = Arc::new(s);
    for _ in 0..100 {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let (s1, s2) = (s.clone(), s.clone());
        visitors.spawn(async move {
            let req = big_get(&s1, "victim", 300_000);
            ("request", status_of(&s1, "victim", req).await)
        });
        visitors.spawn(async move {
            let req = big_get(&s2, "bighead", 0);
            ("response", status_of(&s2, "bighead", req).await)
        });
    }
    let report = probe.finish().await;
    let mut request_heads = Vec::new();
    let mut response_heads = Vec::new();
    while let Some(done) = visitors.join_next().await {
        let (kind, status) = done.context("visitor task")?;
        let status = status.map_err(|e| format!("{e:#}"));
        if kind == "request" {
            request_heads.push(status);
        } else {
            response_heads.push(status);
        }
    }
    let mut problems = Vec::new();
    healthy(
        &report,
        "neighbour http tunnel (same session) during oversized heads",
        &mut problems,
    );
    let summary = |v: &[std::result::Result<u16, String>]| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for r in v {
            let k = match r {
                Ok(c) => c.to_string(),
                Err(e) => format!("error: {e}"),
            };
            *counts.entry(k).or_default() += 1;
        }
        counts
    };
    if request_heads.is_empty() || request_heads.iter().any(|r| r != &Ok(431)) {
        problems.push(format!(
            "visitors with a 300,000-byte request header: want only 431, got {:?}",
            summary(&request_heads)
        ));
    }
    if response_heads.is_empty() || response_heads.iter().any(|r| r != &Ok(502)) {
        problems.push(format!(
            "visitors of a service answering with a 300,000-byte header: want only 502, got {:?}",
            summary(&response_heads)
        ));
    }
    let after = status_of(&s, "victim", big_get(&s, "victim", 60_000)).await;
    if !matches!(after, Ok(200)) {
        problems.push(format!(
            "after the attack, a 60,000-byte header to the victim: {after:?}"
        ));
    }
    problems.extend(mark.problems(&s, &mut alice).await?);
    eprintln!("neighbour: {report}");
    alice.shutdown().await.ok();
    verdict(problems)
}
