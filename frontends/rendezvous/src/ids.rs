//! Rendezvous ids and their TOTP secrets: the entry ([`IdEntry`]), what makes an id valid,
//! new ids and secrets, the `otpauth://` URI, the older tunneld's `rendezvous.json`
//! ([`read`]), and [`IdSource`], where a running tunneld finds them (the daemon keeps them in
//! its state store, so new ids work without a restart).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tunneld_core::totp;

/// The legacy file's name inside the state directory.
pub const FILE: &str = "rendezvous.json";

/// One rendezvous id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdEntry {
    /// Base32 TOTP secret.
    pub secret: String,
    /// TOTP step in seconds.
    pub step: u64,
    /// The tunnel client (token or certificate id) allowed to park for this id without a
    /// code. Without it only TOTP codes park.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdFile {
    #[serde(default)]
    pub ids: BTreeMap<String, IdEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a rendezvous id file: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub use tunneld_core::parking::valid_id;

/// A random UUID (version 4), the id form node-rendezvous used.
pub fn random_uuid() -> String {
    let mut b = tunneld_core::auth::random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = tunneld_core::auth::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The `otpauth://` URI authenticator apps and TOTP libraries read.
pub fn otpauth_uri(id: &str, e: &IdEntry) -> String {
    format!(
        "otpauth://totp/tunneld:{id}?secret={}&issuer=tunneld&algorithm=SHA1&digits={}&period={}",
        e.secret,
        totp::DIGITS,
        e.step
    )
}

/// Maps an I/O error on `path` to [`StoreError::Io`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Reads the file; a missing file is an empty set.
pub fn read(path: &Path) -> Result<IdFile, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IdFile::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Secrets imported with `--secret` must carry at least this many bytes (80 bits).
pub const MIN_IMPORTED_SECRET: usize = 10;

/// Checks a base32 secret brought from elsewhere (an original node-rendezvous server) and
/// returns it in tunneld's canonical form.
pub fn imported_secret(secret: &str) -> Result<String, StoreError> {
    let key = totp::decode_secret(secret)
        .map_err(|e| StoreError::Invalid(format!("the secret is not base32: {e}")))?;
    if key.len() < MIN_IMPORTED_SECRET {
        return Err(StoreError::Invalid(format!(
            "the secret carries {} bytes; at least {MIN_IMPORTED_SECRET} (16 base32 characters) are needed",
            key.len()
        )));
    }
    Ok(totp::encode_secret(&key))
}

/// Why an id could not be looked up: the store behind an [`IdSource`] failed (its own error,
/// shown as it is).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LookupError(pub Box<dyn std::error::Error + Send + Sync>);

/// Where a running tunneld finds rendezvous ids, and records the TOTP codes they used.
#[async_trait]
pub trait IdSource: Send + Sync {
    /// One id's entry, telling a store failure (`Err`) apart from a missing id
    /// (`Ok(None)`).
    async fn lookup_strict(&self, id: &str) -> Result<Option<IdEntry>, LookupError>;

    /// Records a code's first use, so a restart does not make it usable again from another
    /// address.
    async fn remember_code(&self, id: &str, counter: u64, addr: IpAddr);

    /// Codes used recently enough to still be valid: (id, counter, first address).
    fn used_codes(&self) -> Vec<(String, u64, IpAddr)>;
}
