//! The email flows of one tenant: verification, password reset and change,
//! magic links and email change.
//!
//! Every link carries a single-use token of 256 bits that authd stores only
//! as a keyed hash, with its kind, its user, the address it proves and its
//! expiry (verification 24 h, reset 30 min, magic link 15 min, email change
//! 24 h). A user has at most one live link per kind: a new one replaces it.
//! The link row and its mail are written in one transaction; redeeming a
//! link deletes it in the transaction of the change it makes.
//!
//! `requestPasswordReset` and `requestMagicLink` answer `true` for any
//! address after the same work (validation and limits); the lookup and the
//! mail happen after the answer, so neither the answer nor its timing tells
//! whether the address has an account.

use std::sync::Arc;
use std::time::Duration;

use authd_core::email::Email;
use authd_core::mail::{self, MailContext, MailKind};
use authd_core::password::PasswordPolicy;
use authd_core::{Error, Result, UserId, crypto};
use authd_store::{EmailLink, LinkEffect, UserChange, UserRecord};
use chrono::Utc;
use subtle::ConstantTimeEq;

use crate::Deps;
use crate::accounts::LoginOutcome;
use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::mail::{Compose, Mailer, compose};
use crate::oauth::{s256, valid_challenge, with_query};
use crate::runtime::TenantRuntime;
use crate::sessions::{Principal, deny_ttl};

/// Keyed-hash purpose of link tokens.
const LINK_PURPOSE: &str = "email-link";
/// Magic-link codes carry this prefix, so `exchangeLoginCode` knows where to
/// look (social-login codes live in the token store).
pub const MAGIC_CODE_PREFIX: &str = "ml_";

/// The email flows, reached through [`TenantCtx::email`].
pub struct EmailService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

/// A new link's token and what is stored of it.
struct NewToken {
    token: String,
    hash: String,
}

impl EmailService<'_> {
    fn deps(&self) -> &Arc<Deps> {
        self.ctx.deps
    }

    fn rt(&self) -> &Arc<TenantRuntime> {
        self.ctx.rt
    }

    /// The mailer, or `UNAVAILABLE` when none is configured (Postgres
    /// without SMTP): a configuration state, the same for every address.
    fn mailer(&self) -> Result<&Arc<Mailer>> {
        self.deps().mail.as_ref().ok_or_else(|| Error::unavailable("no SMTP relay configured (AUTHD_SMTP_URL)"))
    }

    /// `redirectUri` must be one of the tenant's `allowedRedirectUris`, exactly.
    fn check_redirect(&self, uri: &str) -> Result<()> {
        let snap = self.rt().snapshot();
        if snap.record.settings.allowed_redirect_uris.iter().any(|u| u == uri) {
            Ok(())
        } else {
            Err(Error::bad_input("redirectUri", "not one of the tenant's allowedRedirectUris"))
        }
    }

    fn new_token(&self, prefix: &str) -> NewToken {
        let token = format!("{prefix}{}", crypto::random_token(32));
        let hash = self.deps().keyring.keyed_hash(LINK_PURPOSE, token.as_bytes());
        NewToken { token, hash }
    }

    fn now(&self) -> chrono::DateTime<Utc> {
        chrono::DateTime::from_timestamp_millis(self.deps().clock.now_ms()).unwrap_or_else(Utc::now)
    }

    fn link(&self, user: UserId, kind: MailKind, hash: String, email: &str, challenge: Option<String>) -> EmailLink {
        let now = self.now();
        let lifetime = kind.link_lifetime().unwrap_or(Duration::from_secs(3600));
        EmailLink {
            user_id: user,
            kind: kind.as_str().to_owned(),
            token_hash: hash,
            email: email.to_owned(),
            code_challenge: challenge,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1)),
        }
    }

    /// Renders `kind` for `to` and seals it for the outbox.
    fn mail(&self, kind: MailKind, to: &str, link: &str, new_email: &str) -> Result<authd_store::OutboxMail> {
        let mailer = self.mailer()?;
        let snap = self.rt().snapshot();
        let ctx = MailContext {
            tenant: snap.record.name.clone(),
            email: to.to_owned(),
            link: link.to_owned(),
            expires_in: kind.link_lifetime().map(mail::describe).unwrap_or_default(),
            new_email: new_email.to_owned(),
        };
        let rendered = mail::render(kind, &snap.record.settings.email_templates, &ctx)?;
        compose(
            self.deps(),
            mailer,
            &Compose { tenant: self.rt().id, tenant_name: &snap.record.name, to, kind, rendered: &rendered },
        )
    }

    /// Stores a link for `user` to `to` and queues its mail, with the event.
    async fn issue(
        &self,
        user: &UserRecord,
        kind: MailKind,
        to: &str,
        redirect_uri: &str,
        challenge: Option<String>,
        event: &authd_store::AuditEvent,
    ) -> Result<()> {
        let (param, prefix) = if kind == MailKind::MagicLink { ("code", MAGIC_CODE_PREFIX) } else { ("token", "") };
        let t = self.new_token(prefix);
        let url = with_query(redirect_uri, &[(param, &t.token)]);
        let new_email = if kind == MailKind::EmailChange { to } else { "" };
        let mail = self.mail(kind, to, &url, new_email)?;
        let link = self.link(user.id, kind, t.hash, to, challenge);
        self.deps().store.issue_link(self.rt().id, &link, &mail, event).await?;
        audit::log_event(self.rt().id, event);
        self.mailer()?.wake();
        Ok(())
    }

    /// The live link of `kind` behind `token`; anything else is `LINK_INVALID`.
    async fn live_link(&self, token: &str, kind: MailKind) -> Result<EmailLink> {
        if token.is_empty() || token.len() > 200 {
            return Err(Error::LinkInvalid);
        }
        let hash = self.deps().keyring.keyed_hash(LINK_PURPOSE, token.as_bytes());
        match self.deps().store.link_by_hash(self.rt().id, &hash).await? {
            Some(l) if l.kind == kind.as_str() && l.expires_at > self.now() => Ok(l),
            _ => Err(Error::LinkInvalid),
        }
    }

    // ------------------------------------------------------------ verification

    /// `register` with a `redirectUri`: the account and its verification
    /// link and mail in one transaction. Without a mailer it registers
    /// without sending (the contract's rule for Postgres without SMTP).
    pub(crate) async fn create_with_verification(
        &self,
        user: &authd_store::NewUser,
        event: &authd_store::AuditEvent,
        redirect_uri: &str,
    ) -> Result<UserRecord> {
        let email = user.email.as_deref().unwrap_or_default();
        if self.deps().mail.is_none() || email.is_empty() {
            return Ok(self.deps().store.create_user(self.rt().id, user, event).await?);
        }
        let t = self.new_token("");
        let url = with_query(redirect_uri, &[("token", &t.token)]);
        let mail = self.mail(MailKind::Verification, email, &url, "")?;
        let link = self.link(user.id, MailKind::Verification, t.hash, email, None);
        let record = self.deps().store.create_user_with_link(self.rt().id, user, event, &link, &mail).await?;
        let sent =
            audit::event(kinds::EMAIL_VERIFICATION_SENT, &RequestMeta::default(), Some(user.id), Some(user.id), None);
        self.deps().audit.record(self.rt().id, sent);
        self.mailer()?.wake();
        Ok(record)
    }

    pub(crate) fn validate_redirect(&self, uri: &str) -> Result<()> {
        self.check_redirect(uri)
    }

    /// `sendVerificationEmail`: `false` when the address is already verified.
    pub async fn send_verification_email(&self, p: &Principal, redirect_uri: &str, meta: &RequestMeta) -> Result<bool> {
        self.check_redirect(redirect_uri)?;
        self.mailer()?;
        let user = self.ctx.accounts().me(p).await?;
        if user.email_verified {
            return Ok(false);
        }
        let Some(email) = user.email.clone() else {
            return Err(Error::bad_input_msg(None, "this account has no email address"));
        };
        let account = crate::limits::account_key(self.ctx, &email);
        self.ctx.limits().before_email_request(Some(&account), meta).await?;
        let event = audit::event(kinds::EMAIL_VERIFICATION_SENT, meta, Some(user.id), Some(user.id), None);
        self.issue(&user, MailKind::Verification, &email, redirect_uri, None, &event).await?;
        Ok(true)
    }

    /// `verifyEmail`: proves the address the link was sent to.
    pub async fn verify_email(&self, token: &str, meta: &RequestMeta) -> Result<UserRecord> {
        let link = self.live_link(token, MailKind::Verification).await?;
        self.redeem_verifying(&link, "verification", meta).await
    }

    /// Redeems a link that proves its address (a verification or a magic
    /// link): marks the address verified and audits it, in one transaction.
    async fn redeem_verifying(&self, link: &EmailLink, via: &str, meta: &RequestMeta) -> Result<UserRecord> {
        let event = audit::event(
            kinds::EMAIL_VERIFIED,
            meta,
            Some(link.user_id),
            Some(link.user_id),
            Some(serde_json::json!({ "via": via })),
        );
        let user = self
            .deps()
            .store
            .redeem_link(self.rt().id, link, Some(&LinkEffect::VerifyEmail), std::slice::from_ref(&event), None)
            .await?
            .ok_or(Error::LinkInvalid)?;
        audit::log_event(self.rt().id, &event);
        Ok(user)
    }

    // ------------------------------------------------------------ password reset

    /// `requestPasswordReset`: always `true` (after limits); the mail goes
    /// only to an existing, enabled account, after the answer.
    pub async fn request_password_reset(&self, email: &str, redirect_uri: &str, meta: &RequestMeta) -> Result<bool> {
        self.check_redirect(redirect_uri)?;
        let email = Email::parse(email)?;
        self.mailer()?;
        let account = crate::limits::account_key(self.ctx, email.as_str());
        self.ctx.limits().before_email_request(Some(&account), meta).await?;
        let (deps, rt) = (self.deps().clone(), self.rt().clone());
        let (redirect_uri, meta) = (redirect_uri.to_owned(), meta.clone());
        tokio::spawn(async move {
            let ctx = TenantCtx { deps: &deps, rt: &rt };
            let flows = ctx.email();
            if let Err(e) = flows.send_reset(email.as_str(), &redirect_uri, &meta).await {
                tracing::warn!(tenant = %rt.id, error = %e, "password reset mail not queued");
            }
        });
        Ok(true)
    }

    async fn send_reset(&self, email: &str, redirect_uri: &str, meta: &RequestMeta) -> Result<()> {
        let Some(user) = self.deps().store.user_by_email(self.rt().id, email).await? else { return Ok(()) };
        if user.disabled {
            return Ok(());
        }
        let event = audit::event(kinds::PASSWORD_RESET_REQUESTED, meta, None, Some(user.id), None);
        self.issue(&user, MailKind::PasswordReset, email, redirect_uri, None, &event).await
    }

    /// `resetPassword`: a new password under the tenant's policy; every
    /// session of the user ends, and the link with it.
    pub async fn reset_password(&self, token: &str, new_password: &str, meta: &RequestMeta) -> Result<bool> {
        let link = self.live_link(token, MailKind::PasswordReset).await?;
        let settings = self.rt().snapshot().record.settings.clone();
        PasswordPolicy { min_length: settings.password_min_length as usize }
            .check(new_password)
            .map_err(|e| rename_field(e, "newPassword"))?;
        let phc = self.ctx.accounts().hash(new_password).await?;
        let event = audit::event(kinds::PASSWORD_RESET, meta, Some(link.user_id), Some(link.user_id), None);
        let user = self
            .deps()
            .store
            .redeem_link(self.rt().id, &link, Some(&LinkEffect::SetPassword(phc)), std::slice::from_ref(&event), None)
            .await?
            .ok_or(Error::LinkInvalid)?;
        audit::log_event(self.rt().id, &event);
        self.deps().tokens.revoke_user_sessions(self.rt().id, user.id, None, deny_ttl()).await?;
        // The owner is back in: earlier failures no longer lock the account.
        if let Some(email) = &user.email {
            let account = crate::limits::account_key(self.ctx, email);
            self.ctx.limits().login_succeeded(&account, meta).await;
        }
        Ok(true)
    }

    /// `changePassword`: the current password (limited like a login), the
    /// new one under the policy; the user's other sessions and any reset
    /// link end.
    pub async fn change_password(
        &self,
        p: &Principal,
        current: &str,
        new_password: &str,
        meta: &RequestMeta,
    ) -> Result<bool> {
        let user = self.ctx.accounts().me(p).await?;
        self.ctx.mfa().recheck_password(&user, current, meta).await?;
        let settings = self.rt().snapshot().record.settings.clone();
        PasswordPolicy { min_length: settings.password_min_length as usize }
            .check(new_password)
            .map_err(|e| rename_field(e, "newPassword"))?;
        let phc = self.ctx.accounts().hash(new_password).await?;
        let event = audit::event(kinds::PASSWORD_CHANGED, meta, Some(user.id), Some(user.id), None);
        let change = UserChange { password_hash: Some(phc), ..Default::default() };
        self.deps()
            .store
            .update_user(self.rt().id, user.id, &change, Some(&event))
            .await?
            .ok_or(Error::Unauthenticated)?;
        audit::log_event(self.rt().id, &event);
        self.deps().store.delete_links(self.rt().id, user.id, MailKind::PasswordReset.as_str()).await?;
        self.deps().tokens.revoke_user_sessions(self.rt().id, user.id, Some(p.session), deny_ttl()).await?;
        Ok(true)
    }

    // ------------------------------------------------------------ magic links

    /// `requestMagicLink`: always `true` (after limits); a link goes only to
    /// an existing, enabled account of a tenant with `magicLinksEnabled`.
    pub async fn request_magic_link(
        &self,
        email: &str,
        redirect_uri: &str,
        code_challenge: &str,
        meta: &RequestMeta,
    ) -> Result<bool> {
        self.check_redirect(redirect_uri)?;
        if !valid_challenge(code_challenge) {
            return Err(Error::bad_input("codeChallenge", "a PKCE S256 challenge: 43 base64url characters"));
        }
        let email = Email::parse(email)?;
        self.mailer()?;
        let account = crate::limits::account_key(self.ctx, email.as_str());
        self.ctx.limits().before_email_request(Some(&account), meta).await?;
        if !self.rt().snapshot().record.settings.magic_links_enabled {
            return Ok(true);
        }
        let (deps, rt) = (self.deps().clone(), self.rt().clone());
        let (redirect_uri, challenge, meta) = (redirect_uri.to_owned(), code_challenge.to_owned(), meta.clone());
        tokio::spawn(async move {
            let ctx = TenantCtx { deps: &deps, rt: &rt };
            if let Err(e) = ctx.email().send_magic_link(email.as_str(), &redirect_uri, challenge, &meta).await {
                tracing::warn!(tenant = %rt.id, error = %e, "magic link mail not queued");
            }
        });
        Ok(true)
    }

    async fn send_magic_link(
        &self,
        email: &str,
        redirect_uri: &str,
        challenge: String,
        meta: &RequestMeta,
    ) -> Result<()> {
        let Some(user) = self.deps().store.user_by_email(self.rt().id, email).await? else { return Ok(()) };
        if user.disabled {
            return Ok(());
        }
        let event = audit::event(kinds::MAGIC_LINK_SENT, meta, None, Some(user.id), None);
        self.issue(&user, MailKind::MagicLink, email, redirect_uri, Some(challenge), &event).await
    }

    /// `exchangeLoginCode` with a magic link's code: the app's verifier
    /// against the challenge it gave `requestMagicLink`. The code is used up
    /// by the first attempt, right or wrong. The sign-in proves the address.
    pub async fn exchange_magic_code(&self, code: &str, verifier: &str, meta: &RequestMeta) -> Result<LoginOutcome> {
        if !self.rt().snapshot().record.settings.magic_links_enabled {
            return Err(Error::LinkInvalid);
        }
        let link = self.live_link(code, MailKind::MagicLink).await?;
        let challenge = link.code_challenge.clone().unwrap_or_default();
        let ok: bool = s256(verifier).as_bytes().ct_eq(challenge.as_bytes()).into();
        if !ok {
            // Burn it: a stolen code cannot be tried against verifiers.
            self.deps().store.redeem_link(self.rt().id, &link, None, &[], None).await?;
            return Err(Error::Unauthenticated);
        }
        let user = self.redeem_verifying(&link, "magic_link", meta).await?;
        if user.disabled {
            return Err(Error::Unauthenticated);
        }
        let outcome = self.ctx.mfa().second_factor_or_tokens(user, vec!["email".into()], meta).await?;
        if let LoginOutcome::Tokens(t) = &outcome {
            let id = t.user.id;
            self.deps().audit.record(
                self.rt().id,
                audit::event(
                    kinds::LOGIN_SUCCEEDED,
                    meta,
                    Some(id),
                    Some(id),
                    Some(serde_json::json!({ "amr": ["email"] })),
                ),
            );
        }
        Ok(outcome)
    }

    // ------------------------------------------------------------ email change

    /// `requestEmailChange`: the password, then a link to the new address;
    /// nothing changes until it is opened.
    pub async fn request_email_change(
        &self,
        p: &Principal,
        new_email: &str,
        password: &str,
        redirect_uri: &str,
        meta: &RequestMeta,
    ) -> Result<bool> {
        self.check_redirect(redirect_uri)?;
        let new_email = Email::parse(new_email).map_err(|e| rename_field(e, "newEmail"))?;
        self.mailer()?;
        let user = self.ctx.accounts().me(p).await?;
        self.ctx.mfa().recheck_password(&user, password, meta).await?;
        if user.email.as_deref() == Some(new_email.as_str()) {
            return Err(Error::bad_input("newEmail", "this is already the account's address"));
        }
        if self.deps().store.user_by_email(self.rt().id, new_email.as_str()).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        self.ctx.limits().before_email_request(None, meta).await?;
        let event = audit::event(kinds::EMAIL_CHANGE_REQUESTED, meta, Some(user.id), Some(user.id), None);
        self.issue(&user, MailKind::EmailChange, new_email.as_str(), redirect_uri, None, &event).await?;
        Ok(true)
    }

    /// `confirmEmailChange`: the new address becomes the account's, verified;
    /// the old address is told, in the same transaction.
    pub async fn confirm_email_change(&self, token: &str, meta: &RequestMeta) -> Result<UserRecord> {
        let link = self.live_link(token, MailKind::EmailChange).await?;
        let before = self.deps().store.user_by_id(self.rt().id, link.user_id).await?.ok_or(Error::LinkInvalid)?;
        let notice = match &before.email {
            Some(old) if self.deps().mail.is_some() => Some(self.mail(MailKind::EmailChanged, old, "", &link.email)?),
            _ => None,
        };
        let event = audit::event(
            kinds::EMAIL_CHANGED,
            meta,
            Some(link.user_id),
            Some(link.user_id),
            Some(serde_json::json!({ "oldEmailVerified": before.email_verified })),
        );
        let user = self
            .deps()
            .store
            .redeem_link(
                self.rt().id,
                &link,
                Some(&LinkEffect::ChangeEmail),
                std::slice::from_ref(&event),
                notice.as_ref(),
            )
            .await?
            .ok_or(Error::LinkInvalid)?;
        audit::log_event(self.rt().id, &event);
        if let Some(m) = &self.deps().mail {
            m.wake();
        }
        Ok(user)
    }
}

/// Password-policy errors name the field of the operation at hand.
fn rename_field(e: Error, field: &str) -> Error {
    match e {
        Error::BadInput { message, .. } => Error::bad_input(field, message),
        other => other,
    }
}
