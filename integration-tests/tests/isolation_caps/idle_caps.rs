//! Idle connections that fill a tunnel's stream cap or an address's own cap refuse only
//! those visitors.

use crate::common::*;

/// Finding 7: 300 silent visitors on tunnel A past its cap of 100 streams; tunnel B of the
/// same session answers, A's extra visitors get an empty close (`tunnel_cap`), and A serves
/// again once the silent ones leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_on_one_port_do_not_refuse_the_clients_other_ports() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (s, alice, a, b) = echo_pair("limits.max_streams_per_tunnel=100").await?;

    let mut idle = Idle::open(a, 300, None).await?;
    idle.wait_closed(200)
        .await
        .context("visitors of A past its cap of 100")?;
    let cap = [("reason", "tunnel_cap")];
    metric_reaches(&s, "tunneld_streams_refused_total", &cap, 200.0).await?;
    metric_reaches(&s, "tunneld_streams_active", &[("frontend", "tcp")], 100.0)
        .await
        .context("A's 100 silent streams")?;

    for i in 0..20 {
        echo_round(b, None, i)
            .await
            .with_context(|| format!("tunnel B, round trip {i}, while A is at its cap"))?;
    }
    refused_visitor(a, None)
        .await
        .context("one more visitor of A at its cap")?;
    assert_refused(&s.metrics().await, "tunnel_cap", 201.0, "address_cap")?;
    serves_after_idle(&s, alice, idle, a, None, (a, 77), "A").await
}

/// The per-address cap: 300 silent visitors from 127.0.0.1 on tunnel A past a cap of 50
/// streams per address; a visitor from 127.0.0.2 is served by A and B, one more from
/// 127.0.0.1 is refused on B too (the cap is the address's, across the session's tunnels),
/// and 127.0.0.1 is served again once the silent ones leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_refuse_other_addresses() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (s, alice, a, b) = echo_pair("limits.max_streams_per_address=50").await?;
    let other: IpAddr = [127, 0, 0, 2].into();
    let home: IpAddr = [127, 0, 0, 1].into();

    let mut idle = Idle::open(a, 300, Some(home)).await?;
    idle.wait_closed(250)
        .await
        .context("visitors from 127.0.0.1 past its cap of 50")?;
    let cap = [("reason", "address_cap")];
    metric_reaches(&s, "tunneld_streams_refused_total", &cap, 250.0).await?;
    metric_reaches(&s, "tunneld_streams_active", &[("frontend", "tcp")], 50.0).await?;

    for i in 0..20 {
        echo_round(b, Some(other), i)
            .await
            .with_context(|| format!("tunnel B from 127.0.0.2, round trip {i}"))?;
        echo_round(a, Some(other), 100 + i)
            .await
            .with_context(|| format!("tunnel A from 127.0.0.2, round trip {i}"))?;
    }
    refused_visitor(b, Some(home))
        .await
        .context("a visitor of B from 127.0.0.1 at its address cap")?;
    assert_refused(&s.metrics().await, "address_cap", 251.0, "tunnel_cap")?;
    serves_after_idle(&s, alice, idle, a, Some(home), (b, 78), "127.0.0.1").await
}
