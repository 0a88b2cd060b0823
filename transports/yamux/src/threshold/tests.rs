//! Unit tests of the threshold dialect: identities, heads, koding detection, config.
use super::*;

fn cfg(header_identity: bool) -> ThresholdConfig {
    ThresholdConfig {
        domain: "example.test".into(),
        header_identity,
        pair_timeout: default_pair_timeout(),
        max_pending: 4,
        management_api: false,
        plain_listen: None,
    }
}

#[test]
fn plain_listen_needs_header_identity() {
    let mut c = cfg(false);
    c.plain_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9057)));
    assert_eq!(c.validate().map_err(|e| e.0), Err("plain_listen"));
    c.header_identity = true;
    assert!(c.validate().is_ok());
    assert!(is_management(b"PUT /tun"));
    assert!(!is_management(b"CONNECT "));
}

const HEAD: &str =
    "CONNECT /_controlPath/ HTTP/1.1\r\nHost: t\r\nX-Threshold-ClientId: node1\r\n\r\n";

#[test]
fn identity_from_certificate_or_header() {
    let id = identify(HEAD, Some("node1@example.test"), &cfg(false)).expect("cert");
    assert_eq!((id.client_id.as_str(), id.method), ("node1", "certificate"));
    let e = identify(HEAD, Some("node2@example.test"), &cfg(false)).unwrap_err();
    assert_eq!(e.status, 403);
    let e = identify(HEAD, Some("node1@other.test"), &cfg(false)).unwrap_err();
    assert!(e.message.contains("<id>@example.test"), "{e:?}");
    assert_eq!(identify(HEAD, None, &cfg(false)).unwrap_err().status, 401);
    let id = identify(HEAD, None, &cfg(true)).expect("header");
    assert_eq!((id.client_id.as_str(), id.method), ("node1", "header"));
    let koding = "CONNECT /_controlPath/ HTTP/1.1\nHost: t\nX-KTunnel-Identifier: k1\n\n";
    assert!(is_koding(koding));
    assert!(!is_koding(
        "CONNECT /_controlPath/ HTTP/1.1\nX-Threshold-ClientId: a\nX-KTunnel-Identifier: a\n\n"
    ));
    assert!(!is_koding(
        "CONNECT /_controlPath/ HTTP/1.1\nX-Threshold-ClientId: a\n\n"
    ));
    assert_eq!(
        identify(koding, None, &cfg(true))
            .expect("koding")
            .client_id,
        "k1"
    );
}

#[test]
fn malformed_heads_are_refused_with_a_status() {
    let c = cfg(true);
    assert_eq!(
        identify("GET / HTTP/1.1\r\n\r\n", None, &c)
            .unwrap_err()
            .status,
        405
    );
    assert_eq!(
        identify("CONNECT /other HTTP/1.1\r\n\r\n", None, &c)
            .unwrap_err()
            .status,
        404
    );
    assert_eq!(
        identify("CONNECT /_controlPath/ HTTP/9\r\n\r\n", None, &c)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        identify(
            "CONNECT /_controlPath/ HTTP/1.1\r\nbroken\r\n\r\n",
            None,
            &c
        )
        .unwrap_err()
        .status,
        400
    );
    let bad_id = "CONNECT /_controlPath/ HTTP/1.1\r\nX-Threshold-ClientId: a b\r\n\r\n";
    assert_eq!(identify(bad_id, None, &c).unwrap_err().status, 400);
    let r = refusal(401, "x", "nope").response();
    assert!(r.starts_with(b"HTTP/1.1 401 Unauthorized\r\n"));
    assert!(r.ends_with(b"\r\n\r\nnope\n"));
}

#[tokio::test]
async fn heads_are_bounded() {
    let long = vec![b'a'; MAX_HEAD + 10];
    let e = read_head(&mut &long[..], b"CONNECT ").await.unwrap_err();
    assert_eq!(e.outcome, "head_too_large");
    let mut rest: &[u8] = b"/_controlPath/ HTTP/1.1\n\nYAMUX";
    let head = read_head(&mut rest, b"CONNECT ").await.expect("head");
    assert!(head.ends_with("\n\n"));
    assert_eq!(rest, b"YAMUX", "nothing after the head is consumed");
}
