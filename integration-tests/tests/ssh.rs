//! Transport `ssh` driven by the real OpenSSH client: `ssh -R 0:...` (a free port),
//! `ssh -R PORT:...`, `ssh -R name:80:...` through the https frontend (HTTP/1.1 and HTTP/2 with
//! curl), `-R name:443:...` passed through by SNI, 64 MiB each way, 200 concurrent visitors,
//! a killed ssh reclaiming its port, a service that speaks first to 200 visitors, and
//! the refusals: unknown keys, commands, local forwards, a forward outside the client's ports.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_integration_tests::process::curl;
use tunneld_integration_tests::ssh::{base_args, keygen, peer_or_skip, server, Ssh};
use tunneld_integration_tests::{pattern, services, sha256_hex, temp_dir, TestServer, WAIT};

fn ssh_port(s: &TestServer) -> u16 {
    s.running.transports["ssh"].port()
}

/// `ssh -N -R <spec>` as alice.
fn forward(s: &TestServer, key: &std::path::Path, spec: &str) -> Ssh {
    let mut args = base_args(ssh_port(s), key);
    args.extend(
        [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            spec,
            "alice@127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Ssh::spawn("ssh", &args, &[]).expect("spawn ssh")
}

/// Polls `url` with curl (extra args first) until it answers 200; the body.
async fn get_when_up(args: &[&str], url: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-w", "\n%{http_code} %{http_version}", url]);
        let last = curl(&all).await;
        if let Ok((_, out)) = &last {
            if out.ends_with("\n200 1.1") || out.ends_with("\n200 2") {
                return out.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered 200; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn echo_roundtrip(ep: SocketAddr, len: usize, seed: u64) -> anyhow::Result<()> {
    let data = pattern(len, seed);
    let mut s = TcpStream::connect(ep).await?;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(len);
    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
    sent?;
    got?;
    anyhow::ensure!(
        back == data,
        "echo differs ({} of {len} bytes back)",
        back.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_port_carries_64_mib_each_way_and_200_concurrent_visitors() {
    if !peer_or_skip("ssh", "ssh any port") {
        return;
    }
    let dir = temp_dir("ssh-any");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let s = server(&[&public], &[]).await.expect("server");
    let mut ssh = forward(&s, &key, &format!("0:{}", services::echo().await));
    let port = ssh.allocated_port().await.expect("allocated");
    assert!(
        (s.range.0..=s.range.1).contains(&port),
        "{port} outside the range"
    );
    let ep = SocketAddr::from(([127, 0, 0, 1], port));

    const LEN: usize = 64 << 20;
    let data = pattern(LEN, 7);
    let want = sha256_hex(&data);
    let (mut r, mut w) = TcpStream::connect(ep).await.expect("visitor").into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("send");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::with_capacity(LEN);
    tokio::time::timeout(WAIT * 4, r.read_to_end(&mut back))
        .await
        .expect("64 MiB in time")
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(back.len(), LEN);
    assert_eq!(sha256_hex(&back), want, "the echoed 64 MiB differ");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        tasks.spawn(echo_roundtrip(ep, 16 * 1024 + i as usize, i));
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.expect("task") {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 visitors failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_ssh_forwards_total",
            &[("kind", "tcp"), ("outcome", "ok")]
        ),
        1.0
    );
    assert!(m.get("tunneld_bytes_total", &[("direction", "in")]) >= LEN as f64);
    assert_eq!(
        m.get("tunneld_sessions_active", &[("transport", "ssh")]),
        1.0
    );
    drop(ssh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_forwards_serve_https_over_http1_and_http2_and_pass_tls_through() {
    if !peer_or_skip("ssh", "ssh named forwards") || !peer_or_skip("curl", "ssh named forwards") {
        return;
    }
    let dir = temp_dir("ssh-named");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let s = server(&[&public], &[]).await.expect("server");
    let http = services::http_echo("via-ssh").await;
    let _web = forward(&s, &key, &format!("myapp:80:{http}"));
    let web = s.web();
    let ca = s.ca_file().display().to_string();
    let resolve = format!("myapp.localhost:{}:127.0.0.1", web.port());
    let url = format!("https://myapp.localhost:{}/hello", web.port());
    let h1 = get_when_up(&["--http1.1", "--cacert", &ca, "--resolve", &resolve], &url).await;
    assert!(h1.contains("via-ssh"), "{h1}");
    let h2 = get_when_up(&["--http2", "--cacert", &ca, "--resolve", &resolve], &url).await;
    assert!(h2.contains("via-ssh") && h2.ends_with("\n200 2"), "{h2}");

    // -R name:443: the visitor's TLS ends at the local service (its own certificate).
    std::fs::create_dir_all(dir.join("pki")).expect("pki dir");
    let (local_ca, cert, key_pem) =
        tunneld_integration_tests::server_pki(&dir.join("pki"), "ssh-sni", &["secure.localhost"]);
    let tls = services::tls_local(&cert, &key_pem, "tls-via-ssh").await;
    let _pass = forward(&s, &key, &format!("secure:443:{tls}"));
    let resolve = format!("secure.localhost:{}:127.0.0.1", web.port());
    let url = format!("https://secure.localhost:{}/", web.port());
    let out = get_when_up(
        &[
            "--http1.1",
            "--cacert",
            &local_ca.display().to_string(),
            "--resolve",
            &resolve,
        ],
        &url,
    )
    .await;
    assert!(out.contains("tls-via-ssh"), "{out}");
    let m = s.metrics().await;
    assert_eq!(
        m.get(
            "tunneld_ssh_forwards_total",
            &[("kind", "http"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tunneld_ssh_forwards_total",
            &[("kind", "tls"), ("outcome", "ok")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_commands_local_forwards_and_ports_outside_the_range() {
    if !peer_or_skip("ssh", "ssh refusals") {
        return;
    }
    let dir = temp_dir("ssh-refuse");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let (stranger, _) = keygen(&dir, "stranger", "ed25519").expect("keygen");
    let s = server(&[&public], &[]).await.expect("server");
    let port = ssh_port(&s);

    // An unknown key: OpenSSH's own refusal, exit 255.
    let mut args = base_args(port, &stranger);
    args.extend(["-N".into(), "alice@127.0.0.1".into()]);
    let (code, out) = Ssh::spawn("ssh", &args, &[])
        .expect("ssh")
        .exit()
        .await
        .expect("exits");
    assert_eq!(code, Some(255), "{out}");
    assert!(out.contains("Permission denied (publickey)"), "{out}");

    // A command: refused, exit 255.
    let mut args = base_args(port, &key);
    args.extend(["alice@127.0.0.1".into(), "id".into()]);
    let (code, out) = Ssh::spawn("ssh", &args, &[])
        .expect("ssh")
        .exit()
        .await
        .expect("exits");
    assert_eq!(code, Some(255), "{out}");
    assert!(out.contains("exec request failed"), "{out}");

    // sftp's subsystem: refused.
    let mut args = base_args(port, &key);
    args.extend(["-s".into(), "alice@127.0.0.1".into(), "sftp".into()]);
    let (code, _) = Ssh::spawn("ssh", &args, &[])
        .expect("ssh")
        .exit()
        .await
        .expect("exits");
    assert_ne!(code, Some(0));

    // A port outside the ports frontend's range: the forward fails, and with
    // ExitOnForwardFailure so does ssh.
    let outside = s.range.1 + 1;
    let mut ssh = forward(&s, &key, &format!("0.0.0.0:{outside}:127.0.0.1:9"));
    let l = ssh
        .line_with("remote port forwarding failed")
        .await
        .expect("refused");
    assert!(l.contains(&outside.to_string()), "{l}");
    let (code, _) = ssh.exit().await.expect("exits");
    assert_eq!(code, Some(255));

    // A local forward (-L): the listener is ssh's own, but tunneld refuses the channel, so
    // the connection to it closes without a byte.
    let echo = services::echo().await;
    let local = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let lport = local.local_addr().expect("addr").port();
    drop(local);
    let mut args = base_args(port, &key);
    args.extend(
        ["-N", "-L", &format!("{lport}:{echo}"), "alice@127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let _l = Ssh::spawn("ssh", &args, &[]).expect("ssh");
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        let m = s.metrics().await;
        let n = m.get("tunneld_ssh_refused_total", &[("request", "direct-tcpip")]);
        if n >= 1.0 {
            break n;
        }
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", lport)).await {
            let _ = c.write_all(b"hello").await;
            let mut buf = [0u8; 8];
            let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
            assert!(
                !matches!(got, Ok(Ok(n)) if n > 0),
                "a local forward carried data"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no direct-tcpip refusal counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused >= 1.0);
    let m = s.metrics().await;
    assert!(m.get("tunneld_ssh_refused_total", &[("request", "exec")]) >= 1.0);
    assert!(m.get("tunneld_ssh_refused_total", &[("request", "subsystem")]) >= 1.0);
    assert!(m.get("tunneld_ssh_auth_total", &[("outcome", "unknown_key")]) >= 1.0);
    let refused_forwards = m.get("tunneld_ssh_forwards_total", &[])
        - m.get("tunneld_ssh_forwards_total", &[("outcome", "ok")]);
    assert!(refused_forwards >= 1.0, "no refused forward counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ssh_gets_its_port_back_within_three_seconds() {
    if !peer_or_skip("ssh", "ssh reclaim") {
        return;
    }
    let dir = temp_dir("ssh-reclaim");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let s = server(&[&public], &[]).await.expect("server");
    let echo = services::echo().await;
    let port = s.range.0 + 3;
    let spec = format!("0.0.0.0:{port}:{echo}");
    let ep = SocketAddr::from(([127, 0, 0, 1], port));
    let mut first = forward(&s, &key, &spec);
    wait_echo(ep).await;
    first.child.start_kill().expect("kill ssh");
    let _ = first.child.wait().await;
    let killed = tokio::time::Instant::now();
    let _second = forward(&s, &key, &spec);
    wait_echo(ep).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "port {port} came back after {took:?}"
    );
}

/// Polls an echo tunnel at `ep` until a round trip works.
async fn wait_echo(ep: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if echo_roundtrip(ep, 1024, 1).await.is_ok() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ep} never echoed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_connections_are_closed_within_the_handshake_deadline() {
    // No OpenSSH needed: raw TCP against the port (the harness's handshake_timeout is 2 s).
    let s = server(&[], &[]).await.expect("server");
    let addr = s.running.transports["ssh"];
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut banner = Vec::new();
    let read = tokio::time::timeout(WAIT, silent.read_to_end(&mut banner)).await;
    assert!(read.is_ok(), "a silent connection stayed open");
    assert!(
        banner.starts_with(b"SSH-2.0-tunneld_"),
        "{:?}",
        String::from_utf8_lossy(&banner)
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed after {:?}",
        started.elapsed()
    );

    let mut garbage = TcpStream::connect(addr).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, garbage.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a garbage connection stayed open");

    // Counted after the connection is dropped.
    let m = s
        .metrics_when(
            "tunneld_handshakes_total",
            &[("transport", "ssh"), ("outcome", "timeout")],
            1.0,
        )
        .await;
    assert!(
        m.get(
            "tunneld_handshakes_total",
            &[("transport", "ssh"), ("outcome", "timeout")]
        ) >= 1.0
    );
    // The server still serves: a third connection gets the banner.
    let mut again = TcpStream::connect(addr).await.expect("connect");
    let mut first = [0u8; 8];
    tokio::time::timeout(WAIT, again.read_exact(&mut first))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&first, b"SSH-2.0-");
}

/// A service that speaks first (a banner, then it waits for the visitor), as SMTP or SSH
/// servers do: OpenSSH sends the banner right after it confirms the channel, so it can reach
/// tunneld before tunneld has taken the new channel's queue in, and nothing else comes on
/// that channel until the visitor answers. Every one of 200 visitors at once gets the whole
/// banner before it writes anything, then its answer's reply and the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_speaks_first_reaches_each_visitor_before_it_writes() {
    if !peer_or_skip("ssh", "ssh speaks first") {
        return;
    }
    const BANNER: usize = 20_000;
    let banner = pattern(BANNER, 11);
    let service = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let local = service.local_addr().expect("addr");
    let served = banner.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = service.accept().await {
            let banner = served.clone();
            tokio::spawn(async move {
                let mut bye = [0u8; 3];
                if c.write_all(&banner).await.is_ok() && c.read_exact(&mut bye).await.is_ok() {
                    let _ = c.write_all(b"ok").await;
                }
                let _ = c.shutdown().await;
            });
        }
    });
    let dir = temp_dir("ssh-first");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let s = server(&[&public], &[]).await.expect("server");
    let mut ssh = forward(&s, &key, &format!("0:{local}"));
    let ep = SocketAddr::from(([127, 0, 0, 1], ssh.allocated_port().await.expect("port")));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        tasks.spawn(async move {
            let mut got = vec![0u8; BANNER];
            let mut c = TcpStream::connect(ep).await?;
            tokio::time::timeout(WAIT, c.read_exact(&mut got)).await??;
            c.write_all(b"bye").await?;
            let mut end = Vec::new();
            tokio::time::timeout(WAIT, c.read_to_end(&mut end)).await??;
            anyhow::ensure!(end == b"ok", "after the banner: {end:?}");
            anyhow::Ok(got)
        });
    }
    let mut bad = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(got) if got == banner => {}
            Ok(_) => bad.push("the banner differs".into()),
            Err(e) => bad.push(e.to_string()),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of 200 visitors: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    drop(ssh);
}
