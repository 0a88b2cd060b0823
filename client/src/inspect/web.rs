//! The inspector's web server: pages, live updates (server-sent events), a JSON API and
//! replay. It answers only to loopback host names (a page elsewhere cannot reach it through
//! DNS rebinding), and every form carries the inspector's token (no cross-site replay).

use super::replay::{replay, Edit};
use super::store::{Exchange, Outcome};
use super::view::{masked, payload};
use super::{pages, Inspector};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tunneld_core::form::Form;
use tunneld_core::http_serve::{self, read_body, respond, Limits, Resp};

const CSS: &str = include_str!("assets/inspect.css");
const JS: &str = include_str!("assets/inspect.js");
/// Live-update streams open at once.
const MAX_EVENT_STREAMS: usize = 16;
/// Largest form accepted (an edited replay's body and headers).
const MAX_FORM: usize = 4 << 20;

struct Web {
    inspector: Arc<Inspector>,
    addr: SocketAddr,
    streams: Arc<Semaphore>,
}

/// Serves the inspector on `listener` until the process ends.
pub fn serve(inspector: Arc<Inspector>, listener: TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let web = Arc::new(Web {
        inspector,
        addr,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
    });
    let limits = Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(10),
    };
    let handler: http_serve::Handler = Arc::new(move |req, _peer| {
        let web = web.clone();
        Box::pin(async move { web.route(req).await })
    });
    http_serve::serve("inspector", listener, None, limits, handler);
    Ok(())
}

fn see_other(location: &str) -> Resp {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = header::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn html(status: StatusCode, body: String) -> Resp {
    let mut r = respond(status, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "content-security-policy",
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

impl Web {
    fn stats(&self) -> String {
        pages::stats(self.inspector.store.stats())
    }

    fn message(&self, status: StatusCode, title: &str, text: &str) -> Resp {
        html(status, pages::message(title, text, &self.stats()))
    }

    /// Whether `Host` names this listener by a loopback name.
    fn host_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        else {
            return false;
        };
        let port = self.addr.port();
        let ip = self.addr.ip().to_string();
        let ip6 = format!("[{ip}]");
        let Some((name, p)) = host.rsplit_once(':') else {
            return false;
        };
        p.parse::<u16>().is_ok_and(|p| p == port)
            && ["localhost", "127.0.0.1", "[::1]", &ip, &ip6]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
    }

    async fn route(&self, req: Request<Incoming>) -> Resp {
        let mut r = self.answer(req).await;
        r.headers_mut().insert(
            "x-content-type-options",
            header::HeaderValue::from_static("nosniff"),
        );
        r
    }

    async fn answer(&self, req: Request<Incoming>) -> Resp {
        // A page of another site may send requests here (no-cors); browsers say so.
        let cross_site = req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site {
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain",
                "the inspector answers its own pages only\n",
            );
        }
        if !self.host_ok(&req) {
            return respond(
                StatusCode::MISDIRECTED_REQUEST,
                "text/plain",
                format!(
                    "the inspector answers only at http://127.0.0.1:{0}/ or http://localhost:{0}/\n",
                    self.addr.port()
                ),
            );
        }
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let store = &self.inspector.store;
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, [""]) => html(
                StatusCode::OK,
                pages::list(&store.all(), &self.stats(), self.inspector.csrf()),
            ),
            (Method::GET, ["fragment", "rows"]) => html(StatusCode::OK, pages::rows(&store.all())),
            (Method::GET, ["assets", "inspect.css"]) => respond(StatusCode::OK, "text/css", CSS),
            (Method::GET, ["assets", "inspect.js"]) => {
                respond(StatusCode::OK, "text/javascript", JS)
            }
            (Method::GET, ["events"]) => self.events(),
            (Method::GET, ["requests", id]) => match id.parse().ok().and_then(|i| store.get(i)) {
                Some(e) => self.detail(&e, None),
                None => self.gone(id),
            },
            (Method::GET, ["api", "requests"]) => {
                let list: Vec<Value> = store.all().iter().rev().map(|e| summary(e)).collect();
                let (kept, bytes, dropped) = store.stats();
                http_serve::json_resp(
                    StatusCode::OK,
                    &json!({ "requests": list, "kept": kept, "bytes": bytes, "dropped": dropped }),
                )
            }
            (Method::GET, ["api", "requests", id]) => {
                match id.parse().ok().and_then(|i| store.get(i)) {
                    Some(e) => http_serve::json_resp(StatusCode::OK, &full(&e)),
                    None => http_serve::error(StatusCode::NOT_FOUND, format!("no request {id}")),
                }
            }
            (Method::POST, ["clear"]) => match self.form(req).await {
                Ok(_) => {
                    store.clear();
                    see_other("/")
                }
                Err(r) => r,
            },
            (Method::POST, ["requests", id, "replay"]) => {
                let id = id.to_string();
                match self.form(req).await {
                    Ok(fields) => self.replay(&id, &fields).await,
                    Err(r) => r,
                }
            }
            (_, [""] | ["fragment", "rows"] | ["events"] | ["requests", _] | ["api", ..]) => {
                respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
            }
            (_, ["clear"] | ["requests", _, "replay"]) => {
                respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n")
            }
            _ => self.message(
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("Nothing at {path}."),
            ),
        }
    }

    fn gone(&self, id: &str) -> Resp {
        self.message(
            StatusCode::NOT_FOUND,
            "Request not kept",
            &format!("Request {id} is not kept (the inspector keeps the newest requests up to inspect.max_requests and inspect.max_memory)."),
        )
    }

    fn detail(&self, e: &Exchange, flash: Option<&str>) -> Resp {
        let original = e.replay_of.and_then(|o| self.inspector.store.get(o));
        html(
            StatusCode::OK,
            pages::detail(
                e,
                original.as_deref(),
                &self.stats(),
                self.inspector.csrf(),
                flash,
            ),
        )
    }

    /// A posted form, after the cross-site checks: its fields.
    async fn form(&self, req: Request<Incoming>) -> Result<Form, Resp> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok());
        let own = format!("http://{host}");
        if origin.is_some_and(|o| !o.eq_ignore_ascii_case(&own)) {
            return Err(self.message(
                StatusCode::FORBIDDEN,
                "Refused",
                "This form came from another site; the inspector takes forms from its own pages only.",
            ));
        }
        let body = match read_body(req, MAX_FORM, Duration::from_secs(30)).await {
            Ok(b) => b,
            Err(r) => return Err(r),
        };
        let fields = match Form::parse(&body) {
            Ok(f) => f,
            Err(e) => return Err(self.message(StatusCode::BAD_REQUEST, "Refused", &e)),
        };
        if fields.get("csrf") != Some(self.inspector.csrf()) {
            return Err(self.message(
                StatusCode::FORBIDDEN,
                "Refused",
                "The form's token is missing or stale (tunnelc restarted?): reload the page and try again.",
            ));
        }
        Ok(fields)
    }

    async fn replay(&self, id: &str, fields: &Form) -> Resp {
        let store = &self.inspector.store;
        let Some(original) = id.parse().ok().and_then(|i| store.get(i)) else {
            return self.gone(id);
        };
        let raw = |k: &str| fields.get(k).unwrap_or_default().to_string();
        let field = |k: &str| raw(k).replace("\r\n", "\n");
        // Browsers send a textarea's lines with CRLF: back to LF when the original had LF.
        let body = match raw("eol").as_str() {
            "crlf" => raw("body"),
            _ => field("body"),
        };
        let edit = (field("edited") == "1").then(|| Edit {
            method: field("method"),
            target: field("target"),
            headers: field("headers"),
            body: (field("keep_body") != "1").then_some(body),
        });
        match replay(&self.inspector, &original, edit.as_ref()).await {
            Ok(new) => see_other(&format!("/requests/{new}")),
            Err(e) => {
                tracing::info!(request = %id, "inspector: replay failed: {e}");
                let mut r = self.detail(&original, Some(&format!("Replay failed: {e}")));
                *r.status_mut() = if e.is_upstream() {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::BAD_REQUEST
                };
                r
            }
        }
    }

    /// `text/event-stream`: an event each time the store changes (at most four a second),
    /// and a comment every 15 s so proxies keep the stream open.
    fn events(&self) -> Resp {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("at most {MAX_EVENT_STREAMS} live pages at once\n"),
            );
        };
        let rx = self.inspector.store.watch();
        let stream =
            futures::stream::unfold((rx, permit, true), |(mut rx, permit, first)| async move {
                if !first {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match tokio::time::timeout(Duration::from_secs(15), rx.changed()).await {
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            let f = Frame::data(Bytes::from_static(b": keep-alive\n\n"));
                            return Some((Ok::<_, Infallible>(f), (rx, permit, false)));
                        }
                        Ok(Ok(())) => {}
                    }
                }
                let generation = *rx.borrow_and_update();
                let f = Frame::data(Bytes::from(format!("data: {generation}\n\n")));
                Some((Ok(f), (rx, permit, false)))
            });
        let mut r = http::Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        r
    }
}

fn outcome(e: &Exchange) -> Value {
    match &e.outcome {
        Outcome::Pending => json!("pending"),
        Outcome::Complete => json!("complete"),
        Outcome::Failed(why) => json!({ "failed": why }),
    }
}

/// A list entry of the API: secrets in headers masked.
fn summary(e: &Exchange) -> Value {
    let headers: Vec<Value> = e
        .request
        .headers
        .iter()
        .map(|(n, v)| json!([n, masked(n, v)]))
        .collect();
    json!({
        "id": e.id,
        "tunnel": e.tunnel,
        "method": e.request.method,
        "target": e.request.target,
        "status": e.response.as_ref().map(|r| r.status),
        "duration_ms": e.duration.map(|d| d.as_secs_f64() * 1000.0),
        "request_headers": headers,
        "replay_of": e.replay_of,
        "outcome": outcome(e),
    })
}

/// One exchange, whole (bodies as text, lossy).
fn full(e: &Exchange) -> Value {
    let fields = |h: &[(String, Vec<u8>)]| -> Vec<Value> {
        h.iter()
            .map(|(n, v)| json!([n, String::from_utf8_lossy(v)]))
            .collect()
    };
    let mut v = summary(e);
    v["request_headers"] = json!(fields(&e.request.headers));
    v["request_body"] = json!(String::from_utf8_lossy(&payload(&e.request_body)));
    v["request_body_truncated"] = json!(e.request_body.truncated);
    v["local"] = json!(e.local);
    if let Some(r) = &e.response {
        v["response"] = json!({
            "status": r.status,
            "reason": r.reason,
            "headers": fields(&r.headers),
            "body": String::from_utf8_lossy(&payload(&r.body)),
            "body_truncated": r.body.truncated,
        });
    }
    v
}
