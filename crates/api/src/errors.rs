//! The one place where domain errors become the contract's GraphQL errors.

use async_graphql::ErrorExtensions;
use authd_core::{Error, ErrorCode};

/// Converts a domain error for the client: its code, a plain sentence, the
/// field at fault, `retryAfter` for limits. Internal causes go to the log
/// (they never carry secrets) and never to the client.
pub fn to_graphql(e: Error) -> async_graphql::Error {
    if let Some(cause) = e.cause() {
        match e.code() {
            ErrorCode::Unavailable => tracing::warn!(error = cause, "backing service unavailable"),
            _ => tracing::error!(error = cause, "internal error"),
        }
    }
    let code = e.code();
    let message = e.to_string();
    let field = match &e {
        Error::BadInput { field, .. } => field.clone(),
        _ => None,
    };
    let retry_after = match &e {
        Error::RateLimited { retry_after } => Some(*retry_after),
        _ => None,
    };
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", code.as_str());
        if let Some(field) = &field {
            ext.set("field", field.as_str());
        }
        if let Some(secs) = retry_after {
            ext.set("retryAfter", secs);
        }
    })
}

/// `?`-friendly conversion for resolvers.
pub trait GqlResult<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResult<T> for Result<T, Error> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(to_graphql)
    }
}

/// A GraphQL error body for failures outside any resolver (tenant routing,
/// malformed requests).
pub fn error_body(e: Error) -> serde_json::Value {
    let err = to_graphql(e);
    let mut ext = serde_json::Map::new();
    if let Some(extensions) = err.extensions
        && let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&extensions)
    {
        ext = map;
    }
    serde_json::json!({ "errors": [{ "message": err.message, "extensions": ext }] })
}
