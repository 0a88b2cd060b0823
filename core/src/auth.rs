//! Authentication of tunnelc sessions: bearer tokens and client certificates.
//!
//! Tokens are kept only as SHA-256 digests; a presented token is hashed and compared against
//! every configured digest in constant time, so neither timing nor early exit reveals which
//! byte or which entry differed.

use std::fmt;

/// A secret from configuration whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Minimum length of a plain-text token.
pub const MIN_TOKEN_LEN: usize = 16;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parameter of an `Authorization` / `Proxy-Authorization` value in `scheme`
/// (compared case-insensitively): the token of `Bearer <token>`, the base64 of `Basic ...`.
pub fn scheme_param<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.trim().split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Why presented credentials or a configured token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("Basic credentials are not base64")]
    BasicNotBase64,
    #[error("Basic credentials are not UTF-8")]
    BasicNotUtf8,
    #[error("Basic credentials have no `:`")]
    BasicNoColon,
    #[error("a `sha256:` token must be followed by exactly 64 hex digits")]
    BadSha256,
    #[error("a token must be at least {MIN_TOKEN_LEN} characters long (or given as sha256:<hex>)")]
    ShortToken,
}

/// Decodes the parameter of `Basic` credentials into (user, password).
pub fn basic_credentials(param: &str) -> Result<(String, String), CredentialsError> {
    let raw = data_encoding::BASE64
        .decode(param.trim().as_bytes())
        .map_err(|_| CredentialsError::BasicNotBase64)?;
    let text = String::from_utf8(raw).map_err(|_| CredentialsError::BasicNotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(CredentialsError::BasicNoColon)?;
    Ok((user.to_string(), password.to_string()))
}

/// Whether `presented` hashes to `digest` (constant time).
pub fn matches_digest(presented: &str, digest: &[u8; 32]) -> bool {
    ct_eq(&sha256(presented.as_bytes()), digest)
}

/// Reads a token as written in configuration: `sha256:<64 hex digits>` or the plain token.
pub fn token_digest(spec: &str) -> Result<[u8; 32], CredentialsError> {
    if let Some(h) = spec.strip_prefix("sha256:") {
        let bytes = unhex(h)
            .filter(|b| b.len() == 32)
            .ok_or(CredentialsError::BadSha256)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(out)
    } else if spec.len() < MIN_TOKEN_LEN {
        Err(CredentialsError::ShortToken)
    } else {
        Ok(sha256(spec.as_bytes()))
    }
}

/// One configured token.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// The client id this token authenticates as.
    pub client_id: String,
    pub digest: [u8; 32],
    pub max_ports: Option<u32>,
    /// Fingerprints (`SHA256:...`) of the SSH keys that authenticate as this client too.
    pub ssh_keys: Vec<String>,
}

/// The config file's tokens, shared by every clone of an [`Authenticator`] and replaced
/// whole by a reload ([`ConfiguredTokens::replace`]): each check reads the current list.
#[derive(Clone, Default)]
pub struct ConfiguredTokens(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Vec<TokenEntry>>>>);

impl ConfiguredTokens {
    /// The current list.
    pub fn get(&self) -> std::sync::Arc<Vec<TokenEntry>> {
        crate::sync::read(&self.0).clone()
    }

    /// Replaces the list for every holder at once.
    pub fn replace(&self, tokens: Vec<TokenEntry>) {
        *crate::sync::write(&self.0) = std::sync::Arc::new(tokens);
    }
}

impl From<Vec<TokenEntry>> for ConfiguredTokens {
    fn from(tokens: Vec<TokenEntry>) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(tokens),
        )))
    }
}

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    /// `token` or `certificate`.
    pub method: &'static str,
    pub max_ports: Option<u32>,
    /// Names (subdomains) the client may hold at once.
    pub max_names: Option<u32>,
    /// Transports (component names) the client may use; any when `None`.
    pub transports: Option<Vec<String>>,
}

impl Identity {
    /// An identity with no quotas beyond `max_ports`.
    pub fn new(client_id: impl Into<String>, method: &'static str, max_ports: Option<u32>) -> Self {
        Self {
            client_id: client_id.into(),
            method,
            max_ports,
            max_names: None,
            transports: None,
        }
    }
}

/// A token a [`TokenStore`] knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredToken {
    /// Usable now: the identity its sessions get.
    Usable(Identity),
    /// Known but not usable (expired, revoked): why, as the refusal tells it.
    Refused(String),
}

/// Why a [`TokenStore`] could not answer (its own error, shown as it is).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TokenStoreError(pub Box<dyn std::error::Error + Send + Sync>);

/// Tokens kept outside the config file (`tunneld token add`), as the authenticator sees
/// them.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// The token whose SHA-256 (hex) is `digest`; `None` when there is none.
    async fn lookup_token(&self, digest: &str) -> Result<Option<StoredToken>, TokenStoreError>;
}

/// The stored tokens the authenticator checks after the configured ones.
#[derive(Clone)]
pub struct StoredTokens(pub std::sync::Arc<dyn TokenStore>);

impl fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredTokens")
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials: send a token or a client certificate")]
    Missing,
    #[error("invalid token")]
    BadToken,
    #[error("unknown SSH key")]
    UnknownKey,
    #[error("client certificate has no usable common name")]
    BadCertificate,
    /// A known token that may not be used (expired, revoked).
    #[error("{0}")]
    Refused(String),
    #[error("tokens cannot be checked now: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::BadToken => "bad_token",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadCertificate => "bad_certificate",
            AuthError::Refused(_) => "token_refused",
            AuthError::Unavailable(_) => "store_error",
        }
    }

    /// Whether this failure could be someone guessing credentials (counted against the
    /// address by the failure throttle); missing credentials, a refused known token or a
    /// store error are not.
    pub fn is_guess(&self) -> bool {
        // Sending nothing is how many clients start (a proxy's first 407); it guesses
        // nothing.
        matches!(self, AuthError::BadToken | AuthError::BadCertificate)
    }

    /// Whether retrying with the same credentials cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, AuthError::Unavailable(_))
    }
}

/// Checks credentials against the configured tokens and certificate policy.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// The config file's tokens (replaceable while tunneld runs).
    pub tokens: ConfiguredTokens,
    /// Quota for clients identified by certificate.
    pub certificate_max_ports: Option<u32>,
    /// Tokens made with `tunneld token add`, checked after the configured ones.
    pub stored: Option<StoredTokens>,
    /// SSH keys kept outside the config file, checked after the configured ones.
    pub stored_keys: Option<std::sync::Arc<dyn crate::ssh_keys::SshKeyStore>>,
}

impl Authenticator {
    /// `token` comes from the hello; `cert_cn` from a client certificate that rustls already
    /// verified against the configured client CA. A token, when sent, decides. Only the
    /// config file's tokens are known here; [`Authenticator::authenticate_async`] also
    /// knows the state store's.
    pub fn authenticate_configured(
        &self,
        token: Option<&str>,
        cert_cn: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(token) = token {
            let presented = sha256(token.as_bytes());
            return self.configured(&presented).ok_or(AuthError::BadToken);
        }
        match cert_cn {
            Some(cn) if !cn.is_empty() => {
                Ok(Identity::new(cn, "certificate", self.certificate_max_ports))
            }
            Some(_) => Err(AuthError::BadCertificate),
            None => Err(AuthError::Missing),
        }
    }
}

impl Authenticator {
    /// A token of the config file (in memory, constant time over all of them).
    fn configured(&self, presented: &[u8; 32]) -> Option<Identity> {
        let tokens = self.tokens.get();
        let mut found: Option<&TokenEntry> = None;
        for entry in tokens.iter() {
            if ct_eq(presented, &entry.digest) && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|e| Identity::new(e.client_id.clone(), "token", e.max_ports))
    }

    /// [`Authenticator::authenticate_configured`], with the stored tokens too
    /// ([`TokenStore`]; tunneld's is the state cache, an in-memory view).
    pub async fn authenticate_async(
        &self,
        token: Option<&str>,
        cert_cn: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(token) = token else {
            return self.authenticate_configured(None, cert_cn);
        };
        let presented = sha256(token.as_bytes());
        if let Some(id) = self.configured(&presented) {
            return Ok(id);
        }
        let Some(StoredTokens(store)) = &self.stored else {
            return Err(AuthError::BadToken);
        };
        match store
            .lookup_token(&hex(&presented))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
        {
            None => Err(AuthError::BadToken),
            Some(StoredToken::Refused(why)) => Err(AuthError::Refused(why)),
            Some(StoredToken::Usable(identity)) => Ok(identity),
        }
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.get().len())
            .field("certificate_max_ports", &self.certificate_max_ports)
            .field("stored", &self.stored.is_some())
            .field("stored_keys", &self.stored_keys.is_some())
            .finish()
    }
}

impl Authenticator {
    /// The grant of the SSH key whose fingerprint is `fingerprint` (a key the transport has
    /// seen signed for): a configured token's key first, then the stored keys.
    pub async fn authenticate_ssh_key(
        &self,
        fingerprint: &str,
    ) -> Result<crate::ssh_keys::KeyGrant, AuthError> {
        use crate::ssh_keys::{KeyGrant, StoredKey};
        if let Some(e) = self
            .tokens
            .get()
            .iter()
            .find(|e| e.ssh_keys.iter().any(|k| k == fingerprint))
        {
            return Ok(KeyGrant::Client(Identity::new(
                e.client_id.clone(),
                "ssh-key",
                e.max_ports,
            )));
        }
        let Some(store) = &self.stored_keys else {
            return Err(AuthError::UnknownKey);
        };
        match store
            .lookup_ssh_key(fingerprint)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
        {
            None => Err(AuthError::UnknownKey),
            Some(StoredKey::Refused(why)) => Err(AuthError::Refused(why)),
            Some(StoredKey::Usable(grant)) => Ok(grant),
        }
    }
}

/// Random bytes from the operating system (for jitter and generated names).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    if let Err(e) = ring::rand::SystemRandom::new().fill(&mut out) {
        // Tokens, TOTP secrets, serials and the Digest key come from here: with no working
        // OS generator nothing safe can be made, so fail closed instead of guessing.
        tracing::error!(error = ?e, "the operating system's random generator failed; stopping");
        eprintln!("tunneld: the operating system's random generator failed ({e:?}); stopping");
        std::process::abort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator {
            tokens: vec![
                TokenEntry {
                    client_id: "alice".into(),
                    digest: token_digest("alice-secret-token-0001").expect("digest"),
                    max_ports: Some(2),
                    ssh_keys: Vec::new(),
                },
                TokenEntry {
                    client_id: "bob".into(),
                    digest: token_digest(&format!(
                        "sha256:{}",
                        hex(&sha256(b"bob-secret-token-00002"))
                    ))
                    .expect("digest"),
                    max_ports: None,
                    ssh_keys: Vec::new(),
                },
            ]
            .into(),
            certificate_max_ports: Some(5),
            stored: None,
            stored_keys: None,
        }
    }

    #[test]
    fn tokens_plain_and_hashed() {
        let a = auth();
        assert_eq!(
            a.authenticate_configured(Some("alice-secret-token-0001"), None)
                .expect("alice")
                .client_id,
            "alice"
        );
        assert_eq!(
            a.authenticate_configured(Some("bob-secret-token-00002"), None)
                .expect("bob")
                .client_id,
            "bob"
        );
        assert_eq!(
            a.authenticate_configured(Some("alice-secret-token-0002"), None),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            a.authenticate_configured(None, None),
            Err(AuthError::Missing)
        );
        let c = a
            .authenticate_configured(None, Some("carol"))
            .expect("cert");
        assert_eq!(
            (c.client_id.as_str(), c.method, c.max_ports),
            ("carol", "certificate", Some(5))
        );
    }

    #[test]
    fn token_specs_are_validated() {
        assert!(token_digest("short")
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        assert_eq!(
            token_digest("sha256:abcd"),
            Err(CredentialsError::BadSha256)
        );
        assert!(token_digest(&format!("sha256:{}", "zz".repeat(32))).is_err());
        assert_eq!(format!("{:?}", Secret("x".into())), "Secret(****)");
    }
}
