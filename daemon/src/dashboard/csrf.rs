//! Cross-site request forgery checks for the dashboard's forms: every POST carries its
//! session's CSRF token in the hidden field `csrf`, and a browser's `Origin` header, when
//! sent, must name the host the request was sent to.

use super::sessions::same;

/// Why a POST was refused (answered as 403 with this text).
pub fn check(
    expected: &str,
    sent: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> Result<(), String> {
    if let Some(origin) = origin {
        check_origin(origin, host)?;
    }
    match sent {
        None | Some("") => Err("missing CSRF token: reload the page and try again".into()),
        Some(t) if same(t, expected) => Ok(()),
        Some(_) => Err("wrong CSRF token: reload the page and try again".into()),
    }
}

/// A request's `Origin` must name the same host (and port) as its `Host` header.
/// `Origin: null` (sandboxed frames, some redirects) is refused too.
pub fn check_origin(origin: &str, host: Option<&str>) -> Result<(), String> {
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .map(|h| h.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h.trim()) => Ok(()),
        _ => Err(format!(
            "cross-origin request refused: Origin `{origin}` is not this dashboard (`{}`)",
            host.unwrap_or("no Host header")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_must_match() {
        assert!(check("tok", Some("tok"), None, Some("a:1")).is_ok());
        let e = check("tok", None, None, Some("a:1")).unwrap_err();
        assert!(e.contains("missing CSRF token"), "{e}");
        let e = check("tok", Some("tik"), None, Some("a:1")).unwrap_err();
        assert!(e.contains("wrong CSRF token"), "{e}");
        assert!(check("tok", Some(""), None, None).is_err());
    }

    #[test]
    fn origin_must_be_this_host() {
        let host = Some("127.0.0.1:9000");
        assert!(check("t", Some("t"), Some("http://127.0.0.1:9000"), host).is_ok());
        assert!(check("t", Some("t"), Some("https://127.0.0.1:9000/"), host).is_ok());
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:9001",
            "null",
            "127.0.0.1:9000",
        ] {
            let e = check("t", Some("t"), Some(bad), host).unwrap_err();
            assert!(e.contains("cross-origin"), "{bad}: {e}");
        }
        assert!(check_origin("http://a", None).is_err());
    }
}
