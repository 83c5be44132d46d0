//! Memories of answers that pushed notices keep current, so that the hot
//! paths need no round trip: "this session is not revoked" (for access-token
//! checks) and "this is the user's row" (for `me` and `refresh`).
//!
//! A [`Memo`] may only be trusted while every change that could make one of
//! its entries wrong reaches it: a change made by this process is forgotten
//! synchronously by the code that made it, and a change made by another
//! replica arrives as a notice on the store's change channel. So a memo is
//! *live* only while that channel is subscribed (always, for the in-process
//! backends, which have no other replica); losing the subscription empties
//! and disables it until the subscription is back, because notices sent in
//! between are lost.
//!
//! The one race left is a read that overlaps a change: a reader asks the
//! store, a change lands and its notice is processed, and then the reader's
//! (now stale) answer arrives. Every change therefore moves an epoch forward,
//! a reader takes a [`Ticket`] (the epoch) *before* asking the store, and
//! [`Memo::put`] keeps the answer only if the epoch has not moved since. A
//! notice processed after the `put` removes the entry as usual.
//!
//! Entries also expire after a fixed lifetime (a safety net, should a
//! notice ever be lost without the subscription noticing), and the memo
//! holds at most `capacity` entries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authd_core::records::UserRecord;
use authd_core::{SessionId, TenantId, UserId};
use parking_lot::Mutex;
use uuid::Uuid;

/// The epoch at which a reader started asking the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// A bounded, expiring map of `(tenant, id)` to `V`, kept current by
/// [`Memo::forget`] and its siblings (see the module documentation).
pub struct Memo<V> {
    state: Mutex<State<V>>,
    capacity: usize,
    lifetime: Duration,
}

struct State<V> {
    live: bool,
    epoch: u64,
    entries: HashMap<(TenantId, Uuid), (V, Instant)>,
}

impl<V: Clone> Memo<V> {
    pub fn new(capacity: usize, lifetime: Duration, live: bool) -> Self {
        Self { state: Mutex::new(State { live, epoch: 0, entries: HashMap::new() }), capacity, lifetime }
    }

    /// The remembered answer, if the memo is live and it has not expired.
    pub fn get(&self, tenant: TenantId, id: Uuid) -> Option<V> {
        let state = self.state.lock();
        if !state.live {
            return None;
        }
        match state.entries.get(&(tenant, id)) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }

    /// Take this before asking the store; hand it to [`Memo::put`] after.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.state.lock().epoch)
    }

    /// Remembers the store's answer, unless anything changed since `ticket`
    /// was taken (or the memo is not live).
    pub fn put(&self, ticket: Ticket, tenant: TenantId, id: Uuid, value: V) {
        let now = Instant::now();
        let mut state = self.state.lock();
        if !state.live || state.epoch != ticket.0 {
            return;
        }
        if state.entries.len() >= self.capacity {
            state.entries.retain(|_, (_, until)| *until > now);
            if state.entries.len() >= self.capacity {
                state.entries.clear();
            }
        }
        state.entries.insert((tenant, id), (value, now + self.lifetime));
    }

    /// The remembered answer, or else `fetch`'s (remembered when it is
    /// `Some`): the whole read path. `fetch` is a future that has not run
    /// yet (an `async` block), so the store is asked after the ticket is
    /// taken.
    pub async fn get_or_fetch<E, F>(&self, tenant: TenantId, id: Uuid, fetch: F) -> Result<Option<V>, E>
    where
        F: std::future::Future<Output = Result<Option<V>, E>>,
    {
        if let Some(v) = self.get(tenant, id) {
            return Ok(Some(v));
        }
        let ticket = self.ticket();
        let fetched = fetch.await?;
        if let Some(v) = &fetched {
            self.put(ticket, tenant, id, v.clone());
        }
        Ok(fetched)
    }

    /// Forgets the entries of `ids` in `tenant`.
    pub fn forget(&self, tenant: TenantId, ids: impl IntoIterator<Item = Uuid>) {
        let mut state = self.state.lock();
        state.epoch += 1;
        for id in ids {
            state.entries.remove(&(tenant, id));
        }
    }

    /// Forgets every entry of `tenant`.
    pub fn forget_tenant(&self, tenant: TenantId) {
        let mut state = self.state.lock();
        state.epoch += 1;
        state.entries.retain(|(t, _), _| *t != tenant);
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        let mut state = self.state.lock();
        state.epoch += 1;
        state.entries.clear();
    }

    /// Turns the memo on or off (when the change channel is subscribed or
    /// lost); either way it starts empty.
    pub fn set_live(&self, live: bool) {
        let mut state = self.state.lock();
        state.epoch += 1;
        state.entries.clear();
        state.live = live;
    }

    pub fn is_live(&self) -> bool {
        self.state.lock().live
    }

    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many sessions the "not revoked" memo remembers.
pub const NOT_DENIED_CAPACITY: usize = 65_536;
/// How many user rows the user memo remembers.
pub const USERS_CAPACITY: usize = 65_536;
/// The safety-net lifetime of an entry.
pub const LIFETIME: Duration = Duration::from_secs(60);

/// The memories a token store keeps for its callers.
pub struct Memos {
    /// Sessions known not to be on the deny list.
    pub not_denied: Memo<()>,
    /// User rows as storage last returned them: filled and read by the
    /// tenancy crate (`TenantCtx::user`), forgotten by its storage wrapper
    /// whenever a write changes a user, on every replica.
    pub users: Memo<std::sync::Arc<UserRecord>>,
}

impl Memos {
    /// Memories that start `live` (the in-process backends) or wait for
    /// their change channel (Redis).
    pub fn new(live: bool) -> Self {
        Self {
            not_denied: Memo::new(NOT_DENIED_CAPACITY, LIFETIME, live),
            users: Memo::new(USERS_CAPACITY, LIFETIME, live),
        }
    }

    pub fn set_live(&self, live: bool) {
        self.not_denied.set_live(live);
        self.users.set_live(live);
    }

    /// Applies one notice received from another replica.
    pub fn apply(&self, notice: &Notice) {
        match notice {
            Notice::Denied(tenant, sids) => self.not_denied.forget(*tenant, sids.iter().map(|s| s.0)),
            Notice::UserChanged(tenant, Some(user)) => self.users.forget(*tenant, [user.0]),
            Notice::UserChanged(tenant, None) => self.users.forget_tenant(*tenant),
            Notice::TenantChanged(_) => {}
        }
    }
}

/// What travels on a store's change channel between replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The tenant's configuration changed (reload it).
    TenantChanged(TenantId),
    /// These sessions were put on the deny list.
    Denied(TenantId, Vec<SessionId>),
    /// The user's row changed (`None`: any user of the tenant).
    UserChanged(TenantId, Option<UserId>),
}

impl Notice {
    /// The text form: `<tenant>` (kept from the first version of the
    /// channel), `d <tenant> <sid>...`, `u <tenant> <user>` or `u <tenant> *`.
    pub fn encode(&self) -> String {
        match self {
            Notice::TenantChanged(t) => t.to_string(),
            Notice::Denied(t, sids) => {
                let mut s = format!("d {t}");
                for sid in sids {
                    s.push(' ');
                    s.push_str(&sid.to_string());
                }
                s
            }
            Notice::UserChanged(t, Some(u)) => format!("u {t} {u}"),
            Notice::UserChanged(t, None) => format!("u {t} *"),
        }
    }

    pub fn decode(text: &str) -> Option<Notice> {
        let mut parts = text.split(' ');
        let first = parts.next()?;
        let uuid = |s: Option<&str>| s.and_then(|s| s.parse::<Uuid>().ok());
        match first {
            "d" => {
                let tenant = TenantId(uuid(parts.next())?);
                let sids = parts.map(|p| p.parse::<Uuid>().ok().map(SessionId)).collect::<Option<Vec<_>>>()?;
                Some(Notice::Denied(tenant, sids))
            }
            "u" => {
                let tenant = TenantId(uuid(parts.next())?);
                match parts.next()? {
                    "*" => Some(Notice::UserChanged(tenant, None)),
                    u => Some(Notice::UserChanged(tenant, Some(UserId(u.parse().ok()?)))),
                }
            }
            t => Some(Notice::TenantChanged(TenantId(t.parse().ok()?))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TenantId {
        TenantId(Uuid::new_v4())
    }

    #[test]
    fn a_change_during_a_read_keeps_the_stale_answer_out() {
        let memo = Memo::new(10, LIFETIME, true);
        let (tenant, id) = (t(), Uuid::new_v4());
        let ticket = memo.ticket();
        memo.forget(tenant, [id]); // the change lands while the reader waits
        memo.put(ticket, tenant, id, 1);
        assert_eq!(memo.get(tenant, id), None);
        let ticket = memo.ticket();
        memo.put(ticket, tenant, id, 2);
        assert_eq!(memo.get(tenant, id), Some(2));
        memo.forget(tenant, [id]);
        assert_eq!(memo.get(tenant, id), None);
    }

    #[tokio::test]
    async fn get_or_fetch_keeps_an_answer_only_if_nothing_changed_while_fetching() {
        let memo = Memo::new(10, LIFETIME, true);
        let (tenant, id) = (t(), Uuid::new_v4());
        // A change lands while the store is being asked: answered, not kept.
        let racing = async {
            memo.forget(tenant, [id]);
            Ok::<_, ()>(Some(1))
        };
        assert_eq!(memo.get_or_fetch(tenant, id, racing).await, Ok(Some(1)));
        assert_eq!(memo.get(tenant, id), None);
        // `None` is never kept; a quiet `Some` is, and then answers alone.
        assert_eq!(memo.get_or_fetch(tenant, id, async { Ok::<_, ()>(None) }).await, Ok(None));
        assert_eq!(memo.get(tenant, id), None);
        assert_eq!(memo.get_or_fetch(tenant, id, async { Ok::<_, ()>(Some(2)) }).await, Ok(Some(2)));
        assert_eq!(memo.get_or_fetch(tenant, id, async { Err::<Option<i32>, ()>(()) }).await, Ok(Some(2)));
    }

    #[test]
    fn a_memo_that_is_not_live_remembers_nothing() {
        let memo = Memo::new(10, LIFETIME, false);
        let (tenant, id) = (t(), Uuid::new_v4());
        memo.put(memo.ticket(), tenant, id, 1);
        assert_eq!(memo.get(tenant, id), None);
        memo.set_live(true);
        memo.put(memo.ticket(), tenant, id, 1);
        assert_eq!(memo.get(tenant, id), Some(1));
        // Losing the channel empties it: a notice may be lost meanwhile.
        let ticket = memo.ticket();
        memo.set_live(false);
        memo.set_live(true);
        assert_eq!(memo.get(tenant, id), None);
        memo.put(ticket, tenant, id, 1);
        assert_eq!(memo.get(tenant, id), None, "a read that began before the outage is not kept");
    }

    #[test]
    fn tenants_are_forgotten_alone_and_capacity_holds() {
        let memo = Memo::new(3, LIFETIME, true);
        let (a, b) = (t(), t());
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        memo.put(memo.ticket(), a, ids[0], ());
        memo.put(memo.ticket(), b, ids[1], ());
        memo.forget_tenant(a);
        assert_eq!(memo.get(a, ids[0]), None);
        assert_eq!(memo.get(b, ids[1]), Some(()));
        for id in &ids {
            memo.put(memo.ticket(), a, *id, ());
        }
        memo.put(memo.ticket(), a, Uuid::new_v4(), ());
        assert!(memo.len() <= 3);
    }

    #[test]
    fn expired_entries_are_not_answered() {
        let memo = Memo::new(3, Duration::ZERO, true);
        let (tenant, id) = (t(), Uuid::new_v4());
        memo.put(memo.ticket(), tenant, id, ());
        assert_eq!(memo.get(tenant, id), None);
    }

    #[test]
    fn notices_round_trip_and_old_ones_still_parse() {
        let tenant = t();
        let notices = [
            Notice::TenantChanged(tenant),
            Notice::Denied(tenant, vec![SessionId(Uuid::new_v4()), SessionId(Uuid::new_v4())]),
            Notice::UserChanged(tenant, Some(UserId(Uuid::new_v4()))),
            Notice::UserChanged(tenant, None),
        ];
        for n in notices {
            assert_eq!(Notice::decode(&n.encode()), Some(n));
        }
        assert_eq!(Notice::decode(&tenant.to_string()), Some(Notice::TenantChanged(tenant)));
        assert_eq!(Notice::decode("d not-a-uuid"), None);
        assert_eq!(Notice::decode(""), None);
    }
}
