//! Reading result rows, once for both backends: a row of either answers
//! [`Columns`], which decodes ids, times and JSON as its backend stores them
//! (see [`crate::sql::Arg`]) and everything else alike.

use authd_core::records::*;
use authd_core::settings::SigningAlgorithm;
use authd_core::{EventId, Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::{Decode, Postgres, Sqlite, Type};
use uuid::Uuid;

use crate::{Error, Result, role_from_str};

/// A column type both backends decode the same way: text, flags, integers.
pub(crate) trait Plain:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<T> Plain for T where T: for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite> {}

/// A result row of either backend, by column name.
pub(crate) trait Columns {
    fn get<T: Plain>(&self, col: &str) -> Result<T>;
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>>;

    fn id(&self, col: &str) -> Result<Uuid> {
        self.opt_id(col)?.ok_or_else(|| null(col))
    }

    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.opt_time(col)?.ok_or_else(|| null(col))
    }

    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        let value = self.opt_json(col)?.ok_or_else(|| null(col))?;
        serde_json::from_value(value).map_err(|e| Error::Internal(e.to_string()))
    }

    /// A count selected `AS n`.
    fn count(&self) -> Result<u64> {
        Ok(u64::try_from(self.get::<i64>("n")?).unwrap_or(0))
    }
}

fn null(col: &str) -> Error {
    Error::Internal(format!("column {col} is NULL"))
}

pub(crate) fn tenant(row: &impl Columns) -> Result<TenantRecord> {
    let slug: String = row.get("slug")?;
    Ok(TenantRecord {
        id: TenantId(row.id("id")?),
        slug: Slug::parse(&slug).map_err(|e| Error::Internal(e.to_string()))?,
        name: row.get("name")?,
        disabled: row.get("disabled")?,
        settings: row.json("settings")?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn user(row: &impl Columns) -> Result<UserRecord> {
    let role: String = row.get("role")?;
    Ok(UserRecord {
        id: UserId(row.id("id")?),
        email: row.get("email")?,
        email_verified: row.get("email_verified")?,
        password_hash: row.get("password_hash")?,
        role: role_from_str(&role)?,
        disabled: row.get("disabled")?,
        totp_enabled: row.get("totp_enabled")?,
        totp_secret_sealed: row.get("totp_secret_sealed")?,
        totp_pending_sealed: row.get("totp_pending_sealed")?,
        totp_last_step: row.get("totp_last_step")?,
        created_at: row.time("created_at")?,
    })
}

/// A user's sealed TOTP secrets: (user, active, pending).
pub(crate) fn sealed_totp(row: &impl Columns) -> Result<(UserId, Option<String>, Option<String>)> {
    Ok((UserId(row.id("id")?), row.get("totp_secret_sealed")?, row.get("totp_pending_sealed")?))
}

pub(crate) fn key(row: &impl Columns) -> Result<SigningKeyRecord> {
    let alg: String = row.get("algorithm")?;
    Ok(SigningKeyRecord {
        kid: row.get("kid")?,
        algorithm: SigningAlgorithm::parse(&alg).map_err(|e| Error::Internal(e.to_string()))?,
        private_key_sealed: row.get("private_key_sealed")?,
        public_jwk: row.json("public_jwk")?,
        created_at: row.time("created_at")?,
        activates_at: row.time("activates_at")?,
    })
}

pub(crate) fn event(row: &impl Columns) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: EventId(row.id("id")?),
        at: row.time("at")?,
        kind: row.get("type")?,
        actor_id: row.opt_id("actor_id")?.map(UserId),
        subject_id: row.opt_id("subject_id")?.map(UserId),
        ip: row.get("ip")?,
        user_agent: row.get("user_agent")?,
        request_id: row.get("request_id")?,
        detail: row.opt_json("detail")?,
    })
}

pub(crate) fn platform_event(row: &impl Columns) -> Result<PlatformEvent> {
    Ok(PlatformEvent {
        id: EventId(row.id("id")?),
        at: row.time("at")?,
        kind: row.get("type")?,
        tenant_id: row.opt_id("tenant_id")?.map(TenantId),
        tenant_slug: row.get("tenant_slug")?,
        operator: row.get("operator")?,
        ip: row.get("ip")?,
        user_agent: row.get("user_agent")?,
        request_id: row.get("request_id")?,
        detail: row.opt_json("detail")?,
    })
}

pub(crate) fn provider(row: &impl Columns) -> Result<OAuthProviderRecord> {
    Ok(OAuthProviderRecord {
        name: row.get("name")?,
        kind: row.get("kind")?,
        display_name: row.get("display_name")?,
        client_id: row.get("client_id")?,
        client_secret_sealed: row.get("client_secret_sealed")?,
        issuer: row.get("issuer")?,
        scopes: row.json("scopes")?,
        enabled: row.get("enabled")?,
        trust_email_verified: row.get("trust_email_verified")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn link(row: &impl Columns) -> Result<EmailLink> {
    Ok(EmailLink {
        user_id: UserId(row.id("user_id")?),
        kind: row.get("kind")?,
        token_hash: row.get("token_hash")?,
        email: row.get("email")?,
        code_challenge: row.get("code_challenge")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
    })
}

pub(crate) fn outbox_stats(row: &impl Columns) -> Result<OutboxStats> {
    Ok(OutboxStats { queued: row.count()?, oldest: row.opt_time("oldest")?, next_due: row.opt_time("next_due")? })
}

pub(crate) fn passkey(row: &impl Columns) -> Result<PasskeyRecord> {
    Ok(PasskeyRecord {
        id: row.id("id")?,
        user_id: UserId(row.id("user_id")?),
        credential_id: row.get("credential_id")?,
        name: row.get("name")?,
        credential: row.get("credential")?,
        sign_count: row.get("sign_count")?,
        backup_eligible: row.get("backup_eligible")?,
        backup_state: row.get("backup_state")?,
        created_at: row.time("created_at")?,
        last_used_at: row.opt_time("last_used_at")?,
    })
}

pub(crate) fn client(row: &impl Columns) -> Result<OAuthClientRecord> {
    Ok(OAuthClientRecord {
        client_id: row.get("client_id")?,
        name: row.get("name")?,
        secret_hash: row.get("secret_hash")?,
        redirect_uris: row.json("redirect_uris")?,
        post_logout_redirect_uris: row.json("post_logout_redirect_uris")?,
        public: row.get("public")?,
        first_party: row.get("first_party")?,
        grant_types: row.json("grant_types")?,
        scopes: row.json("scopes")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}
