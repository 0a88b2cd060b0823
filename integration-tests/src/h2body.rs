//! Reading an HTTP/2 body the way a well-behaved client does: every chunk's window given
//! back as it is read, each chunk awaited at most `WAIT`.

use crate::WAIT;
use anyhow::{Context, Result};

/// The rest of `body`, each chunk's bytes released to the peer's window once read.
pub async fn read_all(body: &mut h2::RecvStream) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.data())
        .await
        .with_context(|| {
            format!(
                "no more of the body within {WAIT:?} (after {} bytes)",
                got.len()
            )
        })?
    {
        let chunk = chunk.context("the body")?;
        body.flow_control().release_capacity(chunk.len())?;
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}
