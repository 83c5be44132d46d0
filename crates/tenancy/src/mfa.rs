//! Two-factor authentication: TOTP (RFC 6238) enrollment, MFA challenges
//! after the first factor, and single-use recovery codes.
//!
//! - Secrets are 160 bits, sealed at rest bound to tenant, purpose and user.
//! - A pending enrollment changes nothing until a code from the new secret
//!   confirms it.
//! - RFC 6238 §5.2: one step of drift either way, and a code accepted once is
//!   never accepted again for that user: the last used step is advanced
//!   atomically in storage, so of two concurrent uses exactly one succeeds.
//! - Recovery codes are stored only as keyed hashes (HMAC under a key derived
//!   from the master key), so a database dump alone cannot test guesses.
//! - Challenges live in the token store (any replica can finish them), bound
//!   to tenant and user, for 5 minutes and at most 5 wrong codes.
//! - Every failure is `MFA_INVALID`, never a hint at which part was wrong.

use authd_core::crypto::SealContext;
use authd_core::totp::{self, TotpSecret};
use authd_core::{Error, Result, UserId, crypto};
use authd_store::UserRecord;
use chrono::Utc;
use std::time::Duration;

use crate::accounts::LoginOutcome;
use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::sessions::{IssuedTokens, Principal, deny_ttl};

pub(crate) const SEAL_PURPOSE: &str = "totp-secret";
const RECOVERY_PURPOSE: &str = "recovery-code";
const CHALLENGE_KIND: &str = "mfa";
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
const MAX_WRONG_CODES: u32 = 5;
const RECOVERY_CODE_COUNT: usize = 10;
/// How recent a sign-in re-authenticates a user who has no password.
pub const REAUTH_WINDOW: Duration = Duration::from_secs(300);

/// What `beginTotpEnrollment` returns (the only time the secret is shown).
pub struct Enrollment {
    pub secret_base32: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Challenge {
    user: UserId,
    /// First-factor methods (RFC 8176): `pwd` or `fed`.
    amr: Vec<String>,
}

fn now_unix() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

fn step_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// TOTP and MFA challenges, reached through [`TenantCtx::mfa`].
pub struct MfaService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl MfaService<'_> {
    fn seal_ctx(&self, user: UserId) -> (String, &'static str) {
        (user.to_string(), SEAL_PURPOSE)
    }

    fn open_secret(&self, user: UserId, sealed: &str) -> Result<TotpSecret> {
        let (row, purpose) = self.seal_ctx(user);
        let bytes = self.ctx.deps.keyring.open(sealed, &SealContext { tenant: self.ctx.rt.id, purpose, row: &row })?;
        TotpSecret::from_bytes(&bytes)
    }

    fn recovery_hashes(codes: &[String], keyring: &crypto::Keyring) -> Vec<String> {
        codes
            .iter()
            .map(|c| keyring.keyed_hash(RECOVERY_PURPOSE, totp::normalize_recovery_code(c).as_bytes()))
            .collect()
    }

    /// After a first factor: tokens, or a challenge when the user has TOTP.
    pub async fn second_factor_or_tokens(
        &self,
        user: UserRecord,
        amr: Vec<String>,
        meta: &RequestMeta,
    ) -> Result<LoginOutcome> {
        if !user.totp_enabled {
            let tokens = self.ctx.sessions().start(user, amr, meta).await?;
            return Ok(LoginOutcome::Tokens(Box::new(tokens)));
        }
        // ≥ 128 bits: the id is the only thing binding a client to its challenge.
        let id = crypto::random_token(24);
        let value = serde_json::to_string(&Challenge { user: user.id, amr }).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, CHALLENGE_KIND, &id, &value, CHALLENGE_TTL).await?;
        Ok(LoginOutcome::MfaChallenge {
            challenge_id: id,
            methods: vec!["totp".into(), "recovery_code".into()],
            expires_in: CHALLENGE_TTL.as_secs(),
        })
    }

    /// Checks a TOTP code against the user's secret and consumes its step.
    /// `Ok(false)` for a wrong or replayed code (a replay is audited).
    async fn accept_totp(&self, user: &UserRecord, code: u32, meta: &RequestMeta) -> Result<bool> {
        let Some(sealed) = user.totp_secret_sealed.as_deref().filter(|_| user.totp_enabled) else {
            return Ok(false);
        };
        let secret = self.open_secret(user.id, sealed)?;
        let Some(step) = totp::matching_step(&secret, code, now_unix()) else { return Ok(false) };
        if self.ctx.deps.store.advance_totp_step(self.ctx.rt.id, user.id, step_i64(step)).await? {
            return Ok(true);
        }
        // RFC 6238 §5.2 / ASVS 2.8.4: the same code is never accepted twice.
        self.ctx
            .deps
            .audit
            .record(self.ctx.rt.id, audit::event(kinds::TOTP_REPLAY_REFUSED, meta, Some(user.id), Some(user.id), None));
        Ok(false)
    }

    /// Checks a second factor: a 6-digit TOTP code or an unused recovery
    /// code (consumed, with its event in the same transaction).
    async fn accept_second_factor(
        &self,
        user: &UserRecord,
        code: &str,
        meta: &RequestMeta,
    ) -> Result<Option<&'static str>> {
        let trimmed = code.trim();
        if trimmed.is_empty() || trimmed.len() > 64 {
            return Ok(None);
        }
        if let Ok(digits) = totp::parse_code(trimmed) {
            return Ok(self.accept_totp(user, digits, meta).await?.then_some("totp"));
        }
        if !user.totp_enabled {
            return Ok(None);
        }
        let normalized = totp::normalize_recovery_code(trimmed);
        let candidates = self.ctx.deps.keyring.keyed_hash_candidates(RECOVERY_PURPOSE, normalized.as_bytes());
        let event = audit::event(kinds::RECOVERY_CODE_USED, meta, Some(user.id), Some(user.id), None);
        if self.ctx.deps.store.use_recovery_code(self.ctx.rt.id, user.id, &candidates, &event).await? {
            audit::log_event(self.ctx.rt.id, &event);
            return Ok(Some("recovery_code"));
        }
        Ok(None)
    }

    /// Answers an MFA challenge. Any failure is `MFA_INVALID`; the fifth
    /// wrong code kills the challenge.
    pub async fn verify_mfa(&self, challenge_id: &str, code: &str, meta: &RequestMeta) -> Result<IssuedTokens> {
        if challenge_id.is_empty() || challenge_id.len() > 128 {
            return Err(Error::MfaInvalid);
        }
        let Some(raw) = self.ctx.deps.tokens.peek(self.ctx.rt.id, CHALLENGE_KIND, challenge_id).await? else {
            return Err(Error::MfaInvalid);
        };
        let challenge: Challenge = serde_json::from_str(&raw).map_err(|_| Error::MfaInvalid)?;
        let user = match self.ctx.deps.store.user_by_id(self.ctx.rt.id, challenge.user).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(Error::MfaInvalid),
        };
        self.ctx.limits().before_mfa(user.id, meta).await?;
        let method = self.accept_second_factor(&user, code, meta).await?;
        let Some(method) = method else {
            let _ = self
                .ctx
                .deps
                .tokens
                .count_attempt(self.ctx.rt.id, CHALLENGE_KIND, challenge_id, MAX_WRONG_CODES)
                .await?;
            self.ctx
                .deps
                .audit
                .record(self.ctx.rt.id, audit::event(kinds::MFA_FAILED, meta, None, Some(user.id), None));
            return Err(Error::MfaInvalid);
        };
        // Single use: of two concurrent correct answers only one gets tokens.
        if self.ctx.deps.tokens.take_once(self.ctx.rt.id, CHALLENGE_KIND, challenge_id).await?.is_none() {
            return Err(Error::MfaInvalid);
        }
        let mut amr = challenge.amr;
        amr.push("otp".into());
        let tokens = self.ctx.sessions().start(user, amr.clone(), meta).await?;
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::MFA_SUCCEEDED,
                meta,
                Some(tokens.user.id),
                Some(tokens.user.id),
                Some(serde_json::json!({ "method": method, "amr": amr })),
            ),
        );
        Ok(tokens)
    }

    /// Re-checks the password of a signed-in user for a sensitive change.
    /// It counts against the account's failed logins exactly like `login`
    /// (the same per-IP, burst and per-account limits, refunded on success),
    /// so a stolen access token cannot be used to guess the password.
    pub(crate) async fn recheck_password(&self, user: &UserRecord, password: &str, meta: &RequestMeta) -> Result<()> {
        let account = crate::limits::account_key(self.ctx, user.email.as_deref().unwrap_or(&user.id.to_string()));
        self.ctx.limits().before_login(&account, meta).await?;
        match self.ctx.accounts().check_password(user, password).await {
            Ok(()) => {
                self.ctx.limits().login_succeeded(&account, meta).await;
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::InvalidCredentials) {
                    self.ctx.deps.audit.record(
                        self.ctx.rt.id,
                        audit::event(
                            kinds::LOGIN_FAILED,
                            meta,
                            Some(user.id),
                            Some(user.id),
                            Some(serde_json::json!({ "reason": "wrong_password", "reauthentication": true })),
                        ),
                    );
                }
                Err(e)
            }
        }
    }

    /// Starts an enrollment. Re-authentication is the password, or, for a
    /// user without one (social login), a sign-in of the last
    /// [`REAUTH_WINDOW`]: the session's creation time, which a refresh never
    /// moves. Refused while TOTP is on: disable it first.
    pub async fn begin_totp_enrollment(
        &self,
        p: &Principal,
        password: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Enrollment> {
        let user = self.ctx.accounts().me(p).await?;
        if user.totp_enabled {
            return Err(Error::bad_input_msg(None, "two-factor authentication is already on; disable it first"));
        }
        self.ctx.limits().before_mfa(user.id, meta).await?;
        match password {
            Some(password) => self.recheck_password(&user, password, meta).await?,
            None if user.password_hash.is_some() => {
                return Err(Error::bad_input("password", "give the account's password to enroll"));
            }
            None => {
                let session = self.ctx.deps.tokens.get_session(self.ctx.rt.id, p.session).await?;
                let signed_in_at = session.map(|s| s.created_at).unwrap_or(0);
                let age = Utc::now().timestamp().saturating_sub(signed_in_at);
                let window = i64::try_from(REAUTH_WINDOW.as_secs()).unwrap_or(300);
                if age > window {
                    return Err(Error::bad_input(
                        "password",
                        "re-authenticate: give the password, or sign in again and enroll within 5 minutes",
                    ));
                }
            }
        }
        let secret = TotpSecret::generate();
        let (row, purpose) = self.seal_ctx(user.id);
        let sealed =
            self.ctx.deps.keyring.seal(secret.as_bytes(), &SealContext { tenant: self.ctx.rt.id, purpose, row: &row });
        self.ctx.deps.store.set_totp_pending(self.ctx.rt.id, user.id, Some(&sealed)).await?;
        let issuer = self.ctx.rt.snapshot().record.name.clone();
        let label = user.email.clone().unwrap_or_else(|| user.id.to_string());
        let uri = totp::otpauth_uri(&secret, &issuer, &label)?;
        let qr_svg = totp::qr_svg(&uri)?;
        Ok(Enrollment { secret_base32: secret.to_base32(), otpauth_uri: uri, qr_svg })
    }

    /// Confirms the pending enrollment with a code from the new secret and
    /// returns 10 recovery codes (shown once).
    pub async fn confirm_totp_enrollment(&self, p: &Principal, code: &str, meta: &RequestMeta) -> Result<Vec<String>> {
        let user = self.ctx.accounts().me(p).await?;
        let Some(pending) = user.totp_pending_sealed.clone() else { return Err(Error::MfaInvalid) };
        let code = totp::parse_code(code)?;
        let secret = self.open_secret(user.id, &pending)?;
        let step = totp::matching_step(&secret, code, now_unix()).ok_or(Error::MfaInvalid)?;
        let codes = totp::generate_recovery_codes(RECOVERY_CODE_COUNT);
        let hashes = Self::recovery_hashes(&codes, &self.ctx.deps.keyring);
        let event = audit::event(kinds::TOTP_ENROLLED, meta, Some(user.id), Some(user.id), None);
        if !self.ctx.deps.store.enable_totp(self.ctx.rt.id, user.id, &pending, step_i64(step), &hashes, &event).await? {
            return Err(Error::MfaInvalid);
        }
        audit::log_event(self.ctx.rt.id, &event);
        Ok(codes)
    }

    /// Turns TOTP off; needs the password and a current code (or a recovery
    /// code). Revokes the user's other sessions.
    pub async fn disable_totp(&self, p: &Principal, password: &str, code: &str, meta: &RequestMeta) -> Result<bool> {
        let user = self.ctx.accounts().me(p).await?;
        if !user.totp_enabled {
            return Err(Error::MfaInvalid);
        }
        self.ctx.limits().before_mfa(user.id, meta).await?;
        self.recheck_password(&user, password, meta).await?;
        if self.accept_second_factor(&user, code, meta).await?.is_none() {
            return Err(Error::MfaInvalid);
        }
        let event = audit::event(kinds::TOTP_DISABLED, meta, Some(user.id), Some(user.id), None);
        self.ctx.deps.store.disable_totp(self.ctx.rt.id, user.id, &event).await?;
        audit::log_event(self.ctx.rt.id, &event);
        self.ctx.deps.tokens.revoke_user_sessions(self.ctx.rt.id, user.id, Some(p.session), deny_ttl()).await?;
        Ok(true)
    }

    /// Replaces the recovery codes; needs a current TOTP code. Revokes the
    /// user's other sessions.
    pub async fn regenerate_recovery_codes(
        &self,
        p: &Principal,
        code: &str,
        meta: &RequestMeta,
    ) -> Result<Vec<String>> {
        let user = self.ctx.accounts().me(p).await?;
        self.ctx.limits().before_mfa(user.id, meta).await?;
        let code = totp::parse_code(code)?;
        if !self.accept_totp(&user, code, meta).await? {
            return Err(Error::MfaInvalid);
        }
        let codes = totp::generate_recovery_codes(RECOVERY_CODE_COUNT);
        let hashes = Self::recovery_hashes(&codes, &self.ctx.deps.keyring);
        let event = audit::event(kinds::RECOVERY_CODES_REGENERATED, meta, Some(user.id), Some(user.id), None);
        self.ctx.deps.store.replace_recovery_codes(self.ctx.rt.id, user.id, &hashes, &event).await?;
        audit::log_event(self.ctx.rt.id, &event);
        self.ctx.deps.tokens.revoke_user_sessions(self.ctx.rt.id, user.id, Some(p.session), deny_ttl()).await?;
        Ok(codes)
    }
}
