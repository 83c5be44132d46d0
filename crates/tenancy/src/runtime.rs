//! What a request task reads: a tenant's immutable snapshot (record, settings
//! and signing keys), swapped atomically by the tenant's actors when anything
//! changes. Requests never wait on a mailbox for the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;
use authd_core::{Slug, TenantId};
use authd_store::TenantRecord;
use ractor::ActorRef;

use crate::keyset::KeySet;
use crate::tenant::TenantMsg;

/// A tenant's state at one moment.
pub struct TenantSnapshot {
    pub record: TenantRecord,
    pub keys: Arc<KeySet>,
    /// The tenant's OAuth providers (enabled or not), by name.
    pub providers: Arc<Vec<authd_store::OAuthProviderRecord>>,
}

/// A running tenant: its snapshot and its supervisor.
pub struct TenantRuntime {
    pub id: TenantId,
    pub slug: Slug,
    snapshot: ArcSwap<TenantSnapshot>,
    /// Bumped by every snapshot replacement, so a reload that read storage
    /// before a local change cannot put the old state back.
    generation: std::sync::atomic::AtomicU64,
    last_used: AtomicI64,
    alive: AtomicBool,
    supervisor: parking_lot::RwLock<Option<ActorRef<TenantMsg>>>,
    /// The tenant-wide request quota of this replica (a local governor the
    /// `RateLimiterActor` rebuilds when the policy changes), so one tenant
    /// cannot exhaust the platform.
    quota: ArcSwap<Quota>,
    replace_lock: parking_lot::Mutex<()>,
    /// The running `OAuthProviderActor`s by provider name (kept by the
    /// tenant supervisor), so request tasks reach them without its mailbox.
    provider_actors: parking_lot::RwLock<std::collections::HashMap<String, ActorRef<crate::oauth::ProviderMsg>>>,
}

/// A direct GCRA limiter and the rate it was built for.
pub struct Quota {
    per_second: u32,
    limiter: governor::DefaultDirectRateLimiter,
}

impl Quota {
    pub fn new(per_second: u32) -> Self {
        let n = std::num::NonZeroU32::new(per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        Self { per_second, limiter: governor::RateLimiter::direct(governor::Quota::per_second(n)) }
    }
}

impl TenantRuntime {
    pub(crate) fn new(snapshot: TenantSnapshot) -> Arc<Self> {
        let snapshot_quota = snapshot.record.settings.rate_limits.tenant_requests_per_second;
        Arc::new(Self {
            id: snapshot.record.id,
            slug: snapshot.record.slug.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            generation: std::sync::atomic::AtomicU64::new(0),
            last_used: AtomicI64::new(now_millis()),
            alive: AtomicBool::new(true),
            supervisor: parking_lot::RwLock::new(None),
            quota: ArcSwap::from_pointee(Quota::new(snapshot_quota)),
            replace_lock: parking_lot::Mutex::new(()),
            provider_actors: parking_lot::RwLock::new(std::collections::HashMap::new()),
        })
    }

    pub fn snapshot(&self) -> Arc<TenantSnapshot> {
        self.snapshot.load_full()
    }

    pub(crate) fn replace_snapshot(&self, snapshot: TenantSnapshot) {
        let _guard = self.replace_lock.lock();
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the snapshot only if nothing replaced it since `generation`
    /// was read (a reload started then). Returns whether it did.
    pub(crate) fn replace_snapshot_if(&self, generation: u64, snapshot: TenantSnapshot) -> bool {
        let _guard = self.replace_lock.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn touch(&self) {
        self.last_used.store(now_millis(), Ordering::Relaxed);
    }

    pub(crate) fn idle_millis(&self) -> i64 {
        now_millis() - self.last_used.load(Ordering::Relaxed)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(crate) fn mark_stopped(&self) {
        self.alive.store(false, Ordering::Release);
    }

    pub(crate) fn set_supervisor(&self, sup: ActorRef<TenantMsg>) {
        *self.supervisor.write() = Some(sup);
    }

    pub fn supervisor(&self) -> Option<ActorRef<TenantMsg>> {
        self.supervisor.read().clone()
    }

    pub(crate) fn provider_actor(&self, name: &str) -> Option<ActorRef<crate::oauth::ProviderMsg>> {
        self.provider_actors.read().get(name).cloned()
    }

    pub(crate) fn set_provider_actors(
        &self,
        actors: std::collections::HashMap<String, ActorRef<crate::oauth::ProviderMsg>>,
    ) {
        *self.provider_actors.write() = actors;
    }

    /// Counts one request against the tenant's quota on this replica;
    /// `RATE_LIMITED` when it is spent.
    pub fn check_quota(&self) -> authd_core::Result<()> {
        let quota = self.quota.load();
        match quota.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                use governor::clock::Clock;
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                crate::metrics::RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                Err(authd_core::Error::RateLimited { retry_after: crate::limits::whole_seconds(ms) })
            }
        }
    }

    /// Rebuilds the quota if the policy's rate changed (the rate limiter actor calls this).
    pub(crate) fn update_quota(&self, per_second: u32) {
        if self.quota.load().per_second != per_second {
            self.quota.store(Arc::new(Quota::new(per_second)));
        }
    }
}

pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
