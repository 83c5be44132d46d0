//! The [`TokenStore`] and the [`authd_store::Store`] wrapped so that every
//! call is a span (`tokens.<method>`, `store.<method>`) carrying the
//! `tenant` (its id) and the `db.system`, and nothing else: refresh-token
//! hashes, rate-limit keys, emails, single-use values and sealed secrets never
//! become attributes. Failures of the backend itself (unavailable, internal;
//! not a duplicate email) count in [`crate::metrics::BACKEND_ERRORS`]. With
//! OpenTelemetry on, each call is a child span of the GraphQL operation that
//! made it.
//!
//! The delegations follow the traits one for one: a method added to either
//! trait must be added here too (the compiler says so).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use authd_tokens::{RateDecision, Result, RotateOutcome, SessionRecord, TokenStore};
use tracing::Instrument;

pub struct TracedTokenStore {
    inner: Arc<dyn TokenStore>,
}

impl TracedTokenStore {
    pub fn wrap(inner: Arc<dyn TokenStore>) -> Arc<dyn TokenStore> {
        Arc::new(Self { inner })
    }
}

async fn call<T>(span: tracing::Span, fut: impl Future<Output = Result<T>>) -> Result<T> {
    let r = fut.instrument(span.clone()).await;
    if let Err(e) = &r {
        crate::metrics::BACKEND_ERRORS.inc(&["token_store"]);
        // An error status on the span and a count, not a log line per call:
        // during an outage every request fails the same way.
        span.record("otel.status_code", "ERROR");
        span.in_scope(|| tracing::debug!(error = %e, "token store call failed"));
    }
    r
}

/// A child span of the current one; none outside a request, so that the
/// periodic reloads of every running tenant do not flood the trace backend.
macro_rules! span {
    ($name:literal) => {
        if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!($name, otel.kind = "client", otel.status_code = tracing::field::Empty, db.system = "redis")
        }
    };
    ($name:literal, $tenant:expr) => {
        if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                $name,
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                db.system = "redis",
                tenant = %$tenant
            )
        }
    };
}

#[async_trait]
impl TokenStore for TracedTokenStore {
    async fn ping(&self) -> Result<()> {
        call(span!("tokens.ping"), self.inner.ping()).await
    }

    async fn publish_change(&self, tenant: TenantId) -> Result<()> {
        call(span!("tokens.publish_change", tenant), self.inner.publish_change(tenant)).await
    }

    fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<TenantId>> {
        self.inner.subscribe_changes()
    }

    async fn create_session(
        &self,
        tenant: TenantId,
        session: &SessionRecord,
        refresh_hash: &str,
        ttl: Duration,
    ) -> Result<()> {
        call(span!("tokens.create_session", tenant), self.inner.create_session(tenant, session, refresh_hash, ttl))
            .await
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<RotateOutcome> {
        call(span!("tokens.rotate_refresh", tenant), self.inner.rotate_refresh(tenant, old_hash, new_hash, now, ttl))
            .await
    }

    async fn session_by_refresh(&self, tenant: TenantId, hash: &str) -> Result<Option<SessionRecord>> {
        call(span!("tokens.session_by_refresh", tenant), self.inner.session_by_refresh(tenant, hash)).await
    }

    async fn get_session(&self, tenant: TenantId, sid: SessionId) -> Result<Option<SessionRecord>> {
        call(span!("tokens.get_session", tenant), self.inner.get_session(tenant, sid)).await
    }

    async fn list_sessions(&self, tenant: TenantId, user: UserId) -> Result<Vec<SessionRecord>> {
        call(span!("tokens.list_sessions", tenant), self.inner.list_sessions(tenant, user)).await
    }

    async fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> Result<bool> {
        call(span!("tokens.revoke_session", tenant), self.inner.revoke_session(tenant, sid, deny_ttl)).await
    }

    async fn revoke_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        deny_ttl: Duration,
    ) -> Result<u64> {
        call(
            span!("tokens.revoke_user_sessions", tenant),
            self.inner.revoke_user_sessions(tenant, user, keep, deny_ttl),
        )
        .await
    }

    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool> {
        call(span!("tokens.is_session_denied", tenant), self.inner.is_session_denied(tenant, sid)).await
    }

    async fn purge_tenant(&self, tenant: TenantId) -> Result<()> {
        call(span!("tokens.purge_tenant", tenant), self.inner.purge_tenant(tenant)).await
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        call(span!("tokens.put_once", tenant), self.inner.put_once(tenant, kind, id, value, ttl)).await
    }

    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        call(span!("tokens.take_once", tenant), self.inner.take_once(tenant, kind, id)).await
    }

    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        call(span!("tokens.peek", tenant), self.inner.peek(tenant, kind, id)).await
    }

    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>> {
        call(span!("tokens.count_attempt", tenant), self.inner.count_attempt(tenant, kind, id, max)).await
    }

    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool> {
        call(span!("tokens.advance_counter", tenant), self.inner.advance_counter(tenant, key, step)).await
    }

    async fn rate_check(
        &self,
        tenant: TenantId,
        key: &str,
        limit: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<RateDecision> {
        call(span!("tokens.rate_check", tenant), self.inner.rate_check(tenant, key, limit, period, now_ms)).await
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        call(span!("tokens.rate_reset", tenant), self.inner.rate_reset(tenant, key)).await
    }
}

pub use store::TracedStore;

mod store {
    use std::future::Future;
    use std::sync::Arc;

    use async_trait::async_trait;
    use authd_core::settings::TenantSettings;
    use authd_core::{Slug, TenantId, UserId};
    use authd_store::*;
    use chrono::{DateTime, Utc};
    use tracing::Instrument;

    pub struct TracedStore {
        inner: Arc<dyn Store>,
        /// `postgresql` or `sqlite` (OpenTelemetry's `db.system` values).
        system: &'static str,
    }

    impl TracedStore {
        pub fn wrap(inner: Arc<dyn Store>, system: &'static str) -> Arc<dyn Store> {
            Arc::new(Self { inner, system })
        }
    }

    async fn call<T>(span: tracing::Span, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let r = fut.instrument(span.clone()).await;
        if let Err(e @ (Error::Unavailable(_) | Error::Internal(_))) = &r {
            crate::metrics::BACKEND_ERRORS.inc(&["store"]);
            span.record("otel.status_code", "ERROR");
            span.in_scope(|| tracing::debug!(error = %e, "storage call failed"));
        }
        r
    }

    /// As for the token store: child spans only, none outside a request.
    macro_rules! span {
        ($self:ident, $name:literal) => {
            if tracing::Span::current().is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(
                    $name,
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    db.system = $self.system
                )
            }
        };
        ($self:ident, $name:literal, $tenant:expr) => {
            if tracing::Span::current().is_none() {
                tracing::Span::none()
            } else {
                tracing::info_span!(
                    $name,
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    db.system = $self.system,
                    tenant = %$tenant
                )
            }
        };
    }

    #[async_trait]
    impl Store for TracedStore {
        async fn ping(&self) -> Result<()> {
            call(span!(self, "store.ping"), self.inner.ping()).await
        }

        async fn create_tenant(
            &self,
            tenant: &NewTenant,
            admin: &NewUser,
            key: &SigningKeyRecord,
            tenant_event: &AuditEvent,
            platform_event: &PlatformEvent,
        ) -> Result<TenantRecord> {
            call(
                span!(self, "store.create_tenant"),
                self.inner.create_tenant(tenant, admin, key, tenant_event, platform_event),
            )
            .await
        }

        async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
            call(span!(self, "store.tenant_by_slug"), self.inner.tenant_by_slug(slug)).await
        }

        async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
            call(span!(self, "store.tenant_by_id", id), self.inner.tenant_by_id(id)).await
        }

        async fn missing_tenants(&self, ids: &[TenantId]) -> Result<Vec<TenantId>> {
            call(span!(self, "store.missing_tenants"), self.inner.missing_tenants(ids)).await
        }

        async fn tenants_changed_since(
            &self,
            since: chrono::DateTime<chrono::Utc>,
        ) -> Result<(Vec<(TenantId, chrono::DateTime<chrono::Utc>)>, chrono::DateTime<chrono::Utc>)> {
            call(span!(self, "store.tenants_changed_since"), self.inner.tenants_changed_since(since)).await
        }

        async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>> {
            call(span!(self, "store.list_tenants"), self.inner.list_tenants(after, limit)).await
        }

        async fn set_tenant_disabled(
            &self,
            slug: &Slug,
            disabled: bool,
            event: &PlatformEvent,
        ) -> Result<Option<TenantRecord>> {
            call(span!(self, "store.set_tenant_disabled"), self.inner.set_tenant_disabled(slug, disabled, event)).await
        }

        async fn delete_tenant(&self, slug: &Slug, event: &PlatformEvent) -> Result<Option<TenantId>> {
            call(span!(self, "store.delete_tenant"), self.inner.delete_tenant(slug, event)).await
        }

        async fn platform_events(&self, after: Option<EventCursor>, limit: u32) -> Result<Vec<PlatformEvent>> {
            call(span!(self, "store.platform_events"), self.inner.platform_events(after, limit)).await
        }

        async fn update_settings(&self, tenant: TenantId, settings: &TenantSettings, event: &AuditEvent) -> Result<()> {
            call(span!(self, "store.update_settings", tenant), self.inner.update_settings(tenant, settings, event))
                .await
        }

        async fn create_user(&self, tenant: TenantId, user: &NewUser, event: &AuditEvent) -> Result<UserRecord> {
            call(span!(self, "store.create_user", tenant), self.inner.create_user(tenant, user, event)).await
        }

        async fn user_by_email(&self, tenant: TenantId, email: &str) -> Result<Option<UserRecord>> {
            call(span!(self, "store.user_by_email", tenant), self.inner.user_by_email(tenant, email)).await
        }

        async fn user_by_id(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRecord>> {
            call(span!(self, "store.user_by_id", tenant), self.inner.user_by_id(tenant, id)).await
        }

        async fn list_users(
            &self,
            tenant: TenantId,
            email_prefix: Option<&str>,
            after: Option<UserId>,
            limit: u32,
        ) -> Result<Vec<UserRecord>> {
            call(span!(self, "store.list_users", tenant), self.inner.list_users(tenant, email_prefix, after, limit))
                .await
        }

        async fn update_user(
            &self,
            tenant: TenantId,
            id: UserId,
            change: &UserChange,
            event: Option<&AuditEvent>,
        ) -> Result<Option<UserRecord>> {
            call(span!(self, "store.update_user", tenant), self.inner.update_user(tenant, id, change, event)).await
        }

        async fn count_active_admins(&self, tenant: TenantId) -> Result<u64> {
            call(span!(self, "store.count_active_admins", tenant), self.inner.count_active_admins(tenant)).await
        }

        async fn signing_keys(&self, tenant: TenantId) -> Result<Vec<SigningKeyRecord>> {
            call(span!(self, "store.signing_keys", tenant), self.inner.signing_keys(tenant)).await
        }

        async fn add_signing_key(
            &self,
            tenant: TenantId,
            key: &SigningKeyRecord,
            remove: &[String],
            event: &AuditEvent,
        ) -> Result<()> {
            call(span!(self, "store.add_signing_key", tenant), self.inner.add_signing_key(tenant, key, remove, event))
                .await
        }

        async fn reseal_signing_keys(&self, tenant: TenantId, sealed: &[(String, String)]) -> Result<()> {
            call(span!(self, "store.reseal_signing_keys", tenant), self.inner.reseal_signing_keys(tenant, sealed)).await
        }

        async fn append_events(&self, tenant: TenantId, events: &[AuditEvent]) -> Result<()> {
            call(span!(self, "store.append_events", tenant), self.inner.append_events(tenant, events)).await
        }

        async fn audit_events(
            &self,
            tenant: TenantId,
            filter: &AuditFilter,
            after: Option<EventCursor>,
            limit: u32,
        ) -> Result<Vec<AuditEvent>> {
            call(span!(self, "store.audit_events", tenant), self.inner.audit_events(tenant, filter, after, limit)).await
        }

        async fn purge_audit_events(&self, tenant: TenantId, before: DateTime<Utc>) -> Result<u64> {
            call(span!(self, "store.purge_audit_events", tenant), self.inner.purge_audit_events(tenant, before)).await
        }

        async fn set_totp_pending(&self, tenant: TenantId, user: UserId, sealed: Option<&str>) -> Result<bool> {
            call(span!(self, "store.set_totp_pending", tenant), self.inner.set_totp_pending(tenant, user, sealed)).await
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
            call(
                span!(self, "store.enable_totp", tenant),
                self.inner.enable_totp(tenant, user, pending_sealed, step, recovery_hashes, event),
            )
            .await
        }

        async fn disable_totp(&self, tenant: TenantId, user: UserId, event: &AuditEvent) -> Result<()> {
            call(span!(self, "store.disable_totp", tenant), self.inner.disable_totp(tenant, user, event)).await
        }

        async fn replace_recovery_codes(
            &self,
            tenant: TenantId,
            user: UserId,
            recovery_hashes: &[String],
            event: &AuditEvent,
        ) -> Result<()> {
            call(
                span!(self, "store.replace_recovery_codes", tenant),
                self.inner.replace_recovery_codes(tenant, user, recovery_hashes, event),
            )
            .await
        }

        async fn use_recovery_code(
            &self,
            tenant: TenantId,
            user: UserId,
            candidates: &[String],
            event: &AuditEvent,
        ) -> Result<bool> {
            call(
                span!(self, "store.use_recovery_code", tenant),
                self.inner.use_recovery_code(tenant, user, candidates, event),
            )
            .await
        }

        async fn recovery_codes_left(&self, tenant: TenantId, user: UserId) -> Result<u64> {
            call(span!(self, "store.recovery_codes_left", tenant), self.inner.recovery_codes_left(tenant, user)).await
        }

        async fn advance_totp_step(&self, tenant: TenantId, user: UserId, step: i64) -> Result<bool> {
            call(span!(self, "store.advance_totp_step", tenant), self.inner.advance_totp_step(tenant, user, step)).await
        }

        async fn oauth_providers(&self, tenant: TenantId) -> Result<Vec<OAuthProviderRecord>> {
            call(span!(self, "store.oauth_providers", tenant), self.inner.oauth_providers(tenant)).await
        }

        async fn upsert_oauth_provider(
            &self,
            tenant: TenantId,
            provider: &OAuthProviderRecord,
            event: &AuditEvent,
        ) -> Result<OAuthProviderRecord> {
            call(
                span!(self, "store.upsert_oauth_provider", tenant),
                self.inner.upsert_oauth_provider(tenant, provider, event),
            )
            .await
        }

        async fn delete_oauth_provider(&self, tenant: TenantId, name: &str, event: &AuditEvent) -> Result<bool> {
            call(
                span!(self, "store.delete_oauth_provider", tenant),
                self.inner.delete_oauth_provider(tenant, name, event),
            )
            .await
        }

        async fn user_by_identity(&self, tenant: TenantId, identity: &Identity<'_>) -> Result<Option<UserRecord>> {
            call(span!(self, "store.user_by_identity", tenant), self.inner.user_by_identity(tenant, identity)).await
        }

        async fn link_identity(
            &self,
            tenant: TenantId,
            identity: &Identity<'_>,
            user: UserId,
            event: &AuditEvent,
        ) -> Result<()> {
            call(span!(self, "store.link_identity", tenant), self.inner.link_identity(tenant, identity, user, event))
                .await
        }

        async fn create_user_with_identity(
            &self,
            tenant: TenantId,
            user: &NewUser,
            identity: &Identity<'_>,
            events: &[AuditEvent],
        ) -> Result<UserRecord> {
            call(
                span!(self, "store.create_user_with_identity", tenant),
                self.inner.create_user_with_identity(tenant, user, identity, events),
            )
            .await
        }

        async fn create_user_with_link(
            &self,
            tenant: TenantId,
            user: &NewUser,
            event: &AuditEvent,
            link: &EmailLink,
            mail: &OutboxMail,
        ) -> Result<UserRecord> {
            call(
                span!(self, "store.create_user_with_link", tenant),
                self.inner.create_user_with_link(tenant, user, event, link, mail),
            )
            .await
        }

        async fn issue_link(
            &self,
            tenant: TenantId,
            link: &EmailLink,
            mail: &OutboxMail,
            event: &AuditEvent,
        ) -> Result<()> {
            call(span!(self, "store.issue_link", tenant), self.inner.issue_link(tenant, link, mail, event)).await
        }

        async fn link_by_hash(&self, tenant: TenantId, hash: &str) -> Result<Option<EmailLink>> {
            call(span!(self, "store.link_by_hash", tenant), self.inner.link_by_hash(tenant, hash)).await
        }

        async fn redeem_link(
            &self,
            tenant: TenantId,
            link: &EmailLink,
            effect: Option<&LinkEffect>,
            events: &[AuditEvent],
            mail: Option<&OutboxMail>,
        ) -> Result<Option<UserRecord>> {
            call(span!(self, "store.redeem_link", tenant), self.inner.redeem_link(tenant, link, effect, events, mail))
                .await
        }

        async fn delete_links(&self, tenant: TenantId, user: UserId, kind: &str) -> Result<()> {
            call(span!(self, "store.delete_links", tenant), self.inner.delete_links(tenant, user, kind)).await
        }

        async fn claim_mail(
            &self,
            now: chrono::DateTime<chrono::Utc>,
            lease: std::time::Duration,
            limit: u32,
        ) -> Result<Vec<QueuedMail>> {
            call(span!(self, "store.claim_mail"), self.inner.claim_mail(now, lease, limit)).await
        }

        async fn mail_delivered(&self, id: uuid::Uuid) -> Result<()> {
            call(span!(self, "store.mail_delivered"), self.inner.mail_delivered(id)).await
        }

        async fn mail_deferred(
            &self,
            id: uuid::Uuid,
            retry_at: chrono::DateTime<chrono::Utc>,
            error: &str,
        ) -> Result<()> {
            call(span!(self, "store.mail_deferred"), self.inner.mail_deferred(id, retry_at, error)).await
        }

        async fn mail_abandoned(&self, id: uuid::Uuid) -> Result<()> {
            call(span!(self, "store.mail_abandoned"), self.inner.mail_abandoned(id)).await
        }

        async fn passkeys(&self, tenant: TenantId, user: UserId) -> Result<Vec<PasskeyRecord>> {
            call(span!(self, "store.passkeys", tenant), self.inner.passkeys(tenant, user)).await
        }

        async fn passkey_by_credential(&self, tenant: TenantId, credential_id: &str) -> Result<Option<PasskeyRecord>> {
            call(
                span!(self, "store.passkey_by_credential", tenant),
                self.inner.passkey_by_credential(tenant, credential_id),
            )
            .await
        }

        async fn insert_passkey(&self, tenant: TenantId, passkey: &PasskeyRecord, event: &AuditEvent) -> Result<()> {
            call(span!(self, "store.insert_passkey", tenant), self.inner.insert_passkey(tenant, passkey, event)).await
        }

        async fn record_passkey_use(
            &self,
            tenant: TenantId,
            passkey: &PasskeyRecord,
            previous_count: i64,
        ) -> Result<bool> {
            call(
                span!(self, "store.record_passkey_use", tenant),
                self.inner.record_passkey_use(tenant, passkey, previous_count),
            )
            .await
        }

        async fn rename_passkey(
            &self,
            tenant: TenantId,
            user: UserId,
            id: uuid::Uuid,
            name: &str,
        ) -> Result<Option<PasskeyRecord>> {
            call(span!(self, "store.rename_passkey", tenant), self.inner.rename_passkey(tenant, user, id, name)).await
        }

        async fn delete_passkey(
            &self,
            tenant: TenantId,
            user: UserId,
            id: uuid::Uuid,
            event: &AuditEvent,
        ) -> Result<bool> {
            call(span!(self, "store.delete_passkey", tenant), self.inner.delete_passkey(tenant, user, id, event)).await
        }

        async fn oauth_clients(&self, tenant: TenantId) -> Result<Vec<OAuthClientRecord>> {
            call(span!(self, "store.oauth_clients", tenant), self.inner.oauth_clients(tenant)).await
        }

        async fn oauth_client(&self, tenant: TenantId, client_id: &str) -> Result<Option<OAuthClientRecord>> {
            call(span!(self, "store.oauth_client", tenant), self.inner.oauth_client(tenant, client_id)).await
        }

        async fn save_oauth_client(
            &self,
            tenant: TenantId,
            client: &OAuthClientRecord,
            create: bool,
            event: &AuditEvent,
        ) -> Result<Option<OAuthClientRecord>> {
            call(
                span!(self, "store.save_oauth_client", tenant),
                self.inner.save_oauth_client(tenant, client, create, event),
            )
            .await
        }

        async fn set_oauth_client_secret(
            &self,
            tenant: TenantId,
            client_id: &str,
            secret_hash: &str,
            event: &AuditEvent,
        ) -> Result<Option<OAuthClientRecord>> {
            call(
                span!(self, "store.set_oauth_client_secret", tenant),
                self.inner.set_oauth_client_secret(tenant, client_id, secret_hash, event),
            )
            .await
        }

        async fn delete_oauth_client(&self, tenant: TenantId, client_id: &str, event: &AuditEvent) -> Result<bool> {
            call(
                span!(self, "store.delete_oauth_client", tenant),
                self.inner.delete_oauth_client(tenant, client_id, event),
            )
            .await
        }

        async fn consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<Option<String>> {
            call(span!(self, "store.consent", tenant), self.inner.consent(tenant, user, client_id)).await
        }

        async fn grant_consent(
            &self,
            tenant: TenantId,
            user: UserId,
            client_id: &str,
            scopes: &str,
            event: &AuditEvent,
        ) -> Result<()> {
            call(
                span!(self, "store.grant_consent", tenant),
                self.inner.grant_consent(tenant, user, client_id, scopes, event),
            )
            .await
        }

        async fn revoke_consent(&self, tenant: TenantId, user: UserId, client_id: &str) -> Result<bool> {
            call(span!(self, "store.revoke_consent", tenant), self.inner.revoke_consent(tenant, user, client_id)).await
        }

        async fn outbox_stats(&self) -> Result<OutboxStats> {
            call(span!(self, "store.outbox_stats"), self.inner.outbox_stats()).await
        }

        async fn sealed_totp_secrets(&self, tenant: TenantId) -> Result<Vec<(UserId, Option<String>, Option<String>)>> {
            call(span!(self, "store.sealed_totp_secrets", tenant), self.inner.sealed_totp_secrets(tenant)).await
        }

        async fn reseal_totp_secrets(&self, tenant: TenantId, sealed: &[TotpReseal]) -> Result<u64> {
            call(span!(self, "store.reseal_totp_secrets", tenant), self.inner.reseal_totp_secrets(tenant, sealed)).await
        }
    }
}
