//! Accounts of one tenant: registration, password login, password checks
//! and the caller's own record. Each function is a request's whole work: it
//! reads the tenant's snapshot, runs hashing on the fair pool and talks to
//! storage itself.

use authd_core::email::Email;
use authd_core::password::{self, MAX_PASSWORD_BYTES, PasswordPolicy};
use authd_core::settings::Role;
use authd_core::{Error, Result, UserId};
use authd_store::{NewUser, UserChange, UserRecord};
use chrono::Utc;

use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::metrics;
use crate::sessions::{IssuedTokens, Principal};

/// What a correct password (or another first factor) earns: tokens, or a
/// second-factor challenge that `verifyMfa` finishes.
pub enum LoginOutcome {
    Tokens(Box<IssuedTokens>),
    MfaChallenge { challenge_id: String, methods: Vec<String>, expires_in: u64 },
}

/// Accounts, reached through [`TenantCtx::accounts`].
pub struct AccountService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl AccountService<'_> {
    /// Creates a password account; with `redirect_uri`, also mails it a
    /// verification link (in the same transaction).
    pub async fn register(
        &self,
        email: &str,
        pw: &str,
        redirect_uri: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<UserRecord> {
        if let Some(uri) = redirect_uri {
            self.ctx.email().validate_redirect(uri)?;
        }
        self.ctx.limits().before_register(meta).await?;
        let email = Email::parse(email)?;
        let settings = self.ctx.snapshot().record.settings.clone();
        PasswordPolicy { min_length: settings.password_min_length as usize }.check(pw)?;
        // Cheap pre-check so a taken email costs no hashing; the unique index
        // still decides under concurrency.
        if self.ctx.deps.store.user_by_email(self.ctx.rt.id, email.as_str()).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let phc = self.hash(pw).await?;
        let user = NewUser {
            id: UserId::new(),
            email: Some(email.as_str().to_owned()),
            email_verified: false,
            password_hash: Some(phc),
            role: Role::User,
            created_at: Utc::now(),
        };
        let event = audit::event(kinds::USER_REGISTERED, meta, Some(user.id), Some(user.id), None);
        let record = match redirect_uri {
            Some(uri) => self.ctx.email().create_with_verification(&user, &event, uri).await?,
            None => self.ctx.deps.store.create_user(self.ctx.rt.id, &user, &event).await?,
        };
        audit::log_event(self.ctx.rt.id, &event);
        Ok(record)
    }

    pub(crate) async fn hash(&self, pw: &str) -> Result<String> {
        let params = self.ctx.deps.config.argon2;
        let pw = zeroize::Zeroizing::new(pw.to_owned());
        let phc = self
            .ctx
            .deps
            .hasher
            .run(self.ctx.rt.id, move || {
                metrics::PASSWORD_HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                password::hash_password(&params, &pw)
            })
            .await??;
        Ok(phc)
    }

    /// Exactly one argon2 verification, on the pool, whatever `phc` is;
    /// `None` (no such user, or no password) verifies against the dummy hash.
    /// The dummy is resolved on the pool too: the first one is computed there,
    /// never on an async worker.
    async fn verify(&self, phc: Option<String>, pw: &str) -> Result<password::Verified> {
        let params = self.ctx.deps.config.argon2;
        let pw = zeroize::Zeroizing::new(pw.to_owned());
        self.ctx
            .deps
            .hasher
            .run_labeled(self.ctx.rt.id, "verify", move || {
                let phc = match phc {
                    Some(p) => p,
                    None => password::dummy_phc(&params)?,
                };
                metrics::PASSWORD_VERIFICATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                password::verify_password(&params, &phc, &pw)
            })
            .await?
    }

    /// Verifies a user's password (re-authentication for sensitive changes).
    pub async fn check_password(&self, user: &UserRecord, pw: &str) -> Result<()> {
        let verified = self.verify(user.password_hash.clone(), pw).await?;
        if verified.ok && user.password_hash.is_some() { Ok(()) } else { Err(Error::InvalidCredentials) }
    }

    /// Unknown email, wrong password and disabled user all answer
    /// `INVALID_CREDENTIALS` after exactly one argon2 verification (a dummy
    /// hash for unknown emails), so neither the answer nor its cost tells
    /// which accounts exist.
    pub async fn login(&self, email: &str, pw: &str, meta: &RequestMeta) -> Result<LoginOutcome> {
        let email = Email::parse(email)?;
        if pw.len() > MAX_PASSWORD_BYTES {
            return Err(Error::bad_input("password", "a password is at most 4096 bytes"));
        }
        // Limits first: a refused attempt costs no hashing. Unknown emails
        // count exactly like existing ones.
        let account = crate::limits::account_key(self.ctx, email.as_str());
        if let Err(e) = self.ctx.limits().before_login(&account, meta).await {
            if matches!(e, Error::RateLimited { .. }) {
                self.ctx.audit_later(
                    kinds::LOGIN_FAILED,
                    meta,
                    None,
                    None,
                    Some(serde_json::json!({ "reason": "rate_limited" })),
                );
            }
            return Err(e);
        }
        let user = self.ctx.deps.store.user_by_email(self.ctx.rt.id, email.as_str()).await?;
        let phc = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self.verify(phc, pw).await?;
        let reason = match &user {
            None => Some("unknown_email"),
            Some(u) if u.password_hash.is_none() || !verified.ok => Some("wrong_password"),
            Some(u) if u.disabled => Some("disabled"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            self.ctx.audit_later(
                kinds::LOGIN_FAILED,
                meta,
                None,
                user.as_ref().map(|u| u.id),
                Some(serde_json::json!({ "reason": reason })),
            );
            return Err(Error::InvalidCredentials);
        }
        let Some(mut user) = user else { return Err(Error::InvalidCredentials) };
        self.ctx.limits().login_succeeded(&account, meta).await;
        if self.ctx.snapshot().record.settings.require_verified_email && !user.email_verified {
            // Only a correct password learns this: a wrong one stays
            // INVALID_CREDENTIALS above.
            self.ctx.audit_later(
                kinds::LOGIN_FAILED,
                meta,
                None,
                Some(user.id),
                Some(serde_json::json!({ "reason": "email_not_verified" })),
            );
            return Err(Error::EmailNotVerified);
        }
        if verified.needs_rehash {
            // Parameters were raised since this hash was made: upgrade it now
            // that we hold the password.
            let phc = self.hash(pw).await?;
            let change = UserChange { password_hash: Some(phc), ..Default::default() };
            if let Some(updated) = self.ctx.deps.store.update_user(self.ctx.rt.id, user.id, &change, None).await? {
                user = updated;
            }
        }
        // A user with TOTP gets a challenge, not tokens (`verifyMfa` finishes).
        let outcome = self.ctx.mfa().second_factor_or_tokens(user, vec!["pwd".into()], meta).await?;
        if let LoginOutcome::Tokens(tokens) = &outcome {
            let id = tokens.user.id;
            self.ctx.audit_later(
                kinds::LOGIN_SUCCEEDED,
                meta,
                Some(id),
                Some(id),
                Some(serde_json::json!({ "amr": ["pwd"] })),
            );
        }
        Ok(outcome)
    }

    /// The caller's user row; a deleted or disabled user is unauthenticated.
    pub async fn me(&self, p: &Principal) -> Result<UserRecord> {
        match self.ctx.user(p.user).await? {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(Error::Unauthenticated),
        }
    }
}
