//! Per-tenant rate limiting and brute-force protection.
//!
//! The authoritative counts live in the token store (a GCRA script per check
//! in Redis, one round trip, keys under the tenant's hash tag), so every
//! replica enforces one limit and an actor restart or idle stop resets
//! nothing. Checks happen per resolver call, before any hashing: a refused
//! attempt costs no argon2 work and no write on its path (its audit event is
//! batched).
//!
//! Brute force: attempts are *reserved* before the password is verified and
//! refunded on success, so a burst of concurrent wrong-password logins
//! performs at most the allowed number of verifications (a race here let
//! attackers bypass lockout elsewhere: GHSA-7h8m-vrxx-vr4m). Per (account,
//! IP) a short burst window slows repeated failures and a longer window then
//! locks; per account an hourly cap (NIST SP 800-63B: ≤ 100) holds even
//! across many IPs, while one IP's failures alone never lock the account
//! for users elsewhere beyond it. Accounts are keyed by the normalised email
//! whether or not it exists, so `RATE_LIMITED` reveals nothing.
//!
//! If the token store is unreachable, limits fall back to in-process
//! governors with the limit divided by the configured replica count (and a
//! warning at most once a minute).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use authd_core::{Error, Result};
use authd_tokens::{RateDecision, SessionLimit};
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;

/// The clock rate limits read; tests move it forward instead of sleeping.
#[derive(Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// In-process fallback governors, used only while the token store is down.
#[derive(Default)]
pub struct Fallback {
    limiters: DashMap<(u32, u64), Arc<DefaultKeyedRateLimiter<String>>>,
    last_warning_ms: AtomicI64,
    pub replicas: u32,
}

impl Fallback {
    pub fn new(replicas: u32) -> Self {
        Self { replicas: replicas.max(1), ..Default::default() }
    }

    fn check(&self, key: &str, limit: u32, period: Duration, now_ms: i64) -> RateDecision {
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now_ms - last >= 60_000
            && self.last_warning_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!("token store unreachable: rate limits fall back to this replica's governors");
        }
        let local = (limit / self.replicas).max(1);
        let Some(burst) = NonZeroU32::new(local) else { return RateDecision::Limited { retry_after_ms: 1000 } };
        let Some(quota) = Quota::with_period(period / local).map(|q| q.allow_burst(burst)) else {
            return RateDecision::Allowed { remaining: 0 };
        };
        let limiter = self
            .limiters
            .entry((local, u64::try_from(period.as_millis()).unwrap_or(u64::MAX)))
            .or_insert_with(|| Arc::new(governor::RateLimiter::keyed(quota)))
            .clone();
        match limiter.check_key(&key.to_owned()) {
            Ok(()) => RateDecision::Allowed { remaining: 0 },
            Err(not_until) => {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                RateDecision::Limited { retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(1000) }
            }
        }
    }
}

/// Which limit refused, for the audit event.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    LoginPerIp,
    FailedLoginsPerAccount,
    FailedLoginsPerAccountIp,
    FailureBurst,
    RegistrationsPerIp,
    MfaPerAccount,
    RefreshPerSession,
    EmailPerAddress,
    EmailPerIp,
    TokenPerClient,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Self::LoginPerIp => "loginPerIpPerMinute",
            Self::FailedLoginsPerAccount => "failedLoginsPerAccountPerHour",
            Self::FailedLoginsPerAccountIp => "failedLoginsPerAccountIpPer15Minutes",
            Self::FailureBurst => "failureBurst",
            Self::RegistrationsPerIp => "registrationsPerIpPerHour",
            Self::MfaPerAccount => "mfaAttemptsPerAccountPer15Minutes",
            Self::RefreshPerSession => "refreshPerSessionPerMinute",
            Self::EmailPerAddress => "emailRequestsPerAddressPerHour",
            Self::EmailPerIp => "emailRequestsPerIpPerHour",
            Self::TokenPerClient => "tokenRequestsPerClientPerMinute",
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const QUARTER: Duration = Duration::from_secs(15 * 60);
const HOUR: Duration = Duration::from_secs(3600);
/// Consecutive failures per (account, IP) allowed in quick succession before
/// attempts are spaced out.
const FAILURE_BURST: u32 = 5;

/// `Retry-After` is whole seconds, rounded up, at least 1.
/// See [`LimitService::ip`].
pub(crate) fn ip_key(ip: Option<&str>) -> String {
    match ip.map(str::parse::<std::net::IpAddr>) {
        Some(Ok(std::net::IpAddr::V6(v6))) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
        Some(Ok(v4)) => v4.to_string(),
        Some(Err(_)) | None => "unknown".to_owned(),
    }
}

pub(crate) fn whole_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// A short keyed hash of a caller-chosen string, for a limit key.
pub(crate) fn short_hash(ctx: &TenantCtx<'_>, value: &str) -> String {
    let h = ctx.deps.keyring.keyed_hash("rate-limit-key", value.as_bytes());
    h[..32.min(h.len())].to_owned()
}

/// The account key: a keyed hash of the normalised email (the raw address
/// never becomes a Redis key).
pub(crate) fn account_key(ctx: &TenantCtx<'_>, email: &str) -> String {
    let h = ctx.deps.keyring.keyed_hash("rate-limit-account", email.as_bytes());
    h[..32.min(h.len())].to_owned()
}

/// Rate limits and brute-force protection, reached through [`TenantCtx::limits`].
pub struct LimitService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl LimitService<'_> {
    /// One request against `limit` per `period` under `key`.
    async fn check(&self, which: Limit, key: &str, limit: u32, period: Duration, meta: &RequestMeta) -> Result<()> {
        let now = self.ctx.deps.clock.now_ms();
        let decision = match self.ctx.deps.tokens.rate_check(self.ctx.rt.id, key, limit, period, now).await {
            Ok(d) => d,
            Err(authd_tokens::Error::Unavailable(_)) => {
                self.ctx.deps.fallback.check(&format!("{}:{key}", self.ctx.rt.id), limit, period, now)
            }
            Err(e) => return Err(e.into()),
        };
        match decision {
            RateDecision::Allowed { .. } => Ok(()),
            RateDecision::Limited { retry_after_ms } => Err(self.refused(which, retry_after_ms, meta)),
        }
    }

    /// A request `which` refused: counted, audited, and the error to answer.
    fn refused(&self, which: Limit, retry_after_ms: u64, meta: &RequestMeta) -> Error {
        let retry_after = whole_seconds(retry_after_ms);
        crate::metrics::RATE_LIMITED.fetch_add(1, Ordering::Relaxed);
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::REQUEST_RATE_LIMITED,
                meta,
                None,
                None,
                Some(serde_json::json!({ "limit": which.name(), "retryAfter": retry_after })),
            ),
        );
        Error::RateLimited { retry_after }
    }

    /// The per-IP limit key of the caller: the IPv4 address, or the IPv6
    /// `/64` (one subscriber's prefix: a client rotating through its own
    /// 2^64 addresses stays one client).
    fn ip(meta: &RequestMeta) -> String {
        ip_key(meta.ip.as_deref())
    }

    /// Before a login's password check: per-IP attempts, then the account's
    /// reservations (refunded by [`LimitService::login_succeeded`]).
    pub(crate) async fn before_login(&self, account: &str, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let ip = &Self::ip(meta);
        self.check(Limit::LoginPerIp, &format!("login-ip:{ip}"), p.login_per_ip_per_minute, MINUTE, meta).await?;
        let pair = format!("fail-acct-ip:{account}:{ip}");
        // Growing delay: a few quick attempts, then one per window/limit, then locked.
        self.check(Limit::FailureBurst, &format!("{pair}:burst"), FAILURE_BURST, MINUTE, meta).await?;
        self.check(
            Limit::FailedLoginsPerAccountIp,
            &pair,
            p.failed_logins_per_account_ip_per_15_minutes,
            QUARTER,
            meta,
        )
        .await?;
        self.check(
            Limit::FailedLoginsPerAccount,
            &format!("fail-acct:{account}"),
            p.failed_logins_per_account_per_hour,
            HOUR,
            meta,
        )
        .await
    }

    /// A success resets the account's failure counters.
    pub(crate) async fn login_succeeded(&self, account: &str, meta: &RequestMeta) {
        let ip = &Self::ip(meta);
        let pair = format!("fail-acct-ip:{account}:{ip}");
        for key in [format!("{pair}:burst"), pair.clone(), format!("fail-acct:{account}")] {
            if let Err(e) = self.ctx.deps.tokens.rate_reset(self.ctx.rt.id, &key).await {
                tracing::warn!(error = %e, "could not reset a failure counter");
            }
        }
    }

    /// Before a social login starts (each start stores a state for 10
    /// minutes): it counts as a login attempt from that IP.
    pub(crate) async fn before_oauth_start(&self, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let key = format!("oauth-start-ip:{}", Self::ip(meta));
        self.check(Limit::LoginPerIp, &key, p.login_per_ip_per_minute, MINUTE, meta).await
    }

    /// Before a passkey sign-in starts (each start stores a ceremony for 5
    /// minutes): it counts as a login attempt from that IP.
    pub(crate) async fn before_passkey_begin(&self, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let key = format!("passkey-begin-ip:{}", Self::ip(meta));
        self.check(Limit::LoginPerIp, &key, p.login_per_ip_per_minute, MINUTE, meta).await
    }

    pub(crate) async fn before_register(&self, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let key = format!("register-ip:{}", Self::ip(meta));
        self.check(Limit::RegistrationsPerIp, &key, p.registrations_per_ip_per_hour, HOUR, meta).await
    }

    pub(crate) async fn before_mfa(&self, user: authd_core::UserId, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        self.check(
            Limit::MfaPerAccount,
            &format!("mfa:{user}"),
            p.mfa_attempts_per_account_per_15_minutes,
            QUARTER,
            meta,
        )
        .await
    }

    /// Before a request that mails a link: per client IP, and per address
    /// when one is named (`address` is its account key; unknown addresses
    /// count exactly like known ones).
    pub(crate) async fn before_email_request(&self, address: Option<&str>, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let key = format!("email-ip:{}", Self::ip(meta));
        self.check(Limit::EmailPerIp, &key, p.email_requests_per_ip_per_hour, HOUR, meta).await?;
        match address {
            Some(a) => {
                let key = format!("email-addr:{a}");
                self.check(Limit::EmailPerAddress, &key, p.email_requests_per_address_per_hour, HOUR, meta).await
            }
            None => Ok(()),
        }
    }

    /// Before a call of the token, introspection or revocation endpoint,
    /// per client id (known or not: guessing secrets is limited too).
    pub(crate) async fn before_token_request(&self, client_id: &str, meta: &RequestMeta) -> Result<()> {
        let p = self.ctx.rt.snapshot().record.settings.rate_limits.clone();
        let key = format!("token-client:{}", crate::limits::short_hash(self.ctx, client_id));
        self.check(Limit::TokenPerClient, &key, p.token_requests_per_client_per_minute, MINUTE, meta).await
    }

    /// The per-session refresh limit, which the token store checks inside
    /// the rotation itself (one round trip: the token names its session).
    pub(crate) fn refresh_limit(&self) -> SessionLimit<'static> {
        let p = &self.ctx.rt.snapshot().record.settings.rate_limits;
        SessionLimit {
            key_prefix: "refresh:",
            limit: p.refresh_per_session_per_minute,
            period: MINUTE,
            now_ms: self.ctx.deps.clock.now_ms(),
        }
    }

    /// A refresh its session's limit refused.
    pub(crate) fn refresh_refused(&self, retry_after_ms: u64, meta: &RequestMeta) -> Error {
        self.refused(Limit::RefreshPerSession, retry_after_ms, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::ip_key;

    #[test]
    fn ipv6_addresses_key_by_their_64_prefix() {
        assert_eq!(ip_key(Some("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(ip_key(Some("2001:db8:1:2::9")), ip_key(Some("2001:db8:1:2:ffff::1")));
        assert_ne!(ip_key(Some("2001:db8:1:2::9")), ip_key(Some("2001:db8:1:3::9")));
        assert_eq!(ip_key(Some("198.51.100.7")), "198.51.100.7");
        assert_eq!(ip_key(Some("::ffff:198.51.100.7")), "198.51.100.7");
        assert_eq!(ip_key(None), "unknown");
    }
}
