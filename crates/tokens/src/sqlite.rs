//! The embedded default's durable token store: the same contract as Redis,
//! kept in its own SQLite file (`{AUTHD_DATA_DIR}/tokens.db`, WAL), so that a
//! restart keeps every session, refresh-token family, revocation, limit
//! counter, MFA challenge and login code.
//!
//! One connection, behind an async mutex, runs every operation on the
//! request's own thread (rusqlite: SQLite is called directly, a few
//! microseconds a statement). The store is on the path of every refresh,
//! and a driver that hands each statement to a connection thread (sqlx's)
//! spent more CPU on those hand-offs than SQLite spent on the work.
//! Operations never interleave (the mutex), and every operation that writes
//! more than one row runs in one transaction, so a crash never leaves half
//! of one behind. An operation blocks its thread for its statements only
//! (microseconds; a WAL checkpoint, and the sweep below, take milliseconds
//! on the thread that happens to run them). Expiry is wall-clock Unix
//! milliseconds stored with each row: reads ignore expired rows, and every
//! [`SWEEP_EVERY`] an operation first deletes them.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::gcra::{self, Plan};
use crate::{
    Error, Memos, REUSE_DENY_TTL, RateDecision, Result, RotateOutcome, SessionLimit, SessionRecord, TokenStore,
    check_kind, check_step, ttl_ms,
};

/// How often an operation also deletes every expired row.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS sessions (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, user_id TEXT NOT NULL, record TEXT NOT NULL,
        current_hash TEXT NOT NULL, created_at INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, sid)) STRICT;
    CREATE INDEX IF NOT EXISTS sessions_user ON sessions (tenant, user_id);
    CREATE TABLE IF NOT EXISTS refresh (
        tenant TEXT NOT NULL, hash TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, hash)) STRICT;
    CREATE INDEX IF NOT EXISTS refresh_sid ON refresh (tenant, sid);
    CREATE TABLE IF NOT EXISTS deny (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, sid)) STRICT;
    CREATE TABLE IF NOT EXISTS once (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL,
        attempts INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, kind, id)) STRICT;
    CREATE TABLE IF NOT EXISTS counters (
        tenant TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT;
    CREATE TABLE IF NOT EXISTS rates (
        tenant TEXT NOT NULL, key TEXT NOT NULL, tat INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT;
";

/// The tables whose rows expire.
const EXPIRING: [&str; 5] = ["sessions", "refresh", "deny", "once", "rates"];

/// A live session by its id.
const SESSION_BY_ID: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND sid = ?2 AND expires_ms > ?3";
/// A user's live sessions.
const SESSIONS_OF_USER: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND user_id = ?2 AND expires_ms > ?3";

/// A rotation's reads in one statement: the session of the presented token
/// and, when a limit applies (`?4` is its key prefix, else empty), the
/// limit's stored arrival time.
const ROTATE_LOOKUP: &str = "SELECT r.sid, s.record, s.current_hash, \
     (SELECT tat FROM rates WHERE ?4 <> '' AND tenant = ?1 AND key = ?4 || r.sid AND expires_ms > ?3) \
     FROM refresh r JOIN sessions s ON s.tenant = r.tenant AND s.sid = r.sid AND s.expires_ms > ?3 \
     WHERE r.tenant = ?1 AND r.hash = ?2 AND r.expires_ms > ?3";

/// The SQLite backend.
pub struct SqliteTokenStore {
    db: tokio::sync::Mutex<Db>,
    /// Live from the start: one process owns the file, so every revocation
    /// is made here and forgets its sessions before it returns.
    memos: Memos,
}

struct Db {
    conn: Connection,
    next_sweep_ms: i64,
}

impl std::fmt::Debug for SqliteTokenStore {
    // Rows hold refresh-token hashes and single-use values: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTokenStore").finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::Unavailable(e.to_string())
        }
        _ => Error::Internal(e.to_string()),
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
    /// Opens (creating if needed) `path`, e.g. `{AUTHD_DATA_DIR}/tokens.db`.
    pub async fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| Error::Misconfigured(format!("token store file: {e}")))?;
        // WAL with NORMAL: a committed write survives a process crash; only
        // a power loss may take the last moments.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Self { db: tokio::sync::Mutex::new(Db { conn, next_sweep_ms: 0 }), memos: Memos::new(true) })
    }

    /// Runs `f` on the connection, alone, with the current time, sweeping
    /// expired rows first when it is time.
    async fn with<T>(&self, f: impl FnOnce(&mut Connection, i64) -> Result<T>) -> Result<T> {
        let mut db = self.db.lock().await;
        let now = now_ms();
        if now >= db.next_sweep_ms {
            db.next_sweep_ms = now + i64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(30_000);
            for table in EXPIRING {
                db.conn
                    .prepare_cached(&format!("DELETE FROM {table} WHERE expires_ms <= ?1"))
                    .and_then(|mut s| s.execute([now]))
                    .map_err(db_err)?;
            }
        }
        f(&mut db.conn, now)
    }

    /// [`SqliteTokenStore::with`] inside one transaction, committed when `f`
    /// succeeds (and rolled back when it fails).
    async fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<T>) -> Result<T> {
        self.with(|conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
            let out = f(&tx, now)?;
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    /// The unexpired sessions `sql` ([`SESSION_BY_ID`] or
    /// [`SESSIONS_OF_USER`]) selects for `tenant` and `key`.
    async fn live_sessions(&self, sql: &'static str, tenant: TenantId, key: String) -> Result<Vec<SessionRecord>> {
        self.with(|conn, now| {
            let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
            let rows =
                stmt.query_map(params![tenant.to_string(), key, now], |r| r.get::<_, String>(0)).map_err(db_err)?;
            rows.map(|r| r.map_err(db_err).and_then(|raw| decode_record(&raw))).collect()
        })
        .await
    }
}

fn decode_record(raw: &str) -> Result<SessionRecord> {
    serde_json::from_str(raw).map_err(|e| Error::Internal(format!("stored session: {e}")))
}

fn encode_record(record: &SessionRecord) -> Result<String> {
    serde_json::to_string(record).map_err(|e| Error::Internal(e.to_string()))
}

/// Runs one statement (cached) and returns the rows it changed.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(db_err)
}

/// The first column of the row `sql` selects, if any.
fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<T>> {
    conn.prepare_cached(sql).and_then(|mut s| s.query_row(params, |r| r.get(0)).optional()).map_err(db_err)
}

/// One request against the rate limit `plan` under `key`.
fn rate_in(conn: &Connection, tenant: &str, key: &str, plan: &Plan, now: i64) -> Result<RateDecision> {
    let params = match plan {
        Plan::Fixed(decision) => return Ok(*decision),
        Plan::Check(params) => params,
    };
    let stored: Option<i64> = one(
        conn,
        "SELECT tat FROM rates WHERE tenant = ?1 AND key = ?2 AND expires_ms > ?3",
        params![tenant, key, now],
    )?;
    let decision = params.decide(stored);
    if let Some((tat, ttl)) = decision.store {
        exec(
            conn,
            "INSERT OR REPLACE INTO rates (tenant, key, tat, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![tenant, key, tat, until(now, Duration::from_millis(ttl))],
        )?;
    }
    Ok(decision.answer)
}

/// Revokes `sid`: the session and its refresh hashes go, and its id is
/// denied until `now + deny_ttl` (never shortening an entry already there).
/// Returns the user of the session if it was live.
fn revoke(conn: &Connection, tenant: &str, sid: &str, deny_ttl: Duration, now: i64) -> Result<Option<UserId>> {
    let user: Option<Option<String>> = one(
        conn,
        "DELETE FROM sessions WHERE tenant = ?1 AND sid = ?2 RETURNING CASE WHEN expires_ms > ?3 THEN user_id END",
        params![tenant, sid, now],
    )?;
    exec(conn, "DELETE FROM refresh WHERE tenant = ?1 AND sid = ?2", params![tenant, sid])?;
    exec(
        conn,
        "INSERT INTO deny (tenant, sid, expires_ms) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant, sid) DO UPDATE SET expires_ms = max(deny.expires_ms, excluded.expires_ms)",
        params![tenant, sid, until(now, deny_ttl)],
    )?;
    user.flatten().map(|u| u.parse::<UserId>().map_err(|_| Error::Internal("stored user id".into()))).transpose()
}

#[async_trait]
impl TokenStore for SqliteTokenStore {
    async fn ping(&self) -> Result<()> {
        self.with(|conn, _| one::<i64>(conn, "SELECT 1", []).map(drop)).await
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
        let record = encode_record(session)?;
        self.write(|tx, now| {
            let (t, sid, expires) = (tenant.to_string(), session.id.to_string(), until(now, ttl));
            exec(
                tx,
                "INSERT OR REPLACE INTO sessions (tenant, sid, user_id, record, current_hash, created_at, expires_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t, sid, session.user_id.to_string(), record, refresh_hash, session.created_at, expires],
            )?;
            exec(
                tx,
                "INSERT OR REPLACE INTO refresh (tenant, hash, sid, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![t, refresh_hash, sid, expires],
            )?;
            Ok(())
        })
        .await
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
        let plan = limit.map(|l| (l.key_prefix, gcra::plan(l.limit, l.period, l.now_ms)));
        let outcome = self
            .write(|tx, now| {
                let t = tenant.to_string();
                let prefix = match &plan {
                    Some((prefix, Plan::Check(_))) => *prefix,
                    _ => "",
                };
                let found = tx
                    .prepare_cached(ROTATE_LOOKUP)
                    .and_then(|mut s| {
                        s.query_row(params![t, old_hash, now, prefix], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, Option<i64>>(3)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(db_err)?;
                let Some((sid, record, current, tat)) = found else { return Ok(RotateOutcome::NotFound) };
                let mut record = decode_record(&record)?;
                if current != old_hash {
                    // A token this session already rotated away: someone
                    // holds a copy (RFC 9700 §4.14.2), so the whole family goes.
                    revoke(tx, &t, &sid, REUSE_DENY_TTL, now)?;
                    return Ok(RotateOutcome::Reused { session: record.id, user: record.user_id });
                }
                match &plan {
                    Some((_, Plan::Fixed(RateDecision::Limited { retry_after_ms }))) => {
                        return Ok(RotateOutcome::Limited { retry_after_ms: *retry_after_ms });
                    }
                    Some((prefix, Plan::Check(params))) => {
                        let decision = params.decide(tat);
                        let Some((tat, ttl)) = decision.store else {
                            let RateDecision::Limited { retry_after_ms } = decision.answer else {
                                return Err(Error::Internal("a refused rate decision without a retry".into()));
                            };
                            return Ok(RotateOutcome::Limited { retry_after_ms });
                        };
                        exec(
                            tx,
                            "INSERT OR REPLACE INTO rates (tenant, key, tat, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                            params![t, format!("{prefix}{sid}"), tat, until(now, Duration::from_millis(ttl))],
                        )?;
                    }
                    None | Some((_, Plan::Fixed(RateDecision::Allowed { .. }))) => {}
                }
                let expires = until(now, ttl);
                record.last_used_at = now_unix;
                exec(
                    tx,
                    "INSERT OR REPLACE INTO refresh (tenant, hash, sid, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![t, new_hash, sid, expires],
                )?;
                exec(
                    tx,
                    "UPDATE sessions SET current_hash = ?3, record = ?4, expires_ms = ?5 WHERE tenant = ?1 AND sid = ?2",
                    params![t, sid, new_hash, encode_record(&record)?, expires],
                )?;
                Ok(RotateOutcome::Rotated(record))
            })
            .await;
        if let Ok(RotateOutcome::Reused { session, .. }) = &outcome {
            self.memos.not_denied.forget(tenant, [session.0]);
        }
        outcome
    }

    async fn session_by_refresh(&self, tenant: TenantId, hash: &str) -> Result<Option<SessionRecord>> {
        let raw: Option<String> = self
            .with(|conn, now| {
                one(
                    conn,
                    "SELECT s.record FROM refresh r JOIN sessions s ON s.tenant = r.tenant AND s.sid = r.sid \
                     WHERE r.tenant = ?1 AND r.hash = ?2 AND r.expires_ms > ?3 AND s.expires_ms > ?3 \
                     AND s.current_hash = r.hash",
                    params![tenant.to_string(), hash, now],
                )
            })
            .await?;
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
        let done =
            self.write(|tx, now| Ok(revoke(tx, &tenant.to_string(), &sid.to_string(), deny_ttl, now)?.is_some())).await;
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
        let keep = keep.map(|k| k.to_string());
        let done = self
            .write(|tx, now| {
                let t = tenant.to_string();
                let sids: Vec<String> = tx
                    .prepare_cached("SELECT sid FROM sessions WHERE tenant = ?1 AND user_id = ?2 AND expires_ms > ?3")
                    .and_then(|mut s| {
                        s.query_map(params![t, user.to_string(), now], |r| r.get(0))?.collect::<rusqlite::Result<_>>()
                    })
                    .map_err(db_err)?;
                let mut revoked = Vec::new();
                for sid in sids.into_iter().filter(|s| Some(s) != keep.as_ref()) {
                    if revoke(tx, &t, &sid, deny_ttl, now)?.is_some() {
                        revoked.push(sid);
                    }
                }
                Ok(revoked)
            })
            .await;
        match done {
            Ok(revoked) => {
                self.memos.not_denied.forget(tenant, revoked.iter().filter_map(|s| s.parse().ok()));
                Ok(revoked.len() as u64)
            }
            Err(e) => {
                self.memos.not_denied.forget_tenant(tenant);
                Err(e)
            }
        }
    }

    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool> {
        // The memo remembers "not denied" (`Some(())`).
        let fetch = async {
            let hit: Option<i64> = self
                .with(|conn, now| {
                    one(
                        conn,
                        "SELECT 1 FROM deny WHERE tenant = ?1 AND sid = ?2 AND expires_ms > ?3",
                        params![tenant.to_string(), sid.to_string(), now],
                    )
                })
                .await?;
            Ok::<_, Error>(hit.is_none().then_some(()))
        };
        Ok(self.memos.not_denied.get_or_fetch(tenant, sid.0, fetch).await?.is_none())
    }

    async fn purge_tenant(&self, tenant: TenantId) -> Result<()> {
        self.write(|tx, _| {
            for table in ["sessions", "refresh", "deny", "once", "counters", "rates"] {
                exec(tx, &format!("DELETE FROM {table} WHERE tenant = ?1"), [tenant.to_string()])?;
            }
            Ok(())
        })
        .await
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        check_kind(kind)?;
        self.write(|tx, now| {
            let t = tenant.to_string();
            exec(
                tx,
                "DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms <= ?4",
                params![t, kind, id, now],
            )?;
            let n = exec(
                tx,
                "INSERT OR IGNORE INTO once (tenant, kind, id, value, attempts, expires_ms) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                params![t, kind, id, value, until(now, ttl)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        let value: Option<Option<String>> = self
            .with(|conn, now| {
                one(
                    conn,
                    "DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 \
                     RETURNING CASE WHEN expires_ms > ?4 THEN value END",
                    params![tenant.to_string(), kind, id, now],
                )
            })
            .await?;
        Ok(value.flatten())
    }

    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        self.with(|conn, now| {
            one(
                conn,
                "SELECT value FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms > ?4",
                params![tenant.to_string(), kind, id, now],
            )
        })
        .await
    }

    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>> {
        check_kind(kind)?;
        self.write(|tx, now| {
            let t = tenant.to_string();
            let n: Option<i64> = one(
                tx,
                "UPDATE once SET attempts = attempts + 1 \
                 WHERE tenant = ?1 AND kind = ?2 AND id = ?3 AND expires_ms > ?4 RETURNING attempts",
                params![t, kind, id, now],
            )?;
            let n = n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            if n.is_some_and(|n| n >= max) {
                exec(tx, "DELETE FROM once WHERE tenant = ?1 AND kind = ?2 AND id = ?3", params![t, kind, id])?;
            }
            Ok(n)
        })
        .await
    }

    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool> {
        check_step(step)?;
        self.with(|conn, _| {
            let n = exec(
                conn,
                "INSERT INTO counters (tenant, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value WHERE excluded.value > counters.value",
                params![tenant.to_string(), key, step],
            )?;
            Ok(n == 1)
        })
        .await
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
        self.write(|tx, now| rate_in(tx, &tenant.to_string(), key, &plan, now)).await
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        self.with(|conn, _| {
            exec(conn, "DELETE FROM rates WHERE tenant = ?1 AND key = ?2", params![tenant.to_string(), key]).map(drop)
        })
        .await
    }
}
