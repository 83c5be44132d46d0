//! Single sign-on: each tenant is a standard OpenID provider.
//!
//! - **Clients** are the tenant's OAuth clients (`oauth_clients`, under RLS):
//!   confidential (a secret shown once, kept as a keyed hash) or public,
//!   first-party (no consent) or third-party.
//! - **Authorize** validates a request, then either answers at once (a code,
//!   or an RFC 6749 error, redirected only to a registered URI) or parks the
//!   request in the token store (10 minutes) and sends the browser to the
//!   hosted sign-in page, which finishes it after a sign-in and, for a
//!   third-party client, a consent.
//! - **The SSO session** is an ordinary session of the token store (so
//!   `sessions` lists it and `logout`, `logoutAll`, `revokeSession` and
//!   `setUserDisabled` end it), named by an `HttpOnly` cookie whose value the
//!   token store keeps only as a keyed hash.
//! - **Codes** are single use and live 60 s; a code exchange creates a
//!   *grant* session for the client (its access tokens carry that session's
//!   `sid`, and the SSO session's id as `sso_sid`, so logging out of the SSO
//!   session ends them too); a refresh token is handed out only with
//!   `offline_access`, and survives the SSO session as offline access
//!   should. A code presented twice revokes the grant it produced.
//!
//! The hosted pages reuse `login`, `verifyMfa` and the social-login flow, so
//! every limit, lockout, `requireVerifiedEmail` rule and audit event of
//! those applies unchanged.

use std::collections::BTreeSet;
use std::time::Duration;

use authd_core::claims::IdClaims;
use authd_core::{Error, Result, SessionId, UserId, crypto};
use authd_store::{OAuthClientRecord, UserRecord};
use authd_tokens::{FIRST_GENERATION, RotateOutcome, SessionRecord};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::oauth::{s256, valid_challenge, with_query};
use crate::sessions::{IssuedTokens, Principal, deny_ttl};

/// The scopes a client may ask for.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The grant types the token endpoint speaks.
pub const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

const REQUEST_KIND: &str = "authz_request";
const CODE_KIND: &str = "authz_code";
const USED_CODE_KIND: &str = "authz_code_used";
const SSO_KIND: &str = "sso_session";
const GRANT_KIND: &str = "oidc_grant";
const SECRET_PURPOSE: &str = "oauth-client-secret";
const CODE_PURPOSE: &str = "authz-code";
const SSO_PURPOSE: &str = "sso-cookie";
/// Grant refresh tokens hash under a purpose of their own: the GraphQL
/// `refresh` and `logout` (which hash under `refresh-token`) never find them,
/// so a client's token cannot be turned into one without `client_id`.
const REFRESH_PURPOSE: &str = "oidc-refresh-token";

/// How long a parked authorization request waits for the person.
pub const REQUEST_TTL: Duration = Duration::from_secs(600);
/// How long a code lives.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a used code is remembered (to revoke what it gave on reuse).
const USED_CODE_TTL: Duration = Duration::from_secs(600);

// ------------------------------------------------------------------ clients

/// `OAuthClientInput`.
pub struct ClientInput {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Option<Vec<String>>,
    pub public: bool,
    pub first_party: bool,
    pub grant_types: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
}

fn check_uris(field: &str, uris: &[String]) -> Result<()> {
    for u in uris {
        let parsed = url::Url::parse(u).map_err(|_| Error::bad_input(field, format!("not an absolute URL: {u}")))?;
        if parsed.fragment().is_some() || parsed.cannot_be_a_base() {
            return Err(Error::bad_input(field, format!("a redirect URI has no fragment: {u}")));
        }
        if !matches!(parsed.scheme(), "https" | "http") && !parsed.scheme().contains('.') {
            return Err(Error::bad_input(field, format!("https, http or a private-use scheme: {u}")));
        }
    }
    Ok(())
}

impl ClientInput {
    fn validate(&self) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(Error::bad_input("name", "1 to 100 printable characters"));
        }
        let grants =
            self.grant_types.clone().unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
        if grants.is_empty() || grants.iter().any(|g| !GRANT_TYPES.contains(&g.as_str())) {
            return Err(Error::bad_input("grantTypes", format!("some of {}", GRANT_TYPES.join(", "))));
        }
        if self.public && grants.iter().any(|g| g == "client_credentials") {
            return Err(Error::bad_input("grantTypes", "a public client has no secret: no client_credentials"));
        }
        let only_client_credentials = grants.iter().all(|g| g == "client_credentials");
        if self.redirect_uris.is_empty() && !only_client_credentials {
            return Err(Error::bad_input("redirectUris", "at least one, unless the only grant is client_credentials"));
        }
        check_uris("redirectUris", &self.redirect_uris)?;
        let post = self.post_logout_redirect_uris.clone().unwrap_or_default();
        check_uris("postLogoutRedirectUris", &post)?;
        let scopes = self.scopes.clone().unwrap_or_else(|| SCOPES.iter().map(|s| (*s).to_owned()).collect());
        if scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
            return Err(Error::bad_input("scopes", format!("some of {}", SCOPES.join(", "))));
        }
        let dedup = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>();
        Ok((dedup(grants), dedup(scopes), post))
    }
}

// ------------------------------------------------------------------ state

/// A parked authorization request.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuthzRequest {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    /// `prompt=login` or an exceeded `max_age`: a sign-in after `created_ms` is needed.
    pub fresh_login: bool,
    pub max_age: Option<i64>,
    pub prompt_consent: bool,
    pub login_hint: Option<String>,
    pub created_ms: i64,
    /// The PKCE verifier of a social login started from the hosted page.
    #[serde(default)]
    pub social_verifier: Option<String>,
}

/// The SSO session behind the cookie.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SsoSession {
    pub sid: SessionId,
    pub user: UserId,
    pub auth_time: i64,
    pub amr: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct CodeRecord {
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    nonce: Option<String>,
    code_challenge: String,
    sso: SsoSession,
    expires_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct UsedCode {
    grant: SessionId,
}

/// What a grant session was issued for.
#[derive(Serialize, Deserialize)]
struct Grant {
    client_id: String,
    scopes: Vec<String>,
    auth_time: i64,
    sso: SessionId,
}

/// What to do with the browser.
pub enum Next {
    /// Show the sign-in form.
    Login,
    /// Show the consent form for these scopes.
    Consent { scopes: Vec<String> },
    /// Send the browser here (the client, with a code or an error).
    Redirect(String),
}

/// The authorization endpoint's answer.
pub enum AuthorizeOutcome {
    /// No trustworthy redirect URI: show this message.
    ErrorPage(String),
    /// Redirect the browser (to the client, or to the hosted page).
    Redirect(String),
}

/// `GET /oauth2/authorize` parameters.
#[derive(Default, Deserialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
}

/// Client authentication presented at the token, introspection and
/// revocation endpoints.
#[derive(Default)]
pub struct ClientAuth {
    /// From HTTP Basic: (client id, secret), already form-decoded.
    pub basic: Option<(String, String)>,
    /// `client_id` and `client_secret` of the body.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// An OAuth error response (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    /// Seconds, for `RATE_LIMITED`.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into(), retry_after: None }
    }
    fn grant(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", d)
    }
    fn request(d: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", d)
    }
    fn client() -> Self {
        Self::new(401, "invalid_client", "client authentication failed")
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        match e {
            Error::RateLimited { retry_after } => Self {
                status: 429,
                error: "slow_down",
                description: "too many requests".into(),
                retry_after: Some(retry_after),
            },
            Error::Unavailable(c) => {
                tracing::warn!(cause = %c, "token endpoint: backing service unavailable");
                Self::new(503, "temporarily_unavailable", "retry later")
            }
            Error::BadInput { message, .. } => Self::request(message),
            other => {
                if let Some(c) = other.cause() {
                    tracing::error!(cause = c, "token endpoint failed");
                }
                Self::new(500, "server_error", "internal error")
            }
        }
    }
}

impl From<authd_store::Error> for OAuthError {
    fn from(e: authd_store::Error) -> Self {
        Error::from(e).into()
    }
}

impl From<authd_tokens::Error> for OAuthError {
    fn from(e: authd_tokens::Error) -> Self {
        Error::from(e).into()
    }
}

pub type OAuthResult<T> = std::result::Result<T, OAuthError>;

/// The tenant's OpenID provider, reached through [`TenantCtx::sso`].
pub struct SsoService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

fn scope_set(scopes: &[String]) -> String {
    scopes.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(" ")
}

fn now_s() -> i64 {
    Utc::now().timestamp()
}

impl SsoService<'_> {
    fn issuer(&self) -> String {
        self.ctx.issuer()
    }

    async fn admin(&self, p: &Principal) -> Result<UserRecord> {
        self.ctx.admin().require_admin(p).await
    }

    fn secret_hash(&self, secret: &str) -> String {
        self.ctx.deps.keyring.keyed_hash(SECRET_PURPOSE, secret.as_bytes())
    }

    // -------------------------------------------------------------- admin

    pub async fn clients(&self, p: &Principal) -> Result<Vec<OAuthClientRecord>> {
        self.admin(p).await?;
        Ok(self.ctx.deps.store.oauth_clients(self.ctx.rt.id).await?)
    }

    /// Creates a client; a confidential one's secret is returned once.
    pub async fn create_client(
        &self,
        p: &Principal,
        input: ClientInput,
        meta: &RequestMeta,
    ) -> Result<(OAuthClientRecord, Option<String>)> {
        let admin = self.admin(p).await?;
        let (grant_types, scopes, post) = input.validate()?;
        let secret = (!input.public).then(|| crypto::random_token(32));
        let now = Utc::now();
        let record = OAuthClientRecord {
            client_id: uuid::Uuid::new_v4().to_string(),
            name: input.name.trim().to_owned(),
            secret_hash: secret.as_deref().map(|s| self.secret_hash(s)),
            redirect_uris: input.redirect_uris,
            post_logout_redirect_uris: post,
            public: input.public,
            first_party: input.first_party,
            grant_types,
            scopes,
            created_at: now,
            updated_at: now,
        };
        let event = audit::event(
            kinds::OAUTH_CLIENT_CREATED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "clientId": record.client_id, "name": record.name, "public": record.public })),
        );
        let saved = self.ctx.deps.store.save_oauth_client(self.ctx.rt.id, &record, true, &event).await?;
        audit::log_event(self.ctx.rt.id, &event);
        Ok((saved.unwrap_or(record), secret))
    }

    pub async fn update_client(
        &self,
        p: &Principal,
        client_id: &str,
        input: ClientInput,
        meta: &RequestMeta,
    ) -> Result<OAuthClientRecord> {
        let admin = self.admin(p).await?;
        let old = self
            .ctx
            .deps
            .store
            .oauth_client(self.ctx.rt.id, client_id)
            .await?
            .ok_or_else(|| Error::bad_input("clientId", "no such client"))?;
        if input.public != old.public {
            return Err(Error::bad_input("public", "a client cannot change between public and confidential"));
        }
        let (grant_types, scopes, post) = input.validate()?;
        let record = OAuthClientRecord {
            name: input.name.trim().to_owned(),
            redirect_uris: input.redirect_uris,
            post_logout_redirect_uris: post,
            first_party: input.first_party,
            grant_types,
            scopes,
            updated_at: Utc::now(),
            ..old
        };
        let event = audit::event(
            kinds::OAUTH_CLIENT_CHANGED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "clientId": client_id })),
        );
        let saved = self
            .ctx
            .deps
            .store
            .save_oauth_client(self.ctx.rt.id, &record, false, &event)
            .await?
            .ok_or_else(|| Error::bad_input("clientId", "no such client"))?;
        audit::log_event(self.ctx.rt.id, &event);
        Ok(saved)
    }

    /// A new secret for a confidential client; the old one stops working.
    pub async fn rotate_secret(
        &self,
        p: &Principal,
        client_id: &str,
        meta: &RequestMeta,
    ) -> Result<(OAuthClientRecord, String)> {
        let admin = self.admin(p).await?;
        let secret = crypto::random_token(32);
        let event = audit::event(
            kinds::OAUTH_CLIENT_CHANGED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "clientId": client_id, "secretRotated": true })),
        );
        let saved = self
            .ctx
            .deps
            .store
            .set_oauth_client_secret(self.ctx.rt.id, client_id, &self.secret_hash(&secret), &event)
            .await?
            .ok_or_else(|| Error::bad_input("clientId", "no such confidential client"))?;
        audit::log_event(self.ctx.rt.id, &event);
        Ok((saved, secret))
    }

    pub async fn delete_client(&self, p: &Principal, client_id: &str, meta: &RequestMeta) -> Result<bool> {
        let admin = self.admin(p).await?;
        let event = audit::event(
            kinds::OAUTH_CLIENT_DELETED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "clientId": client_id })),
        );
        let deleted = self.ctx.deps.store.delete_oauth_client(self.ctx.rt.id, client_id, &event).await?;
        if deleted {
            audit::log_event(self.ctx.rt.id, &event);
        }
        Ok(deleted)
    }

    /// A user withdraws a consent (the client must ask again).
    pub async fn revoke_consent(&self, p: &Principal, client_id: &str) -> Result<bool> {
        Ok(self.ctx.deps.store.revoke_consent(self.ctx.rt.id, p.user, client_id).await?)
    }

    // -------------------------------------------------------------- authorize

    /// `GET /oauth2/authorize`.
    pub async fn authorize(
        &self,
        q: AuthorizeParams,
        cookie: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<AuthorizeOutcome> {
        let Some(client_id) = q.client_id.as_deref() else {
            return Ok(AuthorizeOutcome::ErrorPage("The application did not say who it is (client_id).".into()));
        };
        let Some(client) = self.ctx.deps.store.oauth_client(self.ctx.rt.id, client_id).await? else {
            return Ok(AuthorizeOutcome::ErrorPage("This application is not known here.".into()));
        };
        let Some(redirect_uri) = q.redirect_uri.clone().filter(|u| client.redirect_uris.contains(u)) else {
            return Ok(AuthorizeOutcome::ErrorPage(
                "The application asked to return to an address it did not register.".into(),
            ));
        };
        let fail = |error: &str, description: &str| {
            let mut pairs = vec![("error", error), ("error_description", description)];
            if let Some(s) = q.state.as_deref() {
                pairs.push(("state", s));
            }
            let iss = self.issuer();
            pairs.push(("iss", iss.as_str()));
            Ok(AuthorizeOutcome::Redirect(with_query(&redirect_uri, &pairs)))
        };
        if q.response_type.as_deref() != Some("code") {
            return fail("unsupported_response_type", "response_type must be code");
        }
        if !client.grant_types.iter().any(|g| g == "authorization_code") {
            return fail("unauthorized_client", "this client may not use the authorization code flow");
        }
        let challenge = q.code_challenge.clone().unwrap_or_default();
        if q.code_challenge_method.as_deref() != Some("S256") || !valid_challenge(&challenge) {
            return fail("invalid_request", "PKCE with code_challenge_method S256 is required");
        }
        let scopes: Vec<String> =
            q.scope.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if !scopes.iter().any(|s| s == "openid") {
            return fail("invalid_scope", "the openid scope is required");
        }
        if scopes.iter().any(|s| !client.scopes.contains(s)) {
            return fail("invalid_scope", "a scope this client may not ask for");
        }
        let prompts: Vec<&str> = q.prompt.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty()).collect();
        if prompts.contains(&"none") && prompts.len() > 1 {
            return fail("invalid_request", "prompt=none stands alone");
        }
        let max_age = match q.max_age.as_deref() {
            None | Some("") => None,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => return fail("invalid_request", "max_age is a number of seconds"),
            },
        };
        let request = AuthzRequest {
            client_id: client.client_id.clone(),
            client_name: client.name.clone(),
            redirect_uri: redirect_uri.clone(),
            scopes: scopes.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
            state: q.state.clone(),
            nonce: q.nonce.clone(),
            code_challenge: challenge,
            fresh_login: prompts.contains(&"login"),
            max_age,
            prompt_consent: prompts.contains(&"consent"),
            login_hint: q.login_hint.clone(),
            created_ms: self.ctx.deps.clock.now_ms(),
            social_verifier: None,
        };
        let sso = self.sso_session(cookie).await?;
        let next = self.next_step(&request, sso.as_ref(), &client).await?;
        match next {
            Next::Redirect(url) => Ok(AuthorizeOutcome::Redirect(url)),
            Next::Login if prompts.contains(&"none") => fail("login_required", "no sign-in session"),
            Next::Consent { .. } if prompts.contains(&"none") => fail("consent_required", "consent is needed"),
            Next::Login | Next::Consent { .. } => {
                let id = crypto::random_token(24);
                let value = serde_json::to_string(&request).map_err(Error::internal)?;
                self.ctx.deps.tokens.put_once(self.ctx.rt.id, REQUEST_KIND, &id, &value, REQUEST_TTL).await?;
                let _ = meta;
                Ok(AuthorizeOutcome::Redirect(format!("{}/login?request={id}", self.issuer())))
            }
        }
    }

    /// What the request needs next, given the SSO session.
    async fn next_step(&self, r: &AuthzRequest, sso: Option<&SsoSession>, client: &OAuthClientRecord) -> Result<Next> {
        let Some(sso) = sso else { return Ok(Next::Login) };
        let now = now_s();
        if r.fresh_login && sso.auth_time * 1000 < r.created_ms {
            return Ok(Next::Login);
        }
        if r.max_age.is_some_and(|m| now - sso.auth_time > m) {
            return Ok(Next::Login);
        }
        if !client.first_party {
            let granted = self.ctx.deps.store.consent(self.ctx.rt.id, sso.user, &client.client_id).await?;
            let covered = granted.is_some_and(|g| {
                let have: BTreeSet<&str> = g.split(' ').collect();
                r.scopes.iter().all(|s| have.contains(s.as_str()))
            });
            if !covered || r.prompt_consent {
                return Ok(Next::Consent { scopes: r.scopes.clone() });
            }
        }
        Ok(Next::Redirect(self.issue_code(r, sso).await?))
    }

    async fn issue_code(&self, r: &AuthzRequest, sso: &SsoSession) -> Result<String> {
        let code = crypto::random_token(32);
        let hash = self.ctx.deps.keyring.keyed_hash(CODE_PURPOSE, code.as_bytes());
        let record = CodeRecord {
            client_id: r.client_id.clone(),
            redirect_uri: r.redirect_uri.clone(),
            scopes: r.scopes.clone(),
            nonce: r.nonce.clone(),
            code_challenge: r.code_challenge.clone(),
            sso: sso.clone(),
            expires_ms: self.ctx.deps.clock.now_ms() + i64::try_from(CODE_TTL.as_millis()).unwrap_or(60_000),
        };
        let value = serde_json::to_string(&record).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, CODE_KIND, &hash, &value, CODE_TTL).await?;
        let iss = self.issuer();
        let mut pairs = vec![("code", code.as_str())];
        if let Some(s) = r.state.as_deref() {
            pairs.push(("state", s));
        }
        pairs.push(("iss", iss.as_str()));
        Ok(with_query(&r.redirect_uri, &pairs))
    }

    // -------------------------------------------------------------- hosted pages

    /// A parked request, if it is still there.
    pub async fn request(&self, id: &str) -> Result<Option<AuthzRequest>> {
        if id.is_empty() || id.len() > 64 {
            return Ok(None);
        }
        let raw = self.ctx.deps.tokens.peek(self.ctx.rt.id, REQUEST_KIND, id).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// The SSO session behind `cookie`, while it lasts (not revoked, its
    /// user enabled).
    pub async fn sso_session(&self, cookie: Option<&str>) -> Result<Option<SsoSession>> {
        let Some(cookie) = cookie.filter(|c| !c.is_empty() && c.len() <= 64) else { return Ok(None) };
        let hash = self.ctx.deps.keyring.keyed_hash(SSO_PURPOSE, cookie.as_bytes());
        let Some(raw) = self.ctx.deps.tokens.peek(self.ctx.rt.id, SSO_KIND, &hash).await? else { return Ok(None) };
        let Ok(sso) = serde_json::from_str::<SsoSession>(&raw) else { return Ok(None) };
        if self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, sso.sid).await?
            || self.ctx.deps.tokens.get_session(self.ctx.rt.id, sso.sid).await?.is_none()
        {
            return Ok(None);
        }
        match self.ctx.deps.store.user_by_id(self.ctx.rt.id, sso.user).await? {
            Some(u) if !u.disabled => Ok(Some(sso)),
            _ => Ok(None),
        }
    }

    /// Turns a finished sign-in (its session) into the SSO session; returns
    /// the cookie value.
    pub async fn start_sso(
        &self,
        tokens: &IssuedTokens,
        amr: Vec<String>,
        meta: &RequestMeta,
    ) -> Result<(String, SsoSession)> {
        let cookie = crypto::random_token(32);
        let hash = self.ctx.deps.keyring.keyed_hash(SSO_PURPOSE, cookie.as_bytes());
        let sso = SsoSession { sid: tokens.session, user: tokens.user.id, auth_time: now_s(), amr };
        let value = serde_json::to_string(&sso).map_err(Error::internal)?;
        let ttl = self.ctx.deps.config.refresh_token_ttl;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, SSO_KIND, &hash, &value, ttl).await?;
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::SSO_LOGIN_SUCCEEDED,
                meta,
                Some(sso.user),
                Some(sso.user),
                Some(serde_json::json!({ "sessionId": sso.sid.to_string(), "amr": sso.amr })),
            ),
        );
        Ok((cookie, sso))
    }

    /// After a sign-in or on a visit: what the parked request needs next.
    /// A redirect to the client uses the request up.
    pub async fn continue_request(&self, id: &str, sso: Option<&SsoSession>) -> Result<Option<Next>> {
        let Some(r) = self.request(id).await? else { return Ok(None) };
        let Some(client) = self.ctx.deps.store.oauth_client(self.ctx.rt.id, &r.client_id).await? else {
            return Ok(None);
        };
        let next = self.next_step(&r, sso, &client).await?;
        if matches!(next, Next::Redirect(_)) {
            self.ctx.deps.tokens.take_once(self.ctx.rt.id, REQUEST_KIND, id).await?;
        }
        Ok(Some(next))
    }

    /// The person's answer on the consent form.
    pub async fn decide(&self, id: &str, sso: &SsoSession, allow: bool, meta: &RequestMeta) -> Result<Option<String>> {
        let Some(r) = self.request(id).await? else { return Ok(None) };
        self.ctx.deps.tokens.take_once(self.ctx.rt.id, REQUEST_KIND, id).await?;
        if !allow {
            let iss = self.issuer();
            let mut pairs = vec![("error", "access_denied"), ("error_description", "the user declined")];
            if let Some(s) = r.state.as_deref() {
                pairs.push(("state", s));
            }
            pairs.push(("iss", iss.as_str()));
            return Ok(Some(with_query(&r.redirect_uri, &pairs)));
        }
        let event = audit::event(
            kinds::SSO_CONSENT_GRANTED,
            meta,
            Some(sso.user),
            Some(sso.user),
            Some(serde_json::json!({ "clientId": r.client_id, "scope": scope_set(&r.scopes) })),
        );
        self.ctx
            .deps
            .store
            .grant_consent(self.ctx.rt.id, sso.user, &r.client_id, &scope_set(&r.scopes), &event)
            .await?;
        audit::log_event(self.ctx.rt.id, &event);
        Ok(Some(self.issue_code(&r, sso).await?))
    }

    /// Starts a social login from the hosted page: authd itself is the app,
    /// returning to `{issuer}/login/social`.
    pub async fn start_social(&self, request_id: &str, provider: &str, meta: &RequestMeta) -> Result<Option<String>> {
        let Some(mut r) = self.request(request_id).await? else { return Ok(None) };
        let verifier = crypto::random_token(32);
        let url =
            self.ctx.social().start_flow(provider, &self.social_return(request_id), &s256(&verifier), meta).await?;
        r.social_verifier = Some(verifier);
        // Replace the parked request with one that knows the verifier.
        let value = serde_json::to_string(&r).map_err(Error::internal)?;
        self.ctx.deps.tokens.take_once(self.ctx.rt.id, REQUEST_KIND, request_id).await?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, REQUEST_KIND, request_id, &value, REQUEST_TTL).await?;
        Ok(Some(url))
    }

    /// Where a social login started here comes back to.
    pub fn social_return(&self, request_id: &str) -> String {
        format!("{}/login/social?request={request_id}", self.issuer())
    }

    /// The social login's verifier for the parked request.
    pub async fn social_verifier(&self, request_id: &str) -> Result<Option<String>> {
        Ok(self.request(request_id).await?.and_then(|r| r.social_verifier))
    }

    // -------------------------------------------------------------- token endpoint

    /// Authenticates the calling client (`client_secret_basic`,
    /// `client_secret_post`, or `none` for a public client).
    async fn client(&self, auth: &ClientAuth, meta: &RequestMeta) -> OAuthResult<OAuthClientRecord> {
        let (id, secret) = match (&auth.basic, &auth.client_id) {
            (Some((id, secret)), body_id) => {
                if body_id.as_ref().is_some_and(|b| b != id) {
                    return Err(OAuthError::client());
                }
                (id.clone(), Some(secret.clone()))
            }
            (None, Some(id)) => (id.clone(), auth.client_secret.clone()),
            (None, None) => return Err(OAuthError::client()),
        };
        if id.is_empty() || id.len() > 64 {
            return Err(OAuthError::client());
        }
        self.ctx.limits().before_token_request(&id, meta).await?;
        let client = self.ctx.deps.store.oauth_client(self.ctx.rt.id, &id).await?.ok_or_else(OAuthError::client)?;
        match (&client.secret_hash, secret) {
            (None, None) if client.public => Ok(client),
            (Some(hash), Some(secret)) => {
                let presented = self.secret_hash(&secret);
                let ok: bool = presented.as_bytes().ct_eq(hash.as_bytes()).into();
                if ok { Ok(client) } else { Err(OAuthError::client()) }
            }
            _ => Err(OAuthError::client()),
        }
    }

    /// `POST /oauth2/token`.
    pub async fn token(
        &self,
        auth: ClientAuth,
        form: &std::collections::HashMap<String, String>,
        meta: &RequestMeta,
    ) -> OAuthResult<serde_json::Value> {
        let client = self.client(&auth, meta).await?;
        let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
        if !GRANT_TYPES.contains(&grant_type) {
            return Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "authorization_code, refresh_token or client_credentials",
            ));
        }
        if !client.grant_types.iter().any(|g| g == grant_type) {
            return Err(OAuthError::new(400, "unauthorized_client", "this client may not use this grant type"));
        }
        match grant_type {
            "authorization_code" => self.code_grant(&client, form, meta).await,
            "refresh_token" => self.refresh_grant(&client, form, meta).await,
            _ => self.client_credentials(&client, form, meta).await,
        }
    }

    async fn code_grant(
        &self,
        client: &OAuthClientRecord,
        form: &std::collections::HashMap<String, String>,
        meta: &RequestMeta,
    ) -> OAuthResult<serde_json::Value> {
        let code = form
            .get("code")
            .filter(|c| !c.is_empty() && c.len() <= 128)
            .ok_or_else(|| OAuthError::request("code is required"))?;
        let hash = self.ctx.deps.keyring.keyed_hash(CODE_PURPOSE, code.as_bytes());
        let Some(raw) = self.ctx.deps.tokens.take_once(self.ctx.rt.id, CODE_KIND, &hash).await? else {
            // Presented twice: the first exchange's tokens are revoked (RFC 6749 §4.1.2).
            if let Some(used) = self.ctx.deps.tokens.take_once(self.ctx.rt.id, USED_CODE_KIND, &hash).await?
                && let Ok(used) = serde_json::from_str::<UsedCode>(&used)
            {
                self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, used.grant, deny_ttl()).await?;
                tracing::info!(tenant = %self.ctx.rt.id, "authorization code reused: its grant revoked");
            }
            return Err(OAuthError::grant("unknown, used or expired code"));
        };
        let record: CodeRecord = serde_json::from_str(&raw).map_err(Error::internal)?;
        if record.client_id != client.client_id {
            return Err(OAuthError::grant("the code belongs to another client"));
        }
        if record.expires_ms < self.ctx.deps.clock.now_ms() {
            return Err(OAuthError::grant("expired code"));
        }
        if form.get("redirect_uri") != Some(&record.redirect_uri) {
            return Err(OAuthError::grant("redirect_uri differs from the authorization request's"));
        }
        let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
        if verifier.len() < 43 || verifier.len() > 128 {
            return Err(OAuthError::grant("code_verifier is required (PKCE)"));
        }
        let ok: bool = s256(verifier).as_bytes().ct_eq(record.code_challenge.as_bytes()).into();
        if !ok {
            return Err(OAuthError::grant("code_verifier does not match the code_challenge"));
        }
        let user = match self.ctx.deps.store.user_by_id(self.ctx.rt.id, record.sso.user).await? {
            Some(u) if !u.disabled => u,
            _ => return Err(OAuthError::grant("the user is disabled")),
        };
        if self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, record.sso.sid).await? {
            return Err(OAuthError::grant("the sign-in session ended"));
        }
        let offline = record.scopes.iter().any(|s| s == "offline_access")
            && client.grant_types.iter().any(|g| g == "refresh_token");
        let (grant, refresh) = self.new_grant(client, &user, &record.scopes, &record.sso, meta).await?;
        let used = serde_json::to_string(&UsedCode { grant }).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, USED_CODE_KIND, &hash, &used, USED_CODE_TTL).await?;
        let mut body = self.token_response(
            client,
            &user,
            grant,
            Some(record.sso.sid),
            &record.sso.amr,
            &record.scopes,
            record.sso.auth_time,
            record.nonce.as_deref(),
        )?;
        if offline {
            body["refresh_token"] = refresh.into();
        }
        self.issued(client, &user, "authorization_code", meta);
        Ok(body)
    }

    /// A grant session for the client: its access tokens' `sid`, and the
    /// family of its refresh tokens.
    async fn new_grant(
        &self,
        client: &OAuthClientRecord,
        user: &UserRecord,
        scopes: &[String],
        sso: &SsoSession,
        meta: &RequestMeta,
    ) -> Result<(SessionId, String)> {
        let now = now_s();
        let session = SessionRecord {
            id: SessionId::new(),
            user_id: user.id,
            created_at: now,
            last_used_at: now,
            user_agent: Some(format!("OAuth client {}", client.name).chars().take(512).collect()),
            ip: meta.ip.clone(),
            amr: sso.amr.clone(),
        };
        let ttl = self.ctx.deps.config.refresh_token_ttl;
        self.ctx.deps.tokens.create_session(self.ctx.rt.id, &session, ttl).await?;
        let refresh = self.ctx.sessions().refresh_tokens(REFRESH_PURPOSE).issue(session.id, FIRST_GENERATION);
        let grant = Grant {
            client_id: client.client_id.clone(),
            scopes: scopes.to_vec(),
            auth_time: sso.auth_time,
            sso: sso.sid,
        };
        let value = serde_json::to_string(&grant).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, GRANT_KIND, &session.id.to_string(), &value, ttl).await?;
        Ok((session.id, refresh))
    }

    #[allow(clippy::too_many_arguments)]
    fn token_response(
        &self,
        client: &OAuthClientRecord,
        user: &UserRecord,
        sid: SessionId,
        sso_sid: Option<SessionId>,
        amr: &[String],
        scopes: &[String],
        auth_time: i64,
        nonce: Option<&str>,
    ) -> Result<serde_json::Value> {
        let scope = scopes.join(" ");
        let (access, expires_in) =
            self.ctx.sessions().client_access_token(user, sid, amr.to_vec(), &client.client_id, &scope, sso_sid)?;
        let mut body = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        });
        if scopes.iter().any(|s| s == "openid") {
            let now = now_s();
            let with_email = scopes.iter().any(|s| s == "email");
            let claims = IdClaims {
                iss: self.issuer(),
                sub: user.id.to_string(),
                aud: client.client_id.clone(),
                azp: client.client_id.clone(),
                exp: now + i64::try_from(expires_in).unwrap_or(900),
                iat: now,
                auth_time,
                nonce: nonce.map(str::to_owned),
                amr: amr.to_vec(),
                sid: sso_sid.unwrap_or(sid).to_string(),
                email: if with_email { user.email.clone() } else { None },
                email_verified: with_email.then_some(user.email_verified),
            };
            body["id_token"] = self.ctx.rt.snapshot().keys.sign_id_token(&claims, Utc::now())?.into();
        }
        Ok(body)
    }

    fn issued(&self, client: &OAuthClientRecord, user: &UserRecord, grant: &str, meta: &RequestMeta) {
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::SSO_TOKEN_ISSUED,
                meta,
                Some(user.id),
                Some(user.id),
                Some(serde_json::json!({ "clientId": client.client_id, "grantType": grant })),
            ),
        );
    }

    async fn refresh_grant(
        &self,
        client: &OAuthClientRecord,
        form: &std::collections::HashMap<String, String>,
        meta: &RequestMeta,
    ) -> OAuthResult<serde_json::Value> {
        let token = form
            .get("refresh_token")
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| OAuthError::request("refresh_token is required"))?;
        // The token must be one this client holds, before anything rotates.
        if let Some(session) = self.ctx.sessions().session_of(REFRESH_PURPOSE, token).await? {
            let grant = self.grant(session.id).await?;
            if grant.is_none_or(|g| g.client_id != client.client_id) {
                return Err(OAuthError::grant("the refresh token belongs to another client"));
            }
        }
        let (session, next) = match self.ctx.sessions().rotate_as(REFRESH_PURPOSE, token, None).await? {
            (RotateOutcome::Rotated(s), next) => (s, next),
            (RotateOutcome::Reused { .. }, _) => {
                return Err(OAuthError::grant("refresh token reused: the grant is revoked"));
            }
            // `Limited` needs a limit, and none was asked for.
            (RotateOutcome::NotFound | RotateOutcome::Limited { .. }, _) => {
                return Err(OAuthError::grant("unknown or expired refresh token"));
            }
        };
        let Some(grant) = self.grant(session.id).await?.filter(|g| g.client_id == client.client_id) else {
            return Err(OAuthError::grant("the refresh token belongs to another client"));
        };
        let user = match self.ctx.deps.store.user_by_id(self.ctx.rt.id, session.user_id).await? {
            Some(u) if !u.disabled => u,
            _ => {
                self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, session.id, deny_ttl()).await?;
                return Err(OAuthError::grant("the user is disabled"));
            }
        };
        let mut body =
            self.token_response(client, &user, session.id, None, &session.amr, &grant.scopes, grant.auth_time, None)?;
        body["refresh_token"] = self.ctx.sessions().refresh_tokens(REFRESH_PURPOSE).issue(session.id, next).into();
        self.issued(client, &user, "refresh_token", meta);
        Ok(body)
    }

    async fn grant(&self, sid: SessionId) -> Result<Option<Grant>> {
        let raw = self.ctx.deps.tokens.peek(self.ctx.rt.id, GRANT_KIND, &sid.to_string()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn client_credentials(
        &self,
        client: &OAuthClientRecord,
        form: &std::collections::HashMap<String, String>,
        meta: &RequestMeta,
    ) -> OAuthResult<serde_json::Value> {
        if client.public {
            return Err(OAuthError::new(400, "unauthorized_client", "a public client has no credentials"));
        }
        let asked: Vec<String> = form
            .get("scope")
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if asked.iter().any(|s| !client.scopes.contains(s) || s == "openid" || s == "offline_access") {
            return Err(OAuthError::new(400, "invalid_scope", "a scope this client may not ask for here"));
        }
        let scope = asked.join(" ");
        let (access, expires_in) = self.ctx.sessions().service_access_token(&client.client_id, &scope)?;
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::SSO_TOKEN_ISSUED,
                meta,
                None,
                None,
                Some(serde_json::json!({ "clientId": client.client_id, "grantType": "client_credentials" })),
            ),
        );
        Ok(
            serde_json::json!({ "access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": scope }),
        )
    }

    // -------------------------------------------------------------- userinfo, introspection, revocation

    /// `GET`/`POST /oauth2/userinfo` with an access token of the code flow.
    pub async fn userinfo(&self, token: &str) -> Result<serde_json::Value> {
        let p = self.ctx.sessions().authenticate(token).await?;
        let scopes: Vec<&str> = p.scope.as_deref().unwrap_or("").split(' ').collect();
        if p.client_id.is_none() || !scopes.contains(&"openid") {
            return Err(Error::forbidden("insufficient_scope"));
        }
        let user = self.ctx.accounts().me(&p).await?;
        let mut body = serde_json::json!({ "sub": user.id.to_string() });
        if scopes.contains(&"email") {
            body["email"] = user.email.clone().into();
            body["email_verified"] = user.email_verified.into();
        }
        Ok(body)
    }

    /// `POST /oauth2/introspect` (RFC 7662).
    pub async fn introspect(
        &self,
        auth: ClientAuth,
        token: &str,
        meta: &RequestMeta,
    ) -> OAuthResult<serde_json::Value> {
        self.client(&auth, meta).await?;
        let inactive = serde_json::json!({ "active": false });
        if token.is_empty() || token.len() > 16 * 1024 {
            return Ok(inactive);
        }
        let snap = self.ctx.rt.snapshot();
        if let Ok(c) = snap.keys.verify(token, &self.issuer(), &self.ctx.audience(), Utc::now()) {
            let denied = self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, SessionId(c.sid)).await?
                || match c.sso_sid {
                    Some(s) => self.ctx.deps.tokens.is_session_denied(self.ctx.rt.id, SessionId(s)).await?,
                    None => false,
                };
            if denied || c.tid != self.ctx.rt.id.0 {
                return Ok(inactive);
            }
            let mut body = serde_json::json!({
                "active": true,
                "token_type": "Bearer",
                "sub": c.sub.to_string(),
                "iss": c.iss,
                "aud": c.aud,
                "exp": c.exp,
                "iat": c.iat,
                "jti": c.jti.to_string(),
                "sid": c.sid.to_string(),
            });
            if let Some(id) = c.client_id {
                body["client_id"] = id.into();
            }
            if let Some(s) = c.scope {
                body["scope"] = s.into();
            }
            return Ok(body);
        }
        if let Some(session) = self.ctx.sessions().session_of(REFRESH_PURPOSE, token).await? {
            let grant = self.grant(session.id).await?;
            let mut body = serde_json::json!({
                "active": true,
                "token_type": "refresh_token",
                "sub": session.user_id.to_string(),
                "iss": self.issuer(),
                "iat": session.created_at,
                "exp": session.last_used_at + i64::try_from(self.ctx.deps.config.refresh_token_ttl.as_secs()).unwrap_or(0),
            });
            if let Some(g) = grant {
                body["client_id"] = g.client_id.into();
                body["scope"] = g.scopes.join(" ").into();
            }
            return Ok(body);
        }
        Ok(inactive)
    }

    /// `POST /oauth2/revoke` (RFC 7009): a refresh token ends its grant; an
    /// access token ends the grant (or session) it belongs to. Tokens of
    /// other clients, unknown and malformed tokens change nothing.
    pub async fn revoke(&self, auth: ClientAuth, token: &str, meta: &RequestMeta) -> OAuthResult<()> {
        let client = self.client(&auth, meta).await?;
        if token.is_empty() || token.len() > 16 * 1024 {
            return Ok(());
        }
        let snap = self.ctx.rt.snapshot();
        let sid = if let Ok(c) = snap.keys.verify(token, &self.issuer(), &self.ctx.audience(), Utc::now()) {
            (c.client_id.as_deref() == Some(client.client_id.as_str())).then_some(SessionId(c.sid))
        } else {
            match self.ctx.sessions().session_of(REFRESH_PURPOSE, token).await? {
                Some(session) if self.grant(session.id).await?.is_some_and(|g| g.client_id == client.client_id) => {
                    Some(session.id)
                }
                _ => None,
            }
        };
        if let Some(sid) = sid {
            self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, sid, deny_ttl()).await?;
        }
        Ok(())
    }

    // -------------------------------------------------------------- logout

    /// RP-initiated logout: ends the SSO session (the cookie's, or the one
    /// the ID token hint names) and returns where to send the browser: a
    /// registered `post_logout_redirect_uri` of the hint's (or named)
    /// client, or `None` for authd's own "signed out" page.
    pub async fn end_session(
        &self,
        id_token_hint: Option<&str>,
        client_id: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
        cookie: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Option<String>> {
        // The browser's own SSO session ends whatever else is wrong.
        let mut ended = Vec::new();
        if let Some(sso) = self.sso_session(cookie).await? {
            ended.push((sso.sid, sso.user));
        }
        let hint = match id_token_hint.filter(|h| !h.is_empty()) {
            Some(h) => self.ctx.rt.snapshot().keys.verify_id_token(h, &self.issuer(), Utc::now()).ok(),
            None => None,
        };
        if let Some(h) = &hint
            && let (Ok(sid), Ok(user)) = (h.sid.parse::<SessionId>(), h.sub.parse::<uuid::Uuid>())
            && !ended.iter().any(|(s, _)| *s == sid)
        {
            ended.push((sid, UserId(user)));
        }
        let client_id = hint.as_ref().map(|h| h.aud.clone()).or(client_id.map(str::to_owned));
        for (sid, user) in &ended {
            if self.ctx.deps.tokens.revoke_session(self.ctx.rt.id, *sid, deny_ttl()).await? {
                self.ctx.deps.audit.record(
                    self.ctx.rt.id,
                    audit::event(
                        kinds::SSO_LOGOUT,
                        meta,
                        Some(*user),
                        Some(*user),
                        Some(serde_json::json!({ "sessionId": sid.to_string(), "clientId": client_id })),
                    ),
                );
            }
        }
        if id_token_hint.is_some_and(|h| !h.is_empty()) && hint.is_none() {
            return Err(Error::bad_input("id_token_hint", "the ID token hint is not one this provider issued"));
        }
        let Some(uri) = post_logout_redirect_uri.filter(|u| !u.is_empty()) else { return Ok(None) };
        let Some(client_id) = client_id else {
            return Err(Error::bad_input("post_logout_redirect_uri", "needs id_token_hint or client_id"));
        };
        let client = self.ctx.deps.store.oauth_client(self.ctx.rt.id, &client_id).await?;
        if !client.is_some_and(|c| c.post_logout_redirect_uris.iter().any(|u| u == uri)) {
            return Err(Error::bad_input("post_logout_redirect_uri", "not registered for this client"));
        }
        let pairs: Vec<(&str, &str)> = state.map(|s| vec![("state", s)]).unwrap_or_default();
        Ok(Some(if pairs.is_empty() { uri.to_owned() } else { with_query(uri, &pairs) }))
    }
}

/// Decodes `Authorization: Basic` client credentials: both parts are
/// form-urlencoded first (RFC 6749 §2.3.1).
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?;
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((decode(id)?, decode(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let h = format!("Basic {}", STANDARD.encode("my%20client:s%2Bcr%3At"));
        assert_eq!(basic_credentials(&h), Some(("my client".into(), "s+cr:t".into())));
        assert_eq!(basic_credentials("Bearer x"), None);
    }

    #[test]
    fn client_input_rules() {
        let input = |grants: Option<Vec<&str>>, uris: Vec<&str>, public: bool| ClientInput {
            name: "App".into(),
            redirect_uris: uris.into_iter().map(str::to_owned).collect(),
            post_logout_redirect_uris: None,
            public,
            first_party: false,
            grant_types: grants.map(|g| g.into_iter().map(str::to_owned).collect()),
            scopes: None,
        };
        assert!(input(None, vec!["https://app/cb"], false).validate().is_ok());
        assert!(input(None, vec![], false).validate().is_err());
        assert!(input(Some(vec!["client_credentials"]), vec![], false).validate().is_ok());
        assert!(input(Some(vec!["client_credentials"]), vec![], true).validate().is_err());
        assert!(input(Some(vec!["password"]), vec!["https://app/cb"], false).validate().is_err());
        assert!(input(None, vec!["https://app/cb#frag"], false).validate().is_err());
    }
}
