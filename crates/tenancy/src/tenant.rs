//! `TenantSupervisor`: one per active tenant, started on demand by the
//! platform supervisor, stopped when idle.
//!
//! Supervision: it owns `SessionActor`, `RateLimiterActor` and one
//! `OAuthProviderActor` per configured provider. A child that fails (panics or
//! returns an error) is restarted alone, with the same arguments; the tenant's
//! snapshot and every other child keep serving meanwhile. After
//! `MAX_RESTARTS` failures of one child within a minute the supervisor gives
//! up and stops itself, escalating to the platform supervisor, which drops the
//! tenant so that the next request starts it afresh.
//!
//! Provider actors follow the snapshot: after every reload (each
//! `AUTHD_TENANT_REFRESH_MS`, or at once after a local change) the supervisor
//! starts actors for new enabled providers, reconfigures changed ones and
//! stops removed or disabled ones; a failed provider actor is restarted with
//! the config the snapshot has then.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::Deps;
use crate::children::{
    OAuthProviderActor, ProviderArgs, ProviderMsg, RateLimiterActor, RateMsg, SessionActor, SessionArgs, SessionMsg,
};
use crate::runtime::{TenantRuntime, TenantSnapshot};

const MAX_RESTARTS: usize = 10;

/// The tenant's children, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildKind {
    Session,
    RateLimiter,
    OAuthProvider,
}

pub enum TenantMsg {
    /// Periodic: stop when idle, otherwise refresh the snapshot from storage
    /// (how changes made by other replicas arrive).
    Tick,
    /// Reload the snapshot now (after a local change).
    Reload,
    /// A reload finished (sent by the task doing the I/O); the generation
    /// of the snapshot when it started.
    Reloaded(Box<TenantSnapshot>, u64),
    ReloadFailed,
    /// The session actor, for key rotation.
    SessionActor(RpcReplyPort<ActorRef<SessionMsg>>),
    /// How many times children were restarted.
    Restarts(RpcReplyPort<u64>),
    /// The actor of an enabled provider, starting it if the snapshot has
    /// the provider but no actor runs yet.
    Provider(String, RpcReplyPort<Option<ActorRef<ProviderMsg>>>),
    /// Fault injection for supervision tests: make one child panic.
    #[cfg(feature = "testing")]
    CrashChild(ChildKind),
    /// Fault injection: make one provider's actor panic.
    #[cfg(feature = "testing")]
    CrashProvider(String),
}

pub struct TenantSupervisor;

pub struct TenantArgs {
    pub runtime: Arc<TenantRuntime>,
    pub deps: Arc<Deps>,
}

pub struct TenantState {
    runtime: Arc<TenantRuntime>,
    deps: Arc<Deps>,
    session: ActorRef<SessionMsg>,
    limiter: ActorRef<RateMsg>,
    providers: HashMap<String, ActorRef<ProviderMsg>>,
    /// The config each provider actor was started or last reconfigured with.
    provider_configs: HashMap<String, Arc<authd_store::OAuthProviderRecord>>,
    failures: HashMap<ChildKind, Vec<Instant>>,
    restarts: Arc<AtomicU64>,
    reloading: bool,
    /// A reload was asked for while one was in flight.
    reload_again: bool,
    /// When the audit retention job last ran for this tenant.
    last_retention: Option<Instant>,
}

async fn spawn_session(
    sup: &ActorRef<TenantMsg>,
    runtime: &Arc<TenantRuntime>,
    deps: &Arc<Deps>,
) -> Result<ActorRef<SessionMsg>, ActorProcessingErr> {
    let args = SessionArgs { runtime: runtime.clone(), deps: deps.clone(), supervisor: sup.clone() };
    let (actor, _) = Actor::spawn_linked(None, SessionActor, args, sup.get_cell()).await?;
    Ok(actor)
}

async fn spawn_limiter(
    sup: &ActorRef<TenantMsg>,
    runtime: &Arc<TenantRuntime>,
) -> Result<ActorRef<RateMsg>, ActorProcessingErr> {
    let (actor, _) = Actor::spawn_linked(None, RateLimiterActor, runtime.clone(), sup.get_cell()).await?;
    Ok(actor)
}

async fn spawn_provider(
    sup: &ActorRef<TenantMsg>,
    state: &TenantState,
    record: Arc<authd_store::OAuthProviderRecord>,
) -> Result<ActorRef<ProviderMsg>, ActorProcessingErr> {
    let args =
        ProviderArgs { tenant: state.runtime.id, record, http: state.deps.provider_http()?, deps: state.deps.clone() };
    let (actor, _) = Actor::spawn_linked(None, OAuthProviderActor, args, sup.get_cell()).await?;
    Ok(actor)
}

/// Brings the provider actors in line with the snapshot: starts actors for
/// new enabled providers, reconfigures changed ones, stops the rest.
async fn reconcile_providers(sup: &ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
    let snapshot = state.runtime.snapshot();
    let wanted: HashMap<&str, &authd_store::OAuthProviderRecord> =
        snapshot.providers.iter().filter(|p| p.enabled).map(|p| (p.name.as_str(), p)).collect();
    let gone: Vec<String> = state.providers.keys().filter(|n| !wanted.contains_key(n.as_str())).cloned().collect();
    for name in gone {
        if let Some(actor) = state.providers.remove(&name) {
            actor.stop(Some("provider removed or disabled".into()));
        }
        state.provider_configs.remove(&name);
    }
    for (name, record) in wanted {
        match (state.providers.get(name), state.provider_configs.get(name)) {
            (Some(_), Some(current)) if **current == *record => {}
            (Some(actor), _) => {
                let record = Arc::new(record.clone());
                let _ = actor.cast(ProviderMsg::Reconfigure(record.clone()));
                state.provider_configs.insert(name.to_owned(), record);
            }
            (None, _) => {
                let record = Arc::new(record.clone());
                let actor = spawn_provider(sup, state, record.clone()).await?;
                state.providers.insert(name.to_owned(), actor);
                state.provider_configs.insert(name.to_owned(), record);
            }
        }
    }
    state.runtime.set_provider_actors(state.providers.clone());
    Ok(())
}

impl TenantState {
    fn kind_of(&self, cell: &ActorCell) -> Option<(ChildKind, Option<String>)> {
        if cell.get_id() == self.session.get_id() {
            return Some((ChildKind::Session, None));
        }
        if cell.get_id() == self.limiter.get_id() {
            return Some((ChildKind::RateLimiter, None));
        }
        self.providers
            .iter()
            .find(|(_, a)| a.get_id() == cell.get_id())
            .map(|(name, _)| (ChildKind::OAuthProvider, Some(name.clone())))
    }
}

#[ractor::async_trait]
impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        let session = spawn_session(&myself, &args.runtime, &args.deps).await?;
        let limiter = spawn_limiter(&myself, &args.runtime).await?;
        args.runtime.set_supervisor(myself.clone());
        // Changes reach the snapshot through the change feed (and Redis
        // notices); the tick only checks idleness and runs retention.
        myself.send_interval(TICK, || TenantMsg::Tick);
        let mut state = TenantState {
            runtime: args.runtime,
            deps: args.deps,
            session,
            limiter,
            providers: HashMap::new(),
            provider_configs: HashMap::new(),
            failures: HashMap::new(),
            restarts: Arc::new(AtomicU64::new(0)),
            reloading: false,
            reload_again: false,
            last_retention: None,
        };
        reconcile_providers(&myself, &mut state).await?;
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
        state.runtime.mark_stopped();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Tick => {
                let idle = state.runtime.idle_millis();
                let limit = i64::try_from(state.deps.config.tenant_idle_timeout.as_millis()).unwrap_or(i64::MAX);
                if idle >= limit {
                    tracing::debug!(tenant = %state.runtime.id, "stopping idle tenant");
                    state.runtime.mark_stopped();
                    myself.stop(Some("idle".into()));
                } else {
                    retention(state);
                }
            }
            TenantMsg::Reload => {
                if state.reloading {
                    // The one in flight may have read storage before the change.
                    state.reload_again = true;
                } else {
                    reload(&myself, state);
                }
            }
            TenantMsg::Reloaded(snapshot, generation) => {
                state.reloading = false;
                let applied = state.runtime.replace_snapshot_if(generation, *snapshot);
                if applied {
                    let _ = state.limiter.cast(RateMsg::PolicyChanged);
                }
                // Local changes replace the snapshot directly; either way
                // the actors follow the snapshot now.
                reconcile_providers(&myself, state).await?;
                if !applied || std::mem::take(&mut state.reload_again) {
                    // A change landed while storage was read: read again.
                    reload(&myself, state);
                }
            }
            TenantMsg::ReloadFailed => {
                state.reloading = false;
                state.reload_again = false;
                // The change feed has moved on: retry on our own.
                myself.send_after(RELOAD_RETRY, || TenantMsg::Reload);
            }
            TenantMsg::SessionActor(reply) => {
                let _ = reply.send(state.session.clone());
            }
            TenantMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts.load(Ordering::Relaxed));
            }
            TenantMsg::Provider(name, reply) => {
                reconcile_providers(&myself, state).await?;
                let _ = reply.send(state.providers.get(&name).cloned());
            }
            #[cfg(feature = "testing")]
            TenantMsg::CrashProvider(name) => {
                if let Some(p) = state.providers.get(&name) {
                    let _ = p.cast(ProviderMsg::Crash);
                }
            }
            #[cfg(feature = "testing")]
            TenantMsg::CrashChild(kind) => match kind {
                ChildKind::Session => {
                    let _ = state.session.cast(SessionMsg::Crash);
                }
                ChildKind::RateLimiter => {
                    let _ = state.limiter.cast(RateMsg::Crash);
                }
                ChildKind::OAuthProvider => {
                    for p in state.providers.values() {
                        let _ = p.cast(ProviderMsg::Crash);
                    }
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        event: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else { return Ok(()) };
        let Some((kind, provider)) = state.kind_of(&cell) else { return Ok(()) };
        tracing::warn!(tenant = %state.runtime.id, child = ?kind, error = %err, "tenant child failed; restarting it");
        let now = Instant::now();
        let recent = state.failures.entry(kind).or_default();
        recent.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        recent.push(now);
        if recent.len() > MAX_RESTARTS {
            // Escalate: something is persistently wrong with this tenant.
            state.runtime.mark_stopped();
            myself.stop(Some(format!("{kind:?} keeps failing")));
            return Ok(());
        }
        state.restarts.fetch_add(1, Ordering::Relaxed);
        crate::metrics::ACTOR_RESTARTS.fetch_add(1, Ordering::Relaxed);
        match kind {
            ChildKind::Session => state.session = spawn_session(&myself, &state.runtime, &state.deps).await?,
            ChildKind::RateLimiter => state.limiter = spawn_limiter(&myself, &state.runtime).await?,
            ChildKind::OAuthProvider => {
                if let Some(name) = provider {
                    state.providers.remove(&name);
                    state.provider_configs.remove(&name);
                    // Restarted with the config in the snapshot (if still there).
                    reconcile_providers(&myself, state).await?;
                }
            }
        }
        Ok(())
    }
}

/// Reloads the snapshot in a task that reports back: storage I/O never runs
/// inside the supervisor's handler.
fn reload(myself: &ActorRef<TenantMsg>, state: &mut TenantState) {
    if state.reloading {
        return;
    }
    state.reloading = true;
    let (me, deps, id) = (myself.clone(), state.deps.clone(), state.runtime.id);
    let generation = state.runtime.generation();
    tokio::spawn(async move {
        match crate::platform::load_snapshot_by_id(&deps, id).await {
            Ok(Some(snapshot)) => {
                let _ = me.cast(TenantMsg::Reloaded(Box::new(snapshot), generation));
            }
            Ok(None) => {
                // Deleted by another replica.
                me.stop(Some("tenant deleted".into()));
            }
            Err(e) => {
                tracing::warn!(tenant = %id, error = %e, "tenant reload failed; keeping the last snapshot");
                // Keep serving the last snapshot; the supervisor retries.
                let _ = me.cast(TenantMsg::ReloadFailed);
            }
        }
    });
}

/// How long after a failed reload the supervisor tries again.
const RELOAD_RETRY: Duration = Duration::from_secs(2);

/// How often a running tenant checks whether it is idle.
const TICK: Duration = Duration::from_secs(5);

/// How often a running tenant deletes audit events older than its
/// `auditRetentionDays`.
/// Retention is counted in days: every six hours is plenty, and keeps
/// thousands of idle tenants from costing the database a purge each hour.
const RETENTION_EVERY: Duration = Duration::from_secs(6 * 3600);

/// The audit retention job: the only path by which events leave (besides
/// tenant deletion). Runs in a task; the handler never waits on storage.
fn retention(state: &mut TenantState) {
    if state.last_retention.is_some_and(|t| t.elapsed() < RETENTION_EVERY) {
        return;
    }
    state.last_retention = Some(Instant::now());
    let days = state.runtime.snapshot().record.settings.audit_retention_days;
    let (deps, id) = (state.deps.clone(), state.runtime.id);
    tokio::spawn(async move {
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
        match deps.store.purge_audit_events(id, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tenant = %id, removed = n, days, "audit retention removed old events"),
            Err(e) => tracing::warn!(tenant = %id, error = %e, "audit retention failed; retrying in six hours"),
        }
    });
}
