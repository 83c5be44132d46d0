//! The tenant schema (`schema/tenant.graphql`), served at `POST /t/{tenant}/graphql`.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    Context, EmptySubscription, Enum, ID, InputObject, Json, Object, Result, Schema, SimpleObject, Union,
};
use authd_core::mail::{MailKind, TemplateOverride};
use authd_core::records::{AuditEvent as AuditRecord, AuditFilter, UserRecord};
use authd_core::settings::{RateLimitPolicy, Role, SigningAlgorithm, TenantSettings};
use authd_core::{Error, UserId};
use authd_tenancy::audit::RequestMeta;
use authd_tenancy::keyset::KeyInfo;
use authd_tenancy::{Deps, TenantRuntime};
use authd_tenancy::{IssuedTokens, LoginOutcome, Principal, TenantCtx};
use axum::http::HeaderValue;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::client::{ACCESS_COOKIE, REFRESH_COOKIE, set_cookie};
use crate::errors::{GqlResult, to_graphql};
use crate::graphql::{MAX_COMPLEXITY, MAX_DEPTH, page_size};

pub type TenantSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// The tenant schema's `Query`: the core queries and the social-login ones.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    TenantQuery,
    crate::tenant_oauth::OAuthQuery,
    crate::tenant_passkeys::PasskeyQuery,
    crate::tenant_sso::SsoQuery,
);

/// The tenant schema's `Mutation`: the core operations and the two-factor ones.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    TenantMutation,
    crate::tenant_mfa::MfaMutation,
    crate::tenant_oauth::OAuthMutation,
    crate::tenant_email::EmailMutation,
    crate::tenant_passkeys::PasskeyMutation,
    crate::tenant_sso::SsoMutation,
);

pub fn build() -> TenantSchema {
    Schema::build(QueryRoot::default(), MutationRoot::default(), EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// Everything a tenant request's resolvers need, put into the context by the route.
pub struct TenantRequest {
    pub deps: Arc<Deps>,
    pub rt: Arc<TenantRuntime>,
    pub meta: RequestMeta,
    pub bearer: Option<String>,
    pub access_cookie: Option<String>,
    pub refresh_cookie: Option<String>,
    /// The request's `Origin` is one of the tenant's `allowedOrigins`:
    /// only then may a cookie authenticate it (CSRF).
    pub origin_allowed: bool,
    /// `X-Auth-Mode: cookie`: the refresh token stays out of the body.
    pub cookie_mode: bool,
    /// `Secure` on cookies (the public URL is https).
    pub secure_cookies: bool,
    pub set_cookies: Mutex<Vec<HeaderValue>>,
    principal: OnceCell<std::result::Result<Principal, authd_core::ErrorCode>>,
}

impl TenantRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        deps: Arc<Deps>,
        rt: Arc<TenantRuntime>,
        meta: RequestMeta,
        bearer: Option<String>,
        access_cookie: Option<String>,
        refresh_cookie: Option<String>,
        origin_allowed: bool,
        cookie_mode: bool,
        secure_cookies: bool,
    ) -> Self {
        Self {
            deps,
            rt,
            meta,
            bearer,
            access_cookie,
            refresh_cookie,
            origin_allowed,
            cookie_mode,
            secure_cookies,
            set_cookies: Mutex::new(Vec::new()),
            principal: OnceCell::new(),
        }
    }

    pub fn tenant(&self) -> TenantCtx<'_> {
        TenantCtx { deps: &self.deps, rt: &self.rt }
    }

    /// The authenticated caller: a bearer token, or the access cookie when
    /// the request's origin is allowed. Verified once per request.
    pub async fn principal(&self) -> std::result::Result<Principal, Error> {
        let result = self
            .principal
            .get_or_init(|| async {
                let token = match (&self.bearer, &self.access_cookie) {
                    (Some(b), _) => b.clone(),
                    (None, Some(c)) if self.origin_allowed => c.clone(),
                    _ => return Err(authd_core::ErrorCode::Unauthenticated),
                };
                self.tenant().sessions().authenticate(&token).await.map_err(|e| {
                    if let Some(cause) = e.cause() {
                        tracing::warn!(error = cause, "authentication failed on a backend error");
                    }
                    e.code()
                })
            })
            .await;
        match result {
            Ok(p) => Ok(p.clone()),
            Err(authd_core::ErrorCode::Unavailable) => Err(Error::unavailable("token store")),
            Err(_) => Err(Error::Unauthenticated),
        }
    }

    /// A signed-in user whose token is not limited to MFA enrollment.
    pub async fn full_principal(&self) -> std::result::Result<Principal, Error> {
        let p = self.principal().await?;
        if p.mfa_enrollment_required {
            return Err(Error::forbidden("two-factor enrollment is required first"));
        }
        Ok(p)
    }

    fn path(&self) -> String {
        format!("/t/{}", self.rt.slug)
    }

    /// Sets the session cookies after a successful token call.
    fn remember(&self, tokens: &IssuedTokens, refresh_ttl: u64) {
        let path = self.path();
        let mut cookies = self.set_cookies.lock();
        cookies.extend(set_cookie(ACCESS_COOKIE, &tokens.access_token, &path, tokens.expires_in, self.secure_cookies));
        cookies.extend(set_cookie(REFRESH_COOKIE, &tokens.refresh_token, &path, refresh_ttl, self.secure_cookies));
    }

    fn forget(&self) {
        let path = self.path();
        let mut cookies = self.set_cookies.lock();
        cookies.extend(set_cookie(ACCESS_COOKIE, "", &path, 0, self.secure_cookies));
        cookies.extend(set_cookie(REFRESH_COOKIE, "", &path, 0, self.secure_cookies));
    }

    pub(crate) fn auth_tokens(&self, tokens: IssuedTokens) -> AuthTokens {
        self.remember(&tokens, self.deps.config.refresh_token_ttl.as_secs());
        AuthTokens {
            access_token: tokens.access_token,
            refresh_token: (!self.cookie_mode).then_some(tokens.refresh_token),
            token_type: "Bearer".into(),
            expires_in: i32::try_from(tokens.expires_in).unwrap_or(i32::MAX),
            user: User::of(tokens.user, true),
        }
    }

    /// Tokens or an MFA challenge (password login, social login).
    pub(crate) fn login_result(&self, outcome: LoginOutcome) -> LoginResult {
        match outcome {
            LoginOutcome::Tokens(t) => LoginResult::AuthTokens(self.auth_tokens(*t)),
            LoginOutcome::MfaChallenge { challenge_id, methods, expires_in } => {
                LoginResult::MfaChallenge(MfaChallenge {
                    challenge_id,
                    methods,
                    expires_in: i32::try_from(expires_in).unwrap_or(300),
                })
            }
        }
    }

    /// The refresh token from the argument, or from the cookie when the
    /// origin is allowed.
    fn refresh_token(&self, arg: Option<String>) -> Option<String> {
        arg.or_else(|| if self.origin_allowed { self.refresh_cookie.clone() } else { None })
    }
}

/// The request's context, put there by the route (all tenant resolvers use it).
pub(crate) fn req<'a>(ctx: &'a Context<'_>) -> Result<&'a TenantRequest> {
    ctx.data::<Arc<TenantRequest>>().map(|r| &**r)
}

// ------------------------------------------------------------------ types

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Role", rename_items = "UPPERCASE")]
pub enum GqlRole {
    User,
    Admin,
}

impl From<Role> for GqlRole {
    fn from(r: Role) -> Self {
        match r {
            Role::User => Self::User,
            Role::Admin => Self::Admin,
        }
    }
}

impl From<GqlRole> for Role {
    fn from(r: GqlRole) -> Self {
        match r {
            GqlRole::User => Self::User,
            GqlRole::Admin => Self::Admin,
        }
    }
}

/// Pinned names (docs/api.md): `ES256`, `EDDSA`, `RS256`.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "SigningAlgorithm")]
pub enum GqlAlgorithm {
    #[graphql(name = "ES256")]
    Es256,
    #[graphql(name = "EDDSA")]
    EdDsa,
    #[graphql(name = "RS256")]
    Rs256,
}

impl From<SigningAlgorithm> for GqlAlgorithm {
    fn from(a: SigningAlgorithm) -> Self {
        match a {
            SigningAlgorithm::Es256 => Self::Es256,
            SigningAlgorithm::EdDsa => Self::EdDsa,
            SigningAlgorithm::Rs256 => Self::Rs256,
        }
    }
}

impl From<GqlAlgorithm> for SigningAlgorithm {
    fn from(a: GqlAlgorithm) -> Self {
        match a {
            GqlAlgorithm::Es256 => Self::Es256,
            GqlAlgorithm::EdDsa => Self::EdDsa,
            GqlAlgorithm::Rs256 => Self::Rs256,
        }
    }
}

pub struct User {
    record: UserRecord,
    /// The viewer may read this user's activity (self, or an admin).
    activity_visible: bool,
}

impl User {
    pub(crate) fn of(record: UserRecord, activity_visible: bool) -> Self {
        Self { record, activity_visible }
    }
}

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.record.id.to_string())
    }
    async fn email(&self) -> Option<&str> {
        self.record.email.as_deref()
    }
    /// The email is proven: its owner opened a link mailed to it
    /// (verification, password reset, magic link, email change), or a
    /// social-login provider the tenant trusts for `email_verified` asserted
    /// it, or it is the first admin's. Only such accounts are ever linked to
    /// a social login by email.
    async fn email_verified(&self) -> bool {
        self.record.email_verified
    }
    async fn role(&self) -> GqlRole {
        self.record.role.into()
    }
    async fn totp_enabled(&self) -> bool {
        self.record.totp_enabled
    }
    async fn disabled(&self) -> bool {
        self.record.disabled
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.record.created_at
    }
    /// The user's own recent security events, newest first.
    async fn recent_activity(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i32>,
    ) -> Result<Vec<AuditEvent>> {
        if !self.activity_visible {
            return Err(to_graphql(Error::forbidden("only the user and tenant admins see this")));
        }
        let limit = page_size(first, 20)?;
        let r = req(ctx)?;
        let filter = AuditFilter { user_id: Some(self.record.id), ..Default::default() };
        let events = r.deps.store.audit_events(r.rt.id, &filter, None, limit).await.map_err(Error::from).gql()?;
        Ok(events.into_iter().map(AuditEvent).collect())
    }
}

#[derive(SimpleObject)]
pub struct Session {
    id: ID,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    user_agent: Option<String>,
    ip: Option<String>,
    current: bool,
}

#[derive(SimpleObject)]
pub struct AuthTokens {
    access_token: String,
    refresh_token: Option<String>,
    token_type: String,
    expires_in: i32,
    user: User,
}

#[derive(SimpleObject)]
pub struct MfaChallenge {
    challenge_id: String,
    methods: Vec<String>,
    expires_in: i32,
}

#[derive(Union)]
pub enum LoginResult {
    AuthTokens(AuthTokens),
    MfaChallenge(MfaChallenge),
}

#[derive(SimpleObject)]
pub struct SigningKey {
    kid: String,
    algorithm: GqlAlgorithm,
    created_at: DateTime<Utc>,
    activates_at: DateTime<Utc>,
}

impl From<KeyInfo> for SigningKey {
    fn from(k: KeyInfo) -> Self {
        Self { kid: k.kid, algorithm: k.algorithm.into(), created_at: k.created_at, activates_at: k.activates_at }
    }
}

pub struct AuditEvent(pub AuditRecord);

#[Object]
impl AuditEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn actor_id(&self) -> Option<ID> {
        self.0.actor_id.map(|u| ID(u.to_string()))
    }
    async fn subject_id(&self) -> Option<ID> {
        self.0.subject_id.map(|u| ID(u.to_string()))
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    async fn detail(&self) -> Option<Json<serde_json::Value>> {
        self.0.detail.clone().map(Json)
    }
}

/// Limits per tenant; counts per window (see the README).
#[derive(SimpleObject)]
#[graphql(name = "RateLimitPolicy")]
pub struct GqlRateLimits {
    login_per_ip_per_minute: i32,
    failed_logins_per_account_per_hour: i32,
    failed_logins_per_account_ip_per_15_minutes: i32,
    registrations_per_ip_per_hour: i32,
    mfa_attempts_per_account_per_15_minutes: i32,
    refresh_per_session_per_minute: i32,
    tenant_requests_per_second: i32,
    email_requests_per_address_per_hour: i32,
    email_requests_per_ip_per_hour: i32,
    token_requests_per_client_per_minute: i32,
}

/// Every field optional: only those given change.
#[derive(InputObject)]
#[graphql(name = "RateLimitPolicyInput")]
pub struct RateLimitPolicyInput {
    login_per_ip_per_minute: Option<i32>,
    failed_logins_per_account_per_hour: Option<i32>,
    failed_logins_per_account_ip_per_15_minutes: Option<i32>,
    registrations_per_ip_per_hour: Option<i32>,
    mfa_attempts_per_account_per_15_minutes: Option<i32>,
    refresh_per_session_per_minute: Option<i32>,
    tenant_requests_per_second: Option<i32>,
    email_requests_per_address_per_hour: Option<i32>,
    email_requests_per_ip_per_hour: Option<i32>,
    token_requests_per_client_per_minute: Option<i32>,
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl From<&RateLimitPolicy> for GqlRateLimits {
    fn from(p: &RateLimitPolicy) -> Self {
        Self {
            login_per_ip_per_minute: to_i32(p.login_per_ip_per_minute),
            failed_logins_per_account_per_hour: to_i32(p.failed_logins_per_account_per_hour),
            failed_logins_per_account_ip_per_15_minutes: to_i32(p.failed_logins_per_account_ip_per_15_minutes),
            registrations_per_ip_per_hour: to_i32(p.registrations_per_ip_per_hour),
            mfa_attempts_per_account_per_15_minutes: to_i32(p.mfa_attempts_per_account_per_15_minutes),
            refresh_per_session_per_minute: to_i32(p.refresh_per_session_per_minute),
            tenant_requests_per_second: to_i32(p.tenant_requests_per_second),
            email_requests_per_address_per_hour: to_i32(p.email_requests_per_address_per_hour),
            email_requests_per_ip_per_hour: to_i32(p.email_requests_per_ip_per_hour),
            token_requests_per_client_per_minute: to_i32(p.token_requests_per_client_per_minute),
        }
    }
}

fn non_negative(field: &str, v: Option<i32>, current: u32) -> std::result::Result<u32, Error> {
    match v {
        None => Ok(current),
        Some(v) => {
            u32::try_from(v).map_err(|_| Error::bad_input(format!("rateLimits.{field}"), "must not be negative"))
        }
    }
}

impl RateLimitPolicyInput {
    fn merge(self, p: &RateLimitPolicy) -> std::result::Result<RateLimitPolicy, Error> {
        Ok(RateLimitPolicy {
            login_per_ip_per_minute: non_negative(
                "loginPerIpPerMinute",
                self.login_per_ip_per_minute,
                p.login_per_ip_per_minute,
            )?,
            failed_logins_per_account_per_hour: non_negative(
                "failedLoginsPerAccountPerHour",
                self.failed_logins_per_account_per_hour,
                p.failed_logins_per_account_per_hour,
            )?,
            failed_logins_per_account_ip_per_15_minutes: non_negative(
                "failedLoginsPerAccountIpPer15Minutes",
                self.failed_logins_per_account_ip_per_15_minutes,
                p.failed_logins_per_account_ip_per_15_minutes,
            )?,
            registrations_per_ip_per_hour: non_negative(
                "registrationsPerIpPerHour",
                self.registrations_per_ip_per_hour,
                p.registrations_per_ip_per_hour,
            )?,
            mfa_attempts_per_account_per_15_minutes: non_negative(
                "mfaAttemptsPerAccountPer15Minutes",
                self.mfa_attempts_per_account_per_15_minutes,
                p.mfa_attempts_per_account_per_15_minutes,
            )?,
            refresh_per_session_per_minute: non_negative(
                "refreshPerSessionPerMinute",
                self.refresh_per_session_per_minute,
                p.refresh_per_session_per_minute,
            )?,
            tenant_requests_per_second: non_negative(
                "tenantRequestsPerSecond",
                self.tenant_requests_per_second,
                p.tenant_requests_per_second,
            )?,
            email_requests_per_address_per_hour: non_negative(
                "emailRequestsPerAddressPerHour",
                self.email_requests_per_address_per_hour,
                p.email_requests_per_address_per_hour,
            )?,
            email_requests_per_ip_per_hour: non_negative(
                "emailRequestsPerIpPerHour",
                self.email_requests_per_ip_per_hour,
                p.email_requests_per_ip_per_hour,
            )?,
            token_requests_per_client_per_minute: non_negative(
                "tokenRequestsPerClientPerMinute",
                self.token_requests_per_client_per_minute,
                p.token_requests_per_client_per_minute,
            )?,
        })
    }
}

#[derive(SimpleObject)]
#[graphql(name = "TenantSettings")]
pub struct GqlSettings {
    access_token_lifetime_minutes: i32,
    signing_algorithm: GqlAlgorithm,
    audience: String,
    password_min_length: i32,
    require_mfa_for_admins: bool,
    allowed_redirect_uris: Vec<String>,
    allowed_origins: Vec<String>,
    link_by_verified_email: bool,
    audit_retention_days: i32,
    rate_limits: GqlRateLimits,
    /// A correct password of an account whose email is not verified answers
    /// `EMAIL_NOT_VERIFIED` (default false).
    require_verified_email: bool,
    /// `requestMagicLink` mails sign-in links (default false).
    magic_links_enabled: bool,
    /// The tenant's own wording of its mails (the built-in one for kinds
    /// and parts not listed).
    email_templates: Vec<EmailTemplate>,
    /// The WebAuthn relying-party ID; null: the public URL's host.
    webauthn_rp_id: Option<String>,
    /// Origins accepted in passkey ceremonies; empty: the tenant's
    /// `allowedOrigins` within the relying party, and the public URL's origin.
    webauthn_origins: Vec<String>,
}

/// What a mail is for (`snake_case` in audit details and the outbox).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum EmailTemplateKind {
    #[graphql(name = "VERIFICATION")]
    Verification,
    #[graphql(name = "PASSWORD_RESET")]
    PasswordReset,
    #[graphql(name = "MAGIC_LINK")]
    MagicLink,
    /// Sent to the new address of an email change.
    #[graphql(name = "EMAIL_CHANGE")]
    EmailChange,
    /// Sent to the old address once an email change is confirmed.
    #[graphql(name = "EMAIL_CHANGED")]
    EmailChanged,
}

impl From<MailKind> for EmailTemplateKind {
    fn from(k: MailKind) -> Self {
        match k {
            MailKind::Verification => Self::Verification,
            MailKind::PasswordReset => Self::PasswordReset,
            MailKind::MagicLink => Self::MagicLink,
            MailKind::EmailChange => Self::EmailChange,
            MailKind::EmailChanged => Self::EmailChanged,
        }
    }
}

impl From<EmailTemplateKind> for MailKind {
    fn from(k: EmailTemplateKind) -> Self {
        match k {
            EmailTemplateKind::Verification => Self::Verification,
            EmailTemplateKind::PasswordReset => Self::PasswordReset,
            EmailTemplateKind::MagicLink => Self::MagicLink,
            EmailTemplateKind::EmailChange => Self::EmailChange,
            EmailTemplateKind::EmailChanged => Self::EmailChanged,
        }
    }
}

/// A tenant's wording of one kind of mail, as minijinja templates with the
/// variables `tenant`, `email`, `link`, `expires_in` and `new_email`; the
/// HTML part escapes them. A part left null keeps the built-in one.
#[derive(SimpleObject)]
pub struct EmailTemplate {
    kind: EmailTemplateKind,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
}

/// One kind's wording; checked when saved (syntax, variables, and the text
/// and HTML parts of a link mail must show `{{ link }}`).
#[derive(InputObject)]
pub struct EmailTemplateInput {
    kind: EmailTemplateKind,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
}

fn settings_out(s: &TenantSettings, slug: &str) -> GqlSettings {
    GqlSettings {
        access_token_lifetime_minutes: i32::try_from(s.access_token_lifetime_minutes).unwrap_or(i32::MAX),
        signing_algorithm: s.signing_algorithm.into(),
        audience: s.audience_for(slug).to_owned(),
        password_min_length: i32::try_from(s.password_min_length).unwrap_or(i32::MAX),
        require_mfa_for_admins: s.require_mfa_for_admins,
        allowed_redirect_uris: s.allowed_redirect_uris.clone(),
        allowed_origins: s.allowed_origins.clone(),
        link_by_verified_email: s.link_by_verified_email,
        audit_retention_days: i32::try_from(s.audit_retention_days).unwrap_or(i32::MAX),
        rate_limits: (&s.rate_limits).into(),
        require_verified_email: s.require_verified_email,
        magic_links_enabled: s.magic_links_enabled,
        email_templates: s
            .email_templates
            .iter()
            .map(|t| EmailTemplate {
                kind: t.kind.into(),
                subject: t.subject.clone(),
                text: t.text.clone(),
                html: t.html.clone(),
            })
            .collect(),
        webauthn_rp_id: s.webauthn_rp_id.clone(),
        webauthn_origins: s.webauthn_origins.clone(),
    }
}

/// Every field optional: only those given change.
#[derive(InputObject)]
pub struct TenantSettingsInput {
    access_token_lifetime_minutes: Option<i32>,
    signing_algorithm: Option<GqlAlgorithm>,
    audience: Option<String>,
    password_min_length: Option<i32>,
    require_mfa_for_admins: Option<bool>,
    allowed_redirect_uris: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    link_by_verified_email: Option<bool>,
    audit_retention_days: Option<i32>,
    rate_limits: Option<RateLimitPolicyInput>,
    require_verified_email: Option<bool>,
    magic_links_enabled: Option<bool>,
    /// Replaces every override (an empty list restores the built-in wording).
    email_templates: Option<Vec<EmailTemplateInput>>,
    /// An empty string restores the default (the public URL's host).
    webauthn_rp_id: Option<String>,
    webauthn_origins: Option<Vec<String>>,
}

fn int_field(field: &str, v: Option<i32>, current: u32) -> std::result::Result<u32, Error> {
    match v {
        None => Ok(current),
        Some(v) => u32::try_from(v).map_err(|_| Error::bad_input(field, "must not be negative")),
    }
}

impl TenantSettingsInput {
    fn merge(self, old: &TenantSettings) -> std::result::Result<TenantSettings, Error> {
        Ok(TenantSettings {
            access_token_lifetime_minutes: int_field(
                "accessTokenLifetimeMinutes",
                self.access_token_lifetime_minutes,
                old.access_token_lifetime_minutes,
            )?,
            signing_algorithm: self.signing_algorithm.map(Into::into).unwrap_or(old.signing_algorithm),
            audience: self.audience.map(|a| a.trim().to_owned()).unwrap_or_else(|| old.audience.clone()),
            password_min_length: int_field("passwordMinLength", self.password_min_length, old.password_min_length)?,
            require_mfa_for_admins: self.require_mfa_for_admins.unwrap_or(old.require_mfa_for_admins),
            allowed_redirect_uris: self.allowed_redirect_uris.unwrap_or_else(|| old.allowed_redirect_uris.clone()),
            allowed_origins: self.allowed_origins.unwrap_or_else(|| old.allowed_origins.clone()),
            link_by_verified_email: self.link_by_verified_email.unwrap_or(old.link_by_verified_email),
            audit_retention_days: int_field("auditRetentionDays", self.audit_retention_days, old.audit_retention_days)?,
            rate_limits: match self.rate_limits {
                Some(r) => r.merge(&old.rate_limits)?,
                None => old.rate_limits.clone(),
            },
            require_verified_email: self.require_verified_email.unwrap_or(old.require_verified_email),
            magic_links_enabled: self.magic_links_enabled.unwrap_or(old.magic_links_enabled),
            email_templates: match self.email_templates {
                Some(list) => list
                    .into_iter()
                    .map(|t| TemplateOverride { kind: t.kind.into(), subject: t.subject, text: t.text, html: t.html })
                    .collect(),
                None => old.email_templates.clone(),
            },
            webauthn_rp_id: match self.webauthn_rp_id {
                Some(v) if v.trim().is_empty() => None,
                Some(v) => Some(v.trim().to_owned()),
                None => old.webauthn_rp_id.clone(),
            },
            webauthn_origins: self.webauthn_origins.unwrap_or_else(|| old.webauthn_origins.clone()),
        })
    }
}

#[derive(InputObject)]
pub struct RegisterInput {
    email: String,
    password: String,
    /// Where the verification link goes (one of `allowedRedirectUris`); when
    /// given, the new account is mailed `{redirectUri}?token=…`.
    redirect_uri: Option<String>,
}

#[derive(InputObject)]
pub struct LoginInput {
    email: String,
    password: String,
}

// ------------------------------------------------------------------ query

#[derive(Default)]
pub struct TenantQuery;

#[Object]
impl TenantQuery {
    /// The signed-in user.
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(User::of(r.tenant().accounts().me(&p).await.gql()?, true))
    }

    /// The signed-in user's live sessions.
    async fn sessions(&self, ctx: &Context<'_>) -> Result<Vec<Session>> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        let sessions = r.tenant().sessions().list(&p).await.gql()?;
        Ok(sessions
            .into_iter()
            .map(|s| Session {
                id: ID(s.id.to_string()),
                created_at: DateTime::from_timestamp(s.created_at, 0).unwrap_or_default(),
                last_used_at: DateTime::from_timestamp(s.last_used_at, 0).unwrap_or_default(),
                user_agent: s.user_agent,
                ip: s.ip,
                current: s.id == p.session,
            })
            .collect())
    }

    /// Tenant admins: the tenant's users, by id, optionally by email prefix.
    async fn users(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i32>,
        after: Option<String>,
        email_prefix: Option<String>,
    ) -> Result<Connection<String, User>> {
        let r = req(ctx)?;
        let limit = page_size(first, 50)?;
        let after = match after {
            Some(c) => Some(
                crate::cursor::decode(&c)
                    .and_then(|s| s.parse::<UserId>())
                    .map_err(|_| Error::bad_input("after", "not a cursor from this API"))
                    .gql()?,
            ),
            None => None,
        };
        let p = r.principal().await.gql()?;
        let mut rows = r.tenant().admin().list_users(&p, email_prefix.as_deref(), after, limit + 1).await.gql()?;
        let has_next = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut conn = Connection::new(after.is_some(), has_next);
        conn.edges
            .extend(rows.into_iter().map(|u| Edge::new(crate::cursor::encode(&u.id.to_string()), User::of(u, true))));
        Ok(conn)
    }

    /// Tenant admins: the tenant's settings.
    async fn tenant_settings(&self, ctx: &Context<'_>) -> Result<GqlSettings> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let s = r.tenant().admin().tenant_settings(&p).await.gql()?;
        Ok(settings_out(&s, r.rt.slug.as_str()))
    }

    /// Tenant admins: audit events, newest first.
    #[allow(clippy::too_many_arguments)] // one per GraphQL argument
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i32>,
        after: Option<String>,
        #[graphql(name = "type")] kind: Option<String>,
        user_id: Option<ID>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Connection<String, AuditEvent>> {
        let r = req(ctx)?;
        let limit = page_size(first, 50)?;
        let cursor = after.as_deref().map(crate::cursor::parse_event).transpose().gql()?;
        let user_id = match user_id {
            Some(id) => Some(id.parse::<UserId>().map_err(|_| Error::bad_input("userId", "not a user id")).gql()?),
            None => None,
        };
        let p = r.principal().await.gql()?;
        r.tenant().admin().require_admin(&p).await.gql()?;
        let filter = AuditFilter { kind, user_id, since, until };
        let mut rows =
            r.deps.store.audit_events(r.rt.id, &filter, cursor, limit + 1).await.map_err(Error::from).gql()?;
        let has_next = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut conn = Connection::new(cursor.is_some(), has_next);
        conn.edges.extend(rows.into_iter().map(|e| Edge::new(crate::cursor::event(e.at, e.id), AuditEvent(e))));
        Ok(conn)
    }
}

// ------------------------------------------------------------------ mutation

#[derive(Default)]
pub struct TenantMutation;

#[Object]
impl TenantMutation {
    /// Creates a password account.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<User> {
        let r = req(ctx)?;
        let user = r
            .tenant()
            .accounts()
            .register(&input.email, &input.password, input.redirect_uri.as_deref(), &r.meta)
            .await
            .gql()?;
        Ok(User::of(user, true))
    }

    /// Signs in with email and password: tokens, or an MFA challenge.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<LoginResult> {
        let r = req(ctx)?;
        let outcome = r.tenant().accounts().login(&input.email, &input.password, &r.meta).await;
        crate::observe::count_login(r.rt.slug.as_str(), &outcome);
        match outcome.gql()? {
            LoginOutcome::Tokens(t) => Ok(LoginResult::AuthTokens(r.auth_tokens(*t))),
            LoginOutcome::MfaChallenge { challenge_id, methods, expires_in } => {
                Ok(LoginResult::MfaChallenge(MfaChallenge {
                    challenge_id,
                    methods,
                    expires_in: i32::try_from(expires_in).unwrap_or(300),
                }))
            }
        }
    }

    /// Rotates a refresh token (argument, or the refresh cookie).
    async fn refresh(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<AuthTokens> {
        let r = req(ctx)?;
        let token = r.refresh_token(refresh_token).ok_or(Error::Unauthenticated).gql()?;
        match r.tenant().sessions().refresh(&token, &r.meta).await {
            Ok(t) => Ok(r.auth_tokens(t)),
            Err(e) => {
                if matches!(e, Error::TokenReused | Error::Unauthenticated) {
                    r.forget();
                }
                Err(to_graphql(e))
            }
        }
    }

    /// Revokes the session of the refresh token (argument or cookie), or else
    /// the caller's current session.
    async fn logout(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<bool> {
        let r = req(ctx)?;
        let token = r.refresh_token(refresh_token);
        let principal = if token.is_none() { Some(r.principal().await.gql()?) } else { None };
        let done = r.tenant().sessions().logout(token.as_deref(), principal.as_ref(), &r.meta).await.gql()?;
        r.forget();
        Ok(done)
    }

    /// Revokes every session of the caller; returns how many.
    async fn logout_all(&self, ctx: &Context<'_>) -> Result<i32> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let n = r.tenant().sessions().logout_all(&p, &r.meta).await.gql()?;
        r.forget();
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Revokes one of the caller's sessions.
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        r.tenant().sessions().revoke(&p, &id, &r.meta).await.gql()
    }

    /// Tenant admins: changes the given settings.
    async fn update_tenant_settings(&self, ctx: &Context<'_>, input: TenantSettingsInput) -> Result<GqlSettings> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let tenant = r.tenant();
        let old = tenant.admin().tenant_settings(&p).await.gql()?;
        let new = input.merge(&old).gql()?;
        let saved = tenant.admin().update_settings(&p, new, &r.meta).await.gql()?;
        Ok(settings_out(&saved, r.rt.slug.as_str()))
    }

    /// Tenant admins: disables (revoking every session) or enables a user.
    async fn set_user_disabled(&self, ctx: &Context<'_>, user_id: ID, disabled: bool) -> Result<User> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(User::of(r.tenant().admin().set_user_disabled(&p, &user_id, disabled, &r.meta).await.gql()?, true))
    }

    /// Tenant admins: changes a user's role.
    async fn set_user_role(&self, ctx: &Context<'_>, user_id: ID, role: GqlRole) -> Result<User> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(User::of(r.tenant().admin().set_user_role(&p, &user_id, role.into(), &r.meta).await.gql()?, true))
    }

    /// Tenant admins: adds a signing key, published now, signing after one
    /// JWKS cache lifetime (or at once with `immediate`, for a compromised
    /// key: every older key then leaves the JWKS and stops verifying at once,
    /// on every replica; its tokens, this admin's included, are refused).
    async fn rotate_signing_key(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] immediate: Option<bool>,
    ) -> Result<SigningKey> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(r.tenant().admin().rotate_signing_key(&p, immediate.unwrap_or(false), &r.meta).await.gql()?.into())
    }
}
