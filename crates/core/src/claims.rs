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
}
