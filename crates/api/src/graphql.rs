//! GraphQL request hygiene (docs/api.md): only `application/json` POSTs execute,
//! one operation per request (batching is off), and every document is bounded
//! in size, depth, complexity and aliases. Every error leaves with a contract
//! code.

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ObjectType, Request, Schema, SubscriptionType};
use authd_core::Error;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

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

/// Parses a GraphQL POST body, refusing what the contract refuses. The
/// refusal is the finished HTTP response (large, but built only on the
/// refused path, so boxing it would buy nothing).
#[allow(clippy::result_large_err)]
pub fn parse_request(headers: &HeaderMap, body: &Bytes, documents: &Documents) -> Result<Request, Response> {
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
    let value = match serde_json::from_slice::<strict::Json>(body) {
        Ok(strict::Json(value)) => value,
        Err(e) if e.is_data() => {
            // Two parsers (a gateway's and ours) could read a repeated key
            // differently, so a body that repeats one means nothing.
            return Err(reject(
                StatusCode::BAD_REQUEST,
                Error::bad_input_msg(None, "the body repeats a key of one JSON object"),
            ));
        }
        Err(_) => {
            return Err(reject(StatusCode::BAD_REQUEST, Error::bad_input_msg(None, "the body is not valid JSON")));
        }
    };
    if value.is_array() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Error::bad_input_msg(None, "batched requests are not supported; send one operation per request"),
        ));
    }
    let request: Request = serde_json::from_value(value).map_err(|_| {
        reject(StatusCode::BAD_REQUEST, Error::bad_input_msg(None, "the body is not a GraphQL request"))
    })?;
    let mut request = request;
    // A document that does not parse goes on to execution, which reports
    // the syntax error with its position.
    if let Some(doc) = documents.parse(&request.query)? {
        request.set_parsed_query(doc);
    }
    Ok(request)
}

/// The parsed documents of recent requests, by their exact text, so that a
/// client sending the same operation again and again (every client does) is
/// parsed and sized once, not on every request. Only documents within the
/// size limits are kept, at most [`Documents::MAX_ENTRIES`] of at most
/// [`Documents::MAX_TEXT`] bytes each; when full, the memory starts over.
#[derive(Default)]
pub struct Documents {
    parsed: parking_lot::Mutex<HashMap<String, ExecutableDocument>>,
}

impl Documents {
    pub const MAX_ENTRIES: usize = 512;
    pub const MAX_TEXT: usize = 4096;

    /// The parsed document within the contract's limits; `None` if it does
    /// not parse; the refusal if it is too big.
    #[allow(clippy::result_large_err)]
    fn parse(&self, query: &str) -> Result<Option<ExecutableDocument>, Response> {
        if let Some(doc) = self.parsed.lock().get(query) {
            return Ok(Some(doc.clone()));
        }
        let Ok(doc) = async_graphql::parser::parse_query(query) else { return Ok(None) };
        check_size(&doc)?;
        if query.len() <= Self::MAX_TEXT {
            let mut parsed = self.parsed.lock();
            if parsed.len() >= Self::MAX_ENTRIES {
                parsed.clear();
            }
            parsed.insert(query.to_owned(), doc.clone());
        }
        Ok(Some(doc))
    }
}

/// Refuses a document beyond the contract's limits.
#[allow(clippy::result_large_err)]
fn check_size(doc: &ExecutableDocument) -> Result<(), Response> {
    let size = expanded_size(doc);
    if size.aliases > MAX_ALIASES {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Error::bad_input_msg(None, format!("a document may use at most {MAX_ALIASES} aliases")),
        ));
    }
    if size.fields > MAX_COMPLEXITY {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Error::bad_input_msg(None, format!("a document may select at most {MAX_COMPLEXITY} fields")),
        ));
    }
    if size.depth > MAX_DEPTH {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            Error::bad_input_msg(None, format!("a document may nest at most {MAX_DEPTH} fields deep")),
        ));
    }
    Ok(())
}

/// What a document amounts to once every fragment spread is expanded.
#[derive(Clone, Copy, Default)]
struct Size {
    fields: usize,
    aliases: usize,
    /// Fields on the longest path from the operation down.
    depth: usize,
}

impl Size {
    /// Selections side by side: counts add up, depth is the deeper one's.
    fn add(self, other: Size) -> Size {
        Size {
            fields: self.fields.saturating_add(other.fields),
            aliases: self.aliases.saturating_add(other.aliases),
            depth: self.depth.max(other.depth),
        }
    }
}

/// Counts field selections and aliases with each fragment counted as often
/// as it is spread, and depth through fragments. async-graphql's own limits
/// do not: its complexity does not multiply a fragment by its spreads, so a
/// "fragment bomb" (each fragment spreading the next one a dozen times) of a
/// few hundred bytes would otherwise cost minutes of validation and
/// execution, and its depth limit stops at a fragment spread, so nesting
/// through fragments reached its recursion limit (32) instead of
/// `MAX_DEPTH`. Fragments are sized once each (memoized), so this walk is
/// linear in the document; nesting (through fields, inline fragments and
/// chains of spreads) deeper than `MAX_NESTING` counts as too big rather
/// than risking the stack.
fn expanded_size(doc: &ExecutableDocument) -> Size {
    const MAX_NESTING: usize = 128;
    const TOO_BIG: Size = Size { fields: usize::MAX, aliases: 0, depth: usize::MAX };
    struct Walk<'a> {
        doc: &'a ExecutableDocument,
        sized: HashMap<&'a str, Size>,
        visiting: HashSet<&'a str>,
        nesting: usize,
    }
    impl<'a> Walk<'a> {
        fn set(&mut self, set: &'a SelectionSet) -> Size {
            if self.nesting >= MAX_NESTING {
                return TOO_BIG;
            }
            self.nesting += 1;
            let size = set.items.iter().fold(Size::default(), |total, s| {
                let size = match &s.node {
                    Selection::Field(f) => {
                        let inner = self.set(&f.node.selection_set.node);
                        Size {
                            fields: inner.fields.saturating_add(1),
                            aliases: inner.aliases.saturating_add(usize::from(f.node.alias.is_some())),
                            depth: inner.depth.saturating_add(1),
                        }
                    }
                    Selection::InlineFragment(f) => self.set(&f.node.selection_set.node),
                    Selection::FragmentSpread(f) => self.fragment(f.node.fragment_name.node.as_str()),
                };
                total.add(size)
            });
            self.nesting -= 1;
            size
        }
        fn fragment(&mut self, name: &'a str) -> Size {
            if let Some(size) = self.sized.get(name) {
                return *size;
            }
            // A cycle is invalid and validation reports it; it adds nothing here.
            if !self.visiting.insert(name) {
                return Size::default();
            }
            let size = match self.doc.fragments.get(name) {
                Some(f) => self.set(&f.node.selection_set.node),
                None => Size::default(),
            };
            self.visiting.remove(name);
            self.sized.insert(name, size);
            size
        }
    }
    let mut walk = Walk { doc, sized: HashMap::new(), visiting: HashSet::new(), nesting: 0 };
    doc.operations.iter().fold(Size::default(), |total, (_, op)| total.add(walk.set(&op.node.selection_set.node)))
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
        return Err(crate::errors::to_graphql(Error::bad_input(
            "first",
            format!("first must be between 1 and {MAX_PAGE}"),
        )));
    }
    Ok(u32::try_from(first).unwrap_or(50))
}

/// JSON that refuses an object repeating a key (RFC 8259 leaves its meaning
/// open; parsers differ on which copy wins), at any depth.
mod strict {
    use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    pub struct Json(pub Value);

    impl<'de> Deserialize<'de> for Json {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Json)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(Json(v)) = seq.next_element()? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    return Err(A::Error::custom("an object repeats a key"));
                }
                let Json(value) = map.next_value()?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Json;

        #[test]
        fn repeated_keys_are_refused_at_any_depth() {
            let ok = serde_json::from_str::<Json>(r#"{"a":[1,2.5,{"b":null}],"c":"d","e":true}"#).unwrap();
            assert_eq!(ok.0, serde_json::json!({"a":[1,2.5,{"b":null}],"c":"d","e":true}));
            for body in [r#"{"a":1,"a":2}"#, r#"{"v":{"x":1,"y":{"z":1,"z":1}}}"#, r#"[{"q":1,"q":1}]"#] {
                let e = serde_json::from_str::<Json>(body).err().unwrap();
                assert!(e.is_data(), "{body}: {e}");
            }
            assert!(serde_json::from_str::<Json>(r#"{"a":"#).err().unwrap().is_eof());
        }
    }
}
