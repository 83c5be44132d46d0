//! [`Store`] for both backends, once: the operations whose steps are the
//! same (which statements, in which transaction, with which audit events)
//! are written here over what a backend supplies: how it runs a statement
//! ([`Binds`], [`Backend`]), the statements its dialect says differently
//! ([`Dialect`]), and the operations it takes its own way ([`Specific`]).

use std::time::Duration;

use async_trait::async_trait;
use authd_core::records::*;
use authd_core::settings::TenantSettings;
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{Database, Executor, IntoArguments, Transaction};
use uuid::Uuid;

use crate::rows::{self, Columns};
use crate::sql::{self, Stmt, escape_like};
use crate::{Error, Result, Store};

/// Runs statements in one transaction.
#[async_trait]
pub(crate) trait Exec: Send + Sized {
    type Row: Columns + Send;

    /// Rows affected.
    async fn run(&mut self, stmt: Stmt<'_>) -> Result<u64>;

    async fn optional(&mut self, stmt: Stmt<'_>) -> Result<Option<Self::Row>>;

    async fn all(&mut self, stmt: Stmt<'_>) -> Result<Vec<Self::Row>>;

    async fn commit(self) -> Result<()>;

    /// A statement that answers one row (`RETURNING`, a count).
    async fn one(&mut self, stmt: Stmt<'_>) -> Result<Self::Row> {
        exactly_one(self.optional(stmt).await?)
    }
}

/// A database that runs [`Stmt`]s: it binds their values as its schema
/// stores them.
pub(crate) trait Binds: Database {
    fn query(stmt: Stmt<'_>) -> Query<'static, Self, Self::Arguments>;

    fn rows_affected(done: &Self::QueryResult) -> u64;
}

#[async_trait]
impl<DB> Exec for Transaction<'static, DB>
where
    DB: Binds,
    DB::Row: Columns,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Row = DB::Row;

    async fn run(&mut self, stmt: Stmt<'_>) -> Result<u64> {
        Ok(DB::rows_affected(&DB::query(stmt).execute(&mut **self).await?))
    }

    async fn optional(&mut self, stmt: Stmt<'_>) -> Result<Option<DB::Row>> {
        Ok(DB::query(stmt).fetch_optional(&mut **self).await?)
    }

    async fn all(&mut self, stmt: Stmt<'_>) -> Result<Vec<DB::Row>> {
        Ok(DB::query(stmt).fetch_all(&mut **self).await?)
    }

    async fn commit(self) -> Result<()> {
        Ok(Transaction::commit(self).await?)
    }
}

/// The statements whose text differs between the dialects, each built by
/// its backend (which says why).
pub(crate) trait Dialect {
    /// Deletes a client's consents before the client (values: tenant,
    /// client id); `None` where the foreign key's cascade is left to it.
    const DELETE_CONSENTS: Option<&'static str>;

    /// Serializes the changes that must leave the tenant an admin, before
    /// the change (value: the tenant); `None` where nothing needs to.
    const LOCK_ADMINS: Option<&'static str>;

    /// Only where the row still holds the values read (compare-and-swap).
    /// Values: tenant, user, active, pending, the active and pending read.
    const RESEAL_TOTP: &'static str;

    /// Values: tenant, user.
    const USER_BY_ID: &'static str;

    /// Values: the id to list after (NULL: from the first), limit.
    const LIST_TENANTS: &'static str;

    /// Only `id` and `slug` of [`Self::LIST_TENANTS`]' rows; same values.
    const TENANT_SLUGS: &'static str;

    /// Values: tenant, an email `LIKE` pattern escaped with `\` (NULL:
    /// any), the id to list after (NULL: from the first), limit.
    const LIST_USERS: &'static str;

    /// Newest first. Values: the cursor's time and id (NULL: from the
    /// newest), limit.
    const PLATFORM_EVENTS: &'static str;

    /// Newest first. Values: tenant, type, user (actor or subject), since,
    /// until (each NULL: any), the cursor's time and id, limit.
    const AUDIT_EVENTS: &'static str;

    /// Bumps the tenant's `updated_at`: the change feed's signal that its
    /// snapshot (record, keys, providers) changed, in the change's transaction.
    fn touch_tenant(tenant: TenantId) -> Stmt<'static>;

    /// `RETURNING` the tenant's columns.
    fn set_tenant_disabled(slug: &Slug, disabled: bool) -> Stmt<'_>;

    fn update_settings(tenant: TenantId, settings: serde_json::Value) -> Stmt<'static>;

    fn set_totp_pending(tenant: TenantId, user: UserId, sealed: Option<&str>) -> Stmt<'_>;

    /// Only while the pending secret is still `pending`.
    fn enable_totp(tenant: TenantId, user: UserId, pending: &str, step: i64) -> Stmt<'_>;

    fn disable_totp(tenant: TenantId, user: UserId) -> Stmt<'static>;

    fn insert_recovery_code(tenant: TenantId, user: UserId, hash: &str) -> Stmt<'_>;

    fn insert_identity<'a>(tenant: TenantId, identity: &Identity<'a>, user: UserId) -> Stmt<'a>;

    /// Only of a confidential client; `RETURNING` the client's columns.
    fn set_oauth_client_secret<'a>(tenant: TenantId, client_id: &'a str, secret_hash: &'a str) -> Stmt<'a>;

    /// Records or replaces the consent.
    fn grant_consent<'a>(tenant: TenantId, user: UserId, client_id: &'a str, scopes: &'a str) -> Stmt<'a>;

    /// A redeemed link's effect on its user (with none, just the user),
    /// `RETURNING` the user.
    fn link_effect<'a>(tenant: TenantId, link: &'a EmailLink, effect: Option<&'a LinkEffect>) -> Stmt<'a>;

    /// `RETURNING` the user.
    fn update_user(tenant: TenantId, id: UserId, change: &UserChange) -> Stmt<'_>;
}

/// How a backend runs statements.
#[async_trait]
pub(crate) trait Backend: Dialect + Sync {
    type Row: Columns + Send;
    type Tx: Exec<Row = Self::Row>;

    /// A transaction on the tenant's rows.
    async fn begin(&self, tenant: TenantId) -> Result<Self::Tx>;

    /// A transaction on the platform's rows: tenants and the operators' log.
    async fn begin_platform(&self) -> Result<Self::Tx>;

    /// One statement on platform-wide rows (tenants, the mail outbox).
    async fn pool_run(&self, stmt: Stmt<'_>) -> Result<u64>;

    async fn pool_optional(&self, stmt: Stmt<'_>) -> Result<Option<Self::Row>>;

    async fn pool_all(&self, stmt: Stmt<'_>) -> Result<Vec<Self::Row>>;

    /// One statement on the tenant's rows, in a transaction of its own
    /// (a backend without row-level security may run it on the pool).
    async fn run(&self, tenant: TenantId, stmt: Stmt<'_>) -> Result<u64> {
        let mut tx = self.begin(tenant).await?;
        let n = tx.run(stmt).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn optional(&self, tenant: TenantId, stmt: Stmt<'_>) -> Result<Option<Self::Row>> {
        let mut tx = self.begin(tenant).await?;
        let row = tx.optional(stmt).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn all(&self, tenant: TenantId, stmt: Stmt<'_>) -> Result<Vec<Self::Row>> {
        let mut tx = self.begin(tenant).await?;
        let rows = tx.all(stmt).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// The row of a statement that answers one, as sqlx's `fetch_one` has it.
fn exactly_one<R>(row: Option<R>) -> Result<R> {
    row.ok_or_else(|| Error::from(sqlx::Error::RowNotFound))
}

fn map_rows<R, T>(rows: Vec<R>, map: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(map).collect()
}

fn map_row<R, T>(row: Option<R>, map: impl Fn(&R) -> Result<T>) -> Result<Option<T>> {
    row.as_ref().map(map).transpose()
}

/// The operations each backend takes its own way (arrays, locks, Postgres'
/// functions, SQLite's single writer), with the reason at the backend.
#[async_trait]
pub(crate) trait Specific: Send + Sync + 'static {
    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>>;

    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)>;

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()>;

    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64>;

    async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: UserId,
        candidates: &[String],
        event: &AuditEvent,
    ) -> Result<bool>;

    async fn claim_mail(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<QueuedMail>>;
}

async fn insert_events(tx: &mut impl Exec, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
    for e in events {
        tx.run(sql::insert_event(tenant, e)).await?;
    }
    Ok(())
}

/// Replaces a user's recovery codes (deleting the old set) and records the event.
async fn replace_codes<B: Backend>(
    tx: &mut B::Tx,
    tenant: TenantId,
    user: UserId,
    hashes: &[String],
    event: &AuditEvent,
) -> Result<()> {
    tx.run(sql::delete_recovery_codes(tenant, user)).await?;
    for h in hashes {
        tx.run(B::insert_recovery_code(tenant, user, h)).await?;
    }
    tx.run(sql::insert_event(tenant, event)).await?;
    Ok(())
}

/// Stores the link, queues its mail and records the event.
async fn issue(
    tx: &mut impl Exec,
    tenant: TenantId,
    link: &EmailLink,
    mail: &OutboxMail,
    event: &AuditEvent,
) -> Result<()> {
    tx.run(sql::upsert_link(tenant, link)).await?;
    tx.run(sql::insert_mail(tenant, mail)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    Ok(())
}

/// Runs a statement `RETURNING` a client and, when it answered one, records
/// the event; `None` (and nothing changed) when it did not.
async fn write_client<B: Backend>(
    b: &B,
    tenant: TenantId,
    stmt: Stmt<'_>,
    event: &AuditEvent,
) -> Result<Option<OAuthClientRecord>> {
    let mut tx = b.begin(tenant).await?;
    let Some(row) = tx.optional(stmt).await? else { return Ok(None) };
    let record = rows::client(&row)?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await?;
    Ok(Some(record))
}

/// [`Store`] for every backend: the operations whose steps are the same are
/// written here once; the others are the backend's [`Specific`] ones.
#[async_trait]
impl<B: Backend + Specific> Store for B {
    // ---- what each backend does its own way ----

    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>> {
        Specific::missing_tenants(self, ids).await
    }

    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)> {
        Specific::tenants_changed_since(self, since).await
    }

    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        Specific::add_signing_key(self, tenant, key, remove, event).await
    }

    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64> {
        Specific::purge_audit_events(self, tenant, before).await
    }

    async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: UserId,
        candidates: &[String],
        event: &AuditEvent,
    ) -> Result<bool> {
        Specific::use_recovery_code(self, tenant, user, candidates, event).await
    }

    async fn claim_mail(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<QueuedMail>> {
        Specific::claim_mail(self, now, lease, limit).await
    }

    // ---- the same in both ----

    async fn ping(&self) -> Result<()> {
        self.pool_run(Stmt::new("SELECT 1")).await?;
        Ok(())
    }

    async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>> {
        let stmt = Stmt::new(B::LIST_TENANTS).id(after.map(|t| t.0)).int(i64::from(limit));
        map_rows(self.pool_all(stmt).await?, rows::tenant)
    }

    async fn tenant_slugs(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<(TenantId, String)>> {
        let stmt = Stmt::new(B::TENANT_SLUGS).id(after.map(|t| t.0)).int(i64::from(limit));
        map_rows(self.pool_all(stmt).await?, |r| Ok((TenantId(r.id("id")?), r.get("slug")?)))
    }

    async fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> Result<Vec<PlatformEvent>> {
        let stmt = Stmt::new(B::PLATFORM_EVENTS)
            .time(after.map(|(at, _)| at))
            .id(after.map(|(_, id)| id.0))
            .int(i64::from(limit));
        map_rows(self.pool_all(stmt).await?, rows::platform_event)
    }

    async fn user_by_id(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRecord>> {
        map_row(self.pool_optional(Stmt::tenant_user(B::USER_BY_ID, tenant, id)).await?, rows::user)
    }

    async fn list_users(
        &self,
        tenant: TenantId,
        email_prefix: Option<&str>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>> {
        let pattern = email_prefix.map(|p| format!("{}%", escape_like(p)));
        let stmt = Stmt::new(B::LIST_USERS)
            .id(tenant.0)
            .opt_text(pattern.as_deref())
            .id(after.map(|u| u.0))
            .int(i64::from(limit));
        map_rows(self.all(tenant, stmt).await?, rows::user)
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        change: &UserChange,
        event: Option<&AuditEvent>,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.begin(tenant).await?;
        if change.keep_an_admin
            && let Some(lock) = B::LOCK_ADMINS
        {
            tx.run(Stmt::new(lock).id(tenant.0)).await?;
        }
        let Some(row) = tx.optional(B::update_user(tenant, id, change)).await? else { return Ok(None) };
        if change.keep_an_admin && tx.one(sql::count_active_admins(tenant)).await?.count()? == 0 {
            return Err(Error::LastAdmin);
        }
        if let Some(event) = event {
            tx.run(sql::insert_event(tenant, event)).await?;
        }
        tx.commit().await?;
        rows::user(&row).map(Some)
    }

    async fn audit_events(
        &self,
        tenant: TenantId,
        filter: &AuditFilter,
        after: Option<EventCursor>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        let stmt = Stmt::new(B::AUDIT_EVENTS)
            .id(tenant.0)
            .opt_text(filter.kind.as_deref())
            .id(filter.user_id.map(|u| u.0))
            .time(filter.since)
            .time(filter.until)
            .time(after.map(|(at, _)| at))
            .id(after.map(|(_, id)| id.0))
            .int(i64::from(limit));
        map_rows(self.all(tenant, stmt).await?, rows::event)
    }

    async fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> Result<u64> {
        let mut tx = self.begin(tenant).await?;
        let mut replaced = 0;
        for r in sealed {
            let stmt = Stmt::tenant_user(B::RESEAL_TOTP, tenant, r.user)
                .opt_text(r.active.as_deref())
                .opt_text(r.pending.as_deref())
                .opt_text(r.was_active.as_deref())
                .opt_text(r.was_pending.as_deref());
            replaced += tx.run(stmt).await?;
        }
        tx.commit().await?;
        Ok(replaced)
    }

    // ---- platform: tenants ----

    async fn create_tenant(
        &self,
        tenant: &NewTenant,
        admin: &NewUser,
        key: &SigningKeyRecord,
        tenant_event: &AuditEvent,
        platform_event: &PlatformEvent,
    ) -> Result<TenantRecord> {
        let mut tx = self.begin(tenant.id).await?;
        let record = rows::tenant(&tx.one(sql::insert_tenant(tenant)?).await?)?;
        rows::user(&tx.one(sql::insert_user(tenant.id, admin)).await?)?;
        tx.run(sql::insert_key(tenant.id, key)).await?;
        tx.run(sql::insert_event(tenant.id, tenant_event)).await?;
        tx.run(sql::insert_platform_event(platform_event)).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
        map_row(self.pool_optional(sql::tenant_by_slug(slug)).await?, rows::tenant)
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        map_row(self.pool_optional(sql::tenant_by_id(id)).await?, rows::tenant)
    }

    async fn set_tenant_disabled(
        &self,
        slug: &Slug,
        disabled: bool,
        event: &PlatformEvent,
    ) -> Result<Option<TenantRecord>> {
        let mut tx = self.begin_platform().await?;
        let Some(row) = tx.optional(B::set_tenant_disabled(slug, disabled)).await? else { return Ok(None) };
        let record = rows::tenant(&row)?;
        let mut event = event.clone();
        event.tenant_id = Some(record.id);
        tx.run(sql::insert_platform_event(&event)).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    /// Tenant-owned rows go by `ON DELETE CASCADE`, in this transaction (which
    /// Postgres runs as the tables' owner, past row-level security).
    async fn delete_tenant(&self, slug: &Slug, event: &PlatformEvent) -> Result<Option<TenantId>> {
        let mut tx = self.begin_platform().await?;
        let Some(row) = tx.optional(sql::delete_tenant(slug)).await? else { return Ok(None) };
        let id = TenantId(row.id("id")?);
        let mut event = event.clone();
        event.tenant_id = Some(id);
        tx.run(sql::insert_platform_event(&event)).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    // ---- tenant: settings, users ----

    async fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        tx.run(B::update_settings(tenant, sql::to_json(settings)?)).await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await
    }

    async fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> Result<UserRecord> {
        let mut tx = self.begin(tenant).await?;
        let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn user_by_email(&self, tenant: TenantId, email: &str) -> Result<Option<UserRecord>> {
        map_row(self.optional(tenant, sql::user_by_email(tenant, email)).await?, rows::user)
    }

    async fn count_active_admins(&self, tenant: TenantId) -> Result<u64> {
        exactly_one(self.optional(tenant, sql::count_active_admins(tenant)).await?)?.count()
    }

    // ---- tenant: signing keys, audit ----

    async fn signing_keys(&self, tenant: TenantId) -> Result<Vec<SigningKeyRecord>> {
        map_rows(self.all(tenant, sql::signing_keys(tenant)).await?, rows::key)
    }

    async fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        for (kid, value) in sealed {
            tx.run(sql::reseal_signing_key(tenant, kid, value)).await?;
        }
        tx.run(B::touch_tenant(tenant)).await?;
        tx.commit().await
    }

    async fn append_events(&self, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        insert_events(&mut tx, tenant, events).await?;
        tx.commit().await
    }

    // ---- tenant: two-factor ----

    async fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> Result<bool> {
        Ok(self.run(tenant, B::set_totp_pending(tenant, user, sealed)).await? == 1)
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
        let mut tx = self.begin(tenant).await?;
        if tx.run(B::enable_totp(tenant, user, pending_sealed, step)).await? != 1 {
            return Ok(false);
        }
        replace_codes::<B>(&mut tx, tenant, user, recovery_hashes, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_totp(&self, tenant: TenantId, user: UserId, event: &AuditEvent) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        tx.run(B::disable_totp(tenant, user)).await?;
        replace_codes::<B>(&mut tx, tenant, user, &[], event).await?;
        tx.commit().await
    }

    async fn replace_recovery_codes(
        &self,
        tenant: TenantId,
        user: UserId,
        recovery_hashes: &[String],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        replace_codes::<B>(&mut tx, tenant, user, recovery_hashes, event).await?;
        tx.commit().await
    }

    async fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> Result<u64> {
        exactly_one(self.optional(tenant, sql::recovery_codes_left(tenant, user)).await?)?.count()
    }

    async fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> Result<bool> {
        Ok(self.run(tenant, sql::advance_totp_step(tenant, user, step)).await? == 1)
    }

    async fn sealed_totp_secrets(&self, tenant: TenantId) -> Result<Vec<(UserId, Option<String>, Option<String>)>> {
        map_rows(self.all(tenant, sql::sealed_totp_secrets(tenant)).await?, rows::sealed_totp)
    }

    // ---- tenant: OAuth providers and linked identities ----

    async fn oauth_providers(&self, tenant: TenantId) -> Result<Vec<OAuthProviderRecord>> {
        map_rows(self.all(tenant, sql::oauth_providers(tenant)).await?, rows::provider)
    }

    async fn upsert_oauth_provider(
        &self,
        tenant: TenantId,
        p: &OAuthProviderRecord,
        event: &AuditEvent,
    ) -> Result<OAuthProviderRecord> {
        let mut tx = self.begin(tenant).await?;
        let record = rows::provider(&tx.one(sql::upsert_oauth_provider(tenant, p)?).await?)?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.run(B::touch_tenant(tenant)).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.begin(tenant).await?;
        if tx.run(sql::delete_oauth_provider(tenant, name)).await? == 0 {
            return Ok(false);
        }
        tx.run(sql::delete_identities(tenant, name)).await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.run(B::touch_tenant(tenant)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> Result<Option<UserRecord>> {
        map_row(self.optional(tenant, sql::user_by_identity(tenant, identity)).await?, rows::user)
    }

    async fn link_identity(
        &self,
        tenant: TenantId,
        identity: &Identity<'_>,
        user: UserId,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        tx.run(B::insert_identity(tenant, identity, user)).await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await
    }

    async fn create_user_with_identity(
        &self,
        tenant: TenantId,
        user: &NewUser,
        identity: &Identity<'_>,
        events: &[AuditEvent],
    ) -> Result<UserRecord> {
        let mut tx = self.begin(tenant).await?;
        let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
        tx.run(B::insert_identity(tenant, identity, user.id)).await?;
        insert_events(&mut tx, tenant, events).await?;
        tx.commit().await?;
        Ok(record)
    }

    // ---- tenant: email links, and the mail outbox ----

    async fn create_user_with_link(
        &self,
        tenant: TenantId,
        user: &NewUser,
        event: &AuditEvent,
        link: &EmailLink,
        mail: &OutboxMail,
    ) -> Result<UserRecord> {
        let mut tx = self.begin(tenant).await?;
        let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
        issue(&mut tx, tenant, link, mail, event).await?;
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
        let mut tx = self.begin(tenant).await?;
        issue(&mut tx, tenant, link, mail, event).await?;
        tx.commit().await
    }

    async fn link_by_hash(&self, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>> {
        map_row(self.optional(tenant, sql::link_by_hash(tenant, hash)).await?, rows::link)
    }

    async fn redeem_link(
        &self,
        tenant: TenantId,
        link: &EmailLink,
        effect: Option<&LinkEffect>,
        events: &[AuditEvent],
        mail: Option<&OutboxMail>,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.begin(tenant).await?;
        if tx.run(sql::take_link(tenant, link)).await? == 0 {
            return Ok(None);
        }
        let Some(row) = tx.optional(B::link_effect(tenant, link, effect)).await? else { return Ok(None) };
        insert_events(&mut tx, tenant, events).await?;
        if let Some(mail) = mail {
            tx.run(sql::insert_mail(tenant, mail)).await?;
        }
        let user = rows::user(&row)?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> Result<()> {
        self.run(tenant, sql::delete_links(tenant, user, kind)).await?;
        Ok(())
    }

    async fn mail_delivered(&self, id: Uuid) -> Result<()> {
        self.pool_run(sql::delete_mail(id)).await?;
        Ok(())
    }

    async fn mail_abandoned(&self, id: Uuid) -> Result<()> {
        self.pool_run(sql::delete_mail(id)).await?;
        Ok(())
    }

    async fn mail_deferred(&self, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
        self.pool_run(sql::defer_mail(id, retry_at, error)).await?;
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        rows::outbox_stats(&exactly_one(self.pool_optional(sql::outbox_stats()).await?)?)
    }

    // ---- tenant: passkeys ----

    async fn passkeys(&self, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>> {
        map_rows(self.all(tenant, sql::passkeys(tenant, user)).await?, rows::passkey)
    }

    async fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> Result<Option<PasskeyRecord>> {
        map_row(self.optional(tenant, sql::passkey_by_credential(tenant, credential_id)).await?, rows::passkey)
    }

    async fn insert_passkey(&self, tenant: TenantId, p: &PasskeyRecord, event: &AuditEvent) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        tx.run(sql::insert_passkey(tenant, p)).await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await
    }

    async fn record_passkey_use(&self, tenant: TenantId, p: &PasskeyRecord, previous_count: i64) -> Result<bool> {
        Ok(self.run(tenant, sql::record_passkey_use(tenant, p, previous_count)).await? == 1)
    }

    async fn rename_passkey(
        &self,
        tenant: TenantId,
        user: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>> {
        map_row(self.optional(tenant, sql::rename_passkey(tenant, user, id, name)).await?, rows::passkey)
    }

    async fn delete_passkey(&self, tenant: TenantId, user: UserId, id: Uuid, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.begin(tenant).await?;
        let n = tx.run(sql::delete_passkey(tenant, user, id)).await?;
        if n == 1 {
            tx.run(sql::insert_event(tenant, event)).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    // ---- tenant: OAuth clients and consents ----

    async fn oauth_clients(&self, tenant: TenantId) -> Result<Vec<OAuthClientRecord>> {
        map_rows(self.all(tenant, sql::oauth_clients(tenant)).await?, rows::client)
    }

    async fn oauth_client(&self, tenant: TenantId, client_id: &str) -> Result<Option<OAuthClientRecord>> {
        map_row(self.optional(tenant, sql::oauth_client(tenant, client_id)).await?, rows::client)
    }

    async fn save_oauth_client(
        &self,
        tenant: TenantId,
        c: &OAuthClientRecord,
        create: bool,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        let stmt = if create { sql::insert_oauth_client(tenant, c)? } else { sql::update_oauth_client(tenant, c)? };
        write_client(self, tenant, stmt, event).await
    }

    async fn set_oauth_client_secret(
        &self,
        tenant: TenantId,
        client_id: &str,
        secret_hash: &str,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>> {
        write_client(self, tenant, B::set_oauth_client_secret(tenant, client_id, secret_hash), event).await
    }

    async fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> Result<bool> {
        let mut tx = self.begin(tenant).await?;
        if let Some(consents) = B::DELETE_CONSENTS {
            tx.run(Stmt::new(consents).id(tenant.0).text(client_id)).await?;
        }
        if tx.run(sql::delete_oauth_client(tenant, client_id)).await? == 0 {
            return Ok(false);
        }
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<Option<String>> {
        map_row(self.optional(tenant, sql::consent(tenant, user, client_id)).await?, |r| r.get("scopes"))
    }

    async fn grant_consent(
        &self,
        tenant: TenantId,
        user: UserId,
        client_id: &str,
        scopes: &str,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.begin(tenant).await?;
        tx.run(B::grant_consent(tenant, user, client_id, scopes)).await?;
        tx.run(sql::insert_event(tenant, event)).await?;
        tx.commit().await
    }

    async fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool> {
        Ok(self.run(tenant, sql::revoke_consent(tenant, user, client_id)).await? == 1)
    }
}
