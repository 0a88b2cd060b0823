//! SSH keys bound to a provisioned tunnel through the API (native `POST
//! /v1/tunnels/<name>/ssh-key`, pipe2me's `POST /tunnels/<id>/id_rsa.pub`): a session of
//! the `ssh` transport with such a key is the tunnel's owner, limited to that tunnel's
//! routes. A key registered anywhere else (another tunnel, a client, the config file) is
//! refused; uploading a key already bound to the same tunnel changes nothing.

use super::provision::{internal, Refusal};
use super::Control;
use http::StatusCode;
use tunneld_core::ssh_keys::parse_line;
use tunneld_state::{self as state, SshKeyRecord, TunnelRecord};

/// Keys one tunnel may have at once (the native route adds; pipe2me's replaces).
pub const MAX_KEYS_PER_TUNNEL: usize = 8;

/// Whether a new key joins the tunnel's keys or replaces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Add,
    /// pipe2me: a tunnel has one key, the last uploaded.
    Replace,
}

impl Control {
    /// Binds the public key `line` to tunnel `t`; returns its fingerprint.
    pub async fn bind_key(
        &self,
        t: &TunnelRecord,
        line: &str,
        how: Upload,
    ) -> Result<String, Refusal> {
        let k = parse_line(line).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let taken = || {
            (
                StatusCode::CONFLICT,
                format!(
                    "SSH key {} is already registered elsewhere: make a new key for this tunnel",
                    k.fingerprint
                ),
            )
        };
        if self
            .auth
            .tokens
            .get()
            .iter()
            .any(|e| e.ssh_keys.contains(&k.fingerprint))
        {
            return Err(taken());
        }
        let _one = self.changes.lock().await;
        if let Some(held) = self.store.ssh_key(&k.fingerprint).map_err(internal)? {
            if held.tunnel.as_deref() == Some(t.name.as_str()) && held.client == t.owner {
                return Ok(k.fingerprint);
            }
            return Err(taken());
        }
        let mine: Vec<SshKeyRecord> = self
            .store
            .ssh_keys(Some(&t.owner))
            .map_err(internal)?
            .into_iter()
            .filter(|h| h.tunnel.as_deref() == Some(t.name.as_str()))
            .collect();
        match how {
            Upload::Replace => {
                for old in &mine {
                    self.store
                        .remove_ssh_key(&old.fingerprint)
                        .map_err(internal)?;
                }
            }
            Upload::Add if mine.len() >= MAX_KEYS_PER_TUNNEL => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "tunnel `{}` has {MAX_KEYS_PER_TUNNEL} SSH keys already (`tunneld token ssh-key remove` frees one)",
                        t.name
                    ),
                ))
            }
            Upload::Add => {}
        }
        self.store
            .add_ssh_key(&SshKeyRecord {
                fingerprint: k.fingerprint.clone(),
                key: k.canonical(),
                comment: k.comment.clone(),
                client: t.owner.clone(),
                tunnel: Some(t.name.clone()),
                created_at: state::now(),
            })
            .map_err(|e| match e {
                state::StateError::Exists(_) => taken(),
                e => internal(e),
            })?;
        tracing::info!(tunnel = %t.name, owner = %t.owner, fingerprint = %k.fingerprint, "SSH key bound to a tunnel");
        Ok(k.fingerprint)
    }
}
