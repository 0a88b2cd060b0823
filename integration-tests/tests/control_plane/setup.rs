//! `tunnelc setup`, `test`, `env` and `list` against the provisioning API, issued
//! certificates checked by `openssl verify` and through SNI passthrough, and the plain web
//! port's 302.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_test_env_list_openssl_and_redirect() {
    let p = Plane::start().await.expect("tunneld");
    let token = p.token("carol", &["--max-ports", "1"]).expect("token");
    let dir = p.dir.join("tunnels");
    let (https_port, tcp_port) = (free_port(), free_port());
    let ports = format!("{https_port},{tcp_port}");
    let (ok, out, err) = tunnelc(&[
        "setup",
        "--server",
        &p.url(),
        "--token",
        &token,
        "--protocols",
        "https,tcp",
        "--ports",
        &ports,
        "--dir",
        dir.to_str().expect("utf8"),
        "--ca",
        p.ca().to_str().expect("utf8"),
    ]);
    assert!(ok, "setup: {out} {err}");
    let name = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("tunnel "))
        .and_then(|l| l.split_whitespace().next())
        .expect("name")
        .to_string();
    assert_eq!(name.split('-').count(), 3, "readable name: {name}");
    let fqdn = format!("{name}.localhost");
    assert!(
        out.contains(&format!("https://{fqdn}:{}", p.https.port())),
        "{out}"
    );
    assert!(out.contains("tcp://127.0.0.1:"), "{out}");
    let tdir = dir.join(&name);

    // tunnelc test: every endpoint passes, end to end.
    let d = dir.to_str().expect("utf8");
    let (ok, out, err) = tunnelc(&["test", "--dir", d]);
    assert!(ok, "test: {out} {err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        2,
        "{out}"
    );

    // tunnelc env is sourceable by sh, and exports: a child process sees the values.
    let (ok, env, err) = tunnelc(&["env", &name, "--dir", d]);
    assert!(ok, "{err}");
    let env_file = p.dir.join("tunnel.env");
    std::fs::write(&env_file, &env).expect("env file");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && sh -c 'printf \"%s|%s|%s|%s\" \"$TUNNEL_NAME\" \"$TUNNEL_HTTPS_URL\" \"$TUNNEL_TCP_LOCAL_PORT\" \"$TUNNEL_CERT\"'",
            env_file.display()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{name}|https://{fqdn}:{}|{tcp_port}|{}",
            p.https.port(),
            tdir.join("cert.pem").display()
        )
    );

    // tunnelc list: endpoints, state and certificate expiry.
    let (ok, out, err) = tunnelc(&["list", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{name} ({fqdn}): offline")), "{out}");
    assert!(out.contains("certificate expires 20"), "{out}");
    assert!(
        out.contains("(in 89 days)") || out.contains("(in 90 days)"),
        "{out}"
    );
    let (ok, out, err) = tunnelc(&["list", "--dir", d, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    assert_eq!(v[0]["name"], name.as_str(), "{v}");
    assert_eq!(v[0]["state"], "offline", "{v}");
    assert!(v[0]["certificate_expires_at"].as_u64().is_some(), "{v}");

    // openssl verify accepts the issued certificate...
    let ca = p.ca();
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().expect("utf8"),
        tdir.join("cert.pem").to_str().expect("utf8"),
    ]);
    assert!(ok && text.contains(": OK"), "{text}");
    // ...and the chain a visitor sees through SNI passthrough, served by openssl s_server.
    let server_log = p.dir.join("s_server.log");
    let mut s_server = Proc::spawn_program(
        Path::new("openssl"),
        &[
            "s_server",
            "-accept",
            &format!("127.0.0.1:{https_port}"),
            "-cert",
            tdir.join("cert.pem").to_str().expect("utf8"),
            "-key",
            tdir.join("key.pem").to_str().expect("utf8"),
            "-www",
        ],
        server_log,
    )
    .expect("s_server");
    s_server
        .line_starting("ACCEPT")
        .await
        .expect("s_server listening");
    let mut client = Proc::spawn(
        "tunnelc",
        &["--config", tdir.join("client.yaml").to_str().expect("utf8")],
        p.dir.join("tunnelc.log"),
    )
    .expect("tunnelc");
    client.line_starting("connected").await.expect("connected");
    let target = format!("127.0.0.1:{}", p.https.port());
    let (_, seen) = openssl(&[
        "s_client",
        "-connect",
        &target,
        "-servername",
        &fqdn,
        "-showcerts",
    ]);
    let chain = p.dir.join("seen-chain.pem");
    std::fs::write(&chain, pem_blocks(&seen)).expect("chain");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().expect("utf8"),
        chain.to_str().expect("utf8"),
    ]);
    assert!(ok && text.contains(": OK"), "{text}\n{seen}");
    assert!(
        seen.contains(&format!("CN={fqdn}")) || seen.contains(&format!("CN = {fqdn}")),
        "{seen}"
    );

    // The plain web port: 302 up to https, and the CA.
    let (_, head) = curl(&[
        "-si",
        "-H",
        &format!("Host: {fqdn}"),
        &format!("http://{}/some/path?q=1", p.web),
    ])
    .await
    .expect("curl");
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://{fqdn}:{}/some/path?q=1",
            p.https.port()
        )),
        "{head}"
    );
    let (_, unknown) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: nope.localhost",
        &format!("http://{}/", p.web),
    ])
    .await
    .expect("curl");
    assert_eq!(unknown, "404");
    let (_, cacert) = curl(&[&format!("http://{}/cacert", p.web)])
        .await
        .expect("curl");
    assert_eq!(cacert, std::fs::read_to_string(&ca).expect("ca"));

    // A blocked local port: tunnelc test fails with a clear line and exit status 1.
    drop(client);
    s_server.signal("KILL").expect("stop s_server");
    let _ = s_server.wait().await;
    let _blocker = std::net::TcpListener::bind(("127.0.0.1", tcp_port)).expect("block");
    let (ok, out, _) = tunnelc(&["test", &name, "--dir", d]);
    assert!(!ok, "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL tcp"))
        .unwrap_or_else(|| panic!("no FAIL line: {out}"));
    assert!(
        fail.contains(&format!("local port 127.0.0.1:{tcp_port} is in use")),
        "{fail}"
    );
    assert!(out.lines().any(|l| l.starts_with("PASS https")), "{out}");

    let m = p.metrics().await;
    has(
        &m,
        "tunneld_certificates_issued_total{outcome=\"issued\"} 1",
    );
    has(&m, "tunneld_provisioned_tunnels{state=\"leased\"} 1");
    has(
        &m,
        "tunneld_control_requests_total{code=\"302\",route=\"redirect\"} 1",
    );
}
