//! The Postgres backend. The service connects with the `DATABASE_URL` user
//! and immediately `SET ROLE authd_app`, a role that owns no table and lacks
//! `BYPASSRLS`, so every tenant-owned query is filtered by row-level security
//! even if it forgot its `tenant_id` condition. The tenant is set per
//! transaction (`set_config('app.tenant_id', …, true)`), so it cannot leak
//! from one pooled use of a connection to the next.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::settings::{SigningAlgorithm, TenantSettings};
use authd_core::{EventId, Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Executor, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{Error, Result, Store, role_from_str};
use authd_core::records::*;

/// The role the service runs as (created by the first migration).
pub const APP_ROLE: &str = "authd_app";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Applies the Postgres migrations as the connecting (owner) role.
pub async fn migrate_postgres(url: &str) -> Result<()> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| Error::Internal(e.to_string()))?;
    let pool =
        PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(10)).connect_with(opts).await?;
    MIGRATOR.run(&pool).await.map_err(|e| Error::Internal(e.to_string()))?;
    pool.close().await;
    Ok(())
}

/// Creates (or updates) `name`, a login role for the service: a member of
/// [`APP_ROLE`] that owns nothing, is no superuser and lacks `BYPASSRLS`, so
/// that even `RESET ROLE` after an SQL injection leaves row-level security in
/// force. Run as the owner role, after the migrations. `password` is set when
/// given (never logged).
pub async fn create_service_role(url: &str, name: &str, password: Option<&str>) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Internal("a service role name is 1 to 63 characters of a-z, 0-9 and _".into()));
    }
    let opts = PgConnectOptions::from_str(url).map_err(|e| Error::Internal(e.to_string()))?;
    let pool =
        PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(10)).connect_with(opts).await?;
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    let attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT";
    let verb = if exists { "ALTER" } else { "CREATE" };
    tx.execute(AssertSqlSafe(format!("{verb} ROLE {name} {attributes}"))).await?;
    if let Some(password) = password {
        // DDL takes no bind parameters: quote the literal (doubling quotes).
        let literal = password.replace('\'', "''");
        tx.execute(AssertSqlSafe(format!("ALTER ROLE {name} PASSWORD '{literal}'"))).await?;
    }
    tx.execute(AssertSqlSafe(format!("GRANT {APP_ROLE} TO {name}"))).await?;
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The change feed's own connection: it asks once a second forever, so
    /// it skips the pool's ping before each use (a transaction of its own
    /// in Postgres' statistics); a broken connection fails one look, and
    /// the next one reconnects.
    feed: PgPool,
}

/// How long the service waits on Postgres before answering `UNAVAILABLE`.
#[derive(Clone, Copy, Debug)]
pub struct PgTimeouts {
    /// Waiting for a pooled connection, a new connection's TCP and TLS
    /// handshake included (`AUTHD_DB_ACQUIRE_TIMEOUT_MS`). A stopped server
    /// refuses connections at once, so a request fails within this.
    pub acquire: Duration,
    /// Postgres' own `statement_timeout` on every connection
    /// (`AUTHD_DB_STATEMENT_TIMEOUT_MS`): a statement stuck on a lock or a
    /// slow disk is cancelled by the server.
    pub statement: Duration,
}

impl Default for PgTimeouts {
    fn default() -> Self {
        Self { acquire: Duration::from_millis(1000), statement: Duration::from_millis(5000) }
    }
}

impl PgStore {
    /// Connects with `url`, switching every connection to [`APP_ROLE`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, max_connections, PgTimeouts::default()).await
    }

    /// [`PgStore::connect`] with explicit timeouts.
    pub async fn connect_with(url: &str, max_connections: u32, timeouts: PgTimeouts) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url).map_err(|e| Error::Internal(e.to_string()))?;
        let statement_ms = timeouts.statement.as_millis().max(1);
        let options = |max: u32| {
            PgPoolOptions::new().max_connections(max).acquire_timeout(timeouts.acquire).after_connect(
                move |conn, _meta| {
                    Box::pin(async move {
                        conn.execute(AssertSqlSafe(format!("SET ROLE {APP_ROLE}"))).await?;
                        conn.execute(AssertSqlSafe(format!("SET statement_timeout = {statement_ms}"))).await?;
                        Ok(())
                    })
                },
            )
        };
        let pool = options(max_connections).connect_with(opts.clone()).await?;
        let feed = options(1).test_before_acquire(false).connect_lazy_with(opts);
        Ok(Self { pool, feed })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What is wrong with the role the service logged in as, for a warning at
    /// start-up: a superuser, a role with `BYPASSRLS`, or the owner of the
    /// schema's tables can drop or sidestep row-level security after a mere
    /// `RESET ROLE`. Empty when the login role is as it should be.
    pub async fn login_role_problems(&self) -> Result<Vec<String>> {
        let row = sqlx::query(
            "SELECT session_user::text AS name, r.rolsuper, r.rolbypassrls, \
             (SELECT count(*) FROM pg_tables t WHERE t.schemaname = current_schema() \
                AND t.tableowner = session_user) AS owned \
             FROM pg_roles r WHERE r.rolname = session_user",
        )
        .fetch_one(&self.pool)
        .await?;
        let name: String = row.try_get("name")?;
        let mut problems = Vec::new();
        if row.try_get::<bool, _>("rolsuper")? {
            problems.push(format!("the login role {name} is a superuser"));
        }
        if row.try_get::<bool, _>("rolbypassrls")? {
            problems.push(format!("the login role {name} has BYPASSRLS"));
        }
        let owned: i64 = row.try_get("owned")?;
        if owned > 0 {
            problems.push(format!("the login role {name} owns {owned} of the schema's tables"));
        }
        Ok(problems)
    }

    /// A transaction scoped to one tenant: row-level security sees only its rows.
    async fn tenant_tx(&self, tenant: TenantId) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(tenant.to_string()).execute(&mut *tx).await?;
        Ok(tx)
    }
}

fn tenant_from_row(row: &PgRow) -> Result<TenantRecord> {
    let settings: serde_json::Value = row.try_get("settings")?;
    let slug: String = row.try_get("slug")?;
    Ok(TenantRecord {
        id: TenantId(row.try_get("id")?),
        slug: Slug::parse(&slug).map_err(|e| Error::Internal(e.to_string()))?,
        name: row.try_get("name")?,
        disabled: row.try_get("disabled")?,
        settings: serde_json::from_value::<TenantSettings>(settings).map_err(|e| Error::Internal(e.to_string()))?,
        created_at: row.try_get("created_at")?,
    })
}

fn user_from_row(row: &PgRow) -> Result<UserRecord> {
    let role: String = row.try_get("role")?;
    Ok(UserRecord {
        id: UserId(row.try_get("id")?),
        email: row.try_get("email")?,
        email_verified: row.try_get("email_verified")?,
        password_hash: row.try_get("password_hash")?,
        role: role_from_str(&role)?,
        disabled: row.try_get("disabled")?,
        totp_enabled: row.try_get("totp_enabled")?,
        totp_secret_sealed: row.try_get("totp_secret_sealed")?,
        totp_pending_sealed: row.try_get("totp_pending_sealed")?,
        totp_last_step: row.try_get("totp_last_step")?,
        created_at: row.try_get("created_at")?,
    })
}

fn key_from_row(row: &PgRow) -> Result<SigningKeyRecord> {
    let alg: String = row.try_get("algorithm")?;
    Ok(SigningKeyRecord {
        kid: row.try_get("kid")?,
        algorithm: SigningAlgorithm::parse(&alg).map_err(|e| Error::Internal(e.to_string()))?,
        private_key_sealed: row.try_get("private_key_sealed")?,
        public_jwk: row.try_get("public_jwk")?,
        created_at: row.try_get("created_at")?,
        activates_at: row.try_get("activates_at")?,
    })
}

fn event_from_row(row: &PgRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: EventId(row.try_get("id")?),
        at: row.try_get("at")?,
        kind: row.try_get("type")?,
        actor_id: row.try_get::<Option<Uuid>, _>("actor_id")?.map(UserId),
        subject_id: row.try_get::<Option<Uuid>, _>("subject_id")?.map(UserId),
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        detail: row.try_get("detail")?,
    })
}

fn platform_event_from_row(row: &PgRow) -> Result<PlatformEvent> {
    Ok(PlatformEvent {
        id: EventId(row.try_get("id")?),
        at: row.try_get("at")?,
        kind: row.try_get("type")?,
        tenant_id: row.try_get::<Option<Uuid>, _>("tenant_id")?.map(TenantId),
        tenant_slug: row.try_get("tenant_slug")?,
        operator: row.try_get("operator")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        detail: row.try_get("detail")?,
    })
}

const USER_COLUMNS: &str = "id, email, email_verified, password_hash, role, disabled, totp_enabled, totp_secret_sealed, \
                            totp_pending_sealed, totp_last_step, created_at";
const TENANT_COLUMNS: &str = "id, slug, name, disabled, settings, created_at";

async fn insert_event(tx: &mut Transaction<'static, Postgres>, tenant: TenantId, e: &AuditEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, id, at, type, actor_id, subject_id, ip, user_agent, request_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(tenant.0)
    .bind(e.id.0)
    .bind(e.at)
    .bind(&e.kind)
    .bind(e.actor_id.map(|u| u.0))
    .bind(e.subject_id.map(|u| u.0))
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.request_id)
    .bind(&e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_platform_event(tx: &mut Transaction<'static, Postgres>, e: &PlatformEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO platform_audit_events (id, at, type, tenant_id, tenant_slug, operator, ip, user_agent, \
         request_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(e.id.0)
    .bind(e.at)
    .bind(&e.kind)
    .bind(e.tenant_id.map(|t| t.0))
    .bind(&e.tenant_slug)
    .bind(&e.operator)
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.request_id)
    .bind(&e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_user(tx: &mut Transaction<'static, Postgres>, tenant: TenantId, u: &NewUser) -> Result<UserRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, id, email, password_hash, role, created_at, updated_at, email_verified) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING {USER_COLUMNS}"
    )))
    .bind(tenant.0)
    .bind(u.id.0)
    .bind(&u.email)
    .bind(&u.password_hash)
    .bind(u.role.as_str())
    .bind(u.created_at)
    .bind(u.email_verified)
    .fetch_one(&mut **tx)
    .await?;
    user_from_row(&row)
}

async fn insert_key(tx: &mut Transaction<'static, Postgres>, tenant: TenantId, k: &SigningKeyRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO signing_keys (tenant_id, kid, algorithm, private_key_sealed, public_jwk, created_at, activates_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant.0)
    .bind(&k.kid)
    .bind(k.algorithm.as_str())
    .bind(&k.private_key_sealed)
    .bind(&k.public_jwk)
    .bind(k.created_at)
    .bind(k.activates_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn settings_json(settings: &TenantSettings) -> Result<serde_json::Value> {
    serde_json::to_value(settings).map_err(|e| Error::Internal(e.to_string()))
}

#[async_trait]
impl Store for PgStore {
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
        let mut tx = self.tenant_tx(tenant.id).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO tenants (id, slug, name, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.id.0)
        .bind(tenant.slug.as_str())
        .bind(&tenant.name)
        .bind(settings_json(&tenant.settings)?)
        .bind(tenant.created_at)
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
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1")))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1")))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>> {
        let wanted: Vec<Uuid> = ids.iter().map(|t| t.0).collect();
        let present: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = ANY($1)").bind(&wanted).fetch_all(&self.pool).await?;
        Ok(ids.iter().filter(|t| !present.contains(&t.0)).copied().collect())
    }

    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)> {
        // One statement (one transaction, one round trip) with the clock.
        let row = sqlx::query(
            "SELECT now() AS now, \
                    COALESCE(array_agg(id ORDER BY updated_at), '{}') AS ids, \
                    COALESCE(array_agg(updated_at ORDER BY updated_at), '{}') AS ats \
             FROM (SELECT id, updated_at FROM tenants WHERE updated_at > $1 ORDER BY updated_at LIMIT 10000) t",
        )
        .bind(since)
        .fetch_one(&self.feed)
        .await?;
        let now: DateTime<Utc> = row.try_get("now")?;
        let ids: Vec<Uuid> = row.try_get("ids")?;
        let ats: Vec<DateTime<Utc>> = row.try_get("ats")?;
        Ok((ids.into_iter().map(TenantId).zip(ats).collect(), now))
    }

    async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
        )))
        .bind(after.map(|t| t.0))
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tenants SET disabled = $2, updated_at = now() WHERE slug = $1 RETURNING {TENANT_COLUMNS}"
        )))
        .bind(slug.as_str())
        .bind(disabled)
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
        let mut tx = self.pool.begin().await?;
        // Tenant-owned rows go by ON DELETE CASCADE, which Postgres runs as
        // the tables' owner, past row-level security, in this transaction.
        let id: Option<Uuid> = sqlx::query_scalar("DELETE FROM tenants WHERE slug = $1 RETURNING id")
            .bind(slug.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else { return Ok(None) };
        let mut event = event.clone();
        event.tenant_id = Some(TenantId(id));
        insert_platform_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Some(TenantId(id)))
    }

    async fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> Result<Vec<PlatformEvent>> {
        let (at, id) = after.map(|(a, i)| (Some(a), Some(i.0))).unwrap_or((None, None));
        let rows = sqlx::query(
            "SELECT * FROM platform_audit_events \
             WHERE ($1::timestamptz IS NULL OR (at, id) < ($1, $2)) ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(platform_event_from_row).collect()
    }

    async fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query("UPDATE tenants SET settings = $2, updated_at = now() WHERE id = $1")
            .bind(tenant.0)
            .bind(settings_json(settings)?)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> Result<UserRecord> {
        let mut tx = self.tenant_tx(tenant).await?;
        let record = insert_user(&mut tx, tenant, user).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn user_by_email(&self, tenant: TenantId, email: &str) -> Result<Option<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND email = $2")))
                .bind(tenant.0)
                .bind(email)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// One round trip (migration 0007): the function sets the tenant and
    /// reads the row under row-level security, in the statement's own
    /// transaction.
    async fn user_by_id(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM authd_user_by_id($1, $2)")))
            .bind(tenant.0)
            .bind(id.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
        let pattern = email_prefix.map(|p| format!("{}%", escape_like(p)));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR email LIKE $2 ESCAPE '\\') \
             AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4"
        )))
        .bind(tenant.0)
        .bind(pattern)
        .bind(after.map(|u| u.0))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        change: &UserChange,
        event: Option<&AuditEvent>,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        if change.keep_an_admin {
            // Serialize admin changes of this tenant: lock its row.
            sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.0).execute(&mut *tx).await?;
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE users SET password_hash = COALESCE($3, password_hash), role = COALESCE($4, role), \
             disabled = COALESCE($5, disabled), updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 RETURNING {USER_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(id.0)
        .bind(&change.password_hash)
        .bind(change.role.map(|r| r.as_str()))
        .bind(change.disabled)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if change.keep_an_admin {
            let admins: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled",
            )
            .bind(tenant.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled")
                .bind(tenant.0)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn signing_keys(&self, tenant: TenantId) -> Result<Vec<SigningKeyRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query("SELECT * FROM signing_keys WHERE tenant_id = $1 ORDER BY activates_at, kid")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        insert_key(&mut tx, tenant, key).await?;
        sqlx::query("DELETE FROM signing_keys WHERE tenant_id = $1 AND kid = ANY($2)")
            .bind(tenant.0)
            .bind(remove)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        for (kid, value) in sealed {
            sqlx::query("UPDATE signing_keys SET private_key_sealed = $3 WHERE tenant_id = $1 AND kid = $2")
                .bind(tenant.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
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
        let (at, id) = after.map(|(a, i)| (Some(a), Some(i.0))).unwrap_or((None, None));
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR type = $2) \
             AND ($3::uuid IS NULL OR actor_id = $3 OR subject_id = $3) \
             AND ($4::timestamptz IS NULL OR at >= $4) \
             AND ($5::timestamptz IS NULL OR at < $5) \
             AND ($6::timestamptz IS NULL OR (at, id) < ($6, $7)) \
             ORDER BY at DESC, id DESC LIMIT $8",
        )
        .bind(tenant.0)
        .bind(&filter.kind)
        .bind(filter.user_id.map(|u| u.0))
        .bind(filter.since)
        .bind(filter.until)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.tenant_tx(tenant).await?;
        let n: i64 = sqlx::query_scalar("SELECT authd_purge_audit_events($1, $2)")
            .bind(tenant.0)
            .bind(before)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let done = sqlx::query(
            "UPDATE users SET totp_pending_sealed = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let mut tx = self.tenant_tx(tenant).await?;
        let done = sqlx::query(
            "UPDATE users SET totp_secret_sealed = totp_pending_sealed, totp_pending_sealed = NULL, \
             totp_enabled = true, totp_last_step = $4, updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND totp_pending_sealed = $3",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(pending_sealed)
        .bind(step)
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
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query(
            "UPDATE users SET totp_secret_sealed = NULL, totp_pending_sealed = NULL, totp_enabled = false, \
             totp_last_step = NULL, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.0)
        .bind(user.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
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
        let mut tx = self.tenant_tx(tenant).await?;
        // One row at most: the first unused match.
        let used: Option<String> = sqlx::query_scalar(
            "UPDATE recovery_codes SET used_at = now() WHERE tenant_id = $1 AND user_id = $2 AND code_hash = \
             (SELECT code_hash FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL \
              AND code_hash = ANY($3) LIMIT 1 FOR UPDATE) AND used_at IS NULL RETURNING code_hash",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(candidates)
        .fetch_optional(&mut *tx)
        .await?;
        if used.is_none() {
            return Ok(false);
        }
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> Result<u64> {
        let mut tx = self.tenant_tx(tenant).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
        )
        .bind(tenant.0)
        .bind(user.0)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $3 WHERE tenant_id = $1 AND id = $2 AND totp_enabled \
             AND (totp_last_step IS NULL OR totp_last_step < $3)",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn sealed_totp_secrets(&self, tenant: TenantId) -> Result<Vec<(UserId, Option<String>, Option<String>)>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query(
            "SELECT id, totp_secret_sealed, totp_pending_sealed FROM users WHERE tenant_id = $1 \
             AND (totp_secret_sealed IS NOT NULL OR totp_pending_sealed IS NOT NULL)",
        )
        .bind(tenant.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok((UserId(r.try_get("id")?), r.try_get("totp_secret_sealed")?, r.try_get("totp_pending_sealed")?))
            })
            .collect()
    }

    async fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> Result<u64> {
        let mut tx = self.tenant_tx(tenant).await?;
        let mut replaced = 0;
        for r in sealed {
            let done = sqlx::query(
                "UPDATE users SET totp_secret_sealed = $3, totp_pending_sealed = $4 \
                 WHERE tenant_id = $1 AND id = $2 \
                 AND totp_secret_sealed IS NOT DISTINCT FROM $5 AND totp_pending_sealed IS NOT DISTINCT FROM $6",
            )
            .bind(tenant.0)
            .bind(r.user.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query("SELECT * FROM oauth_providers WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(provider_from_row).collect()
    }

    async fn upsert_oauth_provider(
        &self,
        tenant: TenantId,
        p: &OAuthProviderRecord,
        event: &AuditEvent,
    ) -> Result<OAuthProviderRecord> {
        let mut tx = self.tenant_tx(tenant).await?;
        let scopes = serde_json::to_value(&p.scopes).map_err(|e| Error::Internal(e.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO oauth_providers (tenant_id, name, kind, display_name, client_id, client_secret_sealed, \
             issuer, scopes, enabled, trust_email_verified, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET kind = EXCLUDED.kind, display_name = EXCLUDED.display_name, \
             client_id = EXCLUDED.client_id, \
             client_secret_sealed = COALESCE(EXCLUDED.client_secret_sealed, oauth_providers.client_secret_sealed), \
             issuer = EXCLUDED.issuer, scopes = EXCLUDED.scopes, enabled = EXCLUDED.enabled, \
             trust_email_verified = EXCLUDED.trust_email_verified, updated_at = EXCLUDED.updated_at \
             RETURNING *",
        )
        .bind(tenant.0)
        .bind(&p.name)
        .bind(&p.kind)
        .bind(&p.display_name)
        .bind(&p.client_id)
        .bind(&p.client_secret_sealed)
        .bind(&p.issuer)
        .bind(scopes)
        .bind(p.enabled)
        .bind(p.trust_email_verified)
        .bind(p.created_at)
        .bind(p.updated_at)
        .fetch_one(&mut *tx)
        .await?;
        let record = provider_from_row(&row)?;
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let deleted = sqlx::query("DELETE FROM oauth_providers WHERE tenant_id = $1 AND name = $2")
            .bind(tenant.0)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM user_identities WHERE tenant_id = $1 AND provider = $2")
            .bind(tenant.0)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, tenant, event).await?;
        touch_tenant(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> Result<Option<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = \
             (SELECT user_id FROM user_identities \
             WHERE tenant_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4)"
        )))
        .bind(tenant.0)
        .bind(identity.provider)
        .bind(identity.issuer)
        .bind(identity.subject)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn link_identity(
        &self,
        tenant: TenantId,
        identity: &Identity<'_>,
        user: UserId,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
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
        let mut tx = self.tenant_tx(tenant).await?;
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
        let mut tx = self.tenant_tx(tenant).await?;
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
        let mut tx = self.tenant_tx(tenant).await?;
        upsert_link(&mut tx, tenant, link).await?;
        insert_mail(&mut tx, tenant, mail).await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn link_by_hash(&self, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(
            "SELECT user_id, kind, token_hash, email, code_challenge, created_at, expires_at FROM email_links \
             WHERE tenant_id = $1 AND token_hash = $2",
        )
        .bind(tenant.0)
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|r| {
            Ok(EmailLink {
                user_id: UserId(r.try_get("user_id")?),
                kind: r.try_get("kind")?,
                token_hash: r.try_get("token_hash")?,
                email: r.try_get("email")?,
                code_challenge: r.try_get("code_challenge")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
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
        let mut tx = self.tenant_tx(tenant).await?;
        let taken = sqlx::query(
            "DELETE FROM email_links WHERE tenant_id = $1 AND user_id = $2 AND kind = $3 AND token_hash = $4",
        )
        .bind(tenant.0)
        .bind(link.user_id.0)
        .bind(&link.kind)
        .bind(&link.token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            return Ok(None);
        }
        let (sql, value): (String, Option<&str>) = match effect {
            None => (
                format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2 AND $3::text IS NULL"),
                None,
            ),
            Some(LinkEffect::VerifyEmail) => (
                format!(
                    "UPDATE users SET email_verified = true, updated_at = now() \
                     WHERE tenant_id = $1 AND id = $2 AND email = $3 RETURNING {USER_COLUMNS}"
                ),
                Some(&link.email),
            ),
            Some(LinkEffect::SetPassword(phc)) => (
                format!(
                    "UPDATE users SET password_hash = $3, email_verified = email_verified OR email = $4, \
                     updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING {USER_COLUMNS}"
                ),
                Some(phc),
            ),
            Some(LinkEffect::ChangeEmail) => (
                format!(
                    "UPDATE users SET email = $3, email_verified = true, updated_at = now() \
                     WHERE tenant_id = $1 AND id = $2 RETURNING {USER_COLUMNS}"
                ),
                Some(&link.email),
            ),
        };
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(tenant.0).bind(link.user_id.0).bind(value);
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
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query("DELETE FROM email_links WHERE tenant_id = $1 AND user_id = $2 AND kind = $3")
            .bind(tenant.0)
            .bind(user.0)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_mail(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<QueuedMail>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        // SKIP LOCKED: replicas claiming at the same moment take different
        // rows; the lease keeps a row away from others while it is sent.
        let rows = sqlx::query(
            "UPDATE mail_outbox SET claimed_until = $2, attempts = attempts + 1 WHERE id IN ( \
                 SELECT id FROM mail_outbox WHERE failed_at IS NULL AND next_attempt_at <= $1 \
                 AND (claimed_until IS NULL OR claimed_until < $1) \
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant_id, kind, message_sealed, created_at, attempts",
        )
        .bind(now)
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedMail {
                    id: r.try_get("id")?,
                    tenant_id: TenantId(r.try_get("tenant_id")?),
                    kind: r.try_get("kind")?,
                    message_sealed: r.try_get("message_sealed")?,
                    created_at: r.try_get("created_at")?,
                    attempts: u32::try_from(r.try_get::<i32, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn mail_delivered(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_outbox WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn mail_deferred(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        sqlx::query("UPDATE mail_outbox SET next_attempt_at = $2, claimed_until = NULL, last_error = $3 WHERE id = $1")
            .bind(id)
            .bind(retry_at)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mail_abandoned(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_outbox WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn passkeys(&self, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at, id"
        )))
        .bind(tenant.0)
        .bind(user.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(passkey_from_row).collect()
    }

    async fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> Result<Option<PasskeyRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE tenant_id = $1 AND credential_id = $2"
        )))
        .bind(tenant.0)
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(passkey_from_row).transpose()
    }

    async fn insert_passkey(&self, tenant: TenantId, p: &PasskeyRecord, event: &AuditEvent) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query(
            "INSERT INTO passkeys (tenant_id, id, user_id, credential_id, name, credential, sign_count, \
             backup_eligible, backup_state, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(tenant.0)
        .bind(p.id)
        .bind(p.user_id.0)
        .bind(&p.credential_id)
        .bind(&p.name)
        .bind(&p.credential)
        .bind(p.sign_count)
        .bind(p.backup_eligible)
        .bind(p.backup_state)
        .bind(p.created_at)
        .bind(p.last_used_at)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_passkey_use(&self, tenant: TenantId, p: &PasskeyRecord, previous_count: i64) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let n = sqlx::query(
            "UPDATE passkeys SET credential = $3, sign_count = $4, backup_state = $5, last_used_at = $6 \
             WHERE tenant_id = $1 AND id = $2 AND sign_count = $7",
        )
        .bind(tenant.0)
        .bind(p.id)
        .bind(&p.credential)
        .bind(p.sign_count)
        .bind(p.backup_state)
        .bind(p.last_used_at)
        .bind(previous_count)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn rename_passkey(
        &self,
        tenant: TenantId,
        user: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE passkeys SET name = $4 WHERE tenant_id = $1 AND user_id = $2 AND id = $3 RETURNING {PASSKEY_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(user.0)
        .bind(id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(passkey_from_row).transpose()
    }

    async fn delete_passkey(&self, tenant: TenantId, user: UserId, id: Uuid, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let n = sqlx::query("DELETE FROM passkeys WHERE tenant_id = $1 AND user_id = $2 AND id = $3")
            .bind(tenant.0)
            .bind(user.0)
            .bind(id)
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
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = $1 ORDER BY created_at, client_id"
        )))
        .bind(tenant.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(client_from_row).collect()
    }

    async fn oauth_client(&self, tenant: TenantId, client_id: &str) -> Result<Option<OAuthClientRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2"
        )))
        .bind(tenant.0)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(client_from_row).transpose()
    }

    async fn save_oauth_client(
        &self,
        tenant: TenantId,
        c: &OAuthClientRecord,
        create: bool,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let json = |v: &Vec<String>| serde_json::to_value(v).unwrap_or_default();
        let row = if create {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO oauth_clients (tenant_id, client_id, name, secret_hash, redirect_uris, \
                 post_logout_redirect_uris, public, first_party, grant_types, scopes, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {CLIENT_COLUMNS}"
            )))
            .bind(tenant.0)
            .bind(&c.client_id)
            .bind(&c.name)
            .bind(&c.secret_hash)
            .bind(json(&c.redirect_uris))
            .bind(json(&c.post_logout_redirect_uris))
            .bind(c.public)
            .bind(c.first_party)
            .bind(json(&c.grant_types))
            .bind(json(&c.scopes))
            .bind(c.created_at)
            .bind(c.updated_at)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE oauth_clients SET name = $3, redirect_uris = $4, post_logout_redirect_uris = $5, \
                 first_party = $6, grant_types = $7, scopes = $8, updated_at = $9 \
                 WHERE tenant_id = $1 AND client_id = $2 RETURNING {CLIENT_COLUMNS}"
            )))
            .bind(tenant.0)
            .bind(&c.client_id)
            .bind(&c.name)
            .bind(json(&c.redirect_uris))
            .bind(json(&c.post_logout_redirect_uris))
            .bind(c.first_party)
            .bind(json(&c.grant_types))
            .bind(json(&c.scopes))
            .bind(c.updated_at)
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some(row) = row else { return Ok(None) };
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        client_from_row(&row).map(Some)
    }

    async fn set_oauth_client_secret(
        &self,
        tenant: TenantId,
        client_id: &str,
        secret_hash: &str,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE oauth_clients SET secret_hash = $3, updated_at = now() \
             WHERE tenant_id = $1 AND client_id = $2 AND NOT public RETURNING {CLIENT_COLUMNS}"
        )))
        .bind(tenant.0)
        .bind(client_id)
        .bind(secret_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        client_from_row(&row).map(Some)
    }

    async fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query("DELETE FROM oauth_consents WHERE tenant_id = $1 AND client_id = $2")
            .bind(tenant.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2")
            .bind(tenant.0)
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
        let mut tx = self.tenant_tx(tenant).await?;
        let scopes: Option<String> = sqlx::query_scalar(
            "SELECT scopes FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(scopes)
    }

    async fn grant_consent(
        &self,
        tenant: TenantId,
        user: UserId,
        client_id: &str,
        scopes: &str,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query(
            "INSERT INTO oauth_consents (tenant_id, user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (tenant_id, user_id, client_id) DO UPDATE SET scopes = EXCLUDED.scopes, granted_at = now()",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(client_id)
        .bind(scopes)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, tenant, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let n = sqlx::query("DELETE FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3")
            .bind(tenant.0)
            .bind(user.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let row =
            sqlx::query("SELECT count(*) AS n, min(created_at) AS oldest FROM mail_outbox WHERE failed_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(OutboxStats {
            queued: u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0),
            oldest: row.try_get("oldest")?,
        })
    }
}

const CLIENT_COLUMNS: &str = "client_id, name, secret_hash, redirect_uris, post_logout_redirect_uris, public, first_party, \
                              grant_types, scopes, created_at, updated_at";

fn client_from_row(row: &PgRow) -> Result<OAuthClientRecord> {
    let list = |col: &str| -> Result<Vec<String>> {
        let v: serde_json::Value = row.try_get(col)?;
        serde_json::from_value(v).map_err(|e| Error::Internal(e.to_string()))
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
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const PASSKEY_COLUMNS: &str = "id, user_id, credential_id, name, credential, sign_count, backup_eligible, backup_state, \
                               created_at, last_used_at";

fn passkey_from_row(row: &PgRow) -> Result<PasskeyRecord> {
    Ok(PasskeyRecord {
        id: row.try_get("id")?,
        user_id: UserId(row.try_get("user_id")?),
        credential_id: row.try_get("credential_id")?,
        name: row.try_get("name")?,
        credential: row.try_get("credential")?,
        sign_count: row.try_get("sign_count")?,
        backup_eligible: row.try_get("backup_eligible")?,
        backup_state: row.try_get("backup_state")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// Bumps the tenant's `updated_at`: the change feed's signal that its
/// snapshot (record, keys, providers) changed, in the change's transaction.
async fn touch_tenant(tx: &mut Transaction<'static, Postgres>, tenant: TenantId) -> Result<()> {
    sqlx::query("UPDATE tenants SET updated_at = clock_timestamp() WHERE id = $1")
        .bind(tenant.0)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_link(tx: &mut Transaction<'static, Postgres>, tenant: TenantId, l: &EmailLink) -> Result<()> {
    sqlx::query(
        "INSERT INTO email_links (tenant_id, user_id, kind, token_hash, email, code_challenge, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, user_id, kind) DO UPDATE SET \
         token_hash = EXCLUDED.token_hash, email = EXCLUDED.email, code_challenge = EXCLUDED.code_challenge, \
         created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
    )
    .bind(tenant.0)
    .bind(l.user_id.0)
    .bind(&l.kind)
    .bind(&l.token_hash)
    .bind(&l.email)
    .bind(&l.code_challenge)
    .bind(l.created_at)
    .bind(l.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_mail(tx: &mut Transaction<'static, Postgres>, tenant: TenantId, m: &OutboxMail) -> Result<()> {
    sqlx::query(
        "INSERT INTO mail_outbox (id, tenant_id, kind, message_sealed, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(m.id)
    .bind(tenant.0)
    .bind(&m.kind)
    .bind(&m.message_sealed)
    .bind(m.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces a user's recovery codes (deleting the old set).
async fn insert_recovery_codes(
    tx: &mut Transaction<'static, Postgres>,
    tenant: TenantId,
    user: UserId,
    hashes: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant.0)
        .bind(user.0)
        .execute(&mut **tx)
        .await?;
    for h in hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (tenant_id, user_id, code_hash, created_at) VALUES ($1, $2, $3, now())",
        )
        .bind(tenant.0)
        .bind(user.0)
        .bind(h)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Escapes `%`, `_` and `\` so a user-supplied prefix matches literally.
pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn provider_from_row(row: &PgRow) -> Result<OAuthProviderRecord> {
    let scopes: serde_json::Value = row.try_get("scopes")?;
    Ok(OAuthProviderRecord {
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        display_name: row.try_get("display_name")?,
        client_id: row.try_get("client_id")?,
        client_secret_sealed: row.try_get("client_secret_sealed")?,
        issuer: row.try_get("issuer")?,
        scopes: serde_json::from_value(scopes).map_err(|e| Error::Internal(e.to_string()))?,
        enabled: row.try_get("enabled")?,
        trust_email_verified: row.try_get("trust_email_verified")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn insert_identity(
    tx: &mut Transaction<'static, Postgres>,
    tenant: TenantId,
    identity: &Identity<'_>,
    user: UserId,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_identities (tenant_id, provider, issuer, subject, email, user_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now())",
    )
    .bind(tenant.0)
    .bind(identity.provider)
    .bind(identity.issuer)
    .bind(identity.subject)
    .bind(identity.email)
    .bind(user.0)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
