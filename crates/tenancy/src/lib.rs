//! The actor tree and the tenant services: what happens when a request for a
//! tenant arrives, below the transport and above storage.
//!
//! ```text
//! PlatformSupervisor (one per process)
//!   └─ TenantSupervisor (one per active tenant; started on demand, stopped when idle)
//!        ├─ SessionActor        signing-key rotation, session policy
//!        ├─ RateLimiterActor    the tenant's limit policy and local governors
//!        └─ OAuthProviderActor  one per provider
//! ```
//!
//! Actors own lifecycle and configuration, never the hot path: a request task
//! reads the tenant's immutable [`runtime::TenantSnapshot`] and does the work
//! itself (the SQL, the token-store script, the signature), and password
//! hashing runs on the fair [`hashing::HashPool`].
//!
//! A request reaches that work through a [`TenantCtx`] (the process's
//! [`Deps`] and the tenant's runtime) and the service of one capability it
//! hands out: `ctx.accounts()`, `ctx.sessions()`, `ctx.mfa()`,
//! `ctx.limits()`, `ctx.social()`, `ctx.admin()`, `ctx.email()`,
//! `ctx.passkeys()`, `ctx.sso()` (the table in [`ctx`]).
//!
//! This crate knows nothing of HTTP or GraphQL; it speaks domain types and
//! returns `authd_core::Error`.
//!
//! Layout:
//! - [`platform`]: `PlatformSupervisor` and the [`Platform`] handle (tenant lookup, platform operations).
//! - [`tenant`]: `TenantSupervisor` and its supervision policy.
//! - [`children`]: `SessionActor`, `RateLimiterActor`, `OAuthProviderActor`.
//! - [`runtime`]: tenant snapshots read by requests.
//! - [`slugs`]: which tenant slugs exist, so unknown ones cost no query.
//! - [`keyset`]: a tenant's signing keys: current signer, verifier, JWKS, rotation.
//! - [`ctx`]: [`TenantCtx`], one tenant as one request sees it, and the services it hands out.
//! - [`accounts`]: `AccountService`: registration, password login, `me`.
//! - [`sessions`]: `SessionService`: sessions and tokens: issuing, verifying, refresh rotation, logout.
//! - [`admin`]: `AdminService`: tenant-admin operations.
//! - [`email`]: `EmailService`, the email flows: verification, password reset and change, magic links, email change.
//! - [`mail`]: composing mail into the outbox, and the sender that delivers it (SMTP or `.eml` files).
//! - [`mfa`]: `MfaService`: TOTP enrollment, MFA challenges and recovery codes.
//! - [`sso`]: `SsoService`, single sign-on: the tenant as an OpenID provider (clients, authorize, tokens, logout).
//! - [`passkeys`]: `PasskeyService`: WebAuthn registration and sign-in (with an email, or usernameless).
//! - [`limits`]: `LimitService`: per-tenant rate limits and brute-force protection.
//! - [`hashing`]: the fair password-hashing pool.
//! - [`audit`]: audit events and their batched sink.
//! - [`metrics`]: process-wide counters and labelled families, in the Prometheus text format.
//! - [`traced`]: the token store wrapped in spans and backend-error counts.
//! - [`reseal`]: re-sealing secrets after a master-key rotation.
//! - [`oauth`]: `SocialService`, social login: provider configs, the `OAuthProviderActor`, the SSRF-safe provider client, the flow.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod children;
pub mod ctx;
pub mod email;
pub mod hashing;
pub mod keyset;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod mfa;
pub mod oauth;
pub mod passkeys;
pub mod platform;
pub(crate) mod refresh;
pub mod reseal;
pub mod runtime;
pub mod sessions;
pub mod slugs;
pub mod sso;
pub mod tenant;
pub mod traced;

use std::sync::Arc;
use std::time::Duration;

use authd_core::crypto::Keyring;
use authd_core::password::Argon2Params;
use authd_store::Store;
use authd_tokens::TokenStore;

pub use accounts::LoginOutcome;
pub use ctx::TenantCtx;
pub use platform::{CreateTenant, Platform};
pub use runtime::{TenantRuntime, TenantSnapshot};
pub use sessions::{IssuedTokens, Principal};

/// Settings of the tenancy layer, from the binary's configuration.
#[derive(Clone, Debug)]
pub struct TenancyConfig {
    /// `AUTHD_PUBLIC_URL`, without a trailing slash; issuers derive from it.
    pub public_url: String,
    pub argon2: Argon2Params,
    /// A tenant with no request for this long has its supervisor stopped.
    pub tenant_idle_timeout: Duration,
    /// How often the change feed asks storage which tenants changed (how
    /// changes made by other replicas arrive without Redis).
    pub tenant_refresh_interval: Duration,
    /// Lifetime of a session (refresh-token family) without use.
    pub refresh_token_ttl: Duration,
    /// How long resource servers may cache the JWKS; a new key is published
    /// this long before it signs.
    pub jwks_max_age: Duration,
    /// `AUTHD_PROVIDER_ALLOWED_NETWORKS`: where OAuth providers may live
    /// although private or loopback (plain `http` only there).
    pub provider_allowed_networks: Vec<ipnet::IpNet>,
    /// Time limit of every request to an OAuth provider.
    pub provider_timeout: Duration,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            argon2: Argon2Params::default(),
            tenant_idle_timeout: Duration::from_secs(600),
            tenant_refresh_interval: Duration::from_secs(1),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            provider_allowed_networks: Vec::new(),
            provider_timeout: Duration::from_secs(10),
        }
    }
}

/// What every tenant shares: storage, token store, master keys, the hashing
/// pool, the audit sink and the configuration.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<dyn TokenStore>,
    pub keyring: Arc<Keyring>,
    pub hasher: hashing::HashPool,
    pub audit: audit::AuditSink,
    pub config: TenancyConfig,
    /// The clock rate limits read (tests move it).
    pub clock: limits::Clock,
    /// In-process limits used while the token store is unreachable.
    pub fallback: limits::Fallback,
    /// Mail delivery; `None` when no SMTP relay is configured on Postgres
    /// (flows that must send mail then answer `UNAVAILABLE`).
    pub mail: Option<Arc<mail::Mailer>>,
    /// The client for OAuth providers, built from the config on first use.
    pub provider_http: std::sync::OnceLock<Arc<oauth::net::ProviderHttp>>,
    /// Storage and token-store calls made for a tenant (counted by the
    /// [`traced`] wrappers): tests read it to prove that idle tenants cost
    /// nothing.
    pub tenant_calls: traced::TenantCalls,
}

impl Deps {
    /// The SSRF-safe client every request to an OAuth provider goes through.
    pub fn provider_http(&self) -> authd_core::Result<Arc<oauth::net::ProviderHttp>> {
        if let Some(h) = self.provider_http.get() {
            return Ok(h.clone());
        }
        let policy = oauth::net::NetPolicy { allowed: self.config.provider_allowed_networks.clone() };
        let built = Arc::new(oauth::net::ProviderHttp::new(policy, self.config.provider_timeout)?);
        Ok(self.provider_http.get_or_init(|| built).clone())
    }
}

impl TenancyConfig {
    /// The issuer of a tenant's tokens.
    pub fn issuer(&self, slug: &str) -> String {
        format!("{}/t/{}", self.public_url.trim_end_matches('/'), slug)
    }
}
