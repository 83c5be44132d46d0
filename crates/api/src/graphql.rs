//! GraphQL request hygiene (API.md): only `application/json` POSTs execute,
//! one operation per request (batching is off), and every document is bounded
//! in size, depth, complexity and aliases. Every error leaves with a contract
//! code.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ObjectType, Request, Schema, SubscriptionType};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use authd_core::Error;

use crate::errors::error_body;

/// Aliased fields allowed in one document. Limits that protect credentials
/// count each resolver call anyway; this keeps documents small.
pub const MAX_ALIASES: usize = 30;
/// Deep enough for the standard introspection query (GraphiQL), no deeper.
pub const MAX_DEPTH: usize = 16;
pub const MAX_COMPLEXITY: usize = 1000;
/// The largest page any connection returns.
pub const MAX_PAGE: i32 = 100;

fn reject(status: StatusCode, e: Error) -> Response {
    (status, axum::Json(error_body(e))).into_response()
}

/// Parses a GraphQL POST body, refusing what the contract refuses.
pub fn parse_request(headers: &HeaderMap, body: &Bytes) -> Result<Request, Response> {
    let json_content = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json_content {
        // A form or text POST could come from a cross-site <form>: never execute it.
        return Err(reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::bad_input_msg(None, "GraphQL requests are POSTs with Content-Type: application/json"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| reject(StatusCode::BAD_REQUEST, Error::bad_input_msg(None, "the body is not valid JSON")))?;
    if value.is_array() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Error::bad_input_msg(None, "batched requests are not supported; send one operation per request"),
        ));
    }
    let request: Request = serde_json::from_value(value).map_err(|_| {
        reject(StatusCode::BAD_REQUEST, Error::bad_input_msg(None, "the body is not a GraphQL request"))
    })?;
    if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
        if count_aliases(&doc) > MAX_ALIASES {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                Error::bad_input_msg(None, format!("a document may use at most {MAX_ALIASES} aliases")),
            ));
        }
    }
    Ok(request)
}

fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn walk(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => usize::from(f.node.alias.is_some()) + walk(&f.node.selection_set.node),
                Selection::InlineFragment(f) => walk(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let ops: usize = doc.operations.iter().map(|(_, op)| walk(&op.node.selection_set.node)).sum();
    let frags: usize = doc.fragments.values().map(|f| walk(&f.node.selection_set.node)).sum();
    ops + frags
}

/// Executes one request and gives every error a contract code: errors that
/// did not come from a resolver (parse, validation, limits) are `BAD_USER_INPUT`.
pub async fn execute<Q, M, S>(schema: &Schema<Q, M, S>, request: Request) -> async_graphql::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut response = schema.execute(request).await;
    for err in &mut response.errors {
        let has_code = err.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
        if !has_code {
            err.extensions.get_or_insert_with(Default::default).set("code", "BAD_USER_INPUT");
        }
    }
    response
}

/// Validates a connection's `first` argument.
pub fn page_size(first: Option<i32>, default: i32) -> async_graphql::Result<u32> {
    let first = first.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(crate::errors::to_graphql(Error::bad_input("first", format!("first must be between 1 and {MAX_PAGE}"))));
    }
    Ok(u32::try_from(first).unwrap_or(50))
}
