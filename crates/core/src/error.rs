//! The domain error. Every lower layer converts its failures into this type;
//! the API maps it to the contract's error codes in exactly one function.

use std::fmt;

/// The contract's error codes (docs/api.md, Errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadUserInput,
    Unauthenticated,
    Forbidden,
    InvalidCredentials,
    EmailTaken,
    MfaInvalid,
    RateLimited,
    TokenReused,
    TenantNotFound,
    TenantDisabled,
    ProviderNotFound,
    Unavailable,
    EmailNotVerified,
    LinkInvalid,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::EmailTaken => "EMAIL_TAKEN",
            Self::MfaInvalid => "MFA_INVALID",
            Self::RateLimited => "RATE_LIMITED",
            Self::TokenReused => "TOKEN_REUSED",
            Self::TenantNotFound => "TENANT_NOT_FOUND",
            Self::TenantDisabled => "TENANT_DISABLED",
            Self::ProviderNotFound => "PROVIDER_NOT_FOUND",
            Self::Unavailable => "UNAVAILABLE",
            Self::EmailNotVerified => "EMAIL_NOT_VERIFIED",
            Self::LinkInvalid => "LINK_INVALID",
            Self::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with a safe, human message for the client and, for backend
/// failures, an internal cause that only goes to the log (never secrets).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    BadInput { field: Option<String>, message: String },
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("this email is already registered")]
    EmailTaken,
    #[error("invalid or expired code")]
    MfaInvalid,
    #[error("too many attempts; retry in {retry_after} seconds")]
    RateLimited { retry_after: u64 },
    #[error("this refresh token was already used; the session has been revoked")]
    TokenReused,
    #[error("tenant not found")]
    TenantNotFound,
    #[error("tenant disabled")]
    TenantDisabled,
    #[error("provider not found")]
    ProviderNotFound,
    /// A backing service is down; safe to retry. The string is the internal
    /// cause for the log.
    #[error("a backing service is unavailable; retry later")]
    Unavailable(String),
    /// A correct password, but the tenant requires a verified email first.
    #[error("verify your email address before signing in")]
    EmailNotVerified,
    /// An email link's token is unknown, used, replaced or expired.
    #[error("this link is invalid or has expired")]
    LinkInvalid,
    /// A bug or an invariant broken; the string is the internal cause.
    #[error("internal error")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadInput { field: Some(field.into()), message: message.into() }
    }

    pub fn bad_input_msg(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::BadInput { field: field.map(str::to_owned), message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    pub fn internal(cause: impl fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn unavailable(cause: impl fmt::Display) -> Self {
        Self::Unavailable(cause.to_string())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadInput { .. } => ErrorCode::BadUserInput,
            Self::Unauthenticated => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::EmailTaken => ErrorCode::EmailTaken,
            Self::MfaInvalid => ErrorCode::MfaInvalid,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::TokenReused => ErrorCode::TokenReused,
            Self::TenantNotFound => ErrorCode::TenantNotFound,
            Self::TenantDisabled => ErrorCode::TenantDisabled,
            Self::ProviderNotFound => ErrorCode::ProviderNotFound,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::EmailNotVerified => ErrorCode::EmailNotVerified,
            Self::LinkInvalid => ErrorCode::LinkInvalid,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The internal cause, for the log only.
    pub fn cause(&self) -> Option<&str> {
        match self {
            Self::Unavailable(c) | Self::Internal(c) => Some(c),
            _ => None,
        }
    }
}
