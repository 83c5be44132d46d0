//! The [`Store`](crate::Store) operations whose steps are the same in both
//! backends, written once over [`Backend`]: which statements, in which
//! transaction, with which audit events. A backend supplies how it runs a
//! statement ([`Exec`], [`Backend`]) and the statements its dialect says
//! differently ([`Dialect`]); the operations that differ in more than a
//! statement stay in the backend.

use async_trait::async_trait;
use authd_core::records::*;
use authd_core::settings::TenantSettings;
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::rows::{self, Columns};
use crate::sql::{self, Stmt};
use crate::{Error, Result};

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

/// The statements whose text differs between the dialects, each built by
/// its backend (which says why).
pub(crate) trait Dialect {
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
pub(crate) fn exactly_one<R>(row: Option<R>) -> Result<R> {
    row.ok_or_else(|| Error::from(sqlx::Error::RowNotFound))
}

fn map_rows<R, T>(rows: Vec<R>, map: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(map).collect()
}

fn map_row<R, T>(row: Option<R>, map: impl Fn(&R) -> Result<T>) -> Result<Option<T>> {
    row.as_ref().map(map).transpose()
}

// ---- platform: tenants ----

pub(crate) async fn create_tenant<B: Backend>(
    b: &B,
    tenant: &NewTenant,
    admin: &NewUser,
    key: &SigningKeyRecord,
    tenant_event: &AuditEvent,
    platform_event: &PlatformEvent,
) -> Result<TenantRecord> {
    let mut tx = b.begin(tenant.id).await?;
    let record = rows::tenant(&tx.one(sql::insert_tenant(tenant)?).await?)?;
    rows::user(&tx.one(sql::insert_user(tenant.id, admin)).await?)?;
    tx.run(sql::insert_key(tenant.id, key)).await?;
    tx.run(sql::insert_event(tenant.id, tenant_event)).await?;
    tx.run(sql::insert_platform_event(platform_event)).await?;
    tx.commit().await?;
    Ok(record)
}

pub(crate) async fn tenant_by_slug<B: Backend>(b: &B, slug: &str) -> Result<Option<TenantRecord>> {
    map_row(b.pool_optional(sql::tenant_by_slug(slug)).await?, rows::tenant)
}

pub(crate) async fn tenant_by_id<B: Backend>(b: &B, id: TenantId) -> Result<Option<TenantRecord>> {
    map_row(b.pool_optional(sql::tenant_by_id(id)).await?, rows::tenant)
}

pub(crate) async fn set_tenant_disabled<B: Backend>(
    b: &B,
    slug: &Slug,
    disabled: bool,
    event: &PlatformEvent,
) -> Result<Option<TenantRecord>> {
    let mut tx = b.begin_platform().await?;
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
pub(crate) async fn delete_tenant<B: Backend>(b: &B, slug: &Slug, event: &PlatformEvent) -> Result<Option<TenantId>> {
    let mut tx = b.begin_platform().await?;
    let Some(row) = tx.optional(sql::delete_tenant(slug)).await? else { return Ok(None) };
    let id = TenantId(row.id("id")?);
    let mut event = event.clone();
    event.tenant_id = Some(id);
    tx.run(sql::insert_platform_event(&event)).await?;
    tx.commit().await?;
    Ok(Some(id))
}

// ---- tenant: settings, users ----

pub(crate) async fn update_settings<B: Backend>(
    b: &B,
    tenant: TenantId,
    settings: &TenantSettings,
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    tx.run(B::update_settings(tenant, sql::to_json(settings)?)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await
}

pub(crate) async fn create_user<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: &NewUser,
    event: &AuditEvent,
) -> Result<UserRecord> {
    let mut tx = b.begin(tenant).await?;
    let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await?;
    Ok(record)
}

pub(crate) async fn user_by_email<B: Backend>(b: &B, tenant: TenantId, email: &str) -> Result<Option<UserRecord>> {
    map_row(b.optional(tenant, sql::user_by_email(tenant, email)).await?, rows::user)
}

pub(crate) async fn count_active_admins<B: Backend>(b: &B, tenant: TenantId) -> Result<u64> {
    exactly_one(b.optional(tenant, sql::count_active_admins(tenant)).await?)?.count()
}

// ---- tenant: signing keys, audit ----

pub(crate) async fn signing_keys<B: Backend>(b: &B, tenant: TenantId) -> Result<Vec<SigningKeyRecord>> {
    map_rows(b.all(tenant, sql::signing_keys(tenant)).await?, rows::key)
}

pub(crate) async fn reseal_signing_keys<B: Backend>(
    b: &B,
    tenant: TenantId,
    sealed: &[(String, String)],
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    for (kid, value) in sealed {
        tx.run(sql::reseal_signing_key(tenant, kid, value)).await?;
    }
    tx.run(B::touch_tenant(tenant)).await?;
    tx.commit().await
}

pub(crate) async fn append_events<B: Backend>(b: &B, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    insert_events(&mut tx, tenant, events).await?;
    tx.commit().await
}

pub(crate) async fn insert_events(tx: &mut impl Exec, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
    for e in events {
        tx.run(sql::insert_event(tenant, e)).await?;
    }
    Ok(())
}

// ---- tenant: two-factor ----

pub(crate) async fn set_totp_pending<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    sealed: Option<&str>,
) -> Result<bool> {
    Ok(b.run(tenant, B::set_totp_pending(tenant, user, sealed)).await? == 1)
}

pub(crate) async fn enable_totp<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    pending_sealed: &str,
    step: i64,
    recovery_hashes: &[String],
    event: &AuditEvent,
) -> Result<bool> {
    let mut tx = b.begin(tenant).await?;
    if tx.run(B::enable_totp(tenant, user, pending_sealed, step)).await? != 1 {
        return Ok(false);
    }
    replace_codes::<B>(&mut tx, tenant, user, recovery_hashes, event).await?;
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn disable_totp<B: Backend>(b: &B, tenant: TenantId, user: UserId, event: &AuditEvent) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    tx.run(B::disable_totp(tenant, user)).await?;
    replace_codes::<B>(&mut tx, tenant, user, &[], event).await?;
    tx.commit().await
}

pub(crate) async fn replace_recovery_codes<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    recovery_hashes: &[String],
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    replace_codes::<B>(&mut tx, tenant, user, recovery_hashes, event).await?;
    tx.commit().await
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

pub(crate) async fn recovery_codes_left<B: Backend>(b: &B, tenant: TenantId, user: UserId) -> Result<u64> {
    exactly_one(b.optional(tenant, sql::recovery_codes_left(tenant, user)).await?)?.count()
}

pub(crate) async fn advance_totp_step<B: Backend>(b: &B, tenant: TenantId, user: UserId, step: i64) -> Result<bool> {
    Ok(b.run(tenant, sql::advance_totp_step(tenant, user, step)).await? == 1)
}

pub(crate) async fn sealed_totp_secrets<B: Backend>(
    b: &B,
    tenant: TenantId,
) -> Result<Vec<(UserId, Option<String>, Option<String>)>> {
    map_rows(b.all(tenant, sql::sealed_totp_secrets(tenant)).await?, rows::sealed_totp)
}

// ---- tenant: OAuth providers and linked identities ----

pub(crate) async fn oauth_providers<B: Backend>(b: &B, tenant: TenantId) -> Result<Vec<OAuthProviderRecord>> {
    map_rows(b.all(tenant, sql::oauth_providers(tenant)).await?, rows::provider)
}

pub(crate) async fn upsert_oauth_provider<B: Backend>(
    b: &B,
    tenant: TenantId,
    p: &OAuthProviderRecord,
    event: &AuditEvent,
) -> Result<OAuthProviderRecord> {
    let mut tx = b.begin(tenant).await?;
    let record = rows::provider(&tx.one(sql::upsert_oauth_provider(tenant, p)?).await?)?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.run(B::touch_tenant(tenant)).await?;
    tx.commit().await?;
    Ok(record)
}

pub(crate) async fn delete_oauth_provider<B: Backend>(
    b: &B,
    tenant: TenantId,
    name: &str,
    event: &AuditEvent,
) -> Result<bool> {
    let mut tx = b.begin(tenant).await?;
    if tx.run(sql::delete_oauth_provider(tenant, name)).await? == 0 {
        return Ok(false);
    }
    tx.run(sql::delete_identities(tenant, name)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.run(B::touch_tenant(tenant)).await?;
    tx.commit().await?;
    Ok(true)
}

pub(crate) async fn user_by_identity<B: Backend>(
    b: &B,
    tenant: TenantId,
    identity: &Identity<'_>,
) -> Result<Option<UserRecord>> {
    map_row(b.optional(tenant, sql::user_by_identity(tenant, identity)).await?, rows::user)
}

pub(crate) async fn link_identity<B: Backend>(
    b: &B,
    tenant: TenantId,
    identity: &Identity<'_>,
    user: UserId,
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    tx.run(B::insert_identity(tenant, identity, user)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await
}

pub(crate) async fn create_user_with_identity<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: &NewUser,
    identity: &Identity<'_>,
    events: &[AuditEvent],
) -> Result<UserRecord> {
    let mut tx = b.begin(tenant).await?;
    let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
    tx.run(B::insert_identity(tenant, identity, user.id)).await?;
    insert_events(&mut tx, tenant, events).await?;
    tx.commit().await?;
    Ok(record)
}

// ---- tenant: email links, and the mail outbox ----

pub(crate) async fn create_user_with_link<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: &NewUser,
    event: &AuditEvent,
    link: &EmailLink,
    mail: &OutboxMail,
) -> Result<UserRecord> {
    let mut tx = b.begin(tenant).await?;
    let record = rows::user(&tx.one(sql::insert_user(tenant, user)).await?)?;
    issue(&mut tx, tenant, link, mail, event).await?;
    tx.commit().await?;
    Ok(record)
}

pub(crate) async fn issue_link<B: Backend>(
    b: &B,
    tenant: TenantId,
    link: &EmailLink,
    mail: &OutboxMail,
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    issue(&mut tx, tenant, link, mail, event).await?;
    tx.commit().await
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

pub(crate) async fn link_by_hash<B: Backend>(b: &B, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>> {
    map_row(b.optional(tenant, sql::link_by_hash(tenant, hash)).await?, rows::link)
}

/// Redeems `link` with the dialect's `effect` statement (`RETURNING` the
/// user): the link is deleted only while still stored (redeemed once), then
/// the events and the mail, in one transaction.
pub(crate) async fn redeem_link<B: Backend>(
    b: &B,
    tenant: TenantId,
    link: &EmailLink,
    effect: Stmt<'_>,
    events: &[AuditEvent],
    mail: Option<&OutboxMail>,
) -> Result<Option<UserRecord>> {
    let mut tx = b.begin(tenant).await?;
    if tx.run(sql::take_link(tenant, link)).await? == 0 {
        return Ok(None);
    }
    let Some(row) = tx.optional(effect).await? else { return Ok(None) };
    insert_events(&mut tx, tenant, events).await?;
    if let Some(mail) = mail {
        tx.run(sql::insert_mail(tenant, mail)).await?;
    }
    let user = rows::user(&row)?;
    tx.commit().await?;
    Ok(Some(user))
}

pub(crate) async fn delete_links<B: Backend>(b: &B, tenant: TenantId, user: UserId, kind: &str) -> Result<()> {
    b.run(tenant, sql::delete_links(tenant, user, kind)).await?;
    Ok(())
}

/// Delivered or abandoned: the mail leaves the outbox.
pub(crate) async fn delete_mail<B: Backend>(b: &B, id: Uuid) -> Result<()> {
    b.pool_run(sql::delete_mail(id)).await?;
    Ok(())
}

pub(crate) async fn mail_deferred<B: Backend>(b: &B, id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()> {
    b.pool_run(sql::defer_mail(id, retry_at, error)).await?;
    Ok(())
}

pub(crate) async fn outbox_stats<B: Backend>(b: &B) -> Result<OutboxStats> {
    rows::outbox_stats(&exactly_one(b.pool_optional(sql::outbox_stats()).await?)?)
}

// ---- tenant: passkeys ----

pub(crate) async fn passkeys<B: Backend>(b: &B, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>> {
    map_rows(b.all(tenant, sql::passkeys(tenant, user)).await?, rows::passkey)
}

pub(crate) async fn passkey_by_credential<B: Backend>(
    b: &B,
    tenant: TenantId,
    credential_id: &str,
) -> Result<Option<PasskeyRecord>> {
    map_row(b.optional(tenant, sql::passkey_by_credential(tenant, credential_id)).await?, rows::passkey)
}

pub(crate) async fn insert_passkey<B: Backend>(
    b: &B,
    tenant: TenantId,
    p: &PasskeyRecord,
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    tx.run(sql::insert_passkey(tenant, p)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await
}

pub(crate) async fn record_passkey_use<B: Backend>(
    b: &B,
    tenant: TenantId,
    p: &PasskeyRecord,
    previous_count: i64,
) -> Result<bool> {
    Ok(b.run(tenant, sql::record_passkey_use(tenant, p, previous_count)).await? == 1)
}

pub(crate) async fn rename_passkey<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    id: Uuid,
    name: &str,
) -> Result<Option<PasskeyRecord>> {
    map_row(b.optional(tenant, sql::rename_passkey(tenant, user, id, name)).await?, rows::passkey)
}

pub(crate) async fn delete_passkey<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    id: Uuid,
    event: &AuditEvent,
) -> Result<bool> {
    let mut tx = b.begin(tenant).await?;
    let n = tx.run(sql::delete_passkey(tenant, user, id)).await?;
    if n == 1 {
        tx.run(sql::insert_event(tenant, event)).await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

// ---- tenant: OAuth clients and consents ----

pub(crate) async fn oauth_clients<B: Backend>(b: &B, tenant: TenantId) -> Result<Vec<OAuthClientRecord>> {
    map_rows(b.all(tenant, sql::oauth_clients(tenant)).await?, rows::client)
}

pub(crate) async fn oauth_client<B: Backend>(
    b: &B,
    tenant: TenantId,
    client_id: &str,
) -> Result<Option<OAuthClientRecord>> {
    map_row(b.optional(tenant, sql::oauth_client(tenant, client_id)).await?, rows::client)
}

pub(crate) async fn save_oauth_client<B: Backend>(
    b: &B,
    tenant: TenantId,
    c: &OAuthClientRecord,
    create: bool,
    event: &AuditEvent,
) -> Result<Option<OAuthClientRecord>> {
    let stmt = if create { sql::insert_oauth_client(tenant, c)? } else { sql::update_oauth_client(tenant, c)? };
    write_client(b, tenant, stmt, event).await
}

pub(crate) async fn set_oauth_client_secret<B: Backend>(
    b: &B,
    tenant: TenantId,
    client_id: &str,
    secret_hash: &str,
    event: &AuditEvent,
) -> Result<Option<OAuthClientRecord>> {
    write_client(b, tenant, B::set_oauth_client_secret(tenant, client_id, secret_hash), event).await
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

pub(crate) async fn consent<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    client_id: &str,
) -> Result<Option<String>> {
    map_row(b.optional(tenant, sql::consent(tenant, user, client_id)).await?, |r| r.get("scopes"))
}

pub(crate) async fn grant_consent<B: Backend>(
    b: &B,
    tenant: TenantId,
    user: UserId,
    client_id: &str,
    scopes: &str,
    event: &AuditEvent,
) -> Result<()> {
    let mut tx = b.begin(tenant).await?;
    tx.run(B::grant_consent(tenant, user, client_id, scopes)).await?;
    tx.run(sql::insert_event(tenant, event)).await?;
    tx.commit().await
}

pub(crate) async fn revoke_consent<B: Backend>(b: &B, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool> {
    Ok(b.run(tenant, sql::revoke_consent(tenant, user, client_id)).await? == 1)
}
