//! Records: what storage holds (tenants, users, keys, events, providers,
//! clients, passkeys, mail), as every layer sees them, independent of the
//! backend. The storage crate reads and writes them; the tenancy layer
//! returns them; the transport shows them without naming the database.

use crate::settings::{Role, SigningAlgorithm, TenantSettings};
use crate::{EventId, Slug, TenantId, UserId};
use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub disabled: bool,
    pub settings: TenantSettings,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewTenant {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub settings: TenantSettings,
    pub created_at: DateTime<Utc>,
}

/// A user row. `password_hash` is a PHC string (never logged: `Debug` skips it).
#[derive(Clone, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    pub email: Option<String>,
    /// The email is proven (by a provider the tenant trusts to say so, or by
    /// the user following a link sent to it).
    pub email_verified: bool,
    pub password_hash: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub totp_enabled: bool,
    pub totp_secret_sealed: Option<String>,
    pub totp_pending_sealed: Option<String>,
    pub totp_last_step: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("totp_enabled", &self.totp_enabled)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Option<String>,
    pub email_verified: bool,
    pub password_hash: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// A signing key row; the private key is sealed with the master key.
#[derive(Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub private_key_sealed: String,
    pub public_jwk: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

/// One audit event (tenant-owned). `detail` never holds a secret.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub id: EventId,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub actor_id: Option<UserId>,
    pub subject_id: Option<UserId>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// One operator action (platform-level, survives tenant deletion).
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformEvent {
    pub id: EventId,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub tenant_id: Option<TenantId>,
    pub tenant_slug: Option<String>,
    pub operator: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Filter for `audit_events`; all given conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    /// Events whose actor or subject is this user.
    pub user_id: Option<UserId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Keyset cursor for newest-first event pages: (time, id) of the last row seen.
pub type EventCursor = (DateTime<Utc>, EventId);

/// The change `update_user` applies; `None` leaves a column as it is.
#[derive(Clone, Debug, Default)]
pub struct UserChange {
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// Refuse (`Error::LastAdmin`) a change that would leave the tenant with
    /// no enabled admin; checked inside the transaction, serialized per
    /// tenant, so two admins demoting each other at once cannot both win.
    pub keep_an_admin: bool,
}

/// A tenant's OAuth / OpenID Connect provider. The client secret is sealed
/// with the master key (bound to tenant, purpose and provider name); `Debug`
/// never shows it.
#[derive(Clone, PartialEq)]
pub struct OAuthProviderRecord {
    /// The tenant's name for it (in URLs: `/t/{tenant}/oauth/{name}/callback`).
    pub name: String,
    /// `google`, `github` or `oidc`.
    pub kind: String,
    pub display_name: String,
    pub client_id: String,
    pub client_secret_sealed: Option<String>,
    /// OIDC issuer, or for `github` the base URL of a GitHub Enterprise
    /// Server (or a stand-in); `None` uses the kind's default.
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    pub enabled: bool,
    pub trust_email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for OAuthProviderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthProviderRecord")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("issuer", &self.issuer)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// A provider's user as a tenant knows it: the provider's name in the tenant,
/// the issuer it answered for (its kind and issuer URL, so a provider re-pointed
/// elsewhere never matches identities linked under the old one) and the
/// subject. `email` is the address the provider claimed, kept on the identity
/// whether or not it became the account's.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub provider: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
}

/// One user's TOTP secrets re-sealed under a new master key, written only if
/// the row still holds what was read (`was_*`): an enrollment that lands
/// while `authd reseal` runs is never overwritten with a stale secret.
#[derive(Clone, Debug)]
pub struct TotpReseal {
    pub user: UserId,
    pub was_active: Option<String>,
    pub was_pending: Option<String>,
    pub active: Option<String>,
    pub pending: Option<String>,
}

/// A link mailed to a user, as stored: its token only as a keyed hash. A
/// user has at most one of each kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailLink {
    pub user_id: UserId,
    /// `verification`, `password_reset`, `magic_link` or `email_change`.
    pub kind: String,
    pub token_hash: String,
    /// The address the link proves.
    pub email: String,
    /// A magic link's PKCE S256 challenge.
    pub code_challenge: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What redeeming a link does to its user, in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEffect {
    /// Marks the email verified, if it is still the link's address.
    VerifyEmail,
    /// Sets this password hash (and marks the email verified: the link proved it).
    SetPassword(String),
    /// Makes the link's address the user's email, verified.
    ChangeEmail,
}

/// A mail to queue, sealed (it holds a live link).
#[derive(Clone, Debug)]
pub struct OutboxMail {
    pub id: uuid::Uuid,
    pub kind: String,
    pub message_sealed: String,
    pub created_at: DateTime<Utc>,
}

/// A mail claimed for delivery.
#[derive(Clone, Debug)]
pub struct QueuedMail {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub kind: String,
    pub message_sealed: String,
    pub created_at: DateTime<Utc>,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
}

/// The outbox at a glance (metrics, and when the sender next has work).
#[derive(Clone, Debug, Default)]
pub struct OutboxStats {
    pub queued: u64,
    pub oldest: Option<DateTime<Utc>>,
    /// The earliest time a queued mail can be claimed: its next attempt, or
    /// when the lease of the sender that holds it runs out, if later.
    pub next_due: Option<DateTime<Utc>>,
}

/// A user's passkey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyRecord {
    pub id: uuid::Uuid,
    pub user_id: UserId,
    /// base64url of the WebAuthn credential id.
    pub credential_id: String,
    pub name: String,
    /// The serialized webauthn-rs credential (public key, counter, flags).
    pub credential: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An OAuth client of a tenant's OpenID provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClientRecord {
    pub client_id: String,
    pub name: String,
    /// Keyed hash of a confidential client's secret; `None` for public clients.
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub public: bool,
    pub first_party: bool,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
