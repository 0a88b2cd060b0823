//! The ssh transport's `ciphers`, with the real OpenSSH client: what it negotiates against
//! tunneld's default offer (with its own defaults, and with the AES-GCM-first list
//! `tunnelc setup --transport ssh` writes) and against an AES-GCM-only offer; bytes pass in
//! each; a client with none of the offered ciphers is refused and says why.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunneld_client::setup::ssh::AES_FIRST_CIPHERS;
use tunneld_integration_tests::ssh::{base_args, keygen, peer_or_skip, server, Ssh};
use tunneld_integration_tests::{pattern, services, temp_dir, TestServer, WAIT};

/// Runs `ssh -v -N -R 0:<echo>` with `extra` options; returns the cipher it negotiated
/// after one echo passed through the allocated port.
async fn negotiated(
    s: &TestServer,
    key: &std::path::Path,
    extra: &[&str],
    echo: SocketAddr,
) -> String {
    // No system or user ssh_config: a distribution's crypto policy reorders the ciphers.
    let mut args = vec!["-F".to_string(), "/dev/null".to_string()];
    args.extend(base_args(s.running.transports["ssh"].port(), key));
    args.extend(extra.iter().map(|a| a.to_string()));
    let forward = format!("0:{echo}");
    args.extend(["-v", "-N", "-R", &forward, "alice@127.0.0.1"].map(String::from));
    let mut ssh = Ssh::spawn("ssh", &args, &[]).expect("spawn ssh");
    let line = ssh
        .line_with("kex: server->client cipher:")
        .await
        .expect("ssh -v names the cipher");
    let cipher = line
        .split("cipher: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let port = ssh.allocated_port().await.expect("a port");
    let data = pattern(256 * 1024, 3);
    let mut v = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("visitor");
    let (mut r, mut w) = v.split();
    let mut back = Vec::new();
    let (sent, got) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            async {
                w.write_all(&data).await?;
                w.shutdown().await
            },
            r.read_to_end(&mut back)
        )
    })
    .await
    .expect("echo in time");
    sent.expect("send");
    got.expect("read");
    assert!(back == data, "the echo over {cipher} differs");
    drop(ssh);
    cipher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_takes_the_cipher_tunneld_offers_and_says_so_when_none_fits() {
    if !peer_or_skip("ssh", "ssh ciphers") {
        return;
    }
    let dir = temp_dir("ssh-ciphers");
    let (key, public) = keygen(&dir, "alice", "ed25519").expect("keygen");
    let echo = services::echo().await;

    let s = server(&[&public], &[]).await.expect("server");
    // OpenSSH's own order puts ChaCha20 first; tunneld offers it.
    assert_eq!(
        negotiated(&s, &key, &[], echo).await,
        "chacha20-poly1305@openssh.com"
    );
    // The list the setup writes: AES-GCM first, which tunneld offers too.
    let setup = format!("Ciphers={AES_FIRST_CIPHERS}");
    assert_eq!(
        negotiated(&s, &key, &["-o", &setup], echo).await,
        "aes128-gcm@openssh.com"
    );
    drop(s);

    // Only AES-GCM offered: an unchanged OpenSSH command line takes it.
    let only_gcm = ["transports.ssh.ciphers=[\"aes256-gcm@openssh.com\"]".to_string()];
    let s = server(&[&public], &only_gcm).await.expect("server");
    assert_eq!(
        negotiated(&s, &key, &[], echo).await,
        "aes256-gcm@openssh.com"
    );
    // A client with none of them is refused, and OpenSSH names the reason.
    let mut args = vec!["-F".to_string(), "/dev/null".to_string()];
    args.extend(base_args(s.running.transports["ssh"].port(), &key));
    args.extend(
        [
            "-o",
            "Ciphers=chacha20-poly1305@openssh.com",
            "-N",
            "alice@127.0.0.1",
        ]
        .map(String::from),
    );
    let (code, out) = Ssh::spawn("ssh", &args, &[])
        .expect("spawn ssh")
        .exit()
        .await
        .expect("ssh ends");
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("no matching cipher found"), "{out}");
}

/// The bench's ssh row asks for what `tunnelc setup --transport ssh` writes.
#[test]
fn the_bench_asks_for_the_setup_s_ciphers() {
    let bench = include_str!("../../bench/src/openssh.rs");
    assert!(
        bench.contains(&format!("\"Ciphers={AES_FIRST_CIPHERS}\"")),
        "bench/src/openssh.rs no longer passes AES_FIRST_CIPHERS"
    );
}
