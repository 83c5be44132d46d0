//! The Redis backend: production, shared by every replica. Works against a
//! single node and against Redis Cluster with the same code.
//!
//! # Connecting
//!
//! [`RedisTokenStore::connect`] takes `REDIS_URL`:
//! - `redis://[user:pass@]host:port[/db]`: one node, through a
//!   `ConnectionManager` that reconnects by itself;
//! - `redis+cluster://[user:pass@]host1:port1,host2:port2,...`, or a
//!   comma-separated list of full `redis://` URLs: seed nodes of a Redis
//!   Cluster. Bare `host:port` entries after the first inherit its scheme
//!   and credentials.
//!
//! `rediss://` (and `rediss+cluster://`) connect over TLS (rustls with the
//! webpki roots), verifying the server's certificate.
//!
//! Every call is bounded: one TCP connect attempt waits at most
//! [`CONNECT_TIMEOUT`], and a whole operation (reconnection included) at most
//! [`COMMAND_TIMEOUT`]; past that the caller gets [`Error::Unavailable`]
//! rather than a hung request. Nothing here logs the URL (it may carry a
//! password), a key (keys carry refresh-token hashes) or a value.
//!
//! # Key layout
//!
//! Every key is `{prefix}:{<tenant uuid>}:<kind>:...`. The braces are a Redis
//! Cluster hash tag: all of a tenant's keys hash to one slot, so every script
//! below runs on one node and may touch any key of that tenant. A script
//! receives the keys it knows up front in `KEYS` (so the cluster client routes
//! it to the tenant's slot) and the tenant namespace `{prefix}:{<tenant>}:`
//! in `ARGV[1]`; keys it discovers while running (the session a refresh hash
//! points to, a user's sessions) are built only by appending to that
//! namespace, hence carry the same hash tag and live in the same slot.
//!
//! | key | type | holds | expires |
//! | --- | --- | --- | --- |
//! | `sess:<sid>` | hash | `user`, `created`, `last_used`, `amr` (JSON), `ua`?, `ip`?, `gen` (generation of the current refresh token; absent: 0, a session from before tokens named their session, whose current token is the hash in `rt`) | session TTL, renewed on rotation |
//! | `rt:<hash>` | string | sessions from before tokens named their session: the sid of every refresh hash such a session had, current or rotated away (so reuse is detected); none are written any more | TTL from when it was issued |
//! | `fam:<sid>` | sorted set | the same sessions' refresh hashes whose `rt:` key may still exist, scored by its expiry (server ms), to delete them on revocation | session TTL |
//! | `usess:<uid>` | set | the user's sids (dead ones pruned when read) | the longest session TTL |
//! | `deny:<sid>` | string | `1`: access tokens with this sid are refused | `deny_ttl` |
//! | `once:<kind>:<id>` | hash | `v` the value, `n` the attempts | caller's TTL |
//! | `ctr:<key>` | string | the last accepted step | never |
//! | `rl:<key>` | string | GCRA theoretical arrival time, µs | until it no longer matters |
//!
//! Every multi-step operation is one Lua script: one round trip, atomic. Redis
//! must run with `maxmemory-policy noeviction`
//! ([`RedisTokenStore::check_eviction_policy`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, Value};

use crate::gcra::{self, Plan};
use crate::memory::sort_sessions;
use crate::{
    Error, FIRST_GENERATION, Memos, Notice, REUSE_DENY_TTL, RateDecision, RefreshKey, Result, RotateOutcome,
    SessionLimit, SessionRecord, TokenStore, check_kind, check_step, ttl_ms,
};

/// How long one TCP connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one operation may take, reconnection included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys asked per `SCAN` round trip in [`TokenStore::purge_tenant`].
const SCAN_COUNT: usize = 1000;
/// How often the change listener checks that its subscription still
/// answers (a silently dead connection would otherwise keep the memos live
/// while notices are lost).
const LISTENER_PING: Duration = Duration::from_secs(5);

/// The Redis token store. Cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct RedisTokenStore {
    conn: Conn,
    prefix: Arc<str>,
    /// `{prefix}:changes`, the channel of [`Notice`]s (named once: every
    /// revocation script publishes on it).
    channel: Arc<str>,
    /// Change notices received on `{prefix}:changes` (see [`TokenStore::publish_change`]).
    changes: Arc<tokio::sync::broadcast::Sender<TenantId>>,
    /// Live only while the change channel is subscribed.
    memos: Arc<Memos>,
}

impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisTokenStore").field("mode", &mode).field("prefix", &self.prefix).finish()
    }
}

/// One node or a cluster, behind one `ConnectionLike` so the rest of the
/// code does not care which.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Sends `cmd` to the primary owning the slot of `key` (a keyless command
    /// such as `SCAN` would otherwise go to a random node of a cluster).
    async fn query_on_slot_of(&mut self, cmd: &Cmd, key: &str) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd.clone(), routing).await?.extract_error()
            }
        }
    }

    /// Sends `cmd` to every primary; the answer is one value per node on a
    /// cluster (a map from node to answer), the plain answer otherwise.
    async fn query_all_primaries(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                c.route_command(cmd.clone(), routing).await
            }
        }
    }
}

/// Where `REDIS_URL` points.
enum Target {
    Single(redis::Client),
    /// The cluster, and a client for its first seed node: a plain `PUBLISH`
    /// reaches subscribers on every node of a cluster.
    Cluster(Box<ClusterClient>, redis::Client),
}

impl Target {
    fn pubsub_client(&self) -> redis::Client {
        match self {
            Target::Single(c) | Target::Cluster(_, c) => c.clone(),
        }
    }
}

/// Listens on the change channel for as long as the store lives,
/// reconnecting after a second when Redis goes away. Configuration changes
/// go to the broadcast; revocations and user changes to the memos, which are
/// live exactly while the subscription is (checked every
/// [`LISTENER_PING`]).
fn spawn_change_listener(
    client: redis::Client,
    channel: String,
    tx: std::sync::Weak<tokio::sync::broadcast::Sender<TenantId>>,
    memos: std::sync::Weak<Memos>,
) {
    use futures::StreamExt;
    tokio::spawn(async move {
        while tx.strong_count() > 0 {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    let Some(m) = memos.upgrade() else { return };
                    m.set_live(true);
                    drop(m);
                    let (mut sink, mut messages) = pubsub.split();
                    let mut ping = tokio::time::interval(LISTENER_PING);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let (Some(tx), Some(memos)) = (tx.upgrade(), memos.upgrade()) else { return };
                                let Ok(payload) = msg.get_payload::<String>() else { continue };
                                match Notice::decode(&payload) {
                                    // No receiver (nothing running) is fine.
                                    Some(Notice::TenantChanged(id)) => drop(tx.send(id)),
                                    Some(notice) => memos.apply(&notice),
                                    None => {}
                                }
                            }
                            _ = ping.tick() => {
                                let answered = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<Value>()).await;
                                if !matches!(answered, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!("redis change listener lost its subscription; memos off until it is back");
                }
                Err(e) => tracing::debug!(error = %e, "redis change listener cannot subscribe; retrying"),
            }
            if let Some(m) = memos.upgrade() {
                m.set_live(false);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

fn parse_target(url: &str, ca_pem: Option<&[u8]>) -> Result<Target> {
    // Never echo the URL: it may carry a password.
    let bad = |what: &str| Error::Misconfigured(format!("REDIS_URL: {what}"));
    let url = url.trim();
    let (cluster, url) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (true, format!("redis://{rest}"))
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        (true, format!("rediss://{rest}"))
    } else {
        (url.contains(','), url.to_owned())
    };
    let mut parts = url.split(',').map(str::trim).filter(|p| !p.is_empty());
    let first = parts.next().ok_or_else(|| bad("empty"))?;
    // A private CA (AUTHD_REDIS_CA_FILE) replaces the webpki roots for
    // `rediss://`: the server's certificate is still checked, against it.
    let certs = || redis::TlsCertificates { client_tls: None, root_cert: ca_pem.map(<[u8]>::to_vec) };
    let open = |u: &str| match ca_pem {
        Some(_) => redis::Client::build_with_tls(u, certs()),
        None => redis::Client::open(u),
    };
    if !cluster {
        let client = open(first).map_err(|e| bad(&format!("not a Redis URL ({:?})", e.kind())))?;
        return Ok(Target::Single(client));
    }
    let (scheme, rest) = first.split_once("://").ok_or_else(|| bad("a cluster seed is not a redis:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    let mut nodes = vec![first.to_owned()];
    for p in parts {
        nodes.push(if p.contains("://") {
            p.to_owned()
        } else {
            match userinfo {
                Some(u) => format!("{scheme}://{u}@{p}"),
                None => format!("{scheme}://{p}"),
            }
        });
    }
    let seed =
        open(nodes[0].as_str()).map_err(|e| bad(&format!("a cluster seed is not a Redis URL ({:?})", e.kind())))?;
    let mut builder = ClusterClient::builder(nodes);
    if ca_pem.is_some() {
        builder = builder.certs(certs());
    }
    let client = builder
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .build()
        .map_err(|e| bad(&format!("invalid cluster seed list ({:?})", e.kind())))?;
    Ok(Target::Cluster(Box::new(client), seed))
}

fn manager_config() -> ConnectionManagerConfig {
    // Few, short retries: a down Redis must surface as `Unavailable` within
    // COMMAND_TIMEOUT, and the next call starts a fresh reconnection anyway.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

fn cluster_config() -> ClusterConfig {
    ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(COMMAND_TIMEOUT)
}

/// The prefix ends up in `SCAN MATCH` patterns and in front of the hash tag,
/// so it may hold neither glob characters nor braces.
fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Misconfigured(
            "Redis key prefix must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'".into(),
        ))
    }
}

fn map_err(e: RedisError) -> Error {
    let unavailable = match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        ErrorKind::AuthenticationFailed => {
            return Error::Misconfigured(format!("Redis refused the credentials: {e}"));
        }
        _ => false,
    };
    if unavailable || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        Error::Unavailable(format!("redis: {e}"))
    } else {
        Error::Internal(format!("redis: {e}"))
    }
}

/// Bounds `fut` by [`COMMAND_TIMEOUT`] and maps its error.
async fn bounded<T>(fut: impl Future<Output = RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(Error::Unavailable(format!("redis: no answer within {} ms", COMMAND_TIMEOUT.as_millis()))),
    }
}

fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| Error::Internal(format!("redis: unexpected answer: {e}")))
}

impl RedisTokenStore {
    /// Connects to `url` (see the module documentation for the forms) and
    /// checks that the server answers, failing with [`Error::Unavailable`]
    /// within about [`COMMAND_TIMEOUT`] when it does not. Every key is put
    /// under `key_prefix` (1 to 64 characters of `A-Za-z0-9-_.:`), so several
    /// deployments can share one Redis. Must run inside a Tokio runtime.
    ///
    /// This does not check the eviction policy: call
    /// [`check_eviction_policy`](Self::check_eviction_policy) at start-up.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self> {
        Self::connect_with_ca(url, key_prefix, None).await
    }

    /// [`connect`](Self::connect), checking a `rediss://` server's
    /// certificate against `ca_pem` (PEM) instead of the webpki roots.
    pub async fn connect_with_ca(url: &str, key_prefix: &str, ca_pem: Option<&[u8]>) -> Result<Self> {
        check_prefix(key_prefix)?;
        let target = parse_target(url, ca_pem)?;
        let channel: Arc<str> = Self::changes_channel(key_prefix).into();
        let (changes, memos) = Self::listen_for_changes(&target, &channel);
        let conn = match target {
            Target::Single(client) => {
                Conn::Single(bounded(ConnectionManager::new_with_config(client, manager_config())).await?)
            }
            Target::Cluster(client, _) => {
                Conn::Cluster(bounded(client.get_async_connection_with_config(cluster_config())).await?)
            }
        };
        let store = Self { conn, prefix: key_prefix.into(), channel, changes, memos };
        store.ping().await?;
        tracing::info!(store = ?store, "connected to Redis");
        Ok(store)
    }

    /// Like [`connect`](Self::connect) but without touching the network: the
    /// connection is made by the first operation (which fails with
    /// [`Error::Unavailable`] while Redis is down, and is retried by the
    /// next). For a process that must start before Redis does and report
    /// readiness through [`TokenStore::ping`]. Must run inside a Tokio
    /// runtime.
    pub fn connect_lazy(url: &str, key_prefix: &str) -> Result<Self> {
        check_prefix(key_prefix)?;
        let target = parse_target(url, None)?;
        let channel: Arc<str> = Self::changes_channel(key_prefix).into();
        let (changes, memos) = Self::listen_for_changes(&target, &channel);
        let conn = match target {
            Target::Single(client) => {
                Conn::Single(ConnectionManager::new_lazy_with_config(client, manager_config()).map_err(map_err)?)
            }
            Target::Cluster(client, _) => {
                Conn::Cluster(client.get_pending_async_connection_with_config(cluster_config()))
            }
        };
        Ok(Self { conn, prefix: key_prefix.into(), channel, changes, memos })
    }

    /// The channel change notices travel on (per key prefix: deployments
    /// sharing a Redis do not hear each other).
    fn changes_channel(prefix: &str) -> String {
        format!("{prefix}:changes")
    }

    fn listen_for_changes(
        target: &Target,
        channel: &str,
    ) -> (Arc<tokio::sync::broadcast::Sender<TenantId>>, Arc<Memos>) {
        let tx = Arc::new(tokio::sync::broadcast::channel(256).0);
        let memos = Arc::new(Memos::new(false));
        spawn_change_listener(target.pubsub_client(), channel.to_owned(), Arc::downgrade(&tx), Arc::downgrade(&memos));
        (tx, memos)
    }

    /// Publishes one notice on the change channel.
    async fn publish(&self, notice: &Notice) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&*self.channel).arg(notice.encode());
        bounded(async move { cmd.query_async::<Value>(&mut conn).await }).await?;
        Ok(())
    }

    /// Refuses a Redis that may evict keys: an evicted `deny:` entry would
    /// revive a revoked session, an evicted `rt:` entry would turn a stolen
    /// token's reuse into a mere `NotFound`. `maxmemory-policy` must be
    /// `noeviction` on every primary, or this fails with
    /// [`Error::Misconfigured`]. Where `CONFIG` is disabled (managed Redis),
    /// it logs a warning and accepts: the operator has to ensure it.
    pub async fn check_eviction_policy(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, conn.query_all_primaries(&cmd)).await {
            Err(_) => return Err(Error::Unavailable("redis: CONFIG GET timed out".into())),
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::Server(_)) => {
                tracing::warn!(error = %e, "cannot read Redis maxmemory-policy (CONFIG disabled?); \
                    make sure it is noeviction, or revoked sessions may come back");
                return Ok(());
            }
            Ok(Err(e)) => return Err(map_err(e)),
            Ok(Ok(v)) => v,
        };
        let mut strings = Vec::new();
        flatten_strings(&answer, &mut strings);
        let policies: Vec<&String> =
            strings.windows(2).filter(|w| w[0].eq_ignore_ascii_case("maxmemory-policy")).map(|w| &w[1]).collect();
        if policies.is_empty() {
            tracing::warn!(
                "Redis did not report its maxmemory-policy (CONFIG restricted?); \
                make sure it is noeviction, or revoked sessions may come back"
            );
            return Ok(());
        }
        if let Some(bad) = policies.iter().find(|p| !p.eq_ignore_ascii_case("noeviction")) {
            return Err(Error::Misconfigured(format!(
                "Redis maxmemory-policy is {bad:?} but authd requires noeviction: an evicted \
                 deny-list entry would revive a revoked session. Set `maxmemory-policy noeviction` \
                 (and size maxmemory for the load)."
            )));
        }
        Ok(())
    }

    /// The namespace of one tenant: `{prefix}:{<tenant>}:`.
    fn ns(&self, tenant: TenantId) -> String {
        format!("{}:{{{}}}:", self.prefix, tenant)
    }

    /// Runs one script invocation, bounded.
    async fn eval(&self, script: &'static Script, keys: &[&str], args: &[&str]) -> Result<Value> {
        let mut conn = self.conn.clone();
        bounded(async move {
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                inv.arg(*a);
            }
            inv.invoke_async::<Value>(&mut conn).await
        })
        .await
    }

    /// Runs one plain command, bounded.
    async fn query(&self, cmd: Cmd) -> Result<Value> {
        let mut conn = self.conn.clone();
        bounded(async move { cmd.query_async::<Value>(&mut conn).await }).await
    }
}

/// Every string in `v`, depth first (a map's keys before its values).
fn flatten_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|i| flatten_strings(i, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten_strings(k, out);
            flatten_strings(v, out);
        }),
        Value::Attribute { data, .. } => flatten_strings(data, out),
        _ => {}
    }
}

/// The fields of a session hash, in the order `HSET` takes them (`rt` apart).
fn session_fields(s: &SessionRecord) -> Result<Vec<String>> {
    let amr = serde_json::to_string(&s.amr).map_err(|e| Error::Internal(format!("amr: {e}")))?;
    let mut f = vec![
        "user".to_owned(),
        s.user_id.to_string(),
        "created".to_owned(),
        s.created_at.to_string(),
        "last_used".to_owned(),
        s.last_used_at.to_string(),
        "amr".to_owned(),
        amr,
    ];
    if let Some(ua) = &s.user_agent {
        f.extend(["ua".to_owned(), ua.clone()]);
    }
    if let Some(ip) = &s.ip {
        f.extend(["ip".to_owned(), ip.clone()]);
    }
    Ok(f)
}

/// A session from its id and the `HGETALL` of its hash.
fn session_from(sid: SessionId, fields: Value) -> Result<SessionRecord> {
    let mut f: HashMap<String, String> = parse(fields)?;
    let corrupt = |what: &str| Error::Internal(format!("session record {sid}: bad {what}"));
    let int = |f: &HashMap<String, String>, k: &str| -> Result<i64> {
        f.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(k))
    };
    Ok(SessionRecord {
        id: sid,
        user_id: f.get("user").and_then(|u| u.parse().ok()).ok_or_else(|| corrupt("user"))?,
        created_at: int(&f, "created")?,
        last_used_at: int(&f, "last_used")?,
        amr: f.get("amr").and_then(|a| serde_json::from_str(a).ok()).ok_or_else(|| corrupt("amr"))?,
        user_agent: f.remove("ua"),
        ip: f.remove("ip"),
    })
}

fn parse_sid(v: Value) -> Result<SessionId> {
    let s: String = parse(v)?;
    s.parse().map_err(|_| Error::Internal("redis: a stored session id is not a UUID".into()))
}

/// How `LUA_FIND` finds a presented refresh token: its `KEYS[1]` and
/// `ARGV[2..4]`.
struct Found {
    key: String,
    kind: &'static str,
    value: String,
    sid: String,
}

impl Found {
    fn of(ns: &str, key: RefreshKey<'_>) -> Self {
        match key {
            RefreshKey::Named { sid, generation } => {
                Found { key: format!("{ns}sess:{sid}"), kind: "n", value: generation.to_string(), sid: sid.to_string() }
            }
            RefreshKey::Hashed(h) => {
                Found { key: format!("{ns}rt:{h}"), kind: "h", value: h.to_owned(), sid: String::new() }
            }
        }
    }
}

// ---- Lua ----
//
// Conventions: ARGV[1] is the tenant namespace `{prefix}:{<tenant>}:` where a
// script builds keys itself; durations are in milliseconds.

/// Revokes session `sid`: deletes its hash, every refresh key of its family,
/// its family set and its place in its user's set, puts the sid on the deny
/// list for `deny_ms` (never shortening an entry already there) and
/// announces it on `chan` (`d <tenant> <sid>`, see [`Notice`]) in the same
/// atomic step, so every replica forgets that the session was live. Returns
/// 1 if the session was live.
const LUA_REVOKE: &str = r#"
local function revoke(ns, sid, deny_ms, chan, tenant)
  local sk = ns .. 'sess:' .. sid
  local user = redis.call('HGET', sk, 'user')
  if user then
    local fk = ns .. 'fam:' .. sid
    for _, h in ipairs(redis.call('ZRANGE', fk, 0, -1)) do
      redis.call('DEL', ns .. 'rt:' .. h)
    end
    redis.call('DEL', sk, fk)
    redis.call('SREM', ns .. 'usess:' .. user, sid)
  end
  local dk = ns .. 'deny:' .. sid
  if redis.call('PTTL', dk) < deny_ms then
    redis.call('SET', dk, '1', 'PX', deny_ms)
  end
  redis.call('PUBLISH', chan, 'd ' .. tenant .. ' ' .. sid)
  if user then return 1 end
  return 0
end
"#;

/// Sets a TTL of at least `ms` on `key` (a user's set lives as long as its
/// longest session).
const LUA_EXTEND: &str = r#"
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
"#;

/// GCRA on `key`: the arithmetic of `gcra::Params::decide`, which the other
/// backends run; keep them in step. `now`, `interval` and `tolerance` are
/// µs. Returns {1, remaining} or {0, retry_after_ms}.
const LUA_RATE: &str = r#"
local function rate(key, now, interval, tolerance)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local wait = new_tat - tolerance - now
  if wait > 0 then
    return {0, math.ceil(wait / 1000)}
  end
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  return {1, math.floor((now + tolerance - new_tat) / interval)}
end
"#;

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// KEYS: sess:<sid>, usess:<uid>. ARGV: ttl, sid, first generation, then
/// the session's field/value pairs.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_EXTEND,
        r#"
local ttl = tonumber(ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[3], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], ARGV[2])
extend(KEYS[2], ttl)
return 1
"#,
    ])
});

/// Finds the session of a presented refresh token and judges the token:
/// sets `sid`, `sk` (its key), `gen` (its current generation) and `standing`
/// ('current', 'reused' or nil: unknown). KEYS[1] is `sess:<sid>` for a token
/// naming its session (ARGV[2] 'n', ARGV[3] its generation, ARGV[4] the sid)
/// or `rt:<hash>` for one from before (ARGV[2] 'h', ARGV[3] the hash).
/// The same rule as the SQLite backend's `Presented::judge`; keep them in
/// step.
const LUA_FIND: &str = r#"
local function find(ns)
  local sid = ARGV[4]
  if ARGV[2] == 'h' then
    sid = redis.call('GET', KEYS[1])
    if not sid then return nil end
  end
  local sk = ns .. 'sess:' .. sid
  if redis.call('EXISTS', sk) == 0 then return nil end
  local gen = tonumber(redis.call('HGET', sk, 'gen') or '0')
  local standing = nil
  if ARGV[2] == 'n' then
    local g = tonumber(ARGV[3])
    if gen > 0 and g == gen then standing = 'current'
    elseif gen > 0 and g < gen then standing = 'reused' end
  elseif gen == 0 and redis.call('HGET', sk, 'rt') == ARGV[3] then
    standing = 'current'
  else
    -- Its hash names this session, which has rotated it away.
    standing = 'reused'
  end
  return sid, sk, gen, standing
end
"#;

/// KEYS and ARGV[2..4]: as `LUA_FIND`. ARGV: ns, ..., now, ttl, reuse deny
/// ttl, channel, tenant, then the session's limit: '' (none), or 'fixed' and
/// the retry (ms), or 'gcra', the key prefix, now, interval and tolerance
/// (µs). Returns {'rotated', sid, fields} | {'reused', sid, user} |
/// {'notfound'} | {'limited', retry_after_ms}.
static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_REVOKE,
        LUA_EXTEND,
        LUA_RATE,
        LUA_FIND,
        r#"
local ns = ARGV[1]
local ttl = tonumber(ARGV[6])
local sid, sk, gen, standing = find(ns)
if not standing then return {'notfound'} end
local user = redis.call('HGET', sk, 'user')
if standing == 'reused' then
  -- A token this session already rotated away: someone holds a copy
  -- (RFC 9700 section 4.14.2), so the whole family goes.
  revoke(ns, sid, tonumber(ARGV[7]), ARGV[8], ARGV[9])
  return {'reused', sid, user}
end
if ARGV[10] == 'fixed' then
  return {'limited', tonumber(ARGV[11])}
elseif ARGV[10] == 'gcra' then
  local r = rate(ns .. 'rl:' .. ARGV[11] .. sid, tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]))
  if r[1] == 0 then return {'limited', r[2]} end
end
redis.call('HSET', sk, 'gen', string.format('%.0f', gen + 1), 'last_used', ARGV[5])
if gen == 0 then redis.call('HDEL', sk, 'rt') end
redis.call('PEXPIRE', sk, ttl)
extend(ns .. 'usess:' .. user, ttl)
return {'rotated', sid, redis.call('HGETALL', sk)}
"#,
    ])
});

/// KEYS and ARGV[2..4]: as `LUA_FIND`; ARGV[1]: ns. Returns {sid, fields}
/// or nil.
static BY_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_FIND,
        r#"
local sid, sk, gen, standing = find(ARGV[1])
if standing ~= 'current' then return false end
return {sid, redis.call('HGETALL', sk)}
"#,
    ])
});

/// KEYS: usess:<uid>. ARGV: ns. Returns {sid, fields, sid, fields, ...},
/// pruning the ids of sessions that expired.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    script(&[r#"
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. 'sess:' .. sid)
  if #fields == 0 then
    redis.call('SREM', KEYS[1], sid)
  else
    out[#out + 1] = sid
    out[#out + 1] = fields
  end
end
return out
"#])
});

/// KEYS: sess:<sid>, fam:<sid>, deny:<sid>. ARGV: ns, sid, deny ttl, channel,
/// tenant.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_REVOKE,
        r#"
return revoke(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])
"#,
    ])
});

/// KEYS: usess:<uid>. ARGV: ns, sid to keep (or ''), deny ttl, channel,
/// tenant. Returns the ids of the sessions revoked.
static REVOKE_USER: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_REVOKE,
        r#"
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if sid ~= ARGV[2] then
    if redis.call('EXISTS', ARGV[1] .. 'sess:' .. sid) == 1 then
      revoke(ARGV[1], sid, tonumber(ARGV[3]), ARGV[4], ARGV[5])
      out[#out + 1] = sid
    else
      redis.call('SREM', KEYS[1], sid)
    end
  end
end
return out
"#,
    ])
});

/// KEYS: once:<kind>:<id>. ARGV: value, ttl.
static PUT_ONCE: LazyLock<Script> = LazyLock::new(|| {
    script(&[r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'n', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#])
});

/// KEYS: once:<kind>:<id>.
static TAKE_ONCE: LazyLock<Script> = LazyLock::new(|| {
    script(&[r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v then redis.call('DEL', KEYS[1]) end
return v
"#])
});

/// KEYS: once:<kind>:<id>. ARGV: max. Returns the new count or nil.
static COUNT_ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    script(&[r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
return n
"#])
});

/// KEYS: ctr:<key>. ARGV: step.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    script(&[r#"
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#])
});

/// KEYS: rl:<key>. ARGV: now, interval, tolerance (µs).
/// Returns {1, remaining} or {0, retry_after_ms}.
static RATE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LUA_RATE,
        r#"
return rate(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
"#,
    ])
});

#[async_trait]
impl TokenStore for RedisTokenStore {
    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        bounded(async move { redis::cmd("PING").query_async::<Value>(&mut conn).await }).await?;
        Ok(())
    }

    async fn publish_change(&self, tenant: TenantId) -> Result<()> {
        self.publish(&Notice::TenantChanged(tenant)).await
    }

    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<TenantId>> {
        Some(self.changes.subscribe())
    }

    async fn publish_user_change(&self, tenant: TenantId, user: Option<UserId>) -> Result<()> {
        self.publish(&Notice::UserChanged(tenant, user)).await
    }

    fn memos(&self) -> &Memos {
        &self.memos
    }

    async fn create_session(&self, tenant: TenantId, session: &SessionRecord, ttl: Duration) -> Result<()> {
        let ns = self.ns(tenant);
        let sid = session.id.to_string();
        let keys = [format!("{ns}sess:{sid}"), format!("{ns}usess:{}", session.user_id)];
        let (ttl, first) = (ttl_ms(ttl).to_string(), FIRST_GENERATION.to_string());
        let fields = session_fields(session)?;
        let mut args = vec![ttl.as_str(), sid.as_str(), first.as_str()];
        args.extend(fields.iter().map(String::as_str));
        self.eval(&CREATE, &keys.each_ref().map(String::as_str), &args).await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old: RefreshKey<'_>,
        now: i64,
        ttl: Duration,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<RotateOutcome> {
        let ns = self.ns(tenant);
        let found = Found::of(&ns, old);
        let (now, ttl, deny) = (now.to_string(), ttl_ms(ttl).to_string(), ttl_ms(REUSE_DENY_TTL).to_string());
        let tid = tenant.to_string();
        let mut args: Vec<String> = Vec::new();
        match limit.map(|l| (l.key_prefix, gcra::plan(l.limit, l.period, l.now_ms))) {
            None | Some((_, Plan::Fixed(RateDecision::Allowed { .. }))) => args.push(String::new()),
            Some((_, Plan::Fixed(RateDecision::Limited { retry_after_ms }))) => {
                args.extend(["fixed".to_owned(), retry_after_ms.to_string()]);
            }
            Some((prefix, Plan::Check(p))) => args.extend([
                "gcra".to_owned(),
                prefix.to_owned(),
                p.now_us.to_string(),
                p.interval_us.to_string(),
                p.tolerance_us.to_string(),
            ]),
        }
        let mut all: Vec<&str> =
            vec![&ns, found.kind, &found.value, &found.sid, &now, &ttl, &deny, &self.channel, &tid];
        all.extend(args.iter().map(String::as_str));
        let answer = self.eval(&ROTATE, &[&found.key], &all).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                // It may have revoked the session for reuse before failing
                // to answer: nothing of this tenant is known live any more.
                self.memos.not_denied.forget_tenant(tenant);
                return Err(e);
            }
        };
        let mut parts: Vec<Value> = parse(answer)?;
        let tag: String = match parts.first() {
            Some(v) => parse(v.clone())?,
            None => return Err(Error::Internal("redis: empty rotate answer".into())),
        };
        let mut rest = parts.drain(1..);
        match (tag.as_str(), rest.next(), rest.next()) {
            ("rotated", Some(sid), Some(fields)) => Ok(RotateOutcome::Rotated(session_from(parse_sid(sid)?, fields)?)),
            ("reused", Some(sid), Some(user)) => {
                let user: String = parse(user)?;
                let user = user
                    .parse::<UserId>()
                    .map_err(|_| Error::Internal("redis: a stored user id is not a UUID".into()))?;
                let session = parse_sid(sid)?;
                self.memos.not_denied.forget(tenant, [session.0]);
                Ok(RotateOutcome::Reused { session, user })
            }
            ("notfound", _, _) => Ok(RotateOutcome::NotFound),
            ("limited", Some(ms), _) => Ok(RotateOutcome::Limited { retry_after_ms: parse(ms)? }),
            _ => Err(Error::Internal(format!("redis: unexpected rotate answer {tag:?}"))),
        }
    }

    async fn session_by_refresh(&self, tenant: TenantId, key: RefreshKey<'_>) -> Result<Option<SessionRecord>> {
        let ns = self.ns(tenant);
        let found = Found::of(&ns, key);
        let args = [ns.as_str(), found.kind, &found.value, &found.sid];
        let answer: Option<Vec<Value>> = parse(self.eval(&BY_REFRESH, &[&found.key], &args).await?)?;
        match answer {
            None => Ok(None),
            Some(parts) => {
                let mut parts = parts.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(sid), Some(fields)) => Ok(Some(session_from(parse_sid(sid)?, fields)?)),
                    _ => Err(Error::Internal("redis: unexpected session answer".into())),
                }
            }
        }
    }

    async fn get_session(&self, tenant: TenantId, sid: SessionId) -> Result<Option<SessionRecord>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(format!("{}sess:{sid}", self.ns(tenant)));
        let fields = self.query(cmd).await?;
        let empty = match &fields {
            Value::Array(a) => a.is_empty(),
            Value::Map(m) => m.is_empty(),
            Value::Nil => true,
            _ => false,
        };
        if empty { Ok(None) } else { Ok(Some(session_from(sid, fields)?)) }
    }

    async fn list_sessions(&self, tenant: TenantId, user: UserId) -> Result<Vec<SessionRecord>> {
        let ns = self.ns(tenant);
        let key = format!("{ns}usess:{user}");
        let flat: Vec<Value> = parse(self.eval(&LIST, &[&key], &[&ns]).await?)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(sid), Some(fields)) = (it.next(), it.next()) {
            out.push(session_from(parse_sid(sid)?, fields)?);
        }
        sort_sessions(&mut out);
        Ok(out)
    }

    async fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> Result<bool> {
        let ns = self.ns(tenant);
        let keys = [format!("{ns}sess:{sid}"), format!("{ns}fam:{sid}"), format!("{ns}deny:{sid}")];
        let (id, deny) = (sid.to_string(), ttl_ms(deny_ttl).to_string());
        let tid = tenant.to_string();
        let answer =
            self.eval(&REVOKE, &keys.each_ref().map(String::as_str), &[&ns, &id, &deny, &self.channel, &tid]).await;
        // Whatever the answer, before returning: a later check on this
        // replica must not trust an earlier "not revoked" (other replicas
        // hear the notice the script published).
        self.memos.not_denied.forget(tenant, [sid.0]);
        let n: i64 = parse(answer?)?;
        Ok(n == 1)
    }

    async fn revoke_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        deny_ttl: Duration,
    ) -> Result<u64> {
        let ns = self.ns(tenant);
        let key = format!("{ns}usess:{user}");
        let keep = keep.map(|k| k.to_string()).unwrap_or_default();
        let deny = ttl_ms(deny_ttl).to_string();
        let tid = tenant.to_string();
        let answer = self.eval(&REVOKE_USER, &[&key], &[&ns, &keep, &deny, &self.channel, &tid]).await;
        let revoked: Vec<String> = match answer.and_then(parse) {
            Ok(r) => r,
            Err(e) => {
                self.memos.not_denied.forget_tenant(tenant);
                return Err(e);
            }
        };
        self.memos.not_denied.forget(tenant, revoked.iter().filter_map(|s| s.parse().ok()));
        Ok(revoked.len() as u64)
    }

    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool> {
        // The memo remembers "not denied" (`Some(())`).
        let fetch = async {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(format!("{}deny:{sid}", self.ns(tenant)));
            let n: i64 = parse(self.query(cmd).await?)?;
            Ok::<_, Error>((n == 0).then_some(()))
        };
        Ok(self.memos.not_denied.get_or_fetch(tenant, sid.0, fetch).await?.is_none())
    }

    async fn purge_tenant(&self, tenant: TenantId) -> Result<()> {
        // All of the tenant's keys share its hash tag, hence one slot, hence
        // one node: scan that node only. The prefix holds no glob characters
        // (`check_prefix`) and braces are not special in a MATCH pattern.
        let ns = self.ns(tenant);
        let pattern = format!("{ns}*");
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT);
            let mut conn = self.conn.clone();
            let (next, keys): (u64, Vec<String>) =
                parse(bounded(async { conn.query_on_slot_of(&cmd, &ns).await }).await?)?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&keys);
                self.query(unlink).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        check_kind(kind)?;
        let key = format!("{}once:{kind}:{id}", self.ns(tenant));
        let ttl = ttl_ms(ttl).to_string();
        let n: i64 = parse(self.eval(&PUT_ONCE, &[&key], &[value, &ttl]).await?)?;
        Ok(n == 1)
    }

    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        let key = format!("{}once:{kind}:{id}", self.ns(tenant));
        parse(self.eval(&TAKE_ONCE, &[&key], &[]).await?)
    }

    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(format!("{}once:{kind}:{id}", self.ns(tenant))).arg("v");
        parse(self.query(cmd).await?)
    }

    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>> {
        check_kind(kind)?;
        let key = format!("{}once:{kind}:{id}", self.ns(tenant));
        let max = max.to_string();
        let n: Option<i64> = parse(self.eval(&COUNT_ATTEMPT, &[&key], &[&max]).await?)?;
        n.map(|n| u32::try_from(n).map_err(|_| Error::Internal("redis: attempt count out of range".into()))).transpose()
    }

    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool> {
        check_step(step)?;
        let key = format!("{}ctr:{key}", self.ns(tenant));
        let step = step.to_string();
        let n: i64 = parse(self.eval(&ADVANCE, &[&key], &[&step]).await?)?;
        Ok(n == 1)
    }

    async fn rate_check(
        &self,
        tenant: TenantId,
        key: &str,
        limit: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<RateDecision> {
        let p = match gcra::plan(limit, period, now_ms) {
            Plan::Fixed(decision) => return Ok(decision),
            Plan::Check(p) => p,
        };
        let key = format!("{}rl:{key}", self.ns(tenant));
        let args = [p.now_us.to_string(), p.interval_us.to_string(), p.tolerance_us.to_string()];
        let (allowed, n): (i64, i64) = parse(self.eval(&RATE, &[&key], &args.each_ref().map(String::as_str)).await?)?;
        let out_of_range = || Error::Internal("redis: rate answer out of range".into());
        Ok(if allowed == 1 {
            RateDecision::Allowed { remaining: u32::try_from(n).map_err(|_| out_of_range())? }
        } else {
            RateDecision::Limited { retry_after_ms: u64::try_from(n).map_err(|_| out_of_range())? }
        })
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}rl:{key}", self.ns(tenant)));
        self.query(cmd).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_url_is_one_node_and_a_list_is_a_cluster() {
        assert!(matches!(parse_target("redis://127.0.0.1:6379/2", None), Ok(Target::Single(_))));
        assert!(matches!(parse_target(" redis://h:6380 ", None), Ok(Target::Single(_))));
        // TLS (rustls, webpki roots).
        assert!(matches!(parse_target("rediss://h:6380", None), Ok(Target::Single(_))));
        assert!(matches!(parse_target("rediss+cluster://h1:7000,h2:7001", None), Ok(Target::Cluster(..))));
        for cluster in [
            "redis+cluster://h1:7000",
            "redis+cluster://user:pw@h1:7000,h2:7001,h3:7002",
            "redis://h1:7000,redis://h2:7001",
        ] {
            assert!(matches!(parse_target(cluster, None), Ok(Target::Cluster(..))), "{cluster}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        for bad in ["", "http://:hunter2@h:1", "redis://:hunter2@h:notaport", "redis+cluster://"] {
            match parse_target(bad, None) {
                Err(Error::Misconfigured(msg)) => assert!(!msg.contains("hunter2"), "{msg}"),
                Err(e) => panic!("{bad:?}: {e:?}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
    }
}
