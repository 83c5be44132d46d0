//! Per-tenant policy: what tenant admins can change through
//! `updateTenantSettings`, with the defaults docs/api.md fixes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A user's role; `user` / `admin` in the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            other => Err(Error::internal(format!("unknown role {other:?} in storage"))),
        }
    }
}

/// The JWS algorithm of a tenant's signing key; `ES256` / `EdDSA` / `RS256`
/// in the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SigningAlgorithm {
    #[default]
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlgorithm {
    /// The JOSE `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            "RS256" => Ok(Self::Rs256),
            other => Err(Error::internal(format!("unknown signing algorithm {other:?}"))),
        }
    }
}

/// Limits per tenant (the rate-limiting issue fills in enforcement). Counts
/// are per window in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimitPolicy {
    /// Login attempts per client IP per minute.
    pub login_per_ip_per_minute: u32,
    /// Failed logins per account per hour (NIST SP 800-63B: at most 100).
    pub failed_logins_per_account_per_hour: u32,
    /// Failed logins per (account, IP) per 15 minutes.
    pub failed_logins_per_account_ip_per_15_minutes: u32,
    /// Registrations per client IP per hour.
    pub registrations_per_ip_per_hour: u32,
    /// MFA attempts per account per 15 minutes.
    pub mfa_attempts_per_account_per_15_minutes: u32,
    /// Refresh calls per session per minute.
    pub refresh_per_session_per_minute: u32,
    /// All requests of the tenant per second (platform protection).
    pub tenant_requests_per_second: u32,
    /// Password-reset and magic-link requests per address per hour (unknown
    /// addresses count exactly like known ones).
    pub email_requests_per_address_per_hour: u32,
    /// Password-reset, magic-link and verification-mail requests per client
    /// IP per hour.
    pub email_requests_per_ip_per_hour: u32,
    /// Calls of the token, introspection and revocation endpoints per OAuth
    /// client per minute.
    pub token_requests_per_client_per_minute: u32,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        Self {
            login_per_ip_per_minute: 60,
            failed_logins_per_account_per_hour: 50,
            failed_logins_per_account_ip_per_15_minutes: 10,
            registrations_per_ip_per_hour: 30,
            mfa_attempts_per_account_per_15_minutes: 15,
            refresh_per_session_per_minute: 30,
            tenant_requests_per_second: 500,
            email_requests_per_address_per_hour: 5,
            email_requests_per_ip_per_hour: 30,
            token_requests_per_client_per_minute: 600,
        }
    }
}

impl RateLimitPolicy {
    pub fn validate(&self) -> Result<()> {
        let field = |name: &str| format!("rateLimits.{name}");
        if !(1..=100).contains(&self.failed_logins_per_account_per_hour) {
            return Err(Error::bad_input(
                field("failedLoginsPerAccountPerHour"),
                "must be between 1 and 100 (NIST SP 800-63B)",
            ));
        }
        for (name, v) in [
            ("loginPerIpPerMinute", self.login_per_ip_per_minute),
            ("failedLoginsPerAccountIpPer15Minutes", self.failed_logins_per_account_ip_per_15_minutes),
            ("registrationsPerIpPerHour", self.registrations_per_ip_per_hour),
            ("mfaAttemptsPerAccountPer15Minutes", self.mfa_attempts_per_account_per_15_minutes),
            ("refreshPerSessionPerMinute", self.refresh_per_session_per_minute),
            ("tenantRequestsPerSecond", self.tenant_requests_per_second),
            ("emailRequestsPerAddressPerHour", self.email_requests_per_address_per_hour),
            ("emailRequestsPerIpPerHour", self.email_requests_per_ip_per_hour),
            ("tokenRequestsPerClientPerMinute", self.token_requests_per_client_per_minute),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return Err(Error::bad_input(field(name), "must be between 1 and 1000000"));
            }
        }
        Ok(())
    }
}

/// A tenant's settings, stored as one JSON document per tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TenantSettings {
    pub access_token_lifetime_minutes: u32,
    pub signing_algorithm: SigningAlgorithm,
    /// Empty means "the tenant's slug" (resolved by [`TenantSettings::audience_for`]).
    pub audience: String,
    pub password_min_length: u32,
    pub require_mfa_for_admins: bool,
    pub allowed_redirect_uris: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub link_by_verified_email: bool,
    pub audit_retention_days: u32,
    pub rate_limits: RateLimitPolicy,
    /// A correct password of an account whose email is not verified answers
    /// `EMAIL_NOT_VERIFIED`.
    pub require_verified_email: bool,
    /// `requestMagicLink` sends sign-in links.
    pub magic_links_enabled: bool,
    /// The tenant's own wording of its mails, per kind (built-in otherwise).
    pub email_templates: Vec<crate::mail::TemplateOverride>,
    /// The WebAuthn relying-party ID; `None`: the public URL's host.
    pub webauthn_rp_id: Option<String>,
    /// Origins accepted in passkey ceremonies; empty: the tenant's
    /// `allowedOrigins` within the RP ID, and the public URL's origin.
    pub webauthn_origins: Vec<String>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            access_token_lifetime_minutes: 15,
            signing_algorithm: SigningAlgorithm::Es256,
            audience: String::new(),
            password_min_length: 8,
            require_mfa_for_admins: false,
            allowed_redirect_uris: Vec::new(),
            allowed_origins: Vec::new(),
            link_by_verified_email: false,
            audit_retention_days: 90,
            rate_limits: RateLimitPolicy::default(),
            require_verified_email: false,
            magic_links_enabled: false,
            email_templates: Vec::new(),
            webauthn_rp_id: None,
            webauthn_origins: Vec::new(),
        }
    }
}

/// The longest access-token lifetime any tenant may choose; deny entries are
/// kept at least this long.
pub const MAX_ACCESS_TOKEN_MINUTES: u32 = 60;

impl TenantSettings {
    pub fn audience_for<'a>(&'a self, slug: &'a str) -> &'a str {
        if self.audience.is_empty() { slug } else { &self.audience }
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_ACCESS_TOKEN_MINUTES).contains(&self.access_token_lifetime_minutes) {
            return Err(Error::bad_input("accessTokenLifetimeMinutes", "must be between 1 and 60"));
        }
        if !(8..=64).contains(&self.password_min_length) {
            return Err(Error::bad_input("passwordMinLength", "must be between 8 and 64"));
        }
        if self.audience.len() > 255 || self.audience.chars().any(char::is_control) {
            return Err(Error::bad_input("audience", "must be at most 255 printable characters"));
        }
        if !(1..=3650).contains(&self.audit_retention_days) {
            return Err(Error::bad_input("auditRetentionDays", "must be between 1 and 3650"));
        }
        for uri in &self.allowed_redirect_uris {
            let parsed = url::Url::parse(uri)
                .map_err(|_| Error::bad_input("allowedRedirectUris", format!("not an absolute URL: {uri}")))?;
            // RFC 9700 §4.1.3: exact matching, so fragments make no sense.
            if parsed.fragment().is_some() {
                return Err(Error::bad_input("allowedRedirectUris", "a redirect URI has no fragment"));
            }
        }
        for origin in &self.allowed_origins {
            let parsed = url::Url::parse(origin)
                .map_err(|_| Error::bad_input("allowedOrigins", format!("not an origin: {origin}")))?;
            if parsed.origin().ascii_serialization() != *origin {
                return Err(Error::bad_input(
                    "allowedOrigins",
                    format!("an origin is scheme://host[:port] with no path: {origin}"),
                ));
            }
        }
        crate::mail::validate_overrides(&self.email_templates)?;
        self.rate_limits.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let s = TenantSettings::default();
        s.validate().unwrap();
        assert_eq!(s.access_token_lifetime_minutes, 15);
        assert_eq!(s.password_min_length, 8);
        assert_eq!(s.audience_for("acme"), "acme");
        assert!(s.rate_limits.failed_logins_per_account_per_hour <= 100);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let mut s = TenantSettings { access_token_lifetime_minutes: 61, ..Default::default() };
        match s.validate() {
            Err(Error::BadInput { field, .. }) => assert_eq!(field.as_deref(), Some("accessTokenLifetimeMinutes")),
            other => panic!("{other:?}"),
        }
        s.access_token_lifetime_minutes = 15;
        s.allowed_origins = vec!["https://app.example.com/path".into()];
        assert!(s.validate().is_err());
        s.allowed_origins = vec!["https://app.example.com".into()];
        s.validate().unwrap();
    }
}
