//! The dashboard's guards against a stolen cookie and, without `admin.token`, against web
//! pages (DNS rebinding): a session works only from the address that logged in, whichever of
//! several same-named cookies is the live one; without a token the dashboard answers only
//! IP or `localhost` Host names, and gives a session only to a browser opening `/ui`.

use anyhow::{anyhow, Result};
use std::net::{IpAddr, Ipv4Addr};
use tunneld_integration_tests::raw_http::{exchange, exchange_from};
use tunneld_integration_tests::TestServer;

const ADMIN_TOKEN: &str = "dashboard-guard-token-0123456789";

fn get(host: &str, path: &str, cookie: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
}

fn cookie_of(head: &str) -> Result<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: tunneld_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no session cookie in {head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_only_from_the_address_that_logged_in() -> Result<()> {
    let s = TestServer::start_full("", &[format!("admin.token={ADMIN_TOKEN}")]).await?;
    let admin = s.admin();
    let body = format!("token={ADMIN_TOKEN}");
    let login = format!(
        "POST /ui/login HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, head, _) = exchange(admin, &login).await?;
    assert_eq!(status, 303, "{head}");
    let cookie = cookie_of(&head)?;
    let host = admin.to_string();
    let mine = format!("tunneld_session={cookie}");
    let (status, _, _) = exchange(admin, &get(&host, "/ui", &mine)).await?;
    assert_eq!(status, 200);
    // Another service on the host set a cookie of the same name first: the live one counts.
    let both = format!("tunneld_session=bogus; tunneld_session={cookie}");
    let (status, _, _) = exchange(admin, &get(&host, "/ui", &both)).await?;
    assert_eq!(status, 200);
    // The same cookie from another address (a tenant that received it) is no session.
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (status, head, _) = exchange_from(admin, elsewhere, &get(&host, "/ui", &mine)).await?;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /ui/login"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_address_hosts_and_the_page_make_sessions() -> Result<()> {
    let s = TestServer::start_full("", &[]).await?;
    let admin = s.admin();
    let port = admin.port();
    // A DNS-rebinding page's requests carry its own name.
    let rebound = format!("rebind.evil.example:{port}");
    let (status, _, body) = exchange(admin, &get(&rebound, "/ui", "")).await?;
    assert_eq!(status, 421, "{body}");
    // Requests other than the page get no session of their own.
    let host = admin.to_string();
    let (status, _, body) = exchange(admin, &get(&host, "/ui/fragment/tables", "")).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("open /ui first"), "{body}");
    // The page, by address or localhost, gives one.
    for host in [host.clone(), format!("localhost:{port}")] {
        let (status, head, _) = exchange(admin, &get(&host, "/ui", "")).await?;
        assert_eq!(status, 200, "{head}");
        cookie_of(&head)?;
    }
    Ok(())
}
