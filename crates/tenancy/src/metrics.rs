//! Process-wide counters the observability layer exports.

use std::sync::atomic::AtomicU64;

/// Children restarted by tenant supervisors.
pub static ACTOR_RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Argon2 verifications performed (including dummy ones).
pub static PASSWORD_VERIFICATIONS: AtomicU64 = AtomicU64::new(0);
/// Argon2 hashes computed (registration, re-hash).
pub static PASSWORD_HASHES: AtomicU64 = AtomicU64::new(0);
pub static ACTIVE_TENANTS: AtomicU64 = AtomicU64::new(0);
/// Requests refused by a rate limit.
pub static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
