//! The simulated clients and the measured phases.
//!
//! A [`Worker`] is one client bound to one tenant. It carries its state from
//! phase to phase, as an application would: the users it registered, then
//! the tokens of its last login, whose refresh token it rotates in the
//! refresh phase and whose access token it presents in the `me` phase.
//! Each worker sends one request at a time (closed loop), so concurrency is
//! the number of workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::{Api, Tokens};
use crate::stats::{Samples, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Register,
    Login,
    Refresh,
    Me,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Register => "register",
            Phase::Login => "login",
            Phase::Refresh => "refresh",
            Phase::Me => "me",
        }
    }
}

/// What every worker shares.
pub struct Shared {
    pub api: Api,
    /// Tenant slugs; a worker's `tenant` indexes this.
    pub slugs: Vec<String>,
    /// The one password of every load-test user.
    pub password: String,
    /// Users registered so far, per tenant; read by workers that registered
    /// none of their own (e.g. the fairness phase's clients).
    pub users: Vec<Vec<String>>,
    /// Whose CPU time is a phase's cost: this process when the server runs
    /// in it (clients included), the external server's with `--server-pid`,
    /// none otherwise.
    pub cpu_of: Option<crate::cpu::Process>,
}

/// One simulated client.
#[derive(Debug)]
pub struct Worker {
    pub id: usize,
    pub tenant: usize,
    /// Emails this worker registered.
    pub users: Vec<String>,
    /// Next user to log in as (round-robin).
    next_user: usize,
    /// Next registration number (makes emails unique).
    seq: u64,
    pub tokens: Option<Tokens>,
}

impl Worker {
    pub fn new(id: usize, tenant: usize) -> Self {
        Self { id, tenant, users: Vec::new(), next_user: 0, seq: 0, tokens: None }
    }

    /// The user to log in as next: one of ours, else one of the tenant's.
    fn next_login(&mut self, shared: &Shared) -> Option<String> {
        let pool: &[String] =
            if self.users.is_empty() { shared.users.get(self.tenant).map_or(&[], Vec::as_slice) } else { &self.users };
        if pool.is_empty() {
            return None;
        }
        // Offset by id so that workers sharing a pool start on different users.
        let user = pool[(self.next_user + self.id) % pool.len()].clone();
        self.next_user += 1;
        Some(user)
    }

    async fn relogin(&mut self, shared: &Shared) -> bool {
        let Some(email) = self.next_login(shared) else {
            return false;
        };
        match shared.api.login(&shared.slugs[self.tenant], &email, &shared.password).await {
            Ok(t) => {
                self.tokens = Some(t);
                true
            }
            Err(_) => false,
        }
    }

    /// Requests until `deadline`; a request started before it is finished
    /// and counted.
    async fn run(mut self, shared: Arc<Shared>, phase: Phase, deadline: Instant) -> (Worker, Samples) {
        let mut samples = Samples::default();
        let slug = shared.slugs[self.tenant].clone();
        while Instant::now() < deadline {
            let started = Instant::now();
            let result = match phase {
                Phase::Register => {
                    self.seq += 1;
                    let email = format!("w{}-{}@load.example.com", self.id, self.seq);
                    let r = shared.api.register(&slug, &email, &shared.password).await;
                    if r.is_ok() {
                        self.users.push(email);
                    }
                    r
                }
                Phase::Login => {
                    let Some(email) = self.next_login(&shared) else {
                        samples.error("NO_USERS");
                        break;
                    };
                    shared.api.login(&slug, &email, &shared.password).await.map(|t| self.tokens = Some(t))
                }
                Phase::Refresh => {
                    let Some(current) = self.tokens.as_ref().map(|t| t.refresh.clone()) else {
                        samples.error("NO_TOKENS");
                        break;
                    };
                    shared.api.refresh(&slug, &current).await.map(|t| self.tokens = Some(t))
                }
                Phase::Me => {
                    let Some(access) = self.tokens.as_ref().map(|t| t.access.clone()) else {
                        samples.error("NO_TOKENS");
                        break;
                    };
                    shared.api.me(&slug, &access).await
                }
            };
            let latency = started.elapsed();
            match result {
                Ok(()) => samples.ok(latency),
                Err(code) => {
                    samples.error(&code);
                    // A failed rotation may have consumed the token (a
                    // timeout after the server rotated it): start a new
                    // chain, untimed, rather than trip reuse detection.
                    if phase == Phase::Refresh && !self.relogin(&shared).await {
                        break;
                    }
                    // Keep a failing server from turning into a busy loop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        (self, samples)
    }
}

/// Runs `phase` on every worker at once for `duration`; returns the workers
/// (in id order, with their new state) and the phase's summary.
pub async fn run_phase(
    shared: &Arc<Shared>,
    workers: Vec<Worker>,
    phase: Phase,
    label: &str,
    duration: Duration,
) -> anyhow::Result<(Vec<Worker>, Summary)> {
    let cpu_started = shared.cpu_of.and_then(crate::cpu::cpu_ns);
    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for w in workers {
        set.spawn(w.run(shared.clone(), phase, deadline));
    }
    let mut samples = Samples::default();
    let mut back = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (w, s) = joined?;
        samples.merge(s);
        back.push(w);
    }
    // Wall time includes the tail of requests started before the deadline,
    // which are counted too.
    let elapsed = started.elapsed();
    let cpu = cpu_started.zip(shared.cpu_of.and_then(crate::cpu::cpu_ns)).map(|(a, b)| b.saturating_sub(a));
    back.sort_by_key(|w| w.id);
    Ok((back, Summary::new(label, samples, elapsed).with_cpu(cpu)))
}
