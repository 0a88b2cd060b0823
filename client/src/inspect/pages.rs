//! The inspector's HTML, rendered on the server: the request list and one request with its
//! replay forms. Pages work without JavaScript; `inspect.js` adds live updates, filtering
//! and revealing masked values.

use super::store::{Body, Exchange, Outcome, Response};
use super::view::{clock, esc, is_secret, masked, show};
use std::sync::Arc;

fn page(title: &str, stats: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tunnelc inspector</title>
<link rel="stylesheet" href="/assets/inspect.css">
</head>
<body>
<header class="top"><a class="brand" href="/">tunnelc inspector</a><span id="stats" aria-live="polite">{stats}</span></header>
<main>
{main}
</main>
<script src="/assets/inspect.js"></script>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// "12 requests kept (3 dropped for the caps)".
pub fn stats((kept, _bytes, dropped): (usize, usize, u64)) -> String {
    match dropped {
        0 => format!("{kept} requests kept"),
        d => format!("{kept} requests kept ({d} older dropped)"),
    }
}

fn status_cell(e: &Exchange) -> String {
    match (&e.outcome, &e.response) {
        (_, Some(r)) => format!(
            r#"<span class="status s{}">{}</span>"#,
            r.status / 100,
            r.status
        ),
        (Outcome::Failed(why), None) => format!(
            r#"<span class="status failed" title="{}">failed</span>"#,
            esc(why)
        ),
        _ => r#"<span class="status pending">…</span>"#.to_string(),
    }
}

fn duration(e: &Exchange) -> String {
    e.duration
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_default()
}

/// The rows of the list, newest first.
pub fn rows(list: &[Arc<Exchange>]) -> String {
    let mut out = String::new();
    for e in list.iter().rev() {
        let status = e
            .response
            .as_ref()
            .map(|r| r.status.to_string())
            .unwrap_or_default();
        let size = e
            .response
            .as_ref()
            .map(|r| r.body.wire_len.to_string())
            .unwrap_or_default();
        let replay = e
            .replay_of
            .map(|o| format!(r#" <span class="tag">replay of #{o}</span>"#))
            .unwrap_or_default();
        let search = format!(
            "{} {} {} {}",
            e.request.method, e.request.target, status, e.tunnel
        )
        .to_lowercase();
        out.push_str(&format!(
            r#"<tr data-search="{search}"><td><a href="/requests/{id}">#{id}</a></td><td>{time}</td><td>{tunnel}</td><td class="method">{method}</td><td class="path"><a href="/requests/{id}">{target}</a>{replay}</td><td>{status}</td><td>{dur}</td><td>{size}</td></tr>
"#,
            search = esc(&search),
            id = e.id,
            time = clock(e.at),
            tunnel = esc(&e.tunnel),
            method = esc(&e.request.method),
            target = esc(&e.request.target),
            status = status_cell(e),
            dur = duration(e),
        ));
    }
    if list.is_empty() {
        out.push_str(r#"<tr class="empty"><td colspan="8">No requests yet: visit the tunnel's public URL and they appear here.</td></tr>"#);
    }
    out
}

pub fn list(list: &[Arc<Exchange>], stats: &str, csrf: &str) -> String {
    let main = format!(
        r#"<h1>Requests</h1>
<div class="toolbar">
<label for="filter">Filter</label>
<input id="filter" type="search" placeholder="method, path, status or tunnel" autocomplete="off">
<form method="post" action="/clear"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Clear</button></form>
</div>
<div class="scroll">
<table id="requests">
<thead><tr><th scope="col">#</th><th scope="col">Time (UTC)</th><th scope="col">Tunnel</th><th scope="col">Method</th><th scope="col">Path</th><th scope="col">Status</th><th scope="col">Duration</th><th scope="col">Bytes</th></tr></thead>
<tbody id="rows" data-fragment="/fragment/rows">
{rows}</tbody>
</table>
</div>"#,
        rows = rows(list),
    );
    page("Requests", stats, &main)
}

fn headers(id: &str, fields: &[(String, Vec<u8>)]) -> String {
    let mut out = format!(r#"<div class="scroll"><table class="headers" id="{id}"><tbody>"#);
    for (n, v) in fields {
        let value = if is_secret(n) {
            format!(
                r#"<span class="masked">{}</span> <button type="button" class="reveal" data-value="{}">Show</button>"#,
                esc(&masked(n, v)),
                esc(&String::from_utf8_lossy(v))
            )
        } else {
            esc(&String::from_utf8_lossy(v))
        };
        out.push_str(&format!(
            r#"<tr><th scope="row">{}</th><td>{value}</td></tr>"#,
            esc(n)
        ));
    }
    out.push_str("</tbody></table></div>");
    out
}

fn body(id: &str, fields: &[(String, Vec<u8>)], b: &Body) -> String {
    let s = show(fields, b);
    format!(
        r#"<p class="note">Body: {}</p><pre id="{id}">{}</pre>"#,
        esc(&s.note),
        esc(&s.text)
    )
}

fn response(id: &str, e: &Exchange) -> String {
    match (&e.response, &e.outcome) {
        (
            Some(Response {
                status,
                reason,
                headers: h,
                body: b,
            }),
            _,
        ) => format!(
            r#"<p class="line" id="{id}-status"><span class="status s{}">{status}</span> {}</p>{}{}"#,
            status / 100,
            esc(reason),
            headers(&format!("{id}-headers"), h),
            body(&format!("{id}-body"), h, b)
        ),
        (None, Outcome::Failed(why)) => {
            format!(
                r#"<p class="line" id="{id}-status">No response: {}</p>"#,
                esc(why)
            )
        }
        _ => format!(r#"<p class="line" id="{id}-status">Waiting for the response…</p>"#),
    }
}

fn raw_headers(fields: &[(String, Vec<u8>)]) -> String {
    fields
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v)))
        .collect()
}

/// One exchange; `original` is the exchange it replayed, shown beside it.
pub fn detail(
    e: &Exchange,
    original: Option<&Exchange>,
    stats: &str,
    csrf: &str,
    flash: Option<&str>,
) -> String {
    let req = &e.request;
    let flash = flash
        .map(|f| format!(r#"<p class="flash" role="alert">{}</p>"#, esc(f)))
        .unwrap_or_default();
    let replay_of = match (e.replay_of, original) {
        (Some(o), Some(orig)) => format!(
            r#"<section aria-labelledby="compare-h"><h2 id="compare-h">Replay of <a href="/requests/{o}">#{o}</a></h2>
<div class="columns"><div><h3>Original #{o}</h3>{}</div><div><h3>This replay #{}</h3>{}</div></div></section>"#,
            response("original", orig),
            e.id,
            response("replayed", e)
        ),
        (Some(o), None) => format!(r#"<p>Replay of #{o} (no longer kept).</p>"#),
        _ => String::new(),
    };
    let payload = super::view::payload(&e.request_body);
    let b = &e.request_body;
    let body_field = match std::str::from_utf8(&payload) {
        _ if b.truncated || !b.complete => r#"<p class="note">The original body did not arrive whole (cut at inspect.max_body, or its connection ended): type the body to send.</p><label for="e-body">Body</label><textarea id="e-body" name="body" rows="8"></textarea>"#.to_string(),
        Ok(text) => format!(
            r#"<label for="e-body">Body</label><textarea id="e-body" name="body" rows="8">{}</textarea><input type="hidden" name="eol" value="{}">"#,
            esc(text),
            if text.contains("\r\n") { "crlf" } else { "lf" }
        ),
        Err(_) => format!(
            r#"<p class="note">The body is binary ({} bytes): the edited request sends it unchanged.</p><input type="hidden" name="keep_body" value="1">"#,
            payload.len()
        ),
    };
    let main = format!(
        r#"<p><a href="/">← All requests</a></p>
{flash}<h1><span class="method">{method}</span> <code id="target">{target}</code></h1>
<dl class="summary">
<dt>Status</dt><dd id="status" data-request="{id}">{status}</dd>
<dt>Tunnel</dt><dd>{tunnel} → {local}</dd>
<dt>Time (UTC)</dt><dd>{time}</dd>
<dt>Duration</dt><dd>{dur}</dd>
</dl>
{replay_of}
<section aria-labelledby="req-h"><h2 id="req-h">Request</h2>
<p class="line">{method} {target} HTTP/1.{minor}</p>
{req_headers}{req_body}</section>
<section aria-labelledby="resp-h"><h2 id="resp-h">Response</h2>{resp}</section>
<section aria-labelledby="replay-h"><h2 id="replay-h">Replay</h2>
<p>Sends the request again to {local}, over a new connection; the replay is recorded as a request of its own.</p>
<form method="post" action="/requests/{id}/replay"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="replay">Replay</button></form>
<details><summary>Edit and replay</summary>
<form method="post" action="/requests/{id}/replay" class="edit">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="edited" value="1">
<label for="e-method">Method</label><input id="e-method" name="method" value="{method}">
<label for="e-target">Path</label><input id="e-target" name="target" value="{target}">
<label for="e-headers">Headers (Content-Length is set from the body)</label><textarea id="e-headers" name="headers" rows="8">{raw}</textarea>
{body_field}
<button type="submit" id="replay-edited">Send edited</button>
</form></details></section>"#,
        method = esc(&req.method),
        target = esc(&req.target),
        minor = req.minor,
        status = status_cell(e),
        tunnel = esc(&e.tunnel),
        local = esc(&e.local),
        time = clock(e.at),
        dur = duration(e),
        req_headers = headers("request-headers", &req.headers),
        req_body = body("request-body", &req.headers, &e.request_body),
        resp = response("response", e),
        id = e.id,
        raw = esc(&raw_headers(&req.headers)),
    );
    page(&format!("#{} {}", e.id, req.target), stats, &main)
}

/// A page for an error (a request that is gone, a refused form).
pub fn message(title: &str, text: &str, stats: &str) -> String {
    page(
        title,
        stats,
        &format!(
            r#"<p><a href="/">← All requests</a></p><h1>{}</h1><p class="flash" role="alert">{}</p>"#,
            esc(title),
            esc(text)
        ),
    )
}
