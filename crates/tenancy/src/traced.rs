//! A [`TokenStore`] that wraps every call in a span (`tokens.<method>`, with
//! the `tenant` and nothing else: refresh-token hashes, rate-limit keys and
//! single-use values never become attributes) and counts backend failures in
//! [`crate::metrics::BACKEND_ERRORS`]. With OpenTelemetry on, each call is a
//! child span of the GraphQL operation that made it.

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
        span.in_scope(|| tracing::warn!(error = %e, "token store call failed"));
    }
    r
}

macro_rules! span {
    ($name:literal) => {
        tracing::info_span!($name, otel.kind = "client", db.system = "redis")
    };
    ($name:literal, $tenant:expr) => {
        tracing::info_span!($name, otel.kind = "client", db.system = "redis", tenant = %$tenant)
    };
}

#[async_trait]
impl TokenStore for TracedTokenStore {
    async fn ping(&self) -> Result<()> {
        call(span!("tokens.ping"), self.inner.ping()).await
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
