//! The token store: short-lived shared state that every replica must see at
//! once. Sessions (refresh-token families, each with the generation of its
//! current refresh token), the per-session access-token deny list,
//! rate-limit counters, MFA challenges, OAuth state and one-time login codes.
//!
//! Three backends behind one trait: Redis (production; every key carries the
//! `{tenant}` hash tag so Redis Cluster keeps a tenant's keys in one slot, and
//! every multi-key change is one Lua script, so one round trip and atomic),
//! SQLite (the embedded default's durable file) and an in-process store.
//!
//! This crate stores sessions, keyed hashes and records; it never sees a raw
//! token and knows nothing of HTTP or GraphQL.
//!
//! Layout:
//! - [`model`]: the records stored (`SessionRecord`, `RotateOutcome`, ...).
//! - [`memory`]: the in-process backend ([`MemoryTokenStore`]).
//! - [`redis_store`]: the Redis backend ([`RedisTokenStore`]), its key layout
//!   and its Lua scripts.
//! - [`sqlite`]: the embedded default's durable backend ([`SqliteTokenStore`]).
//! - [`memo`]: the memories of "not revoked" and of user rows that pushed
//!   notices keep current ([`Memos`], [`Notice`]).
//! - `gcra` (private): the rate-limit arithmetic the backends share.
//!
//! Every backend passes the same test suite (`tests/store.rs`), which is the
//! executable form of the contract below.

mod gcra;
pub mod memo;
pub mod memory;
pub mod model;
pub mod redis_store;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};

pub use memo::{Memo, Memos, Notice};
pub use memory::MemoryTokenStore;
pub use model::*;
pub use redis_store::RedisTokenStore;
pub use sqlite::SqliteTokenStore;

/// How long a session revoked for refresh-token reuse stays on the deny list.
/// [`TokenStore::rotate_refresh`] has no `deny_ttl` parameter, so both
/// backends use the longest access-token lifetime a tenant may configure
/// (1 to 60 minutes), plus the verifier's expiry leeway and a margin for
/// clock skew between replicas: no access token of the stolen family outlives
/// its deny entry.
pub const REUSE_DENY_TTL: Duration = Duration::from_secs(
    authd_core::settings::MAX_ACCESS_TOKEN_MINUTES as u64 * 60 + authd_core::keys::EXP_LEEWAY_SECONDS as u64 + 300,
);

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The store did not answer (connection refused, timeout).
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something we cannot interpret.
    #[error("token store error: {0}")]
    Internal(String),
    /// The store is configured in a way authd refuses (e.g. an evicting Redis).
    #[error("{0}")]
    Misconfigured(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for authd_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(c) => authd_core::Error::Unavailable(c),
            Error::Internal(c) | Error::Misconfigured(c) => authd_core::Error::Internal(c),
        }
    }
}

/// The shared, expiring state of every tenant. Every method takes the
/// tenant, and every key a backend writes is scoped by it.
///
/// Hashes passed in (a [`RefreshKey::Hashed`], ids of single-use records,
/// ...) are already keyed hashes (HMAC) computed by the caller, and refresh
/// tokens reach it as their session and generation: the store never sees a
/// raw secret.
///
/// Every method is atomic: a backend applies each call as one indivisible
/// step (one Lua script on Redis, one critical section in memory), so
/// concurrent calls from any number of replicas never interleave inside one.
/// TTLs are kept to the millisecond: shorter ones are rounded up to one
/// millisecond, and longer than about 35,000 years down to that.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Answers when the store is reachable (readiness).
    async fn ping(&self) -> Result<()>;

    // ---- change notices between replicas ----

    /// Tells every replica sharing this store that `tenant`'s configuration
    /// changed (OAuth providers, ...), so that they reload it now rather than
    /// at their next periodic reload. Best effort: a lost notice only delays
    /// the change to that reload. The in-process store has no other replica.
    async fn publish_change(&self, _tenant: TenantId) -> Result<()> {
        Ok(())
    }

    /// Tenants whose configuration another replica changed, as announced by
    /// [`TokenStore::publish_change`]; `None` when the backend has no such
    /// channel.
    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<TenantId>> {
        None
    }

    /// Tells every replica sharing this store that a user's row changed
    /// (`None`: any user of the tenant), so that they forget it from their
    /// [`Memos::users`]. The caller forgets it from its own memo first.
    async fn publish_user_change(&self, _tenant: TenantId, _user: Option<UserId>) -> Result<()> {
        Ok(())
    }

    /// The memories this store keeps current for its callers: sessions known
    /// not to be revoked (consulted by [`TokenStore::is_session_denied`]
    /// itself) and user rows (filled and read by the caller, forgotten on
    /// [`TokenStore::publish_user_change`]). They are live only while every
    /// change can reach them (see [`memo`]).
    fn memos(&self) -> &Memos;

    // ---- sessions and refresh tokens ----

    /// Creates a session; its first refresh token is generation
    /// [`FIRST_GENERATION`]. The session expires after `ttl` unless refreshed
    /// (each rotation extends it to `ttl`).
    async fn create_session(&self, tenant: TenantId, session: &SessionRecord, ttl: Duration) -> Result<()>;

    /// Atomically exchanges the presented token `old` for its
    /// [`RefreshKey::successor`] (one round trip):
    /// - the current token of a live session: the session moves on to the
    ///   successor, `last_used_at` is set to `now`, and the session is
    ///   returned;
    /// - a token that this session already rotated away: the whole session is
    ///   revoked (as by [`TokenStore::revoke_session`]) and `Reused` returned;
    /// - anything else (unknown, a generation not issued yet, expired or
    ///   revoked session): `NotFound`.
    ///
    /// Two concurrent calls with the same `old` yield one `Rotated` and one
    /// `Reused`. A session revoked for reuse stays on the deny list for
    /// [`REUSE_DENY_TTL`]. A rotated-away token is recognised as long as its
    /// session lives, that is at least for `ttl` after it was issued; a
    /// token from before tokens named their session ([`RefreshKey::Hashed`])
    /// for `ttl` after it was issued.
    ///
    /// With `limit`, the rotation of a live session's current token first
    /// counts one request against that limit (GCRA, as
    /// [`TokenStore::rate_check`] under the key `{key_prefix}{sid}`), in the
    /// same atomic step, and answers `Limited` without rotating when it is
    /// exhausted. Reused and unknown tokens count nothing.
    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old: RefreshKey<'_>,
        now: i64,
        ttl: Duration,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<RotateOutcome>;

    /// Looks up the live session whose *current* refresh token is `key`.
    async fn session_by_refresh(&self, tenant: TenantId, key: RefreshKey<'_>) -> Result<Option<SessionRecord>>;

    async fn get_session(&self, tenant: TenantId, sid: SessionId) -> Result<Option<SessionRecord>>;

    /// The user's live sessions, in creation order.
    async fn list_sessions(&self, tenant: TenantId, user: UserId) -> Result<Vec<SessionRecord>>;

    /// Revokes one session: its refresh tokens stop working and its `sid` is
    /// put on the deny list for `deny_ttl` (the longest access-token
    /// lifetime). Returns whether a live session was revoked. Idempotent; the
    /// `sid` is put on the deny list even if no live session had it (a deny
    /// entry already there is never shortened).
    async fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> Result<bool>;

    /// Revokes every live session of the user except `keep` (if given).
    /// Returns how many were revoked.
    async fn revoke_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        deny_ttl: Duration,
    ) -> Result<u64>;

    /// Whether access tokens carrying `sid` must be refused.
    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool>;

    /// Removes every key of the tenant (tenant deletion).
    async fn purge_tenant(&self, tenant: TenantId) -> Result<()>;

    // ---- single-use records (MFA challenges, OAuth state, login codes) ----

    /// Stores `value` under (`kind`, `id`) for `ttl`. Fails with `false` if
    /// the id already exists.
    ///
    /// `kind` is a constant chosen by the code (`"mfa"`, `"oauth_state"`, ...)
    /// and must not contain `:`, so that no `id` (which may come from a
    /// client) can reach another kind's records; a `kind` with `:` is refused
    /// with [`Error::Internal`] by every single-use method.
    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool>;

    /// Atomically reads and deletes (`kind`, `id`): at most one caller ever
    /// gets the value.
    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>>;

    /// Reads (`kind`, `id`) without consuming it.
    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>>;

    /// Atomically increments the attempt counter of (`kind`, `id`) and, when
    /// it reaches `max`, deletes the record. Returns the new count, or `None`
    /// if the record does not exist.
    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>>;

    /// Atomically sets `key` to `step` only if `step` is greater than the
    /// value stored (RFC 6238 §5.2: a TOTP step is accepted once). Returns
    /// whether it was set. The value never expires (it is removed only by
    /// [`TokenStore::purge_tenant`]). `step` must lie within ±2^53 (Lua's
    /// exact integers); anything else is refused with [`Error::Internal`].
    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool>;

    // ---- rate limiting ----

    /// GCRA: one request against the limit `limit` per `period` with burst
    /// `limit`, under `key`. `now_ms` is the caller's clock (Unix
    /// milliseconds, injectable in tests). Atomic across replicas.
    ///
    /// From a clean key, exactly `limit` requests at the same instant are
    /// allowed; the next is `Limited` with `retry_after_ms` =
    /// `period / limit` (rounded up to the next microsecond, then to the next
    /// millisecond), and one request is allowed again from then on. A refused
    /// request does not consume anything. `limit == 0` refuses everything
    /// (retry after `period`); a zero `period` allows everything.
    async fn rate_check(
        &self,
        tenant: TenantId,
        key: &str,
        limit: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<RateDecision>;

    /// Clears a rate-limit key (e.g. failures after a success).
    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()>;
}

/// Refuses a single-use `kind` that could collide with another kind's keys.
pub(crate) fn check_kind(kind: &str) -> Result<()> {
    if kind.is_empty() || kind.contains(':') {
        return Err(Error::Internal(format!("single-use kind {kind:?} must be non-empty and contain no ':'")));
    }
    Ok(())
}

/// The largest magnitude Lua (doubles) holds exactly; both backends refuse
/// counters beyond it so that they agree.
const MAX_EXACT_STEP: u64 = 1 << 53;

pub(crate) fn check_step(step: i64) -> Result<()> {
    if step.unsigned_abs() > MAX_EXACT_STEP {
        return Err(Error::Internal(format!("counter step {step} is out of range")));
    }
    Ok(())
}

/// The longest TTL kept (about 35,000 years): `Duration::MAX` means "for
/// ever" to a caller, and must neither overflow Redis's expiry arithmetic nor
/// leave Lua's exact integers.
const MAX_TTL_MS: u64 = 1 << 50;

/// A TTL in whole milliseconds, at least one (Redis refuses `PX 0`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

#[cfg(test)]
mod tests {
    use super::REUSE_DENY_TTL;
    use authd_core::keys::EXP_LEEWAY_SECONDS;
    use authd_core::settings::MAX_ACCESS_TOKEN_MINUTES;

    #[test]
    fn a_reuse_revocation_outlives_the_longest_access_token_and_its_leeway() {
        let longest = u64::from(MAX_ACCESS_TOKEN_MINUTES) * 60 + EXP_LEEWAY_SECONDS.unsigned_abs();
        assert!(REUSE_DENY_TTL.as_secs() > longest, "{REUSE_DENY_TTL:?} vs {longest}s");
    }
}
