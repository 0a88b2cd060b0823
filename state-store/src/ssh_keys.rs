//! The state cache as core's [`SshKeyStore`]: the SSH keys of `tunneld token add --ssh-key`
//! and of provisioned tunnels, answered from the in-memory view kept current (a key added
//! or removed by the CLI, a token revoked, a tunnel expired a moment ago is seen at once).
//!
//! - A client's key authenticates as that client: the identity of its stored token, refused
//!   with the token's own refusal once it expired or was revoked. Keys are stored only for
//!   stored tokens; config-file clients list theirs in `auth.tokens.<client>.ssh_keys`.
//! - A tunnel's key authenticates as the tunnel's owner, limited to that tunnel
//!   ([`KeyGrant::Tunnel`]); refused once the tunnel is gone or expired, or its owner's
//!   token is refused. An owner that is a config-file client (no stored token) gets an
//!   identity without quotas: the key binds only the tunnel's leased routes anyway.

use crate::cache::{KeyView, StateCache};
use crate::records::TokenRecord;
use async_trait::async_trait;
use tunneld_core::auth::{Identity, TokenStoreError};
use tunneld_core::ssh_keys::{KeyGrant, SshKeyStore, StoredKey};

/// The identity method of sessions authenticated by an SSH key.
pub const METHOD: &str = "ssh-key";

fn identity_of(t: &TokenRecord) -> Identity {
    Identity {
        client_id: t.name.clone(),
        method: METHOD,
        max_ports: t.max_ports,
        max_names: t.max_names,
        transports: t.transports.clone(),
    }
}

/// What a stored key grants at `now`.
pub fn grant(view: &KeyView, now: u64) -> StoredKey {
    let k = &view.key;
    if let Some(why) = view.token.as_ref().and_then(|t| t.refusal(now)) {
        return StoredKey::Refused(why);
    }
    let Some(name) = &k.tunnel else {
        return match &view.token {
            Some(t) => StoredKey::Usable(KeyGrant::Client(identity_of(t))),
            None => StoredKey::Refused(format!(
                "SSH key {} belongs to `{}`, which is not a stored token",
                k.fingerprint, k.client
            )),
        };
    };
    let Some(tunnel) = view.tunnel.as_ref().filter(|t| t.owner == k.client) else {
        return StoredKey::Refused(format!(
            "SSH key {}: tunnel `{name}` no longer exists",
            k.fingerprint
        ));
    };
    if let Some(at) = tunnel.expires_at.filter(|at| *at <= now) {
        return StoredKey::Refused(format!(
            "SSH key {}: tunnel `{name}` expired at {}",
            k.fingerprint,
            crate::rfc3339(at)
        ));
    }
    let identity = match &view.token {
        Some(t) => identity_of(t),
        None => Identity::new(k.client.clone(), METHOD, None),
    };
    StoredKey::Usable(KeyGrant::Tunnel {
        identity,
        tunnel: name.clone(),
    })
}

#[async_trait]
impl SshKeyStore for StateCache {
    async fn lookup_ssh_key(
        &self,
        fingerprint: &str,
    ) -> Result<Option<StoredKey>, TokenStoreError> {
        let view = self
            .ssh_key(fingerprint)
            .await
            .map_err(|e| TokenStoreError(Box::new(e)))?;
        Ok(view.map(|v| grant(&v, crate::now())))
    }
}
