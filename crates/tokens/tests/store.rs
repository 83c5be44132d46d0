//! The `TokenStore` contract, as executable tests. Every test function below
//! takes an `Arc<dyn TokenStore>` and runs three times: against the
//! in-process store (`in_memory::*`), against Redis (`on_redis::*`) and
//! against the embedded default's SQLite file (`on_sqlite::*`).
//!
//! Redis is the one at `REDIS_URL` (default `redis://127.0.0.1:6379`; a
//! `redis+cluster://` URL works too). It is required: if it does not answer,
//! the Redis variants fail, they are not skipped. Each test works under its
//! own key prefix and fresh tenants, so tests run in parallel and leave
//! nothing behind (each Redis variant deletes its prefix's keys at the end,
//! pass or fail).

// A test binary: the contract functions are plain `async fn`s (not `#[test]`,
// which `clippy.toml` already exempts), and failing loudly is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authd_core::{SessionId, TenantId, UserId};
use authd_tokens::{
    Error, FIRST_GENERATION, MemoryTokenStore, REUSE_DENY_TTL, RateDecision, RedisTokenStore, RefreshKey,
    RotateOutcome, SessionLimit, SessionRecord, TokenStore,
};
use redis::Value;
use tokio::sync::Barrier;
use uuid::Uuid;

type Store = Arc<dyn TokenStore>;

const TTL: Duration = Duration::from_secs(600);
const DENY: Duration = Duration::from_secs(900);

// ---- fixtures ----

fn memory_store() -> Store {
    Arc::new(MemoryTokenStore::new())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis store under a fresh key prefix, whose keys are deleted when the
/// fixture is dropped.
struct RedisFixture {
    store: Store,
    prefix: String,
}

impl RedisFixture {
    async fn new() -> Self {
        let prefix = format!("authd-test-{}", Uuid::new_v4().simple());
        let store = RedisTokenStore::connect(&redis_url(), &prefix)
            .await
            .unwrap_or_else(|e| panic!("these tests need the Redis at REDIS_URL, which failed: {e}"));
        Self { store: Arc::new(store), prefix }
    }
}

impl Drop for RedisFixture {
    // Also runs while a failed test unwinds, so failures leave nothing behind
    // either. Synchronous, hence no runtime needed; errors are ignored (a
    // panic here would abort the test binary).
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let clean = |conn: &mut dyn redis::ConnectionLike| -> redis::RedisResult<()> {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(conn)?;
            for key in keys {
                redis::cmd("DEL").arg(key).query::<i64>(conn)?;
            }
            Ok(())
        };
        let url = redis_url();
        let _ = match cluster_nodes(&url) {
            Some(nodes) => redis::cluster::ClusterClient::new(nodes)
                .and_then(|c| c.get_connection())
                .and_then(|mut c| clean(&mut c)),
            None => redis::Client::open(url).and_then(|c| c.get_connection()).and_then(|mut c| clean(&mut c)),
        };
    }
}

/// The seed nodes, if `url` names a cluster (as `RedisTokenStore` reads it).
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    if !url.contains(',') && !url.contains("+cluster://") {
        return None;
    }
    Some(
        url.replace("+cluster://", "://")
            .split(',')
            .map(|n| if n.contains("://") { n.to_owned() } else { format!("redis://{n}") })
            .collect(),
    )
}

/// Runs `cmd` on the test Redis directly (bypassing the store), on every
/// primary for keyless commands on a cluster.
async fn raw_query<T: redis::FromRedisValue>(cmd: redis::Cmd) -> T {
    let url = redis_url();
    match cluster_nodes(&url) {
        Some(nodes) => {
            let client = redis::cluster::ClusterClient::new(nodes).unwrap();
            let mut conn = client.get_async_connection().await.unwrap();
            cmd.query_async(&mut conn).await.unwrap()
        }
        None => {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            cmd.query_async(&mut conn).await.unwrap()
        }
    }
}

async fn raw_keys(pattern: &str) -> Vec<String> {
    raw_query(redis::cmd("KEYS").arg(pattern).clone()).await
}

/// Instantiates each contract test for both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::memory_store()).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let fixture = super::RedisFixture::new().await;
                    super::$name(fixture.store.clone()).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, dir) = super::sqlite_store().await;
                    super::$name(store).await;
                    let _ = std::fs::remove_dir_all(dir);
                }
            )*
        }
    };
}

/// The embedded default's durable store, in a fresh file.
async fn sqlite_store() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("authd-tokens-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = authd_tokens::SqliteTokenStore::open(&dir.join("tokens.db")).await.unwrap();
    (Arc::new(store), dir)
}

/// What the SQLite store holds survives closing and reopening the file: a
/// restart keeps sessions, revocations, limits and single-use records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_state_survives_a_reopen() {
    let dir = std::env::temp_dir().join(format!("authd-tokens-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.db");
    let (t, user) = (TenantId::new(), UserId::new());
    let live = record(user, 1_700_000_000);
    let gone = record(user, 1_700_000_001);
    {
        let s = authd_tokens::SqliteTokenStore::open(&path).await.unwrap();
        s.create_session(t, &live, TTL).await.unwrap();
        s.create_session(t, &gone, TTL).await.unwrap();
        assert!(s.revoke_session(t, gone.id, DENY).await.unwrap());
        assert!(s.put_once(t, "mfa", "challenge", "value", TTL).await.unwrap());
        for _ in 0..2 {
            s.rate_check(t, "login", 2, Duration::from_secs(60), 1_000).await.unwrap();
        }
    }
    let s = authd_tokens::SqliteTokenStore::open(&path).await.unwrap();
    assert_eq!(s.get_session(t, live.id).await.unwrap(), Some(live.clone()));
    assert!(s.is_session_denied(t, gone.id).await.unwrap());
    assert!(!s.is_session_denied(t, live.id).await.unwrap());
    assert_eq!(s.peek(t, "mfa", "challenge").await.unwrap().as_deref(), Some("value"));
    assert!(matches!(
        s.rate_check(t, "login", 2, Duration::from_secs(60), 1_000).await.unwrap(),
        RateDecision::Limited { .. }
    ));
    assert!(matches!(
        s.rotate_refresh(t, first(&live), 1_700_000_100, TTL, None).await.unwrap(),
        RotateOutcome::Rotated(_)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

contract!(
    a_new_session_rotates_and_records_its_last_use,
    an_unknown_refresh_token_is_not_found,
    refresh_token_reuse_revokes_the_whole_session,
    two_concurrent_rotations_give_one_rotated_and_one_reused,
    many_concurrent_rotations_give_exactly_one_rotated,
    session_by_refresh_finds_only_the_current_token,
    revoke_session_denies_its_access_tokens_and_stops_its_refresh,
    revoke_user_sessions_keeps_the_given_session,
    list_sessions_returns_live_sessions_in_creation_order,
    tenants_are_isolated,
    a_single_use_record_is_stored_once_and_taken_once,
    take_once_under_concurrency_gives_the_value_to_one_caller,
    count_attempt_deletes_the_record_at_max,
    single_use_kinds_with_a_colon_are_refused,
    advance_counter_accepts_each_step_once,
    advance_counter_under_concurrency_accepts_one_caller,
    rate_check_allows_a_burst_of_limit_then_limits_until_retry_after,
    rate_limits_are_per_key_and_reset_clears_them,
    records_expire_after_their_ttl,
    an_endless_ttl_is_kept_not_refused,
    purge_tenant_removes_only_that_tenant,
    a_rotation_counts_against_its_session_limit,
    every_revocation_is_seen_at_once_after_a_remembered_not_denied,
);

// ---- helpers ----

fn record(user: UserId, created_at: i64) -> SessionRecord {
    SessionRecord {
        id: SessionId::new(),
        user_id: user,
        created_at,
        last_used_at: created_at,
        user_agent: Some("Mozilla/5.0 (test)".to_owned()),
        ip: Some("203.0.113.7".to_owned()),
        amr: vec!["pwd".to_owned(), "otp".to_owned()],
    }
}

/// A stand-in for an HMAC of a refresh token: 64 hex characters.
fn hash() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// The first refresh token of a session.
fn first(rec: &SessionRecord) -> RefreshKey<'static> {
    RefreshKey::Named { sid: rec.id, generation: FIRST_GENERATION }
}

/// The token a rotation of `key` issues.
fn next(key: RefreshKey<'static>) -> RefreshKey<'static> {
    let RefreshKey::Named { sid, .. } = key else { panic!("a test's token names its session") };
    key.successor(sid)
}

/// A token of no session.
fn unknown() -> RefreshKey<'static> {
    RefreshKey::Named { sid: SessionId::new(), generation: FIRST_GENERATION }
}

async fn new_session(
    s: &Store,
    tenant: TenantId,
    user: UserId,
    created_at: i64,
) -> (SessionRecord, RefreshKey<'static>) {
    let rec = record(user, created_at);
    s.create_session(tenant, &rec, TTL).await.unwrap();
    let key = first(&rec);
    (rec, key)
}

// ---- sessions and refresh tokens ----

async fn a_new_session_rotates_and_records_its_last_use(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1_000).await;
    assert_eq!(s.get_session(t, rec.id).await.unwrap(), Some(rec.clone()));

    let h2 = next(h1);
    let RotateOutcome::Rotated(rotated) = s.rotate_refresh(t, h1, 2_000, TTL, None).await.unwrap() else {
        panic!("the current token must rotate");
    };
    assert_eq!(rotated, SessionRecord { last_used_at: 2_000, ..rec.clone() });
    assert_eq!(s.get_session(t, rec.id).await.unwrap(), Some(rotated));

    // The new token rotates in turn.
    let h3 = next(h2);
    assert!(
        matches!(s.rotate_refresh(t, h2, 3_000, TTL, None).await.unwrap(), RotateOutcome::Rotated(r) if r.last_used_at == 3_000)
    );
    assert_eq!(s.session_by_refresh(t, h3).await.unwrap().map(|r| r.last_used_at), Some(3_000));
    assert!(!s.is_session_denied(t, rec.id).await.unwrap());
}

async fn an_unknown_refresh_token_is_not_found(s: Store) {
    let t = TenantId::new();
    assert_eq!(s.rotate_refresh(t, unknown(), 1, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.session_by_refresh(t, unknown()).await.unwrap(), None);
    let h = hash();
    assert_eq!(s.rotate_refresh(t, RefreshKey::Hashed(&h), 1, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.session_by_refresh(t, RefreshKey::Hashed(&h)).await.unwrap(), None);
    // A generation not issued yet is unknown, not a reuse.
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1).await;
    assert_eq!(s.rotate_refresh(t, next(next(h1)), 2, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.session_by_refresh(t, next(h1)).await.unwrap(), None);
    assert!(!s.is_session_denied(t, rec.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, h1, 3, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
    assert_eq!(s.get_session(t, SessionId::new()).await.unwrap(), None);
}

async fn refresh_token_reuse_revokes_the_whole_session(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1_000).await;
    let (other, other_h) = new_session(&s, t, u, 1_001).await;
    let h2 = next(h1);
    assert!(matches!(s.rotate_refresh(t, h1, 2_000, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));

    // The thief (or the victim) presents the rotated-away token.
    assert_eq!(
        s.rotate_refresh(t, h1, 3_000, TTL, None).await.unwrap(),
        RotateOutcome::Reused { session: rec.id, user: u }
    );
    // The whole family is gone: the current token no longer works either,
    // and access tokens of the session are refused.
    assert_eq!(s.rotate_refresh(t, h2, 3_001, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.rotate_refresh(t, h1, 3_002, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.session_by_refresh(t, h2).await.unwrap(), None);
    assert_eq!(s.get_session(t, rec.id).await.unwrap(), None);
    assert!(s.is_session_denied(t, rec.id).await.unwrap());
    // The user's other session is untouched.
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![other.clone()]);
    assert!(!s.is_session_denied(t, other.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, other_h, 3_003, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
}

/// A rotation with a limit counts against `{key_prefix}{sid}` in the same
/// step: within the limit it rotates, beyond it it changes nothing and says
/// when to retry; reused and unknown tokens are not limited.
async fn a_rotation_counts_against_its_session_limit(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1).await;
    let now_ms = 1_700_000_000_000;
    let limit = SessionLimit { key_prefix: "refresh:", limit: 2, period: Duration::from_secs(60), now_ms };
    let (h2, h3) = (next(h1), next(next(h1)));
    assert!(matches!(s.rotate_refresh(t, h1, 2, TTL, Some(&limit)).await.unwrap(), RotateOutcome::Rotated(_)));
    assert!(matches!(s.rotate_refresh(t, h2, 3, TTL, Some(&limit)).await.unwrap(), RotateOutcome::Rotated(_)));
    // The third within the minute: refused, retry after 30 s, nothing rotated.
    assert_eq!(
        s.rotate_refresh(t, h3, 4, TTL, Some(&limit)).await.unwrap(),
        RotateOutcome::Limited { retry_after_ms: 30_000 }
    );
    assert_eq!(s.session_by_refresh(t, h3).await.unwrap().map(|r| r.id), Some(rec.id), "still current");
    // The same key as `rate_check` uses: it is exhausted there too.
    let key = format!("refresh:{}", rec.id);
    assert!(matches!(
        s.rate_check(t, &key, 2, Duration::from_secs(60), now_ms).await.unwrap(),
        RateDecision::Limited { .. }
    ));
    // Without a limit it rotates; half a minute later the limit allows one more.
    let h4 = next(h3);
    assert!(matches!(s.rotate_refresh(t, h3, 5, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
    let later = SessionLimit { now_ms: now_ms + 30_000, ..limit };
    let h5 = next(h4);
    assert!(matches!(s.rotate_refresh(t, h4, 6, TTL, Some(&later)).await.unwrap(), RotateOutcome::Rotated(_)));
    // A limit of zero refuses every rotation of a live token, but a reused
    // token is still caught (and revokes the session), and an unknown one is
    // still unknown.
    let zero = SessionLimit { limit: 0, ..limit };
    assert!(matches!(s.rotate_refresh(t, h5, 7, TTL, Some(&zero)).await.unwrap(), RotateOutcome::Limited { .. }));
    assert_eq!(s.rotate_refresh(t, unknown(), 7, TTL, Some(&zero)).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(
        s.rotate_refresh(t, h1, 8, TTL, Some(&zero)).await.unwrap(),
        RotateOutcome::Reused { session: rec.id, user: u }
    );
    assert!(s.is_session_denied(t, rec.id).await.unwrap());
}

/// A store may remember that a session is not revoked (its memo), but each
/// way of revoking it (logout, logout everywhere, refresh-token reuse) is
/// seen by the very next check.
async fn every_revocation_is_seen_at_once_after_a_remembered_not_denied(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (a, _) = new_session(&s, t, u, 1).await;
    let (b, _) = new_session(&s, t, u, 2).await;
    let (c, c1) = new_session(&s, t, UserId::new(), 3).await;
    s.rotate_refresh(t, c1, 4, TTL, None).await.unwrap();
    for _ in 0..2 {
        for sid in [a.id, b.id, c.id] {
            assert!(!s.is_session_denied(t, sid).await.unwrap());
        }
    }
    assert!(s.revoke_session(t, a.id, DENY).await.unwrap());
    assert!(s.is_session_denied(t, a.id).await.unwrap());
    assert!(!s.is_session_denied(t, b.id).await.unwrap());
    assert_eq!(s.revoke_user_sessions(t, u, None, DENY).await.unwrap(), 1);
    assert!(s.is_session_denied(t, b.id).await.unwrap());
    assert!(!s.is_session_denied(t, c.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, c1, 5, TTL, None).await.unwrap(), RotateOutcome::Reused { .. }));
    assert!(s.is_session_denied(t, c.id).await.unwrap());
}

/// Races `n` rotations of the same token, lined up on a barrier.
async fn race_rotations(s: &Store, t: TenantId, old: RefreshKey<'static>, n: usize) -> Vec<RotateOutcome> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.rotate_refresh(t, old, 2_000, TTL, None).await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

async fn two_concurrent_rotations_give_one_rotated_and_one_reused(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    for round in 0..25 {
        let (rec, h) = new_session(&s, t, u, round).await;
        let outcomes = race_rotations(&s, t, h, 2).await;
        let rotated = outcomes.iter().filter(|o| matches!(o, RotateOutcome::Rotated(_))).count();
        let reused: Vec<_> = outcomes.iter().filter(|o| matches!(o, RotateOutcome::Reused { .. })).collect();
        assert_eq!(rotated, 1, "round {round}: {outcomes:?}");
        assert_eq!(reused, vec![&RotateOutcome::Reused { session: rec.id, user: u }], "round {round}");
        assert!(s.is_session_denied(t, rec.id).await.unwrap());
    }
}

async fn many_concurrent_rotations_give_exactly_one_rotated(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (_, h) = new_session(&s, t, u, 1).await;
    let outcomes = race_rotations(&s, t, h, 32).await;
    let count = |f: fn(&RotateOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    assert_eq!(count(|o| matches!(o, RotateOutcome::Rotated(_))), 1, "{outcomes:?}");
    // The first loser revokes the session; later ones find nothing left.
    assert_eq!(count(|o| matches!(o, RotateOutcome::Reused { .. })), 1, "{outcomes:?}");
    assert_eq!(count(|o| *o == RotateOutcome::NotFound), 30, "{outcomes:?}");
}

async fn session_by_refresh_finds_only_the_current_token(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1_000).await;
    assert_eq!(s.session_by_refresh(t, h1).await.unwrap(), Some(rec.clone()));
    let h2 = next(h1);
    s.rotate_refresh(t, h1, 2_000, TTL, None).await.unwrap();
    assert_eq!(s.session_by_refresh(t, h1).await.unwrap(), None, "a rotated-away token is not current");
    assert_eq!(s.session_by_refresh(t, h2).await.unwrap().map(|r| r.id), Some(rec.id));
    // Looking up is not using: the old token is still detected as reused.
    assert!(matches!(s.rotate_refresh(t, h1, 3_000, TTL, None).await.unwrap(), RotateOutcome::Reused { .. }));
}

async fn revoke_session_denies_its_access_tokens_and_stops_its_refresh(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h) = new_session(&s, t, u, 1).await;
    let (other, other_h) = new_session(&s, t, u, 2).await;
    assert!(!s.is_session_denied(t, rec.id).await.unwrap());

    assert!(s.revoke_session(t, rec.id, DENY).await.unwrap());
    assert!(s.is_session_denied(t, rec.id).await.unwrap());
    assert_eq!(s.rotate_refresh(t, h, 3, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.get_session(t, rec.id).await.unwrap(), None);
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![other.clone()]);
    // Idempotent: nothing live to revoke any more, still denied.
    assert!(!s.revoke_session(t, rec.id, DENY).await.unwrap());
    assert!(s.is_session_denied(t, rec.id).await.unwrap());

    assert!(!s.is_session_denied(t, other.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, other_h, 4, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
}

async fn revoke_user_sessions_keeps_the_given_session(s: Store) {
    let (t, u, someone_else) = (TenantId::new(), UserId::new(), UserId::new());
    let (a, a_h) = new_session(&s, t, u, 1).await;
    let (b, b_h) = new_session(&s, t, u, 2).await;
    let (kept, kept_h) = new_session(&s, t, u, 3).await;
    let (theirs, theirs_h) = new_session(&s, t, someone_else, 4).await;

    assert_eq!(s.revoke_user_sessions(t, u, Some(kept.id), DENY).await.unwrap(), 2);
    for (rec, h) in [(&a, &a_h), (&b, &b_h)] {
        assert!(s.is_session_denied(t, rec.id).await.unwrap());
        assert_eq!(s.rotate_refresh(t, *h, 5, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    }
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![kept.clone()]);
    assert!(!s.is_session_denied(t, kept.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, kept_h, 6, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
    assert!(!s.is_session_denied(t, theirs.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, theirs_h, 7, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));

    // Without `keep`, every session goes; then there is nothing left to count.
    assert_eq!(s.revoke_user_sessions(t, u, None, DENY).await.unwrap(), 1);
    assert!(s.is_session_denied(t, kept.id).await.unwrap());
    assert_eq!(s.revoke_user_sessions(t, u, None, DENY).await.unwrap(), 0);
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![]);
}

async fn list_sessions_returns_live_sessions_in_creation_order(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![]);
    // Created out of order, and one without user agent, IP or methods.
    let (late, _) = new_session(&s, t, u, 300).await;
    let (early, early_h) = new_session(&s, t, u, 100).await;
    let bare = SessionRecord { user_agent: None, ip: None, amr: vec![], ..record(u, 200) };
    s.create_session(t, &bare, TTL).await.unwrap();
    let (_, _) = new_session(&s, t, UserId::new(), 150).await;

    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![early.clone(), bare.clone(), late.clone()]);

    // A rotation shows in the list; a revoked session leaves it.
    s.rotate_refresh(t, early_h, 400, TTL, None).await.unwrap();
    s.revoke_session(t, bare.id, DENY).await.unwrap();
    let early = SessionRecord { last_used_at: 400, ..early };
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![early, late]);
}

async fn tenants_are_isolated(s: Store) {
    let (a, b, u) = (TenantId::new(), TenantId::new(), UserId::new());
    let (rec, h) = new_session(&s, a, u, 1).await;

    assert_eq!(s.get_session(b, rec.id).await.unwrap(), None);
    assert_eq!(s.session_by_refresh(b, h).await.unwrap(), None);
    assert_eq!(s.list_sessions(b, u).await.unwrap(), vec![]);
    assert_eq!(s.rotate_refresh(b, h, 2, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert!(!s.revoke_session(b, rec.id, DENY).await.unwrap());
    assert_eq!(s.revoke_user_sessions(b, u, None, DENY).await.unwrap(), 0);
    // B's deny entry for that sid says nothing about A.
    assert!(s.is_session_denied(b, rec.id).await.unwrap());
    assert!(!s.is_session_denied(a, rec.id).await.unwrap());
    // A's session survived all of it.
    assert!(matches!(s.rotate_refresh(a, h, 3, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));

    assert!(s.put_once(a, "mfa", "challenge", "for-a", TTL).await.unwrap());
    assert_eq!(s.peek(b, "mfa", "challenge").await.unwrap(), None);
    assert_eq!(s.take_once(b, "mfa", "challenge").await.unwrap(), None);
    assert_eq!(s.count_attempt(b, "mfa", "challenge", 1).await.unwrap(), None);
    assert!(s.put_once(b, "mfa", "challenge", "for-b", TTL).await.unwrap());
    assert_eq!(s.take_once(a, "mfa", "challenge").await.unwrap().as_deref(), Some("for-a"));
    assert_eq!(s.take_once(b, "mfa", "challenge").await.unwrap().as_deref(), Some("for-b"));

    assert!(s.advance_counter(a, "totp", 10).await.unwrap());
    assert!(s.advance_counter(b, "totp", 10).await.unwrap());

    let period = Duration::from_secs(60);
    assert_eq!(s.rate_check(a, "login", 1, period, 0).await.unwrap(), RateDecision::Allowed { remaining: 0 });
    assert_eq!(s.rate_check(b, "login", 1, period, 0).await.unwrap(), RateDecision::Allowed { remaining: 0 });
}

// ---- single-use records ----

async fn a_single_use_record_is_stored_once_and_taken_once(s: Store) {
    let t = TenantId::new();
    assert!(s.put_once(t, "oauth_state", "st-1", "value-1", TTL).await.unwrap());
    assert!(!s.put_once(t, "oauth_state", "st-1", "other", TTL).await.unwrap(), "ids are never overwritten");
    assert_eq!(s.peek(t, "oauth_state", "st-1").await.unwrap().as_deref(), Some("value-1"));
    assert_eq!(s.peek(t, "oauth_state", "st-1").await.unwrap().as_deref(), Some("value-1"));
    // The same id under another kind is another record.
    assert_eq!(s.peek(t, "login_code", "st-1").await.unwrap(), None);

    assert_eq!(s.take_once(t, "oauth_state", "st-1").await.unwrap().as_deref(), Some("value-1"));
    assert_eq!(s.take_once(t, "oauth_state", "st-1").await.unwrap(), None);
    assert_eq!(s.peek(t, "oauth_state", "st-1").await.unwrap(), None);
    // Ids may hold anything a client sends, `:` included.
    assert!(s.put_once(t, "oauth_state", "a:b*c?[d]", "v", TTL).await.unwrap());
    assert_eq!(s.take_once(t, "oauth_state", "a:b*c?[d]").await.unwrap().as_deref(), Some("v"));
}

async fn take_once_under_concurrency_gives_the_value_to_one_caller(s: Store) {
    let t = TenantId::new();
    for round in 0..5 {
        let id = format!("code-{round}");
        assert!(s.put_once(t, "login_code", &id, "payload", TTL).await.unwrap());
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (s, barrier, id) = (s.clone(), barrier.clone(), id.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.take_once(t, "login_code", &id).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            if let Some(v) = task.await.unwrap() {
                assert_eq!(v, "payload");
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

async fn count_attempt_deletes_the_record_at_max(s: Store) {
    let t = TenantId::new();
    assert_eq!(s.count_attempt(t, "mfa", "missing", 3).await.unwrap(), None);
    assert!(s.put_once(t, "mfa", "ch", "state", TTL).await.unwrap());
    assert_eq!(s.count_attempt(t, "mfa", "ch", 3).await.unwrap(), Some(1));
    assert_eq!(s.count_attempt(t, "mfa", "ch", 3).await.unwrap(), Some(2));
    assert_eq!(s.peek(t, "mfa", "ch").await.unwrap().as_deref(), Some("state"), "still usable below max");
    assert_eq!(s.count_attempt(t, "mfa", "ch", 3).await.unwrap(), Some(3));
    assert_eq!(s.peek(t, "mfa", "ch").await.unwrap(), None, "gone at max");
    assert_eq!(s.count_attempt(t, "mfa", "ch", 3).await.unwrap(), None);
    assert_eq!(s.take_once(t, "mfa", "ch").await.unwrap(), None);
}

async fn single_use_kinds_with_a_colon_are_refused(s: Store) {
    let t = TenantId::new();
    assert!(matches!(s.put_once(t, "mfa:x", "id", "v", TTL).await, Err(Error::Internal(_))));
    assert!(matches!(s.take_once(t, "mfa:x", "id").await, Err(Error::Internal(_))));
    assert!(matches!(s.peek(t, "", "id").await, Err(Error::Internal(_))));
    assert!(matches!(s.count_attempt(t, "a:b", "id", 1).await, Err(Error::Internal(_))));
}

// ---- counters ----

async fn advance_counter_accepts_each_step_once(s: Store) {
    let t = TenantId::new();
    let key = format!("totp:{}", UserId::new());
    assert!(s.advance_counter(t, &key, 56_666_000).await.unwrap());
    assert!(!s.advance_counter(t, &key, 56_666_000).await.unwrap(), "the same step twice");
    assert!(!s.advance_counter(t, &key, 56_665_999).await.unwrap(), "an earlier step");
    assert!(s.advance_counter(t, &key, 56_666_001).await.unwrap());
    assert!(s.advance_counter(t, "negative", -5).await.unwrap());
    assert!(!s.advance_counter(t, "negative", -6).await.unwrap());
    // Exact up to 2^53 on both backends, refused beyond.
    let big = 1_i64 << 53;
    assert!(s.advance_counter(t, "big", big - 1).await.unwrap());
    assert!(s.advance_counter(t, "big", big).await.unwrap());
    assert!(!s.advance_counter(t, "big", big).await.unwrap());
    assert!(matches!(s.advance_counter(t, "big", big + 1).await, Err(Error::Internal(_))));
}

async fn advance_counter_under_concurrency_accepts_one_caller(s: Store) {
    let t = TenantId::new();
    for step in 1..=5 {
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (s, barrier) = (s.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.advance_counter(t, "totp:race", step).await.unwrap()
                })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            accepted += usize::from(task.await.unwrap());
        }
        assert_eq!(accepted, 1, "step {step}");
    }
}

// ---- rate limiting ----

async fn rate_check_allows_a_burst_of_limit_then_limits_until_retry_after(s: Store) {
    let t = TenantId::new();
    let period = Duration::from_secs(10); // 5 per 10 s: one every 2 s
    let t0 = 1_700_000_000_000_i64;
    for remaining in (0..5).rev() {
        assert_eq!(s.rate_check(t, "login:ip", 5, period, t0).await.unwrap(), RateDecision::Allowed { remaining });
    }
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0).await.unwrap(),
        RateDecision::Limited { retry_after_ms: 2_000 }
    );
    // A refused request costs nothing: the wait only shrinks with time.
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0 + 1_500).await.unwrap(),
        RateDecision::Limited { retry_after_ms: 500 }
    );
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0 + 1_999).await.unwrap(),
        RateDecision::Limited { retry_after_ms: 1 }
    );
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0 + 2_000).await.unwrap(),
        RateDecision::Allowed { remaining: 0 }
    );
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0 + 2_000).await.unwrap(),
        RateDecision::Limited { retry_after_ms: 2_000 }
    );
    // After a whole quiet period, the whole burst is back.
    assert_eq!(
        s.rate_check(t, "login:ip", 5, period, t0 + 12_000).await.unwrap(),
        RateDecision::Allowed { remaining: 4 }
    );
}

async fn rate_limits_are_per_key_and_reset_clears_them(s: Store) {
    let t = TenantId::new();
    let period = Duration::from_secs(60);
    let now = 1_700_000_000_000_i64;
    for _ in 0..3 {
        assert!(matches!(s.rate_check(t, "a", 3, period, now).await.unwrap(), RateDecision::Allowed { .. }));
    }
    assert_eq!(s.rate_check(t, "a", 3, period, now).await.unwrap(), RateDecision::Limited { retry_after_ms: 20_000 });
    assert_eq!(s.rate_check(t, "b", 3, period, now).await.unwrap(), RateDecision::Allowed { remaining: 2 });
    s.rate_reset(t, "a").await.unwrap();
    assert_eq!(s.rate_check(t, "a", 3, period, now).await.unwrap(), RateDecision::Allowed { remaining: 2 });
    // Degenerate policies.
    assert_eq!(s.rate_check(t, "c", 0, period, now).await.unwrap(), RateDecision::Limited { retry_after_ms: 60_000 });
    assert_eq!(s.rate_check(t, "c", 4, Duration::ZERO, now).await.unwrap(), RateDecision::Allowed { remaining: 4 });
}

// ---- expiry and purge ----

async fn records_expire_after_their_ttl(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let short = Duration::from_secs(1);
    let rec = record(u, 1);
    s.create_session(t, &rec, short).await.unwrap();
    let h = first(&rec);
    let (long, long_h) = new_session(&s, t, u, 2).await;
    assert!(s.put_once(t, "mfa", "short", "v", short).await.unwrap());
    let (denied, _) = new_session(&s, t, u, 3).await;
    s.revoke_session(t, denied.id, short).await.unwrap();
    assert!(s.is_session_denied(t, denied.id).await.unwrap());

    tokio::time::sleep(Duration::from_millis(1_300)).await;

    assert_eq!(s.get_session(t, rec.id).await.unwrap(), None);
    assert_eq!(s.rotate_refresh(t, h, 4, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.session_by_refresh(t, h).await.unwrap(), None);
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![long.clone()]);
    assert_eq!(s.peek(t, "mfa", "short").await.unwrap(), None);
    assert!(s.put_once(t, "mfa", "short", "again", short).await.unwrap(), "an expired id is free again");
    assert!(!s.is_session_denied(t, denied.id).await.unwrap());
    // Revoking the expired session finds nothing live.
    assert!(!s.revoke_session(t, rec.id, DENY).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, long_h, 5, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
}

async fn an_endless_ttl_is_kept_not_refused(s: Store) {
    let (t, u) = (TenantId::new(), UserId::new());
    let rec = record(u, 1);
    s.create_session(t, &rec, Duration::MAX).await.unwrap();
    let h = first(&rec);
    assert!(matches!(s.rotate_refresh(t, h, 2, Duration::MAX, None).await.unwrap(), RotateOutcome::Rotated(_)));
    assert!(s.put_once(t, "mfa", "x", "v", Duration::MAX).await.unwrap());
    assert!(s.revoke_session(t, rec.id, Duration::MAX).await.unwrap());
    assert!(s.is_session_denied(t, rec.id).await.unwrap());
    assert_eq!(s.peek(t, "mfa", "x").await.unwrap().as_deref(), Some("v"));
}

async fn purge_tenant_removes_only_that_tenant(s: Store) {
    let (gone, kept, u) = (TenantId::new(), TenantId::new(), UserId::new());
    let mut sessions = Vec::new();
    for t in [gone, kept] {
        let (rec, h) = new_session(&s, t, u, 1).await;
        s.revoke_session(t, SessionId::new(), DENY).await.unwrap();
        assert!(s.put_once(t, "mfa", "x", "v", TTL).await.unwrap());
        assert!(s.advance_counter(t, "totp", 7).await.unwrap());
        s.rate_check(t, "login", 1, Duration::from_secs(60), 0).await.unwrap();
        sessions.push((t, rec, h));
    }

    s.purge_tenant(gone).await.unwrap();

    for (t, rec, h) in sessions {
        let alive = t == kept;
        assert_eq!(s.get_session(t, rec.id).await.unwrap().is_some(), alive);
        assert_eq!(s.list_sessions(t, u).await.unwrap().len(), usize::from(alive));
        assert_eq!(s.peek(t, "mfa", "x").await.unwrap().is_some(), alive);
        // A purged counter starts over; a kept one still refuses the step.
        assert_eq!(s.advance_counter(t, "totp", 7).await.unwrap(), !alive);
        let limited = matches!(
            s.rate_check(t, "login", 1, Duration::from_secs(60), 0).await.unwrap(),
            RateDecision::Limited { .. }
        );
        assert_eq!(limited, alive);
        assert_eq!(matches!(s.rotate_refresh(t, h, 2, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)), alive);
    }
    // Purging is idempotent.
    s.purge_tenant(gone).await.unwrap();
}

// ---- memory only: an injected clock instead of sleeping ----

#[tokio::test]
async fn memory_entries_expire_on_the_injected_clock() {
    let start = Instant::now();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset_ms = offset_ms.clone();
        move || start + Duration::from_millis(offset_ms.load(Ordering::SeqCst))
    };
    let s: Store = Arc::new(MemoryTokenStore::with_clock(clock));
    let advance = |ms: u64| offset_ms.fetch_add(ms, Ordering::SeqCst);
    let (t, u) = (TenantId::new(), UserId::new());

    let (rec, h1) = new_session(&s, t, u, 1).await; // TTL: 600 s
    assert!(s.put_once(t, "mfa", "c", "v", Duration::from_secs(300)).await.unwrap());
    s.revoke_session(t, SessionId::new(), REUSE_DENY_TTL).await.unwrap();

    advance(599_000);
    let h2 = next(h1);
    assert!(matches!(s.rotate_refresh(t, h1, 2, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
    assert_eq!(s.peek(t, "mfa", "c").await.unwrap(), None, "the 300 s record is gone");

    // Rotation renewed the session for another 600 s from now.
    advance(599_000);
    assert!(s.get_session(t, rec.id).await.unwrap().is_some());
    assert_eq!(s.session_by_refresh(t, h2).await.unwrap().map(|r| r.id), Some(rec.id));

    advance(2_000);
    assert_eq!(s.get_session(t, rec.id).await.unwrap(), None);
    assert_eq!(s.rotate_refresh(t, h2, 4, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    // With its session gone, a rotated-away token is unknown too.
    assert_eq!(s.rotate_refresh(t, h1, 5, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![]);
}

#[tokio::test]
async fn memory_reuse_denies_for_the_longest_access_token_lifetime() {
    let start = Instant::now();
    let offset_ms = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset_ms = offset_ms.clone();
        move || start + Duration::from_millis(offset_ms.load(Ordering::SeqCst))
    };
    let s: Store = Arc::new(MemoryTokenStore::with_clock(clock));
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1).await;
    s.rotate_refresh(t, h1, 2, TTL, None).await.unwrap();
    assert!(matches!(s.rotate_refresh(t, h1, 3, TTL, None).await.unwrap(), RotateOutcome::Reused { .. }));
    offset_ms.store(REUSE_DENY_TTL.as_millis() as u64 - 1, Ordering::SeqCst);
    assert!(s.is_session_denied(t, rec.id).await.unwrap());
    offset_ms.store(REUSE_DENY_TTL.as_millis() as u64, Ordering::SeqCst);
    assert!(!s.is_session_denied(t, rec.id).await.unwrap());
}

// ---- Redis only ----

#[tokio::test]
async fn redis_connect_fails_fast_when_redis_is_down() {
    let started = Instant::now();
    let err = RedisTokenStore::connect("redis://127.0.0.1:1", "authd-test").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(2_500), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn redis_ping_fails_fast_when_redis_is_down() {
    let s = RedisTokenStore::connect_lazy("redis://127.0.0.1:1", "authd-test").unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let err = s.ping().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(2_500), "took {:?}", started.elapsed());
    }
    let started = Instant::now();
    let err = s.rotate_refresh(TenantId::new(), unknown(), 1, TTL, None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(2_500), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn redis_lazy_store_works_once_redis_answers() {
    let prefix = format!("authd-test-{}", Uuid::new_v4().simple());
    let s = RedisTokenStore::connect_lazy(&redis_url(), &prefix).unwrap();
    s.ping().await.unwrap();
}

#[tokio::test]
async fn redis_refuses_a_key_prefix_that_could_break_the_layout() {
    for bad in ["", "a{b}", "a*", "has space", &"x".repeat(65)] {
        assert!(matches!(RedisTokenStore::connect_lazy(&redis_url(), bad), Err(Error::Misconfigured(_))), "{bad:?}");
    }
}

#[tokio::test]
async fn redis_eviction_policy_check_accepts_the_test_server() {
    let fixture = RedisFixture::new().await;
    let policy: Vec<String> = raw_query(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").clone()).await;
    let s = RedisTokenStore::connect(&redis_url(), &fixture.prefix).await.unwrap();
    let checked = s.check_eviction_policy().await;
    if policy.get(1).map(String::as_str) == Some("noeviction") {
        checked.unwrap();
    } else {
        assert!(matches!(checked, Err(Error::Misconfigured(_))), "{policy:?}: {checked:?}");
    }
}

/// Every key of a tenant sits under `{prefix}:{<tenant>}:`, so one cluster
/// slot holds them all and a purge finds them all.
#[tokio::test]
async fn redis_every_key_carries_the_tenant_hash_tag() {
    let fixture = RedisFixture::new().await;
    let s = fixture.store.clone();
    let (t, u) = (TenantId::new(), UserId::new());
    let (rec, h1) = new_session(&s, t, u, 1).await;
    s.rotate_refresh(t, h1, 2, TTL, None).await.unwrap();
    new_session(&s, t, u, 3).await;
    s.revoke_session(t, rec.id, DENY).await.unwrap();
    s.put_once(t, "mfa", "id", "v", TTL).await.unwrap();
    s.count_attempt(t, "mfa", "id", 5).await.unwrap();
    s.advance_counter(t, "totp", 1).await.unwrap();
    s.rate_check(t, "login", 5, Duration::from_secs(60), 0).await.unwrap();

    let keys = raw_keys(&format!("{}:*", fixture.prefix)).await;
    let ns = format!("{}:{{{}}}:", fixture.prefix, t);
    assert!(keys.len() >= 6, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with(&ns), "{k} is outside the tenant's namespace");
    }
    // The revoked session left nothing behind but its deny entry.
    let sid = rec.id.to_string();
    assert_eq!(keys.iter().filter(|k| k.contains(&sid)).collect::<Vec<_>>(), [&format!("{ns}deny:{sid}")]);
    // Tokens that name their session keep no key per token.
    assert!(!keys.iter().any(|k| k.contains(":rt:") || k.contains(":fam:")), "{keys:?}");

    s.purge_tenant(t).await.unwrap();
    assert_eq!(raw_keys(&format!("{}:*", fixture.prefix)).await, Vec::<String>::new());
}

/// A session written by a build from before tokens named their session
/// (refresh hashes under `rt:`, the current one in the session's `rt`
/// field) keeps working: its current token rotates once by its hash into a
/// named token, and its rotated-away tokens still count as reuse.
#[tokio::test]
async fn redis_sessions_from_before_named_tokens_keep_working() {
    let fixture = RedisFixture::new().await;
    let s = fixture.store.clone();
    let (t, u) = (TenantId::new(), UserId::new());
    let ns = format!("{}:{{{}}}:", fixture.prefix, t);
    // Two sessions as the earlier build left them: `h1` replaced `h0`.
    let mut legacy = Vec::new();
    for created in [1, 2] {
        let rec = SessionRecord { user_agent: None, ip: None, ..record(u, created) };
        let (h0, h1, sid) = (hash(), hash(), rec.id.to_string());
        let sk = format!("{ns}sess:{sid}");
        raw_query::<i64>(
            redis::cmd("HSET")
                .arg(&sk)
                .arg(&["user", &u.to_string(), "created", &created.to_string(), "last_used", &created.to_string()])
                .arg(&["amr", r#"["pwd","otp"]"#, "rt", &h1])
                .clone(),
        )
        .await;
        raw_query::<i64>(redis::cmd("PEXPIRE").arg(&sk).arg(600_000).clone()).await;
        for h in [&h0, &h1] {
            raw_query::<()>(redis::cmd("SET").arg(format!("{ns}rt:{h}")).arg(&sid).arg("PX").arg(600_000).clone())
                .await;
            raw_query::<i64>(redis::cmd("ZADD").arg(format!("{ns}fam:{sid}")).arg(i64::MAX / 2).arg(h).clone()).await;
        }
        raw_query::<i64>(redis::cmd("SADD").arg(format!("{ns}usess:{u}")).arg(&sid).clone()).await;
        legacy.push((rec, h0, h1));
    }
    let (a, a0, a1) = &legacy[0];
    assert_eq!(s.session_by_refresh(t, RefreshKey::Hashed(a1)).await.unwrap(), Some(a.clone()));
    assert_eq!(s.session_by_refresh(t, RefreshKey::Hashed(a0)).await.unwrap(), None);
    assert_eq!(s.session_by_refresh(t, first(a)).await.unwrap(), None, "no named token was issued");
    assert_eq!(s.rotate_refresh(t, first(a), 3, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    // The current hash rotates into the first named token...
    let RotateOutcome::Rotated(rotated) = s.rotate_refresh(t, RefreshKey::Hashed(a1), 4, TTL, None).await.unwrap()
    else {
        panic!("the current token must rotate");
    };
    assert_eq!(rotated, SessionRecord { last_used_at: 4, ..a.clone() });
    assert_eq!(RefreshKey::Hashed(a1).successor(a.id), first(a));
    assert_eq!(s.session_by_refresh(t, first(a)).await.unwrap().map(|r| r.id), Some(a.id));
    assert_eq!(s.session_by_refresh(t, RefreshKey::Hashed(a1)).await.unwrap(), None);
    assert!(matches!(s.rotate_refresh(t, first(a), 5, TTL, None).await.unwrap(), RotateOutcome::Rotated(_)));
    // ... and the hash presented again is a reuse: the session goes, with
    // every key it had.
    assert_eq!(
        s.rotate_refresh(t, RefreshKey::Hashed(a1), 6, TTL, None).await.unwrap(),
        RotateOutcome::Reused { session: a.id, user: u }
    );
    assert!(s.is_session_denied(t, a.id).await.unwrap());
    assert_eq!(s.rotate_refresh(t, next(first(a)), 7, TTL, None).await.unwrap(), RotateOutcome::NotFound);
    let left = raw_keys(&format!("{ns}*")).await;
    assert!(!left.iter().any(|k| k.contains(&a.id.to_string()) && !k.contains(":deny:")), "{left:?}");
    assert!(!left.iter().any(|k| k.ends_with(a0.as_str()) || k.ends_with(a1.as_str())), "{left:?}");
    // A token that session rotated away before the upgrade is a reuse too.
    let (b, b0, _) = &legacy[1];
    assert_eq!(
        s.rotate_refresh(t, RefreshKey::Hashed(b0), 8, TTL, None).await.unwrap(),
        RotateOutcome::Reused { session: b.id, user: u }
    );
    assert_eq!(s.list_sessions(t, u).await.unwrap(), vec![]);
}

/// A change announced through one connection reaches every store on the same
/// prefix (another replica), and none on another prefix (another deployment).
#[tokio::test]
async fn redis_change_notices_reach_replicas_on_the_same_prefix_only() {
    let prefix = format!("authd-test-{}", Uuid::new_v4().simple());
    let a = RedisTokenStore::connect(&redis_url(), &prefix).await.unwrap();
    let b = RedisTokenStore::connect(&redis_url(), &prefix).await.unwrap();
    let other = RedisTokenStore::connect(&redis_url(), &format!("{prefix}-other")).await.unwrap();
    let mut rx_b = b.subscribe_changes().expect("redis has a change channel");
    let mut rx_other = other.subscribe_changes().unwrap();
    let tenant = TenantId::new();
    // The listeners subscribe in the background: announce until one arrives.
    let mut got = None;
    for _ in 0..50 {
        a.publish_change(tenant).await.unwrap();
        if let Ok(Ok(id)) = tokio::time::timeout(Duration::from_millis(100), rx_b.recv()).await {
            got = Some(id);
            break;
        }
    }
    assert_eq!(got, Some(tenant));
    assert!(rx_other.try_recv().is_err(), "another prefix hears nothing");
    assert!(MemoryTokenStore::new().subscribe_changes().is_none());
}

/// Waits (up to 5 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

/// Two replicas on one prefix: a revocation (of each kind) and a user change
/// made through one reach the other's memos by push, without it asking
/// Redis; another prefix hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_revocations_and_user_changes_reach_the_other_replicas_memos() {
    let prefix = format!("authd-test-{}", Uuid::new_v4().simple());
    let a = RedisTokenStore::connect(&redis_url(), &prefix).await.unwrap();
    let b = RedisTokenStore::connect(&redis_url(), &prefix).await.unwrap();
    let other = RedisTokenStore::connect(&redis_url(), &format!("{prefix}-other")).await.unwrap();
    eventually("the listeners subscribe", || {
        a.memos().not_denied.is_live() && b.memos().not_denied.is_live() && other.memos().not_denied.is_live()
    })
    .await;
    let (s, t, u) = (Arc::new(a) as Store, TenantId::new(), UserId::new());
    let (x, _) = new_session(&s, t, u, 1).await;
    let (y, y1) = new_session(&s, t, UserId::new(), 2).await;
    s.rotate_refresh(t, y1, 3, TTL, None).await.unwrap();
    for sid in [x.id, y.id] {
        assert!(!b.is_session_denied(t, sid).await.unwrap());
        assert!(b.memos().not_denied.get(t, sid.0).is_some(), "b remembers {sid} is not revoked");
        other.memos().not_denied.put(other.memos().not_denied.ticket(), t, sid.0, ());
    }
    s.revoke_user_sessions(t, u, None, DENY).await.unwrap();
    eventually("b forgets x", || b.memos().not_denied.get(t, x.id.0).is_none()).await;
    assert!(b.is_session_denied(t, x.id).await.unwrap());
    assert!(matches!(s.rotate_refresh(t, y1, 4, TTL, None).await.unwrap(), RotateOutcome::Reused { .. }));
    eventually("b forgets y", || b.memos().not_denied.get(t, y.id.0).is_none()).await;
    assert!(b.is_session_denied(t, y.id).await.unwrap());

    let users = &b.memos().users;
    let row = |id: UserId| {
        Arc::new(authd_core::records::UserRecord {
            id,
            email: None,
            email_verified: false,
            password_hash: None,
            role: authd_core::settings::Role::User,
            disabled: false,
            totp_enabled: false,
            totp_secret_sealed: None,
            totp_pending_sealed: None,
            totp_last_step: None,
            created_at: chrono::Utc::now(),
        })
    };
    let v = UserId::new();
    users.put(users.ticket(), t, u.0, row(u));
    users.put(users.ticket(), t, v.0, row(v));
    s.publish_user_change(t, Some(u)).await.unwrap();
    eventually("b forgets the changed user", || users.get(t, u.0).is_none()).await;
    assert!(users.get(t, v.0).is_some(), "only that user");
    s.publish_user_change(t, None).await.unwrap();
    eventually("b forgets the tenant's users", || users.get(t, v.0).is_none()).await;

    // The other deployment remembers on: it heard nothing.
    assert!(other.memos().not_denied.get(t, x.id.0).is_some());
}

/// While the change channel is down, nothing is remembered (a notice could
/// be lost); the listener resubscribes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memos_are_off_while_the_change_channel_is_down() {
    let fixture = RedisFixture::new().await;
    let s = fixture.store.clone();
    eventually("the listener subscribes", || s.memos().not_denied.is_live()).await;
    let (t, u) = (TenantId::new(), UserId::new());
    let (x, _) = new_session(&s, t, u, 1).await;
    assert!(!s.is_session_denied(t, x.id).await.unwrap());
    assert!(s.memos().not_denied.get(t, x.id.0).is_some());
    // Every subscriber connection on the server is cut (other tests' too:
    // theirs only stop remembering for a moment).
    let _: Value = raw_query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").clone()).await;
    eventually("the memos go off", || !s.memos().not_denied.is_live()).await;
    assert!(s.memos().not_denied.get(t, x.id.0).is_none());
    assert!(!s.is_session_denied(t, x.id).await.unwrap());
    assert!(s.memos().not_denied.is_empty(), "nothing is remembered while off");
    eventually("the listener resubscribes", || s.memos().not_denied.is_live()).await;
    assert!(!s.is_session_denied(t, x.id).await.unwrap());
    assert!(s.memos().not_denied.get(t, x.id.0).is_some());
}
