//! The SQL both backends say alike, said once.
//!
//! sqlx's SQLite driver takes Postgres' `$N` placeholders, so a statement
//! that means the same in both dialects has one text here, with its values
//! bound in one order. The values are [`Arg`]s, named by what they mean; each
//! backend binds them as its schema stores them (Postgres: `uuid`,
//! `timestamptz`, `jsonb`; SQLite: UUID text, unix microseconds, JSON text).
//!
//! What differs stays in its backend, saying why: Postgres stamps changes
//! with its own clock (`now()`) where SQLite binds the service's, uses
//! arrays, typed NULL parameters, `FOR UPDATE` and its row-level security
//! functions.

use authd_core::records::*;
use authd_core::{Slug, TenantId, UserId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Error, Result};

/// A value to bind, by what it means.
pub(crate) enum Arg<'a> {
    /// A UUID (ids of tenants, users, events, passkeys, mails).
    Id(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
    Json(Option<serde_json::Value>),
    Text(Option<&'a str>),
    Int(Option<i64>),
    Flag(Option<bool>),
}

/// A statement and its values, for either backend to bind and run.
pub(crate) struct Stmt<'a> {
    pub(crate) sql: &'static str,
    pub(crate) args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    pub(crate) fn new(sql: &'static str) -> Self {
        Self { sql, args: Vec::new() }
    }

    fn arg(mut self, arg: Arg<'a>) -> Self {
        self.args.push(arg);
        self
    }

    pub(crate) fn id(self, v: impl Into<Option<Uuid>>) -> Self {
        self.arg(Arg::Id(v.into()))
    }

    pub(crate) fn time(self, v: impl Into<Option<DateTime<Utc>>>) -> Self {
        self.arg(Arg::Time(v.into()))
    }

    pub(crate) fn json(self, v: impl Into<Option<serde_json::Value>>) -> Self {
        self.arg(Arg::Json(v.into()))
    }

    pub(crate) fn text(self, v: &'a str) -> Self {
        self.arg(Arg::Text(Some(v)))
    }

    pub(crate) fn opt_text(self, v: Option<&'a str>) -> Self {
        self.arg(Arg::Text(v))
    }

    pub(crate) fn int(self, v: impl Into<Option<i64>>) -> Self {
        self.arg(Arg::Int(v.into()))
    }

    pub(crate) fn flag(self, v: impl Into<Option<bool>>) -> Self {
        self.arg(Arg::Flag(v.into()))
    }

    /// The first two values of nearly every statement: the tenant and a user.
    pub(crate) fn tenant_user(sql: &'static str, tenant: TenantId, user: UserId) -> Self {
        Self::new(sql).id(tenant.0).id(user.0)
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

// Column lists, as macros so that statements stay `&'static str` (`concat!`).
macro_rules! user_columns {
    () => {
        "id, email, email_verified, password_hash, role, disabled, totp_enabled, totp_secret_sealed, \
         totp_pending_sealed, totp_last_step, created_at"
    };
}
macro_rules! tenant_columns {
    () => {
        "id, slug, name, disabled, settings, created_at"
    };
}
macro_rules! client_columns {
    () => {
        "client_id, name, secret_hash, redirect_uris, post_logout_redirect_uris, public, first_party, \
         grant_types, scopes, created_at, updated_at"
    };
}
macro_rules! passkey_columns {
    () => {
        "id, user_id, credential_id, name, credential, sign_count, backup_eligible, backup_state, \
         created_at, last_used_at"
    };
}

pub(crate) use {client_columns, tenant_columns, user_columns};

/// Escapes `%`, `_` and `\` so a user-supplied prefix matches literally
/// (`LIKE … ESCAPE '\'`).
pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---- tenants ----

pub(crate) fn insert_tenant(t: &NewTenant) -> Result<Stmt<'_>> {
    Ok(Stmt::new(concat!(
        "INSERT INTO tenants (id, slug, name, settings, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) RETURNING ",
        tenant_columns!()
    ))
    .id(t.id.0)
    .text(t.slug.as_str())
    .text(&t.name)
    .json(to_json(&t.settings)?)
    .time(t.created_at))
}

pub(crate) fn tenant_by_slug(slug: &str) -> Stmt<'_> {
    Stmt::new(concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE slug = $1")).text(slug)
}

pub(crate) fn tenant_by_id(id: TenantId) -> Stmt<'static> {
    Stmt::new(concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1")).id(id.0)
}

/// Tenant-owned rows go by `ON DELETE CASCADE`.
pub(crate) fn delete_tenant(slug: &Slug) -> Stmt<'_> {
    Stmt::new("DELETE FROM tenants WHERE slug = $1 RETURNING id").text(slug.as_str())
}

// ---- users ----

pub(crate) fn insert_user(tenant: TenantId, u: &NewUser) -> Stmt<'_> {
    Stmt::new(concat!(
        "INSERT INTO users (tenant_id, id, email, password_hash, role, created_at, updated_at, email_verified) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING ",
        user_columns!()
    ))
    .id(tenant.0)
    .id(u.id.0)
    .opt_text(u.email.as_deref())
    .opt_text(u.password_hash.as_deref())
    .text(u.role.as_str())
    .time(u.created_at)
    .flag(u.email_verified)
}

pub(crate) fn user_by_email(tenant: TenantId, email: &str) -> Stmt<'_> {
    Stmt::new(concat!("SELECT ", user_columns!(), " FROM users WHERE tenant_id = $1 AND email = $2"))
        .id(tenant.0)
        .text(email)
}

/// The user linked to an identity.
pub(crate) fn user_by_identity<'a>(tenant: TenantId, identity: &Identity<'a>) -> Stmt<'a> {
    Stmt::new(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE tenant_id = $1 AND id = \
         (SELECT user_id FROM user_identities \
         WHERE tenant_id = $1 AND provider = $2 AND issuer = $3 AND subject = $4)"
    ))
    .id(tenant.0)
    .text(identity.provider)
    .text(identity.issuer)
    .text(identity.subject)
}

/// `n`: how many enabled admins the tenant has.
pub(crate) fn count_active_admins(tenant: TenantId) -> Stmt<'static> {
    Stmt::new("SELECT count(*) AS n FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled").id(tenant.0)
}

/// Only a later step than the stored one: a code is accepted once.
pub(crate) fn advance_totp_step(tenant: TenantId, user: UserId, step: i64) -> Stmt<'static> {
    Stmt::tenant_user(
        "UPDATE users SET totp_last_step = $3 WHERE tenant_id = $1 AND id = $2 AND totp_enabled \
         AND (totp_last_step IS NULL OR totp_last_step < $3)",
        tenant,
        user,
    )
    .int(step)
}

pub(crate) fn sealed_totp_secrets(tenant: TenantId) -> Stmt<'static> {
    Stmt::new(
        "SELECT id, totp_secret_sealed, totp_pending_sealed FROM users WHERE tenant_id = $1 \
         AND (totp_secret_sealed IS NOT NULL OR totp_pending_sealed IS NOT NULL)",
    )
    .id(tenant.0)
}

// ---- recovery codes ----

pub(crate) fn delete_recovery_codes(tenant: TenantId, user: UserId) -> Stmt<'static> {
    Stmt::tenant_user("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2", tenant, user)
}

/// `n`: how many unused codes the user has.
pub(crate) fn recovery_codes_left(tenant: TenantId, user: UserId) -> Stmt<'static> {
    Stmt::tenant_user(
        "SELECT count(*) AS n FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
        tenant,
        user,
    )
}

// ---- signing keys ----

pub(crate) fn insert_key(tenant: TenantId, k: &SigningKeyRecord) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO signing_keys (tenant_id, kid, algorithm, private_key_sealed, public_jwk, created_at, activates_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .id(tenant.0)
    .text(&k.kid)
    .text(k.algorithm.as_str())
    .text(&k.private_key_sealed)
    .json(k.public_jwk.clone())
    .time(k.created_at)
    .time(k.activates_at)
}

pub(crate) fn signing_keys(tenant: TenantId) -> Stmt<'static> {
    Stmt::new("SELECT * FROM signing_keys WHERE tenant_id = $1 ORDER BY activates_at, kid").id(tenant.0)
}

pub(crate) fn reseal_signing_key<'a>(tenant: TenantId, kid: &'a str, sealed: &'a str) -> Stmt<'a> {
    Stmt::new("UPDATE signing_keys SET private_key_sealed = $3 WHERE tenant_id = $1 AND kid = $2")
        .id(tenant.0)
        .text(kid)
        .text(sealed)
}

// ---- audit events ----

pub(crate) fn insert_event(tenant: TenantId, e: &AuditEvent) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO audit_events (tenant_id, id, at, type, actor_id, subject_id, ip, user_agent, request_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .id(tenant.0)
    .id(e.id.0)
    .time(e.at)
    .text(&e.kind)
    .id(e.actor_id.map(|u| u.0))
    .id(e.subject_id.map(|u| u.0))
    .opt_text(e.ip.as_deref())
    .opt_text(e.user_agent.as_deref())
    .opt_text(e.request_id.as_deref())
    .json(e.detail.clone())
}

pub(crate) fn insert_platform_event(e: &PlatformEvent) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO platform_audit_events (id, at, type, tenant_id, tenant_slug, operator, ip, user_agent, \
         request_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .id(e.id.0)
    .time(e.at)
    .text(&e.kind)
    .id(e.tenant_id.map(|t| t.0))
    .opt_text(e.tenant_slug.as_deref())
    .opt_text(e.operator.as_deref())
    .opt_text(e.ip.as_deref())
    .opt_text(e.user_agent.as_deref())
    .opt_text(e.request_id.as_deref())
    .json(e.detail.clone())
}

// ---- OAuth providers and linked identities ----

pub(crate) fn oauth_providers(tenant: TenantId) -> Stmt<'static> {
    Stmt::new("SELECT * FROM oauth_providers WHERE tenant_id = $1 ORDER BY name").id(tenant.0)
}

/// Keeps `created_at`, and the sealed secret when none is given.
pub(crate) fn upsert_oauth_provider(tenant: TenantId, p: &OAuthProviderRecord) -> Result<Stmt<'_>> {
    Ok(Stmt::new(
        "INSERT INTO oauth_providers (tenant_id, name, kind, display_name, client_id, client_secret_sealed, \
         issuer, scopes, enabled, trust_email_verified, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (tenant_id, name) DO UPDATE SET kind = EXCLUDED.kind, display_name = EXCLUDED.display_name, \
         client_id = EXCLUDED.client_id, \
         client_secret_sealed = COALESCE(EXCLUDED.client_secret_sealed, oauth_providers.client_secret_sealed), \
         issuer = EXCLUDED.issuer, scopes = EXCLUDED.scopes, enabled = EXCLUDED.enabled, \
         trust_email_verified = EXCLUDED.trust_email_verified, updated_at = EXCLUDED.updated_at \
         RETURNING *",
    )
    .id(tenant.0)
    .text(&p.name)
    .text(&p.kind)
    .text(&p.display_name)
    .text(&p.client_id)
    .opt_text(p.client_secret_sealed.as_deref())
    .opt_text(p.issuer.as_deref())
    .json(to_json(&p.scopes)?)
    .flag(p.enabled)
    .flag(p.trust_email_verified)
    .time(p.created_at)
    .time(p.updated_at))
}

pub(crate) fn delete_oauth_provider(tenant: TenantId, name: &str) -> Stmt<'_> {
    Stmt::new("DELETE FROM oauth_providers WHERE tenant_id = $1 AND name = $2").id(tenant.0).text(name)
}

/// The identities linked through a provider.
pub(crate) fn delete_identities(tenant: TenantId, provider: &str) -> Stmt<'_> {
    Stmt::new("DELETE FROM user_identities WHERE tenant_id = $1 AND provider = $2").id(tenant.0).text(provider)
}

// ---- email links ----

/// Replaces the user's earlier link of its kind.
pub(crate) fn upsert_link(tenant: TenantId, l: &EmailLink) -> Stmt<'_> {
    Stmt::tenant_user(
        "INSERT INTO email_links (tenant_id, user_id, kind, token_hash, email, code_challenge, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, user_id, kind) DO UPDATE SET \
         token_hash = EXCLUDED.token_hash, email = EXCLUDED.email, code_challenge = EXCLUDED.code_challenge, \
         created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
        tenant,
        l.user_id,
    )
    .text(&l.kind)
    .text(&l.token_hash)
    .text(&l.email)
    .opt_text(l.code_challenge.as_deref())
    .time(l.created_at)
    .time(l.expires_at)
}

pub(crate) fn link_by_hash(tenant: TenantId, hash: &str) -> Stmt<'_> {
    Stmt::new(
        "SELECT user_id, kind, token_hash, email, code_challenge, created_at, expires_at FROM email_links \
         WHERE tenant_id = $1 AND token_hash = $2",
    )
    .id(tenant.0)
    .text(hash)
}

/// Deletes the link only while it is stored with its hash (redeemed once).
pub(crate) fn take_link(tenant: TenantId, l: &EmailLink) -> Stmt<'_> {
    Stmt::tenant_user(
        "DELETE FROM email_links WHERE tenant_id = $1 AND user_id = $2 AND kind = $3 AND token_hash = $4",
        tenant,
        l.user_id,
    )
    .text(&l.kind)
    .text(&l.token_hash)
}

pub(crate) fn delete_links(tenant: TenantId, user: UserId, kind: &str) -> Stmt<'_> {
    Stmt::tenant_user("DELETE FROM email_links WHERE tenant_id = $1 AND user_id = $2 AND kind = $3", tenant, user)
        .text(kind)
}

// ---- the mail outbox ----

pub(crate) fn insert_mail(tenant: TenantId, m: &OutboxMail) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO mail_outbox (id, tenant_id, kind, message_sealed, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .id(m.id)
    .id(tenant.0)
    .text(&m.kind)
    .text(&m.message_sealed)
    .time(m.created_at)
}

pub(crate) fn delete_mail(id: Uuid) -> Stmt<'static> {
    Stmt::new("DELETE FROM mail_outbox WHERE id = $1").id(id)
}

pub(crate) fn defer_mail(id: Uuid, retry_at: DateTime<Utc>, error: &str) -> Stmt<'_> {
    Stmt::new("UPDATE mail_outbox SET next_attempt_at = $2, claimed_until = NULL, last_error = $3 WHERE id = $1")
        .id(id)
        .time(retry_at)
        .text(error)
}

/// `n` queued mails, the `oldest` one's creation time, and when the first
/// one can be claimed (`next_due`: its next attempt, or its lease's end if
/// later).
pub(crate) fn outbox_stats() -> Stmt<'static> {
    Stmt::new(
        "SELECT count(*) AS n, min(created_at) AS oldest, \
         min(CASE WHEN claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END) AS next_due \
         FROM mail_outbox WHERE failed_at IS NULL",
    )
}

// ---- passkeys ----

pub(crate) fn passkeys(tenant: TenantId, user: UserId) -> Stmt<'static> {
    Stmt::tenant_user(
        concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at, id"
        ),
        tenant,
        user,
    )
}

pub(crate) fn passkey_by_credential(tenant: TenantId, credential_id: &str) -> Stmt<'_> {
    Stmt::new(concat!("SELECT ", passkey_columns!(), " FROM passkeys WHERE tenant_id = $1 AND credential_id = $2"))
        .id(tenant.0)
        .text(credential_id)
}

pub(crate) fn insert_passkey(tenant: TenantId, p: &PasskeyRecord) -> Stmt<'_> {
    Stmt::new(
        "INSERT INTO passkeys (tenant_id, id, user_id, credential_id, name, credential, sign_count, \
         backup_eligible, backup_state, created_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .id(tenant.0)
    .id(p.id)
    .id(p.user_id.0)
    .text(&p.credential_id)
    .text(&p.name)
    .text(&p.credential)
    .int(p.sign_count)
    .flag(p.backup_eligible)
    .flag(p.backup_state)
    .time(p.created_at)
    .time(p.last_used_at)
}

/// Only while the stored count is still `previous_count`.
pub(crate) fn record_passkey_use(tenant: TenantId, p: &PasskeyRecord, previous_count: i64) -> Stmt<'_> {
    Stmt::new(
        "UPDATE passkeys SET credential = $3, sign_count = $4, backup_state = $5, last_used_at = $6 \
         WHERE tenant_id = $1 AND id = $2 AND sign_count = $7",
    )
    .id(tenant.0)
    .id(p.id)
    .text(&p.credential)
    .int(p.sign_count)
    .flag(p.backup_state)
    .time(p.last_used_at)
    .int(previous_count)
}

pub(crate) fn rename_passkey(tenant: TenantId, user: UserId, id: Uuid, name: &str) -> Stmt<'_> {
    Stmt::tenant_user(
        concat!(
            "UPDATE passkeys SET name = $4 WHERE tenant_id = $1 AND user_id = $2 AND id = $3 RETURNING ",
            passkey_columns!()
        ),
        tenant,
        user,
    )
    .id(id)
    .text(name)
}

pub(crate) fn delete_passkey(tenant: TenantId, user: UserId, id: Uuid) -> Stmt<'static> {
    Stmt::tenant_user("DELETE FROM passkeys WHERE tenant_id = $1 AND user_id = $2 AND id = $3", tenant, user).id(id)
}

// ---- OAuth clients of the tenant's OpenID provider, and consents ----

pub(crate) fn oauth_clients(tenant: TenantId) -> Stmt<'static> {
    Stmt::new(concat!(
        "SELECT ",
        client_columns!(),
        " FROM oauth_clients WHERE tenant_id = $1 ORDER BY created_at, client_id"
    ))
    .id(tenant.0)
}

pub(crate) fn oauth_client(tenant: TenantId, client_id: &str) -> Stmt<'_> {
    Stmt::new(concat!("SELECT ", client_columns!(), " FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2"))
        .id(tenant.0)
        .text(client_id)
}

pub(crate) fn insert_oauth_client(tenant: TenantId, c: &OAuthClientRecord) -> Result<Stmt<'_>> {
    Ok(Stmt::new(concat!(
        "INSERT INTO oauth_clients (tenant_id, client_id, name, secret_hash, redirect_uris, \
         post_logout_redirect_uris, public, first_party, grant_types, scopes, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
        client_columns!()
    ))
    .id(tenant.0)
    .text(&c.client_id)
    .text(&c.name)
    .opt_text(c.secret_hash.as_deref())
    .json(to_json(&c.redirect_uris)?)
    .json(to_json(&c.post_logout_redirect_uris)?)
    .flag(c.public)
    .flag(c.first_party)
    .json(to_json(&c.grant_types)?)
    .json(to_json(&c.scopes)?)
    .time(c.created_at)
    .time(c.updated_at))
}

/// Everything but the id, the secret and the creation time.
pub(crate) fn update_oauth_client(tenant: TenantId, c: &OAuthClientRecord) -> Result<Stmt<'_>> {
    Ok(Stmt::new(concat!(
        "UPDATE oauth_clients SET name = $3, redirect_uris = $4, post_logout_redirect_uris = $5, \
         first_party = $6, grant_types = $7, scopes = $8, updated_at = $9 \
         WHERE tenant_id = $1 AND client_id = $2 RETURNING ",
        client_columns!()
    ))
    .id(tenant.0)
    .text(&c.client_id)
    .text(&c.name)
    .json(to_json(&c.redirect_uris)?)
    .json(to_json(&c.post_logout_redirect_uris)?)
    .flag(c.first_party)
    .json(to_json(&c.grant_types)?)
    .json(to_json(&c.scopes)?)
    .time(c.updated_at))
}

pub(crate) fn delete_oauth_client(tenant: TenantId, client_id: &str) -> Stmt<'_> {
    Stmt::new("DELETE FROM oauth_clients WHERE tenant_id = $1 AND client_id = $2").id(tenant.0).text(client_id)
}

pub(crate) fn consent(tenant: TenantId, user: UserId, client_id: &str) -> Stmt<'_> {
    Stmt::tenant_user(
        "SELECT scopes FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3",
        tenant,
        user,
    )
    .text(client_id)
}

pub(crate) fn revoke_consent(tenant: TenantId, user: UserId, client_id: &str) -> Stmt<'_> {
    Stmt::tenant_user(
        "DELETE FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3",
        tenant,
        user,
    )
    .text(client_id)
}
