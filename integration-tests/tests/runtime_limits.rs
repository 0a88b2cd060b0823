//! The real binaries under the limits they start with: the open-file limit each raises
//! (and tunneld reports), and tunneld's runtime threads.

use tunneld_integration_tests::process::{binary, curl, field, Proc};
use tunneld_integration_tests::{port_block, server_yaml, services, temp_dir, ALICE_TOKEN};

/// The soft and hard open-file limits of process `pid` (from `/proc/<pid>/limits`;
/// `unlimited` is `u64::MAX`).
fn open_file_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let n: Vec<u64> = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .take(2)
        .map(|w| {
            if w == "unlimited" {
                u64::MAX
            } else {
                w.parse().expect("a limit")
            }
        })
        .collect();
    (n[0], n[1])
}

/// What a program started with a soft limit of 128 logs about it, under hard limit `hard`.
fn limit_line(hard: u64) -> String {
    let now = hard.min(1 << 20);
    if now < 4096 {
        format!("may open only {now} files at once")
    } else {
        format!("open-file limit raised from 128 to {now}")
    }
}

/// Started with a soft open-file limit of 128 (below one listener's connection cap), tunneld
/// and tunnelc each raise it to the hard limit, say so in their logs, and tunneld reports
/// the limit and the descriptors it holds on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_file_limit_is_raised_at_start_and_reported() {
    let (_, hard) = open_file_limits(std::process::id());
    assert!(
        hard > 128,
        "the hard open-file limit ({hard}) leaves nothing to raise"
    );
    let low = "ulimit -Sn 128 && exec \"$0\" \"$@\"";
    let dir = temp_dir("fdlimit");
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), port_block(), "")).expect("write");
    let tunneld = binary("tunneld").expect("tunneld");
    let mut d = Proc::spawn_program(
        std::path::Path::new("bash"),
        &[
            "-c",
            low,
            tunneld.to_str().expect("utf8"),
            "--config",
            file.to_str().expect("utf8"),
        ],
        dir.join("tunneld.err"),
    )
    .expect("spawn tunneld");
    let transport = field(
        &d.line_starting("listening transport=edge")
            .await
            .expect("edge"),
        "addr",
    )
    .expect("addr");
    let admin = field(
        &d.line_starting("listening admin").await.expect("admin"),
        "addr",
    )
    .expect("admin addr");
    let ca = field(&d.line_starting("trust ").await.expect("trust"), "ca").expect("ca");
    d.line_starting("ready").await.expect("ready");
    let pid = d.child.id().expect("running");
    let (soft, hard) = open_file_limits(pid);
    assert_eq!(soft, hard.min(1 << 20), "tunneld's soft limit is raised");
    assert!(
        d.stderr().contains(&limit_line(hard)),
        "tunneld says so: {}",
        d.stderr()
    );
    let (st, body) = curl(&[&format!("http://{admin}/metrics")])
        .await
        .expect("curl");
    assert!(st.success(), "metrics: {body}");
    let m = tunneld_integration_tests::metrics::parse(&body).expect("metrics parse");
    assert_eq!(m.get("process_max_fds", &[]), soft as f64);
    let open = m.get("process_open_fds", &[]);
    assert!(
        (4.0..soft as f64).contains(&open),
        "listeners and log files at least, below the limit: {open}"
    );

    let local = services::echo().await;
    let tunnelc = binary("tunnelc").expect("tunnelc");
    let local = local.to_string();
    let mut c = Proc::spawn_program(
        std::path::Path::new("bash"),
        &[
            "-c",
            low,
            tunnelc.to_str().expect("utf8"),
            "tcp",
            &local,
            "--server",
            &transport,
            "--token",
            ALICE_TOKEN,
            "--ca",
            &ca,
            "--server-name",
            "localhost",
        ],
        dir.join("tunnelc.err"),
    )
    .expect("spawn tunnelc");
    c.line_starting("tunnel tcp:").await.expect("up");
    let (soft, hard) = open_file_limits(c.child.id().expect("running"));
    assert_eq!(soft, hard.min(1 << 20), "tunnelc's soft limit is raised");
    assert!(
        c.stderr().contains(&limit_line(hard)),
        "tunnelc says so: {}",
        c.stderr()
    );
}

/// `worker_threads` sets tunneld's runtime threads (one per core unset); out of range, the
/// configuration is refused with the key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunneld_runs_the_worker_threads_it_is_given() {
    let dir = temp_dir("threads");
    let file = dir.join("server.yaml");
    std::fs::write(&file, server_yaml(&dir.join("state"), port_block(), "")).expect("write");
    let file = file.to_str().expect("utf8");
    for n in [1usize, 3] {
        let set = format!("worker_threads={n}");
        let mut d = Proc::spawn(
            "tunneld",
            &["--config", file, "--set", &set],
            dir.join(format!("tunneld-{n}.err")),
        )
        .expect("spawn tunneld");
        d.line_starting("ready").await.expect("ready");
        assert!(
            d.stderr()
                .contains(&format!("runtime worker threads: {n}\n")),
            "{set}: {}",
            d.stderr()
        );
    }
    let out = std::process::Command::new(binary("tunneld").expect("tunneld"))
        .args(["--check", "--config", file, "--set", "worker_threads=0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker_threads: 0 is outside 1..=256"),
        "{err}"
    );
}
