//! [`TenantCtx`]: one tenant as one request sees it, and the services it
//! hands out.
//!
//! A request builds a `TenantCtx` (two references: the process-wide
//! [`Deps`] and the tenant's [`TenantRuntime`]) and asks it for the service
//! of the capability it needs. Each service is a thin borrow of the context,
//! lives in its own module and is named after its capability:
//!
//! | service | module | what it does |
//! | --- | --- | --- |
//! | [`AccountService`] | [`crate::accounts`] | registration, password login, password checks, `me` |
//! | [`SessionService`] | [`crate::sessions`] | sessions and tokens: issuing, verifying, refresh rotation, logout, revocation |
//! | [`MfaService`] | [`crate::mfa`] | TOTP enrollment, MFA challenges, recovery codes |
//! | [`LimitService`] | [`crate::limits`] | rate limits and brute-force protection |
//! | [`SocialService`] | [`crate::oauth`] | social-login providers and the login flow through them |
//! | [`AdminService`] | [`crate::admin`] | tenant-admin operations: users, settings, key rotation |
//! | [`EmailService`] | [`crate::email`] | verification, password reset and change, magic links, email change |
//! | [`PasskeyService`] | [`crate::passkeys`] | WebAuthn registration and sign-in |
//! | [`SsoService`] | [`crate::sso`] | the tenant as an OpenID provider |
//!
//! Services call each other through the same context (a login asks
//! `limits()` before hashing and `mfa()` after), never through an actor:
//! the work of a request runs on the request's own task.

use std::sync::Arc;

use authd_core::{Result, UserId};
use authd_store::UserRecord;

use crate::Deps;
use crate::accounts::AccountService;
use crate::admin::AdminService;
use crate::audit::{self, RequestMeta};
use crate::email::EmailService;
use crate::limits::LimitService;
use crate::mfa::MfaService;
use crate::oauth::SocialService;
use crate::passkeys::PasskeyService;
use crate::runtime::{TenantRuntime, TenantSnapshot};
use crate::sessions::SessionService;
use crate::sso::SsoService;

/// One tenant, as seen by one request.
pub struct TenantCtx<'a> {
    pub deps: &'a Arc<Deps>,
    pub rt: &'a Arc<TenantRuntime>,
}

impl<'a> TenantCtx<'a> {
    /// Accounts: registration, password login, `me`.
    pub fn accounts(&'a self) -> AccountService<'a> {
        AccountService { ctx: self }
    }

    /// Sessions and tokens.
    pub fn sessions(&'a self) -> SessionService<'a> {
        SessionService { ctx: self }
    }

    /// TOTP and MFA challenges.
    pub fn mfa(&'a self) -> MfaService<'a> {
        MfaService { ctx: self }
    }

    /// Rate limits and brute-force protection.
    pub fn limits(&'a self) -> LimitService<'a> {
        LimitService { ctx: self }
    }

    /// Social login.
    pub fn social(&'a self) -> SocialService<'a> {
        SocialService { ctx: self }
    }

    /// Tenant-admin operations.
    pub fn admin(&'a self) -> AdminService<'a> {
        AdminService { ctx: self }
    }

    /// The email flows.
    pub fn email(&'a self) -> EmailService<'a> {
        EmailService { ctx: self }
    }

    /// Passkeys.
    pub fn passkeys(&'a self) -> PasskeyService<'a> {
        PasskeyService { ctx: self }
    }

    /// The tenant's OpenID provider.
    pub fn sso(&'a self) -> SsoService<'a> {
        SsoService { ctx: self }
    }
}

impl TenantCtx<'_> {
    /// The tenant's current configuration and keys.
    pub(crate) fn snapshot(&self) -> Arc<TenantSnapshot> {
        self.rt.snapshot()
    }

    /// The `iss` of the tenant's tokens.
    pub fn issuer(&self) -> String {
        self.deps.config.issuer(self.rt.slug.as_str())
    }

    /// The `aud` of the tenant's access tokens.
    pub fn audience(&self) -> String {
        let snap = self.snapshot();
        snap.record.settings.audience_for(self.rt.slug.as_str()).to_owned()
    }

    /// The user's row for the hot paths (`me`, `refresh`): from the user
    /// memo when it remembers it, else from storage (and then remembered).
    /// The memo forgets a row whenever storage changes it, on any replica
    /// (see [`crate::traced`]); checks that must win a race with a change
    /// in flight (a sign-in against a disabling) read storage directly.
    pub(crate) async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        let fetch =
            async { Ok::<_, authd_core::Error>(self.deps.store.user_by_id(self.rt.id, id).await?.map(Arc::new)) };
        let user = self.deps.tokens.memos().users.get_or_fetch(self.rt.id, id.0, fetch).await?;
        Ok(user.map(|u| UserRecord::clone(&u)))
    }

    /// Records an audit event off the request path (the batched sink).
    pub(crate) fn audit_later(
        &self,
        kind: &str,
        meta: &RequestMeta,
        actor: Option<UserId>,
        subject: Option<UserId>,
        detail: Option<serde_json::Value>,
    ) {
        self.deps.audit.record(self.rt.id, audit::event(kind, meta, actor, subject, detail));
    }
}
