//! Tenant-admin operations. Every one re-checks the caller against storage
//! (role `admin`, not disabled): a token's `role` claim alone may be stale.

use authd_core::settings::{Role, TenantSettings};
use authd_core::{Error, Result, UserId};
use authd_store::{AuditEvent, UserChange, UserRecord};

use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::keyset::KeyInfo;
use crate::sessions::{Principal, deny_ttl};
use crate::tenant::TenantMsg;

/// Tenant-admin operations, reached through [`TenantCtx::admin`].
pub struct AdminService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl AdminService<'_> {
    /// The caller, if it is an enabled admin of this tenant now.
    pub async fn require_admin(&self, p: &Principal) -> Result<UserRecord> {
        if p.mfa_enrollment_required {
            return Err(Error::forbidden("two-factor enrollment is required before using admin operations"));
        }
        if p.role != Role::Admin {
            return Err(Error::forbidden("tenant admins only"));
        }
        match self.ctx.deps.store.user_by_id(self.ctx.rt.id, p.user).await? {
            Some(u) if u.role == Role::Admin && !u.disabled => {
                let settings = &self.ctx.rt.snapshot().record.settings;
                if settings.require_mfa_for_admins && !u.totp_enabled {
                    return Err(Error::forbidden("two-factor enrollment is required before using admin operations"));
                }
                Ok(u)
            }
            Some(u) if u.disabled => Err(Error::Unauthenticated),
            _ => Err(Error::forbidden("tenant admins only")),
        }
    }

    pub async fn list_users(
        &self,
        p: &Principal,
        email_prefix: Option<&str>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>> {
        self.require_admin(p).await?;
        let prefix = email_prefix.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
        Ok(self.ctx.deps.store.list_users(self.ctx.rt.id, prefix.as_deref(), after, limit).await?)
    }

    /// Disabling revokes every session of the user at once.
    pub async fn set_user_disabled(
        &self,
        p: &Principal,
        user: &str,
        disabled: bool,
        meta: &RequestMeta,
    ) -> Result<UserRecord> {
        let admin = self.require_admin(p).await?;
        let target = self.target_user(user).await?;
        if disabled && target.id == admin.id {
            return Err(Error::bad_input("userId", "an admin cannot disable their own account"));
        }
        if disabled && self.is_last_admin(&target).await? {
            return Err(Error::bad_input("userId", "the tenant's last admin cannot be disabled"));
        }
        let kind = if disabled { kinds::USER_DISABLED } else { kinds::USER_ENABLED };
        let event = audit::event(kind, meta, Some(admin.id), Some(target.id), None);
        let change = UserChange { disabled: Some(disabled), keep_an_admin: disabled, ..Default::default() };
        let updated = self.change_user(target.id, &change, &event).await?;
        if disabled {
            self.ctx.deps.tokens.revoke_user_sessions(self.ctx.rt.id, target.id, None, deny_ttl()).await?;
        }
        Ok(updated)
    }

    pub async fn set_user_role(&self, p: &Principal, user: &str, role: Role, meta: &RequestMeta) -> Result<UserRecord> {
        let admin = self.require_admin(p).await?;
        let target = self.target_user(user).await?;
        if target.role == role {
            return Ok(target);
        }
        if self.is_last_admin(&target).await? {
            return Err(Error::bad_input("userId", "the tenant's last admin cannot be demoted"));
        }
        let event = audit::event(
            kinds::USER_ROLE_CHANGED,
            meta,
            Some(admin.id),
            Some(target.id),
            Some(serde_json::json!({ "from": target.role.as_str(), "to": role.as_str() })),
        );
        let change = UserChange { role: Some(role), keep_an_admin: role != Role::Admin, ..Default::default() };
        let updated = self.change_user(target.id, &change, &event).await?;
        Ok(updated)
    }

    /// Whether `user` is the tenant's only active admin (the storage
    /// transaction checks again under concurrency: `keep_an_admin`).
    async fn is_last_admin(&self, user: &UserRecord) -> Result<bool> {
        Ok(user.role == Role::Admin
            && !user.disabled
            && self.ctx.deps.store.count_active_admins(self.ctx.rt.id).await? <= 1)
    }

    /// Applies an admin's change to a user with its audit event.
    async fn change_user(&self, user: UserId, change: &UserChange, event: &AuditEvent) -> Result<UserRecord> {
        let updated = self
            .ctx
            .deps
            .store
            .update_user(self.ctx.rt.id, user, change, Some(event))
            .await?
            .ok_or_else(|| Error::bad_input("userId", "no such user"))?;
        audit::log_event(self.ctx.rt.id, event);
        Ok(updated)
    }

    async fn target_user(&self, user: &str) -> Result<UserRecord> {
        let id: UserId = user.parse().map_err(|_| Error::bad_input("userId", "not a user id"))?;
        self.ctx
            .deps
            .store
            .user_by_id(self.ctx.rt.id, id)
            .await?
            .ok_or_else(|| Error::bad_input("userId", "no such user"))
    }

    pub async fn tenant_settings(&self, p: &Principal) -> Result<TenantSettings> {
        self.require_admin(p).await?;
        Ok(self.ctx.rt.snapshot().record.settings.clone())
    }

    /// Validates and stores the new settings (the caller merged the input
    /// into the current ones), records which fields changed, and reloads the
    /// tenant. A new signing algorithm takes effect through an immediate key
    /// rotation to a key of that algorithm; older keys stay published.
    pub async fn update_settings(
        &self,
        p: &Principal,
        new: TenantSettings,
        meta: &RequestMeta,
    ) -> Result<TenantSettings> {
        let admin = self.require_admin(p).await?;
        new.validate()?;
        crate::passkeys::relying_party(
            new.webauthn_rp_id.as_deref(),
            &new.webauthn_origins,
            &new.allowed_origins,
            &self.ctx.deps.config.public_url,
        )?;
        let old = self.ctx.rt.snapshot().record.settings.clone();
        let changed = changed_fields(&old, &new);
        if changed.is_empty() {
            return Ok(old);
        }
        let event = audit::event(
            kinds::SETTINGS_CHANGED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "fields": changed })),
        );
        self.ctx.deps.store.update_settings(self.ctx.rt.id, &new, &event).await?;
        audit::log_event(self.ctx.rt.id, &event);
        // Make the change visible to this replica's requests at once.
        let mut record = self.ctx.rt.snapshot().record.clone();
        record.settings = new.clone();
        let keys = self.ctx.rt.snapshot().keys.clone();
        let providers = self.ctx.rt.snapshot().providers.clone();
        self.ctx.rt.replace_snapshot(crate::runtime::TenantSnapshot { record, keys, providers });
        if old.signing_algorithm != new.signing_algorithm {
            // Not a compromise: the old key retires as usual.
            self.rotate_key_inner(Some(admin.id), true, false, meta).await?;
        } else if let Some(sup) = self.ctx.rt.supervisor() {
            let _ = sup.cast(TenantMsg::Reload);
        }
        // Other replicas reload now (Redis pub/sub); their change feed is the
        // backstop for a lost notice.
        if let Err(e) = self.ctx.deps.tokens.publish_change(self.ctx.rt.id).await {
            tracing::debug!(tenant = %self.ctx.rt.id, error = %e, "could not announce the settings change to other replicas");
        }
        Ok(new)
    }

    pub async fn rotate_signing_key(&self, p: &Principal, immediate: bool, meta: &RequestMeta) -> Result<KeyInfo> {
        let admin = self.require_admin(p).await?;
        // `immediate` is for a compromised key: the old keys go at once.
        self.rotate_key_inner(Some(admin.id), immediate, immediate, meta).await
    }

    async fn rotate_key_inner(
        &self,
        actor: Option<UserId>,
        immediate: bool,
        revoke_older: bool,
        meta: &RequestMeta,
    ) -> Result<KeyInfo> {
        let sup = self.ctx.rt.supervisor().ok_or_else(|| Error::unavailable("tenant is restarting"))?;
        let timeout = std::time::Duration::from_secs(30);
        let session =
            ractor::call_t!(sup, TenantMsg::SessionActor, 5000).map_err(|e| Error::unavailable(e.to_string()))?;
        let meta = meta.clone();
        let info = session
            .call(
                |reply| crate::children::SessionMsg::RotateKey { immediate, revoke_older, actor, meta, reply },
                Some(timeout),
            )
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        let info = match info {
            ractor::rpc::CallResult::Success(r) => r?,
            _ => return Err(Error::unavailable("key rotation timed out")),
        };
        // Reload now so this replica signs with the new key right away.
        let fresh = crate::platform::load_snapshot_by_id(self.ctx.deps, self.ctx.rt.id).await?;
        if let Some(snapshot) = fresh {
            self.ctx.rt.replace_snapshot(snapshot);
        }
        Ok(info)
    }
}

fn changed_fields(old: &TenantSettings, new: &TenantSettings) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! check {
        ($($field:ident => $name:literal),* $(,)?) => {
            $( if old.$field != new.$field { out.push($name); } )*
        };
    }
    check!(
        access_token_lifetime_minutes => "accessTokenLifetimeMinutes",
        signing_algorithm => "signingAlgorithm",
        audience => "audience",
        password_min_length => "passwordMinLength",
        require_mfa_for_admins => "requireMfaForAdmins",
        allowed_redirect_uris => "allowedRedirectUris",
        allowed_origins => "allowedOrigins",
        link_by_verified_email => "linkByVerifiedEmail",
        audit_retention_days => "auditRetentionDays",
        rate_limits => "rateLimits",
        require_verified_email => "requireVerifiedEmail",
        magic_links_enabled => "magicLinksEnabled",
        email_templates => "emailTemplates",
        webauthn_rp_id => "webauthnRpId",
        webauthn_origins => "webauthnOrigins",
    );
    out
}
