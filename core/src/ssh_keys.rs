//! SSH public keys as credentials (the `ssh` transport): the OpenSSH `authorized_keys` line
//! form, fingerprints, and where keys come from: the config file's tokens
//! (`auth.tokens.<client>.ssh_keys`) and a [`SshKeyStore`] (keys added with `tunneld token
//! add --ssh-key` or uploaded for a provisioned tunnel).
//!
//! A key is known by its SHA-256 fingerprint in OpenSSH's form, `SHA256:` and the unpadded
//! base64 of the digest of the key blob, the same text `ssh-keygen -lf` prints.

use crate::auth::{Identity, TokenStoreError};
use data_encoding::{BASE64, BASE64_NOPAD};

/// Key algorithms accepted in a public key line (what OpenSSH's `ssh-keygen` makes today;
/// DSA is refused, as OpenSSH itself does).
pub const ALGORITHMS: [&str; 6] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
];

/// The longest public key line accepted (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_LINE: usize = 8192;

/// A parsed public key line: `<algorithm> <base64 blob> [comment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyLine {
    pub algorithm: String,
    /// The key blob, base64 as in the line.
    pub blob: String,
    pub comment: Option<String>,
    /// `SHA256:<base64>`.
    pub fingerprint: String,
}

impl PublicKeyLine {
    /// The line without its comment, as stored (`<algorithm> <blob>`).
    pub fn canonical(&self) -> String {
        format!("{} {}", self.algorithm, self.blob)
    }
}

/// Why a public key line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLineError {
    #[error("the public key line is empty")]
    Empty,
    #[error("the public key line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("key algorithm `{0}` is not accepted (use one of: {list})", list = ALGORITHMS.join(", "))]
    Algorithm(String),
    #[error("the public key line has no key after `{0}`")]
    NoBlob(String),
    #[error("the key is not valid base64")]
    Base64,
    #[error("the key blob says `{inner}` but the line says `{outer}`")]
    Mismatch { outer: String, inner: String },
    #[error("options before the key (`{0}`) are not accepted: give the bare key")]
    Options(String),
}

/// The SHA-256 fingerprint of a key blob, in OpenSSH's form.
pub fn fingerprint_of_blob(blob: &[u8]) -> String {
    format!("SHA256:{}", BASE64_NOPAD.encode(&crate::auth::sha256(blob)))
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... user@host`).
pub fn parse_line(line: &str) -> Result<PublicKeyLine, KeyLineError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(KeyLineError::Empty);
    }
    if line.len() > MAX_LINE {
        return Err(KeyLineError::TooLong);
    }
    let mut parts = line.splitn(3, char::is_whitespace);
    let algorithm = parts.next().unwrap_or_default().to_string();
    if !ALGORITHMS.contains(&algorithm.as_str()) {
        if algorithm.contains('=') || algorithm.contains(',') {
            return Err(KeyLineError::Options(algorithm));
        }
        return Err(KeyLineError::Algorithm(algorithm));
    }
    let blob = parts.next().map(str::trim).unwrap_or_default();
    if blob.is_empty() {
        return Err(KeyLineError::NoBlob(algorithm));
    }
    let bytes = BASE64
        .decode(blob.as_bytes())
        .map_err(|_| KeyLineError::Base64)?;
    // The blob starts with its own algorithm name as an SSH string (u32 length, bytes).
    let inner = bytes
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .ok_or(KeyLineError::Base64)?;
    if inner != algorithm {
        return Err(KeyLineError::Mismatch {
            outer: algorithm,
            inner,
        });
    }
    let comment = parts
        .next()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Ok(PublicKeyLine {
        fingerprint: fingerprint_of_blob(&bytes),
        algorithm,
        blob: blob.to_string(),
        comment,
    })
}

/// What a known key lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyGrant {
    /// A client's key (config `ssh_keys`, `tunneld token add --ssh-key`): sessions get the
    /// client's identity and claim like its token would.
    Client(Identity),
    /// A key uploaded for one provisioned tunnel: sessions of the tunnel's owner that may bind
    /// only that tunnel's leased ports and names.
    Tunnel { identity: Identity, tunnel: String },
}

impl KeyGrant {
    pub fn identity(&self) -> &Identity {
        match self {
            KeyGrant::Client(i) | KeyGrant::Tunnel { identity: i, .. } => i,
        }
    }
}

/// A key a [`SshKeyStore`] knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKey {
    Usable(KeyGrant),
    /// Known but not usable (its token expired or was revoked, its tunnel expired): why.
    Refused(String),
}

/// Keys kept outside the config file, as the authenticator sees them.
#[async_trait::async_trait]
pub trait SshKeyStore: Send + Sync {
    /// The key whose fingerprint (`SHA256:...`) is `fingerprint`; `None` when unknown.
    async fn lookup_ssh_key(&self, fingerprint: &str)
        -> Result<Option<StoredKey>, TokenStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ssh-keygen -t ed25519`; its `ssh-keygen -lf` fingerprint.
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHHH+wNLCAXk1s6iuKpQxGZ9iP620KHiGDLb56UsXcOs user@host";

    #[test]
    fn parses_and_fingerprints() {
        let k = parse_line(ED).expect("parses");
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment.as_deref(), Some("user@host"));
        assert_eq!(
            k.fingerprint,
            "SHA256:Vt7PQbMjh3q4NblKEjq+uSKELTttR1rDkbZVuA/YrC0"
        );
        assert_eq!(
            parse_line(&k.canonical()).expect("again").fingerprint,
            k.fingerprint
        );
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(parse_line("  "), Err(KeyLineError::Empty));
        assert!(matches!(
            parse_line("ssh-dss AAAA"),
            Err(KeyLineError::Algorithm(_))
        ));
        assert!(matches!(
            parse_line("command=\"x\" ssh-ed25519 AAAA"),
            Err(KeyLineError::Options(_))
        ));
        assert_eq!(
            parse_line("ssh-ed25519"),
            Err(KeyLineError::NoBlob("ssh-ed25519".into()))
        );
        assert_eq!(parse_line("ssh-ed25519 !!!"), Err(KeyLineError::Base64));
        // An ed25519 blob labelled as RSA.
        let blob = ED.split(' ').nth(1).expect("blob");
        assert!(matches!(
            parse_line(&format!("ssh-rsa {blob}")),
            Err(KeyLineError::Mismatch { .. })
        ));
    }
}
