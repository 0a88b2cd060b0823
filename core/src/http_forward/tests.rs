//! Header, cookie and URI rewriting of forwarded requests.

use super::*;

#[test]
fn hop_by_hop_headers_go() {
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, X-Secret"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("x-end-to-end", HeaderValue::from_static("yes"));
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-end-to-end"));

    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(
        h.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(
        h.get("connection").map(|v| v.as_bytes()),
        Some(&b"upgrade"[..])
    );
}

#[test]
fn repeated_cookies_become_one_field() {
    let mut h = HeaderMap::new();
    h.append("cookie", HeaderValue::from_static("a=1"));
    h.append("cookie", HeaderValue::from_static(""));
    h.append("cookie", HeaderValue::from_static("b=2; c=3"));
    h.append("x-other", HeaderValue::from_static("kept"));
    join_cookies(&mut h);
    let all: Vec<_> = h.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
    assert_eq!(all, vec![&b"a=1; b=2; c=3"[..]]);
    assert!(h.contains_key("x-other"));

    // One field, or none: unchanged.
    let mut h = HeaderMap::new();
    h.append("cookie", HeaderValue::from_static("a=1"));
    join_cookies(&mut h);
    assert_eq!(h.get("cookie").map(|v| v.as_bytes()), Some(&b"a=1"[..]));
    let mut h = HeaderMap::new();
    join_cookies(&mut h);
    assert!(h.is_empty());
}

#[test]
fn origin_form_keeps_host() {
    let mut r = Request::builder()
        .uri("https://app.example.com:8443/a/b?c=1")
        .body(())
        .unwrap_or_default();
    to_origin_form(&mut r);
    assert_eq!(r.uri().to_string(), "/a/b?c=1");
    assert_eq!(
        r.headers().get("host").map(|v| v.as_bytes()),
        Some(&b"app.example.com:8443"[..])
    );
}

#[test]
fn hop_by_hop_headers_the_connection_names_go_with_them() {
    // A name only `Connection` lists, and one of every hop-by-hop name.
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("close, x-private"));
    h.insert("x-private", HeaderValue::from_static("1"));
    for n in &HOP_BY_HOP {
        h.append(n.clone(), HeaderValue::from_static("v"));
    }
    h.insert("x-kept", HeaderValue::from_static("yes"));
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    // Nothing hop-by-hop: untouched.
    let mut h = HeaderMap::new();
    h.insert("x-kept", HeaderValue::from_static("yes"));
    h.insert("keep-alive-ish", HeaderValue::from_static("yes"));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h.len(), 2);
}

#[test]
fn absolute_uris_keep_the_path_and_query() {
    let cases = [
        ("/a/b?c=1&d=%20", "https://app.example.com/a/b?c=1&d=%20"),
        ("http://elsewhere?q=1", "https://app.example.com/?q=1"),
        ("http://elsewhere:81/x?y", "https://app.example.com/x?y"),
        ("https://elsewhere", "https://app.example.com/"),
    ];
    for (given, want) in cases {
        let mut uri: Uri = given.parse().unwrap_or_default();
        set_absolute_uri(&mut uri, "app.example.com");
        assert_eq!(uri.to_string(), want, "{given}");
    }
    // A host with a port; and `*`, or a host that is no authority, left as they are.
    let mut uri: Uri = "/p".parse().unwrap_or_default();
    set_absolute_uri(&mut uri, "app.example.com:8443");
    assert_eq!(uri.to_string(), "https://app.example.com:8443/p");
    let mut uri: Uri = "*".parse().unwrap_or_default();
    set_absolute_uri(&mut uri, "app.example.com");
    assert_eq!(uri.to_string(), "*");
    for bad in ["", "bad host", "a/b"] {
        let mut uri: Uri = "/p".parse().unwrap_or_default();
        set_absolute_uri(&mut uri, bad);
        assert_eq!(uri.to_string(), "/p", "{bad:?}");
    }
}

#[test]
fn origin_form_of_any_form() {
    for (given, want) in [
        ("https://h/a?b", "/a?b"),
        ("/a?b", "/a?b"),
        ("https://h", "/"),
        ("*", "*"),
    ] {
        let mut r = Request::builder().uri(given).body(()).unwrap_or_default();
        to_origin_form(&mut r);
        assert_eq!(r.uri().to_string(), want, "{given}");
        assert_eq!(r.version(), http::Version::HTTP_11);
    }
}
