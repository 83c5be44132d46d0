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
//!
//! **Group commit.** Writes are queued; whoever holds the connection runs
//! every write queued so far in one transaction, each in its own savepoint
//! (a failing write undoes only its own changes), commits once, and answers
//! them all; a caller whose write another caller committed never takes the
//! connection. Under load, a commit then writes the pages that concurrent
//! rotations share (the session rows, the limit rows) into the WAL once
//! instead of once per rotation. A write is answered only after its commit,
//! so a crash never loses a write that was answered, nor leaves half of
//! one behind. An operation blocks its thread for its statements only
//! (microseconds). WAL checkpoints run on a thread of their own beside the
//! writes, so no request waits for one (see `checkpointer`).
//!
//! Expiry is wall-clock Unix milliseconds stored with each row: reads
//! ignore expired rows, and every [`SWEEP_EVERY`] the same thread deletes
//! them, a chunk of each table at a time (see `Sweeper`), so no request
//! ever waits for a scan of a whole table.
//!
//! **Layout** (`PRAGMA user_version` 2). Every table is `WITHOUT ROWID`: a
//! row lives in its primary key's b-tree only. A session row keeps the
//! generation of its current refresh token, and a refresh token names its
//! session, so a rotation rewrites that one row: no hash of the new token is
//! inserted at a random place of an index (which cost a page write into the
//! WAL and then into the file per rotation). The `refresh` table holds the
//! hashes of tokens issued before tokens named their session, until they
//! expire; their sessions are at generation 0. A revocation deletes the
//! session row, so those hashes find nothing. Files of layouts 0 and 1 are
//! converted when opened.

use std::path::Path;
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::gcra::{self, Plan};
use crate::{
    Error, FIRST_GENERATION, Memos, REUSE_DENY_TTL, RateDecision, RefreshKey, Result, RotateOutcome, SessionLimit,
    SessionRecord, TokenStore, check_kind, check_step, ttl_ms,
};

/// How often a pass of the sweep starts deleting expired rows.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The layout this build writes (`PRAGMA user_version`).
const LAYOUT: i64 = 2;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS sessions (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, user_id TEXT NOT NULL, record TEXT NOT NULL,
        current_hash TEXT NOT NULL, created_at INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, sid)) STRICT, WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS sessions_user ON sessions (tenant, user_id);
    CREATE TABLE IF NOT EXISTS refresh (
        tenant TEXT NOT NULL, hash TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, hash)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS deny (
        tenant TEXT NOT NULL, sid TEXT NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, sid)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS once (
        tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL,
        attempts INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, kind, id)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS counters (
        tenant TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT, WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS rates (
        tenant TEXT NOT NULL, key TEXT NOT NULL, tat INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)) STRICT, WITHOUT ROWID;
";

/// Every table, in the order layout 0 created them.
const TABLES: [&str; 6] = ["sessions", "refresh", "deny", "once", "counters", "rates"];

/// How often the checkpointer copies the WAL into the file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL frames (pages) past which the checkpointer makes the WAL start over.
const WAL_RESTART_FRAMES: i64 = 4096;

/// The most writes one transaction takes: the caller that commits answers
/// them all, so the batch bounds how long its own request waits.
const MAX_BATCH: usize = 256;

/// The tables whose rows expire, and their primary keys.
const EXPIRING: [(&str, &str); 5] = [
    ("sessions", "tenant, sid"),
    ("refresh", "tenant, hash"),
    ("deny", "tenant, sid"),
    ("once", "tenant, kind, id"),
    ("rates", "tenant, key"),
];

/// Rows a sweep step reads from one table: a step holds writes back for
/// about a millisecond, however large the table.
const SWEEP_CHUNK: usize = 1000;

/// A live session by its id.
const SESSION_BY_ID: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND sid = ?2 AND expires_ms > ?3";
/// A user's live sessions.
const SESSIONS_OF_USER: &str = "SELECT record FROM sessions WHERE tenant = ?1 AND user_id = ?2 AND expires_ms > ?3";

/// A rotation's reads in one statement: the live session named by the
/// presented token (`?2`) and, when a limit applies (`?4` is its key prefix,
/// else empty), the limit's stored arrival time.
const ROTATE_NAMED: &str = "SELECT s.sid, s.record, s.generation, s.current_hash, \
     (SELECT tat FROM rates WHERE ?4 <> '' AND tenant = ?1 AND key = ?4 || s.sid AND expires_ms > ?3) \
     FROM sessions s WHERE s.tenant = ?1 AND s.sid = ?2 AND s.expires_ms > ?3";

/// [`ROTATE_NAMED`] for a token from before tokens named their session,
/// found by its hash (`?2`).
const ROTATE_HASHED: &str = "SELECT r.sid, s.record, s.generation, s.current_hash, \
     (SELECT tat FROM rates WHERE ?4 <> '' AND tenant = ?1 AND key = ?4 || r.sid AND expires_ms > ?3) \
     FROM refresh r JOIN sessions s ON s.tenant = r.tenant AND s.sid = r.sid AND s.expires_ms > ?3 \
     WHERE r.tenant = ?1 AND r.hash = ?2 AND r.expires_ms > ?3";

/// A presented refresh token, owned so that a queued write can keep it.
enum Presented {
    Named(String, u64),
    Hashed(String),
}

impl Presented {
    fn of(key: RefreshKey<'_>) -> Self {
        match key {
            RefreshKey::Named { sid, generation } => Presented::Named(sid.to_string(), generation),
            RefreshKey::Hashed(h) => Presented::Hashed(h.to_owned()),
        }
    }

    /// The lookup that finds its session, and that lookup's `?2`.
    fn lookup(&self) -> (&'static str, &str) {
        match self {
            Presented::Named(sid, _) => (ROTATE_NAMED, sid),
            Presented::Hashed(h) => (ROTATE_HASHED, h),
        }
    }

    /// What this token is to its session, whose current token is generation
    /// `generation` (0: the token of hash `current`, issued before tokens
    /// named their session).
    fn judge(&self, generation: i64, current: &str) -> Standing {
        match self {
            Presented::Named(_, g) => match u64::try_from(generation) {
                Ok(0) | Err(_) => Standing::Unknown,
                Ok(now) if *g == now => Standing::Current(g.saturating_add(1)),
                Ok(now) if *g < now => Standing::RotatedAway,
                Ok(_) => Standing::Unknown,
            },
            Presented::Hashed(h) if generation == 0 && current == h => Standing::Current(FIRST_GENERATION),
            // Its hash names this session, which has rotated it away.
            Presented::Hashed(_) => Standing::RotatedAway,
        }
    }
}

/// A presented token, compared with its session's current one.
enum Standing {
    /// It is the current one; the next has this generation.
    Current(u64),
    RotatedAway,
    Unknown,
}

/// The SQLite backend.
pub struct SqliteTokenStore {
    /// Shared with the checkpointer thread, which holds it only weakly.
    db: Arc<tokio::sync::Mutex<Db>>,
    /// Writes waiting for the next transaction (see the module's "Group
    /// commit").
    queue: SyncMutex<Vec<Box<dyn Queued>>>,
    /// Live from the start: one process owns the file, so every revocation
    /// is made here and forgets its sessions before it returns.
    memos: Memos,
}

struct Db {
    conn: Connection,
}

/// A write waiting in the queue: its closure, and where its answer goes.
trait Queued: Send {
    /// The caller is gone (its request was dropped): the write is skipped.
    fn abandoned(&self) -> bool;
    /// Runs the write inside the batch's transaction; false if it failed
    /// (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection, now: i64) -> bool;
    /// Answers the caller once the transaction has ended: the write's own
    /// result if it committed, else why the commit failed.
    fn answer(self: Box<Self>, committed: &Result<()>);
}

struct Pending<T, F> {
    write: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Queued for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection, i64) -> Result<T> + Send,
{
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        let out = match self.write.take() {
            Some(write) => write(conn, now),
            None => Err(Error::Internal("a queued write ran twice".into())),
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn answer(self: Box<Self>, committed: &Result<()>) {
        let out = match (self.out, committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(e.clone()),
            (None, Err(e)) => Err(e.clone()),
            (None, Ok(())) => Err(Error::Internal("a queued write did not run".into())),
        };
        // The caller may have gone since: nothing to tell.
        let _ = self.reply.send(out);
    }
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
        let mut conn = Connection::open(path).map_err(|e| Error::Misconfigured(format!("token store file: {e}")))?;
        // WAL with NORMAL: a committed write survives a process crash; only
        // a power loss may take the last moments.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        // Requests never checkpoint: the checkpointer thread does (below).
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(db_err)?;
        // A restarted WAL is cut back to this size.
        conn.pragma_update(None, "journal_size_limit", WAL_RESTART_FRAMES * 4096 * 2).map_err(db_err)?;
        lay_out(&mut conn)?;
        let checkpoints = Connection::open(path).map_err(|e| Error::Misconfigured(format!("token store file: {e}")))?;
        checkpoints.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        let db = Arc::new(tokio::sync::Mutex::new(Db { conn }));
        let weak = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("authd-tokens-checkpoint".into())
            .spawn(move || checkpointer(&checkpoints, &weak))
            .map_err(|e| Error::Internal(format!("starting the checkpointer: {e}")))?;
        Ok(Self { db, queue: SyncMutex::new(Vec::new()), memos: Memos::new(true) })
    }

    /// Runs `f` on the connection, alone, with the current time (reads, and
    /// writes of a single statement, which SQLite commits by itself).
    async fn with<T>(&self, f: impl FnOnce(&Connection, i64) -> Result<T>) -> Result<T> {
        let mut db = self.db.lock().await;
        let now = now_ms();
        db.ready();
        f(&db.conn, now)
    }

    /// Runs `f` in a transaction, committed before this returns: queued
    /// (see the module's "Group commit"), so that it may share its
    /// transaction with every write queued beside it. `f`'s changes are
    /// undone when it fails.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (reply, mut answer) = oneshot::channel();
        self.lock_queue().push(Box::new(Pending { write: Some(f), out: None, reply }));
        let gone = || Error::Internal("a queued write was dropped".into());
        // Either another caller commits this write first (the answer comes
        // and the connection was never needed), or this caller takes the
        // connection and commits the queue, this write included.
        let mut db = tokio::select! {
            biased;
            out = &mut answer => return out.unwrap_or_else(|_| Err(gone())),
            db = self.db.lock() => db,
        };
        loop {
            match answer.try_recv() {
                Ok(out) => return out,
                Err(oneshot::error::TryRecvError::Closed) => return Err(gone()),
                // Not run yet: the caller before took it while this one was
                // waking, or over MAX_BATCH were queued before it.
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<_> = {
                let mut queue = self.lock_queue();
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            db.commit_batch(batch);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Queued>>> {
        // A panic while the queue was locked cannot leave it half-changed
        // (push and drain): keep using it.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

impl Db {
    /// Readies the connection for the next operation: rolls back what a
    /// panicked caller left open.
    fn ready(&mut self) {
        if !self.conn.is_autocommit() {
            // A caller that panicked while it ran a batch left its
            // transaction open: nothing of it was answered, so it goes
            // before anything else runs on the connection.
            if let Err(e) = exec(&self.conn, "ROLLBACK", []) {
                tracing::warn!(error = %e, "token store: rolling back an abandoned transaction failed");
            }
        }
    }

    /// Runs `batch` in one transaction and answers each write.
    fn commit_batch(&mut self, batch: Vec<Box<dyn Queued>>) {
        let mut batch: Vec<_> = batch.into_iter().filter(|w| !w.abandoned()).collect();
        if batch.is_empty() {
            return;
        }
        let now = now_ms();
        self.ready();
        let conn = &self.conn;
        let committed = (|| {
            exec(conn, "BEGIN IMMEDIATE", [])?;
            if let [alone] = &mut batch[..] {
                // No savepoint needed: the transaction is this write's own.
                if !alone.run(conn, now) {
                    exec(conn, "ROLLBACK", [])?;
                    return Ok(());
                }
            } else {
                for write in &mut batch {
                    exec(conn, "SAVEPOINT w", [])?;
                    if !write.run(conn, now) {
                        exec(conn, "ROLLBACK TO w", [])?;
                    }
                    exec(conn, "RELEASE w", [])?;
                }
            }
            exec(conn, "COMMIT", []).map(drop)
        })();
        if committed.is_err() && !conn.is_autocommit() {
            // Nothing of a failed transaction may stay behind for the next one.
            if let Err(e) = exec(conn, "ROLLBACK", []) {
                tracing::warn!(error = %e, "token store: rolling back a failed transaction failed");
            }
        }
        for write in batch {
            write.answer(&committed);
        }
    }
}

/// Copies the WAL's pages into the file, on its own connection and thread,
/// every [`CHECKPOINT_EVERY`], while requests go on writing (a passive
/// checkpoint never blocks the writer, nor waits for it). Under steady
/// writes such a checkpoint never catches up with the last frame, and the
/// WAL only starts over once it has: past [`WAL_RESTART_FRAMES`], a second
/// pass runs with the store held (no write in between; it copies only what
/// was written since the first pass), and the next write starts the WAL
/// over. The same thread sweeps expired rows (see [`Sweeper`]): every
/// [`SWEEP_EVERY`] a pass starts, one step per tick. Ends when the store is
/// dropped.
fn checkpointer(conn: &Connection, db: &Weak<tokio::sync::Mutex<Db>>) {
    let passive = || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)).inspect_err(|e| {
            tracing::warn!(error = %e, "token store: checkpoint failed");
        })
    };
    let mut sweeper = Sweeper::default();
    let mut next_pass = now_ms();
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if db.strong_count() == 0 {
            return;
        }
        if let Ok(frames) = passive()
            && frames >= WAL_RESTART_FRAMES
        {
            let Some(db) = db.upgrade() else { return };
            let _writes_wait = db.blocking_lock();
            let _ = passive();
        }
        let now = now_ms();
        if sweeper.idle() {
            if now < next_pass {
                continue;
            }
            next_pass = now + i64::try_from(SWEEP_EVERY.as_millis()).unwrap_or(30_000);
        }
        // One step of the sweep, with writes held back (it writes, and
        // they would otherwise wait on SQLite's busy handler instead of
        // the store's queue).
        let Some(db) = db.upgrade() else { return };
        let _writes_wait = db.blocking_lock();
        if let Err(e) = sweeper.step(conn, now) {
            tracing::warn!(error = %e, "token store: sweeping expired rows failed");
        }
    }
}

/// Deletes expired rows a chunk at a time: each [`Sweeper::step`] reads at
/// most [`SWEEP_CHUNK`] rows of each table, in key order from where the last
/// step stopped, so that no step scans a whole table. A pass ends when every
/// table was read to its end; the next pass starts from the beginning.
#[derive(Default)]
struct Sweeper {
    /// Where the pass stands in each table of [`EXPIRING`].
    tables: [Cursor; EXPIRING.len()],
}

/// Where a pass of the sweep stands in one table.
#[derive(Default)]
enum Cursor {
    /// Not read yet.
    #[default]
    Start,
    /// Read up to this key.
    After(Vec<String>),
    /// Read to its end.
    Done,
}

impl Sweeper {
    /// No pass under way.
    fn idle(&self) -> bool {
        self.tables.iter().all(|c| matches!(c, Cursor::Start))
    }

    /// Reads the next chunk of each table still to read, deleting its
    /// expired rows. Returns whether the pass ended with this step.
    fn step(&mut self, conn: &Connection, now: i64) -> Result<bool> {
        for (cursor, (table, key)) in self.tables.iter_mut().zip(EXPIRING) {
            let width = key.split(',').count();
            let from = match cursor {
                Cursor::Done => continue,
                Cursor::Start => vec![String::new(); width],
                Cursor::After(last) => last.clone(),
            };
            let marks = |first: usize| (first..first + width).map(|n| format!("?{n}")).collect::<Vec<_>>().join(", ");
            // The last key of this chunk, if the table goes on past it.
            let last: Option<Vec<String>> = conn
                .prepare_cached(&format!(
                    "SELECT {key} FROM {table} WHERE ({key}) > ({}) ORDER BY {key} LIMIT 1 OFFSET {}",
                    marks(1),
                    SWEEP_CHUNK - 1
                ))
                .and_then(|mut q| {
                    q.query_row(rusqlite::params_from_iter(&from), |r| (0..width).map(|c| r.get(c)).collect())
                        .optional()
                })
                .map_err(db_err)?;
            let mut args: Vec<rusqlite::types::Value> = vec![now.into()];
            args.extend(from.into_iter().map(Into::into));
            let upto = match &last {
                Some(last) => {
                    args.extend(last.iter().cloned().map(Into::into));
                    format!(" AND ({key}) <= ({})", marks(2 + width))
                }
                None => String::new(),
            };
            conn.prepare_cached(&format!(
                "DELETE FROM {table} WHERE expires_ms <= ?1 AND ({key}) > ({}){upto}",
                marks(2)
            ))
            .and_then(|mut q| q.execute(rusqlite::params_from_iter(args)))
            .map_err(db_err)?;
            *cursor = last.map_or(Cursor::Done, Cursor::After);
        }
        if self.tables.iter().all(|c| matches!(c, Cursor::Done)) {
            *self = Sweeper::default();
            return Ok(true);
        }
        Ok(false)
    }
}

/// Brings the file to [`LAYOUT`]: creates the tables of a new file, and
/// converts an older file in one transaction: layout 0 (rowid tables, and an
/// index of refresh hashes by session) and layout 1 (sessions without a
/// generation: every refresh token was found by its hash).
fn lay_out(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
    if version > LAYOUT {
        return Err(Error::Misconfigured(format!(
            "token store file has layout {version}, newer than this authd's {LAYOUT}: upgrade authd"
        )));
    }
    if version == LAYOUT {
        return Ok(());
    }
    let tx = conn.transaction().map_err(db_err)?;
    let old: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'sessions'", [], |r| r.get(0))
        .map_err(db_err)?;
    if old > 0 && version == 1 {
        // Sessions so far are at generation 0: their current token is the
        // one of hash `current_hash`.
        tx.execute_batch("ALTER TABLE sessions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0").map_err(db_err)?;
    } else if old > 0 {
        for table in TABLES {
            tx.execute_batch(&format!("ALTER TABLE {table} RENAME TO {table}_layout0")).map_err(db_err)?;
        }
        tx.execute_batch("DROP INDEX IF EXISTS sessions_user; DROP INDEX IF EXISTS refresh_sid").map_err(db_err)?;
        tx.execute_batch(SCHEMA).map_err(db_err)?;
        for table in TABLES {
            // Layout 0 had every column of today's tables but a session's
            // generation, which is last and defaults to 0.
            let columns: Vec<String> = tx
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}_layout0') ORDER BY cid"))
                .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
                .map_err(db_err)?;
            let columns = columns.join(", ");
            tx.execute_batch(&format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_layout0; DROP TABLE {table}_layout0"
            ))
            .map_err(db_err)?;
        }
    } else {
        tx.execute_batch(SCHEMA).map_err(db_err)?;
    }
    tx.pragma_update(None, "user_version", LAYOUT).map_err(db_err)?;
    tx.commit().map_err(db_err)
}

/// A generation as SQLite stores it (a signed 64-bit integer).
fn sql_int(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
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

/// Revokes `sid`: the session goes, and its id is denied until
/// `now + deny_ttl` (never shortening an entry already there). Its refresh
/// hashes stay until they expire: without the session they find nothing.
/// Returns the user of the session if it was live.
fn revoke(conn: &Connection, tenant: &str, sid: &str, deny_ttl: Duration, now: i64) -> Result<Option<UserId>> {
    let user: Option<Option<String>> = one(
        conn,
        "DELETE FROM sessions WHERE tenant = ?1 AND sid = ?2 RETURNING CASE WHEN expires_ms > ?3 THEN user_id END",
        params![tenant, sid, now],
    )?;
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

    async fn create_session(&self, tenant: TenantId, session: &SessionRecord, ttl: Duration) -> Result<()> {
        let record = encode_record(session)?;
        let (sid, user, created_at) = (session.id.to_string(), session.user_id.to_string(), session.created_at);
        self.write(move |tx, now| {
            exec(
                tx,
                "INSERT OR REPLACE INTO sessions \
                 (tenant, sid, user_id, record, current_hash, created_at, expires_ms, generation) \
                 VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7)",
                params![tenant.to_string(), sid, user, record, created_at, until(now, ttl), sql_int(FIRST_GENERATION)],
            )?;
            Ok(())
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old: RefreshKey<'_>,
        now_unix: i64,
        ttl: Duration,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<RotateOutcome> {
        let plan = limit.map(|l| (l.key_prefix.to_owned(), gcra::plan(l.limit, l.period, l.now_ms)));
        let old = Presented::of(old);
        let outcome = self
            .write(move |tx, now| {
                let t = tenant.to_string();
                let prefix = match &plan {
                    Some((prefix, Plan::Check(_))) => prefix.as_str(),
                    _ => "",
                };
                let (lookup, key) = old.lookup();
                let found = tx
                    .prepare_cached(lookup)
                    .and_then(|mut s| {
                        s.query_row(params![t, key, now, prefix], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, Option<i64>>(4)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(db_err)?;
                let Some((sid, record, generation, current, tat)) = found else { return Ok(RotateOutcome::NotFound) };
                let mut record = decode_record(&record)?;
                let next = match old.judge(generation, &current) {
                    Standing::Current(next) => next,
                    Standing::Unknown => return Ok(RotateOutcome::NotFound),
                    Standing::RotatedAway => {
                        // A token this session already rotated away: someone
                        // holds a copy (RFC 9700 §4.14.2), so the whole family goes.
                        revoke(tx, &t, &sid, REUSE_DENY_TTL, now)?;
                        return Ok(RotateOutcome::Reused { session: record.id, user: record.user_id });
                    }
                };
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
                record.last_used_at = now_unix;
                exec(
                    tx,
                    "UPDATE sessions SET generation = ?3, current_hash = '', record = ?4, expires_ms = ?5 \
                     WHERE tenant = ?1 AND sid = ?2",
                    params![t, sid, sql_int(next), encode_record(&record)?, until(now, ttl)],
                )?;
                Ok(RotateOutcome::Rotated(record))
            })
            .await;
        if let Ok(RotateOutcome::Reused { session, .. }) = &outcome {
            self.memos.not_denied.forget(tenant, [session.0]);
        }
        outcome
    }

    async fn session_by_refresh(&self, tenant: TenantId, key: RefreshKey<'_>) -> Result<Option<SessionRecord>> {
        let key = Presented::of(key);
        let found: Option<(String, i64, String)> = self
            .with(|conn, now| {
                let (lookup, k) = key.lookup();
                conn.prepare_cached(lookup)
                    .and_then(|mut s| {
                        s.query_row(params![tenant.to_string(), k, now, ""], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))
                            .optional()
                    })
                    .map_err(db_err)
            })
            .await?;
        match found {
            Some((record, generation, current)) if matches!(key.judge(generation, &current), Standing::Current(_)) => {
                decode_record(&record).map(Some)
            }
            _ => Ok(None),
        }
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
        let done = self
            .write(move |tx, now| Ok(revoke(tx, &tenant.to_string(), &sid.to_string(), deny_ttl, now)?.is_some()))
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
        let keep = keep.map(|k| k.to_string());
        let done = self
            .write(move |tx, now| {
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
        self.write(move |tx, _| {
            for table in TABLES {
                exec(tx, &format!("DELETE FROM {table} WHERE tenant = ?1"), [tenant.to_string()])?;
            }
            Ok(())
        })
        .await
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        check_kind(kind)?;
        let (kind, id, value) = (kind.to_owned(), id.to_owned(), value.to_owned());
        self.write(move |tx, now| {
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
        let (kind, id) = (kind.to_owned(), id.to_owned());
        self.write(move |tx, now| {
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
        let key = key.to_owned();
        self.write(move |tx, now| rate_in(tx, &tenant.to_string(), &key, &plan, now)).await
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        self.with(|conn, _| {
            exec(conn, "DELETE FROM rates WHERE tenant = ?1 AND key = ?2", params![tenant.to_string(), key]).map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn temp_file() -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("authd-sqlite-unit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("tokens.db"), dir)
    }

    fn rows(store: &SqliteTokenStore, sql: &str) -> Vec<String> {
        let db = store.db.try_lock().unwrap();
        let mut stmt = db.conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    /// Writes queued while the connection is busy share one transaction;
    /// one that fails undoes its own changes only, and one whose caller
    /// went away is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_commit_together_and_fail_alone() {
        let (path, dir) = temp_file();
        let store = Arc::new(SqliteTokenStore::open(&path).await.unwrap());
        let busy = store.db.lock().await;
        let mut callers = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            callers.push(tokio::spawn(async move {
                store
                    .write(move |conn, _| {
                        exec(conn, "INSERT INTO counters (tenant, key, value) VALUES ('t', ?1, 1)", [i.to_string()])?;
                        if i == 3 { Err(Error::Internal("write 3 fails".into())) } else { Ok(i) }
                    })
                    .await
            }));
        }
        let gone = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(|conn, _| {
                        exec(conn, "INSERT INTO counters (tenant, key, value) VALUES ('t', 'gone', 1)", [])
                    })
                    .await
            })
        };
        while store.lock_queue().len() < 9 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        let before = busy.conn.total_changes();
        drop(busy);
        for (i, caller) in callers.into_iter().enumerate() {
            let out = caller.await.unwrap();
            if i == 3 {
                assert!(matches!(out, Err(Error::Internal(_))), "{out:?}");
            } else {
                assert_eq!(out.unwrap(), i);
            }
        }
        assert_eq!(
            rows(&store, "SELECT key FROM counters ORDER BY key"),
            ["0", "1", "2", "4", "5", "6", "7"],
            "the failed write's row is undone, the abandoned write never ran"
        );
        // One transaction: the eight inserts (the failed one's counts too),
        // no second batch.
        assert_eq!(store.db.try_lock().unwrap().conn.total_changes() - before, 8);
        assert!(store.lock_queue().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A write that panics takes its caller down, not the store: its
    /// transaction is rolled back before the next one begins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_leaves_no_transaction_behind() {
        let (path, dir) = temp_file();
        let store = Arc::new(SqliteTokenStore::open(&path).await.unwrap());
        let panicking = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(|conn, _| -> Result<()> {
                        exec(conn, "INSERT INTO counters (tenant, key, value) VALUES ('t', 'lost', 1)", [])?;
                        panic!("a write that panics");
                    })
                    .await
            })
        };
        assert!(panicking.await.unwrap_err().is_panic());
        let t = TenantId::new();
        assert!(store.advance_counter(t, "c", 1).await.unwrap(), "a single-statement write works");
        assert!(store.put_once(t, "mfa", "id", "value", Duration::from_secs(60)).await.unwrap());
        assert_eq!(store.peek(t, "mfa", "id").await.unwrap().as_deref(), Some("value"));
        assert!(rows(&store, "SELECT key FROM counters WHERE key = 'lost'").is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A file written by a build of layout 0 (rowid tables, refresh hashes
    /// indexed by session) or 1 (no generations) is converted on open,
    /// keeping every row, and its sessions' tokens keep working: the current
    /// hash rotates once into a named token, and a hash rotated away before
    /// the upgrade, or the current one after it, is a reuse.
    #[tokio::test]
    async fn files_of_earlier_layouts_are_converted_and_their_tokens_work() {
        for layout in [0, 1] {
            let (path, dir) = temp_file();
            let (t, user) = (TenantId::new(), UserId::new());
            let record = |sid| SessionRecord {
                id: sid,
                user_id: user,
                created_at: 1_700_000_000,
                last_used_at: 1_700_000_000,
                ip: None,
                user_agent: None,
                amr: vec!["pwd".into()],
            };
            let (a, b) = (SessionId::new(), SessionId::new());
            {
                let conn = Connection::open(&path).unwrap();
                let schema = SCHEMA.replace("        generation INTEGER NOT NULL DEFAULT 0,\n", "");
                assert_ne!(schema, SCHEMA);
                if layout == 0 {
                    conn.execute_batch(&schema.replace(", WITHOUT ROWID", "")).unwrap();
                    conn.execute_batch("CREATE INDEX refresh_sid ON refresh (tenant, sid)").unwrap();
                } else {
                    conn.execute_batch(&schema).unwrap();
                    conn.pragma_update(None, "user_version", 1).unwrap();
                }
                let far = i64::MAX / 2;
                for (sid, current) in [(a, "a1"), (b, "b1")] {
                    conn.execute(
                        "INSERT INTO sessions VALUES (?1, ?2, ?3, ?4, ?5, 1700000000, ?6)",
                        params![
                            t.to_string(),
                            sid.to_string(),
                            user.to_string(),
                            encode_record(&record(sid)).unwrap(),
                            current,
                            far
                        ],
                    )
                    .unwrap();
                }
                for (sid, hash) in [(a, "a0"), (a, "a1"), (b, "b0"), (b, "b1")] {
                    conn.execute(
                        "INSERT INTO refresh VALUES (?1, ?2, ?3, ?4)",
                        params![t.to_string(), hash, sid.to_string(), far],
                    )
                    .unwrap();
                }
                conn.execute("INSERT INTO deny VALUES (?1, 'old-sid', ?2)", params![t.to_string(), far]).unwrap();
                conn.execute("INSERT INTO counters VALUES (?1, 'c', 7)", params![t.to_string()]).unwrap();
            }
            let store = SqliteTokenStore::open(&path).await.unwrap();
            let tables = rows(&store, "SELECT sql FROM sqlite_schema WHERE type = 'table' ORDER BY name");
            assert_eq!(tables.len(), TABLES.len(), "{tables:?}");
            assert!(tables.iter().all(|sql| sql.ends_with("WITHOUT ROWID")), "{tables:?}");
            assert_eq!(rows(&store, "SELECT name FROM sqlite_schema WHERE type = 'index'"), ["sessions_user"]);
            assert_eq!(rows(&store, "SELECT CAST(user_version AS TEXT) FROM pragma_user_version"), ["2"]);
            assert_eq!(store.list_sessions(t, user).await.unwrap().len(), 2);
            assert!(!store.advance_counter(t, "c", 7).await.unwrap(), "the counter kept its value");
            let ttl = Duration::from_secs(60);
            let named = RefreshKey::Named { sid: a, generation: FIRST_GENERATION };
            assert_eq!(store.session_by_refresh(t, RefreshKey::Hashed("a1")).await.unwrap(), Some(record(a)));
            assert_eq!(store.session_by_refresh(t, RefreshKey::Hashed("a0")).await.unwrap(), None);
            assert_eq!(store.rotate_refresh(t, named, 1, ttl, None).await.unwrap(), RotateOutcome::NotFound);
            let rotated = store.rotate_refresh(t, RefreshKey::Hashed("a1"), 1_700_000_100, ttl, None).await.unwrap();
            assert!(matches!(rotated, RotateOutcome::Rotated(_)), "{rotated:?}");
            assert_eq!(store.session_by_refresh(t, named).await.unwrap().map(|s| s.id), Some(a));
            drop(store);
            // Opened again, the file stays as it is.
            let store = SqliteTokenStore::open(&path).await.unwrap();
            assert!(matches!(
                store.rotate_refresh(t, named, 1_700_000_150, ttl, None).await.unwrap(),
                RotateOutcome::Rotated(_)
            ));
            assert!(matches!(
                store.rotate_refresh(t, RefreshKey::Hashed("a1"), 1_700_000_200, ttl, None).await.unwrap(),
                RotateOutcome::Reused { session, .. } if session == a
            ));
            assert!(matches!(
                store.rotate_refresh(t, RefreshKey::Hashed("b0"), 1_700_000_200, ttl, None).await.unwrap(),
                RotateOutcome::Reused { session, .. } if session == b
            ));
            assert_eq!(store.list_sessions(t, user).await.unwrap(), vec![]);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Under writes without a pause the WAL starts over instead of growing:
    /// the checkpointer copies it into the file beside the writes (which a
    /// passive checkpoint alone never finishes while they go on), and past
    /// WAL_RESTART_FRAMES holds them back for a last pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_writes_without_a_pause() {
        let (path, dir) = temp_file();
        let store = Arc::new(SqliteTokenStore::open(&path).await.unwrap());
        let t = TenantId::new();
        // Some 40,000 frames (160 MiB) if the WAL never started over: each
        // write lands in a page of its own (a new key far from the last).
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..15_000u64 {
                        let key = format!("{:016x}", (i * 2 + w).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        store.put_once(t, "mfa", &key, &"v".repeat(1500), Duration::from_secs(60)).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let wal = std::fs::metadata(path.with_extension("db-wal")).unwrap().len();
        let limit = u64::try_from(WAL_RESTART_FRAMES).unwrap() * 4096 * 4;
        assert!(wal <= limit, "the WAL grew to {wal} bytes");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The sweep reads a chunk of each table per step, from where the last
    /// step stopped, and by the end of its pass has deleted every expired row
    /// and nothing else.
    #[test]
    fn the_sweep_deletes_expired_rows_a_chunk_at_a_time() {
        let (path, dir) = temp_file();
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let (now, far) = (now_ms(), i64::MAX / 2);
        let count = |table: &str| -> usize {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).unwrap() as usize
        };
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..2_500 {
            // Every other session has expired, across two tenants.
            let expires = if i % 2 == 0 { now - 1 } else { far };
            conn.execute(
                "INSERT INTO sessions VALUES (?1, ?2, 'u', '{}', '', 0, ?3, 1)",
                params![format!("t{}", i % 2), format!("{i:05}"), expires],
            )
            .unwrap();
        }
        for i in 0..1_200 {
            conn.execute("INSERT INTO once VALUES ('t', 'mfa', ?1, 'v', 0, ?2)", params![format!("{i:05}"), now])
                .unwrap();
        }
        for i in 0..10 {
            conn.execute("INSERT INTO deny VALUES ('t', ?1, ?2)", params![format!("{i}"), far]).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();

        let mut sweeper = Sweeper::default();
        assert!(sweeper.idle());
        let mut steps = 0;
        loop {
            steps += 1;
            let before = count("sessions") + count("once");
            let ended = sweeper.step(&conn, now).unwrap();
            let deleted = before - count("sessions") - count("once");
            assert!(deleted <= 2 * SWEEP_CHUNK, "step {steps} deleted {deleted}");
            if ended {
                break;
            }
            assert!(!sweeper.idle());
            assert!(steps < 10, "the pass never ends");
        }
        assert_eq!(steps, 3, "2,500 sessions in chunks of {SWEEP_CHUNK}");
        assert!(sweeper.idle());
        assert_eq!(count("sessions"), 1_250);
        let left: i64 = conn.query_row("SELECT min(expires_ms) FROM sessions", [], |r| r.get(0)).unwrap();
        assert_eq!(left, far, "only live sessions are left");
        assert_eq!(count("once"), 0);
        assert_eq!(count("deny"), 10);
        // A second pass deletes nothing more.
        while !sweeper.step(&conn, now).unwrap() {}
        assert_eq!((count("sessions"), count("deny")), (1_250, 10));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The store's own thread runs the sweep: a pass starts soon after the
    /// file is opened, and every SWEEP_EVERY after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_sweeps_expired_rows_by_itself() {
        let (path, dir) = temp_file();
        let store = SqliteTokenStore::open(&path).await.unwrap();
        let t = TenantId::new();
        assert!(store.put_once(t, "mfa", "gone", "v", Duration::from_millis(1)).await.unwrap());
        assert!(store.put_once(t, "mfa", "kept", "v", Duration::from_secs(60)).await.unwrap());
        let mut left = Vec::new();
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            // The test holds the store only between the thread's steps.
            let Ok(db) = store.db.try_lock() else { continue };
            let mut q = db.conn.prepare("SELECT id FROM once").unwrap();
            left = q.query_map([], |r| r.get::<_, String>(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
            if left == ["kept"] {
                break;
            }
        }
        assert_eq!(left, ["kept"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A file from a newer authd is refused rather than written.
    #[tokio::test]
    async fn a_newer_layout_is_refused() {
        let (path, dir) = temp_file();
        Connection::open(&path).unwrap().pragma_update(None, "user_version", LAYOUT + 1).unwrap();
        let err = SqliteTokenStore::open(&path).await.unwrap_err();
        assert!(matches!(err, Error::Misconfigured(_)), "{err:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
