//! The tenant schema's passkey operations (merged into `Query` and
//! `Mutation`): registration for a signed-in user, sign-in with or without
//! an email, and the user's list. Options and credentials travel as the
//! WebAuthn Level 3 JSON forms (binary fields base64url), so a browser's
//! `PublicKeyCredential.parseCreationOptionsFromJSON` and `toJSON()` fit.

use async_graphql::{Context, ID, Json, Object, Result, SimpleObject};
use authd_core::records::PasskeyRecord;
use chrono::{DateTime, Utc};

use crate::errors::GqlResult;
use crate::tenant_schema::{LoginResult, req};

/// A ceremony to hand to the browser.
#[derive(SimpleObject)]
pub struct PasskeyOptions {
    /// Names the ceremony in the finishing call: single use, 5 minutes.
    challenge_id: String,
    /// The `publicKey` member: `PublicKeyCredentialCreationOptionsJSON` or
    /// `PublicKeyCredentialRequestOptionsJSON`.
    options: Json<serde_json::Value>,
}

/// One of the user's passkeys.
#[derive(SimpleObject)]
pub struct Passkey {
    id: ID,
    name: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    /// The authenticator said the credential may be backed up or synced.
    backup_eligible: bool,
    /// The credential is backed up or synced now (as of its last use).
    backup_state: bool,
}

impl From<PasskeyRecord> for Passkey {
    fn from(p: PasskeyRecord) -> Self {
        Self {
            id: ID(p.id.to_string()),
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
            backup_eligible: p.backup_eligible,
            backup_state: p.backup_state,
        }
    }
}

impl From<authd_tenancy::passkeys::Options> for PasskeyOptions {
    fn from(o: authd_tenancy::passkeys::Options) -> Self {
        Self { challenge_id: o.challenge_id, options: Json(o.options) }
    }
}

#[derive(Default)]
pub struct PasskeyQuery;

#[Object]
impl PasskeyQuery {
    /// The caller's own passkeys.
    async fn passkeys(&self, ctx: &Context<'_>) -> Result<Vec<Passkey>> {
        let r = req(ctx)?;
        let p = r.principal().await.gql()?;
        Ok(r.tenant().passkeys().list(&p).await.gql()?.into_iter().map(Into::into).collect())
    }
}

#[derive(Default)]
pub struct PasskeyMutation;

#[Object]
impl PasskeyMutation {
    /// Starts registering a passkey for the signed-in user (its existing
    /// passkeys excluded; a discoverable credential and user verification
    /// preferred).
    async fn begin_passkey_registration(&self, ctx: &Context<'_>) -> Result<PasskeyOptions> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        Ok(r.tenant().passkeys().begin_registration(&p).await.gql()?.into())
    }

    /// Finishes a registration with the browser's credential
    /// (`RegistrationResponseJSON`); any failure is `UNAUTHENTICATED`.
    async fn finish_passkey_registration(
        &self,
        ctx: &Context<'_>,
        challenge_id: String,
        credential: Json<serde_json::Value>,
        name: Option<String>,
    ) -> Result<Passkey> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        let t = r.tenant();
        let record =
            t.passkeys().finish_registration(&p, &challenge_id, credential.0, name.as_deref(), &r.meta).await.gql()?;
        Ok(record.into())
    }

    /// Starts a passkey sign-in: with an email, that account's passkeys are
    /// offered (an unknown email gets options of the same shape); without,
    /// none (the browser offers its discoverable credentials).
    async fn begin_passkey_login(&self, ctx: &Context<'_>, email: Option<String>) -> Result<PasskeyOptions> {
        let r = req(ctx)?;
        Ok(r.tenant().passkeys().begin_login(email.as_deref(), &r.meta).await.gql()?.into())
    }

    /// Finishes a passkey sign-in with the browser's credential
    /// (`AuthenticationResponseJSON`). A verified user gets tokens with
    /// `amr ["hwk","user"]`; otherwise `["hwk"]`, and a TOTP user an
    /// `MfaChallenge`. Limited like `login`; any failure is `UNAUTHENTICATED`.
    async fn finish_passkey_login(
        &self,
        ctx: &Context<'_>,
        challenge_id: String,
        credential: Json<serde_json::Value>,
    ) -> Result<LoginResult> {
        let r = req(ctx)?;
        let t = r.tenant();
        let outcome = t.passkeys().finish_login(&challenge_id, credential.0, &r.meta).await.gql()?;
        Ok(r.login_result(outcome))
    }

    /// Renames one of the caller's passkeys.
    async fn rename_passkey(&self, ctx: &Context<'_>, id: ID, name: String) -> Result<Passkey> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        Ok(r.tenant().passkeys().rename(&p, &id, &name).await.gql()?.into())
    }

    /// Deletes one of the caller's passkeys; `false` when there is no such passkey.
    async fn delete_passkey(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let r = req(ctx)?;
        let p = r.full_principal().await.gql()?;
        r.tenant().passkeys().delete(&p, &id, &r.meta).await.gql()
    }
}
