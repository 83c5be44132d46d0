//! The in-process token store: the embedded default when no `REDIS_URL` is
//! given. Same semantics as the Redis backend (the shared test suite holds
//! both to them), for one process only.
//!
//! All state sits behind one `parking_lot::Mutex`, taken once per operation
//! and never held across an `.await` (no method awaits while holding it), so
//! every operation is atomic exactly as a Lua script is on Redis. Each entry
//! carries its expiry instant: reads ignore and drop expired entries
//! (lazy purge), and at most every [`SWEEP_EVERY`] an operation also sweeps
//! everything that expired, so unread entries do not pile up.
//!
//! State is grouped by tenant, so isolation is structural (one tenant's map
//! is never consulted for another) and purging a tenant drops one map.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use authd_core::{SessionId, TenantId, UserId};
use parking_lot::Mutex;

use crate::gcra::{self, Plan};
use crate::{
    FIRST_GENERATION, Memos, REUSE_DENY_TTL, RateDecision, RefreshKey, Result, RotateOutcome, SessionLimit,
    SessionRecord, TokenStore, check_kind, check_step, ttl_ms,
};

/// How often an operation sweeps every expired entry out of the store.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The in-process backend. Cheap to construct and to clone (clones share the
/// same state).
#[derive(Clone)]
pub struct MemoryTokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    clock: Clock,
    /// Always live: this process is the only one that changes anything.
    memos: Memos,
}

impl fmt::Debug for MemoryTokenStore {
    // Entries hold single-use values: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore").finish_non_exhaustive()
    }
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        Self::with_clock(Instant::now)
    }

    /// A store that reads the time from `clock` instead of
    /// [`Instant::now`], so tests can expire entries without sleeping
    /// (e.g. `move || start + offset.load()`). The clock must not go back.
    pub fn with_clock(clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        let now = clock();
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State { tenants: HashMap::new(), next_sweep: now + SWEEP_EVERY }),
                clock: Arc::new(clock),
                memos: Memos::new(true),
            }),
        }
    }

    /// Runs `f` on the tenant's state, under the lock, with the current time.
    fn with_tenant<T>(&self, tenant: TenantId, f: impl FnOnce(&mut TenantState, Instant) -> T) -> T {
        let now = (self.inner.clock)();
        let mut state = self.inner.state.lock();
        state.maybe_sweep(now);
        let t = state.tenants.entry(tenant).or_default();
        f(t, now)
    }
}

struct State {
    tenants: HashMap<TenantId, TenantState>,
    next_sweep: Instant,
}

impl State {
    fn maybe_sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        for t in self.tenants.values_mut() {
            t.sweep(now);
        }
        self.tenants.retain(|_, t| !t.is_empty());
    }
}

/// A value and the instant it stops existing (`None`: never).
struct Expiring<T> {
    value: T,
    expires: Option<Instant>,
}

impl<T> Expiring<T> {
    fn new(value: T, expires: Option<Instant>) -> Self {
        Self { value, expires }
    }

    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Returns the live entry under `key`, dropping it if it has expired.
fn live_entry<'a, K, Q, V>(map: &'a mut HashMap<K, Expiring<V>>, key: &Q, now: Instant) -> Option<&'a mut Expiring<V>>
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    if map.get(key).is_some_and(|e| !e.live(now)) {
        map.remove(key);
    }
    map.get_mut(key)
}

/// Returns the live value under `key`, dropping it if it has expired.
fn live<'a, K, Q, V>(map: &'a mut HashMap<K, Expiring<V>>, key: &Q, now: Instant) -> Option<&'a mut V>
where
    K: Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    live_entry(map, key, now).map(|e| &mut e.value)
}

/// When an entry written now with `ttl` expires (`None`: beyond what an
/// `Instant` can hold, so never).
fn expiry(now: Instant, ttl: Duration) -> Option<Instant> {
    now.checked_add(Duration::from_millis(ttl_ms(ttl)))
}

/// Whether expiry `a` is no earlier than `b` (`None` is never).
fn outlasts(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

struct Session {
    record: SessionRecord,
    /// The generation of the one refresh token that rotates.
    generation: u64,
}

struct OnceRecord {
    value: String,
    attempts: u32,
}

#[derive(Default)]
struct TenantState {
    sessions: HashMap<SessionId, Expiring<Session>>,
    /// A user's sessions; dead ids are pruned when read.
    user_sessions: HashMap<UserId, BTreeSet<SessionId>>,
    deny: HashMap<SessionId, Expiring<()>>,
    once: HashMap<(String, String), Expiring<OnceRecord>>,
    counters: HashMap<String, i64>,
    /// Rate-limit key → theoretical arrival time (µs).
    rates: HashMap<String, Expiring<i64>>,
}

impl TenantState {
    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, e| e.live(now));
        let sessions = &self.sessions;
        self.user_sessions.retain(|_, sids| {
            sids.retain(|sid| sessions.contains_key(sid));
            !sids.is_empty()
        });
        self.deny.retain(|_, e| e.live(now));
        self.once.retain(|_, e| e.live(now));
        self.rates.retain(|_, e| e.live(now));
    }

    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.user_sessions.is_empty()
            && self.deny.is_empty()
            && self.once.is_empty()
            && self.counters.is_empty()
            && self.rates.is_empty()
    }

    /// Removes a live session, and puts its id on the deny list (never
    /// shortening an entry already there).
    /// Returns the session's user if it was live.
    fn revoke(&mut self, sid: SessionId, deny_ttl: Duration, now: Instant) -> Option<UserId> {
        let user = live(&mut self.sessions, &sid, now).map(|s| s.record.user_id);
        self.sessions.remove(&sid);
        if let Some(user) = user
            && let Some(sids) = self.user_sessions.get_mut(&user)
        {
            sids.remove(&sid);
            if sids.is_empty() {
                self.user_sessions.remove(&user);
            }
        }
        let until = expiry(now, deny_ttl);
        let current = live_entry(&mut self.deny, &sid, now).map(|e| e.expires);
        if !current.is_some_and(|c| outlasts(c, until)) {
            self.deny.insert(sid, Expiring::new((), until));
        }
        user
    }

    /// One request against the rate limit `plan` under `key`.
    fn rate(&mut self, key: &str, plan: &Plan, now: Instant) -> RateDecision {
        let params = match plan {
            Plan::Fixed(decision) => return *decision,
            Plan::Check(params) => params,
        };
        let stored = live(&mut self.rates, key, now).copied();
        let decision = params.decide(stored);
        if let Some((tat, ttl)) = decision.store {
            self.rates.insert(key.to_owned(), Expiring::new(tat, now.checked_add(Duration::from_millis(ttl))));
        }
        decision.answer
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn memos(&self) -> &Memos {
        &self.inner.memos
    }

    async fn create_session(&self, tenant: TenantId, session: &SessionRecord, ttl: Duration) -> Result<()> {
        self.with_tenant(tenant, |t, now| {
            let sid = session.id;
            let entry = Session { record: session.clone(), generation: FIRST_GENERATION };
            t.sessions.insert(sid, Expiring::new(entry, expiry(now, ttl)));
            t.user_sessions.entry(session.user_id).or_default().insert(sid);
        });
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        old: RefreshKey<'_>,
        now_unix: i64,
        ttl: Duration,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<RotateOutcome> {
        // Tokens that did not name their session were never issued by a
        // store that lives only as long as its process.
        let RefreshKey::Named { sid, generation } = old else { return Ok(RotateOutcome::NotFound) };
        let limit = limit.map(|l| (l.key_prefix, gcra::plan(l.limit, l.period, l.now_ms)));
        Ok(self.with_tenant(tenant, |t, now| {
            let Some(session) = live(&mut t.sessions, &sid, now) else {
                return RotateOutcome::NotFound;
            };
            if generation > session.generation {
                return RotateOutcome::NotFound;
            }
            if generation < session.generation {
                // A token this session already rotated away: someone holds a
                // copy (RFC 9700 §4.14.2), so the whole family goes.
                let user = session.record.user_id;
                t.revoke(sid, REUSE_DENY_TTL, now);
                return RotateOutcome::Reused { session: sid, user };
            }
            if let Some((prefix, plan)) = &limit
                && let RateDecision::Limited { retry_after_ms } = t.rate(&format!("{prefix}{sid}"), plan, now)
            {
                return RotateOutcome::Limited { retry_after_ms };
            }
            let Some(entry) = t.sessions.get_mut(&sid) else {
                return RotateOutcome::NotFound;
            };
            entry.expires = expiry(now, ttl);
            let session = &mut entry.value;
            session.generation = old.next_generation();
            session.record.last_used_at = now_unix;
            RotateOutcome::Rotated(session.record.clone())
        }))
    }

    async fn session_by_refresh(&self, tenant: TenantId, key: RefreshKey<'_>) -> Result<Option<SessionRecord>> {
        let RefreshKey::Named { sid, generation } = key else { return Ok(None) };
        Ok(self.with_tenant(tenant, |t, now| {
            let session = live(&mut t.sessions, &sid, now)?;
            (session.generation == generation).then(|| session.record.clone())
        }))
    }

    async fn get_session(&self, tenant: TenantId, sid: SessionId) -> Result<Option<SessionRecord>> {
        Ok(self.with_tenant(tenant, |t, now| live(&mut t.sessions, &sid, now).map(|s| s.record.clone())))
    }

    async fn list_sessions(&self, tenant: TenantId, user: UserId) -> Result<Vec<SessionRecord>> {
        Ok(self.with_tenant(tenant, |t, now| {
            let sids: Vec<SessionId> =
                t.user_sessions.get(&user).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let mut out = Vec::with_capacity(sids.len());
            for sid in sids {
                match live(&mut t.sessions, &sid, now) {
                    Some(s) => out.push(s.record.clone()),
                    None => {
                        if let Some(set) = t.user_sessions.get_mut(&user) {
                            set.remove(&sid);
                        }
                    }
                }
            }
            if t.user_sessions.get(&user).is_some_and(BTreeSet::is_empty) {
                t.user_sessions.remove(&user);
            }
            sort_sessions(&mut out);
            out
        }))
    }

    async fn revoke_session(&self, tenant: TenantId, sid: SessionId, deny_ttl: Duration) -> Result<bool> {
        Ok(self.with_tenant(tenant, |t, now| t.revoke(sid, deny_ttl, now).is_some()))
    }

    async fn revoke_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        deny_ttl: Duration,
    ) -> Result<u64> {
        Ok(self.with_tenant(tenant, |t, now| {
            let sids: Vec<SessionId> =
                t.user_sessions.get(&user).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let mut revoked = 0;
            for sid in sids.into_iter().filter(|sid| Some(*sid) != keep) {
                if live(&mut t.sessions, &sid, now).is_some() {
                    t.revoke(sid, deny_ttl, now);
                    revoked += 1;
                } else if let Some(set) = t.user_sessions.get_mut(&user) {
                    set.remove(&sid);
                }
            }
            revoked
        }))
    }

    async fn is_session_denied(&self, tenant: TenantId, sid: SessionId) -> Result<bool> {
        Ok(self.with_tenant(tenant, |t, now| live(&mut t.deny, &sid, now).is_some()))
    }

    async fn purge_tenant(&self, tenant: TenantId) -> Result<()> {
        self.inner.state.lock().tenants.remove(&tenant);
        Ok(())
    }

    async fn put_once(&self, tenant: TenantId, kind: &str, id: &str, value: &str, ttl: Duration) -> Result<bool> {
        check_kind(kind)?;
        Ok(self.with_tenant(tenant, |t, now| {
            let key = (kind.to_owned(), id.to_owned());
            if live(&mut t.once, &key, now).is_some() {
                return false;
            }
            t.once.insert(key, Expiring::new(OnceRecord { value: value.to_owned(), attempts: 0 }, expiry(now, ttl)));
            true
        }))
    }

    async fn take_once(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        Ok(self.with_tenant(tenant, |t, now| {
            let key = (kind.to_owned(), id.to_owned());
            live(&mut t.once, &key, now)?;
            t.once.remove(&key).map(|e| e.value.value)
        }))
    }

    async fn peek(&self, tenant: TenantId, kind: &str, id: &str) -> Result<Option<String>> {
        check_kind(kind)?;
        Ok(self.with_tenant(tenant, |t, now| {
            live(&mut t.once, &(kind.to_owned(), id.to_owned()), now).map(|r| r.value.clone())
        }))
    }

    async fn count_attempt(&self, tenant: TenantId, kind: &str, id: &str, max: u32) -> Result<Option<u32>> {
        check_kind(kind)?;
        Ok(self.with_tenant(tenant, |t, now| {
            let key = (kind.to_owned(), id.to_owned());
            let record = live(&mut t.once, &key, now)?;
            record.attempts = record.attempts.saturating_add(1);
            let n = record.attempts;
            if n >= max {
                t.once.remove(&key);
            }
            Some(n)
        }))
    }

    async fn advance_counter(&self, tenant: TenantId, key: &str, step: i64) -> Result<bool> {
        check_step(step)?;
        Ok(self.with_tenant(tenant, |t, _| match t.counters.get_mut(key) {
            Some(cur) if *cur >= step => false,
            Some(cur) => {
                *cur = step;
                true
            }
            None => {
                t.counters.insert(key.to_owned(), step);
                true
            }
        }))
    }

    async fn rate_check(
        &self,
        tenant: TenantId,
        key: &str,
        limit: u32,
        period: Duration,
        now_ms: i64,
    ) -> Result<RateDecision> {
        let plan = gcra::plan(limit, period, now_ms);
        Ok(self.with_tenant(tenant, |t, now| t.rate(key, &plan, now)))
    }

    async fn rate_reset(&self, tenant: TenantId, key: &str) -> Result<()> {
        self.with_tenant(tenant, |t, _| t.rates.remove(key));
        Ok(())
    }
}

/// Creation order; ids are UUIDv7 (time-ordered), so they break ties.
pub(crate) fn sort_sessions(sessions: &mut [SessionRecord]) {
    sessions.sort_by_key(|s| (s.created_at, s.id));
}
