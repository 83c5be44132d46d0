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
}

/// A running tenant: its snapshot and its supervisor.
pub struct TenantRuntime {
    pub id: TenantId,
    pub slug: Slug,
    snapshot: ArcSwap<TenantSnapshot>,
    last_used: AtomicI64,
    alive: AtomicBool,
    supervisor: parking_lot::RwLock<Option<ActorRef<TenantMsg>>>,
}

impl TenantRuntime {
    pub(crate) fn new(snapshot: TenantSnapshot) -> Arc<Self> {
        Arc::new(Self {
            id: snapshot.record.id,
            slug: snapshot.record.slug.clone(),
            snapshot: ArcSwap::from_pointee(snapshot),
            last_used: AtomicI64::new(now_millis()),
            alive: AtomicBool::new(true),
            supervisor: parking_lot::RwLock::new(None),
        })
    }

    pub fn snapshot(&self) -> Arc<TenantSnapshot> {
        self.snapshot.load_full()
    }

    pub(crate) fn replace_snapshot(&self, snapshot: TenantSnapshot) {
        self.snapshot.store(Arc::new(snapshot));
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
}

pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
