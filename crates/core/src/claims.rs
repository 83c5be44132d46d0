//! Access-token claims (docs/api.md, Tokens).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims of an access token. `aud` is a single string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: Uuid,
    pub aud: String,
    pub tid: Uuid,
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
    /// RFC 8176 methods: `pwd`, `otp`, `fed`.
    pub amr: Vec<String>,
    /// `user` or `admin`.
    pub role: String,
    /// Present (true) when the token only allows `me` and TOTP enrollment
    /// (an admin of a tenant that requires MFA, before enrolling).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa_enrollment_required: bool,
    /// The OAuth client the token was issued to (single sign-on; RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Space-separated scopes granted to that client (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The single sign-on session the client's grant came from: ending it
    /// ends this token too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_sid: Option<Uuid>,
}

/// The claims of an OpenID Connect ID token (OpenID Connect Core §2),
/// signed with `typ: JWT`. `aud` is the client id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub azp: String,
    pub exp: i64,
    pub iat: i64,
    pub auth_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub amr: Vec<String>,
    /// The OpenID provider session (the SSO session) the sign-in belongs to.
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}
