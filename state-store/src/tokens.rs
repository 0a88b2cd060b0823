//! The state cache as core's [`TokenStore`]: the authenticator's stored tokens, from the
//! in-memory view kept current (a token revoked a moment ago is refused), never a query on
//! the runtime.

use crate::cache::StateCache;
use async_trait::async_trait;
use tunneld_core::auth::{Identity, StoredToken, TokenStore, TokenStoreError};

#[async_trait]
impl TokenStore for StateCache {
    async fn lookup_token(&self, digest: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        let Some(t) = self
            .token_by_digest(digest)
            .await
            .map_err(|e| TokenStoreError(Box::new(e)))?
        else {
            return Ok(None);
        };
        if let Some(why) = t.refusal(crate::now()) {
            return Ok(Some(StoredToken::Refused(why)));
        }
        Ok(Some(StoredToken::Usable(Identity {
            client_id: t.name,
            method: "token",
            max_ports: t.max_ports,
            max_names: t.max_names,
            transports: t.transports,
        })))
    }
}
