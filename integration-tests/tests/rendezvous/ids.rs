//! Rendezvous ids from the command line: added, listed, removed, rotated and re-added.

use crate::common::*;

#[tokio::test]
async fn rendezvous_cli_adds_lists_and_removes_ids() -> Result<()> {
    let dir = temp_dir("rdv-cli");
    let config = dir.join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nauth: {{ tokens: {{ a: {{ token: aaaaaaaaaaaaaaaaaaaa }} }} }}\ntransports: {{ hidden: {{ type: connect, listen: 127.0.0.1:0 }} }}\nfrontends: {{ tcp: {{ type: ports, range: 20000-20010 }} }}\n",
            dir.join("state").display()
        ),
    )?;
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(process::binary("tunneld")?)
                .arg("--config")
                .arg(&config)
                .arg("rendezvous")
                .args(&args)
                .output()
                .await?;
            Ok::<_, anyhow::Error>((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            ))
        }
    };
    let (ok, out) = run(vec!["add".into(), "--step".into(), "60".into()]).await?;
    assert!(ok, "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 36, "a UUID: {out}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_default();
    assert!(out.contains(&format!("uri: otpauth://totp/tunneld:{id}?secret={secret}&issuer=tunneld&algorithm=SHA1&digits=6&period=60")), "{out}");
    let (ok, out) = run(vec!["add".into(), id.clone()]).await?;
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = run(vec!["add".into(), "bad id".into()]).await?;
    assert!(!ok && out.contains("is invalid"), "{out}");
    let (ok, out) = run(vec!["list".into()]).await?;
    assert!(
        ok && out.contains(&format!("{id} step=60 client=-")),
        "{out}"
    );
    assert!(!out.contains(secret), "list never shows secrets: {out}");
    let (ok, out) = run(vec!["list".into(), "--json".into()]).await?;
    let json = out.lines().find(|l| l.starts_with('[')).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json)?;
    assert!(
        ok && v[0]["id"] == id.as_str() && v[0]["step"] == 60,
        "{out}"
    );
    assert!(
        !out.contains(secret),
        "list --json never shows secrets: {out}"
    );
    let (ok, out) = run(vec!["remove".into(), id.clone()]).await?;
    assert!(ok && out.contains(&format!("removed {id}")), "{out}");
    let (ok, out) = run(vec!["remove".into(), id.clone()]).await?;
    assert!(!ok && out.contains("no rendezvous id"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_rotated_and_re_added_ids_never_serve_old_parked_connections() -> Result<()> {
    let s = server().await?;
    // Import: a secret brought from an original server parks at once, unchanged.
    let imported = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let out = rendezvous_cli(&s, &["add", "moved", "--secret", imported]).await?;
    assert!(out.contains(&format!("secret: {imported}\n")), "{out}");
    let conf = s.dir.join("server.yaml").display().to_string();
    let short = tokio::process::Command::new(process::binary("tunneld")?)
        .args([
            "--config",
            &conf,
            "rendezvous",
            "add",
            "weak",
            "--secret",
            "JBSWY3DP",
        ])
        .output()
        .await?;
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("at least 10"), "{err}");

    let key = totp::decode_secret(imported).map_err(|e| anyhow!(e))?;
    let park = |key: &[u8]| {
        let code = totp::code(key, now_counter(30));
        format!("CONNECT uuid:moved?response={code} HTTP/1.1\r\n\r\n")
    };
    let (got, mut old) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    wait_parked(&s, "moved", 1).await?;

    // Rotate: the old connection no longer serves; a visitor finds nothing (404 after
    // visitor_wait), and the old connection is closed.
    let out = rendezvous_cli(&s, &["rotate", "moved"]).await?;
    let new_secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .ok_or_else(|| anyhow!("{out}"))?
        .to_string();
    assert_ne!(new_secret, imported);
    let out = basic_visit(&s, "moved:pw", "/stale").await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(
        read_all(&mut old).await.is_empty(),
        "the old parked connection received something"
    );
    // The new secret parks and serves.
    let key = totp::decode_secret(&new_secret).map_err(|e| anyhow!(e))?;
    let (got, mut fresh) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    let visitor = spawn_curl_visit(&s, "/new", &["-u", "moved:pw"]);
    read_head(&mut fresh).await?;
    fresh
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnew")
        .await?;
    fresh.shutdown().await?;
    assert_eq!(visitor.await??.1, "new");

    // Remove, then add the same id again: what parked before never serves.
    let (got, mut before) = raw_park(&s, &park(&key)).await;
    assert_eq!(got, b"HTTP/1.1 200\r\n\r\n");
    rendezvous_cli(&s, &["remove", "moved"]).await?;
    rendezvous_cli(&s, &["add", "moved"]).await?;
    let out = basic_visit(&s, "moved:pw", "/stale").await?;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(read_all(&mut before).await.is_empty());
    let m = s.metrics().await;
    assert!(
        m.get(
            "tunneld_rendezvous_parked_dropped_total",
            &[("reason", "revoked")]
        ) >= 2.0
    );
    Ok(())
}
