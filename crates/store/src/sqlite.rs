//! The SQLite backend: the embedded default under `AUTHD_DATA_DIR`. SQLite
//! has no row-level security, so every query on a tenant-owned table carries
//! `tenant_id = $1` — the same tenancy Postgres enforces with its policies.
//! Ids are stored as UUID strings and times as unix microseconds. The
//! statements it shares with Postgres are in `sql` and `shared`; here is
//! what SQLite says its own way.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::rows::{Columns, Plain};
use crate::shared::{Backend, Binds, Dialect, Exec, Specific};
use crate::sql::{self, Arg, Stmt, client_columns, tenant_columns, user_columns};
use crate::{Error, Result};
use authd_core::records::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `authd.db` in `dir` and applies migrations.
    pub async fn open(dir: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("authd.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Self::with_options(opts, 8).await
    }

    /// An in-memory database (tests).
    pub async fn in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| Error::Internal(e.to_string()))?
            .foreign_keys(true);
        // One connection: every connection to `:memory:` is its own database.
        Self::with_options(opts, 1).await
    }

    async fn with_options(opts: SqliteConnectOptions, max: u32) -> Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin().await?)
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| Error::Internal("timestamp out of range".into()))
}

fn parse<T: std::str::FromStr>(s: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    s.map(|s| s.parse().map_err(|e: T::Err| Error::Internal(e.to_string()))).transpose()
}

/// Ids are bound as UUID text, times as unix microseconds, JSON as text.
impl Binds for Sqlite {
    fn query(stmt: Stmt<'_>) -> Query<'static, Sqlite, SqliteArguments> {
        let mut q = sqlx::query(stmt.sql);
        for arg in stmt.args {
            q = match arg {
                Arg::Id(v) => q.bind(v.map(|u| u.to_string())),
                Arg::Time(v) => q.bind(v.map(micros)),
                Arg::Json(v) => q.bind(v.map(|j| j.to_string())),
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Flag(v) => q.bind(v),
            };
        }
        q
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl Columns for SqliteRow {
    fn get<T: Plain>(&self, col: &str) -> Result<T> {
        Ok(self.try_get(col)?)
    }

    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        parse(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.try_get::<Option<i64>, _>(col)?.map(from_micros).transpose()
    }

    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        parse(self.try_get(col)?)
    }
}

/// No row-level security to set up: a statement on its own runs on the
/// pool; a transaction only groups statements.
#[async_trait]
impl Backend for SqliteStore {
    type Row = SqliteRow;
    type Tx = Transaction<'static, Sqlite>;

    async fn begin(&self, _tenant: TenantId) -> Result<Self::Tx> {
        self.tx().await
    }

    async fn begin_platform(&self) -> Result<Self::Tx> {
        self.tx().await
    }

    async fn pool_run(&self, stmt: Stmt<'_>) -> Result<u64> {
        Ok(Sqlite::query(stmt).execute(&self.pool).await?.rows_affected())
    }

    async fn pool_optional(&self, stmt: Stmt<'_>) -> Result<Option<SqliteRow>> {
        Ok(Sqlite::query(stmt).fetch_optional(&self.pool).await?)
    }

    async fn pool_all(&self, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>> {
        Ok(Sqlite::query(stmt).fetch_all(&self.pool).await?)
    }

    async fn run(&self, _tenant: TenantId, stmt: Stmt<'_>) -> Result<u64> {
        self.pool_run(stmt).await
    }

    async fn optional(&self, _tenant: TenantId, stmt: Stmt<'_>) -> Result<Option<SqliteRow>> {
        self.pool_optional(stmt).await
    }

    async fn all(&self, _tenant: TenantId, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>> {
        self.pool_all(stmt).await
    }
}

/// Times are stored as unix microseconds and changes stamped with the
/// service's clock, bound (Postgres uses its own); booleans are 0 and 1.
impl Dialect for SqliteStore {
    /// The consents go by their foreign key's cascade.
    const DELETE_CONSENTS: Option<&'static str> = None;

    /// SQLite has one writer: the UPDATE of the change holds the write
    /// lock, so the count after it sees every other admin change of the tenant.
    const LOCK_ADMINS: Option<&'static str> = None;

    /// `IS` compares with NULL where Postgres says `IS NOT DISTINCT FROM`.
    const RESEAL_TOTP: &'static str = "UPDATE users SET totp_secret_sealed = $3, totp_pending_sealed = $4 \
        WHERE tenant_id = $1 AND id = $2 AND totp_secret_sealed IS $5 AND totp_pending_sealed IS $6";

    const USER_BY_ID: &'static str =
        concat!("SELECT ", user_columns!(), " FROM users WHERE tenant_id = $1 AND id = $2");

    const LIST_TENANTS: &'static str =
        concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2");

    const TENANT_SLUGS: &'static str =
        "SELECT id, slug FROM tenants WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2";

    /// LIKE is case-insensitive for ASCII in SQLite; emails are stored
    /// lowercased, and prefixes are lowercased by the caller.
    const LIST_USERS: &'static str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE tenant_id = $1 \
         AND ($2 IS NULL OR email LIKE $2 ESCAPE '\\') \
         AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
    );

    const PLATFORM_EVENTS: &'static str = "SELECT * FROM platform_audit_events \
        WHERE ($1 IS NULL OR at < $1 OR (at = $1 AND id < $2)) ORDER BY at DESC, id DESC LIMIT $3";

    const AUDIT_EVENTS: &'static str = "SELECT * FROM audit_events WHERE tenant_id = $1 \
        AND ($2 IS NULL OR type = $2) \
        AND ($3 IS NULL OR actor_id = $3 OR subject_id = $3) \
        AND ($4 IS NULL OR at >= $4) \
        AND ($5 IS NULL OR at < $5) \
        AND ($6 IS NULL OR at < $6 OR (at = $6 AND id < $7)) \
        ORDER BY at DESC, id DESC LIMIT $8";

    fn touch_tenant(tenant: TenantId) -> Stmt<'static> {
        Stmt::new("UPDATE tenants SET updated_at = $2 WHERE id = $1").id(tenant.0).time(Utc::now())
    }

    fn set_tenant_disabled(slug: &Slug, disabled: bool) -> Stmt<'_> {
        Stmt::new(concat!(
            "UPDATE tenants SET disabled = $2, updated_at = $3 WHERE slug = $1 RETURNING ",
            tenant_columns!()
        ))
        .text(slug.as_str())
        .flag(disabled)
        .time(Utc::now())
    }

    fn update_settings(tenant: TenantId, settings: serde_json::Value) -> Stmt<'static> {
        Stmt::new("UPDATE tenants SET settings = $2, updated_at = $3 WHERE id = $1")
            .id(tenant.0)
            .json(settings)
            .time(Utc::now())
    }

    fn set_totp_pending(tenant: TenantId, user: UserId, sealed: Option<&str>) -> Stmt<'_> {
        Stmt::tenant_user(
            "UPDATE users SET totp_pending_sealed = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2",
            tenant,
            user,
        )
        .opt_text(sealed)
        .time(Utc::now())
    }

    fn enable_totp(tenant: TenantId, user: UserId, pending: &str, step: i64) -> Stmt<'_> {
        Stmt::tenant_user(
            "UPDATE users SET totp_secret_sealed = totp_pending_sealed, totp_pending_sealed = NULL, \
             totp_enabled = 1, totp_last_step = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND id = $2 AND totp_pending_sealed = $3",
            tenant,
            user,
        )
        .text(pending)
        .int(step)
        .time(Utc::now())
    }

    fn disable_totp(tenant: TenantId, user: UserId) -> Stmt<'static> {
        Stmt::tenant_user(
            "UPDATE users SET totp_secret_sealed = NULL, totp_pending_sealed = NULL, totp_enabled = 0, \
             totp_last_step = NULL, updated_at = $3 WHERE tenant_id = $1 AND id = $2",
            tenant,
            user,
        )
        .time(Utc::now())
    }

    fn insert_recovery_code(tenant: TenantId, user: UserId, hash: &str) -> Stmt<'_> {
        Stmt::tenant_user(
            "INSERT INTO recovery_codes (tenant_id, user_id, code_hash, created_at) VALUES ($1, $2, $3, $4)",
            tenant,
            user,
        )
        .text(hash)
        .time(Utc::now())
    }

    fn insert_identity<'a>(tenant: TenantId, identity: &Identity<'a>, user: UserId) -> Stmt<'a> {
        Stmt::new(
            "INSERT INTO user_identities (tenant_id, provider, issuer, subject, email, user_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .id(tenant.0)
        .text(identity.provider)
        .text(identity.issuer)
        .text(identity.subject)
        .opt_text(identity.email)
        .id(user.0)
        .time(Utc::now())
    }

    fn set_oauth_client_secret<'a>(tenant: TenantId, client_id: &'a str, secret_hash: &'a str) -> Stmt<'a> {
        Stmt::new(concat!(
            "UPDATE oauth_clients SET secret_hash = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND client_id = $2 AND NOT public RETURNING ",
            client_columns!()
        ))
        .id(tenant.0)
        .text(client_id)
        .text(secret_hash)
        .time(Utc::now())
    }

    fn grant_consent<'a>(tenant: TenantId, user: UserId, client_id: &'a str, scopes: &'a str) -> Stmt<'a> {
        Stmt::tenant_user(
            "INSERT INTO oauth_consents (tenant_id, user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, user_id, client_id) DO UPDATE SET scopes = excluded.scopes, granted_at = excluded.granted_at",
            tenant,
            user,
        )
        .text(client_id)
        .text(scopes)
        .time(Utc::now())
    }

    fn link_effect<'a>(tenant: TenantId, link: &'a EmailLink, effect: Option<&'a LinkEffect>) -> Stmt<'a> {
        let stmt = |sql| Stmt::tenant_user(sql, tenant, link.user_id);
        let now = Utc::now();
        match effect {
            None => {
                stmt(concat!("SELECT ", user_columns!(), " FROM users WHERE tenant_id = $1 AND id = $2 AND $3 IS NULL"))
                    .opt_text(None)
            }
            Some(LinkEffect::VerifyEmail) => stmt(concat!(
                "UPDATE users SET email_verified = 1, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND email = $3 RETURNING ",
                user_columns!()
            ))
            .text(&link.email)
            .time(now),
            Some(LinkEffect::SetPassword(phc)) => stmt(concat!(
                "UPDATE users SET password_hash = $3, email_verified = (email_verified OR email = $5), \
                 updated_at = $4 WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ))
            .text(phc)
            .time(now)
            .text(&link.email),
            Some(LinkEffect::ChangeEmail) => stmt(concat!(
                "UPDATE users SET email = $3, email_verified = 1, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ))
            .text(&link.email)
            .time(now),
        }
    }

    fn update_user(tenant: TenantId, id: UserId, change: &UserChange) -> Stmt<'_> {
        Stmt::tenant_user(
            concat!(
                "UPDATE users SET password_hash = COALESCE($3, password_hash), role = COALESCE($4, role), \
                 disabled = COALESCE($5, disabled), updated_at = $6 \
                 WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ),
            tenant,
            id,
        )
        .opt_text(change.password_hash.as_deref())
        .opt_text(change.role.map(|r| r.as_str()))
        .flag(change.disabled)
        .time(Utc::now())
    }
}

#[async_trait]
impl Specific for SqliteStore {
    /// One look per id: SQLite has no array parameters.
    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>> {
        let mut missing = Vec::new();
        for id in ids {
            if self.pool_optional(sql::tenant_by_id(*id)).await?.is_none() {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// `updated_at` is stamped with the service's clock here, so the feed's
    /// "now" is the service's too.
    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)> {
        let now = Utc::now();
        let rows =
            sqlx::query("SELECT id, updated_at FROM tenants WHERE updated_at > $1 ORDER BY updated_at LIMIT 10000")
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await?;
        let changed =
            rows.iter().map(|r| Ok((TenantId(r.id("id")?), r.time("updated_at")?))).collect::<Result<Vec<_>>>()?;
        Ok((changed, now))
    }

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        tx.run(sql::insert_key(tenant, key)).await?;
        // One statement per key to remove: SQLite has no array parameters.
        for kid in remove {
            sqlx::query("DELETE FROM signing_keys WHERE tenant_id = $1 AND kid = $2")
                .bind(tenant.to_string())
                .bind(kid)
                .execute(&mut *tx)
                .await?;
        }
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.run(Self::touch_tenant(tenant)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A plain DELETE: Postgres' service role may not delete events and
    /// calls a function instead.
    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1 AND at < $2")
            .bind(tenant.to_string())
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// One candidate at a time (no arrays); SQLite's single writer keeps two
    /// uses of one code apart.
    async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: UserId,
        candidates: &[String],
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.tx().await?;
        let mut used = false;
        for c in candidates {
            let done = sqlx::query(
                "UPDATE recovery_codes SET used_at = $4 WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 \
                 AND used_at IS NULL",
            )
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(c)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                used = true;
                break;
            }
        }
        if !used {
            return Ok(false);
        }
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// No `FOR UPDATE SKIP LOCKED`: SQLite's single writer claims for one
    /// caller at a time.
    async fn claim_mail(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<QueuedMail>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let rows = sqlx::query(
            "UPDATE mail_outbox SET claimed_until = $2, attempts = attempts + 1 WHERE id IN ( \
                 SELECT id FROM mail_outbox WHERE failed_at IS NULL AND next_attempt_at <= $1 \
                 AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY next_attempt_at LIMIT $3) \
             RETURNING id, tenant_id, kind, message_sealed, created_at, attempts",
        )
        .bind(micros(now))
        .bind(micros(until))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedMail {
                    id: r.id("id")?,
                    tenant_id: TenantId(r.id("tenant_id")?),
                    kind: r.try_get("kind")?,
                    message_sealed: r.try_get("message_sealed")?,
                    created_at: r.time("created_at")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }
}
