//! The dashboard's forms: log out, disconnect one session, revoke a stored token (and cut
//! its sessions, as the sweep does), replace the admin mappings (as `PUT /tunnels`). Each
//! POST is checked for its CSRF token and `Origin`, then answers 303 back to `/ui` with the
//! outcome kept for the next page.

use super::auth::Who;
use super::MAX_FORM;
use super::{csrf, reply, Dashboard};
use crate::http_serve::{read_body, Resp};
use crate::mappings::Mapping;
use http::{header, Request, StatusCode};
use hyper::body::Incoming;
use std::time::Duration;
use tunneld_core::form::Form;

/// The mapping form carries a whole list: a larger cap than the other forms.
pub const MAX_MAPPINGS_FORM: usize = 64 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const LOGOUT: &str = "/ui/logout";
const DISCONNECT: &str = "/ui/sessions/disconnect";
const REVOKE: &str = "/ui/tokens/revoke";
const MAPPINGS: &str = "/ui/mappings";

pub fn is_action(path: &str) -> bool {
    matches!(path, LOGOUT | DISCONNECT | REVOKE | MAPPINGS)
}

/// What an action did, or why it could not.
type Outcome = Result<String, (StatusCode, String)>;

impl Dashboard {
    pub(super) async fn act(&self, req: Request<Incoming>, path: &str, who: Who) -> Resp {
        let origin = reply::header_str(&req, header::ORIGIN).map(str::to_string);
        let host = reply::header_str(&req, header::HOST).map(str::to_string);
        let cap = if path == MAPPINGS {
            MAX_MAPPINGS_FORM
        } else {
            MAX_FORM
        };
        let body = match read_body(req, cap, BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let form = match Form::parse(&body) {
            Ok(f) => f,
            Err(e) => return reply::text(StatusCode::BAD_REQUEST, &e),
        };
        // A form from another site is refused whoever the caller is (a proxy may add the
        // bearer token to every request it passes).
        if let (Who::Bearer, Some(o)) = (&who, origin.as_deref()) {
            if let Err(e) = csrf::check_origin(o, host.as_deref()) {
                self.recent.push("dashboard form refused", e.clone(), 1);
                return reply::text(StatusCode::FORBIDDEN, &e);
            }
        }
        if let Who::Session(s) = &who {
            if let Err(e) = csrf::check(
                &s.csrf,
                form.get("csrf"),
                origin.as_deref(),
                host.as_deref(),
            ) {
                tracing::warn!("dashboard: {e}");
                self.recent.push("dashboard form refused", e.clone(), 1);
                return reply::text(StatusCode::FORBIDDEN, &e);
            }
        }
        let outcome = match path {
            LOGOUT => {
                let mut r = reply::see_other("/ui/login");
                if let Who::Session(s) = &who {
                    self.sessions.end(&s.key);
                    self.clear_cookie(&mut r);
                }
                return r;
            }
            DISCONNECT => self.disconnect(form.get("session")),
            REVOKE => self.revoke(form.get("token")).await,
            _ => self.set_mappings(form.get("mappings")).await,
        };
        match (outcome, &who) {
            (Ok(msg), Who::Session(s)) => {
                self.sessions.set_flash(&s.key, msg);
                reply::see_other("/ui")
            }
            (Err((_, msg)), Who::Session(s)) => {
                self.sessions.set_flash(&s.key, format!("Error: {msg}"));
                reply::see_other("/ui")
            }
            (Ok(_), Who::Bearer) => reply::see_other("/ui"),
            (Err((status, msg)), Who::Bearer) => reply::text(status, &msg),
        }
    }

    /// Ends one session (its client may run others; they stay).
    fn disconnect(&self, id: Option<&str>) -> Outcome {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let id: u64 = id
            .unwrap_or("")
            .parse()
            .map_err(|_| bad("the form names no session number".into()))?;
        let found = self.hub.sessions().into_iter().find(|s| s.info.id == id);
        let Some(s) = found.filter(|s| !s.closed.is_cancelled()) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("session {id} is not connected (it may have ended already)"),
            ));
        };
        s.closed.cancel();
        if let Some(own) = crate::metrics::of(&self.metrics) {
            own.sessions_cut_total
                .with_label_values(&["disconnected"])
                .inc();
        }
        tracing::warn!(client = %s.info.client_id, session = id, "session cut: disconnected from the dashboard");
        Ok(format!(
            "Disconnected session {id} of client {} ({} from {}).",
            s.info.client_id, s.info.transport, s.info.remote
        ))
    }

    /// Revokes an active stored token, then cuts the live sessions it authenticated (token
    /// or its SSH keys, as the sweep does; a client of that name that authenticated another
    /// way keeps its sessions).
    async fn revoke(&self, name: Option<&str>) -> Outcome {
        let name = name.unwrap_or("").to_string();
        if name.is_empty() {
            return Err((StatusCode::BAD_REQUEST, "the form names no token".into()));
        }
        let store = self.store.clone();
        let n = name.clone();
        let done = tokio::task::spawn_blocking(move || {
            let now = tunneld_state::now();
            let active = store
                .tokens()?
                .into_iter()
                .any(|t| t.name == n && t.refusal(now).is_none());
            if !active {
                return Ok(false);
            }
            store.revoke_token(&n, now)
        })
        .await
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("revoking failed: {e}"),
            )
        })?
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("revoking failed: {e}"),
            )
        })?;
        if !done {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "no active stored token `{name}` (unknown, revoked already, expired or used)"
                ),
            ));
        }
        let mut cut = 0;
        for s in self.hub.sessions() {
            let by_token = s.info.auth_method == "token"
                || s.info.auth_method == tunneld_state::ssh_keys::METHOD;
            if s.info.client_id == name && by_token {
                s.closed.cancel();
                cut += 1;
            }
        }
        if let (Some(own), true) = (crate::metrics::of(&self.metrics), cut > 0) {
            own.sessions_cut_total
                .with_label_values(&["revoked"])
                .inc_by(cut as u64);
        }
        tracing::warn!(token = %name, sessions = cut, "token revoked from the dashboard");
        Ok(format!("Revoked token {name}; {cut} live session(s) cut."))
    }

    /// Replaces the admin mappings with the JSON list from the form.
    async fn set_mappings(&self, json: Option<&str>) -> Outcome {
        let text = json.unwrap_or("").trim();
        let desired: Vec<Mapping> = serde_json::from_str(if text.is_empty() { "[]" } else { text })
            .map_err(|e| {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid mapping list: {e}"),
                )
            })?;
        match self
            .mappings
            .apply_and_store(&self.store, &self.writes, desired)
            .await
        {
            Ok(list) => Ok(format!("Mappings applied: {} port mapping(s).", list.len())),
            Err(e) => Err((
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                e.message,
            )),
        }
    }
}
