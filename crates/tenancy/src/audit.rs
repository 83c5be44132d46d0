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

/// Event type names (docs/api.md, Audit events): dotted lowercase, stable.
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
    pub const EMAIL_VERIFICATION_SENT: &str = "email.verification_sent";
    pub const EMAIL_VERIFIED: &str = "email.verified";
    pub const PASSWORD_RESET_REQUESTED: &str = "password.reset_requested";
    pub const PASSWORD_RESET: &str = "password.reset";
    pub const PASSWORD_CHANGED: &str = "password.changed";
    pub const MAGIC_LINK_SENT: &str = "magic_link.sent";
    pub const EMAIL_CHANGE_REQUESTED: &str = "email.change_requested";
    pub const EMAIL_CHANGED: &str = "email.changed";
    pub const PASSKEY_REGISTERED: &str = "passkey.registered";
    pub const PASSKEY_DELETED: &str = "passkey.deleted";
    pub const PASSKEY_LOGIN_SUCCEEDED: &str = "passkey.login_succeeded";
    pub const PASSKEY_LOGIN_FAILED: &str = "passkey.login_failed";
    pub const OAUTH_CLIENT_CREATED: &str = "oauth_client.created";
    pub const OAUTH_CLIENT_CHANGED: &str = "oauth_client.changed";
    pub const OAUTH_CLIENT_DELETED: &str = "oauth_client.deleted";
    pub const SSO_LOGIN_SUCCEEDED: &str = "sso.login_succeeded";
    pub const SSO_CONSENT_GRANTED: &str = "sso.consent_granted";
    pub const SSO_TOKEN_ISSUED: &str = "sso.token_issued";
    pub const SSO_LOGOUT: &str = "sso.logout";
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

/// Refusals repeated by one client coalesce: the same type (and reason),
/// tenant, IP and minute become one event whose `detail.count` says how many
/// there were.
/// Events that record anything else (a sign-in, a link) are never merged.
fn coalesces(kind: &str) -> bool {
    matches!(
        kind,
        kinds::LOGIN_FAILED
            | kinds::MFA_FAILED
            | kinds::REQUEST_RATE_LIMITED
            | kinds::OAUTH_CALLBACK_REJECTED
            | kinds::TOTP_REPLAY_REFUSED
    )
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CoalesceKey {
    tenant: TenantId,
    kind: String,
    reason: Option<String>,
    ip: Option<String>,
    minute: i64,
}

/// The events waiting for the writer: a bounded queue, with an index of the
/// ones that later refusals may still merge into.
struct Pending {
    queue: std::collections::VecDeque<(TenantId, AuditEvent, Option<CoalesceKey>)>,
    /// Sequence number of `queue[0]`; `index` holds absolute numbers.
    head: u64,
    index: HashMap<CoalesceKey, u64>,
}

/// Process-wide counts of the queue, for `/metrics`.
#[derive(Default)]
pub struct SinkStats {
    pub queued: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub coalesced: std::sync::atomic::AtomicU64,
}

/// Events that record no database change (refusals, failed logins, sign-ins
/// whose session lives in the token store) are queued here and written in
/// batches by a background task, readable within [`BATCH_WINDOW`]. The queue
/// is bounded (`AUTHD_AUDIT_QUEUE_MAX`): while storage is slow, repeated
/// refusals coalesce, and past the bound an event is dropped and counted
/// (it is still in the log), so strangers cannot make authd hold unbounded
/// memory. Events that record a change never pass through here: they are
/// written in the change's own transaction. `flush` waits until everything
/// queued before it is stored; a clean shutdown flushes.
#[derive(Clone)]
pub struct AuditSink {
    pending: Arc<parking_lot::Mutex<Pending>>,
    wake: Arc<tokio::sync::Notify>,
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    max: usize,
    pub stats: Arc<SinkStats>,
}

/// How long a queued event may wait before it is written.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Events written per store call.
const BATCH_MAX: usize = 500;

impl AuditSink {
    /// A sink holding at most `max` queued events.
    pub fn start(store: Arc<dyn Store>, max: usize) -> Self {
        let (flushes, flush_rx) = mpsc::unbounded_channel();
        let sink = Self {
            pending: Arc::new(parking_lot::Mutex::new(Pending {
                queue: std::collections::VecDeque::new(),
                head: 0,
                index: HashMap::new(),
            })),
            wake: Arc::new(tokio::sync::Notify::new()),
            flushes,
            max: max.max(1),
            stats: Arc::default(),
        };
        tokio::spawn(run_sink(store, sink.clone(), flush_rx));
        sink
    }

    /// Queues an event (and logs it now): merged into a queued refusal of the
    /// same type, tenant, IP and minute, or appended, or (queue full) dropped
    /// and counted.
    pub fn record(&self, tenant: TenantId, e: AuditEvent) {
        use std::sync::atomic::Ordering::Relaxed;
        log_event(tenant, &e);
        let key = coalesces(&e.kind).then(|| CoalesceKey {
            tenant,
            kind: e.kind.clone(),
            reason: e.detail.as_ref().and_then(|d| d.get("reason")).and_then(|r| r.as_str()).map(str::to_owned),
            ip: e.ip.clone(),
            minute: e.at.timestamp().div_euclid(60),
        });
        let mut p = self.pending.lock();
        if let Some(k) = &key
            && let Some(seq) = p.index.get(k).copied()
            && let Some(pos) = seq.checked_sub(p.head).and_then(|i| usize::try_from(i).ok())
            && let Some((_, queued, _)) = p.queue.get_mut(pos)
        {
            let detail = queued.detail.get_or_insert_with(|| serde_json::json!({}));
            if let Some(obj) = detail.as_object_mut() {
                let count = obj.get("count").and_then(serde_json::Value::as_u64).unwrap_or(1);
                obj.insert("count".into(), serde_json::json!(count + 1));
            }
            drop(p);
            self.stats.coalesced.fetch_add(1, Relaxed);
            return;
        }
        if p.queue.len() >= self.max {
            drop(p);
            self.stats.dropped.fetch_add(1, Relaxed);
            tracing::warn!(target: "authd::audit", tenant = %tenant, "audit queue full; an event was only logged");
            return;
        }
        let seq = p.head + p.queue.len() as u64;
        if let Some(k) = &key {
            p.index.insert(k.clone(), seq);
        }
        p.queue.push_back((tenant, e, key));
        self.stats.queued.store(p.queue.len() as u64, Relaxed);
        drop(p);
        self.wake.notify_one();
    }

    /// Waits until every event queued before this call has been written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).is_ok() {
            self.wake.notify_one();
            let _ = rx.await;
        }
    }

    /// Takes up to `n` events off the front of the queue.
    fn take(&self, n: usize) -> Vec<(TenantId, AuditEvent)> {
        let mut p = self.pending.lock();
        let n = n.min(p.queue.len());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some((tenant, e, key)) = p.queue.pop_front() else { break };
            let seq = p.head;
            p.head += 1;
            if let Some(k) = key
                && p.index.get(&k) == Some(&seq)
            {
                p.index.remove(&k);
            }
            out.push((tenant, e));
        }
        self.stats.queued.store(p.queue.len() as u64, std::sync::atomic::Ordering::Relaxed);
        out
    }
}

async fn run_sink(store: Arc<dyn Store>, sink: AuditSink, mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>) {
    loop {
        let woken = tokio::select! {
            () = sink.wake.notified() => true,
            f = flushes.recv() => match f {
                Some(w) => {
                    drain(&*store, &sink).await;
                    let _ = w.send(());
                    continue;
                }
                None => false,
            },
        };
        if !woken {
            break;
        }
        // Let a batch gather (events arriving within the window join it).
        tokio::time::sleep(BATCH_WINDOW).await;
        drain(&*store, &sink).await;
        while let Ok(w) = flushes.try_recv() {
            drain(&*store, &sink).await;
            let _ = w.send(());
        }
    }
    drain(&*store, &sink).await;
}

/// Writes everything queued, a batch at a time.
async fn drain(store: &dyn Store, sink: &AuditSink) {
    loop {
        let events = sink.take(BATCH_MAX);
        if events.is_empty() {
            return;
        }
        let mut batch: HashMap<TenantId, Vec<AuditEvent>> = HashMap::new();
        for (t, e) in events {
            batch.entry(t).or_default().push(e);
        }
        write_batch(store, &mut batch).await;
    }
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
