//! The SQLite backend: the embedded default under `AUTHD_DATA_DIR`. SQLite
//! has no row-level security, so every query on a tenant-owned table carries
//! `tenant_id = ?` — the same tenancy Postgres enforces with its policies.
//! Ids are stored as UUID strings and times as unix microseconds.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::settings::{SigningAlgorithm, TenantSettings};
use authd_core::{EventId, Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::postgres::escape_like;
use crate::{Error, Result, Store, role_from_str};
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

fn uuid_col(row: &SqliteRow, col: &str) -> Result<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| Error::Internal(e.to_string()))
}

fn opt_uuid_col(row: &SqliteRow, col: &str) -> Result<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| Error::Internal(e.to_string()))).transpose()
}

fn json_col(row: &SqliteRow, col: &str) -> Result<Option<serde_json::Value>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| Error::Internal(e.to_string()))).transpose()
}

fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(serde_json::Value::to_string)
}

fn tenant_from_row(row: &SqliteRow) -> Result<TenantRecord> {
    let settings: String = row.try_get("settings")?;
    let slug: String = row.try_get("slug")?;
    Ok(TenantRecord {
        id: TenantId(uuid_col(row, "id")?),
        slug: Slug::parse(&slug).map_err(|e| Error::Internal(e.to_string()))?,
        name: row.try_get("name")?,
        disabled: row.try_get("disabled")?,
        settings: serde_json::from_str::<TenantSettings>(&settings).map_err(|e| Error::Internal(e.to_string()))?,
        created_at: from_micros(row.try_get("created_at")?)?,
    })
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord> {
    let role: String = row.try_get("role")?;
    Ok(UserRecord {
        id: UserId(uuid_col(row, "id")?),
        email: row.try_get("email")?,
        email_verified: row.try_get("email_verified")?,
        password_hash: row.try_get("password_hash")?,
        role: role_from_str(&role)?,
        disabled: row.try_get("disabled")?,
        totp_enabled: row.try_get("totp_enabled")?,
        totp_secret_sealed: row.try_get("totp_secret_sealed")?,
        totp_pending_sealed: row.try_get("totp_pending_sealed")?,
        totp_last_step: row.try_get("totp_last_step")?,
        created_at: from_micros(row.try_get("created_at")?)?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<SigningKeyRecord> {
    let alg: String = row.try_get("algorithm")?;
    Ok(SigningKeyRecord {
        kid: row.try_get("kid")?,
        algorithm: SigningAlgorithm::parse(&alg).map_err(|e| Error::Internal(e.to_string()))?,
        private_key_sealed: row.try_get("private_key_sealed")?,
        public_jwk: json_col(row, "public_jwk")?.unwrap_or_default(),
        created_at: from_micros(row.try_get("created_at")?)?,
        activates_at: from_micros(row.try_get("activates_at")?)?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: EventId(uuid_col(row, "id")?),
        at: from_micros(row.try_get("at")?)?,
        kind: row.try_get("type")?,
        actor_id: opt_uuid_col(row, "actor_id")?.map(UserId),
        subject_id: opt_uuid_col(row, "subject_id")?.map(UserId),
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        detail: json_col(row, "detail")?,
    })
}

fn platform_event_from_row(row: &SqliteRow) -> Result<PlatformEvent> {
    Ok(PlatformEvent {
        id: EventId(uuid_col(row, "id")?),
        at: from_micros(row.try_get("at")?)?,
        kind: row.try_get("type")?,
        tenant_id: opt_uuid_col(row, "tenant_id")?.map(TenantId),
        tenant_slug: row.try_get("tenant_slug")?,
        operator: row.try_get("operator")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        detail: json_col(row, "detail")?,
    })
}

const USER_COLUMNS: &str = "id, email, email_verified, password_hash, role, disabled, totp_enabled, totp_secret_sealed, \
                            totp_pending_sealed, totp_last_step, created_at";
const TENANT_COLUMNS: &str = "id, slug, name, disabled, settings, created_at";

async fn insert_event(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId, e: &AuditEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, id, at, type, actor_id, subject_id, ip, user_agent, request_id, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(tenant.to_string())
    .bind(e.id.to_string())
    .bind(micros(e.at))
    .bind(&e.kind)
    .bind(e.actor_id.map(|u| u.to_string()))
    .bind(e.subject_id.map(|u| u.to_string()))
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.request_id)
    .bind(json_text(&e.detail))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_platform_event(tx: &mut Transaction<'static, Sqlite>, e: &PlatformEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO platform_audit_events (id, at, type, tenant_id, tenant_slug, operator, ip, user_agent, \
         request_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(e.id.to_string())
    .bind(micros(e.at))
    .bind(&e.kind)
    .bind(e.tenant_id.map(|t| t.to_string()))
    .bind(&e.tenant_slug)
    .bind(&e.operator)
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.request_id)
    .bind(json_text(&e.detail))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_user(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId, u: &NewUser) -> Result<UserRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, id, email, password_hash, role, created_at, updated_at, email_verified) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7) RETURNING {USER_COLUMNS}"
    )))
    .bind(tenant.to_string())
    .bind(u.id.to_string())
    .bind(&u.email)
    .bind(&u.password_hash)
    .bind(u.role.as_str())
    .bind(micros(u.created_at))
    .bind(u.email_verified)
    .fetch_one(&mut **tx)
    .await?;
    user_from_row(&row)
}

async fn insert_key(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId, k: &SigningKeyRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO signing_keys (tenant_id, kid, algorithm, private_key_sealed, public_jwk, created_at, activates_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(tenant.to_string())
    .bind(&k.kid)
    .bind(k.algorithm.as_str())
    .bind(&k.private_key_sealed)
    .bind(k.public_jwk.to_string())
    .bind(micros(k.created_at))
    .bind(micros(k.activates_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn settings_text(settings: &TenantSettings) -> Result<String> {
    serde_json::to_string(settings).map_err(|e| Error::Internal(e.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(
        &self,
        tenant: &NewTenant,
        admin: &NewUser,
        key: &SigningKeyRecord,
        tenant_event: &AuditEvent,
        platform_event: &PlatformEvent,
    ) -> Result<TenantRecord> {
        let mut tx = self.tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenants (id, slug, name, settings, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.id.to_string())
        .bind(tenant.slug.as_str())
        .bind(&tenant.name)
        .bind(settings_text(&tenant.settings)?)
        .bind(micros(tenant.created_at))
        .fetch_one(&mut *tx)
        .await?;
        let record = tenant_from_row(&row)?;
        insert_user(&mut tx, tenant.id, admin).await?;
        insert_key(&mut tx, tenant.id, key).await?;
        insert_event(&mut tx, tenant.id, tenant_event).await?;
        insert_platform_event(&mut tx, platform_event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = ?1")))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>> {
        let mut missing = Vec::new();
        for id in ids {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = ?1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await?;
            if n == 0 {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)> {
        let now = Utc::now();
        let rows =
            sqlx::query("SELECT id, updated_at FROM tenants WHERE updated_at > ?1 ORDER BY updated_at LIMIT 10000")
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await?;
        let changed = rows
            .iter()
            .map(|r| Ok((TenantId(uuid_col(r, "id")?), from_micros(r.try_get("updated_at")?)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((changed, now))
    }

    async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
        )))
        .bind(after.map(|t| t.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn set_tenant_disabled(
        &self,
        slug: &Slug,
        disabled: bool,
        event: &PlatformEvent,
    ) -> Result<Option<TenantRecord>> {
        let mut tx = self.tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET disabled = ?2, updated_at = ?3 WHERE slug = ?1 RETURNING {TENANT_COLUMNS}"
        )))
        .bind(slug.as_str())
        .bind(disabled)
        .bind(micros(Utc::now()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let record = tenant_from_row(&row)?;
        let mut event = event.clone();
        event.tenant_id = Some(record.id);
        insert_platform_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn delete_tenant(&self, slug: &Slug, event: &PlatformEvent) -> Result<Option<TenantId>> {
        let mut tx = self.tx().await?;
        // Tenant-owned rows go by ON DELETE CASCADE (foreign_keys is on).
        let id: Option<String> = sqlx::query_scalar("DELETE FROM tenants WHERE slug = ?1 RETURNING id")
            .bind(slug.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else { return Ok(None) };
        let id = TenantId(Uuid::parse_str(&id).map_err(|e| Error::Internal(e.to_string()))?);
        let mut event = event.clone();
        event.tenant_id = Some(id);
        insert_platform_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> Result<Vec<PlatformEvent>> {
        let (at, id) = after.map(|(a, i)| (Some(micros(a)), Some(i.to_string()))).unwrap_or((None, None));
        let rows = sqlx::query(
            "SELECT * FROM platform_audit_events \
             WHERE (?1 IS NULL OR at < ?1 OR (at = ?1 AND id < ?2)) ORDER BY at DESC, id DESC LIMIT ?3",
        )
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(platform_event_from_row).collect()
    }

    async fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> Result<()> {
        let mut tx = self.tx().await?;
        sqlx::query("UPDATE tenants SET settings = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(tenant.to_string())
            .bind(settings_text(settings)?)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> Result<UserRecord> {
        let mut tx = self.tx().await?;
        let record = insert_user(&mut tx, tenant, user).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn user_by_email(&self, tenant: TenantId, email: &str) -> Result<Option<UserRecord>> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND email = ?2")))
                .bind(tenant.to_string())
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRecord>> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND id = ?2")))
                .bind(tenant.to_string())
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(
        &self,
        tenant: TenantId,
        email_prefix: Option<&str>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>> {
        let pattern = email_prefix.map(|p| format!("{}%", escape_like(p)));
        // LIKE is case-insensitive for ASCII in SQLite; emails are stored
        // lowercased, and prefixes are lowercased by the caller.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 \
             AND (?2 IS NULL OR email LIKE ?2 ESCAPE '\\') \
             AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4"
        )))
        .bind(tenant.to_string())
        .bind(pattern)
        .bind(after.map(|u| u.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        change: &UserChange,
        event: Option<&AuditEvent>,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE users SET password_hash = COALESCE(?3, password_hash), role = COALESCE(?4, role), \
             disabled = COALESCE(?5, disabled), updated_at = ?6 \
             WHERE tenant_id = ?1 AND id = ?2 RETURNING {USER_COLUMNS}"
        )))
        .bind(tenant.to_string())
        .bind(id.to_string())
        .bind(&change.password_hash)
        .bind(change.role.map(|r| r.as_str()))
        .bind(change.disabled)
        .bind(micros(Utc::now()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        // SQLite has one writer: the UPDATE above holds the write lock, so
        // this count sees every other admin change of the tenant.
        if change.keep_an_admin {
            let admins: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM users WHERE tenant_id = ?1 AND role = 'admin' AND disabled = 0",
            )
            .bind(tenant.to_string())
            .fetch_one(&mut *tx)
            .await?;
            if admins == 0 {
                return Err(Error::LastAdmin);
            }
        }
        if let Some(event) = event {
            insert_event(&mut tx, tenant, event).await?;
        }
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn count_active_admins(&self, tenant: TenantId) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE tenant_id = ?1 AND role = 'admin' AND disabled = 0")
                .bind(tenant.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn signing_keys(&self, tenant: TenantId) -> Result<Vec<SigningKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM signing_keys WHERE tenant_id = ?1 ORDER BY activates_at, kid")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        insert_key(&mut tx, tenant, key).await?;
        for kid in remove {
            sqlx::query("DELETE FROM signing_keys WHERE tenant_id = ?1 AND kid = ?2")
                .bind(tenant.to_string())
                .bind(kid)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> Result<()> {
        let mut tx = self.tx().await?;
        for (kid, value) in sealed {
            sqlx::query("UPDATE signing_keys SET private_key_sealed = ?3 WHERE tenant_id = ?1 AND kid = ?2")
                .bind(tenant.to_string())
                .bind(kid)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_events(&self, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
        let mut tx = self.tx().await?;
        for e in events {
            insert_event(&mut tx, tenant, e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_events(
        &self,
        tenant: TenantId,
        filter: &AuditFilter,
        after: Option<EventCursor>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        let (at, id) = after.map(|(a, i)| (Some(micros(a)), Some(i.to_string()))).unwrap_or((None, None));
        let user = filter.user_id.map(|u| u.to_string());
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE tenant_id = ?1 \
             AND (?2 IS NULL OR type = ?2) \
             AND (?3 IS NULL OR actor_id = ?3 OR subject_id = ?3) \
             AND (?4 IS NULL OR at >= ?4) \
             AND (?5 IS NULL OR at < ?5) \
             AND (?6 IS NULL OR at < ?6 OR (at = ?6 AND id < ?7)) \
             ORDER BY at DESC, id DESC LIMIT ?8",
        )
        .bind(tenant.to_string())
        .bind(&filter.kind)
        .bind(user)
        .bind(filter.since.map(micros))
        .bind(filter.until.map(micros))
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM audit_events WHERE tenant_id = ?1 AND at < ?2")
            .bind(tenant.to_string())
            .bind(micros(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> Result<bool> {
        let done =
            sqlx::query("UPDATE users SET totp_pending_sealed = ?3, updated_at = ?4 WHERE tenant_id = ?1 AND id = ?2")
                .bind(tenant.to_string())
                .bind(user.to_string())
                .bind(sealed)
                .bind(micros(Utc::now()))
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enable_totp(
        &self,
        tenant: TenantId,
        user: UserId,
        pending_sealed: &str,
        step: i64,
        recovery_hashes: &[String],
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.tx().await?;
        let done = sqlx::query(
            "UPDATE users SET totp_secret_sealed = totp_pending_sealed, totp_pending_sealed = NULL, \
             totp_enabled = 1, totp_last_step = ?4, updated_at = ?5 \
             WHERE tenant_id = ?1 AND id = ?2 AND totp_pending_sealed = ?3",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(pending_sealed)
        .bind(step)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_recovery_codes(&mut tx, tenant, user, recovery_hashes).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_totp(&self, tenant: TenantId, user: UserId, event: &AuditEvent) -> Result<()> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "UPDATE users SET totp_secret_sealed = NULL, totp_pending_sealed = NULL, totp_enabled = 0, \
             totp_last_step = NULL, updated_at = ?3 WHERE tenant_id = ?1 AND id = ?2",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        insert_recovery_codes(&mut tx, tenant, user, &[]).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_recovery_codes(
        &self,
        tenant: TenantId,
        user: UserId,
        recovery_hashes: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        insert_recovery_codes(&mut tx, tenant, user, recovery_hashes).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

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
                "UPDATE recovery_codes SET used_at = ?4 WHERE tenant_id = ?1 AND user_id = ?2 AND code_hash = ?3 \
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
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM recovery_codes WHERE tenant_id = ?1 AND user_id = ?2 AND used_at IS NULL",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = ?3 WHERE tenant_id = ?1 AND id = ?2 AND totp_enabled = 1 \
             AND (totp_last_step IS NULL OR totp_last_step < ?3)",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn sealed_totp_secrets(&self, tenant: TenantId) -> Result<Vec<(UserId, Option<String>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT id, totp_secret_sealed, totp_pending_sealed FROM users WHERE tenant_id = ?1 \
             AND (totp_secret_sealed IS NOT NULL OR totp_pending_sealed IS NOT NULL)",
        )
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((UserId(uuid_col(r, "id")?), r.try_get("totp_secret_sealed")?, r.try_get("totp_pending_sealed")?))
            })
            .collect()
    }

    async fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> Result<u64> {
        let mut tx = self.tx().await?;
        let mut replaced = 0;
        for r in sealed {
            let done = sqlx::query(
                "UPDATE users SET totp_secret_sealed = ?3, totp_pending_sealed = ?4 \
                 WHERE tenant_id = ?1 AND id = ?2 \
                 AND totp_secret_sealed IS ?5 AND totp_pending_sealed IS ?6",
            )
            .bind(tenant.to_string())
            .bind(r.user.to_string())
            .bind(&r.active)
            .bind(&r.pending)
            .bind(&r.was_active)
            .bind(&r.was_pending)
            .execute(&mut *tx)
            .await?;
            replaced += done.rows_affected();
        }
        tx.commit().await?;
        Ok(replaced)
    }

    async fn oauth_providers(&self, tenant: TenantId) -> Result<Vec<OAuthProviderRecord>> {
        let rows = sqlx::query("SELECT * FROM oauth_providers WHERE tenant_id = ?1 ORDER BY name")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(provider_from_row).collect()
    }

    async fn upsert_oauth_provider(
        &self,
        tenant: TenantId,
        p: &OAuthProviderRecord,
        event: &AuditEvent,
    ) -> Result<OAuthProviderRecord> {
        let mut tx = self.tx().await?;
        let scopes = serde_json::to_string(&p.scopes).map_err(|e| Error::Internal(e.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO oauth_providers (tenant_id, name, kind, display_name, client_id, client_secret_sealed, \
             issuer, scopes, enabled, trust_email_verified, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET kind = EXCLUDED.kind, display_name = EXCLUDED.display_name, \
             client_id = EXCLUDED.client_id, \
             client_secret_sealed = COALESCE(EXCLUDED.client_secret_sealed, oauth_providers.client_secret_sealed), \
             issuer = EXCLUDED.issuer, scopes = EXCLUDED.scopes, enabled = EXCLUDED.enabled, \
             trust_email_verified = EXCLUDED.trust_email_verified, updated_at = EXCLUDED.updated_at \
             RETURNING *",
        )
        .bind(tenant.to_string())
        .bind(&p.name)
        .bind(&p.kind)
        .bind(&p.display_name)
        .bind(&p.client_id)
        .bind(&p.client_secret_sealed)
        .bind(&p.issuer)
        .bind(scopes)
        .bind(p.enabled)
        .bind(p.trust_email_verified)
        .bind(micros(p.created_at))
        .bind(micros(p.updated_at))
        .fetch_one(&mut *tx)
        .await?;
        let record = provider_from_row(&row)?;
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tx().await?;
        let deleted = sqlx::query("DELETE FROM oauth_providers WHERE tenant_id = ?1 AND name = ?2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM user_identities WHERE tenant_id = ?1 AND provider = ?2")
            .bind(tenant.to_string())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> Result<Option<UserRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND id = \
             (SELECT user_id FROM user_identities \
             WHERE tenant_id = ?1 AND provider = ?2 AND issuer = ?3 AND subject = ?4)"
        )))
        .bind(tenant.to_string())
        .bind(identity.provider)
        .bind(identity.issuer)
        .bind(identity.subject)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn link_identity(
        &self,
        tenant: TenantId,
        identity: &Identity<'_>,
        user: UserId,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        insert_identity(&mut tx, tenant, identity, user).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_user_with_identity(
        &self,
        tenant: TenantId,
        user: &NewUser,
        identity: &Identity<'_>,
        events: &[AuditEvent],
    ) -> Result<UserRecord> {
        let mut tx = self.tx().await?;
        let record = insert_user(&mut tx, tenant, user).await?;
        insert_identity(&mut tx, tenant, identity, user.id).await?;
        for e in events {
            insert_event(&mut tx, tenant, e).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn create_user_with_link(
        &self,
        tenant: TenantId,
        user: &NewUser,
        event: &AuditEvent,
        link: &EmailLink,
        mail: &OutboxMail,
    ) -> Result<UserRecord> {
        let mut tx = self.tx().await?;
        let record = insert_user(&mut tx, tenant, user).await?;
        upsert_link(&mut tx, tenant, link).await?;
        insert_mail(&mut tx, tenant, mail).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn issue_link(
        &self,
        tenant: TenantId,
        link: &EmailLink,
        mail: &OutboxMail,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        upsert_link(&mut tx, tenant, link).await?;
        insert_mail(&mut tx, tenant, mail).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn link_by_hash(&self, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>> {
        let row = sqlx::query(
            "SELECT user_id, kind, token_hash, email, code_challenge, created_at, expires_at FROM email_links \
             WHERE tenant_id = ?1 AND token_hash = ?2",
        )
        .bind(tenant.to_string())
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(EmailLink {
                user_id: UserId(uuid_col(&r, "user_id")?),
                kind: r.try_get("kind")?,
                token_hash: r.try_get("token_hash")?,
                email: r.try_get("email")?,
                code_challenge: r.try_get("code_challenge")?,
                created_at: from_micros(r.try_get("created_at")?)?,
                expires_at: from_micros(r.try_get("expires_at")?)?,
            })
        })
        .transpose()
    }

    async fn redeem_link(
        &self,
        tenant: TenantId,
        link: &EmailLink,
        effect: Option<&LinkEffect>,
        events: &[AuditEvent],
        mail: Option<&OutboxMail>,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.tx().await?;
        let taken = sqlx::query(
            "DELETE FROM email_links WHERE tenant_id = ?1 AND user_id = ?2 AND kind = ?3 AND token_hash = ?4",
        )
        .bind(tenant.to_string())
        .bind(link.user_id.to_string())
        .bind(&link.kind)
        .bind(&link.token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            return Ok(None);
        }
        let now = micros(Utc::now());
        let (sql, value): (String, Option<&str>) = match effect {
            None => (format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND id = ?2 AND ?3 IS NULL"), None),
            Some(LinkEffect::VerifyEmail) => (
                format!(
                    "UPDATE users SET email_verified = 1, updated_at = ?4 \
                     WHERE tenant_id = ?1 AND id = ?2 AND email = ?3 RETURNING {USER_COLUMNS}"
                ),
                Some(&link.email),
            ),
            Some(LinkEffect::SetPassword(phc)) => (
                format!(
                    "UPDATE users SET password_hash = ?3, email_verified = (email_verified OR email = ?5), \
                     updated_at = ?4 WHERE tenant_id = ?1 AND id = ?2 RETURNING {USER_COLUMNS}"
                ),
                Some(phc),
            ),
            Some(LinkEffect::ChangeEmail) => (
                format!(
                    "UPDATE users SET email = ?3, email_verified = 1, updated_at = ?4 \
                     WHERE tenant_id = ?1 AND id = ?2 RETURNING {USER_COLUMNS}"
                ),
                Some(&link.email),
            ),
        };
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(tenant.to_string()).bind(link.user_id.to_string()).bind(value);
        if effect.is_some() {
            q = q.bind(now);
        }
        if matches!(effect, Some(LinkEffect::SetPassword(_))) {
            q = q.bind(&link.email);
        }
        let Some(row) = q.fetch_optional(&mut *tx).await? else { return Ok(None) };
        for e in events {
            insert_event(&mut tx, tenant, e).await?;
        }
        if let Some(mail) = mail {
            insert_mail(&mut tx, tenant, mail).await?;
        }
        let user = user_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> Result<()> {
        sqlx::query("DELETE FROM email_links WHERE tenant_id = ?1 AND user_id = ?2 AND kind = ?3")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(kind)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_mail(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<QueuedMail>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let rows = sqlx::query(
            "UPDATE mail_outbox SET claimed_until = ?2, attempts = attempts + 1 WHERE id IN ( \
                 SELECT id FROM mail_outbox WHERE failed_at IS NULL AND next_attempt_at <= ?1 \
                 AND (claimed_until IS NULL OR claimed_until < ?1) ORDER BY next_attempt_at LIMIT ?3) \
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
                    id: uuid_col(r, "id")?,
                    tenant_id: TenantId(uuid_col(r, "tenant_id")?),
                    kind: r.try_get("kind")?,
                    message_sealed: r.try_get("message_sealed")?,
                    created_at: from_micros(r.try_get("created_at")?)?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn mail_delivered(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_outbox WHERE id = ?1").bind(id.to_string()).execute(&self.pool).await?;
        Ok(())
    }

    async fn mail_deferred(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        sqlx::query("UPDATE mail_outbox SET next_attempt_at = ?2, claimed_until = NULL, last_error = ?3 WHERE id = ?1")
            .bind(id.to_string())
            .bind(micros(retry_at))
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mail_abandoned(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_outbox WHERE id = ?1").bind(id.to_string()).execute(&self.pool).await?;
        Ok(())
    }

    async fn passkeys(&self, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE tenant_id = ?1 AND user_id = ?2 ORDER BY created_at, id"
        )))
        .bind(tenant.to_string())
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_from_row).collect()
    }

    async fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> Result<Option<PasskeyRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE tenant_id = ?1 AND credential_id = ?2"
        )))
        .bind(tenant.to_string())
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(passkey_from_row).transpose()
    }

    async fn insert_passkey(&self, tenant: TenantId, p: &PasskeyRecord, event: &AuditEvent) -> Result<()> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO passkeys (tenant_id, id, user_id, credential_id, name, credential, sign_count, \
             backup_eligible, backup_state, created_at, last_used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(tenant.to_string())
        .bind(p.id.to_string())
        .bind(p.user_id.to_string())
        .bind(&p.credential_id)
        .bind(&p.name)
        .bind(&p.credential)
        .bind(p.sign_count)
        .bind(p.backup_eligible)
        .bind(p.backup_state)
        .bind(micros(p.created_at))
        .bind(p.last_used_at.map(micros))
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_passkey_use(&self, tenant: TenantId, p: &PasskeyRecord, previous_count: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE passkeys SET credential = ?3, sign_count = ?4, backup_state = ?5, last_used_at = ?6 \
             WHERE tenant_id = ?1 AND id = ?2 AND sign_count = ?7",
        )
        .bind(tenant.to_string())
        .bind(p.id.to_string())
        .bind(&p.credential)
        .bind(p.sign_count)
        .bind(p.backup_state)
        .bind(p.last_used_at.map(micros))
        .bind(previous_count)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn rename_passkey(
        &self,
        tenant: TenantId,
        user: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE passkeys SET name = ?4 WHERE tenant_id = ?1 AND user_id = ?2 AND id = ?3 RETURNING {PASSKEY_COLUMNS}"
        )))
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(id.to_string())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(passkey_from_row).transpose()
    }

    async fn delete_passkey(&self, tenant: TenantId, user: UserId, id: Uuid, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tx().await?;
        let n = sqlx::query("DELETE FROM passkeys WHERE tenant_id = ?1 AND user_id = ?2 AND id = ?3")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            insert_event(&mut tx, tenant, event).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn oauth_clients(&self, tenant: TenantId) -> Result<Vec<OAuthClientRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = ?1 ORDER BY created_at, client_id"
        )))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client_from_row).collect()
    }

    async fn oauth_client(&self, tenant: TenantId, client_id: &str) -> Result<Option<OAuthClientRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = ?1 AND client_id = ?2"
        )))
        .bind(tenant.to_string())
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(client_from_row).transpose()
    }

    async fn save_oauth_client(
        &self,
        tenant: TenantId,
        c: &OAuthClientRecord,
        create: bool,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        let mut tx = self.tx().await?;
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        let row = if create {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO oauth_clients (tenant_id, client_id, name, secret_hash, redirect_uris, \
                 post_logout_redirect_uris, public, first_party, grant_types, scopes, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING {CLIENT_COLUMNS}"
            )))
            .bind(tenant.to_string())
            .bind(&c.client_id)
            .bind(&c.name)
            .bind(&c.secret_hash)
            .bind(json(&c.redirect_uris))
            .bind(json(&c.post_logout_redirect_uris))
            .bind(c.public)
            .bind(c.first_party)
            .bind(json(&c.grant_types))
            .bind(json(&c.scopes))
            .bind(micros(c.created_at))
            .bind(micros(c.updated_at))
            .fetch_optional(&mut *tx)
            .await?
        } else {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE oauth_clients SET name = ?3, redirect_uris = ?4, post_logout_redirect_uris = ?5, \
                 first_party = ?6, grant_types = ?7, scopes = ?8, updated_at = ?9 \
                 WHERE tenant_id = ?1 AND client_id = ?2 RETURNING {CLIENT_COLUMNS}"
            )))
            .bind(tenant.to_string())
            .bind(&c.client_id)
            .bind(&c.name)
            .bind(json(&c.redirect_uris))
            .bind(json(&c.post_logout_redirect_uris))
            .bind(c.first_party)
            .bind(json(&c.grant_types))
            .bind(json(&c.scopes))
            .bind(micros(c.updated_at))
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some(row) = row else { return Ok(None) };
        let record = client_from_row(&row)?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn set_oauth_client_secret(
        &self,
        tenant: TenantId,
        client_id: &str,
        secret_hash: &str,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        let mut tx = self.tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE oauth_clients SET secret_hash = ?3, updated_at = ?4 \
             WHERE tenant_id = ?1 AND client_id = ?2 AND NOT public RETURNING {CLIENT_COLUMNS}"
        )))
        .bind(tenant.to_string())
        .bind(client_id)
        .bind(secret_hash)
        .bind(micros(Utc::now()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let record = client_from_row(&row)?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tx().await?;
        let n = sqlx::query("DELETE FROM oauth_clients WHERE tenant_id = ?1 AND client_id = ?2")
            .bind(tenant.to_string())
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT scopes FROM oauth_consents WHERE tenant_id = ?1 AND user_id = ?2 AND client_id = ?3",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn grant_consent(
        &self,
        tenant: TenantId,
        user: UserId,
        client_id: &str,
        scopes: &str,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO oauth_consents (tenant_id, user_id, client_id, scopes, granted_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (tenant_id, user_id, client_id) DO UPDATE SET scopes = excluded.scopes, granted_at = excluded.granted_at",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(client_id)
        .bind(scopes)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM oauth_consents WHERE tenant_id = ?1 AND user_id = ?2 AND client_id = ?3")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(client_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let row =
            sqlx::query("SELECT count(*) AS n, min(created_at) AS oldest FROM mail_outbox WHERE failed_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok(OutboxStats {
            queued: u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0),
            oldest: oldest.map(from_micros).transpose()?,
        })
    }
}

const CLIENT_COLUMNS: &str = "client_id, name, secret_hash, redirect_uris, post_logout_redirect_uris, public, first_party, \
                              grant_types, scopes, created_at, updated_at";

fn client_from_row(row: &SqliteRow) -> Result<OAuthClientRecord> {
    let list = |col: &str| -> Result<Vec<String>> {
        let v: String = row.try_get(col)?;
        serde_json::from_str(&v).map_err(|e| Error::Internal(e.to_string()))
    };
    Ok(OAuthClientRecord {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: list("redirect_uris")?,
        post_logout_redirect_uris: list("post_logout_redirect_uris")?,
        public: row.try_get("public")?,
        first_party: row.try_get("first_party")?,
        grant_types: list("grant_types")?,
        scopes: list("scopes")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
    })
}

const PASSKEY_COLUMNS: &str = "id, user_id, credential_id, name, credential, sign_count, backup_eligible, backup_state, \
                               created_at, last_used_at";

fn passkey_from_row(row: &SqliteRow) -> Result<PasskeyRecord> {
    let last: Option<i64> = row.try_get("last_used_at")?;
    Ok(PasskeyRecord {
        id: uuid_col(row, "id")?,
        user_id: UserId(uuid_col(row, "user_id")?),
        credential_id: row.try_get("credential_id")?,
        name: row.try_get("name")?,
        credential: row.try_get("credential")?,
        sign_count: row.try_get("sign_count")?,
        backup_eligible: row.try_get("backup_eligible")?,
        backup_state: row.try_get("backup_state")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        last_used_at: last.map(from_micros).transpose()?,
    })
}

/// Bumps the tenant's `updated_at`: the change feed's signal that its
/// snapshot (record, keys, providers) changed, in the change's transaction.
async fn touch_tenant(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId) -> Result<()> {
    sqlx::query("UPDATE tenants SET updated_at = ?2 WHERE id = ?1")
        .bind(tenant.to_string())
        .bind(micros(Utc::now()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_link(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId, l: &EmailLink) -> Result<()> {
    sqlx::query(
        "INSERT INTO email_links (tenant_id, user_id, kind, token_hash, email, code_challenge, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tenant_id, user_id, kind) DO UPDATE SET \
         token_hash = excluded.token_hash, email = excluded.email, code_challenge = excluded.code_challenge, \
         created_at = excluded.created_at, expires_at = excluded.expires_at",
    )
    .bind(tenant.to_string())
    .bind(l.user_id.to_string())
    .bind(&l.kind)
    .bind(&l.token_hash)
    .bind(&l.email)
    .bind(&l.code_challenge)
    .bind(micros(l.created_at))
    .bind(micros(l.expires_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_mail(tx: &mut Transaction<'static, Sqlite>, tenant: TenantId, m: &OutboxMail) -> Result<()> {
    sqlx::query(
        "INSERT INTO mail_outbox (id, tenant_id, kind, message_sealed, created_at, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )
    .bind(m.id.to_string())
    .bind(tenant.to_string())
    .bind(&m.kind)
    .bind(&m.message_sealed)
    .bind(micros(m.created_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces a user's recovery codes (deleting the old set).
async fn insert_recovery_codes(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: TenantId,
    user: UserId,
    hashes: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = ?1 AND user_id = ?2")
        .bind(tenant.to_string())
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    for h in hashes {
        sqlx::query("INSERT INTO recovery_codes (tenant_id, user_id, code_hash, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(h)
            .bind(micros(Utc::now()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn provider_from_row(row: &SqliteRow) -> Result<OAuthProviderRecord> {
    let scopes: String = row.try_get("scopes")?;
    Ok(OAuthProviderRecord {
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        display_name: row.try_get("display_name")?,
        client_id: row.try_get("client_id")?,
        client_secret_sealed: row.try_get("client_secret_sealed")?,
        issuer: row.try_get("issuer")?,
        scopes: serde_json::from_str(&scopes).map_err(|e| Error::Internal(e.to_string()))?,
        enabled: row.try_get("enabled")?,
        trust_email_verified: row.try_get("trust_email_verified")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
    })
}

async fn insert_identity(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: TenantId,
    identity: &Identity<'_>,
    user: UserId,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_identities (tenant_id, provider, issuer, subject, email, user_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(tenant.to_string())
    .bind(identity.provider)
    .bind(identity.issuer)
    .bind(identity.subject)
    .bind(identity.email)
    .bind(user.to_string())
    .bind(micros(Utc::now()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
