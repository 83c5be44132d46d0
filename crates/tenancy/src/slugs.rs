//! Which tenant slugs exist, known by every replica, so that a request for
//! an unknown slug costs no database query: random slugs from rotating
//! addresses defeat both a per-slug negative cache and per-IP limits, and
//! must not turn into one lookup each.
//!
//! The set is loaded at start-up and reloaded in full every
//! [`FULL_RELOAD`] (anything missed; with 100,000 tenants that is a hundred
//! pages, so not often); a tenant created or
//! deleted on this replica changes it at once, and one created on another
//! replica arrives with that replica's change notice (Redis pub/sub). For the
//! moment between another replica's commit and its notice, a slug missing
//! from the set may still be looked up in storage, but at most
//! [`MISS_LOOKUPS_PER_SECOND`] times a second for the whole process (a
//! `governor` limiter): a flood of unknown slugs answers `TENANT_NOT_FOUND`
//! from memory.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use authd_core::Result;
use authd_store::Store;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;

/// How often the whole set is read again from storage. Rarely: new tenants
/// arrive with their change notice or, if it was lost, through the budget of
/// miss lookups below; a deleted tenant's stale slug costs one lookup, which
/// removes it.
pub const FULL_RELOAD: Duration = Duration::from_secs(600);
/// Storage lookups of slugs missing from the set, per second, process-wide.
pub const MISS_LOOKUPS_PER_SECOND: u32 = 20;

pub struct SlugDirectory {
    known: RwLock<HashSet<String>>,
    loaded: AtomicBool,
    misses: DefaultDirectRateLimiter,
}

impl Default for SlugDirectory {
    fn default() -> Self {
        let per_second = NonZeroU32::new(MISS_LOOKUPS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Self {
            known: RwLock::default(),
            loaded: AtomicBool::new(false),
            misses: RateLimiter::direct(Quota::per_second(per_second)),
        }
    }
}

impl SlugDirectory {
    /// Whether `slug` may exist and is worth a storage lookup: known, or the
    /// set is not loaded yet, or within the budget of miss lookups.
    pub fn worth_a_lookup(&self, slug: &str) -> bool {
        if !self.loaded.load(Ordering::Acquire) || self.known.read().contains(slug) {
            return true;
        }
        self.misses.check().is_ok()
    }

    /// Whether the set has been read from storage at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn insert(&self, slug: &str) {
        self.known.write().insert(slug.to_owned());
    }

    pub fn remove(&self, slug: &str) {
        self.known.write().remove(slug);
    }

    pub fn len(&self) -> usize {
        self.known.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.read().is_empty()
    }

    /// Reads every slug from storage and replaces the set.
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        let mut all = HashSet::new();
        let mut after = None;
        loop {
            let page = store.tenant_slugs(after, 1000).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            let full = page.len() == 1000;
            all.extend(page.into_iter().map(|(_, slug)| slug));
            if !full {
                break;
            }
        }
        *self.known.write() = all;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Loads the set now and reloads it every [`FULL_RELOAD`] in the
    /// background (for as long as the directory is alive).
    pub fn start(self: &Arc<Self>, store: Arc<dyn Store>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(dir) = weak.upgrade() else { return };
                if let Err(e) = dir.reload(&*store).await {
                    tracing::warn!(error = %e, "could not load the tenant slugs; unknown slugs are looked up meanwhile");
                }
                drop(dir);
                tokio::time::sleep(FULL_RELOAD).await;
            }
        });
    }
}
