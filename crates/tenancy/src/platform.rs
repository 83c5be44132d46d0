//! `PlatformSupervisor` (one per process) and the [`Platform`] handle the API
//! layer holds: tenant lookup (starting a tenant's supervisor on its first
//! request, exactly once under concurrency) and the platform operations.
//!
//! Supervision: a tenant supervisor that stops (idle) or fails is removed
//! from the map; the next request for that tenant starts a fresh one. Other
//! tenants are never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use authd_core::settings::{Role, TenantSettings};
use authd_core::{Error, Result, Slug, TenantId, UserId};
use authd_store::{AuditEvent, NewTenant, NewUser, PlatformEvent, TenantRecord};
use chrono::Utc;
use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::Deps;
use crate::audit::{self, RequestMeta, kinds};
use crate::keyset::KeySet;
use crate::runtime::{TenantRuntime, TenantSnapshot};
use crate::tenant::{TenantArgs, TenantSupervisor};

type TenantMap = Arc<DashMap<String, Arc<TenantRuntime>>>;

pub enum PlatformMsg {
    /// Start (or return the running) runtime for a freshly loaded snapshot.
    Start(Box<TenantSnapshot>, RpcReplyPort<Result<Arc<TenantRuntime>>>),
    /// Stop a tenant's supervisor (disabled, deleted).
    StopTenant(String, RpcReplyPort<()>),
}

pub struct PlatformSupervisor;

pub struct PlatformState {
    deps: Arc<Deps>,
    tenants: TenantMap,
    /// Actor id of each tenant supervisor → slug.
    by_actor: HashMap<ractor::ActorId, String>,
}

#[ractor::async_trait]
impl Actor for PlatformSupervisor {
    type Msg = PlatformMsg;
    type State = PlatformState;
    type Arguments = (Arc<Deps>, TenantMap);

    async fn pre_start(
        &self,
        _myself: ActorRef<PlatformMsg>,
        (deps, tenants): (Arc<Deps>, TenantMap),
    ) -> Result<PlatformState, ActorProcessingErr> {
        Ok(PlatformState { deps, tenants, by_actor: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<PlatformMsg>,
        msg: PlatformMsg,
        state: &mut PlatformState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PlatformMsg::Start(snapshot, reply) => {
                let slug = snapshot.record.slug.as_str().to_owned();
                if let Some(existing) = state.tenants.get(&slug).map(|r| r.clone())
                    && existing.is_alive()
                {
                    let _ = reply.send(Ok(existing));
                    return Ok(());
                }
                let runtime = TenantRuntime::new(*snapshot);
                let args = TenantArgs { runtime: runtime.clone(), deps: state.deps.clone() };
                // Spawning does no I/O: the snapshot was loaded by the caller.
                match Actor::spawn_linked(None, TenantSupervisor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), slug.clone());
                        state.tenants.insert(slug, runtime.clone());
                        crate::metrics::ACTIVE_TENANTS
                            .store(state.tenants.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let _ = reply.send(Ok(runtime));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::internal(format!("cannot start tenant: {e}"))));
                    }
                }
            }
            PlatformMsg::StopTenant(slug, reply) => {
                if let Some((_, runtime)) = state.tenants.remove(&slug) {
                    runtime.mark_stopped();
                    if let Some(sup) = runtime.supervisor() {
                        sup.stop(Some("stopped by platform".into()));
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PlatformMsg>,
        event: SupervisionEvent,
        state: &mut PlatformState,
    ) -> Result<(), ActorProcessingErr> {
        let cell: ActorCell = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(error = %err, "a tenant supervisor failed; it restarts on the next request");
                cell
            }
            _ => return Ok(()),
        };
        if let Some(slug) = state.by_actor.remove(&cell.get_id()) {
            // Remove only if the map still holds the runtime of this actor.
            state.tenants.remove_if(&slug, |_, rt| rt.supervisor().map(|s| s.get_id()) == Some(cell.get_id()));
            crate::metrics::ACTIVE_TENANTS.store(state.tenants.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How far back each poll of the change feed looks beyond the previous one:
/// a change committed late with an earlier `updated_at` is still seen.
const FEED_OVERLAP: chrono::Duration = chrono::Duration::seconds(10);
/// Every how many polls the feed checks that running tenants still exist.
const EXISTENCE_EVERY: u32 = 30;

/// The change feed: one query per `tenant_refresh_interval` for the whole
/// process, whatever the number of tenants, asks storage which tenants
/// changed (their `updated_at`, bumped by every change to a record,
/// settings, keys or providers); the running ones among them reload. Redis
/// pub/sub makes it faster still between replicas; this makes it certain
/// without Redis and after a missed notice. Idle tenants cost nothing.
fn start_change_feed(deps: &Arc<Deps>, tenants: &TenantMap) {
    let (deps, tenants) = (Arc::downgrade(deps), Arc::downgrade(tenants));
    tokio::spawn(async move {
        let Some(interval) = deps.upgrade().map(|d| d.config.tenant_refresh_interval) else { return };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut since: Option<chrono::DateTime<Utc>> = None;
        let mut seen: std::collections::HashMap<TenantId, chrono::DateTime<Utc>> = std::collections::HashMap::new();
        let mut checks: u32 = 0;
        loop {
            ticker.tick().await;
            let (Some(deps), Some(running)) = (deps.upgrade(), tenants.upgrade()) else { return };
            let from = since.unwrap_or_else(|| Utc::now() - FEED_OVERLAP);
            match deps.store.tenants_changed_since(from).await {
                Ok((changed, now)) => {
                    for (id, at) in changed {
                        if seen.get(&id) == Some(&at) {
                            continue;
                        }
                        seen.insert(id, at);
                        let sup = running.iter().find(|r| r.id == id).and_then(|r| r.supervisor());
                        if let Some(sup) = sup {
                            let _ = sup.cast(crate::tenant::TenantMsg::Reload);
                        }
                    }
                    let next = now - FEED_OVERLAP;
                    seen.retain(|_, at| *at > next);
                    since = Some(next);
                }
                Err(e) => tracing::debug!(error = %e, "change feed: storage did not answer; trying again"),
            }
            // A deleted tenant leaves no row to change: now and then, the
            // running ones are checked to still exist (one query).
            checks += 1;
            if checks.is_multiple_of(EXISTENCE_EVERY) {
                let ids: Vec<TenantId> = running.iter().map(|r| r.id).collect();
                if !ids.is_empty()
                    && let Ok(gone) = deps.store.missing_tenants(&ids).await
                {
                    for id in gone {
                        let sup = running.iter().find(|r| r.id == id).and_then(|r| r.supervisor());
                        if let Some(sup) = sup {
                            let _ = sup.cast(crate::tenant::TenantMsg::Reload);
                        }
                    }
                }
            }
        }
    });
}

/// Loads a tenant's snapshot (record and signing keys) from storage.
pub(crate) async fn load_snapshot(deps: &Deps, record: TenantRecord) -> Result<TenantSnapshot> {
    let keys = deps.store.signing_keys(record.id).await?;
    let keys = KeySet::build(&deps.keyring, record.id, &keys, Utc::now())?;
    let providers = deps.store.oauth_providers(record.id).await?;
    Ok(TenantSnapshot { record, keys: Arc::new(keys), providers: Arc::new(providers) })
}

pub(crate) async fn load_snapshot_by_id(deps: &Deps, id: TenantId) -> Result<Option<TenantSnapshot>> {
    match deps.store.tenant_by_id(id).await? {
        Some(record) => load_snapshot(deps, record).await.map(Some),
        None => Ok(None),
    }
}

/// The handle the transport layer holds.
#[derive(Clone)]
pub struct Platform {
    pub deps: Arc<Deps>,
    supervisor: ActorRef<PlatformMsg>,
    tenants: TenantMap,
    /// Every slug that exists: unknown slugs cost no query.
    pub slugs: Arc<crate::slugs::SlugDirectory>,
    /// Storage lookups by slug of this platform (the metric counts the process's).
    lookups: Arc<std::sync::atomic::AtomicU64>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn call_err(e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("actor call failed: {e}"))
}

/// Input of `createTenant`.
pub struct CreateTenant {
    pub slug: String,
    pub name: String,
    pub admin_email: String,
    pub admin_password: String,
}

impl Platform {
    pub async fn start(deps: Arc<Deps>) -> Result<Self> {
        let tenants: TenantMap = Arc::new(DashMap::new());
        let (supervisor, _) = Actor::spawn(None, PlatformSupervisor, (deps.clone(), tenants.clone()))
            .await
            .map_err(|e| Error::internal(format!("cannot start platform supervisor: {e}")))?;
        let slugs = Arc::new(crate::slugs::SlugDirectory::default());
        slugs.start(deps.store.clone());
        start_change_feed(&deps, &tenants);
        // Changes announced by other replicas (Redis pub/sub): the tenant
        // reloads now instead of at its next periodic reload, and a tenant
        // created there joins the known slugs here.
        if let Some(mut changes) = deps.tokens.subscribe_changes() {
            let running = tenants.clone();
            let (slugs, store) = (slugs.clone(), deps.store.clone());
            tokio::spawn(async move {
                loop {
                    match changes.recv().await {
                        Ok(id) => {
                            let rt = running.iter().find(|r| r.id == id).map(|r| r.clone());
                            match rt.and_then(|rt| rt.supervisor()) {
                                Some(sup) => {
                                    let _ = sup.cast(crate::tenant::TenantMsg::Reload);
                                }
                                None => {
                                    if let Ok(Some(record)) = store.tenant_by_id(id).await {
                                        slugs.insert(record.slug.as_str());
                                    }
                                }
                            }
                        }
                        // Missed notices: the periodic reload catches up.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        Ok(Self { deps, supervisor, tenants, slugs, lookups: Default::default() })
    }

    /// The running tenant for `slug`, starting it if needed. Unknown slug:
    /// `TENANT_NOT_FOUND`; disabled: `TENANT_DISABLED`; malformed: `BAD_USER_INPUT`.
    pub async fn tenant(&self, slug: &str) -> Result<Arc<TenantRuntime>> {
        self.tenant_touching(slug, true).await
    }

    /// [`Platform::tenant`] for reads that must not keep a tenant running:
    /// resource servers fetch the JWKS and discovery every few minutes
    /// forever, and that alone is no reason to keep a tenant's actors up.
    pub async fn tenant_without_touch(&self, slug: &str) -> Result<Arc<TenantRuntime>> {
        self.tenant_touching(slug, false).await
    }

    async fn tenant_touching(&self, slug: &str, touch: bool) -> Result<Arc<TenantRuntime>> {
        if let Some(rt) = self.tenants.get(slug).map(|r| r.clone())
            && rt.is_alive()
        {
            if touch {
                rt.touch();
            }
            return check_enabled(rt);
        }
        let slug = Slug::parse(slug)?;
        if !self.slugs.worth_a_lookup(slug.as_str()) {
            return Err(Error::TenantNotFound);
        }
        crate::metrics::TENANT_LOOKUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(record) = self.deps.store.tenant_by_slug(slug.as_str()).await? else {
            self.slugs.remove(slug.as_str());
            return Err(Error::TenantNotFound);
        };
        self.slugs.insert(slug.as_str());
        let snapshot = load_snapshot(&self.deps, record).await?;
        let rt =
            ractor::call_t!(self.supervisor, PlatformMsg::Start, CALL_TIMEOUT.as_millis() as u64, Box::new(snapshot))
                .map_err(call_err)??;
        if touch {
            rt.touch();
        }
        check_enabled(rt)
    }

    /// Storage lookups of tenants by slug made by this platform.
    pub fn tenant_lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tenants whose supervisor is running.
    pub fn active_tenants(&self) -> usize {
        self.tenants.iter().filter(|r| r.is_alive()).count()
    }

    /// The running runtime for `slug`, if any (no start).
    pub fn running(&self, slug: &str) -> Option<Arc<TenantRuntime>> {
        self.tenants.get(slug).map(|r| r.clone()).filter(|r| r.is_alive())
    }

    async fn stop_tenant(&self, slug: &str) {
        let _ =
            ractor::call_t!(self.supervisor, PlatformMsg::StopTenant, CALL_TIMEOUT.as_millis() as u64, slug.to_owned());
    }

    pub async fn create_tenant(&self, input: CreateTenant, operator: &str, meta: &RequestMeta) -> Result<TenantRecord> {
        let slug = Slug::parse(input.slug.trim())?;
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(Error::bad_input("name", "a name is 1 to 200 printable characters"));
        }
        let email = authd_core::email::Email::parse(&input.admin_email)
            .map_err(|_| Error::bad_input("adminEmail", "not a valid email address"))?;
        let settings = TenantSettings::default();
        authd_core::password::PasswordPolicy { min_length: settings.password_min_length as usize }
            .check(&input.admin_password)
            .map_err(|e| match e {
                Error::BadInput { message, .. } => Error::bad_input("adminPassword", message),
                other => other,
            })?;
        let tenant_id = TenantId::new();
        let params = self.deps.config.argon2;
        let password = input.admin_password;
        let phc =
            self.deps.hasher.run(tenant_id, move || authd_core::password::hash_password(&params, &password)).await??;
        crate::metrics::PASSWORD_HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Utc::now();
        let key =
            crate::keyset::new_key_record(&self.deps.keyring, tenant_id, settings.signing_algorithm, now, now).await?;
        let admin = NewUser {
            id: UserId::new(),
            email: Some(email.as_str().to_owned()),
            // The platform operator vouches for the first admin's address.
            email_verified: true,
            password_hash: Some(phc),
            role: Role::Admin,
            created_at: now,
        };
        let tenant = NewTenant { id: tenant_id, slug: slug.clone(), name, settings, created_at: now };
        let tenant_event: AuditEvent = audit::event(
            kinds::USER_REGISTERED,
            meta,
            None,
            Some(admin.id),
            Some(serde_json::json!({ "role": "admin", "via": "createTenant" })),
        );
        let platform_event = platform_event(kinds::TENANT_CREATED, Some(tenant_id), &slug, operator, meta);
        let record = self.deps.store.create_tenant(&tenant, &admin, &key, &tenant_event, &platform_event).await?;
        audit::log_event(tenant_id, &tenant_event);
        log_platform_event(&platform_event);
        self.slugs.insert(record.slug.as_str());
        // Other replicas learn the new slug now, not at their next full reload.
        if let Err(e) = self.deps.tokens.publish_change(tenant_id).await {
            tracing::warn!(tenant = %tenant_id, error = %e, "could not announce a new tenant; replicas learn of it at their next reload");
        }
        Ok(record)
    }

    pub async fn list_tenants(&self, after: Option<TenantId>, limit: u32) -> Result<Vec<TenantRecord>> {
        Ok(self.deps.store.list_tenants(after, limit).await?)
    }

    pub async fn tenant_record(&self, slug: &str) -> Result<Option<TenantRecord>> {
        let Ok(slug) = Slug::parse(slug) else { return Ok(None) };
        Ok(self.deps.store.tenant_by_slug(slug.as_str()).await?)
    }

    pub async fn set_tenant_disabled(
        &self,
        slug: &str,
        disabled: bool,
        operator: &str,
        meta: &RequestMeta,
    ) -> Result<TenantRecord> {
        let slug = Slug::parse(slug)?;
        let kind = if disabled { kinds::TENANT_DISABLED } else { kinds::TENANT_ENABLED };
        let event = platform_event(kind, None, &slug, operator, meta);
        let record =
            self.deps.store.set_tenant_disabled(&slug, disabled, &event).await?.ok_or(Error::TenantNotFound)?;
        log_platform_event(&event);
        // The next request reloads the tenant with its new state.
        self.stop_tenant(slug.as_str()).await;
        // Other replicas reload it now; their change feed is the backstop.
        if let Err(e) = self.deps.tokens.publish_change(record.id).await {
            tracing::debug!(tenant = %record.id, error = %e, "could not announce the change to other replicas");
        }
        Ok(record)
    }

    pub async fn delete_tenant(&self, slug: &str, operator: &str, meta: &RequestMeta) -> Result<bool> {
        let slug = Slug::parse(slug)?;
        let event = platform_event(kinds::TENANT_DELETED, None, &slug, operator, meta);
        let Some(id) = self.deps.store.delete_tenant(&slug, &event).await? else { return Ok(false) };
        log_platform_event(&event);
        self.slugs.remove(slug.as_str());
        self.stop_tenant(slug.as_str()).await;
        // Other replicas stop it now (a deleted row is not in the change
        // feed; the feed's existence check is the slower backstop).
        if let Err(e) = self.deps.tokens.publish_change(id).await {
            tracing::debug!(tenant = %id, error = %e, "could not announce the deletion to other replicas");
        }
        if let Err(e) = self.deps.tokens.purge_tenant(id).await {
            tracing::warn!(tenant = %id, error = %e, "tenant deleted but its token-store keys could not be purged; they expire on their own");
        }
        Ok(true)
    }

    pub async fn platform_events(
        &self,
        after: Option<authd_store::EventCursor>,
        limit: u32,
    ) -> Result<Vec<PlatformEvent>> {
        Ok(self.deps.store.platform_events(after, limit).await?)
    }

    /// Stops every tenant supervisor and the platform supervisor, and flushes
    /// batched audit events.
    pub async fn shutdown(&self) {
        let slugs: Vec<String> = self.tenants.iter().map(|r| r.key().clone()).collect();
        for slug in slugs {
            self.stop_tenant(&slug).await;
        }
        self.supervisor.stop(Some("shutdown".into()));
        self.deps.audit.flush().await;
        self.deps.hasher.shutdown();
    }
}

fn check_enabled(rt: Arc<TenantRuntime>) -> Result<Arc<TenantRuntime>> {
    if rt.snapshot().record.disabled { Err(Error::TenantDisabled) } else { Ok(rt) }
}

fn platform_event(
    kind: &str,
    tenant: Option<TenantId>,
    slug: &Slug,
    operator: &str,
    meta: &RequestMeta,
) -> PlatformEvent {
    PlatformEvent {
        id: authd_core::EventId::new(),
        at: Utc::now(),
        kind: kind.to_owned(),
        tenant_id: tenant,
        tenant_slug: Some(slug.as_str().to_owned()),
        operator: Some(operator.to_owned()),
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
        request_id: meta.request_id.clone(),
        detail: None,
    }
}

fn log_platform_event(e: &PlatformEvent) {
    tracing::info!(
        target: "audit",
        scope = "platform",
        event_id = %e.id,
        r#type = %e.kind,
        tenant = e.tenant_slug.as_deref(),
        operator = e.operator.as_deref(),
        ip = e.ip.as_deref(),
        "platform audit event"
    );
}
