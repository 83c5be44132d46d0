//! Social login through the tenant's own OAuth 2.0 / OpenID Connect
//! providers.
//!
//! The flow, with PKCE (RFC 7636, S256) on both legs:
//! 1. `startOAuthLogin(provider, redirectUri, codeChallenge)`: the app's
//!    `redirectUri` must be one of the tenant's `allowedRedirectUris` exactly
//!    (RFC 9700 §4.1.3); authd makes a state, a nonce and its own PKCE
//!    verifier (256 bits each) and keeps them with the app's challenge in the
//!    token store for 10 minutes, single use, so any replica can finish.
//! 2. The provider redirects the browser to
//!    `/t/{tenant}/oauth/{provider}/callback`: the state is taken (once), the
//!    code exchanged with the verifier, the ID token validated (signature by
//!    the provider's JWKS, `iss`, `aud`, `azp`, `exp`, `nonce`), the account
//!    resolved, and the browser sent to the app with a one-time `code` (60 s,
//!    single use, stored as a keyed hash) or with `error=<contract code>`.
//! 3. `exchangeLoginCode(code, codeVerifier)`: the app proves it started the
//!    flow (its verifier against its challenge) and gets tokens with
//!    `amr: ["fed"]`, or an MFA challenge when the user has TOTP.
//!
//! Account resolution: a known (provider, subject) is that user; otherwise,
//! if the tenant links by verified email, the provider is trusted for
//! `email_verified` and asserts it, the account with that email is linked;
//! otherwise a new user is created, without an email if the address belongs
//! to another account. An unverified or untrusted email never links.
//!
//! The protocol work is the `oauth2` and `openidconnect` crates': the
//! authorization URL with PKCE, state and nonce (`openidconnect`'s
//! `CoreClient` for OpenID Connect providers, `oauth2`'s client for GitHub),
//! the code exchange and its token response (`oauth2`, through authd's
//! SSRF-safe client: [`net::ProviderHttp::execute`]), and the ID token's
//! parsing and validation (`openidconnect`'s `CoreIdTokenVerifier` over the
//! provider's JWKS). authd keeps what is its own: the state, nonce and
//! verifier in the token store, the SSRF policy, the provider actor's
//! discovery and key cache, `azp`, and the account resolution below.
//!
//! Layout: [`net`] (the SSRF-safe client), [`provider`] (the actor, kinds and
//! endpoints); this module: admin operations and the flow.

pub mod net;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use authd_core::crypto::SealContext;
use authd_core::settings::Role;
use authd_core::{Error, ErrorCode, Result, UserId, crypto};
use authd_store::{Identity, NewUser, OAuthProviderRecord, UserRecord};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm,
};
use openidconnect::{ClaimsVerificationError, IssuerUrl, Nonce, SignatureVerificationError};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accounts::LoginOutcome;
use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::sessions::Principal;
use crate::tenant::TenantMsg;
pub use provider::{Endpoints, OAuthProviderActor, ProviderArgs, ProviderKind, ProviderMsg};

pub(crate) const SEAL_PURPOSE: &str = "oauth-client-secret";
const STATE_KIND: &str = "oauth_state";
const CODE_KIND: &str = "login_code";
const CODE_PURPOSE: &str = "login-code";
/// How long a started login may take at the provider.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// How long the app has to exchange its login code.
pub const CODE_TTL: Duration = Duration::from_secs(60);

/// `upsertOAuthProvider`'s input; `None` keeps the current value (or the
/// kind's default for a new provider).
pub struct ProviderInput {
    pub name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub issuer: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub display_name: Option<String>,
    pub trust_email_verified: Option<bool>,
}

/// What the callback route does with the browser.
pub enum CallbackOutcome {
    /// Redirect to the app (with `code` or `error`).
    Redirect(String),
    /// No flow to return to (unknown, reused or foreign state): an error
    /// page, never a redirect to a URL the request chose.
    Rejected(Error),
}

/// The query of the callback.
#[derive(Default, Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// A started login, in the token store under its state.
#[derive(Serialize, Deserialize)]
struct FlowState {
    provider: String,
    redirect_uri: String,
    app_challenge: String,
    verifier: String,
    nonce: String,
    expires_ms: i64,
}

/// A finished login waiting for the app, under the keyed hash of its code.
#[derive(Serialize, Deserialize)]
struct LoginCode {
    user: UserId,
    app_challenge: String,
    expires_ms: i64,
}

/// Who the provider says signed in.
#[derive(Debug)]
struct Profile {
    subject: String,
    email: Option<String>,
    email_verified: bool,
}

/// Why a callback was refused: for the audit event and the app's `error=`.
struct Reject {
    reason: &'static str,
    code: ErrorCode,
    cause: Option<String>,
}

impl Reject {
    fn new(reason: &'static str) -> Self {
        Self { reason, code: ErrorCode::Unauthenticated, cause: None }
    }
    fn from_error(reason: &'static str, e: Error) -> Self {
        Self { reason, code: e.code(), cause: e.cause().map(str::to_owned) }
    }
}

pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.2: a challenge is 43 base64url characters (S256 of a verifier).
pub(crate) fn valid_challenge(c: &str) -> bool {
    c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

pub(crate) fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = base.to_owned();
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    url.push(if base.contains('?') { '&' } else { '?' });
    url.push_str(&query);
    url
}

/// Social login, reached through [`TenantCtx::social`].
pub struct SocialService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

impl SocialService<'_> {
    fn unseal_secret(&self, p: &OAuthProviderRecord) -> Result<Option<zeroize::Zeroizing<String>>> {
        let Some(sealed) = &p.client_secret_sealed else { return Ok(None) };
        let ctx = SealContext { tenant: self.ctx.rt.id, purpose: SEAL_PURPOSE, row: &p.name };
        let bytes = self.ctx.deps.keyring.open(sealed, &ctx)?;
        let s = String::from_utf8(bytes.to_vec()).map_err(|_| Error::internal("client secret is not UTF-8"))?;
        Ok(Some(zeroize::Zeroizing::new(s)))
    }

    // ------------------------------------------------------------ admin

    /// Tenant admins: every provider, enabled or not.
    pub async fn provider_configs(&self, p: &Principal) -> Result<Vec<OAuthProviderRecord>> {
        self.ctx.admin().require_admin(p).await?;
        Ok(self.ctx.deps.store.oauth_providers(self.ctx.rt.id).await?)
    }

    /// Everyone: the enabled providers (login buttons).
    pub fn providers_public(&self) -> Vec<OAuthProviderRecord> {
        self.ctx.rt.snapshot().providers.iter().filter(|p| p.enabled).cloned().collect()
    }

    /// Tenant admins: creates or replaces a provider. The issuer URL is
    /// checked against the SSRF policy here, before anything connects to it.
    pub async fn upsert_provider(
        &self,
        p: &Principal,
        input: ProviderInput,
        meta: &RequestMeta,
    ) -> Result<OAuthProviderRecord> {
        let admin = self.ctx.admin().require_admin(p).await?;
        let name = input.name.trim().to_owned();
        if !valid_name(&name) {
            return Err(Error::bad_input(
                "name",
                "1 to 63 characters of a-z, 0-9, - and _, starting with a letter or digit",
            ));
        }
        let client_id = input.client_id.trim().to_owned();
        if !printable(&client_id, 512) {
            return Err(Error::bad_input("clientId", "a client id is 1 to 512 printable characters"));
        }
        if let Some(secret) = &input.client_secret
            && !printable(secret, 2048)
        {
            return Err(Error::bad_input("clientSecret", "a client secret is 1 to 2048 printable characters"));
        }
        let kind = input.kind;
        let issuer = input.issuer.map(|i| i.trim().to_owned()).filter(|i| !i.is_empty());
        if kind == ProviderKind::Oidc && issuer.is_none() {
            return Err(Error::bad_input("issuer", "an OIDC provider needs its issuer URL"));
        }
        let base = issuer.clone().unwrap_or_else(|| {
            provider::base_of(
                &OAuthProviderRecord { issuer: None, kind: kind.as_str().into(), ..placeholder_record() },
                kind,
            )
        });
        let url = url::Url::parse(&base).map_err(|_| Error::bad_input("issuer", "not a URL"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::bad_input("issuer", "an issuer has no query or fragment"));
        }
        // No SSRF: refused here, before any connection (docs/api.md: BAD_USER_INPUT).
        let http = self.ctx.deps.provider_http()?;
        match http.policy.check_url(&url).await {
            Ok(()) => {}
            Err(net::FetchError::Refused(m)) => return Err(Error::bad_input("issuer", m)),
            // A name that does not resolve now is not refused (DNS may be
            // down for a moment); every request re-checks the addresses.
            Err(e) => tracing::info!(tenant = %self.ctx.rt.id, error = %e, "provider issuer not checkable now"),
        }
        let mut scopes = match input.scopes {
            Some(s) => s.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            None => kind.default_scopes(),
        };
        if scopes.iter().any(|s| !printable(s, 200) || s.contains(' ')) || scopes.len() > 50 {
            return Err(Error::bad_input("scopes", "scopes are up to 50 words without spaces"));
        }
        if kind.is_oidc() && !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let display_name = input.display_name.map(|d| d.trim().to_owned()).unwrap_or_else(|| {
            match kind {
                ProviderKind::Google => "Google",
                ProviderKind::Github => "GitHub",
                ProviderKind::Oidc => name.as_str(),
            }
            .to_owned()
        });
        if !printable(&display_name, 100) {
            return Err(Error::bad_input("displayName", "a display name is 1 to 100 printable characters"));
        }
        let existing = self.ctx.deps.store.oauth_providers(self.ctx.rt.id).await?.into_iter().find(|x| x.name == name);
        let sealed = input.client_secret.as_ref().map(|secret| {
            let ctx = SealContext { tenant: self.ctx.rt.id, purpose: SEAL_PURPOSE, row: &name };
            self.ctx.deps.keyring.seal(secret.as_bytes(), &ctx)
        });
        let now = Utc::now();
        let record = OAuthProviderRecord {
            name: name.clone(),
            kind: kind.as_str().into(),
            display_name,
            client_id,
            client_secret_sealed: sealed,
            issuer,
            scopes,
            enabled: input.enabled.or(existing.as_ref().map(|e| e.enabled)).unwrap_or(true),
            trust_email_verified: input
                .trust_email_verified
                .or(existing.as_ref().filter(|e| e.kind == kind.as_str()).map(|e| e.trust_email_verified))
                .unwrap_or(kind.trusts_email_by_default()),
            created_at: existing.as_ref().map(|e| e.created_at).unwrap_or(now),
            updated_at: now,
        };
        let event = audit::event(
            kinds::OAUTH_PROVIDER_CHANGED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({
                "provider": name,
                "kind": kind.as_str(),
                "created": existing.is_none(),
                "secretChanged": input.client_secret.is_some(),
                "enabled": record.enabled,
            })),
        );
        let saved = self.ctx.deps.store.upsert_oauth_provider(self.ctx.rt.id, &record, &event).await?;
        audit::log_event(self.ctx.rt.id, &event);
        self.providers_changed().await?;
        Ok(saved)
    }

    /// Tenant admins: removes a provider (and the identities linked through it).
    pub async fn delete_provider(&self, p: &Principal, name: &str, meta: &RequestMeta) -> Result<bool> {
        let admin = self.ctx.admin().require_admin(p).await?;
        let event = audit::event(
            kinds::OAUTH_PROVIDER_DELETED,
            meta,
            Some(admin.id),
            None,
            Some(serde_json::json!({ "provider": name })),
        );
        let deleted = self.ctx.deps.store.delete_oauth_provider(self.ctx.rt.id, name, &event).await?;
        if deleted {
            audit::log_event(self.ctx.rt.id, &event);
            self.providers_changed().await?;
        }
        Ok(deleted)
    }

    /// Makes a provider change visible to this replica at once (other
    /// replicas pick it up with their next reload) and reconfigures actors.
    async fn providers_changed(&self) -> Result<()> {
        let providers = self.ctx.deps.store.oauth_providers(self.ctx.rt.id).await?;
        let snap = self.ctx.rt.snapshot();
        self.ctx.rt.replace_snapshot(crate::runtime::TenantSnapshot {
            record: snap.record.clone(),
            keys: snap.keys.clone(),
            providers: Arc::new(providers),
        });
        if let Some(sup) = self.ctx.rt.supervisor() {
            let _ = sup.cast(TenantMsg::Reload);
        }
        // Other replicas reload now (Redis pub/sub), not at their next tick.
        if let Err(e) = self.ctx.deps.tokens.publish_change(self.ctx.rt.id).await {
            tracing::warn!(tenant = %self.ctx.rt.id, error = %e, "could not announce a provider change; replicas pick it up at their next reload");
        }
        Ok(())
    }

    // ------------------------------------------------------------ the flow

    fn provider_record(&self, name: &str) -> Result<OAuthProviderRecord> {
        self.ctx
            .rt
            .snapshot()
            .providers
            .iter()
            .find(|p| p.name == name && p.enabled)
            .cloned()
            .ok_or(Error::ProviderNotFound)
    }

    /// The provider's actor, asking the supervisor to start it if this
    /// replica has not yet (a provider configured a moment ago).
    async fn provider_actor(&self, name: &str) -> Result<ActorRef<ProviderMsg>> {
        if let Some(a) = self.ctx.rt.provider_actor(name) {
            return Ok(a);
        }
        let sup = self.ctx.rt.supervisor().ok_or_else(|| Error::unavailable("tenant is restarting"))?;
        ractor::call_t!(sup, TenantMsg::Provider, 5000, name.to_owned())
            .map_err(|e| Error::unavailable(format!("tenant supervisor: {e}")))?
            .ok_or(Error::ProviderNotFound)
    }

    fn actor_timeout(&self) -> u64 {
        u64::try_from(self.ctx.deps.config.provider_timeout.as_millis()).unwrap_or(10_000) * 2 + 1000
    }

    async fn endpoints(&self, actor: &ActorRef<ProviderMsg>) -> Result<Arc<Endpoints>> {
        ractor::call_t!(actor, ProviderMsg::Endpoints, self.actor_timeout())
            .map_err(|e| Error::unavailable(format!("provider actor: {e}")))?
    }

    fn callback_url(&self, provider: &str) -> String {
        format!("{}/oauth/{}/callback", self.ctx.deps.config.issuer(self.ctx.rt.slug.as_str()), provider)
    }

    /// `startOAuthLogin`: the URL to send the browser to.
    pub async fn start_login(
        &self,
        provider: &str,
        redirect_uri: &str,
        code_challenge: &str,
        meta: &RequestMeta,
    ) -> Result<String> {
        // RFC 9700 §4.1.3: exact string match, no patterns, no prefixes.
        if !self.ctx.rt.snapshot().record.settings.allowed_redirect_uris.iter().any(|u| u == redirect_uri) {
            return Err(Error::bad_input("redirectUri", "not one of the tenant's allowed redirect URIs"));
        }
        self.start_flow(provider, redirect_uri, code_challenge, meta).await
    }

    /// Starts a social login that returns to `redirect_uri` as given: the
    /// caller vouches for it (an app's checked URI, or the tenant's own
    /// hosted sign-in page, which is no app URI of the tenant's list).
    pub(crate) async fn start_flow(
        &self,
        provider: &str,
        redirect_uri: &str,
        code_challenge: &str,
        meta: &RequestMeta,
    ) -> Result<String> {
        let record = self.provider_record(provider)?;
        if !valid_challenge(code_challenge) {
            return Err(Error::bad_input("codeChallenge", "an S256 code challenge is 43 base64url characters"));
        }
        // Every start stores a state: bounded per IP like login attempts.
        self.ctx.limits().before_oauth_start(meta).await?;
        let kind = ProviderKind::parse(&record.kind)?;
        let actor = self.provider_actor(provider).await?;
        let endpoints = self.endpoints(&actor).await?;
        // ≥ 128 bits each (256 here): state binds the browser's return to
        // this flow, the nonce the ID token to it, the verifier the code.
        let state = crypto::random_token(32);
        let nonce = crypto::random_token(32);
        let verifier = crypto::random_token(32);
        let flow = FlowState {
            provider: provider.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            app_challenge: code_challenge.to_owned(),
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            expires_ms: self.ctx.deps.clock.now_ms() + i64::try_from(STATE_TTL.as_millis()).unwrap_or(600_000),
        };
        let value = serde_json::to_string(&flow).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, STATE_KIND, &state, &value, STATE_TTL).await?;
        let callback = RedirectUrl::new(self.callback_url(provider)).map_err(Error::internal)?;
        let authorization = AuthUrl::new(endpoints.authorization.clone())
            .map_err(|_| Error::unavailable("the provider's authorization endpoint is not a URL"))?;
        let pkce = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier));
        let client_id = ClientId::new(record.client_id.clone());
        let url = if kind.is_oidc() {
            let issuer = endpoints.issuer.clone().ok_or_else(|| Error::unavailable("provider without issuer"))?;
            let issuer =
                IssuerUrl::new(issuer).map_err(|_| Error::unavailable("the provider's issuer is not a URL"))?;
            // The key set is the verifier's business (`validate_id_token`);
            // this client only writes the authentication request.
            let client = CoreClient::new(client_id, issuer, Default::default())
                .set_auth_uri(authorization)
                .set_redirect_uri(callback);
            // `openidconnect` asks for `openid` itself.
            let scopes = record.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone()));
            let (url, _, _) = client
                .authorize_url(
                    CoreAuthenticationFlow::AuthorizationCode,
                    || CsrfToken::new(state),
                    || Nonce::new(nonce),
                )
                .add_scopes(scopes)
                .set_pkce_challenge(pkce)
                .url();
            url
        } else {
            let client = OAuthClient::new(client_id).set_auth_uri(authorization).set_redirect_uri(callback);
            let (url, _) = client
                .authorize_url(|| CsrfToken::new(state))
                .add_scopes(record.scopes.iter().map(|s| Scope::new(s.clone())))
                .set_pkce_challenge(pkce)
                .url();
            url
        };
        Ok(url.into())
    }

    /// The callback route's work. Every refusal is audited.
    pub async fn callback(&self, provider: &str, params: CallbackParams, meta: &RequestMeta) -> CallbackOutcome {
        let reject_unknown = |reason: &'static str| {
            self.audit_rejected(provider, reason, None, meta);
            CallbackOutcome::Rejected(Error::bad_input_msg(
                None,
                "this sign-in link is unknown, expired or already used",
            ))
        };
        let Some(state) = params.state.filter(|s| !s.is_empty() && s.len() <= 200) else {
            return reject_unknown("missing_state");
        };
        // Taken, not read: a state works once, whatever happens next.
        let flow = match self.ctx.deps.tokens.take_once(self.ctx.rt.id, STATE_KIND, &state).await {
            Ok(Some(v)) => v,
            Ok(None) => return reject_unknown("unknown_state"),
            Err(e) => return CallbackOutcome::Rejected(e.into()),
        };
        let Ok(flow) = serde_json::from_str::<FlowState>(&flow) else { return reject_unknown("unknown_state") };
        if flow.expires_ms < self.ctx.deps.clock.now_ms() {
            return reject_unknown("expired_state");
        }
        if flow.provider != provider {
            // A state issued for another provider of this tenant.
            return reject_unknown("provider_mismatch");
        }
        let back = |params: &[(&str, &str)]| CallbackOutcome::Redirect(with_query(&flow.redirect_uri, params));
        match self.finish_callback(provider, &flow, params.code, params.error, meta).await {
            Ok(user) => {
                let code = crypto::random_token(32);
                let hash = self.ctx.deps.keyring.keyed_hash(CODE_PURPOSE, code.as_bytes());
                let record = LoginCode {
                    user,
                    app_challenge: flow.app_challenge.clone(),
                    expires_ms: self.ctx.deps.clock.now_ms() + i64::try_from(CODE_TTL.as_millis()).unwrap_or(60_000),
                };
                let stored = match serde_json::to_string(&record) {
                    Ok(value) => {
                        self.ctx.deps.tokens.put_once(self.ctx.rt.id, CODE_KIND, &hash, &value, CODE_TTL).await
                    }
                    Err(e) => return back(&[("error", Error::internal(e).code().as_str())]),
                };
                match stored {
                    Ok(_) => back(&[("code", &code)]),
                    Err(e) => back(&[("error", Error::from(e).code().as_str())]),
                }
            }
            Err(reject) => {
                self.audit_rejected(provider, reject.reason, reject.cause.as_deref(), meta);
                back(&[("error", reject.code.as_str())])
            }
        }
    }

    fn audit_rejected(&self, provider: &str, reason: &str, cause: Option<&str>, meta: &RequestMeta) {
        if let Some(cause) = cause {
            tracing::warn!(tenant = %self.ctx.rt.id, provider, reason, cause, "social login callback rejected");
        }
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::OAUTH_CALLBACK_REJECTED,
                meta,
                None,
                None,
                Some(serde_json::json!({ "provider": provider, "reason": reason })),
            ),
        );
    }

    async fn finish_callback(
        &self,
        provider: &str,
        flow: &FlowState,
        code: Option<String>,
        error: Option<String>,
        meta: &RequestMeta,
    ) -> std::result::Result<UserId, Reject> {
        if error.is_some() {
            // The user declined, or the provider refused (its `error` is not
            // repeated: it is the provider's text, not ours).
            return Err(Reject::new("provider_error"));
        }
        let code = code.filter(|c| !c.is_empty() && c.len() <= 2048).ok_or_else(|| Reject::new("missing_code"))?;
        let record = self.provider_record(provider).map_err(|e| Reject::from_error("provider_gone", e))?;
        let kind = ProviderKind::parse(&record.kind).map_err(|e| Reject::from_error("provider_gone", e))?;
        let actor = self.provider_actor(provider).await.map_err(|e| Reject::from_error("provider_gone", e))?;
        let endpoints = self.endpoints(&actor).await.map_err(|e| Reject::from_error("provider_unavailable", e))?;
        let http = self.ctx.deps.provider_http().map_err(|e| Reject::from_error("internal", e))?;
        let secret = self.unseal_secret(&record).map_err(|e| Reject::from_error("internal", e))?;
        let token_url = TokenUrl::new(endpoints.token.clone()).map_err(|_| {
            Reject::from_error("provider_unavailable", Error::unavailable("token endpoint is not a URL"))
        })?;
        let callback = RedirectUrl::new(self.callback_url(provider))
            .map_err(|e| Reject::from_error("internal", Error::internal(e)))?;
        let mut client = OAuthClient::new(ClientId::new(record.client_id.clone()))
            .set_token_uri(token_url)
            .set_redirect_uri(callback)
            .set_auth_type(endpoints.client_auth.clone());
        if let Some(secret) = secret.as_deref() {
            client = client.set_client_secret(ClientSecret::new(secret.to_string()));
        }
        // The crate's requests go through the SSRF-safe client.
        let send = |request: oauth2::HttpRequest| {
            let http = http.clone();
            async move { http.execute(request).await }
        };
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(flow.verifier.clone()))
            .request_async(&send)
            .await
            .map_err(|e| match e {
                RequestTokenError::Request(e) => Reject::from_error("provider_unavailable", e.into()),
                // An error answer (GitHub's comes with status 200 and an
                // `error` field, which is no token response either).
                _ => Reject::new("code_exchange_failed"),
            })?;
        let access_token = Some(response.access_token().secret().clone());
        let profile = if kind.is_oidc() {
            let id_token =
                response.extra_fields().id_token.as_deref().ok_or_else(|| Reject::new("missing_id_token"))?;
            let mut profile = self.validate_id_token(&actor, &endpoints, &record, id_token, &flow.nonce).await?;
            if profile.email.is_none()
                && let (Some(userinfo), Some(at)) = (&endpoints.userinfo, &access_token)
            {
                // Email only from userinfo (OIDC Core §5.3.2: its `sub` must match).
                if let Ok(info) = http.get_json(userinfo, Some(at)).await
                    && info.get("sub").and_then(|v| v.as_str()) == Some(profile.subject.as_str())
                {
                    profile.email = info.get("email").and_then(|v| v.as_str()).map(str::to_owned);
                    profile.email_verified = claim_true(info.get("email_verified"));
                }
            }
            profile
        } else {
            let at = access_token.ok_or_else(|| Reject::new("code_exchange_failed"))?;
            github_profile(&http, &endpoints, &at).await.map_err(|e| Reject::from_error("provider_unavailable", e))?
        };
        self.resolve_account(&record, profile, meta).await.map_err(|e| match e {
            Error::Unauthenticated => Reject::new("user_disabled"),
            other => Reject::from_error("account", other),
        })
    }

    /// Validates an ID token with `openidconnect` (OIDC Core §3.1.3.7):
    /// signature by the provider's JWKS with an asymmetric algorithm only
    /// (never `none`, never an HMAC keyed by the client secret), `iss`,
    /// `aud` (other audiences are not trusted), `exp` with 60 s of
    /// clock leeway, and the nonce of this flow. The key set comes from the
    /// provider's actor, which refetches it for an unknown `kid` at most once
    /// a minute. `azp`, which the crate does not check, is checked here.
    async fn validate_id_token(
        &self,
        actor: &ActorRef<ProviderMsg>,
        endpoints: &Endpoints,
        record: &OAuthProviderRecord,
        id_token: &str,
        nonce: &str,
    ) -> std::result::Result<Profile, Reject> {
        let bad = |reason: &'static str| Reject::new(reason);
        let token: CoreIdToken = id_token.parse().map_err(|_| bad("id_token_malformed"))?;
        // Only to ask the actor for the right key set; the verifier below
        // trusts nothing of the header.
        let kid = jsonwebtoken::decode_header(id_token).ok().and_then(|h| h.kid);
        let keys = ractor::call_t!(actor, |reply| ProviderMsg::Keys { kid: kid.clone(), reply }, self.actor_timeout())
            .map_err(|e| Reject::from_error("provider_unavailable", Error::unavailable(e)))?
            .map_err(|e| Reject::from_error("provider_unavailable", e))?;
        let issuer = endpoints.issuer.clone().ok_or_else(|| bad("id_token_issuer"))?;
        let issuer = IssuerUrl::new(issuer).map_err(|_| bad("id_token_issuer"))?;
        let verifier = CoreIdTokenVerifier::new_public_client(
            openidconnect::ClientId::new(record.client_id.clone()),
            issuer,
            (*keys).clone(),
        )
        .set_allowed_algs(ASYMMETRIC_ALGORITHMS)
        .set_time_fn(|| Utc::now() - chrono::Duration::seconds(ID_TOKEN_LEEWAY_SECONDS));
        let claims = token.claims(&verifier, &Nonce::new(nonce.to_owned())).map_err(|e| bad(id_token_reason(&e)))?;
        // OIDC Core §3.1.3.7 step 5, which `openidconnect` leaves to its
        // users: an `azp` must be us. (Step 4, several audiences, cannot
        // arise: the verifier trusts no audience but ours.)
        if claims.authorized_party().is_some_and(|azp| azp.as_str() != record.client_id) {
            return Err(bad("id_token_azp"));
        }
        let subject = claims.subject().as_str();
        if subject.is_empty() || subject.len() > 255 {
            return Err(bad("id_token_invalid"));
        }
        Ok(Profile {
            subject: subject.to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
        })
    }

    /// Finds, links or creates the account of a provider's user.
    async fn resolve_account(
        &self,
        record: &OAuthProviderRecord,
        profile: Profile,
        meta: &RequestMeta,
    ) -> Result<UserId> {
        let provider = record.name.as_str();
        let login_event = |user: UserId| {
            audit::event(
                kinds::OAUTH_LOGIN_SUCCEEDED,
                meta,
                Some(user),
                Some(user),
                Some(serde_json::json!({ "provider": provider })),
            )
        };
        let issuer = identity_issuer(record);
        let claimed = profile.email.as_deref().filter(|e| printable(e, 320));
        let identity = Identity { provider, issuer: &issuer, subject: &profile.subject, email: claimed };
        if let Some(user) = self.ctx.deps.store.user_by_identity(self.ctx.rt.id, &identity).await? {
            if user.disabled {
                return Err(Error::Unauthenticated);
            }
            self.ctx.deps.audit.record(self.ctx.rt.id, login_event(user.id));
            return Ok(user.id);
        }
        let email = profile
            .email
            .as_deref()
            .and_then(|e| authd_core::email::Email::parse(e).ok())
            .map(|e| e.as_str().to_owned());
        let existing = match &email {
            Some(e) => self.ctx.deps.store.user_by_email(self.ctx.rt.id, e).await?,
            None => None,
        };
        let settings = &self.ctx.rt.snapshot().record.settings;
        // The address is proven only when the provider verified it and the
        // tenant trusts this provider to say so.
        let proven = record.trust_email_verified && profile.email_verified;
        // Linking hands over an existing account: only on a proven address,
        // and only into an account whose own address is proven too. A
        // password account registered with someone else's address (never
        // proven) is never entered through a social login: that would hand
        // the attacker's account to its real owner's later sign-ins, or the
        // owner's sign-ins to the attacker (account pre-hijacking).
        if let Some(user) = &existing
            && settings.link_by_verified_email
            && proven
            && user.email_verified
        {
            if user.disabled {
                return Err(Error::Unauthenticated);
            }
            let event = audit::event(
                kinds::ACCOUNT_LINKED,
                meta,
                Some(user.id),
                Some(user.id),
                Some(serde_json::json!({ "provider": provider })),
            );
            self.ctx.deps.store.link_identity(self.ctx.rt.id, &identity, user.id, &event).await?;
            audit::log_event(self.ctx.rt.id, &event);
            self.ctx.deps.audit.record(self.ctx.rt.id, login_event(user.id));
            return Ok(user.id);
        }
        // A new account; the email only when it is proven and no account
        // has it, so an unproven address never blocks or claims its real
        // owner (the claim stays on the identity).
        let email = if existing.is_some() || !proven { None } else { email };
        let created = match self.create_federated_user(&identity, email.clone(), meta).await {
            // Taken meanwhile (a concurrent registration): without the email.
            Err(Error::EmailTaken) if email.is_some() => self.create_federated_user(&identity, None, meta).await,
            other => other,
        };
        let user = match created {
            Ok(user) => user,
            // A concurrent first login of the same person linked the
            // identity first: that account is theirs.
            Err(e) => match self.ctx.deps.store.user_by_identity(self.ctx.rt.id, &identity).await? {
                Some(user) if !user.disabled => user,
                _ => return Err(e),
            },
        };
        self.ctx.deps.audit.record(self.ctx.rt.id, login_event(user.id));
        Ok(user.id)
    }

    /// A new account for a provider's user; `email` is given only when it is
    /// proven, so the account's email counts as verified.
    async fn create_federated_user(
        &self,
        identity: &Identity<'_>,
        email: Option<String>,
        meta: &RequestMeta,
    ) -> Result<UserRecord> {
        let provider = identity.provider;
        let user = NewUser {
            id: UserId::new(),
            email_verified: email.is_some(),
            email,
            password_hash: None,
            role: Role::User,
            created_at: Utc::now(),
        };
        let event = audit::event(
            kinds::USER_REGISTERED,
            meta,
            Some(user.id),
            Some(user.id),
            Some(serde_json::json!({ "via": "oauth", "provider": provider })),
        );
        let record = self
            .ctx
            .deps
            .store
            .create_user_with_identity(self.ctx.rt.id, &user, identity, std::slice::from_ref(&event))
            .await?;
        audit::log_event(self.ctx.rt.id, &event);
        Ok(record)
    }

    /// `exchangeLoginCode`: the app's verifier must match the challenge it
    /// gave `startOAuthLogin`. The code is consumed by the first attempt,
    /// right or wrong, so a stolen code cannot be tried against verifiers.
    pub async fn exchange_login_code(&self, code: &str, verifier: &str, meta: &RequestMeta) -> Result<LoginOutcome> {
        // RFC 7636 §4.1: a verifier is 43 to 128 characters.
        if code.is_empty() || code.len() > 200 || verifier.len() < 43 || verifier.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        if code.starts_with(crate::email::MAGIC_CODE_PREFIX) {
            return self.ctx.email().exchange_magic_code(code, verifier, meta).await;
        }
        let hash = self.ctx.deps.keyring.keyed_hash(CODE_PURPOSE, code.as_bytes());
        let refuse = |reason: &str| {
            tracing::debug!(tenant = %self.ctx.rt.id, reason, "login code refused");
            Err(Error::Unauthenticated)
        };
        let Some(value) = self.ctx.deps.tokens.take_once(self.ctx.rt.id, CODE_KIND, &hash).await? else {
            return refuse("unknown or used code");
        };
        let stored: LoginCode = serde_json::from_str(&value).map_err(Error::internal)?;
        if stored.expires_ms < self.ctx.deps.clock.now_ms() {
            return refuse("expired code");
        }
        let ok: bool = s256(verifier).as_bytes().ct_eq(stored.app_challenge.as_bytes()).into();
        if !ok {
            return refuse("wrong verifier");
        }
        let user = match self.ctx.deps.store.user_by_id(self.ctx.rt.id, stored.user).await? {
            Some(u) if !u.disabled => u,
            _ => return refuse("user gone or disabled"),
        };
        // A social login never skips the second factor.
        self.ctx.mfa().second_factor_or_tokens(user, vec!["fed".into()], meta).await
    }
}

/// The token response of a code exchange: OAuth 2.0's fields plus the ID
/// token of OpenID Connect, kept as text so that a malformed one is told
/// apart from a failed exchange.
#[derive(Debug, Deserialize, Serialize)]
struct IdTokenField {
    id_token: Option<String>,
}

impl oauth2::ExtraTokenFields for IdTokenField {}

type ExchangeResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The `oauth2` client of a code exchange (every kind) and of GitHub's
/// authorization URL.
type OAuthClient<HasAuthUrl = EndpointNotSet, HasTokenUrl = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    ExchangeResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

/// The algorithms an ID token may use: asymmetric ones only.
const ASYMMETRIC_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Clock skew tolerated on an ID token's `exp`.
const ID_TOKEN_LEEWAY_SECONDS: i64 = 60;

/// The audit reason of a refused ID token.
fn id_token_reason(e: &ClaimsVerificationError) -> &'static str {
    use SignatureVerificationError as S;
    match e {
        ClaimsVerificationError::Expired(_) => "id_token_expired",
        ClaimsVerificationError::InvalidIssuer(_) => "id_token_issuer",
        ClaimsVerificationError::InvalidAudience(_) => "id_token_audience",
        ClaimsVerificationError::InvalidNonce(_) => "id_token_nonce",
        ClaimsVerificationError::SignatureVerification(S::NoMatchingKey | S::AmbiguousKeyId(_) | S::InvalidKey(_)) => {
            "id_token_unknown_key"
        }
        ClaimsVerificationError::SignatureVerification(S::DisallowedAlg(_) | S::UnsupportedAlg(_) | S::NoSignature) => {
            "id_token_algorithm"
        }
        ClaimsVerificationError::SignatureVerification(_) => "id_token_signature",
        _ => "id_token_invalid",
    }
}

/// The issuer an identity belongs to: the provider's kind and issuer URL as
/// configured now. Re-pointing a provider (another issuer, or another kind)
/// changes it, so identities linked under the old one never match again.
fn identity_issuer(record: &OAuthProviderRecord) -> String {
    format!("{}:{}", record.kind, record.issuer.as_deref().unwrap_or(""))
}

/// `email_verified` of a userinfo answer as a boolean (some providers send
/// the string "true").
fn claim_true(v: Option<&serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    }
}

/// GitHub has no ID token: the user from `/user`, the email from
/// `/user/emails`, where GitHub says which addresses it verified.
async fn github_profile(http: &net::ProviderHttp, endpoints: &Endpoints, token: &str) -> Result<Profile> {
    let api = endpoints.api.as_deref().ok_or_else(|| Error::internal("GitHub provider without API base"))?;
    let user = http.get_json(&format!("{api}/user"), Some(token)).await?;
    let subject = match user.get("id") {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(net::FetchError::Invalid("GitHub user without id".into()).into()),
    };
    let emails = http.get_json(&format!("{api}/user/emails"), Some(token)).await.unwrap_or_default();
    let list = emails.as_array().cloned().unwrap_or_default();
    let verified = |e: &serde_json::Value| e.get("verified").and_then(|v| v.as_bool()).unwrap_or(false);
    let primary = |e: &serde_json::Value| e.get("primary").and_then(|v| v.as_bool()).unwrap_or(false);
    let pick = list
        .iter()
        .find(|e| primary(e) && verified(e))
        .or_else(|| list.iter().find(|e| verified(e)))
        .or_else(|| list.iter().find(|e| primary(e)));
    let (email, email_verified) = match pick {
        Some(e) => (e.get("email").and_then(|v| v.as_str()).map(str::to_owned), verified(e)),
        None => (user.get("email").and_then(|v| v.as_str()).map(str::to_owned), false),
    };
    Ok(Profile { subject, email, email_verified })
}

fn placeholder_record() -> OAuthProviderRecord {
    OAuthProviderRecord {
        name: String::new(),
        kind: String::new(),
        display_name: String::new(),
        client_id: String::new(),
        client_secret_sealed: None,
        issuer: None,
        scopes: Vec::new(),
        enabled: false,
        trust_email_verified: false,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_base64url_of_sha256() {
        assert_eq!(s256("dBjftJeZ4CVP-mJ92K1uqbS2Qb2Ad5g7Cmd8ZEz8nB4"), "b3yFjyxcwzAbYpkV8fa2EKs9erTmBEotrfmOkqnz2P0");
        assert!(valid_challenge("b3yFjyxcwzAbYpkV8fa2EKs9erTmBEotrfmOkqnz2P0"));
        assert!(!valid_challenge("plain"));
    }

    #[test]
    fn redirect_keeps_the_apps_query() {
        assert_eq!(with_query("https://app/cb?x=1", &[("code", "a b")]), "https://app/cb?x=1&code=a+b");
        assert_eq!(with_query("https://app/cb", &[("error", "UNAVAILABLE")]), "https://app/cb?error=UNAVAILABLE");
    }
}
