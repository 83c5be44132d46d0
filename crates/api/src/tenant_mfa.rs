//! The tenant schema's two-factor operations (merged into `Mutation`):
//! TOTP enrollment, MFA challenges and recovery codes.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use authd_core::Error;

use crate::errors::{GqlResult, to_graphql};
use crate::tenant_schema::{AuthTokens, req};

#[derive(SimpleObject)]
pub struct TotpEnrollment {
    /// Base32 (RFC 4648) secret, shown once.
    secret: String,
    /// `otpauth://totp/…` (issuer = tenant name, label = email, SHA1, 6 digits, 30 s).
    otpauth_uri: String,
    /// The URI as a QR code, an SVG made by authd (never a third-party service).
    qr_svg: String,
}

#[derive(SimpleObject)]
pub struct RecoveryCodes {
    /// Single-use codes, shown once; authd keeps only keyed hashes.
    codes: Vec<String>,
}

#[derive(InputObject)]
pub struct VerifyMfaInput {
    challenge_id: String,
    /// A current TOTP code or an unused recovery code.
    code: String,
}

#[derive(Default)]
pub struct MfaMutation;

#[Object]
impl MfaMutation {
    /// Answers a login's MFA challenge with a TOTP code or a recovery code.
    /// Any failure is `MFA_INVALID`; five wrong codes kill the challenge.
    async fn verify_mfa(&self, ctx: &Context<'_>, input: VerifyMfaInput) -> Result<AuthTokens> {
        let r = req(ctx)?;
        let tokens = r.tenant().mfa().verify_mfa(&input.challenge_id, &input.code, &r.meta).await.gql()?;
        Ok(r.auth_tokens(tokens))
    }

    /// Starts TOTP enrollment for the signed-in user, re-authenticated by the
    /// password, or (a user without one) by a sign-in of the last 5 minutes.
    /// Nothing changes until `confirmTotpEnrollment`.
    async fn begin_totp_enrollment(&self, ctx: &Context<'_>, password: Option<String>) -> Result<TotpEnrollment> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let e = r.tenant().mfa().begin_totp_enrollment(&p, password.as_deref(), &r.meta).await.gql()?;
        Ok(TotpEnrollment { secret: e.secret_base32, otpauth_uri: e.otpauth_uri, qr_svg: e.qr_svg })
    }

    /// Turns TOTP on with a code from the new secret; returns 10 recovery codes.
    async fn confirm_totp_enrollment(&self, ctx: &Context<'_>, code: String) -> Result<RecoveryCodes> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        let codes = r.tenant().mfa().confirm_totp_enrollment(&p, &code, &r.meta).await.gql()?;
        Ok(RecoveryCodes { codes })
    }

    /// Turns TOTP off (password and a current code); revokes other sessions.
    async fn disable_totp(&self, ctx: &Context<'_>, password: String, code: String) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        r.tenant().mfa().disable_totp(&p, &password, &code, &r.meta).await.gql()
    }

    /// Replaces the recovery codes (a current TOTP code); revokes other sessions.
    async fn regenerate_recovery_codes(&self, ctx: &Context<'_>, code: String) -> Result<RecoveryCodes> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        match r.tenant().mfa().regenerate_recovery_codes(&p, &code, &r.meta).await {
            Ok(codes) => Ok(RecoveryCodes { codes }),
            Err(Error::BadInput { .. }) => Err(to_graphql(Error::MfaInvalid)),
            Err(e) => Err(to_graphql(e)),
        }
    }
}
