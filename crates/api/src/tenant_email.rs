//! The tenant schema's email operations (merged into `Mutation`):
//! verification, password reset and change, magic links, email change.
//! Every link goes to an app URL the caller names (`redirectUri`, one of the
//! tenant's `allowedRedirectUris`), with the token in its query.

use async_graphql::{Context, Object, Result};

use crate::errors::GqlResult;
use crate::tenant_schema::{User, req};

#[derive(Default)]
pub struct EmailMutation;

#[Object]
impl EmailMutation {
    /// Mails the signed-in user a new verification link (replacing any
    /// earlier one); `false` when the address is already verified.
    async fn send_verification_email(&self, ctx: &Context<'_>, redirect_uri: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        r.tenant().email().send_verification_email(&p, &redirect_uri, &r.meta).await.gql()
    }

    /// Proves the address a verification link was sent to (`LINK_INVALID`
    /// when the token is unknown, used, replaced or expired).
    async fn verify_email(&self, ctx: &Context<'_>, token: String) -> Result<User> {
        let r = req(ctx)?;
        let user = r.tenant().email().verify_email(&token, &r.meta).await.gql()?;
        Ok(User::of(user, false))
    }

    /// Mails a password-reset link (30 minutes) if the address has an
    /// account. Always `true`, in the same time: nothing tells whether it has.
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String, redirect_uri: String) -> Result<bool> {
        let r = req(ctx)?;
        r.tenant().email().request_password_reset(&email, &redirect_uri, &r.meta).await.gql()
    }

    /// Sets a new password with a reset link's token; every session of the
    /// user ends.
    async fn reset_password(&self, ctx: &Context<'_>, token: String, new_password: String) -> Result<bool> {
        let r = req(ctx)?;
        r.tenant().email().reset_password(&token, &new_password, &r.meta).await.gql()
    }

    /// Changes the signed-in user's password (the current one required); the
    /// user's other sessions end.
    async fn change_password(&self, ctx: &Context<'_>, current_password: String, new_password: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        r.tenant().email().change_password(&p, &current_password, &new_password, &r.meta).await.gql()
    }

    /// Mails a sign-in link (15 minutes) if the address has an account and
    /// the tenant enabled magic links; the app exchanges the link's `code`
    /// with `exchangeLoginCode(code, codeVerifier)`. Always `true`.
    async fn request_magic_link(
        &self,
        ctx: &Context<'_>,
        email: String,
        redirect_uri: String,
        code_challenge: String,
    ) -> Result<bool> {
        let r = req(ctx)?;
        r.tenant().email().request_magic_link(&email, &redirect_uri, &code_challenge, &r.meta).await.gql()
    }

    /// Mails a confirmation link to a new address (the password required);
    /// the account keeps its address until the link is opened.
    async fn request_email_change(
        &self,
        ctx: &Context<'_>,
        new_email: String,
        password: String,
        redirect_uri: String,
    ) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        r.tenant().email().request_email_change(&p, &new_email, &password, &redirect_uri, &r.meta).await.gql()
    }

    /// Makes the new address the account's (verified); the old address is told.
    async fn confirm_email_change(&self, ctx: &Context<'_>, token: String) -> Result<User> {
        let r = req(ctx)?;
        let user = r.tenant().email().confirm_email_change(&token, &r.meta).await.gql()?;
        Ok(User::of(user, false))
    }
}
