//! The tenant schema's single sign-on operations (merged into `Query` and
//! `Mutation`): tenant admins manage the OAuth clients of the tenant's
//! OpenID provider; a user withdraws a consent.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use authd_core::records::OAuthClientRecord;
use authd_tenancy::sso::ClientInput;
use chrono::{DateTime, Utc};

use crate::errors::GqlResult;
use crate::tenant_schema::req;

/// A client of the tenant's OpenID provider.
#[derive(SimpleObject)]
#[graphql(name = "OAuthClient")]
pub struct OAuthClient {
    client_id: String,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    /// No secret: authenticates with PKCE alone (`token_endpoint_auth_method` `none`).
    public: bool,
    /// Trusted: no consent page.
    first_party: bool,
    grant_types: Vec<String>,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
}

impl From<OAuthClientRecord> for OAuthClient {
    fn from(c: OAuthClientRecord) -> Self {
        Self {
            client_id: c.client_id,
            name: c.name,
            redirect_uris: c.redirect_uris,
            post_logout_redirect_uris: c.post_logout_redirect_uris,
            public: c.public,
            first_party: c.first_party,
            grant_types: c.grant_types,
            scopes: c.scopes,
            created_at: c.created_at,
        }
    }
}

/// A client with its secret, shown this once (null for a public client).
#[derive(SimpleObject)]
#[graphql(name = "OAuthClientCreated")]
pub struct OAuthClientCreated {
    client: OAuthClient,
    client_secret: Option<String>,
}

/// `scopes` null means all four (`openid`, `profile`, `email`,
/// `offline_access`); `redirectUris` may be empty only when the only grant
/// type is `client_credentials`.
#[derive(InputObject)]
#[graphql(name = "OAuthClientInput")]
pub struct OAuthClientInput {
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Option<Vec<String>>,
    #[graphql(default = false)]
    public: bool,
    #[graphql(default = false)]
    first_party: bool,
    #[graphql(default_with = "Some(vec![\"authorization_code\".to_owned(), \"refresh_token\".to_owned()])")]
    grant_types: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
}

impl From<OAuthClientInput> for ClientInput {
    fn from(i: OAuthClientInput) -> Self {
        Self {
            name: i.name,
            redirect_uris: i.redirect_uris,
            post_logout_redirect_uris: i.post_logout_redirect_uris,
            public: i.public,
            first_party: i.first_party,
            grant_types: i.grant_types,
            scopes: i.scopes,
        }
    }
}

#[derive(Default)]
pub struct SsoQuery;

#[Object]
impl SsoQuery {
    /// Tenant admins: the OAuth clients of the tenant's OpenID provider.
    #[graphql(name = "oauthClients")]
    async fn oauth_clients(&self, ctx: &Context<'_>) -> Result<Vec<OAuthClient>> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(r.tenant().sso().clients(&p).await.gql()?.into_iter().map(Into::into).collect())
    }
}

#[derive(Default)]
pub struct SsoMutation;

#[Object]
impl SsoMutation {
    /// Tenant admins: registers a client; a confidential client's secret is
    /// in the answer, once.
    #[graphql(name = "createOAuthClient")]
    async fn create_o_auth_client(&self, ctx: &Context<'_>, input: OAuthClientInput) -> Result<OAuthClientCreated> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let (client, secret) = r.tenant().sso().create_client(&p, input.into(), &r.meta).await.gql()?;
        Ok(OAuthClientCreated { client: client.into(), client_secret: secret })
    }

    /// Tenant admins: replaces a client's settings (not its id or secret;
    /// `public` cannot change).
    #[graphql(name = "updateOAuthClient")]
    async fn update_o_auth_client(
        &self,
        ctx: &Context<'_>,
        client_id: String,
        input: OAuthClientInput,
    ) -> Result<OAuthClient> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(r.tenant().sso().update_client(&p, &client_id, input.into(), &r.meta).await.gql()?.into())
    }

    /// Tenant admins: a new secret for a confidential client; the old one
    /// stops working at once.
    #[graphql(name = "rotateOAuthClientSecret")]
    async fn rotate_o_auth_client_secret(&self, ctx: &Context<'_>, client_id: String) -> Result<OAuthClientCreated> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let (client, secret) = r.tenant().sso().rotate_secret(&p, &client_id, &r.meta).await.gql()?;
        Ok(OAuthClientCreated { client: client.into(), client_secret: Some(secret) })
    }

    /// Tenant admins: deletes a client and the consents given to it.
    #[graphql(name = "deleteOAuthClient")]
    async fn delete_o_auth_client(&self, ctx: &Context<'_>, client_id: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        r.tenant().sso().delete_client(&p, &client_id, &r.meta).await.gql()
    }

    /// The signed-in user withdraws the consent given to a third-party
    /// client; it asks again on the next sign-in.
    #[graphql(name = "revokeOAuthConsent")]
    async fn revoke_o_auth_consent(&self, ctx: &Context<'_>, client_id: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        r.tenant().sso().revoke_consent(&p, &client_id).await.gql()
    }
}
