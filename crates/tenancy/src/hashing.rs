//! The password-hashing pool: a bounded set of OS threads, outside every
//! actor mailbox and outside the async workers, with a fair share per tenant.
//!
//! Jobs queue per tenant and workers take them round-robin across tenants, so
//! while one tenant floods logins, another tenant's job waits for at most one
//! job per busy tenant, never for the flood. Each tenant's queue is bounded;
//! past it the caller gets `RATE_LIMITED` at once instead of waiting, so a
//! flood costs memory for no one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use authd_core::{Error, Result, TenantId};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queues {
    per_tenant: HashMap<TenantId, VecDeque<Job>>,
    /// Tenants with queued jobs, in round-robin order.
    order: VecDeque<TenantId>,
    shutting_down: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    max_queued_per_tenant: usize,
    stats: PoolStats,
}

/// Counters, for metrics and for tests that count work rather than time it.
#[derive(Default)]
pub struct PoolStats {
    /// Jobs run, per tenant.
    granted: Mutex<HashMap<TenantId, u64>>,
    /// Jobs run, per tenant and label ("verify", "hash").
    labeled: Mutex<HashMap<(TenantId, &'static str), u64>>,
    /// Jobs currently queued (not yet running).
    pub queued: AtomicU64,
    /// Jobs refused because the tenant's queue was full.
    pub refused: AtomicU64,
    /// Sum of microseconds jobs waited in the queue.
    pub wait_micros: AtomicU64,
}

impl PoolStats {
    pub fn granted(&self, tenant: TenantId) -> u64 {
        self.granted.lock().get(&tenant).copied().unwrap_or(0)
    }

    /// Jobs run for `tenant` under `label` (e.g. argon2 verifications).
    pub fn count(&self, tenant: TenantId, label: &'static str) -> u64 {
        self.labeled.lock().get(&(tenant, label)).copied().unwrap_or(0)
    }
}

/// A fair, bounded pool of hashing threads. Cloning shares the pool.
#[derive(Clone)]
pub struct HashPool {
    shared: Arc<Shared>,
}

impl HashPool {
    /// Starts `threads` workers; each tenant may queue up to
    /// `max_queued_per_tenant` jobs.
    pub fn new(threads: usize, max_queued_per_tenant: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues { per_tenant: HashMap::new(), order: VecDeque::new(), shutting_down: false }),
            ready: Condvar::new(),
            max_queued_per_tenant: max_queued_per_tenant.max(1),
            stats: PoolStats::default(),
        });
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("authd-hash-{i}"))
                .spawn(move || worker(&shared))
                .map_err(|e| Error::internal(format!("cannot start hashing thread: {e}")))?;
        }
        Ok(Self { shared })
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared.stats
    }

    /// Runs `f` on the pool in `tenant`'s share and awaits its result.
    pub async fn run<T, F>(&self, tenant: TenantId, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run_labeled(tenant, "hash", f).await
    }

    /// [`HashPool::run`], counting the job under `label`.
    pub async fn run_labeled<T, F>(&self, tenant: TenantId, label: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let enqueued = std::time::Instant::now();
        let stats_shared = self.shared.clone();
        let job: Job = Box::new(move || {
            let waited = u64::try_from(enqueued.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats_shared.stats.wait_micros.fetch_add(waited, Ordering::Relaxed);
            crate::metrics::HASH_WAIT_SECONDS.observe(&[], waited as f64 / 1e6);
            *stats_shared.stats.labeled.lock().entry((tenant, label)).or_default() += 1;
            // The receiver may be gone (request cancelled); nothing to do then.
            let _ = tx.send(f());
        });
        {
            let mut q = self.shared.queues.lock();
            if q.shutting_down {
                return Err(Error::unavailable("hashing pool is shutting down"));
            }
            let queue = q.per_tenant.entry(tenant).or_default();
            if queue.len() >= self.shared.max_queued_per_tenant {
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::RateLimited { retry_after: 1 });
            }
            let was_empty = queue.is_empty();
            queue.push_back(job);
            if was_empty {
                q.order.push_back(tenant);
            }
            self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.ready.notify_one();
        rx.await.map_err(|_| Error::internal("hashing job was dropped"))
    }

    /// Stops the workers after the queued jobs are done.
    pub fn shutdown(&self) {
        self.shared.queues.lock().shutting_down = true;
        self.shared.ready.notify_all();
    }
}

fn worker(shared: &Shared) {
    loop {
        let (tenant, job) = {
            let mut q = shared.queues.lock();
            loop {
                if let Some(tenant) = q.order.pop_front() {
                    let Some(queue) = q.per_tenant.get_mut(&tenant) else { continue };
                    let Some(job) = queue.pop_front() else { continue };
                    if queue.is_empty() {
                        q.per_tenant.remove(&tenant);
                    } else {
                        // Round-robin: the tenant goes to the back of the line.
                        q.order.push_back(tenant);
                    }
                    break (tenant, job);
                }
                if q.shutting_down {
                    return;
                }
                shared.ready.wait(&mut q);
            }
        };
        shared.stats.queued.fetch_sub(1, Ordering::Relaxed);
        *shared.stats.granted.lock().entry(tenant).or_default() += 1;
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooding_tenant_does_not_starve_another() {
        // One worker, fixed-cost jobs: tenant A queues 40 jobs before B queues 5.
        // With round-robin, B's 5 jobs finish after at most 5 (+1 running) of A's.
        let pool = HashPool::new(1, 100).unwrap();
        let a = TenantId::new();
        let b = TenantId::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..40 {
            let (pool, order) = (pool.clone(), order.clone());
            handles.push(tokio::spawn(async move {
                pool.run(a, move || {
                    std::thread::sleep(Duration::from_millis(2));
                    order.lock().push('a');
                })
                .await
            }));
        }
        while pool.stats().queued.load(Ordering::Relaxed) < 30 {
            tokio::task::yield_now().await;
        }
        for _ in 0..5 {
            let (pool, order, gate) = (pool.clone(), order.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                pool.run(b, move || {
                    gate.fetch_add(1, Ordering::Relaxed);
                    order.lock().push('b');
                })
                .await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let order = order.lock().clone();
        let last_b = order.iter().rposition(|c| *c == 'b').unwrap();
        let a_before_last_b = order[..last_b].iter().filter(|c| **c == 'a').count();
        let a_done_when_b_queued = 40 - 30; // at most this many A jobs ran before B queued
        assert!(
            a_before_last_b <= a_done_when_b_queued + 6,
            "B waited behind {a_before_last_b} of A's jobs: {order:?}"
        );
        assert_eq!(pool.stats().granted(b), 5);
        assert_eq!(pool.stats().granted(a), 40);
    }

    #[tokio::test]
    async fn a_full_tenant_queue_is_refused_not_queued() {
        let pool = HashPool::new(1, 2).unwrap();
        let t = TenantId::new();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(t, move || {
                    let _ = release_rx.recv();
                })
                .await
            })
        };
        while pool.stats().queued.load(Ordering::Relaxed) != 0 || pool.stats().granted(t) == 0 {
            tokio::task::yield_now().await;
        }
        let q1 = {
            let p = pool.clone();
            tokio::spawn(async move { p.run(t, || ()).await })
        };
        let q2 = {
            let p = pool.clone();
            tokio::spawn(async move { p.run(t, || ()).await })
        };
        while pool.stats().queued.load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(t, || ()).await;
        assert!(matches!(refused, Err(Error::RateLimited { .. })));
        // Another tenant is not affected by t's full queue.
        let other = {
            let p = pool.clone();
            tokio::spawn(async move { p.run(TenantId::new(), || 7).await })
        };
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        q1.await.unwrap().unwrap();
        q2.await.unwrap().unwrap();
        assert_eq!(other.await.unwrap().unwrap(), 7);
    }
}
