//! Durable storage of authd: tenants, users, signing keys, TOTP state,
//! OAuth provider configs and identities, and the audit log.
//!
//! One trait ([`Store`]), two backends: [`postgres`] (production; every
//! tenant-owned table under row-level security, the tenant set per transaction
//! with `set_config('app.tenant_id', …, true)`, the service running as the
//! `authd_app` role) and [`sqlite`] (the embedded default, which enforces the
//! same tenancy in its queries). Every method that changes rows takes the
//! audit event(s) recording the change and writes them in the same
//! transaction, so neither exists without the other.
//!
//! This crate knows nothing of HTTP, GraphQL, Redis or actors. Migrations live
//! in the repository's `migrations/{postgres,sqlite}` and are embedded here.
//!
//! Layout:
//! - the records it reads and writes are `authd_core::records`, re-exported here.
//! - `sql`: the statements both dialects say alike (sqlx's SQLite driver
//!   takes `$N` placeholders), with their values by meaning (id, time, JSON,
//!   …) for each backend to bind as its schema stores them.
//! - `rows`: reading result rows of either backend into records.
//! - `shared`: [`Store`] for both backends: the operations whose steps are
//!   the same (statements, transaction, audit events) once, over how a
//!   backend runs a statement, the few statements its dialect says
//!   differently and the operations it takes its own way.
//! - [`postgres`]: the Postgres backend and `migrate_postgres`.
//! - [`sqlite`]: the SQLite backend.

pub mod postgres;
mod rows;
mod shared;
mod sql;
pub mod sqlite;

use async_trait::async_trait;
use authd_core::settings::{Role, TenantSettings};
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};

// The records live in `authd_core::records` (the transport shows them without
// depending on storage); re-exported so storage code names them as before.
pub use authd_core::records::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database did not answer.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint on this field was violated.
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("database error: {0}")]
    Internal(String),
    /// The change would leave the tenant without an enabled admin.
    #[error("the tenant's last admin cannot be disabled or demoted")]
    LastAdmin,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                let c = db.constraint().unwrap_or_default();
                let msg = db.message();
                if c.contains("slug") || msg.contains("tenants.slug") {
                    Self::Duplicate("slug")
                } else if c.contains("email") || msg.contains("users.tenant_id, users.email") {
                    Self::Duplicate("email")
                } else if c.contains("oauth_providers") || msg.contains("oauth_providers") {
                    Self::Duplicate("name")
                } else {
                    Self::Duplicate("id")
                }
            }
            // Never forward driver text that might quote a value: the
            // message names the kind of failure only.
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<Error> for authd_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(c) => authd_core::Error::Unavailable(c),
            Error::Duplicate("slug") => authd_core::Error::bad_input("slug", "this slug is already taken"),
            Error::Duplicate("email") => authd_core::Error::EmailTaken,
            Error::Duplicate("name") => authd_core::Error::bad_input("name", "this name is already taken"),
            Error::Duplicate(what) => authd_core::Error::internal(format!("duplicate {what}")),
            Error::Internal(c) => authd_core::Error::Internal(c),
            Error::LastAdmin => {
                authd_core::Error::bad_input("userId", "the tenant's last admin cannot be disabled or demoted")
            }
        }
    }
}

/// Durable storage. Every tenant-owned read and write names its tenant.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does (readiness).
    async fn ping(&self) -> Result<()>;

    // ---- platform: tenants ----

    /// Creates a tenant with its first admin user and first signing key, and
    /// records both events, in one transaction. A taken slug is
    /// `Duplicate("slug")`.
    async fn create_tenant(
        &self,
        tenant: &NewTenant,
        admin: &NewUser,
        key: &SigningKeyRecord,
        tenant_event: &AuditEvent,
        platform_event: &PlatformEvent,
    ) -> Result<TenantRecord>;

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>>;

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>>;

    /// The change feed: tenants whose record, settings, signing keys or
    /// OAuth providers changed after `since` (their `updated_at`, bumped in
    /// the transaction of every such change), and the database's clock now.
    /// Which of `ids` no longer exist (deleted tenants).
    async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>>;

    async fn tenants_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)>;

    /// Tenants ordered by id (time-ordered), after `after`, at most `limit`.
    async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>>;

    /// [`Store::list_tenants`], only ids and slugs: what the slug directory
    /// reads of every tenant (a hundred pages at 100,000 tenants).
    async fn tenant_slugs(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<(TenantId, String)>>;

    async fn set_tenant_disabled(
        &self,
        slug: &Slug,
        disabled: bool,
        event: &PlatformEvent,
    ) -> Result<Option<TenantRecord>>;

    /// Deletes the tenant and every row it owns, in one transaction; the
    /// platform event survives. Returns whether it existed.
    async fn delete_tenant(&self, slug: &Slug, event: &PlatformEvent) -> Result<Option<TenantId>>;

    /// Operator actions, newest first.
    async fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> Result<Vec<PlatformEvent>>;

    // ---- tenant: settings ----

    async fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> Result<()>;

    // ---- tenant: users ----

    /// A taken email is `Duplicate("email")`.
    async fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> Result<UserRecord>;

    async fn user_by_email(&self, tenant: TenantId, email: &str) -> Result<Option<UserRecord>>;

    async fn user_by_id(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRecord>>;

    /// Users ordered by id after `after`, whose email starts with `email_prefix`.
    async fn list_users(
        &self,
        tenant: TenantId,
        email_prefix: Option<&str>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>>;

    /// Applies `change` and records `event` (if any) in one transaction.
    /// Returns the updated user, or `None` if it does not exist.
    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        change: &UserChange,
        event: Option<&AuditEvent>,
    ) -> Result<Option<UserRecord>>;

    /// How many enabled admins the tenant has (to refuse removing the last).
    async fn count_active_admins(&self, tenant: TenantId) -> Result<u64>;

    // ---- tenant: signing keys ----

    async fn signing_keys(&self, tenant: TenantId) -> Result<Vec<SigningKeyRecord>>;

    /// Adds a key, removes the keys in `remove` (expired ones), and records
    /// the event, in one transaction.
    async fn add_signing_key(
        &self,
        tenant: TenantId,
        key: &SigningKeyRecord,
        remove: &[String],
        event: &AuditEvent,
    ) -> Result<()>;

    /// Replaces sealed private keys (re-sealing under a new master key).
    async fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> Result<()>;

    // ---- tenant: audit ----

    /// Appends events that record no database change (batched).
    async fn append_events(&self, tenant: TenantId, events: &[AuditEvent]) -> Result<()>;

    /// Events newest first, matching `filter`, after `after`, at most `limit`.
    async fn audit_events(
        &self,
        tenant: TenantId,
        filter: &AuditFilter,
        after: Option<EventCursor>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>>;

    /// Deletes events older than `before` (retention). Returns how many.
    async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64>;

    // ---- tenant: two-factor (TOTP and recovery codes) ----

    /// Stores (or clears) a pending, unconfirmed TOTP secret. A pending
    /// enrollment changes nothing else. Returns whether the user exists.
    async fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> Result<bool>;

    /// Confirms the pending enrollment: the pending secret becomes the
    /// user's secret, `step` its last used time step, the recovery codes are
    /// replaced by `recovery_hashes`, and `event` recorded, in one
    /// transaction. Returns false (and changes nothing) when no enrollment is
    /// pending or the pending secret is not `pending_sealed` any more.
    async fn enable_totp(
        &self,
        tenant: TenantId,
        user: UserId,
        pending_sealed: &str,
        step: i64,
        recovery_hashes: &[String],
        event: &AuditEvent,
    ) -> Result<bool>;

    /// Turns TOTP off and deletes the recovery codes, with the event.
    async fn disable_totp(&self, tenant: TenantId, user: UserId, event: &AuditEvent) -> Result<()>;

    /// Replaces the recovery codes, with the event, in one transaction.
    async fn replace_recovery_codes(
        &self,
        tenant: TenantId,
        user: UserId,
        recovery_hashes: &[String],
        event: &AuditEvent,
    ) -> Result<()>;

    /// Marks one unused recovery code among `candidates` used, recording the
    /// event in the same transaction. Returns whether one was.
    async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: UserId,
        candidates: &[String],
        event: &AuditEvent,
    ) -> Result<bool>;

    /// How many unused recovery codes the user has.
    async fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> Result<u64>;

    /// Atomically records `step` as the user's last accepted TOTP step if it
    /// is later than the stored one (RFC 6238 §5.2: a code is accepted once).
    /// Returns false for a replayed or older step: exactly one of two
    /// concurrent calls with the same step succeeds.
    async fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> Result<bool>;

    // ---- tenant: OAuth providers and linked identities ----

    /// The tenant's providers, by name.
    async fn oauth_providers(&self, tenant: TenantId) -> Result<Vec<OAuthProviderRecord>>;

    /// Creates or replaces the provider `provider.name` (keeping its
    /// `created_at`, and its sealed secret when `provider.client_secret_sealed`
    /// is `None`), with the event, in one transaction.
    async fn upsert_oauth_provider(
        &self,
        tenant: TenantId,
        provider: &OAuthProviderRecord,
        event: &AuditEvent,
    ) -> Result<OAuthProviderRecord>;

    /// Deletes a provider and the identities linked through it (a provider
    /// added later under the same name may be another issuer, whose subjects
    /// must not match old accounts), with the event. Returns whether it existed.
    async fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> Result<bool>;

    /// The user linked to (`provider`, `issuer`, `subject`), if any.
    async fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> Result<Option<UserRecord>>;

    /// Links the identity to an existing user, with the event.
    /// An identity already linked is `Duplicate("id")`.
    async fn link_identity(
        &self,
        tenant: TenantId,
        identity: &Identity<'_>,
        user: UserId,
        event: &AuditEvent,
    ) -> Result<()>;

    /// Creates a user linked to the identity, with the events, in one
    /// transaction. A taken email is `Duplicate("email")`.
    async fn create_user_with_identity(
        &self,
        tenant: TenantId,
        user: &NewUser,
        identity: &Identity<'_>,
        events: &[AuditEvent],
    ) -> Result<UserRecord>;

    // ---- tenant: email links, and the mail outbox ----

    /// Creates a password user like [`Store::create_user`] and, in the same
    /// transaction, stores its verification link and queues its mail.
    async fn create_user_with_link(
        &self,
        tenant: TenantId,
        user: &NewUser,
        event: &AuditEvent,
        link: &EmailLink,
        mail: &OutboxMail,
    ) -> Result<UserRecord>;

    /// Stores `link` (replacing the user's earlier link of its kind), queues
    /// `mail` and records `event`, in one transaction.
    async fn issue_link(&self, tenant: TenantId, link: &EmailLink, mail: &OutboxMail, event: &AuditEvent)
    -> Result<()>;

    /// The link whose token hashes to `hash`, expired or not.
    async fn link_by_hash(&self, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>>;

    /// Deletes `link` (only while it is still stored with its hash: a link
    /// is redeemed once), applies `effect` to its user, records `events` and
    /// queues `mail`, in one transaction. Returns the user as changed, or
    /// `None` (and changes nothing) when the link was used or replaced
    /// meanwhile, or a verification's address is no longer the user's.
    async fn redeem_link(
        &self,
        tenant: TenantId,
        link: &EmailLink,
        effect: Option<&LinkEffect>,
        events: &[AuditEvent],
        mail: Option<&OutboxMail>,
    ) -> Result<Option<UserRecord>>;

    /// Deletes the user's links of `kind` (a changed password ends its reset links).
    async fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> Result<()>;

    /// Claims up to `limit` due mails of every tenant for `lease`: each is
    /// handed to one caller at a time, across replicas.
    async fn claim_mail(&self, now: DateTime<Utc>, lease: std::time::Duration, limit: u32) -> Result<Vec<QueuedMail>>;

    /// The relay accepted the mail: it leaves the outbox.
    async fn mail_delivered(&self, id: uuid::Uuid) -> Result<()>;

    /// Delivery failed for now: try again at `retry_at`.
    async fn mail_deferred(&self, id: uuid::Uuid, retry_at: DateTime<Utc>, error: &str) -> Result<()>;

    /// Delivery failed for good (the relay refused it permanently, or every
    /// attempt failed): it leaves the outbox.
    async fn mail_abandoned(&self, id: uuid::Uuid) -> Result<()>;

    async fn outbox_stats(&self) -> Result<OutboxStats>;

    // ---- tenant: passkeys ----

    /// The user's passkeys, oldest first.
    async fn passkeys(&self, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>>;

    /// The passkey with this credential id.
    async fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> Result<Option<PasskeyRecord>>;

    /// Stores a new passkey with the event. A credential id already
    /// registered in the tenant is `Duplicate("id")`.
    async fn insert_passkey(&self, tenant: TenantId, passkey: &PasskeyRecord, event: &AuditEvent) -> Result<()>;

    /// Records a sign-in: the credential's new state, only while its stored
    /// count is still `previous_count` (two sign-ins racing with one
    /// counter value cannot both pass). Returns whether it was recorded.
    async fn record_passkey_use(&self, tenant: TenantId, passkey: &PasskeyRecord, previous_count: i64) -> Result<bool>;

    /// Renames one of the user's passkeys; `None` when the user has no such passkey.
    async fn rename_passkey(
        &self,
        tenant: TenantId,
        user: UserId,
        id: uuid::Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>>;

    /// Deletes one of the user's passkeys with the event; whether it existed.
    async fn delete_passkey(&self, tenant: TenantId, user: UserId, id: uuid::Uuid, event: &AuditEvent) -> Result<bool>;

    // ---- tenant: OAuth clients of the tenant's OpenID provider ----

    async fn oauth_clients(&self, tenant: TenantId) -> Result<Vec<OAuthClientRecord>>;

    async fn oauth_client(&self, tenant: TenantId, client_id: &str) -> Result<Option<OAuthClientRecord>>;

    /// Creates the client, or replaces everything of an existing one but its
    /// id, secret and creation time (`create` says which; replacing a missing
    /// client is `Ok(None)`), with the event.
    async fn save_oauth_client(
        &self,
        tenant: TenantId,
        client: &OAuthClientRecord,
        create: bool,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>>;

    /// Replaces a confidential client's secret hash, with the event.
    async fn set_oauth_client_secret(
        &self,
        tenant: TenantId,
        client_id: &str,
        secret_hash: &str,
        event: &AuditEvent,
    ) -> Result<Option<OAuthClientRecord>>;

    /// Deletes the client (and its consents), with the event.
    async fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> Result<bool>;

    /// The scopes (sorted, space-separated) the user consented to for the client.
    async fn consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<Option<String>>;

    /// Records (or replaces) a consent, with the event.
    async fn grant_consent(
        &self,
        tenant: TenantId,
        user: UserId,
        client_id: &str,
        scopes: &str,
        event: &AuditEvent,
    ) -> Result<()>;

    /// Withdraws a consent; whether there was one.
    async fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool>;

    // ---- master-key rotation (`authd reseal`) ----

    /// Every sealed TOTP secret of the tenant: (user, active, pending).
    async fn sealed_totp_secrets(&self, tenant: TenantId) -> Result<Vec<(UserId, Option<String>, Option<String>)>>;

    /// Replaces sealed TOTP secrets (re-sealed under a new master key), in
    /// one transaction, each only where the row still holds the values read
    /// (compare-and-swap). Returns how many rows were replaced.
    async fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> Result<u64>;
}

/// Role stored as text.
pub(crate) fn role_from_str(s: &str) -> Result<Role> {
    Role::parse(s).map_err(|e| Error::Internal(e.to_string()))
}
