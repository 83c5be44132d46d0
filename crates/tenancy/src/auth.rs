//! Accounts, login, tokens and sessions of one tenant. Each function is a
//! request's whole work: it reads the tenant's snapshot, runs hashing on the
//! fair pool, and talks to storage and the token store itself.

use std::sync::Arc;
use std::time::Duration;

use authd_core::claims::AccessClaims;
use authd_core::email::Email;
use authd_core::password::{self, MAX_PASSWORD_BYTES, PasswordPolicy};
use authd_core::settings::Role;
use authd_core::{Error, Result, SessionId, UserId, crypto};
use authd_store::{NewUser, UserChange, UserRecord};
use authd_tokens::{RotateOutcome, SessionRecord};
use chrono::Utc;
use uuid::Uuid;

use crate::audit::{self, RequestMeta, kinds};
use crate::runtime::TenantRuntime;
use crate::{Deps, metrics};

/// Keyed-hash purpose of refresh tokens.
const REFRESH_PURPOSE: &str = "refresh-token";

/// Deny entries outlive the longest access token any tenant may issue (the
/// same lifetime as a reuse revocation's, [`authd_tokens::REUSE_DENY_TTL`]).
pub fn deny_ttl() -> Duration {
    authd_tokens::REUSE_DENY_TTL
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: UserId,
    pub session: SessionId,
    pub role: Role,
    pub amr: Vec<String>,
    /// The token allows only `me` and TOTP enrollment.
    pub mfa_enrollment_required: bool,
    /// Set for tokens issued to an OAuth client (single sign-on).
    pub client_id: Option<String>,
    pub scope: Option<String>,
}

/// Tokens handed to a client.
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub session: SessionId,
    pub user: UserRecord,
}

pub enum LoginOutcome {
    Tokens(Box<IssuedTokens>),
    MfaChallenge { challenge_id: String, methods: Vec<String>, expires_in: u64 },
}

/// One tenant, as seen by one request.
pub struct TenantCtx<'a> {
    pub deps: &'a Arc<Deps>,
    pub rt: &'a Arc<TenantRuntime>,
}

impl TenantCtx<'_> {
    fn snapshot(&self) -> Arc<crate::runtime::TenantSnapshot> {
        self.rt.snapshot()
    }

    pub fn issuer(&self) -> String {
        self.deps.config.issuer(self.rt.slug.as_str())
    }

    pub fn audience(&self) -> String {
        let snap = self.snapshot();
        snap.record.settings.audience_for(self.rt.slug.as_str()).to_owned()
    }

    fn audit_later(
        &self,
        kind: &str,
        meta: &RequestMeta,
        actor: Option<UserId>,
        subject: Option<UserId>,
        detail: Option<serde_json::Value>,
    ) {
        self.deps.audit.record(self.rt.id, audit::event(kind, meta, actor, subject, detail));
    }

    // ------------------------------------------------------------ accounts

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
            self.email().validate_redirect(uri)?;
        }
        self.before_register(meta).await?;
        let email = Email::parse(email)?;
        let settings = self.snapshot().record.settings.clone();
        PasswordPolicy { min_length: settings.password_min_length as usize }.check(pw)?;
        // Cheap pre-check so a taken email costs no hashing; the unique index
        // still decides under concurrency.
        if self.deps.store.user_by_email(self.rt.id, email.as_str()).await?.is_some() {
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
            Some(uri) => self.email().create_with_verification(&user, &event, uri).await?,
            None => self.deps.store.create_user(self.rt.id, &user, &event).await?,
        };
        audit::log_event(self.rt.id, &event);
        Ok(record)
    }

    pub(crate) async fn hash(&self, pw: &str) -> Result<String> {
        let params = self.deps.config.argon2;
        let pw = zeroize::Zeroizing::new(pw.to_owned());
        let phc = self
            .deps
            .hasher
            .run(self.rt.id, move || {
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
        let params = self.deps.config.argon2;
        let pw = zeroize::Zeroizing::new(pw.to_owned());
        self.deps
            .hasher
            .run_labeled(self.rt.id, "verify", move || {
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
        let account = crate::limits::account_key(self, email.as_str());
        if let Err(e) = self.before_login(&account, meta).await {
            if matches!(e, Error::RateLimited { .. }) {
                self.audit_later(
                    kinds::LOGIN_FAILED,
                    meta,
                    None,
                    None,
                    Some(serde_json::json!({ "reason": "rate_limited" })),
                );
            }
            return Err(e);
        }
        let user = self.deps.store.user_by_email(self.rt.id, email.as_str()).await?;
        let phc = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self.verify(phc, pw).await?;
        let reason = match &user {
            None => Some("unknown_email"),
            Some(u) if u.password_hash.is_none() || !verified.ok => Some("wrong_password"),
            Some(u) if u.disabled => Some("disabled"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            self.audit_later(
                kinds::LOGIN_FAILED,
                meta,
                None,
                user.as_ref().map(|u| u.id),
                Some(serde_json::json!({ "reason": reason })),
            );
            return Err(Error::InvalidCredentials);
        }
        let Some(mut user) = user else { return Err(Error::InvalidCredentials) };
        self.login_succeeded(&account, meta).await;
        if self.snapshot().record.settings.require_verified_email && !user.email_verified {
            // Only a correct password learns this: a wrong one stays
            // INVALID_CREDENTIALS above.
            self.audit_later(
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
            if let Some(updated) = self.deps.store.update_user(self.rt.id, user.id, &change, None).await? {
                user = updated;
            }
        }
        // A user with TOTP gets a challenge, not tokens (`verifyMfa` finishes).
        let outcome = self.second_factor_or_tokens(user, vec!["pwd".into()], meta).await?;
        if let LoginOutcome::Tokens(tokens) = &outcome {
            let id = tokens.user.id;
            self.audit_later(
                kinds::LOGIN_SUCCEEDED,
                meta,
                Some(id),
                Some(id),
                Some(serde_json::json!({ "amr": ["pwd"] })),
            );
        }
        Ok(outcome)
    }

    /// Creates a session for a signed-in user and issues its first tokens.
    pub async fn start_session(&self, user: UserRecord, amr: Vec<String>, meta: &RequestMeta) -> Result<IssuedTokens> {
        let now = Utc::now().timestamp();
        let session = SessionRecord {
            id: SessionId::new(),
            user_id: user.id,
            created_at: now,
            last_used_at: now,
            user_agent: meta.user_agent.as_ref().map(|s| truncate(s, 512)),
            ip: meta.ip.clone(),
            amr,
        };
        let refresh = crypto::random_token(32);
        let hash = self.deps.keyring.keyed_hash(REFRESH_PURPOSE, refresh.as_bytes());
        self.deps.tokens.create_session(self.rt.id, &session, &hash, self.deps.config.refresh_token_ttl).await?;
        // Disabling wins every race with a sign-in in flight: it commits
        // `disabled` and then revokes the user's sessions. Reading the row
        // again after the session exists means either the revocation saw this
        // session, or this read sees `disabled` and ends the session here.
        match self.deps.store.user_by_id(self.rt.id, user.id).await? {
            Some(now) if !now.disabled => {}
            _ => {
                self.deps.tokens.revoke_session(self.rt.id, session.id, deny_ttl()).await?;
                return Err(Error::InvalidCredentials);
            }
        }
        let (access_token, expires_in) = self.sign_access(&user, &session)?;
        Ok(IssuedTokens { access_token, refresh_token: refresh, expires_in, session: session.id, user })
    }

    fn sign_access(&self, user: &UserRecord, session: &SessionRecord) -> Result<(String, u64)> {
        let (claims, lifetime) = self.access_claims(user, session.id, session.amr.clone());
        let token = self.snapshot().keys.sign(&claims, Utc::now())?;
        Ok((token, lifetime))
    }

    /// An access token for an OAuth client (single sign-on): the tenant's
    /// usual claims plus `client_id`, `scope` and the SSO session.
    pub(crate) fn client_access_token(
        &self,
        user: &UserRecord,
        sid: SessionId,
        amr: Vec<String>,
        client_id: &str,
        scope: &str,
        sso_sid: Option<SessionId>,
    ) -> Result<(String, u64)> {
        let (mut claims, lifetime) = self.access_claims(user, sid, amr);
        claims.client_id = Some(client_id.to_owned());
        claims.scope = Some(scope.to_owned());
        claims.sso_sid = sso_sid.map(|s| s.0);
        Ok((self.snapshot().keys.sign(&claims, Utc::now())?, lifetime))
    }

    /// A `client_credentials` access token: `sub` is the client id, no user,
    /// role `service` (so no user operation accepts it).
    pub(crate) fn service_access_token(&self, client_id: &str, scope: &str) -> Result<(String, u64)> {
        let snap = self.snapshot();
        let settings = &snap.record.settings;
        let lifetime = u64::from(settings.access_token_lifetime_minutes) * 60;
        let now = Utc::now().timestamp();
        let sub = Uuid::parse_str(client_id).map_err(Error::internal)?;
        let claims = AccessClaims {
            iss: self.issuer(),
            sub,
            aud: settings.audience_for(self.rt.slug.as_str()).to_owned(),
            tid: self.rt.id.0,
            sid: Uuid::new_v4(),
            jti: Uuid::new_v4(),
            iat: now,
            exp: now + i64::try_from(lifetime).unwrap_or(900),
            amr: Vec::new(),
            role: "service".into(),
            mfa_enrollment_required: false,
            client_id: Some(client_id.to_owned()),
            scope: Some(scope.to_owned()),
            sso_sid: None,
        };
        Ok((snap.keys.sign(&claims, Utc::now())?, lifetime))
    }

    fn access_claims(&self, user: &UserRecord, sid: SessionId, amr: Vec<String>) -> (AccessClaims, u64) {
        let snap = self.snapshot();
        let settings = &snap.record.settings;
        let lifetime = u64::from(settings.access_token_lifetime_minutes) * 60;
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer(),
            sub: user.id.0,
            aud: settings.audience_for(self.rt.slug.as_str()).to_owned(),
            tid: self.rt.id.0,
            sid: sid.0,
            jti: Uuid::new_v4(),
            iat: now,
            exp: now + i64::try_from(lifetime).unwrap_or(900),
            amr,
            role: user.role.as_str().to_owned(),
            mfa_enrollment_required: settings.require_mfa_for_admins && user.role == Role::Admin && !user.totp_enabled,
            client_id: None,
            scope: None,
            sso_sid: None,
        };
        (claims, lifetime)
    }

    // ------------------------------------------------------------ tokens

    /// Verifies an access token for this tenant: signature by one of the
    /// tenant's keys (algorithm pinned to the key), `iss`, `aud`, `exp`,
    /// `tid`, and that its session is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let snap = self.snapshot();
        let claims = snap.keys.verify(token, &self.issuer(), &self.audience(), Utc::now())?;
        if claims.tid != self.rt.id.0 {
            return Err(Error::Unauthenticated);
        }
        let sid = SessionId(claims.sid);
        if self.deps.tokens.is_session_denied(self.rt.id, sid).await? {
            return Err(Error::Unauthenticated);
        }
        // A client's token also ends with the SSO session it came from.
        if let Some(sso) = claims.sso_sid
            && self.deps.tokens.is_session_denied(self.rt.id, SessionId(sso)).await?
        {
            return Err(Error::Unauthenticated);
        }
        let role = Role::parse(&claims.role).map_err(|_| Error::Unauthenticated)?;
        Ok(Principal {
            user: UserId(claims.sub),
            session: sid,
            role,
            amr: claims.amr,
            mfa_enrollment_required: claims.mfa_enrollment_required,
            client_id: claims.client_id,
            scope: claims.scope,
        })
    }

    /// Rotates a refresh token. A token already rotated away revokes its
    /// whole session (`TOKEN_REUSED`): someone else holds a copy.
    pub async fn refresh(&self, refresh_token: &str, meta: &RequestMeta) -> Result<IssuedTokens> {
        if refresh_token.is_empty() || refresh_token.len() > 256 {
            return Err(Error::Unauthenticated);
        }
        let old = self.deps.keyring.keyed_hash(REFRESH_PURPOSE, refresh_token.as_bytes());
        // Refresh calls per session: a live token names its session.
        if let Some(session) = self.deps.tokens.session_by_refresh(self.rt.id, &old).await? {
            self.before_refresh(session.id, meta).await?;
        }
        let new_token = crypto::random_token(32);
        let new = self.deps.keyring.keyed_hash(REFRESH_PURPOSE, new_token.as_bytes());
        match self.rotate(refresh_token, &old, &new).await? {
            RotateOutcome::Rotated(session) => {
                let user = self.deps.store.user_by_id(self.rt.id, session.user_id).await?;
                let Some(user) = user.filter(|u| !u.disabled) else {
                    self.deps.tokens.revoke_session(self.rt.id, session.id, deny_ttl()).await?;
                    return Err(Error::Unauthenticated);
                };
                let (access_token, expires_in) = self.sign_access(&user, &session)?;
                Ok(IssuedTokens { access_token, refresh_token: new_token, expires_in, session: session.id, user })
            }
            RotateOutcome::Reused { session, user } => {
                self.audit_later(
                    kinds::REFRESH_REUSE_DETECTED,
                    meta,
                    None,
                    Some(user),
                    Some(serde_json::json!({ "sessionId": session.to_string() })),
                );
                Err(Error::TokenReused)
            }
            RotateOutcome::NotFound => Err(Error::Unauthenticated),
        }
    }

    /// Exchanges the refresh token (hashed as `old` under the current master
    /// key) for `new`. After a master-key rotation, tokens issued before it
    /// hash under a previous key: those are tried too (only while previous
    /// keys are configured).
    pub(crate) async fn rotate(&self, refresh_token: &str, old: &str, new: &str) -> Result<RotateOutcome> {
        self.rotate_as(REFRESH_PURPOSE, refresh_token, old, new).await
    }

    /// [`TenantCtx::rotate`] for tokens hashed under `purpose` (an OAuth
    /// client's grant has its own, so its tokens never work at `refresh`).
    pub(crate) async fn rotate_as(
        &self,
        purpose: &str,
        refresh_token: &str,
        old: &str,
        new: &str,
    ) -> Result<RotateOutcome> {
        let now = Utc::now().timestamp();
        let ttl = self.deps.config.refresh_token_ttl;
        let mut outcome = self.deps.tokens.rotate_refresh(self.rt.id, old, new, now, ttl).await?;
        if outcome == RotateOutcome::NotFound {
            for candidate in self.deps.keyring.keyed_hash_candidates(purpose, refresh_token.as_bytes()).iter().skip(1) {
                outcome = self.deps.tokens.rotate_refresh(self.rt.id, candidate, new, now, ttl).await?;
                if outcome != RotateOutcome::NotFound {
                    break;
                }
            }
        }
        Ok(outcome)
    }

    /// Revokes the session of `refresh_token`, or else the caller's session.
    ///
    /// The token is found the way `refresh` finds it (under every configured
    /// master key), by rotating it to a throw-away successor that the
    /// revocation then ends with its session. A token that its session
    /// already rotated away ends the whole session, as its reuse would: a
    /// logout never silently leaves a session alive.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        principal: Option<&Principal>,
        meta: &RequestMeta,
    ) -> Result<bool> {
        let session = match refresh_token {
            Some(t) if !t.is_empty() && t.len() <= 256 => {
                let old = self.deps.keyring.keyed_hash(REFRESH_PURPOSE, t.as_bytes());
                let throwaway = self.deps.keyring.keyed_hash(REFRESH_PURPOSE, crypto::random_token(32).as_bytes());
                match self.rotate(t, &old, &throwaway).await? {
                    RotateOutcome::Rotated(s) => Some((s.id, s.user_id)),
                    RotateOutcome::Reused { session, user } => {
                        // The store revoked the session already.
                        self.audit_later(
                            kinds::REFRESH_REUSE_DETECTED,
                            meta,
                            None,
                            Some(user),
                            Some(serde_json::json!({ "sessionId": session.to_string(), "via": "logout" })),
                        );
                        self.audit_later(
                            kinds::SESSION_LOGOUT,
                            meta,
                            Some(user),
                            Some(user),
                            Some(serde_json::json!({ "sessionId": session.to_string() })),
                        );
                        return Ok(true);
                    }
                    RotateOutcome::NotFound => None,
                }
            }
            Some(_) => None,
            None => principal.map(|p| (p.session, p.user)),
        };
        let Some((sid, user)) = session else {
            return if refresh_token.is_some() { Ok(false) } else { Err(Error::Unauthenticated) };
        };
        let revoked = self.deps.tokens.revoke_session(self.rt.id, sid, deny_ttl()).await?;
        if revoked {
            self.audit_later(
                kinds::SESSION_LOGOUT,
                meta,
                Some(user),
                Some(user),
                Some(serde_json::json!({ "sessionId": sid.to_string() })),
            );
        }
        Ok(revoked)
    }

    pub async fn logout_all(&self, p: &Principal, meta: &RequestMeta) -> Result<u64> {
        let n = self.deps.tokens.revoke_user_sessions(self.rt.id, p.user, None, deny_ttl()).await?;
        self.audit_later(
            kinds::SESSION_LOGOUT_ALL,
            meta,
            Some(p.user),
            Some(p.user),
            Some(serde_json::json!({ "revoked": n })),
        );
        Ok(n)
    }

    pub async fn sessions(&self, p: &Principal) -> Result<Vec<SessionRecord>> {
        Ok(self.deps.tokens.list_sessions(self.rt.id, p.user).await?)
    }

    /// Revokes one of the caller's own sessions.
    pub async fn revoke_session(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<bool> {
        let sid: SessionId = id.parse().map_err(|_| Error::bad_input("id", "not a session id"))?;
        match self.deps.tokens.get_session(self.rt.id, sid).await? {
            Some(s) if s.user_id == p.user => {}
            _ => return Ok(false),
        }
        let revoked = self.deps.tokens.revoke_session(self.rt.id, sid, deny_ttl()).await?;
        if revoked {
            self.audit_later(
                kinds::SESSION_REVOKED,
                meta,
                Some(p.user),
                Some(p.user),
                Some(serde_json::json!({ "sessionId": sid.to_string() })),
            );
        }
        Ok(revoked)
    }

    /// The caller's user row; a deleted or disabled user is unauthenticated.
    pub async fn me(&self, p: &Principal) -> Result<UserRecord> {
        match self.deps.store.user_by_id(self.rt.id, p.user).await? {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(Error::Unauthenticated),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
