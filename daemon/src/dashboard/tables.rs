//! The overview's tables (also served alone at `/ui/fragment/tables`, which the page swaps in
//! when the set of sessions or routes changes): sessions per transport, routes per frontend,
//! admin mappings and pools, stored tokens (no secrets), rendezvous ids, recent refusals.

use super::pages::csrf_field;
use super::reply::esc;
use super::Dashboard;
use std::time::{SystemTime, UNIX_EPOCH};
use tunneld_state::{rfc3339, RendezvousRecord, TokenRecord};

/// Rows shown per table; the rest are counted.
const MAX_ROWS: usize = 500;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A table headed by its section's title, with `th scope="col"` headers and `rows` (at most
/// [`MAX_ROWS`]; or one "none" row), in a box that scrolls sideways on narrow screens.
fn table(id: &str, caption: &str, heads: &[&str], mut rows: Vec<String>) -> String {
    if rows.len() > MAX_ROWS {
        let more = rows.len() - MAX_ROWS;
        rows.truncate(MAX_ROWS);
        rows.push(format!(
            r#"<tr><td colspan="{}" class="none">and {more} more (the admin API lists them all)</td></tr>"#,
            heads.len()
        ));
    }
    let head: String = heads
        .iter()
        .map(|h| format!(r#"<th scope="col">{h}</th>"#))
        .collect();
    let body = if rows.is_empty() {
        format!(
            r#"<tr><td colspan="{}" class="none">none</td></tr>"#,
            heads.len()
        )
    } else {
        rows.concat()
    };
    format!(
        r#"<section id="{id}" aria-labelledby="{id}-title"><h2 id="{id}-title">{caption}</h2>
<div class="scroll" tabindex="0" role="region" aria-labelledby="{id}-title"><table>
<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"#
    )
}

fn td(s: &str) -> String {
    format!("<td>{}</td>", esc(s))
}

/// Every table.
pub async fn all(d: &Dashboard, csrf: &str) -> String {
    let store = d.store.clone();
    let stored =
        tokio::task::spawn_blocking(move || (store.tokens(), store.rendezvous_ids())).await;
    let (tokens, ids) = match stored {
        Ok((t, r)) => (t.map_err(|e| e.to_string()), r.map_err(|e| e.to_string())),
        Err(e) => (Err(e.to_string()), Err(e.to_string())),
    };
    [
        sessions(d, csrf),
        tunnels(d).await,
        pools(d).await,
        token_table(tokens, csrf),
        rendezvous(ids),
        events(d),
    ]
    .concat()
}

fn sessions(d: &Dashboard, csrf: &str) -> String {
    let mut all = d.hub.sessions();
    all.sort_by(|a, b| {
        (
            a.info.transport.as_str(),
            a.info.client_id.as_str(),
            a.info.id,
        )
            .cmp(&(
                b.info.transport.as_str(),
                b.info.client_id.as_str(),
                b.info.id,
            ))
    });
    let rows = all
        .iter()
        .map(|s| {
            let tunnels = s
                .tunnels()
                .iter()
                .map(|t| match (&t.endpoint, &t.error) {
                    (Some(e), _) => format!("{} → {}", t.name, e),
                    (None, Some(err)) => format!("{} (refused: {})", t.name, err),
                    _ => t.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let id = s.info.id;
            format!(
                r#"<tr data-session="{id}">{}{}<td class="num">{id}</td>{}{}{}<td><form method="post" action="/ui/sessions/disconnect">{}<input type="hidden" name="session" value="{id}"><button type="submit" class="danger" aria-label="Disconnect session {id} of {}">Disconnect</button></form></td></tr>"#,
                td(&format!("{} ({})", s.info.transport, s.info.transport_kind)),
                td(&s.info.client_id),
                td(&s.info.remote.to_string()),
                td(&rfc3339(unix(s.info.connected_at))),
                td(&tunnels),
                csrf_field(csrf),
                esc(&s.info.client_id),
            )
        })
        .collect();
    table(
        "sessions",
        "Clients and sessions",
        &[
            "Transport",
            "Client",
            "Session",
            "Peer",
            "Connected since",
            "Tunnels",
            "Action",
        ],
        rows,
    )
}

async fn tunnels(d: &Dashboard) -> String {
    let mut routes = d.mappings.routes_with_owners(&d.hub).await;
    routes.sort_by(|a, b| (&a.frontend, &a.tunnel).cmp(&(&b.frontend, &b.tunnel)));
    let rows = routes
        .iter()
        .map(|r| {
            format!(
                r#"<tr data-tunnel="{}">{}{}{}<td><code>{}</code></td>{}</tr>"#,
                esc(&r.tunnel),
                td(&r.frontend),
                td(&r.tunnel),
                td(&r.owner),
                esc(&r.endpoint),
                td(r.state),
            )
        })
        .collect();
    table(
        "tunnels",
        "Tunnels per frontend",
        &["Frontend", "Tunnel", "Client", "Public endpoint", "State"],
        rows,
    )
}

/// Admin mappings; a mapping naming several clients is a pool, each member shown online or
/// offline.
async fn pools(d: &Dashboard) -> String {
    let rows = d
        .mappings
        .mappings()
        .await
        .iter()
        .map(|(m, endpoint)| {
            let members = m
                .members()
                .iter()
                .map(|c| {
                    let state = if d.hub.is_online(c) {
                        "online"
                    } else {
                        "offline"
                    };
                    format!(
                        r#"<span class="member {state}">{} ({state})</span>"#,
                        esc(c)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "<tr>{}<td><code>{}</code></td>{}<td>{members}</td>{}</tr>",
                td(&m.route_name()),
                esc(endpoint),
                td(m.frontend.as_deref().unwrap_or("(default)")),
                td(&m.target),
            )
        })
        .collect();
    table(
        "pools",
        "Admin mappings and pools",
        &[
            "Route",
            "Public endpoint",
            "Frontend",
            "Clients (pool members)",
            "Target",
        ],
        rows,
    )
}

fn token_table(tokens: Result<Vec<TokenRecord>, String>, csrf: &str) -> String {
    let now = tunneld_state::now();
    let opt = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "—".into());
    let rows = match tokens {
        Err(e) => vec![format!(
            r#"<tr><td colspan="7" class="error">the state store cannot be read: {}</td></tr>"#,
            esc(&e)
        )],
        Ok(list) => list
            .iter()
            .map(|t| {
                let state = t.state(now);
                let action = if state == "active" {
                    format!(
                        r#"<form method="post" action="/ui/tokens/revoke">{}<input type="hidden" name="token" value="{n}"><button type="submit" class="danger" aria-label="Revoke token {n}">Revoke</button></form>"#,
                        csrf_field(csrf),
                        n = esc(&t.name)
                    )
                } else {
                    String::new()
                };
                format!(
                    r#"<tr>{}<td><span class="state {state}">{state}</span></td>{}{}{}{}<td>{action}</td></tr>"#,
                    td(&t.name),
                    td(&opt(t.max_ports)),
                    td(&opt(t.max_names)),
                    td(&t.expires_at.map(rfc3339).unwrap_or_else(|| "never".into())),
                    td(&t.transports.as_ref().map(|v| v.join(", ")).unwrap_or_else(|| "all".into())),
                )
            })
            .collect(),
    };
    let mut out = table(
        "tokens",
        "Stored tokens",
        &[
            "Name",
            "State",
            "Max ports",
            "Max names",
            "Expires",
            "Transports",
            "Action",
        ],
        rows,
    );
    out.push_str(r#"<p class="hint">Tokens made with <code>tunneld token add</code>; secrets are never shown. Tokens in the configuration file change with the file and a reload.</p>"#);
    out
}

fn rendezvous(ids: Result<Vec<RendezvousRecord>, String>) -> String {
    let rows = match ids {
        Err(e) => vec![format!(
            r#"<tr><td colspan="3" class="error">the state store cannot be read: {}</td></tr>"#,
            esc(&e)
        )],
        Ok(list) => list
            .iter()
            .map(|r| {
                format!(
                    "<tr><td><code>{}</code></td>{}{}</tr>",
                    esc(&r.id),
                    td(r.client.as_deref().unwrap_or("—")),
                    td(&rfc3339(r.created)),
                )
            })
            .collect(),
    };
    table(
        "rendezvous",
        "Rendezvous ids",
        &["Id", "Client", "Created"],
        rows,
    )
}

fn events(d: &Dashboard) -> String {
    let rows = d
        .recent
        .newest_first()
        .iter()
        .map(|e| {
            format!(
                r#"<tr>{}{}{}<td class="num">{}</td></tr>"#,
                td(&rfc3339(unix(e.at))),
                td(&e.what),
                td(&e.why),
                e.count
            )
        })
        .collect();
    table(
        "events",
        "Recent errors and refusals",
        &["Time", "What", "Details", "Count"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_are_capped_and_headed() {
        let rows = (0..super::MAX_ROWS + 3)
            .map(|i| format!("<tr><td>{i}</td></tr>"))
            .collect();
        let t = super::table("x", "X", &["A", "B"], rows);
        assert!(t.contains(r#"<th scope="col">A</th>"#));
        assert!(t.contains("and 3 more"));
        assert!(!t.contains(&format!("<td>{}</td>", super::MAX_ROWS)));
        let empty = super::table("y", "Y", &["A"], Vec::new());
        assert!(empty.contains(r#"<td colspan="1" class="none">none</td>"#));
    }
}
