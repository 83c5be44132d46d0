//! The tenant schema's social-login operations (merged into `Query` and
//! `Mutation`): provider configuration for tenant admins, the public list of
//! providers, and the two ends of the flow an app drives.

use async_graphql::{Context, Enum, InputObject, Object, Result, SimpleObject};
use authd_core::records::OAuthProviderRecord;
use authd_tenancy::oauth::{ProviderInput, ProviderKind};
use chrono::{DateTime, Utc};

use crate::errors::GqlResult;
use crate::tenant_schema::{LoginResult, req};

/// Pinned names (docs/api.md): `GOOGLE`, `GITHUB`, `OIDC`.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "OAuthProviderKind")]
pub enum GqlProviderKind {
    #[graphql(name = "GOOGLE")]
    Google,
    #[graphql(name = "GITHUB")]
    Github,
    #[graphql(name = "OIDC")]
    Oidc,
}

impl From<GqlProviderKind> for ProviderKind {
    fn from(k: GqlProviderKind) -> Self {
        match k {
            GqlProviderKind::Google => Self::Google,
            GqlProviderKind::Github => Self::Github,
            GqlProviderKind::Oidc => Self::Oidc,
        }
    }
}

fn kind_of(record: &OAuthProviderRecord) -> GqlProviderKind {
    match ProviderKind::parse(&record.kind) {
        Ok(ProviderKind::Google) => GqlProviderKind::Google,
        Ok(ProviderKind::Github) => GqlProviderKind::Github,
        _ => GqlProviderKind::Oidc,
    }
}

/// What a login page needs to show a provider's button.
#[derive(SimpleObject)]
#[graphql(name = "OAuthProviderPublic")]
pub struct OAuthProviderPublic {
    name: String,
    kind: GqlProviderKind,
    display_name: String,
}

/// A provider's configuration; the client secret is write-only.
#[derive(SimpleObject)]
#[graphql(name = "OAuthProviderConfig")]
pub struct OAuthProviderConfig {
    name: String,
    kind: GqlProviderKind,
    display_name: String,
    client_id: String,
    client_secret_set: bool,
    /// OIDC: the issuer. GITHUB: the base URL of a GitHub Enterprise Server
    /// (null: github.com). GOOGLE: null (https://accounts.google.com).
    issuer: Option<String>,
    scopes: Vec<String>,
    enabled: bool,
    trust_email_verified: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<OAuthProviderRecord> for OAuthProviderConfig {
    fn from(r: OAuthProviderRecord) -> Self {
        Self {
            kind: kind_of(&r),
            client_secret_set: r.client_secret_sealed.is_some(),
            name: r.name,
            display_name: r.display_name,
            client_id: r.client_id,
            issuer: r.issuer,
            scopes: r.scopes,
            enabled: r.enabled,
            trust_email_verified: r.trust_email_verified,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Creates or replaces a provider. Omitted optional fields keep their
/// current value, or for a new provider take the kind's default.
#[derive(InputObject)]
#[graphql(name = "OAuthProviderInput")]
pub struct OAuthProviderInput {
    /// The tenant's name for the provider, used in the callback URL
    /// `/t/{tenant}/oauth/{name}/callback`.
    name: String,
    kind: GqlProviderKind,
    client_id: String,
    /// Write-only; omitted on an update keeps the current secret.
    client_secret: Option<String>,
    /// Required for OIDC. For GITHUB the base URL of a GitHub Enterprise
    /// Server (endpoints `{issuer}/login/oauth/*` and `{issuer}/api/v3`).
    issuer: Option<String>,
    /// Default: `openid email profile` (OIDC, GOOGLE), `read:user user:email` (GITHUB).
    scopes: Option<Vec<String>>,
    /// Default true.
    enabled: Option<bool>,
    display_name: Option<String>,
    /// Whether the provider's `email_verified` is believed (for linking by
    /// email). Default: true for GOOGLE and GITHUB, false for OIDC.
    trust_email_verified: Option<bool>,
}

#[derive(SimpleObject)]
#[graphql(name = "OAuthStart")]
pub struct OAuthStart {
    /// Where to send the browser.
    authorization_url: String,
}

#[derive(Default)]
pub struct OAuthQuery;

#[Object]
impl OAuthQuery {
    /// The enabled social-login providers, for login buttons.
    async fn oauth_providers(&self, ctx: &Context<'_>) -> Result<Vec<OAuthProviderPublic>> {
        let r = req(ctx)?;
        Ok(r.tenant()
            .social()
            .providers_public()
            .into_iter()
            .map(|p| OAuthProviderPublic { kind: kind_of(&p), name: p.name, display_name: p.display_name })
            .collect())
    }

    /// Tenant admins: every provider's configuration.
    async fn oauth_provider_configs(&self, ctx: &Context<'_>) -> Result<Vec<OAuthProviderConfig>> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(r.tenant().social().provider_configs(&p).await.gql()?.into_iter().map(Into::into).collect())
    }
}

#[derive(Default)]
pub struct OAuthMutation;

#[Object]
impl OAuthMutation {
    /// Starts a social login. `redirectUri` must be one of the tenant's
    /// `allowedRedirectUris` exactly; `codeChallenge` is the app's PKCE S256
    /// challenge, whose verifier `exchangeLoginCode` will need.
    #[graphql(name = "startOAuthLogin")]
    async fn start_oauth_login(
        &self,
        ctx: &Context<'_>,
        provider: String,
        redirect_uri: String,
        code_challenge: String,
    ) -> Result<OAuthStart> {
        let r = req(ctx)?;
        let url = r.tenant().social().start_login(&provider, &redirect_uri, &code_challenge, &r.meta).await.gql()?;
        Ok(OAuthStart { authorization_url: url })
    }

    /// Ends a social login: the one-time `code` the app received on its
    /// `redirectUri`, and the app's PKCE verifier. Tokens with `amr: ["fed"]`,
    /// or an MFA challenge when the user has TOTP.
    async fn exchange_login_code(&self, ctx: &Context<'_>, code: String, code_verifier: String) -> Result<LoginResult> {
        let r = req(ctx)?;
        let outcome = r.tenant().social().exchange_login_code(&code, &code_verifier, &r.meta).await.gql()?;
        Ok(r.login_result(outcome))
    }

    /// Tenant admins: creates or replaces a provider.
    #[graphql(name = "upsertOAuthProvider")]
    async fn upsert_oauth_provider(&self, ctx: &Context<'_>, input: OAuthProviderInput) -> Result<OAuthProviderConfig> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let input = ProviderInput {
            name: input.name,
            kind: input.kind.into(),
            client_id: input.client_id,
            client_secret: input.client_secret,
            issuer: input.issuer,
            scopes: input.scopes,
            enabled: input.enabled,
            display_name: input.display_name,
            trust_email_verified: input.trust_email_verified,
        };
        Ok(r.tenant().social().upsert_provider(&p, input, &r.meta).await.gql()?.into())
    }

    /// Tenant admins: removes a provider and the identities linked through it.
    #[graphql(name = "deleteOAuthProvider")]
    async fn delete_oauth_provider(&self, ctx: &Context<'_>, name: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        r.tenant().social().delete_provider(&p, &name, &r.meta).await.gql()
    }
}
