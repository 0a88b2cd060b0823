//! The Lua scripts: every write that touches more than one key, or checks before it sets,
//! runs as one script (atomic in Redis), as do the reads that must be one consistent view.
//! Records are opaque strings to them, except that [`DELETE_TUNNEL`] decodes SSH keys to
//! read their `tunnel`.

use redis::Script;

/// Adds a record unless its field (or its index entry) is taken.
/// KEYS: table, versions, index. ARGV: field, record, counter, index field (`''`: none).
/// Returns 1, or 0 when taken.
pub(super) const INSERT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[1]) end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return 1
";

/// Replaces an existing record: any (`expected` = `''`), or only while it is `expected`.
/// KEYS: table, versions. ARGV: field, expected, record, counter.
/// Returns 1, 0 when there is no such record, 2 when it is no longer `expected`.
pub(super) const REPLACE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if ARGV[2] ~= '' and cur ~= ARGV[2] then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
return 1
";

/// Removes a record. KEYS: table, versions. ARGV: field, counter. Returns 1, or 0 when
/// there was none.
pub(super) const REMOVE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return 1
";

/// A record through its index. KEYS: index, table. ARGV: index field.
/// Returns nil, or {field, record or nil}.
pub(super) const BY_INDEX: &str = r"
local f = redis.call('HGET', KEYS[1], ARGV[1])
if not f then return false end
return {f, redis.call('HGET', KEYS[2], f)}
";

/// Deletes a tunnel, its `id_digest` index entry and the SSH keys bound to it.
/// KEYS: tunnels, tunnel_ids, ssh_keys, versions. ARGV: name. Returns 1, or 0 when there
/// was no such tunnel (its keys are deleted all the same, as SQLite's DELETE does).
pub(super) const DELETE_TUNNEL: &str = r"
local name = ARGV[1]
local deleted = 0
if redis.call('HDEL', KEYS[1], name) == 1 then
  local ids = redis.call('HGETALL', KEYS[2])
  for i = 1, #ids, 2 do
    if ids[i + 1] == name then redis.call('HDEL', KEYS[2], ids[i]) end
  end
  redis.call('HINCRBY', KEYS[4], 'tunnels', 1)
  deleted = 1
end
local keys = redis.call('HGETALL', KEYS[3])
local gone = 0
for i = 1, #keys, 2 do
  local ok, k = pcall(cjson.decode, keys[i + 1])
  if ok and type(k) == 'table' and k['tunnel'] == name then
    redis.call('HDEL', KEYS[3], keys[i])
    gone = gone + 1
  end
end
if gone > 0 then redis.call('HINCRBY', KEYS[4], 'ssh_keys', 1) end
return deleted
";

/// Adds a certificate unless its serial is stored.
/// KEYS: certificate_serials, certificates:<tunnel>. ARGV: serial, tunnel, record.
/// Returns 1, or 0 when the serial is taken.
pub(super) const ADD_CERTIFICATE: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
";

/// Forgets the used codes recorded before `forget_before`, then records one unless its
/// (id, counter) is recorded. KEYS: used_codes, used_codes_at.
/// ARGV: field, record, at, forget_before.
pub(super) const ADD_USED_CODE: &str = r"
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
for _, f in ipairs(old) do redis.call('HDEL', KEYS[1], f) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4]) end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
";

/// The used codes recorded at or after `since`. KEYS: used_codes, used_codes_at.
/// ARGV: since. Returns {field, record or nil, ...}.
pub(super) const USED_CODES: &str = r"
local out = {}
for _, f in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf')) do
  out[#out + 1] = f
  out[#out + 1] = redis.call('HGET', KEYS[1], f)
end
return out
";

/// The change counters, and every table whose counter is not the one known.
/// KEYS: versions, tokens, rendezvous, tunnels, ssh_keys. ARGV: the known counters in
/// that order (`''`: none known). Returns {counters, tokens, rendezvous, tunnels,
/// ssh_keys}: each table as HGETALL's pairs, or nil when its counter did not move.
pub(super) const CHANGES: &str = r"
local v = redis.call('HMGET', KEYS[1], 'tokens', 'rendezvous', 'tunnels', 'ssh_keys')
local out = {v}
for i = 1, 4 do
  local now = v[i] or '0'
  if ARGV[i] == '' or ARGV[i] ~= now then
    out[i + 1] = redis.call('HGETALL', KEYS[i + 1])
  else
    out[i + 1] = false
  end
end
return out
";

/// Everything, at one instant (backups, checks). KEYS: tokens, tunnels, ssh_keys,
/// rendezvous, used_codes, admin_mappings, certificate_serials, versions, token_digests,
/// tunnel_ids. ARGV: the certificate lists' key prefix. Returns the hashes as HGETALL's
/// pairs in KEYS' order, with the mappings (or nil) 6th and the certificates 7th as
/// {tunnel, {record, ...}, ...}.
pub(super) const DUMP: &str = r"
local out = {}
for i = 1, 5 do out[i] = redis.call('HGETALL', KEYS[i]) end
out[6] = redis.call('GET', KEYS[6])
local serials = redis.call('HGETALL', KEYS[7])
local seen, certs = {}, {}
for i = 2, #serials, 2 do
  local t = serials[i]
  if not seen[t] then
    seen[t] = true
    certs[#certs + 1] = t
    certs[#certs + 1] = redis.call('LRANGE', ARGV[1] .. t, 0, -1)
  end
end
out[7] = certs
for i = 8, 10 do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
";

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub insert: Script,
    pub replace: Script,
    pub remove: Script,
    pub by_index: Script,
    pub delete_tunnel: Script,
    pub add_certificate: Script,
    pub add_used_code: Script,
    pub used_codes: Script,
    pub changes: Script,
    pub dump: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            insert: Script::new(INSERT),
            replace: Script::new(REPLACE),
            remove: Script::new(REMOVE),
            by_index: Script::new(BY_INDEX),
            delete_tunnel: Script::new(DELETE_TUNNEL),
            add_certificate: Script::new(ADD_CERTIFICATE),
            add_used_code: Script::new(ADD_USED_CODE),
            used_codes: Script::new(USED_CODES),
            changes: Script::new(CHANGES),
            dump: Script::new(DUMP),
        }
    }
}
