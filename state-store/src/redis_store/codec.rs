//! Key names, and Redis replies and JSON records to Rust values (never a panic on what
//! Redis holds: anything malformed is a [`StateError::Db`] naming the key).

use crate::StateError;
use redis::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The store's keys under `<prefix>:state:`.
pub(super) struct Keys {
    pub tokens: String,
    pub token_digests: String,
    pub tunnels: String,
    pub tunnel_ids: String,
    pub ssh_keys: String,
    pub rendezvous: String,
    pub certificate_serials: String,
    /// `certificates:`, followed by a tunnel's name.
    pub certificates: String,
    pub used_codes: String,
    pub used_codes_at: String,
    pub admin_mappings: String,
    pub versions: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        let k = |name: &str| format!("{prefix}:state:{name}");
        Self {
            tokens: k("tokens"),
            token_digests: k("token_digests"),
            tunnels: k("tunnels"),
            tunnel_ids: k("tunnel_ids"),
            ssh_keys: k("ssh_keys"),
            rendezvous: k("rendezvous"),
            certificate_serials: k("certificate_serials"),
            certificates: k("certificates:"),
            used_codes: k("used_codes"),
            used_codes_at: k("used_codes_at"),
            admin_mappings: k("admin_mappings"),
            versions: k("versions"),
        }
    }

    /// The list of one tunnel's certificates.
    pub(super) fn certificates_of(&self, tunnel: &str) -> String {
        format!("{}{tunnel}", self.certificates)
    }
}

/// The `versions` fields (the [`crate::Versions`] members).
pub(super) mod counter {
    pub const TOKENS: &str = "tokens";
    pub const RENDEZVOUS: &str = "rendezvous";
    pub const TUNNELS: &str = "tunnels";
    pub const SSH_KEYS: &str = "ssh_keys";
}

/// A used code as stored (the `used_codes` hash's values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct UsedCode {
    pub id: String,
    pub counter: u64,
    pub addr: String,
    pub at: u64,
}

impl UsedCode {
    /// Its field in `used_codes` and member of `used_codes_at`: one per (id, counter).
    pub(super) fn field(id: &str, counter: u64) -> String {
        format!("{counter}:{id}")
    }
}

pub(super) fn encode<T: Serialize>(v: &T) -> Result<String, StateError> {
    serde_json::to_string(v).map_err(|e| StateError::Db(format!("cannot encode a record: {e}")))
}

/// A record read from `key` (field `field`).
pub(super) fn decode<T: DeserializeOwned>(
    key: &str,
    field: &str,
    json: &str,
) -> Result<T, StateError> {
    serde_json::from_str(json).map_err(|e| {
        StateError::Db(format!(
            "redis key `{key}` field `{field}`: malformed record: {e}"
        ))
    })
}

/// Every record of a hash's (field, value) pairs.
pub(super) fn decode_all<T: DeserializeOwned>(
    key: &str,
    pairs: &[(String, String)],
) -> Result<Vec<T>, StateError> {
    pairs.iter().map(|(f, v)| decode(key, f, v)).collect()
}

fn malformed(what: &str, v: &Value) -> StateError {
    StateError::Db(format!("redis {what}: unexpected reply {v:?}"))
}

/// A reply's string, or `None` for nil.
pub(super) fn text(v: Value, what: &str) -> Result<Option<String>, StateError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| StateError::Db(format!("redis {what}: not UTF-8"))),
        Value::SimpleString(s) => Ok(Some(s)),
        Value::Int(i) => Ok(Some(i.to_string())),
        v => Err(malformed(what, &v)),
    }
}

/// A reply's elements (nil: none).
pub(super) fn items(v: Value, what: &str) -> Result<Vec<Value>, StateError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(a) | Value::Set(a) => Ok(a),
        v => Err(malformed(what, &v)),
    }
}

/// A flat (field, value, ...) reply as pairs; nil values are left out.
pub(super) fn pairs(v: Value, what: &str) -> Result<Vec<(String, String)>, StateError> {
    let flat: Vec<Value> = match v {
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        v => items(v, what)?,
    };
    if !flat.len().is_multiple_of(2) {
        return Err(StateError::Db(format!(
            "redis {what}: odd number of elements"
        )));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let Some(k) = text(k, what)? else {
            return Err(StateError::Db(format!("redis {what}: nil field")));
        };
        if let Some(v) = text(v, what)? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// A change counter as stored (`None`: never moved).
pub(super) fn count(key: &str, field: &str, v: Option<&str>) -> Result<u64, StateError> {
    match v {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| {
            StateError::Db(format!(
                "redis key `{key}` field `{field}`: `{s}` is not a change counter"
            ))
        }),
    }
}
