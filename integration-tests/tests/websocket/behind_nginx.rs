//! The quick mode again behind Debian's nginx terminating TLS.

use crate::common::*;

#[tokio::test]
async fn behind_nginx_terminating_tls() {
    let Some(nginx) = nginx() else {
        eprintln!("SKIPPED behind_nginx_terminating_tls: nginx is not installed (scripts/test installs it)");
        return;
    };
    let s = server().await;
    let port = ws_port(&s);
    let dir = temp_dir("nginx");
    let (ca, cert, key) = server_pki(
        &dir,
        "edge",
        &["localhost", "proxied.localhost", "nobody-here.localhost"],
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let nport = listen.local_addr().expect("addr").port();
    drop(listen);
    for d in ["tmp", "logs"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{nport} ssl;
    server_name localhost *.localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#,
        d = dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let conf_file = dir.join("nginx.conf");
    std::fs::write(&conf_file, conf).expect("conf");
    let conf_arg = conf_file.display().to_string();
    let prefix = dir.display().to_string();
    let _nginx = Proc::spawn_program(
        &nginx,
        &["-p", &prefix, "-c", &conf_arg],
        dir.join("nginx.stderr"),
    )
    .expect("nginx");
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", nport)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let local = http_echo("nginx").await;
    let target = local.to_string();
    let server_url = format!("https://localhost:{nport}");
    let ca_arg = ca.display().to_string();
    let (_p, url) = tunnelc_http(
        &[
            &target,
            "--server",
            &server_url,
            "--ca",
            &ca_arg,
            "--token",
            ALICE_TOKEN,
            "-s",
            "proxied",
        ],
        "ws-nginx",
    )
    .await;
    // The scheme is the one nginx reports (X-Forwarded-Proto from a trusted proxy).
    assert_eq!(url, format!("https://proxied.localhost:{nport}"));
    quick_mode_checks(&url, local, Some(&ca)).await;
    // The create errors come through the proxy unchanged.
    let (code, body) = visit(
        &format!("https://localhost:{nport}/create-tpot"),
        &[
            "--cacert",
            &ca_arg,
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "--http1.1",
        ],
    )
    .await
    .expect("visit");
    assert_eq!(code, 401, "{body}");
}
