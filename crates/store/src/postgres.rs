//! The Postgres backend. The service connects with the `DATABASE_URL` user
//! and immediately `SET ROLE authd_app`, a role that owns no table and lacks
//! `BYPASSRLS`, so every tenant-owned query is filtered by row-level security
//! even if it forgot its `tenant_id` condition. The tenant is set per
//! transaction (`set_config('app.tenant_id', …, true)`), so it cannot leak
//! from one pooled use of a connection to the next.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Executor, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::rows::{Columns, Plain};
use crate::shared::{Backend, Binds, Dialect, Exec, Specific};
use crate::sql::{self, Arg, Stmt, client_columns, tenant_columns, user_columns};
use crate::{Error, Result};
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

impl Binds for Postgres {
    fn query(stmt: Stmt<'_>) -> Query<'static, Postgres, PgArguments> {
        let mut q = sqlx::query(stmt.sql);
        for arg in stmt.args {
            q = match arg {
                Arg::Id(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::Json(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Flag(v) => q.bind(v),
            };
        }
        q
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl Columns for PgRow {
    fn get<T: Plain>(&self, col: &str) -> Result<T> {
        Ok(self.try_get(col)?)
    }

    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        Ok(self.try_get(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }

    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        Ok(self.try_get(col)?)
    }
}

/// Every tenant-owned statement runs in a transaction that set the tenant
/// (the trait's default), so row-level security sees only its rows.
#[async_trait]
impl Backend for PgStore {
    type Row = PgRow;
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&self, tenant: TenantId) -> Result<Self::Tx> {
        self.tenant_tx(tenant).await
    }

    async fn begin_platform(&self) -> Result<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

    async fn pool_run(&self, stmt: Stmt<'_>) -> Result<u64> {
        Ok(Postgres::query(stmt).execute(&self.pool).await?.rows_affected())
    }

    async fn pool_optional(&self, stmt: Stmt<'_>) -> Result<Option<PgRow>> {
        Ok(Postgres::query(stmt).fetch_optional(&self.pool).await?)
    }

    async fn pool_all(&self, stmt: Stmt<'_>) -> Result<Vec<PgRow>> {
        Ok(Postgres::query(stmt).fetch_all(&self.pool).await?)
    }
}

/// Postgres' own: changes stamped with the database's clock (`now()`),
/// typed NULL parameters, row locks, the row-level security functions.
impl Dialect for PgStore {
    /// Explicitly (their foreign key cascades as well).
    const DELETE_CONSENTS: Option<&'static str> =
        Some("DELETE FROM oauth_consents WHERE tenant_id = $1 AND client_id = $2");

    /// Serialize admin changes of this tenant: lock its row.
    const LOCK_ADMINS: Option<&'static str> = Some("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE");

    const RESEAL_TOTP: &'static str = "UPDATE users SET totp_secret_sealed = $3, totp_pending_sealed = $4 \
        WHERE tenant_id = $1 AND id = $2 \
        AND totp_secret_sealed IS NOT DISTINCT FROM $5 AND totp_pending_sealed IS NOT DISTINCT FROM $6";

    /// One round trip (migration 0007): the function sets the tenant and
    /// reads the row under row-level security, in the statement's own
    /// transaction.
    const USER_BY_ID: &'static str = concat!("SELECT ", user_columns!(), " FROM authd_user_by_id($1, $2)");

    // Postgres types a parameter from its use: one that may be NULL where
    // nothing else types it is cast.

    const LIST_TENANTS: &'static str =
        concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2");

    const TENANT_SLUGS: &'static str =
        "SELECT id, slug FROM tenants WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2";

    const LIST_USERS: &'static str = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE tenant_id = $1 \
         AND ($2::text IS NULL OR email LIKE $2 ESCAPE '\\') \
         AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4"
    );

    const PLATFORM_EVENTS: &'static str = "SELECT * FROM platform_audit_events \
        WHERE ($1::timestamptz IS NULL OR (at, id) < ($1, $2)) ORDER BY at DESC, id DESC LIMIT $3";

    const AUDIT_EVENTS: &'static str = "SELECT * FROM audit_events WHERE tenant_id = $1 \
        AND ($2::text IS NULL OR type = $2) \
        AND ($3::uuid IS NULL OR actor_id = $3 OR subject_id = $3) \
        AND ($4::timestamptz IS NULL OR at >= $4) \
        AND ($5::timestamptz IS NULL OR at < $5) \
        AND ($6::timestamptz IS NULL OR (at, id) < ($6, $7)) \
        ORDER BY at DESC, id DESC LIMIT $8";

    fn touch_tenant(tenant: TenantId) -> Stmt<'static> {
        Stmt::new("UPDATE tenants SET updated_at = clock_timestamp() WHERE id = $1").id(tenant.0)
    }

    fn set_tenant_disabled(slug: &Slug, disabled: bool) -> Stmt<'_> {
        Stmt::new(concat!(
            "UPDATE tenants SET disabled = $2, updated_at = now() WHERE slug = $1 RETURNING ",
            tenant_columns!()
        ))
        .text(slug.as_str())
        .flag(disabled)
    }

    fn update_settings(tenant: TenantId, settings: serde_json::Value) -> Stmt<'static> {
        Stmt::new("UPDATE tenants SET settings = $2, updated_at = now() WHERE id = $1").id(tenant.0).json(settings)
    }

    fn set_totp_pending(tenant: TenantId, user: UserId, sealed: Option<&str>) -> Stmt<'_> {
        Stmt::tenant_user(
            "UPDATE users SET totp_pending_sealed = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2",
            tenant,
            user,
        )
        .opt_text(sealed)
    }

    fn enable_totp(tenant: TenantId, user: UserId, pending: &str, step: i64) -> Stmt<'_> {
        Stmt::tenant_user(
            "UPDATE users SET totp_secret_sealed = totp_pending_sealed, totp_pending_sealed = NULL, \
             totp_enabled = true, totp_last_step = $4, updated_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND totp_pending_sealed = $3",
            tenant,
            user,
        )
        .text(pending)
        .int(step)
    }

    fn disable_totp(tenant: TenantId, user: UserId) -> Stmt<'static> {
        Stmt::tenant_user(
            "UPDATE users SET totp_secret_sealed = NULL, totp_pending_sealed = NULL, totp_enabled = false, \
             totp_last_step = NULL, updated_at = now() WHERE tenant_id = $1 AND id = $2",
            tenant,
            user,
        )
    }

    fn insert_recovery_code(tenant: TenantId, user: UserId, hash: &str) -> Stmt<'_> {
        Stmt::tenant_user(
            "INSERT INTO recovery_codes (tenant_id, user_id, code_hash, created_at) VALUES ($1, $2, $3, now())",
            tenant,
            user,
        )
        .text(hash)
    }

    fn insert_identity<'a>(tenant: TenantId, identity: &Identity<'a>, user: UserId) -> Stmt<'a> {
        Stmt::new(
            "INSERT INTO user_identities (tenant_id, provider, issuer, subject, email, user_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now())",
        )
        .id(tenant.0)
        .text(identity.provider)
        .text(identity.issuer)
        .text(identity.subject)
        .opt_text(identity.email)
        .id(user.0)
    }

    fn set_oauth_client_secret<'a>(tenant: TenantId, client_id: &'a str, secret_hash: &'a str) -> Stmt<'a> {
        Stmt::new(concat!(
            "UPDATE oauth_clients SET secret_hash = $3, updated_at = now() \
             WHERE tenant_id = $1 AND client_id = $2 AND NOT public RETURNING ",
            client_columns!()
        ))
        .id(tenant.0)
        .text(client_id)
        .text(secret_hash)
    }

    fn grant_consent<'a>(tenant: TenantId, user: UserId, client_id: &'a str, scopes: &'a str) -> Stmt<'a> {
        Stmt::tenant_user(
            "INSERT INTO oauth_consents (tenant_id, user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (tenant_id, user_id, client_id) DO UPDATE SET scopes = EXCLUDED.scopes, granted_at = now()",
            tenant,
            user,
        )
        .text(client_id)
        .text(scopes)
    }

    fn link_effect<'a>(tenant: TenantId, link: &'a EmailLink, effect: Option<&'a LinkEffect>) -> Stmt<'a> {
        let stmt = |sql| Stmt::tenant_user(sql, tenant, link.user_id);
        match effect {
            None => stmt(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE tenant_id = $1 AND id = $2 AND $3::text IS NULL"
            ))
            .opt_text(None),
            Some(LinkEffect::VerifyEmail) => stmt(concat!(
                "UPDATE users SET email_verified = true, updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND email = $3 RETURNING ",
                user_columns!()
            ))
            .text(&link.email),
            Some(LinkEffect::SetPassword(phc)) => stmt(concat!(
                "UPDATE users SET password_hash = $3, email_verified = email_verified OR email = $4, \
                 updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ))
            .text(phc)
            .text(&link.email),
            Some(LinkEffect::ChangeEmail) => stmt(concat!(
                "UPDATE users SET email = $3, email_verified = true, updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ))
            .text(&link.email),
        }
    }

    fn update_user(tenant: TenantId, id: UserId, change: &UserChange) -> Stmt<'_> {
        Stmt::tenant_user(
            concat!(
                "UPDATE users SET password_hash = COALESCE($3, password_hash), role = COALESCE($4, role), \
                 disabled = COALESCE($5, disabled), updated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 RETURNING ",
                user_columns!()
            ),
            tenant,
            id,
        )
        .opt_text(change.password_hash.as_deref())
        .opt_text(change.role.map(|r| r.as_str()))
        .flag(change.disabled)
    }
}

#[async_trait]
impl Specific for PgStore {
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

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.tenant_tx(tenant).await?;
        tx.run(sql::insert_key(tenant, key)).await?;
        // One statement for every key to remove: an array parameter.
        sqlx::query("DELETE FROM signing_keys WHERE tenant_id = $1 AND kid = ANY($2)")
            .bind(tenant.0)
            .bind(remove)
            .execute(&mut *tx)
            .await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.run(Self::touch_tenant(tenant)).await?;
        tx.commit().await?;
        Ok(())
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
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await?;
        Ok(true)
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
}
