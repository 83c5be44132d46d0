//! The embedded default's durable token store: the same contract as Redis,
//! kept in its own SQLite file (`{AUTHD_DATA_DIR}/tokens.db`, WAL), so that a
//! restart keeps every session, refresh-token family, revocation, limit
//! counter, MFA challenge and login code.
//!
//! Atomicity: every operation that writes runs in one transaction on the one
//! writer connection, so operations never interleave (as a Lua script on
//! Redis); reads that change nothing go to a small pool of reader
//! connections and see the last committed state (WAL readers never block the
//! writer). Expiry is wall-clock Unix milliseconds stored with each row:
//! reads ignore expired rows, and writers sweep them out every
//! [`SWEEP_EVERY`].

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::gcra::{self, Plan};
use crate::{
    Error, Memos, REUSE_DENY_TTL, RateDecision, Result, RotateOutcome, SessionLimit, SessionRecord, TokenStore,
    check_kind, check_step, ttl_ms,
};

/// How often a write also deletes every expired row.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sessions (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, user_id TEXT NOT NULL, record TEXT NOT NULL,
        current_hash TEXT NOT NULL, created_at INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, sid)) STRICT",
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions (tenant, user_id)",
    "CREATE TABLE IF NOT EXISTS refresh (
        tenant TEXT NOT NULL, hash TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, hash)) STRICT",
    "CREATE INDEX IF NOT EXISTS refresh_sid ON refresh (tenant, sid)",
    "CREATE TABLE IF NOT EXISTS deny (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, sid)) STRICT",
    "CREATE TABLE IF NOT EXISTS once (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL,
        attempts INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, kind, id)) STRICT",
    "CREATE TABLE IF NOT EXISTS counters (
        tenant TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT",
    "CREATE TABLE IF NOT EXISTS rates (
        tenant TEXT NOT NULL, key TEXT NOT NULL, tat INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT",
];

/// A live session by its id.
const SESSION_BY_ID: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND sid = ?2 AND expires_ms > ?3";
/// A user's live sessions.
const SESSIONS_OF_USER: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND user_id = ?2 AND expires_ms > ?3";

/// A rotation's reads in one statement: the session of the presented token
/// and, when a limit applies (`?4` is its key prefix, else empty), the
/// limit's stored arrival time.
///
/// A rotation holds the one writer connection from this read to its write,
/// so no other write runs in between (the writer pool has exactly one
/// connection): it needs no transaction, which saves two statements and, on
/// sqlx's SQLite driver, two hand-offs to the connection's thread each way.
const ROTATE_LOOKUP: &str = "SELECT r.sid, s.record, s.current_hash, \
     (SELECT tat FROM rates WHERE ?4 <> '' AND tenant = ?1 AND key = ?4 || r.sid AND expires_ms > ?3) AS tat \
     FROM refresh r JOIN sessions s ON s.tenant = r.tenant AND s.sid = r.sid AND s.expires_ms > ?3 \
     WHERE r.tenant = ?1 AND r.hash = ?2 AND r.expires_ms > ?3";

/// A rotation's writes, sent as one query (sqlx runs each statement of it in
/// turn, binding `?N` by number): the successor's refresh row, then the
/// session, which commits the rotation. Without a transaction a crash between
/// the two leaves only a refresh row nobody was ever given. `?1` tenant, `?2`
/// sid, `?3` new hash, `?4` expiry, `?5` record, `?6` old hash.
const ROTATE: &str = "INSERT OR REPLACE INTO refresh (tenant, hash, sid, expires_ms) VALUES (?1, ?3, ?2, ?4); \
     UPDATE sessions SET current_hash = ?3, record = ?5, expires_ms = ?4 \
     WHERE tenant = ?1 AND sid = ?2 AND current_hash = ?6";

/// [`ROTATE`] counting one request against the session's limit first (`?7`
/// key, `?8` arrival time, `?9` expiry); a crash after it has only used up
/// one request of the limit.
const ROTATE_WITH_LIMIT: &str = "INSERT OR REPLACE INTO rates (tenant, key, tat, expires_ms) VALUES (?1, ?7, ?8, ?9); \
     INSERT OR REPLACE INTO refresh (tenant, hash, sid, expires_ms) VALUES (?1, ?3, ?2, ?4); \
     UPDATE sessions SET current_hash = ?3, record = ?5, expires_ms = ?4 \
     WHERE tenant = ?1 AND sid = ?2 AND current_hash = ?6";

/// The SQLite backend.
pub struct SqliteTokenStore {
    writer: SqlitePool,
    readers: SqlitePool,
    next_sweep_ms: AtomicI64,
    /// Live from the start: one process owns the file, so every revocation
    /// is made here and forgets its sessions before it returns.
    memos: Memos,
}

impl std::fmt::Debug for SqliteTokenStore {
    // Rows hold refresh-token hashes and single-use values: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTokenStore").finish_non_exhaustive()
    }
}

fn db_err(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Error::Unavailable(e.to_string()),
        other => Error::Internal(other.to_string()),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The expiry of a row written now with `ttl` (`ttl_ms` caps "for ever").
fn until(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl_ms(ttl)).unwrap_or(i64::MAX))
}

impl SqliteTokenStore {
    /// The unexpired sessions `sql` ([`SESSION_BY_ID`] or
    /// [`SESSIONS_OF_USER`]) selects for `tenant` and `key`.
    async fn live_sessions(&self, sql: &'static str, tenant: TenantId, key: String) -> Result<Vec<SessionRecord>> {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(tenant.to_string())
            .bind(key)
            .bind(now_ms())
            .fetch_all(&self.readers)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| decode_record(r)).collect()
    }

    /// Opens (creating if needed) `path`, e.g. `{AUTHD_DATA_DIR}/tokens.db`.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| Error::Misconfigured(format!("token store file: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL: a committed write survives a process crash;
            // only a power loss may take the last moments.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
            .map_err(db_err)?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&writer).await.map_err(db_err)?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.read_only(true))
            .await
            .map_err(db_err)?;
        Ok(Self { writer, readers, next_sweep_ms: AtomicI64::new(0), memos: Memos::new(true) })
    }

    /// A write transaction, sweeping expired rows first when it is time.
    async fn write(&self) -> Result<(Transaction<'static, Sqlite>, i64)> {
        let now = now_ms();
        let mut tx = self.writer.begin().await.map_err(db_err)?;
        self.sweep_if_due(&mut tx, now).await?;
        Ok((tx, now))
    }

    /// The writer connection itself (no transaction), for an operation that
    /// is atomic without one; sweeps first when it is time.
    async fn writer(&self) -> Result<(PoolConnection<Sqlite>, i64)> {
        let now = now_ms();
        let mut conn = self.writer.acquire().await.map_err(db_err)?;
        self.sweep_if_due(&mut conn, now).await?;
        Ok((conn, now))
    }

    async fn sweep_if_due(&self, conn: &mut SqliteConnection, now: i64) -> Result<()> {
        if now >= self.next_sweep_ms.load(Ordering::Relaxed) {
            self.next_sweep_ms.store(now + i64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(30_000), Ordering::Relaxed);
            for table in ["sessions", "refresh", "deny", "once", "rates"] {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE expires_ms <= ?1")))
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }
}

/// One request against the rate limit `plan` under `key`, inside `tx`.
async fn rate_in(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    key: &str,
    plan: &Plan,
    now: i64,
) -> Result<RateDecision> {
    let params = match plan {
        Plan::Fixed(decision) => return Ok(*decision),
        Plan::Check(params) => params,
    };
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT tat FROM rates WHERE tenant = ?1 AND key = ?2 AND expires_ms > ?3")
            .bind(tenant)
            .bind(key)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    let decision = params.decide(stored);
    if let Some((tat, ttl)) = decision.store {
        sqlx::query("INSERT OR REPLACE INTO rates (tenant, key, tat, expires_ms) VALUES (?1, ?2, ?3, ?4)")
            .bind(tenant)
            .bind(key)
            .bind(tat)
            .bind(until(now, Duration::from_millis(ttl)))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Ok(decision.answer)
}

fn decode_record(raw: &str) -> Result<SessionRecord> {
    serde_json::from_str(raw).map_err(|e| Error::Internal(format!("stored session: {e}")))
}

fn encode_record(record: &SessionRecord) -> Result<String> {
    serde_json::to_string(record).map_err(|e| Error::Internal(e.to_string()))
}

/// Revokes `sid` inside `tx`: the session and its refresh hashes go, and its
/// id is denied until `now + deny_ttl` (never shortening an entry already
/// there). Returns the user of the session if it was live.
async fn revoke(
    conn: &mut SqliteConnection,
    tenant: &str,
    sid: &str,
    deny_ttl: Duration,
    now: i64,
) -> Result<Option<UserId>> {
    let user: Option<String> = sqlx::query_scalar(
        "DELETE FROM sessions WHERE tenant = ?1 AND sid = ?2 RETURNING CASE WHEN expires_ms > ?3 THEN user_id END",
    )
    .bind(tenant)
    .bind(sid)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?
    .flatten();
    sqlx::query("DELETE FROM refresh WHERE tenant = ?1 AND sid = ?2")
        .bind(tenant)
        .bind(sid)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO deny (tenant, sid, expires_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant, sid) DO UPDATE SET expires_ms = max(deny.expires_ms, excluded.expires_ms)",
    )
    .bind(tenant)
    .bind(sid)
    .bind(until(now, deny_ttl))
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    user.map(|u| u.parse::<UserId>().map_err(|_| Error::Internal("stored user id".into()))).transpose()
}

#[async_trait]
impl TokenStore for SqliteTokenStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await.map_err(db_err)?;
        Ok(())
    }

    fn memos(&self) -> &Memos {
        &self.memos
    }

    async fn create_session(
        &self,
        tenant: TenantId,
        session: &SessionRecord,
        refresh_hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        let (mut tx, now) = self.write().await?;
        let (t, sid, expires) = (tenant.to_string(), session.id.to_string(), until(now, ttl));
        sqlx::query(
            "INSERT OR REPLACE INTO sessions (tenant, sid, user_id, record, current_hash, created_at, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&t)
        .bind(&sid)
        .bind(session.user_id.to_string())
        .bind(encode_record(session)?)
        .bind(refresh_hash)
        .bind(session.created_at)
        .bind(expires)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("INSERT OR REPLACE INTO refresh (tenant, hash, sid, expires_ms) VALUES (?1, ?2, ?3, ?4)")
            .bind(&t)
            .bind(refresh_hash)
            .bind(&sid)
            .bind(expires)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old_hash: &str,
        new_hash: &str,
        now_unix: i64,
        ttl: Duration,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<RotateOutcome> {
        // The hot path is two statements on the writer connection, without
        // a transaction (see `ROTATE_LOOKUP`).
        let (mut conn, now) = self.writer().await?;
        let t = tenant.to_string();
        let plan = limit.map(|l| (l.key_prefix, gcra::plan(l.limit, l.period, l.now_ms)));
        let prefix = match &plan {
            Some((prefix, Plan::Check(_))) => *prefix,
            _ => "",
        };
        let row = sqlx::query(ROTATE_LOOKUP)
            .bind(&t)
            .bind(old_hash)
            .bind(now)
            .bind(prefix)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(RotateOutcome::NotFound) };
        let sid: String = row.try_get("sid").map_err(db_err)?;
        let mut record = decode_record(row.try_get::<&str, _>("record").map_err(db_err)?)?;
        let current: String = row.try_get("current_hash").map_err(db_err)?;
        if current != old_hash {
            // A token this session already rotated away: someone holds a copy
            // (RFC 9700 §4.14.2), so the whole family goes.
            let done = async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_err)?;
                revoke(&mut tx, &t, &sid, REUSE_DENY_TTL, now).await?;
                tx.commit().await.map_err(db_err)
            }
            .await;
            self.memos.not_denied.forget(tenant, [record.id.0]);
            done?;
            return Ok(RotateOutcome::Reused { session: record.id, user: record.user_id });
        }
        let rate = match plan {
            None | Some((_, Plan::Fixed(RateDecision::Allowed { .. }))) => None,
            Some((_, Plan::Fixed(RateDecision::Limited { retry_after_ms }))) => {
                return Ok(RotateOutcome::Limited { retry_after_ms });
            }
            Some((prefix, Plan::Check(params))) => {
                let decision = params.decide(row.try_get::<Option<i64>, _>("tat").map_err(db_err)?);
                match (decision.answer, decision.store) {
                    (RateDecision::Limited { retry_after_ms }, _) => {
                        return Ok(RotateOutcome::Limited { retry_after_ms });
                    }
                    (_, store) => {
                        store.map(|(tat, ttl)| (format!("{prefix}{sid}"), tat, until(now, Duration::from_millis(ttl))))
                    }
                }
            }
        };
        let expires = until(now, ttl);
        record.last_used_at = now_unix;
        let query = sqlx::query(if rate.is_some() { ROTATE_WITH_LIMIT } else { ROTATE })
            .bind(&t)
            .bind(&sid)
            .bind(new_hash)
            .bind(expires)
            .bind(encode_record(&record)?)
            .bind(old_hash);
        let query = match rate {
            Some((key, tat, until)) => query.bind(key).bind(tat).bind(until),
            None => query,
        };
        let done = query.execute(&mut *conn).await.map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(Error::Internal("a rotation changed nothing".into()));
        }
        Ok(RotateOutcome::Rotated(record))
    }

    async fn session_by_refresh(&self, tenant: TenantId, hash: &str) -> Result<Option<SessionRecord>> {
        let raw: Option<String> = sqlx::query_scalar(
            "SELECT s.record FROM refresh r JOIN sessions s ON s.tenant = r.tenant AND s.sid = r.sid \
             WHERE r.tenant = ?1 AND r.hash = ?2 AND r.expires_ms > ?3 AND s.expires_ms > ?3 \
             AND s.current_hash = r.hash",
        )
        .bind(tenant.to_string())
        .bind(hash)
        .bind(now_ms())
        .fetch_optional(&self.readers)
        .await
        .map_err(db_err)?;
        raw.as_deref().map(decode_record).transpose()
    }

    async fn get_session(&self, tenant: TenantId, sid: SessionId) -> Result<Option<SessionRecord>> {
        let found = self.live_sessions(SESSION_BY_ID, tenant, sid.to_string()).await?;
        Ok(found.into_iter().next())
    }

    async fn list_sessions(&self, tenant: TenantId, user: UserId) -> Result<Vec<SessionRecord>> {
        let mut out = self.live_sessions(SESSIONS_OF_USER, tenant, user.to_string()).await?;
        crate::memory::sort_sessions(&mut out);
        Ok(out)
    }

    async fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> Result<bool> {
        let done = async {
            let (mut tx, now) = self.write().await?;
            let user = revoke(&mut tx, &tenant.to_string(), &sid.to_string(), deny_ttl, now).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(user.is_some())
        }
        .await;
        // After the commit, before answering: a later check on this process
        // must see the revocation.
        self.memos.not_denied.forget(tenant, [sid.0]);
        done
    }

    async fn revoke_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        deny_ttl: Duration,
    ) -> Result<u64> {
        let (mut tx, now) = self.write().await?;
        let t = tenant.to_string();
        let sids: Vec<String> =
            sqlx::query_scalar("SELECT sid FROM sessions WHERE tenant = ?1 AND user_id = ?2 AND expires_ms > ?3")
                .bind(&t)
                .bind(user.to_string())
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
        let keep = keep.map(|k| k.to_string());
        let done = async {
            let mut revoked = 0;
            for sid in sids.iter().filter(|s| Some(*s) != keep.as_ref()) {
                if revoke(&mut tx, &t, sid, deny_ttl, now).await?.is_some() {
                    revoked += 1;
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(revoked)
        }
        .await;
        self.memos.not_denied.forget(tenant, sids.iter().filter_map(|s| s.parse().ok()));
        done
    }

    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool> {
        let memo = &self.memos.not_denied;
        if memo.get(tenant, sid.0).is_some() {
            return Ok(false);
        }
        let ticket = memo.ticket();
        let hit: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM deny WHERE tenant = ?1 AND sid = ?2 AND expires_ms > ?3")
                .bind(tenant.to_string())
                .bind(sid.to_string())
                .bind(now_ms())
                .fetch_optional(&self.readers)
                .await
                .map_err(db_err)?;
        if hit.is_none() {
            memo.put(ticket, tenant, sid.0, ());
        }
        Ok(hit.is_some())
    }

    async fn purge_tenant(&self, tenant: TenantId) -> Result<()> {
        let (mut tx, _) = self.write().await?;
        for table in ["sessions", "refresh", "deny", "once", "counters", "rates"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant = ?1")))
                .bind(tenant.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        check_kind(kind)?;
        let (mut tx, now) = self.write().await?;
        let t = tenant.to_string();
        sqlx::query("DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms <= ?4")
            .bind(&t)
            .bind(kind)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO once (tenant, kind, id, value, attempts, expires_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
        )
        .bind(&t)
        .bind(kind)
        .bind(id)
        .bind(value)
        .bind(until(now, ttl))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        let (mut tx, now) = self.write().await?;
        let value: Option<Option<String>> = sqlx::query_scalar(
            "DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 \
             RETURNING CASE WHEN expires_ms > ?4 THEN value END",
        )
        .bind(tenant.to_string())
        .bind(kind)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(value.flatten())
    }

    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        sqlx::query_scalar("SELECT value FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms > ?4")
            .bind(tenant.to_string())
            .bind(kind)
            .bind(id)
            .bind(now_ms())
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err)
    }

    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>> {
        check_kind(kind)?;
        let (mut tx, now) = self.write().await?;
        let t = tenant.to_string();
        let n: Option<i64> = sqlx::query_scalar(
            "UPDATE once SET attempts = attempts + 1 \
             WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms > ?4 RETURNING attempts",
        )
        .bind(&t)
        .bind(kind)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let n = n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if n.is_some_and(|n| n >= max) {
            sqlx::query("DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3")
                .bind(&t)
                .bind(kind)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(n)
    }

    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool> {
        check_step(step)?;
        let (mut tx, _) = self.write().await?;
        let done = sqlx::query(
            "INSERT INTO counters (tenant, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value WHERE excluded.value > counters.value",
        )
        .bind(tenant.to_string())
        .bind(key)
        .bind(step)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn rate_check(
        &self,
        tenant: TenantId,
        key: &str,
        limit: u32,
        period: Duration,
        now_ms_caller: i64,
    ) -> Result<RateDecision> {
        let plan = gcra::plan(limit, period, now_ms_caller);
        if let Plan::Fixed(decision) = plan {
            return Ok(decision);
        }
        let (mut tx, now) = self.write().await?;
        let decision = rate_in(&mut tx, &tenant.to_string(), key, &plan, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(decision)
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        let (mut tx, _) = self.write().await?;
        sqlx::query("DELETE FROM rates WHERE tenant = ?1 AND key = ?2")
            .bind(tenant.to_string())
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
}
