//! Audit events: built here, written either inside the transaction of the
//! change they record (the store methods take them) or, for events with no
//! database change (failed logins, refusals), batched off the request path by
//! [`AuditSink`], which drains on a clean shutdown. Every event is also a
//! structured log line with `target = "audit"`.

use std::collections::HashMap;
use std::time::Duration;

use authd_core::{EventId, TenantId, UserId};
use authd_store::{AuditEvent, Store};
use chrono::Utc;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Who and where a request came from; carried into every event it causes.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// Event type names (API.md, Audit events): dotted lowercase, stable.
pub mod kinds {
    pub const USER_REGISTERED: &str = "user.registered";
    pub const LOGIN_SUCCEEDED: &str = "login.succeeded";
    pub const LOGIN_FAILED: &str = "login.failed";
    pub const MFA_SUCCEEDED: &str = "mfa.succeeded";
    pub const MFA_FAILED: &str = "mfa.failed";
    pub const TOTP_ENROLLED: &str = "totp.enrolled";
    pub const TOTP_DISABLED: &str = "totp.disabled";
    pub const TOTP_REPLAY_REFUSED: &str = "totp.replay_refused";
    pub const RECOVERY_CODE_USED: &str = "recovery_code.used";
    pub const RECOVERY_CODES_REGENERATED: &str = "recovery_codes.regenerated";
    pub const REFRESH_REUSE_DETECTED: &str = "refresh.reuse_detected";
    pub const SESSION_LOGOUT: &str = "session.logout";
    pub const SESSION_LOGOUT_ALL: &str = "session.logout_all";
    pub const SESSION_REVOKED: &str = "session.revoked";
    pub const USER_DISABLED: &str = "user.disabled";
    pub const USER_ENABLED: &str = "user.enabled";
    pub const USER_ROLE_CHANGED: &str = "user.role_changed";
    pub const KEY_ROTATED: &str = "key.rotated";
    pub const SETTINGS_CHANGED: &str = "settings.changed";
    pub const TENANT_CREATED: &str = "tenant.created";
    pub const TENANT_DISABLED: &str = "tenant.disabled";
    pub const TENANT_ENABLED: &str = "tenant.enabled";
    pub const TENANT_DELETED: &str = "tenant.deleted";
    pub const REQUEST_RATE_LIMITED: &str = "request.rate_limited";
    pub const OAUTH_PROVIDER_CHANGED: &str = "oauth_provider.changed";
    pub const OAUTH_PROVIDER_DELETED: &str = "oauth_provider.deleted";
    pub const ACCOUNT_LINKED: &str = "account.linked";
    pub const OAUTH_LOGIN_SUCCEEDED: &str = "oauth.login_succeeded";
    pub const OAUTH_CALLBACK_REJECTED: &str = "oauth.callback_rejected";
}

/// Builds an event stamped now.
pub fn event(
    kind: &str,
    meta: &RequestMeta,
    actor: Option<UserId>,
    subject: Option<UserId>,
    detail: Option<serde_json::Value>,
) -> AuditEvent {
    AuditEvent {
        id: EventId::new(),
        at: Utc::now(),
        kind: kind.to_owned(),
        actor_id: actor,
        subject_id: subject,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
        request_id: meta.request_id.clone(),
        detail,
    }
}

/// Writes the structured log line of an event (never a secret: events carry none).
pub fn log_event(tenant: TenantId, e: &AuditEvent) {
    tracing::info!(
        target: "audit",
        tenant = %tenant,
        event_id = %e.id,
        r#type = %e.kind,
        actor = e.actor_id.map(|u| u.to_string()),
        subject = e.subject_id.map(|u| u.to_string()),
        ip = e.ip.as_deref(),
        request_id = e.request_id.as_deref(),
        detail = e.detail.as_ref().map(|d| d.to_string()),
        "audit event"
    );
}

enum SinkMsg {
    Event(TenantId, AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// Batches events that record no database change and writes them in the
/// background. `flush` waits until everything sent before it is stored.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<SinkMsg>,
}

impl AuditSink {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_sink(store, rx));
        Self { tx }
    }

    /// Queues an event (and logs it now).
    pub fn record(&self, tenant: TenantId, e: AuditEvent) {
        log_event(tenant, &e);
        if self.tx.send(SinkMsg::Event(tenant, e)).is_err() {
            tracing::error!(target: "authd::audit", "audit sink stopped; an event was only logged");
        }
    }

    /// Waits until every event queued before this call has been written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(SinkMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run_sink(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<SinkMsg>) {
    let mut batch: HashMap<TenantId, Vec<AuditEvent>> = HashMap::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        // Gather what is already queued (up to a batch), then write.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut count = 0usize;
        while let Some(m) = next.take() {
            match m {
                SinkMsg::Event(t, e) => {
                    batch.entry(t).or_default().push(e);
                    count += 1;
                }
                SinkMsg::Flush(w) => waiters.push(w),
            }
            if count >= 500 || !waiters.is_empty() {
                break;
            }
            next = tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten();
        }
        write_batch(&*store, &mut batch).await;
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
    write_batch(&*store, &mut batch).await;
}

async fn write_batch(store: &dyn Store, batch: &mut HashMap<TenantId, Vec<AuditEvent>>) {
    for (tenant, events) in batch.drain() {
        if let Err(e) = store.append_events(tenant, &events).await {
            // The tenant may have been deleted meanwhile; the events are in
            // the log lines already.
            tracing::warn!(target: "authd::audit", tenant = %tenant, error = %e, count = events.len(), "could not store audit events");
        }
    }
}
