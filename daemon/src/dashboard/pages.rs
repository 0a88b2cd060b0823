//! The dashboard's pages: the login form and the overview (live counters and graphs, the
//! tables, the mapping editor), rendered on the server.

use super::reply::esc;
use super::{tables, Dashboard};

/// The page around `main`.
fn layout(title: &str, nav: &str, main: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · tunneld</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css">
<script src="/ui/assets/dashboard.js" defer></script>
</head>
<body>
<header class="top"><span class="brand">tunneld</span>{nav}</header>
<main id="main">
{main}
</main>
</body>
</html>
"#,
        title = esc(title)
    )
}

/// `GET /ui/login` (with `error` after a refused token).
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="flash error" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let main = format!(
        r#"<section class="login" aria-labelledby="login-title">
<h1 id="login-title">Sign in</h1>
{error}<form method="post" action="/ui/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
<p class="hint">The token is <code>admin.token</code> from tunneld's configuration.</p>
</section>"#
    );
    layout("Sign in", "", &main)
}

/// A hidden CSRF field for a form.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// One live counter with a stable id the script (and tests) update.
fn stat(id: &str, label: &str) -> String {
    format!(r#"<div class="stat"><dt>{label}</dt><dd id="{id}">–</dd></div>"#)
}

fn graph(id: &str, label: &str) -> String {
    format!(
        r#"<figure class="graph"><figcaption>{label} <span id="{id}-now">–</span></figcaption><svg id="{id}" viewBox="0 0 120 30" preserveAspectRatio="none" role="img" aria-label="{label}, last two minutes"><line class="base" x1="0" y1="29.5" x2="120" y2="29.5"></line><polyline points=""></polyline></svg></figure>"#
    )
}

/// `GET /ui`.
pub async fn overview(d: &Dashboard, csrf: &str, flash: Option<&str>, logout: bool) -> String {
    let nav = format!(
        r##"<nav aria-label="Sections"><ul>
<li><a href="#live">Live</a></li><li><a href="#sessions">Sessions</a></li><li><a href="#tunnels">Tunnels</a></li><li><a href="#tokens">Tokens</a></li><li><a href="#events">Refusals</a></li><li><a href="#mapping-editor">Mappings</a></li>
</ul>{logout}</nav>"##,
        logout = if logout && !csrf.is_empty() {
            format!(
                r#"<form method="post" action="/ui/logout" class="logout">{}<button type="submit">Sign out</button></form>"#,
                csrf_field(csrf)
            )
        } else {
            String::new()
        }
    );
    let flash = flash
        .map(|f| {
            let class = if f.starts_with("Error:") {
                "flash error"
            } else {
                "flash"
            };
            format!(
                r#"<p class="{class}" role="status" id="flash">{}</p>"#,
                esc(f)
            )
        })
        .unwrap_or_default();
    let stats = [
        ("clients-total", "Clients"),
        ("sessions-total", "Sessions"),
        ("tunnels-total", "Tunnels"),
        ("streams-active", "Streams open"),
        ("streams-total", "Streams total"),
        ("bytes-total", "Bytes relayed"),
    ]
    .iter()
    .map(|(id, l)| stat(id, l))
    .collect::<String>();
    let mappings_json = {
        let list: Vec<_> = d
            .mappings
            .mappings()
            .await
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
    };
    let main = format!(
        r#"<h1>Overview</h1>
{flash}<section id="live" aria-labelledby="live-title">
<h2 id="live-title">Live <span class="live-state" id="live-state">connecting…</span></h2>
<dl class="stats">{stats}</dl>
<div class="graphs">{g1}{g2}</div>
</section>
<div id="tables" data-seen="{seen}">
{tables}
</div>
<section id="mapping-editor" aria-labelledby="mapping-title">
<h2 id="mapping-title">Change the admin mappings</h2>
<p>The whole list as JSON, as <code>PUT /tunnels</code> takes it (docs/admin-api.md); checked the same way, and nothing changes on an error.</p>
<form method="post" action="/ui/mappings">
{csrf}<label for="mappings">Mappings (JSON list)</label>
<textarea id="mappings" name="mappings" rows="8" spellcheck="false">{mappings}</textarea>
<button type="submit">Apply mappings</button>
</form>
</section>"#,
        g1 = graph("spark-bytes", "Bytes/s"),
        g2 = graph("spark-streams", "Streams/s"),
        seen = {
            let t = d.totals.borrow();
            format!("{}:{}", t.generation, t.refusals)
        },
        tables = tables::all(d, csrf).await,
        csrf = csrf_field(csrf),
        mappings = esc(&mappings_json),
    );
    layout("Overview", &nav, &main)
}
