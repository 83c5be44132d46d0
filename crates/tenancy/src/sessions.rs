//! Sessions and tokens of one tenant: starting a session, signing access
//! tokens, verifying them, rotating refresh tokens with reuse detection,
//! logout and revocation. A session lives in the token store (Redis, or the
//! embedded SQLite file); the user row it belongs to lives in storage.

use std::time::Duration;

use authd_core::claims::AccessClaims;
use authd_core::settings::Role;
use authd_core::{Error, Result, SessionId, UserId};
use authd_store::UserRecord;
use authd_tokens::{FIRST_GENERATION, RotateOutcome, SessionLimit, SessionRecord};
use chrono::Utc;
use uuid::Uuid;

use crate::audit::{RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::refresh::RefreshTokens;

/// Keyed-hash purpose of refresh tokens (the MAC of a token, the hash of
/// one from before tokens named their session).
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

/// Sessions and tokens, reached through [`TenantCtx::sessions`].
pub struct SessionService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl SessionService<'_> {
    /// Creates a session for a signed-in user and issues its first tokens.
    pub async fn start(&self, user: UserRecord, amr: Vec<String>, meta: &RequestMeta) -> Result<IssuedTokens> {
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
        self.ctx.deps.tokens.create_session(self.ctx.rt.id, &session, self.ctx.deps.config.refresh_token_ttl).await?;
        let refresh = self.refresh_tokens(REFRESH_PURPOSE).issue(session.id, FIRST_GENERATION);
        // Disabling wins every race with a sign-in in flight: it commits
        // `disabled` and then revokes the user's sessions. Reading the row
        // again after the session exists means either the revocation saw this
        // session, or this read sees `disabled` and ends the session here.
        match self.ctx.deps.store.user_by_id(self.ctx.rt.id, user.id).await? {
            Some(now) if !now.disabled => {}
            _ => {
                self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, session.id, deny_ttl()).await?;
                return Err(Error::InvalidCredentials);
            }
        }
        let (access_token, expires_in) = self.sign_access(&user, &session)?;
        Ok(IssuedTokens { access_token, refresh_token: refresh, expires_in, session: session.id, user })
    }

    fn sign_access(&self, user: &UserRecord, session: &SessionRecord) -> Result<(String, u64)> {
        let (claims, lifetime) = self.access_claims(user, session.id, session.amr.clone());
        let token = self.ctx.snapshot().keys.sign(&claims, Utc::now())?;
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
        Ok((self.ctx.snapshot().keys.sign(&claims, Utc::now())?, lifetime))
    }

    /// A `client_credentials` access token: `sub` is the client id, no user,
    /// role `service` (so no user operation accepts it).
    pub(crate) fn service_access_token(&self, client_id: &str, scope: &str) -> Result<(String, u64)> {
        let snap = self.ctx.snapshot();
        let settings = &snap.record.settings;
        let lifetime = u64::from(settings.access_token_lifetime_minutes) * 60;
        let now = Utc::now().timestamp();
        let sub = Uuid::parse_str(client_id).map_err(Error::internal)?;
        let claims = AccessClaims {
            iss: self.ctx.issuer(),
            sub,
            aud: settings.audience_for(self.ctx.rt.slug.as_str()).to_owned(),
            tid: self.ctx.rt.id.0,
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
        let snap = self.ctx.snapshot();
        let settings = &snap.record.settings;
        let lifetime = u64::from(settings.access_token_lifetime_minutes) * 60;
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.ctx.issuer(),
            sub: user.id.0,
            aud: settings.audience_for(self.ctx.rt.slug.as_str()).to_owned(),
            tid: self.ctx.rt.id.0,
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

    /// Verifies an access token for this tenant: signature by one of the
    /// tenant's keys (algorithm pinned to the key), `iss`, `aud`, `exp`,
    /// `tid`, and that its session is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let snap = self.ctx.snapshot();
        let claims = snap.keys.verify(token, &self.ctx.issuer(), &self.ctx.audience(), Utc::now())?;
        if claims.tid != self.ctx.rt.id.0 {
            return Err(Error::Unauthenticated);
        }
        let sid = SessionId(claims.sid);
        if self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, sid).await? {
            return Err(Error::Unauthenticated);
        }
        // A client's token also ends with the SSO session it came from.
        if let Some(sso) = claims.sso_sid
            && self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, SessionId(sso)).await?
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
        // Refresh calls per session, counted by the rotation itself (the
        // token names its session): one round trip for lookup, limit and
        // rotation.
        let limit = self.ctx.limits().refresh_limit();
        let (outcome, next) = self.rotate_as(REFRESH_PURPOSE, refresh_token, Some(&limit)).await?;
        match outcome {
            RotateOutcome::Limited { retry_after_ms } => Err(self.ctx.limits().refresh_refused(retry_after_ms, meta)),
            RotateOutcome::Rotated(session) => {
                let user = self.ctx.user(session.user_id).await?;
                let Some(user) = user.filter(|u| !u.disabled) else {
                    self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, session.id, deny_ttl()).await?;
                    return Err(Error::Unauthenticated);
                };
                let (access_token, expires_in) = self.sign_access(&user, &session)?;
                let refresh_token = self.refresh_tokens(REFRESH_PURPOSE).issue(session.id, next);
                Ok(IssuedTokens { access_token, refresh_token, expires_in, session: session.id, user })
            }
            RotateOutcome::Reused { session, user } => {
                self.reuse_detected(session, user, None, meta);
                Err(Error::TokenReused)
            }
            RotateOutcome::NotFound => Err(Error::Unauthenticated),
        }
    }

    /// Audits a rotated-away token presented again (the token store has
    /// revoked its session already); `via` names the operation when it is
    /// not `refresh`.
    fn reuse_detected(&self, session: SessionId, user: UserId, via: Option<&str>, meta: &RequestMeta) {
        let mut detail = serde_json::json!({ "sessionId": session.to_string() });
        if let Some(via) = via {
            detail["via"] = via.into();
        }
        self.ctx.audit_later(kinds::REFRESH_REUSE_DETECTED, meta, None, Some(user), Some(detail));
    }

    /// Refresh tokens of kind `purpose` (an OAuth client's grant has its
    /// own, so its tokens never work at `refresh`) for this tenant.
    pub(crate) fn refresh_tokens(&self, purpose: &'static str) -> RefreshTokens<'_> {
        RefreshTokens { keyring: &self.ctx.deps.keyring, purpose, tenant: self.ctx.rt.id }
    }

    /// Rotates the refresh token `refresh_token` of kind `purpose` (see
    /// `TokenStore::rotate_refresh`). Returns the outcome, and the generation
    /// of the token to issue if it rotated. A token from before tokens named
    /// their session is looked up under every configured master key.
    pub(crate) async fn rotate_as(
        &self,
        purpose: &'static str,
        refresh_token: &str,
        limit: Option<&SessionLimit<'_>>,
    ) -> Result<(RotateOutcome, u64)> {
        let now = Utc::now().timestamp();
        let ttl = self.ctx.deps.config.refresh_token_ttl;
        let tokens = &self.ctx.deps.tokens;
        let presented = self.refresh_tokens(purpose).read(refresh_token);
        for key in presented.keys() {
            let outcome = tokens.rotate_refresh(self.ctx.rt.id, key, now, ttl, limit).await?;
            if outcome != RotateOutcome::NotFound {
                return Ok((outcome, key.next_generation()));
            }
        }
        Ok((RotateOutcome::NotFound, FIRST_GENERATION))
    }

    /// The live session whose current refresh token of kind `purpose` is
    /// `refresh_token`, if any. Looking up is not using: nothing rotates.
    pub(crate) async fn session_of(&self, purpose: &'static str, refresh_token: &str) -> Result<Option<SessionRecord>> {
        for key in self.refresh_tokens(purpose).read(refresh_token).keys() {
            if let Some(session) = self.ctx.deps.tokens.session_by_refresh(self.ctx.rt.id, key).await? {
                return Ok(Some(session));
            }
        }
        Ok(None)
    }

    /// Revokes the session of `refresh_token`, or else the caller's session.
    ///
    /// The token is found the way `refresh` finds it, by rotating it (its
    /// successor is never issued) before the revocation ends its session. A
    /// token that its session already rotated away ends the whole session, as
    /// its reuse would: a logout never silently leaves a session alive.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        principal: Option<&Principal>,
        meta: &RequestMeta,
    ) -> Result<bool> {
        let session = match refresh_token {
            Some(t) if !t.is_empty() && t.len() <= 256 => {
                match self.rotate_as(REFRESH_PURPOSE, t, None).await?.0 {
                    RotateOutcome::Rotated(s) => Some((s.id, s.user_id)),
                    RotateOutcome::Reused { session, user } => {
                        // The store revoked the session already.
                        self.reuse_detected(session, user, Some("logout"), meta);
                        self.ctx.audit_later(
                            kinds::SESSION_LOGOUT,
                            meta,
                            Some(user),
                            Some(user),
                            Some(serde_json::json!({ "sessionId": session.to_string() })),
                        );
                        return Ok(true);
                    }
                    RotateOutcome::NotFound => None,
                    // No limit was asked for.
                    RotateOutcome::Limited { .. } => None,
                }
            }
            Some(_) => None,
            None => principal.map(|p| (p.session, p.user)),
        };
        let Some((sid, user)) = session else {
            return if refresh_token.is_some() { Ok(false) } else { Err(Error::Unauthenticated) };
        };
        let revoked = self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, sid, deny_ttl()).await?;
        if revoked {
            self.ctx.audit_later(
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
        let n = self.ctx.deps.tokens.revoke_user_sessions(self.ctx.rt.id, p.user, None, deny_ttl()).await?;
        self.ctx.audit_later(
            kinds::SESSION_LOGOUT_ALL,
            meta,
            Some(p.user),
            Some(p.user),
            Some(serde_json::json!({ "revoked": n })),
        );
        Ok(n)
    }

    pub async fn list(&self, p: &Principal) -> Result<Vec<SessionRecord>> {
        Ok(self.ctx.deps.tokens.list_sessions(self.ctx.rt.id, p.user).await?)
    }

    /// Revokes one of the caller's own sessions.
    pub async fn revoke(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<bool> {
        let sid: SessionId = id.parse().map_err(|_| Error::bad_input("id", "not a session id"))?;
        match self.ctx.deps.tokens.get_session(self.ctx.rt.id, sid).await? {
            Some(s) if s.user_id == p.user => {}
            _ => return Ok(false),
        }
        let revoked = self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, sid, deny_ttl()).await?;
        if revoked {
            self.ctx.audit_later(
                kinds::SESSION_REVOKED,
                meta,
                Some(p.user),
                Some(p.user),
                Some(serde_json::json!({ "sessionId": sid.to_string() })),
            );
        }
        Ok(revoked)
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
