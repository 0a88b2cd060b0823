//! The cluster's shared state in Redis: node entries and routes, each a JSON value under its
//! own key with a TTL that its node renews, and one pub/sub channel that says "something
//! changed". Every call has a deadline; a lost connection is dialled again at the next call.
//!
//! | key | value |
//! |---|---|
//! | `<prefix>:node:<node>` | [`NodeEntry`] |
//! | `<prefix>:route:<frontend>:port:<n>` or `...:name:<name>` | [`RouteEntry`] |
//! | channel `<prefix>:events` | `routes` (read the table again) |

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Script};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tunneld_core::proto::TunnelKind;
use tunneld_core::proxy_protocol;

/// Deadline of one Redis command (and of connecting).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys read per SCAN step and per MGET.
const BATCH: usize = 500;

/// One route of the cluster: who holds a port or name on a frontend, through which node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteEntry {
    pub frontend: String,
    /// `port:20080` or `name:web`.
    pub what: String,
    /// The node whose session serves it.
    pub node: String,
    pub owner: String,
    pub tunnel: String,
    pub kind: TunnelKind,
    /// The tunnelc instance id ("" when its hello had none).
    pub instance: String,
    /// The session's id on its node; 0 once that session ended (the route stays reserved
    /// for its owner until the entry expires).
    pub session: u64,
    /// When the holding node started (Unix ms): session ids start again at each start, so
    /// a session is (node, boot, session).
    #[serde(default)]
    pub boot: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// When the holder took it (Unix ms).
    pub since: u64,
}

impl RouteEntry {
    /// The port, for a ports route.
    pub fn port(&self) -> Option<u16> {
        self.what.strip_prefix("port:")?.parse().ok()
    }
    /// The name, for a named route.
    pub fn name(&self) -> Option<&str> {
        self.what.strip_prefix("name:")
    }
}

/// One node, as it announces itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeEntry {
    pub node: String,
    /// Where the other nodes dial its link.
    pub link: SocketAddr,
    /// Live sessions on it.
    pub sessions: usize,
    /// Routes its sessions hold.
    pub routes: usize,
    /// Rendezvous ids with hidden-server connections parked here, and how many each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parked: BTreeMap<String, usize>,
    /// Unix ms.
    pub started: u64,
    pub updated: u64,
}

/// Sets a route unless someone else may not lose it: a route of another owner, or of this
/// owner held by a live session on a live node that is not the same tunnelc.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local c = cjson.decode(cur)
  local n = cjson.decode(ARGV[1])
  if not (c.node == n.node and c.boot == n.boot and c.session == n.session
          and c.owner == n.owner) then
    if c.owner ~= n.owner then return cur end
    local same_tunnelc = c.instance ~= '' and c.instance == n.instance
    local holder_live = c.session ~= 0 and c.node ~= n.node
      and redis.call('EXISTS', ARGV[3] .. c.node) == 1
    if holder_live and not same_tunnelc then return cur end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[4], 'routes')
return 'ok'
"#;

/// The table's epoch: a random value set once; a different one means Redis was emptied
/// (restarted without persistence) since the node last looked.
const EPOCH: &str = r#"
local e = redis.call('GET', KEYS[1])
if not e then redis.call('SET', KEYS[1], ARGV[1]) e = ARGV[1] end
return e
"#;

/// Renews a route this node holds: 1 renewed, 2 set again (it was gone: Redis restarted),
/// 0 someone else holds it now.
const RENEW: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"#;

/// Replaces a route this node holds by `ARGV[2]` (its released form, or nothing), keeping
/// the TTL.
const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
redis.call('PUBLISH', ARGV[3], 'routes')
return 1
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: malformed entry under {key}: {error}")]
    Malformed { key: String, error: String },
}

/// What a claim found.
pub enum Claimed {
    Taken,
    /// Held by this entry.
    HeldBy(RouteEntry),
}

pub struct Store {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    pub prefix: String,
    claim: Script,
    renew: Script,
    release: Script,
    epoch: Script,
}

impl Store {
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            prefix: prefix.to_string(),
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            epoch: Script::new(EPOCH),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn route_key(&self, frontend: &str, what: &str) -> String {
        format!("{}:route:{frontend}:{what}", self.prefix)
    }
    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
    pub fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The shared connection, dialled when there is none.
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        *held = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the connection within [`CALL_TIMEOUT`]. A lost connection is dropped and
    /// `f` tried once more on a new one (every call here is safe to repeat: the scripts
    /// compare before they write).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let conn = self.conn().await?;
            let err = match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => StoreError::Redis(e),
                Err(_) => StoreError::Timeout(CALL_TIMEOUT),
            };
            let lost = match &err {
                StoreError::Redis(e) => {
                    e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_unrecoverable_error()
                }
                _ => true,
            };
            if !lost {
                return Err(err);
            }
            *self.conn.lock().await = None;
            if tries >= 2 || matches!(err, StoreError::Timeout(_)) {
                return Err(err);
            }
        }
    }

    /// Sets `entry` under its key unless the script's rules keep it for its holder.
    pub async fn claim(&self, entry: &RouteEntry, ttl: Duration) -> Result<Claimed, StoreError> {
        let key = self.route_key(&entry.frontend, &entry.what);
        let value = json(entry);
        let (node_prefix, channel) = (self.node_prefix(), self.channel());
        let (key, value, node_prefix, channel) = (&key, &value, &node_prefix, &channel);
        let answer: String = self
            .call(|mut c| async move {
                self.claim
                    .key(key)
                    .arg(value)
                    .arg(millis(ttl))
                    .arg(node_prefix)
                    .arg(channel)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if answer == "ok" {
            return Ok(Claimed::Taken);
        }
        let key = self.route_key(&entry.frontend, &entry.what);
        parse(&key, &answer).map(Claimed::HeldBy)
    }

    /// The table's epoch (set now when there is none).
    pub async fn epoch(&self) -> Result<String, StoreError> {
        let key = &format!("{}:epoch", self.prefix);
        let fresh = &data_encoding::HEXLOWER.encode(&tunneld_core::auth::random_bytes::<16>());
        self.call(|mut c| async move { self.epoch.key(key).arg(fresh).invoke_async(&mut c).await })
            .await
    }

    /// Renews (or sets again) `entry`; false when someone else holds its key now.
    pub async fn renew(&self, entry: &RouteEntry, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.route_key(&entry.frontend, &entry.what);
        let value = json(entry);
        let (key, value) = (&key, &value);
        let n: i64 = self
            .call(|mut c| async move {
                self.renew
                    .key(key)
                    .arg(value)
                    .arg(millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n != 0)
    }

    /// Replaces `entry` (if still this one) with `then` (none: deletes it), keeping its TTL.
    pub async fn release(
        &self,
        entry: &RouteEntry,
        then: Option<&RouteEntry>,
    ) -> Result<(), StoreError> {
        let key = self.route_key(&entry.frontend, &entry.what);
        let (value, then) = (json(entry), then.map(json).unwrap_or_default());
        let channel = self.channel();
        let (key, value, then, channel) = (&key, &value, &then, &channel);
        let _: i64 = self
            .call(|mut c| async move {
                self.release
                    .key(key)
                    .arg(value)
                    .arg(then)
                    .arg(channel)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The route under `frontend`/`what`, if any.
    pub async fn route(
        &self,
        frontend: &str,
        what: &str,
    ) -> Result<Option<RouteEntry>, StoreError> {
        let key = self.route_key(frontend, what);
        let k = &key;
        let v: Option<String> = self.call(|mut c| async move { c.get(k).await }).await?;
        v.map(|v| parse(&key, &v)).transpose()
    }

    /// Whether `node` announced itself within its TTL.
    pub async fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        let key = &self.node_key(node);
        self.call(|mut c| async move { c.exists(key).await }).await
    }

    /// Announces this node for `ttl`.
    pub async fn announce(&self, entry: &NodeEntry, ttl: Duration) -> Result<(), StoreError> {
        let key = self.node_key(&entry.node);
        let value = json(entry);
        let (key, value) = (&key, &value);
        self.call(|mut c| async move { c.pset_ex::<_, _, ()>(key, value, millis(ttl)).await })
            .await
    }

    /// Removes this node's entry (it is leaving).
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        let key = &self.node_key(node);
        self.call(|mut c| async move { c.del::<_, ()>(key).await })
            .await
    }

    /// Every node and every route now. Malformed values are skipped (and counted).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for (key, value) in self.scan(&format!("{}:node:*", self.prefix)).await? {
            match parse::<NodeEntry>(&key, &value) {
                Ok(n) => {
                    snap.nodes.insert(n.node.clone(), n);
                }
                Err(_) => snap.malformed += 1,
            }
        }
        for (key, value) in self.scan(&format!("{}:route:*", self.prefix)).await? {
            match parse::<RouteEntry>(&key, &value) {
                Ok(r) if key == self.route_key(&r.frontend, &r.what) => {
                    snap.routes.insert(key, r);
                }
                _ => snap.malformed += 1,
            }
        }
        Ok(snap)
    }

    /// (key, value) of every key matching `pattern`.
    async fn scan(&self, pattern: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .call(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let values: Vec<Option<String>> = self
                .call(
                    |mut c| async move { redis::cmd("MGET").arg(chunk).query_async(&mut c).await },
                )
                .await?;
            out.extend(
                chunk
                    .iter()
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| (k.clone(), v))),
            );
        }
        Ok(out)
    }
}

/// The table as read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeEntry>,
    /// By key.
    pub routes: BTreeMap<String, RouteEntry>,
    /// Values that did not parse (another version's, or garbage).
    pub malformed: usize,
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Malformed {
        key: key.to_string(),
        error: e.to_string(),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}
