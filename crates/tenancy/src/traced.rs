//! The [`TokenStore`] and the [`authd_store::Store`] wrapped so that every
//! call is a span (`tokens.<method>`, `store.<method>`) carrying the
//! `tenant` (its id) and the `db.system`, and nothing else: refresh-token
//! hashes, rate-limit keys, emails, single-use values and sealed secrets never
//! become attributes. Failures of the backend itself (unavailable, internal;
//! not a duplicate email) count in [`crate::metrics::BACKEND_ERRORS`]. With
//! OpenTelemetry on, each call is a child span of the GraphQL operation that
//! made it.
//!
//! Both wrappers are written by one macro, `traced!`, from the traits'
//! method signatures, one line each: a method added to either trait must be
//! listed here too (the compiler says so), and `[tenant = arg]` names the
//! argument that becomes the span's `tenant`.
//!
//! The storage wrapper also keeps the user memo
//! ([`authd_tokens::Memos::users`], read by `me` and `refresh` through
//! `TenantCtx::user`) true: a method that changes user rows is
//! marked `[users = ...]` with what it changed, and after it succeeds the
//! wrapper forgets those rows here and announces them to every other replica
//! ([`TokenStore::publish_user_change`]). Every storage write passes through
//! this one list, so a new method that changes users cannot be forgotten
//! without being seen here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::settings::TenantSettings;
use authd_core::{SessionId, Slug, TenantId, UserId};
use authd_store::{
    AuditEvent, AuditFilter, EmailLink, EventCursor, Identity, LinkEffect, NewTenant, NewUser, OAuthClientRecord,
    OAuthProviderRecord, OutboxMail, OutboxStats, PasskeyRecord, PlatformEvent, QueuedMail, SigningKeyRecord, Store,
    TenantRecord, TotpReseal, UserChange, UserRecord,
};
use authd_tokens::{Memos, RateDecision, RefreshKey, RotateOutcome, SessionLimit, SessionRecord, TokenStore};
use chrono::{DateTime, Utc};
use tracing::Instrument;

/// Where a failed call is counted, and which failures count.
trait Backend {
    /// The `backend` label of [`crate::metrics::BACKEND_ERRORS`].
    const LABEL: &'static str;
    /// Whether the error is the backend's own failure (not a caller's
    /// mistake such as a duplicate email).
    fn is_failure(&self) -> bool;
}

impl Backend for authd_tokens::Error {
    const LABEL: &'static str = "token_store";
    fn is_failure(&self) -> bool {
        true
    }
}

impl Backend for authd_store::Error {
    const LABEL: &'static str = "store";
    fn is_failure(&self) -> bool {
        matches!(self, authd_store::Error::Unavailable(_) | authd_store::Error::Internal(_))
    }
}

/// Runs one backend call in `span`, counting and marking its failure.
async fn call<T, E>(span: tracing::Span, fut: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: Backend + std::fmt::Display,
{
    let r = fut.instrument(span.clone()).await;
    if let Err(e) = &r
        && e.is_failure()
    {
        crate::metrics::BACKEND_ERRORS.inc(&[E::LABEL]);
        // An error status on the span and a count, not a log line per call:
        // during an outage every request fails the same way.
        span.record("otel.status_code", "ERROR");
        span.in_scope(|| tracing::debug!(error = %e, backend = E::LABEL, "backend call failed"));
    }
    r
}

/// `impl $trait for $wrapper`: every listed method runs the inner one
/// through [`call`] in a span named `$prefix.<method>`: a child span of the
/// current one, and none outside a request, so that background work (the
/// change feed, the mail sender) does not flood the trace backend.
macro_rules! traced {
    (
        impl $trait:ident for $wrapper:ident as $prefix:literal;
        $(extra { $($extra:item)* })?
        $(fn $name:ident(&self $(, $arg:ident: $argty:ty)*) -> $ret:ty $([tenant = $tenant:ident])? $([users = $users:expr])?;)*
    ) => {
        #[async_trait]
        impl $trait for $wrapper {
            $($($extra)*)?
            $(
                async fn $name(&self $(, $arg: $argty)*) -> $ret {
                    $(
                        let _ = &$tenant;
                        self.tenant_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    )?
                    let span = if tracing::Span::current().is_none() {
                        tracing::Span::none()
                    } else {
                        tracing::info_span!(
                            concat!($prefix, ".", stringify!($name)),
                            otel.kind = "client",
                            otel.status_code = tracing::field::Empty,
                            db.system = self.system,
                            $(tenant = %$tenant,)?
                        )
                    };
                    let result = call(span, self.inner.$name($($arg),*)).await;
                    $(
                        if result.is_ok() {
                            self.users_changed($users).await;
                        }
                    )?
                    result
                }
            )*
        }
    };
}

/// Calls made for one tenant (those with a `[tenant = ...]`), through
/// either wrapper: what an idle tenant must not cost.
pub type TenantCalls = Arc<std::sync::atomic::AtomicU64>;

pub struct TracedTokenStore {
    inner: Arc<dyn TokenStore>,
    /// The spans' `db.system`.
    system: &'static str,
    tenant_calls: TenantCalls,
}

impl TracedTokenStore {
    pub fn wrap(inner: Arc<dyn TokenStore>, tenant_calls: TenantCalls) -> Arc<dyn TokenStore> {
        Arc::new(Self { inner, system: "redis", tenant_calls })
    }
}

type TokenResult<T> = authd_tokens::Result<T>;

traced! {
    impl TokenStore for TracedTokenStore as "tokens";
    extra {
        fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<TenantId>> {
            self.inner.subscribe_changes()
        }
        fn memos(&self) -> &Memos {
            self.inner.memos()
        }
    }
    fn ping(&self) -> TokenResult<()>;
    fn publish_change(&self, tenant: TenantId) -> TokenResult<()> [tenant = tenant];
    fn publish_user_change(&self, tenant: TenantId, user: Option<UserId>) -> TokenResult<()> [tenant = tenant];
    fn create_session(&self, tenant: TenantId, session: &SessionRecord, ttl: Duration) -> TokenResult<()> [tenant = tenant];
    fn rotate_refresh(&self, tenant: TenantId, old: RefreshKey<'_>, now: i64, ttl: Duration, limit: Option<&SessionLimit<'_>>) -> TokenResult<RotateOutcome> [tenant = tenant];
    fn session_by_refresh(&self, tenant: TenantId, key: RefreshKey<'_>) -> TokenResult<Option<SessionRecord>> [tenant = tenant];
    fn get_session(&self, tenant: TenantId, sid: SessionId) -> TokenResult<Option<SessionRecord>> [tenant = tenant];
    fn list_sessions(&self, tenant: TenantId, user: UserId) -> TokenResult<Vec<SessionRecord>> [tenant = tenant];
    fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> TokenResult<bool> [tenant = tenant];
    fn revoke_user_sessions(&self, tenant: TenantId, user: UserId, keep: Option<SessionId>, deny_ttl: Duration) -> TokenResult<u64> [tenant = tenant];
    fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> TokenResult<bool> [tenant = tenant];
    fn purge_tenant(&self, tenant: TenantId) -> TokenResult<()> [tenant = tenant];
    fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> TokenResult<bool> [tenant = tenant];
    fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> TokenResult<Option<String>> [tenant = tenant];
    fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> TokenResult<Option<String>> [tenant = tenant];
    fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> TokenResult<Option<u32>> [tenant = tenant];
    fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> TokenResult<bool> [tenant = tenant];
    fn rate_check(&self, tenant: TenantId, key: &str, limit: u32, period: Duration, now_ms: i64) -> TokenResult<RateDecision> [tenant = tenant];
    fn rate_reset(&self, tenant: TenantId, key: &str) -> TokenResult<()> [tenant = tenant];
}

pub struct TracedStore {
    inner: Arc<dyn Store>,
    /// `postgresql` or `sqlite` (OpenTelemetry's `db.system` values).
    system: &'static str,
    /// Holds the user memo and carries change notices to other replicas.
    tokens: Arc<dyn TokenStore>,
    tenant_calls: TenantCalls,
}

/// The user rows a storage write changed.
enum Changed {
    User(TenantId, UserId),
    Tenant(TenantId),
    /// Every tenant's (a tenant was deleted: its id is not known up front,
    /// and no replica can reach its users any more, so only this replica's
    /// memo is emptied).
    All,
}

impl TracedStore {
    pub fn wrap(
        inner: Arc<dyn Store>,
        system: &'static str,
        tokens: Arc<dyn TokenStore>,
        tenant_calls: TenantCalls,
    ) -> Arc<dyn Store> {
        Arc::new(Self { inner, system, tokens, tenant_calls })
    }

    /// Forgets changed user rows here, then tells the other replicas. A lost
    /// notice leaves their copy until it expires
    /// ([`authd_tokens::memo::LIFETIME`]); disabling a user also revokes its
    /// sessions, whose notice travels inside the revocation itself.
    async fn users_changed(&self, changed: Changed) {
        let memo = &self.tokens.memos().users;
        let (tenant, user) = match changed {
            Changed::User(t, u) => {
                memo.forget(t, [u.0]);
                (t, Some(u))
            }
            Changed::Tenant(t) => {
                memo.forget_tenant(t);
                (t, None)
            }
            Changed::All => return memo.forget_all(),
        };
        if let Err(e) = self.tokens.publish_user_change(tenant, user).await {
            tracing::warn!(error = %e, %tenant, "could not announce a user change to the other replicas");
        }
    }
}

type StoreResult<T> = authd_store::Result<T>;

traced! {
    impl Store for TracedStore as "store";
    fn ping(&self) -> StoreResult<()>;
    fn create_tenant(&self, tenant: &NewTenant, admin: &NewUser, key: &SigningKeyRecord, tenant_event: &AuditEvent, platform_event: &PlatformEvent) -> StoreResult<TenantRecord>;
    fn tenant_by_slug(&self, slug: &str) -> StoreResult<Option<TenantRecord>>;
    fn tenant_by_id(&self, id: TenantId) -> StoreResult<Option<TenantRecord>> [tenant = id];
    fn missing_tenants(&self, ids: &[TenantId]) -> StoreResult<Vec<TenantId>>;
    fn tenants_changed_since(&self, since: DateTime<Utc>) -> StoreResult<(Vec<(TenantId, DateTime<Utc>)>, DateTime<Utc>)>;
    fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> StoreResult<Vec<TenantRecord>>;
    fn tenant_slugs(&self, after: Option<TenantId>, limit: u32) -> StoreResult<Vec<(TenantId, String)>>;
    fn set_tenant_disabled(&self, slug: &Slug, disabled: bool, event: &PlatformEvent) -> StoreResult<Option<TenantRecord>>;
    fn delete_tenant(&self, slug: &Slug, event: &PlatformEvent) -> StoreResult<Option<TenantId>> [users = Changed::All];
    fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> StoreResult<Vec<PlatformEvent>>;
    fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> StoreResult<UserRecord> [tenant = tenant];
    fn user_by_email(&self, tenant: TenantId, email: &str) -> StoreResult<Option<UserRecord>> [tenant = tenant];
    fn user_by_id(&self, tenant: TenantId, id: UserId) -> StoreResult<Option<UserRecord>> [tenant = tenant];
    fn list_users(&self, tenant: TenantId, email_prefix: Option<&str>, after: Option<UserId>, limit: u32) -> StoreResult<Vec<UserRecord>> [tenant = tenant];
    fn update_user(&self, tenant: TenantId, id: UserId, change: &UserChange, event: Option<&AuditEvent>) -> StoreResult<Option<UserRecord>> [tenant = tenant] [users = Changed::User(tenant, id)];
    fn count_active_admins(&self, tenant: TenantId) -> StoreResult<u64> [tenant = tenant];
    fn signing_keys(&self, tenant: TenantId) -> StoreResult<Vec<SigningKeyRecord>> [tenant = tenant];
    fn add_signing_key(&self, tenant: TenantId, key: &SigningKeyRecord, remove: &[String], event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> StoreResult<()> [tenant = tenant];
    fn append_events(&self, tenant: TenantId, events: &[AuditEvent]) -> StoreResult<()> [tenant = tenant];
    fn audit_events(&self, tenant: TenantId, filter: &AuditFilter, after: Option<EventCursor>, limit: u32) -> StoreResult<Vec<AuditEvent>> [tenant = tenant];
    fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> StoreResult<u64> [tenant = tenant];
    fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> StoreResult<bool> [tenant = tenant] [users = Changed::User(tenant, user)];
    fn enable_totp(&self, tenant: TenantId, user: UserId, pending_sealed: &str, step: i64, recovery_hashes: &[String], event: &AuditEvent) -> StoreResult<bool> [tenant = tenant] [users = Changed::User(tenant, user)];
    fn disable_totp(&self, tenant: TenantId, user: UserId, event: &AuditEvent) -> StoreResult<()> [tenant = tenant] [users = Changed::User(tenant, user)];
    fn replace_recovery_codes(&self, tenant: TenantId, user: UserId, recovery_hashes: &[String], event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn use_recovery_code(&self, tenant: TenantId, user: UserId, candidates: &[String], event: &AuditEvent) -> StoreResult<bool> [tenant = tenant];
    fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> StoreResult<u64> [tenant = tenant];
    fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> StoreResult<bool> [tenant = tenant] [users = Changed::User(tenant, user)];
    fn oauth_providers(&self, tenant: TenantId) -> StoreResult<Vec<OAuthProviderRecord>> [tenant = tenant];
    fn upsert_oauth_provider(&self, tenant: TenantId, provider: &OAuthProviderRecord, event: &AuditEvent) -> StoreResult<OAuthProviderRecord> [tenant = tenant];
    fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> StoreResult<bool> [tenant = tenant];
    fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> StoreResult<Option<UserRecord>> [tenant = tenant];
    fn link_identity(&self, tenant: TenantId, identity: &Identity<'_>, user: UserId, event: &AuditEvent) -> StoreResult<()> [tenant = tenant] [users = Changed::User(tenant, user)];
    fn create_user_with_identity(&self, tenant: TenantId, user: &NewUser, identity: &Identity<'_>, events: &[AuditEvent]) -> StoreResult<UserRecord> [tenant = tenant];
    fn create_user_with_link(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent, link: &EmailLink, mail: &OutboxMail) -> StoreResult<UserRecord> [tenant = tenant];
    fn issue_link(&self, tenant: TenantId, link: &EmailLink, mail: &OutboxMail, event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn link_by_hash(&self, tenant: TenantId, hash: &str) -> StoreResult<Option<EmailLink>> [tenant = tenant];
    fn redeem_link(&self, tenant: TenantId, link: &EmailLink, effect: Option<&LinkEffect>, events: &[AuditEvent], mail: Option<&OutboxMail>) -> StoreResult<Option<UserRecord>> [tenant = tenant] [users = Changed::User(tenant, link.user_id)];
    fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> StoreResult<()> [tenant = tenant];
    fn claim_mail(&self, now: DateTime<Utc>, lease: std::time::Duration, limit: u32) -> StoreResult<Vec<QueuedMail>>;
    fn mail_delivered(&self, id: uuid::Uuid) -> StoreResult<()>;
    fn mail_deferred(&self, id: uuid::Uuid, retry_at: DateTime<Utc>, error: &str) -> StoreResult<()>;
    fn mail_abandoned(&self, id: uuid::Uuid) -> StoreResult<()>;
    fn passkeys(&self, tenant: TenantId, user: UserId) -> StoreResult<Vec<PasskeyRecord>> [tenant = tenant];
    fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> StoreResult<Option<PasskeyRecord>> [tenant = tenant];
    fn insert_passkey(&self, tenant: TenantId, passkey: &PasskeyRecord, event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn record_passkey_use(&self, tenant: TenantId, passkey: &PasskeyRecord, previous_count: i64) -> StoreResult<bool> [tenant = tenant];
    fn rename_passkey(&self, tenant: TenantId, user: UserId, id: uuid::Uuid, name: &str) -> StoreResult<Option<PasskeyRecord>> [tenant = tenant];
    fn delete_passkey(&self, tenant: TenantId, user: UserId, id: uuid::Uuid, event: &AuditEvent) -> StoreResult<bool> [tenant = tenant];
    fn oauth_clients(&self, tenant: TenantId) -> StoreResult<Vec<OAuthClientRecord>> [tenant = tenant];
    fn oauth_client(&self, tenant: TenantId, client_id: &str) -> StoreResult<Option<OAuthClientRecord>> [tenant = tenant];
    fn save_oauth_client(&self, tenant: TenantId, client: &OAuthClientRecord, create: bool, event: &AuditEvent) -> StoreResult<Option<OAuthClientRecord>> [tenant = tenant];
    fn set_oauth_client_secret(&self, tenant: TenantId, client_id: &str, secret_hash: &str, event: &AuditEvent) -> StoreResult<Option<OAuthClientRecord>> [tenant = tenant];
    fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> StoreResult<bool> [tenant = tenant];
    fn consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> StoreResult<Option<String>> [tenant = tenant];
    fn grant_consent(&self, tenant: TenantId, user: UserId, client_id: &str, scopes: &str, event: &AuditEvent) -> StoreResult<()> [tenant = tenant];
    fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> StoreResult<bool> [tenant = tenant];
    fn outbox_stats(&self) -> StoreResult<OutboxStats>;
    fn sealed_totp_secrets(&self, tenant: TenantId) -> StoreResult<Vec<(UserId, Option<String>, Option<String>)>> [tenant = tenant];
    fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> StoreResult<u64> [tenant = tenant] [users = Changed::Tenant(tenant)];
}
