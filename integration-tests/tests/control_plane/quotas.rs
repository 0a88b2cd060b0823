//! Tokens' quotas and single use, CSR signing refused for names the caller does not own,
//! and bad requests to the provisioning API.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_single_use_csr_ownership_and_bad_requests() {
    let p = Plane::start().await.expect("tunneld");
    // max_ports at claim time, over a live session: the refusal names the limit.
    let t = p.token("dave", &["--max-ports", "1"]).expect("token");
    let (a, b) = (free_port(), free_port());
    let cfg = client_cfg(
        &p,
        &t,
        &format!("  one:\n    local: 127.0.0.1:{a}\n  two:\n    local: 127.0.0.1:{b}\n"),
    )
    .expect("cfg");
    let (mut rx, _task, stop) = run_client(cfg);
    let ClientEvent::Connected { tunnels, .. } = next_event(&mut rx).await else {
        panic!("not connected")
    };
    let refused: Vec<_> = tunnels.iter().filter_map(|s| s.error.clone()).collect();
    assert_eq!(refused.len(), 1, "{tunnels:?}");
    assert!(refused[0].contains("max_ports"), "{}", refused[0]);
    stop.cancel();

    // max_ports and max_names in the API.
    let api = p.api(&t).expect("api");
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"protocols": ["tcp"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let mine = v["name"].as_str().expect("name").to_string();
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"protocols": ["tcp"]})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("quota exceeded (max_ports)"), "{v}");
    let n = p.token("erin", &["--max-names", "1"]).expect("token");
    let api_n = p.api(&n).expect("api");
    let (s, v) = call(
        &api_n,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "erin-site"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["endpoints"][0]["protocol"], "https");
    let (s, v) = call(&api_n, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("quota exceeded (max_names)"), "{v}");
    // A name held by someone else.
    let (s, v) = call(
        &api,
        Method::POST,
        "/v1/tunnels",
        Some(json!({"name": "erin-site", "protocols": ["http"]})),
    )
    .await;
    assert_eq!(s, 409, "{v}");

    // Single use.
    let once = p.token("frank", &["--single-use"]).expect("token");
    let api_o = p.api(&once).expect("api");
    let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 403, "{v}");
    assert!(error_of(&v).contains("single-use"), "{v}");
    let out = p.cli(&["token", "list"]).expect("list");
    assert!(out.lines().any(|l| l.starts_with("frank\tused\t")), "{out}");

    // CSRs: only the tunnel's own name is signed.
    let csr = |names: &[&str]| {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    };
    let (s, v) = sign(&api_n, csr(&["erin-site.localhost", "evil.localhost"])).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        error_of(&v).contains("`evil.localhost`, which this token does not own"),
        "{v}"
    );
    let (s, v) = sign(&api_n, csr(&[&format!("{mine}.localhost")])).await;
    assert_eq!(s, 403, "{v}");
    let (s, _) = sign(&api, csr(&["erin-site.localhost"])).await;
    assert_eq!(s, 404, "another client's tunnel is not found");
    let (s, v) = sign(&api_n, "not a csr".into()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = sign(&api_n, csr(&["erin-site.localhost"])).await;
    assert_eq!(s, 201, "{v}");
    let cert = p.dir.join("erin.pem");
    std::fs::write(&cert, v["certificate"].as_str().expect("pem")).expect("write");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        p.ca().to_str().expect("utf8"),
        cert.to_str().expect("utf8"),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        cert.to_str().expect("utf8"),
        "-noout",
        "-text",
    ]);
    assert!(
        ok && text.contains("DNS:erin-site.localhost") && text.contains("ecdsa-with-SHA256"),
        "{text}"
    );
    assert!(!text.contains("DNS:evil"), "{text}");

    // Bad requests and credentials.
    for (body, want) in [
        (json!({"protocols": ["ftp"]}), "protocol `ftp` is unknown"),
        (json!({"protocols": ["http", "https"]}), "choose one"),
        (json!({"name": "Bad_Name!"}), "is invalid"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let (s, v) = call(&api_o, Method::POST, "/v1/tunnels", Some(body)).await;
        assert_eq!(s, 400, "{v}");
        assert!(error_of(&v).contains(want), "{v}");
    }
    // Over the size cap: 413. A request head that never ends: the connection is closed.
    let (s, v) = api_o
        .call(
            Method::POST,
            "/v1/tunnels",
            "application/json",
            vec![b' '; 70 * 1024],
        )
        .await
        .map(|(s, a)| {
            (
                s.as_u16(),
                serde_json::from_slice::<Value>(&a).unwrap_or(Value::Null),
            )
        })
        .expect("answer");
    assert_eq!(s, 413, "{v}");
    assert!(error_of(&v).contains("larger than 65536 bytes"), "{v}");
    for port in [p.web.port(), p.api.port()] {
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = slow.write_all(b"GET /cacert HTTP/1.1\r\nHost: x\r\n").await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "port {port} kept a stalled head open");
    }
    let anon = ApiClient::new(&p.url(), &ClientTrust::CaFile(p.ca()), None, None).expect("api");
    let (s, _) = call(&anon, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401);
    let wrong = p.api("tk_wrong-token-0123456789").expect("api");
    let (s, v) = call(&wrong, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 401, "{v}");
    // Each caller lists only its own tunnels.
    let (s, v) = call(&api_n, Method::GET, "/v1/tunnels", None).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // Renew and delete.
    let (s, v) = call(&api_n, Method::POST, "/v1/tunnels/erin-site/renew", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["certificates"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, _) = call(&api, Method::DELETE, "/v1/tunnels/erin-site", None).await;
    assert_eq!(s, 404, "not the owner");
    let (s, _) = call(&api_n, Method::DELETE, "/v1/tunnels/erin-site", None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&api_n, Method::POST, "/v1/tunnels", None).await;
    assert_eq!(s, 201, "the name quota is free again");
    let m = p.metrics().await;
    has(
        &m,
        "tunneld_certificates_issued_total{outcome=\"refused\"} 3",
    );
}
