//! The pool against a scripted HTTP/1.1 service on loopback: what goes on a kept
//! connection, what is read as the body, and when a connection is not kept.

use super::*;
use crate::http_forward::{empty, full};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const MAX_HEAD: usize = 8192;
const KEY: &str = "svc";

/// A service that answers the requests of each connection with `answers` in turn (one
/// list per connection, in the order connections arrive) and reports every request head
/// as (connection number, "method target"). An empty answer closes the connection
/// without answering. Once a connection's answers run out it is closed, or when `hold`
/// says so for its number, held open (answering nothing) until the other end closes it.
async fn service(
    answers: Vec<Vec<&'static [u8]>>,
    hold: fn(usize) -> bool,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(usize, String)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for (n, script) in answers.into_iter().enumerate() {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for answer in script {
                    let Ok(head) = crate::http1::read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    // A body (by Content-Length) is read and left out.
                    let len: usize = head
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut more = [0u8; 1024];
                        match tokio::io::AsyncReadExt::read(&mut s, &mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&more[..k]),
                        }
                    }
                    buf.drain(..len);
                    let _ = tx.send((n, format!("{} {}", head.method, head.target)));
                    if answer.is_empty() || s.write_all(answer).await.is_err() {
                        return;
                    }
                }
                if hold(n) {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
                }
            });
        }
    });
    (addr, rx)
}

fn get(path: &str) -> Request<Body> {
    let mut r = Request::new(empty());
    *r.uri_mut() = format!("http://svc.test{path}").parse().expect("uri");
    r
}

/// Sends `req` on an idle connection of the pool, or a new one to `addr`.
async fn send(
    pool: &Arc<LocalPool>,
    addr: std::net::SocketAddr,
    req: Request<Body>,
) -> Result<Response<Body>, OpenError> {
    match pool.send_pooled(KEY, req, MAX_HEAD).await {
        Ok(answered) => answered,
        Err(req) => {
            let io: crate::io::BoxIo = Box::new(TcpStream::connect(addr).await.expect("dial"));
            pool.send_new(Some(KEY), io, req, MAX_HEAD).await
        }
    }
}

/// The body's data and trailers.
async fn read(resp: Response<Body>) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

fn within<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(10), f)
}

use http::HeaderMap;

#[tokio::test]
async fn bodiless_requests_share_one_connection_whatever_the_framing() {
    within(async {
        let (addr, mut seen) = service(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]], |_| true)
        .await;
        let pool = LocalPool::new();
        let resp = send(&pool, addr, get("/one?x=1")).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(read(resp).await.0, b"hello");
        let resp = send(&pool, addr, get("/two")).await.expect("answer");
        let (data, trailers) = read(resp).await;
        assert_eq!(data, b"abcde");
        let sum = trailers.and_then(|t| t.get("x-sum").cloned());
        assert_eq!(sum.as_ref().map(|v| v.as_bytes()), Some(&b"5"[..]));
        let mut head = get("/three");
        *head.method_mut() = Method::HEAD;
        let resp = send(&pool, addr, head).await.expect("answer");
        assert_eq!(
            resp.headers().get("content-length").map(|v| v.as_bytes()),
            Some(&b"99"[..])
        );
        assert!(read(resp).await.0.is_empty());
        let resp = send(&pool, addr, get("/four")).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let mut post = get("/five");
        *post.method_mut() = Method::POST;
        let resp = send(&pool, addr, post).await.expect("answer");
        assert_eq!(read(resp).await.0, b"ok");
        let mut heads = Vec::new();
        while let Ok(h) = seen.try_recv() {
            heads.push(h);
        }
        let want = ["GET /one?x=1", "GET /two", "HEAD /three", "GET /four", "POST /five"];
        assert_eq!(heads, want.map(|w| (0, w.to_string())));
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_connection_is_not_kept_when_its_answer_says_so() {
    within(async {
        let (addr, mut seen) = service(vec![
            vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"],
            vec![b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"],
            vec![b"HTTP/1.1 200 OK\r\n\r\nuntil close"],
            vec![b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ndEXTRA"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ne"],
        ], |n| n != 2)
        .await;
        let pool = LocalPool::new();
        let mut bodies = Vec::new();
        for path in ["/a", "/b", "/c", "/d", "/e", "/f"] {
            let resp = send(&pool, addr, get(path)).await.expect("answer");
            bodies.push(String::from_utf8(read(resp).await.0).expect("text"));
        }
        assert_eq!(bodies, ["a", "b", "until close", "", "d", "e"]);
        // (A kept one would have taken the next request and never answered.)
        let conns: Vec<usize> = std::iter::from_fn(|| seen.try_recv().ok().map(|h| h.0)).collect();
        assert_eq!(conns, [0, 1, 2, 3, 4, 5], "every request on a new connection");
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_kept_connection_closed_meanwhile_is_passed_over_for_a_safe_request() {
    within(async {
        // The first connection answers once and closes (without saying so beforehand).
        let (addr, mut seen) = service(
            vec![
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"],
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
            ],
            |_| false,
        )
        .await;
        let pool = LocalPool::new();
        let resp = send(&pool, addr, get("/a")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"a");
        // Until the close arrives, the idle connection looks alive; the request finds it
        // closed as it goes out (or before) and goes on a new one either way.
        let resp = send(&pool, addr, get("/b")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"b");
        let conns: Vec<usize> = std::iter::from_fn(|| seen.try_recv().ok().map(|h| h.0)).collect();
        assert_eq!(conns, [0, 1]);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn bad_answers_are_refused_with_their_reason() {
    within(async {
        let big: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD))
                .into_bytes()
                .into_boxed_slice(),
        );
        let cases: [(&'static [u8], &str); 5] = [
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "malformed response head"),
            (big, "over the limit"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Content-Length `-1`",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent",
                "before its response head ended",
            ),
        ];
        let (addr, _seen) = service(cases.iter().map(|c| vec![c.0]).collect(), |_| false).await;
        let pool = LocalPool::new();
        for (_, want) in cases {
            match send(&pool, addr, get("/")).await {
                Err(OpenError::LocalRefused(why)) => assert!(why.contains(want), "{why}"),
                Err(e) => panic!("{want}: {e}"),
                Ok(r) => panic!("{want}: answered {}", r.status()),
            }
        }
        assert_eq!(pool.idle(), 0);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn bodies_that_break_their_framing_fail_and_are_not_kept() {
    within(async {
        let (addr, _seen) = service(
            vec![
                vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
            ],
            |_| false,
        )
        .await;
        let pool = LocalPool::new();
        for want in ["not hexadecimal", "before the response body ended"] {
            let resp = send(&pool, addr, get("/")).await.expect("a head");
            let err = resp.into_body().collect().await.expect_err("a body error");
            assert!(err.to_string().contains(want), "{err}");
        }
        assert_eq!(pool.idle(), 0);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_request_with_a_body_goes_on_a_kept_connection_through_hyper() {
    within(async {
        let (addr, mut seen) = service(
            vec![vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc",
            ]],
            |_| true,
        )
        .await;
        let pool = LocalPool::new();
        let resp = send(&pool, addr, get("/raw")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"a");
        // A body goes through hyper's client, which takes the kept connection over.
        let mut post = get("/body");
        *post.method_mut() = Method::POST;
        *post.body_mut() = full("xyz");
        let resp = send(&pool, addr, post).await.expect("answer");
        assert_eq!(read(resp).await.0, b"b");
        let resp = send(&pool, addr, get("/after")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"c");
        let conns: Vec<usize> = std::iter::from_fn(|| seen.try_recv().ok().map(|h| h.0)).collect();
        assert_eq!(conns, [0, 0, 0]);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_request_on_a_connection_that_closes_unanswered_is_repeated_only_when_safe() {
    within(async {
        // Each kept connection answers once, then reads the next request and closes.
        let (addr, mut seen) = service(
            vec![
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", b""],
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", b""],
            ],
            |_| false,
        )
        .await;
        let pool = LocalPool::new();
        let resp = send(&pool, addr, get("/a")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"a");
        // A GET goes out on the kept connection, finds it closing, and goes on a new one.
        let resp = send(&pool, addr, get("/b")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"b");
        // A DELETE may have been acted on: it is not sent again.
        let mut delete = get("/c");
        *delete.method_mut() = Method::DELETE;
        match send(&pool, addr, delete).await {
            Err(OpenError::LocalRefused(why)) => assert!(why.contains("closed"), "{why}"),
            other => panic!(
                "a DELETE repeated or answered: {:?}",
                other.map(|r| r.status())
            ),
        }
        let heads: Vec<(usize, String)> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
        let want = [
            (0, "GET /a"),
            (0, "GET /b"),
            (1, "GET /b"),
            (1, "DELETE /c"),
        ];
        assert_eq!(heads, want.map(|(n, h)| (n, h.to_string())));
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn framing_follows_rfc_9112_when_headers_disagree() {
    within(async {
        let (addr, mut seen) = service(
            vec![
                // Both framings: chunked counts, Content-Length goes, the connection is not kept.
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"],
                // A coding after chunked: read until close, the coding left for the visitor.
                vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw bytes"],
                // Chunked in HTTP/1.0 means nothing: until close.
                vec![b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"],
                // 304 has no body whatever it says, and equal lengths are one; both kept.
                vec![
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
                    b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
                ],
            ],
            |n| n == 3,
        )
        .await;
        let pool = LocalPool::new();
        let resp = send(&pool, addr, get("/both")).await.expect("answer");
        assert!(!resp.headers().contains_key("content-length"));
        assert_eq!(read(resp).await.0, b"ab");
        let resp = send(&pool, addr, get("/gzip")).await.expect("answer");
        assert!(resp.headers().contains_key("transfer-encoding"));
        assert_eq!(read(resp).await.0, b"raw bytes");
        let resp = send(&pool, addr, get("/old")).await.expect("answer");
        assert_eq!(read(resp).await.0, b"2\r\nab\r\n");
        let resp = send(&pool, addr, get("/cached")).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert!(read(resp).await.0.is_empty());
        let resp = send(&pool, addr, get("/twice")).await.expect("answer");
        let lengths: Vec<_> = resp.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, [&"2"]);
        let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Fine Thanks"[..]));
        assert_eq!(
            hyper::body::Body::size_hint(resp.body()).exact(),
            Some(2),
            "the visitor's side learns the length"
        );
        assert_eq!(read(resp).await.0, b"ok");
        let conns: Vec<usize> = std::iter::from_fn(|| seen.try_recv().ok().map(|h| h.0)).collect();
        assert_eq!(conns, [0, 1, 2, 3, 3]);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn the_request_goes_as_it_is_and_only_plain_ones_go_raw() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut byte)
                    .await
                    .expect("read");
                assert!(n == 1, "closed early");
                got.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .expect("answer");
            got
        });
        let mut post = get("/p?q=1");
        *post.method_mut() = Method::POST;
        post.headers_mut()
            .insert("x-a", http::HeaderValue::from_static("1"));
        assert!(raw::eligible(&post));
        let resp = send(&LocalPool::new(), addr, post).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let got = service.await.expect("service");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: svc.test\r\n\r\n"
        );
        let mut connect = get("/");
        *connect.method_mut() = Method::CONNECT;
        let mut upgrade = get("/");
        upgrade
            .headers_mut()
            .insert("upgrade", http::HeaderValue::from_static("websocket"));
        let mut with_body = get("/");
        *with_body.body_mut() = full("x");
        for req in [connect, upgrade, with_body] {
            assert!(!raw::eligible(&req), "{} {:?}", req.method(), req.headers());
        }
    })
    .await
    .expect("in time");
}
