//! The measurements, run against any endpoint that reaches [`crate::service`].

use crate::endpoint::{Endpoint, Io};
use crate::service::{HTTP_REQUEST, HTTP_RESPONSE};
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One visitor sends `bytes` to the sink; Gbit/s from connect to the sink's answer.
pub async fn throughput(addr: &Endpoint, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    let mut s = addr.connect().await?;
    let fut = async {
        s.write_all(b"S").await?;
        s.write_u64(bytes).await?;
        crate::service::send_bytes(&mut s, bytes, 0x5a).await?;
        // A TLS visitor (the rendezvous rows) may hold the last record until flushed.
        s.flush().await?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await?;
        Ok::<_, std::io::Error>(ack[0])
    };
    let ack = tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .context("throughput run timed out")??;
    if ack != b'K' {
        bail!("sink answered {ack:#x}");
    }
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// One visitor reads `bytes` from the source (a download); Gbit/s from connect to the last
/// byte.
pub async fn download(addr: &Endpoint, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    let mut s = addr.connect().await?;
    let fut = async {
        s.write_all(b"D").await?;
        s.write_u64(bytes).await?;
        s.flush().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, std::io::Error>(got)
    };
    let got = tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .context("download run timed out")??;
    if got != bytes {
        bail!("the download ended after {got} of {bytes} bytes");
    }
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// Time to first byte of `n` fresh connections, one after another, in microseconds.
pub async fn setup_latency(addr: &Endpoint, n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut s = addr.connect().await?;
        s.write_all(b"L").await?;
        s.flush().await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut b))
            .await
            .context("first byte timed out")??;
        out.push(started.elapsed().as_micros() as u64);
    }
    Ok(out)
}

/// Waits until `addr` serves a fresh connection end to end (tunnels that start listening
/// before their client is connected drop visitors meanwhile).
pub async fn wait_ready(addr: &Endpoint, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let probe = tokio::time::timeout(Duration::from_secs(2), setup_latency(addr, 1)).await;
        if matches!(probe, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not serve a connection within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HTTP/1.1 keep-alive load: `conns` connections for `duration`. Returns (requests per
/// second, latencies in microseconds).
pub async fn http(addr: &Endpoint, conns: usize, duration: Duration) -> Result<(f64, Vec<u64>)> {
    let mut tasks = Vec::with_capacity(conns);
    let started = Instant::now();
    let end = started + duration;
    for _ in 0..conns {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = addr.connect().await?;
            let mut lat = Vec::with_capacity(4096);
            let mut resp = vec![0u8; HTTP_RESPONSE.len()];
            while Instant::now() < end {
                let t = Instant::now();
                s.write_all(HTTP_REQUEST).await?;
                s.flush().await?;
                tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut resp))
                    .await
                    .context("response timed out")??;
                lat.push(t.elapsed().as_micros() as u64);
            }
            if resp != HTTP_RESPONSE {
                bail!("unexpected response");
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, all))
}

/// Opens `n` idle connections and waits until the service holds all of them.
pub async fn open_idle(
    addr: &Endpoint,
    n: usize,
    held: &std::sync::atomic::AtomicUsize,
) -> Result<Vec<Box<dyn Io>>> {
    let base = held.load(std::sync::atomic::Ordering::SeqCst);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = addr.connect().await?;
        s.write_all(b"I").await?;
        s.flush().await?;
        v.push(s);
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    while held.load(std::sync::atomic::Ordering::SeqCst) < base + n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} idle connections reached the service",
                held.load(std::sync::atomic::Ordering::SeqCst) - base
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(v)
}

/// The `p`-th percentile (0-100) of unsorted samples.
pub fn percentile(samples: &mut [u64], p: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// The median of a few figures.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&mut s, 50.0), 51);
        assert_eq!(percentile(&mut s, 99.0), 99);
        assert_eq!(percentile(&mut [], 50.0), 0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
