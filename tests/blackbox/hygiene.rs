//! GraphQL request hygiene (docs/api.md): only JSON POSTs execute, a GET serves
//! GraphiQL under a strict content-security policy and never executes,
//! batching is off, documents are bounded (body size, aliases, depth,
//! complexity, page size), and every failure carries a contract code and no
//! internals.

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Tenant, TestServer, code};

const PASSPHRASE: &str = "a perfectly fine passphrase";

fn register_doc(email: &str) -> Value {
    json!({
        "query": "mutation($i: RegisterInput!) { register(input: $i) { id } }",
        "variables": { "i": { "email": email, "password": PASSPHRASE } },
    })
}

/// Whether `email` has an account in the tenant (by trying to log in).
async fn exists(s: &TestServer, slug: &str, email: &str) -> bool {
    let body = s.login_raw(slug, email, PASSPHRASE).await;
    match code(&body) {
        None => true,
        Some("INVALID_CREDENTIALS") => false,
        other => panic!("unexpected login answer {other:?}: {body}"),
    }
}

async fn tenant_count(s: &TestServer) -> usize {
    let body = s.platform("{ tenants(first: 100) { edges { cursor } } }", json!({})).await;
    body["data"]["tenants"]["edges"].as_array().unwrap_or_else(|| panic!("{body}")).len()
}

/// POSTs raw bytes with a content type; returns status and body text.
async fn post_raw(
    s: &TestServer,
    path: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = s.http.post(format!("{}{path}", s.url)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const LEAKS: &[&str] = &[
    "select ",
    "insert ",
    "update ",
    "delete ",
    "sqlx",
    "sqlite",
    "postgres",
    "redis",
    "panicked",
    "backtrace",
    "constraint",
    "duplicate key",
    "unique",
    ".rs:",
    "src/",
];

fn assert_no_leak(context: &str, text: &str) {
    let lower = text.to_lowercase();
    for leak in LEAKS {
        assert!(!lower.contains(leak), "{context}: the answer mentions {leak:?}: {text}");
    }
}

// ------------------------------------------------------------------ GraphiQL

async fn graphiql_get(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("gui").await;
    for (path, endpoint) in [("/t/gui/graphql", "/t/gui/graphql"), ("/graphql", "/graphql")] {
        let resp = s.http.get(format!("{}{path}", s.url)).header("accept", "text/html").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        let csp =
            resp.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{path}: CSP {csp:?}");
        assert!(
            !csp.contains("unsafe-eval")
                && !csp.split(';').any(|d| d.contains("script-src") && d.contains("unsafe-inline")),
            "{csp}"
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains(&format!("data-endpoint=\"{endpoint}\"")), "{path}: {html}");
        // Every script is a same-origin file: no inline script, no third party.
        let scripts: Vec<&str> = html.split("<script").skip(1).collect();
        assert!(scripts.len() >= 2, "{html}");
        for tag in scripts {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(head.contains("src=\"/graphiql-assets/"), "{path}: script not served by authd: <script{head}>");
            let body = &tag[tag.find('>').unwrap() + 1..];
            assert!(body.trim_start().starts_with("</script>"), "{path}: inline script after <script{head}>");
        }
    }

    // A GET carrying an operation serves the page and executes nothing.
    let mutation = format!(
        "mutation {{ register(input: {{ email: \"get@example.com\", password: \"{PASSPHRASE}\" }}) {{ id }} }}"
    );
    for accept in ["text/html", "application/json"] {
        let resp = s
            .http
            .get(format!("{}/t/gui/graphql", s.url))
            .query(&[("query", mutation.as_str())])
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(!resp.text().await.unwrap().contains("\"data\""));
    }
    assert!(!exists(&s, &t.slug, "get@example.com").await, "a GET executed a mutation");

    let create = "mutation { createTenant(input: { slug: \"via-get\", name: \"x\", adminEmail: \"a@example.com\", adminPassword: \"correct horse battery staple\" }) { id } }";
    let resp = s
        .http
        .get(format!("{}/graphql", s.url))
        .query(&[("query", create)])
        .bearer_auth(&s.platform_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(tenant_count(&s).await, 1, "a GET executed createTenant");
}
both!(graphiql_is_served_on_get_under_csp_and_a_get_never_executes, graphiql_get);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_assets_are_served_by_authd_with_their_content_types() {
    let s = TestServer::start(Backend::Embedded).await;
    let html = s.http.get(format!("{}/graphql", s.url)).send().await.unwrap().text().await.unwrap();
    let mut assets: Vec<String> = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            assets.push(part[..part.find('"').unwrap()].to_owned());
        }
    }
    assert!(assets.iter().any(|a| a == "/graphiql-assets/graphiql.min.js"), "{assets:?}");
    for asset in &assets {
        let resp = s.http.get(format!("{}{asset}", s.url)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{asset}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if asset.ends_with(".js") { "javascript" } else { "text/css" };
        assert!(ct.contains(want), "{asset}: {ct}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{asset}");
        assert!(!resp.bytes().await.unwrap().is_empty(), "{asset}");
    }
    for missing in ["/graphiql-assets/nope.js", "/graphiql-assets/..%2F..%2FCargo.toml", "/graphiql-assets/index.html"]
    {
        let resp = s.http.get(format!("{}{missing}", s.url)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{missing}");
    }
}

// ------------------------------------------------------------------ transport

async fn only_json_posts_execute(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("strict").await;
    let path = "/t/strict/graphql";
    let doc = serde_json::to_vec(&register_doc("form@example.com")).unwrap();
    let form = format!(
        "query={}",
        url::form_urlencoded::byte_serialize(b"mutation { register(input: { email: \"form@example.com\", password: \"a perfectly fine passphrase\" }) { id } }")
            .collect::<String>()
    );
    let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("text/plain"), doc.clone()),
        (Some("text/plain;charset=UTF-8"), doc.clone()),
        (Some("application/x-www-form-urlencoded"), form.clone().into_bytes()),
        (Some("multipart/form-data; boundary=x"), doc.clone()),
        (Some("application/graphql"), b"mutation { logoutAll }".to_vec()),
        (None, doc.clone()),
    ];
    for (ct, body) in cases {
        let (status, text) = post_raw(&s, path, ct, None, body).await;
        assert_eq!(status, 415, "{ct:?}: {text}");
        assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "{ct:?}: {text}");
    }
    assert!(!exists(&s, &t.slug, "form@example.com").await, "a non-JSON POST executed");

    // The platform API likewise.
    let create = serde_json::to_vec(&json!({
        "query": "mutation { createTenant(input: { slug: \"via-form\", name: \"x\", adminEmail: \"a@example.com\", adminPassword: \"correct horse battery staple\" }) { id } }",
    }))
    .unwrap();
    let token = s.platform_token.clone();
    let (status, _) = post_raw(&s, "/graphql", Some("text/plain"), Some(&token), create.clone()).await;
    assert_eq!(status, 415);
    assert_eq!(tenant_count(&s).await, 1);

    // application/json with parameters is JSON.
    let (status, text) = post_raw(&s, path, Some("application/json; charset=utf-8"), None, doc).await;
    assert_eq!(status, 200, "{text}");
    assert!(parse(&text)["data"]["register"]["id"].is_string(), "{text}");
}
both!(only_application_json_posts_execute, only_json_posts_execute);

async fn batching_off(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("batch").await;
    let body = serde_json::to_vec(&json!([register_doc("b1@example.com"), register_doc("b2@example.com")])).unwrap();
    let (status, text) = post_raw(&s, "/t/batch/graphql", Some("application/json"), None, body).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "{text}");
    assert!(!exists(&s, &t.slug, "b1@example.com").await);
    assert!(!exists(&s, &t.slug, "b2@example.com").await);

    let token = s.platform_token.clone();
    let body = serde_json::to_vec(&json!([{ "query": "{ tenants { edges { cursor } } }" }])).unwrap();
    let (status, text) = post_raw(&s, "/graphql", Some("application/json"), Some(&token), body).await;
    assert_eq!((status, code(&parse(&text))), (400, Some("BAD_USER_INPUT")), "{text}");
}
both!(batched_requests_are_refused, batching_off);

/// A body that repeats a key means different things to different parsers (a
/// gateway may check the first copy, authd would run the last): refused.
async fn duplicate_keys(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("dupes").await;
    let register = r#"mutation($i: RegisterInput!) { register(input: $i) { id } }"#;
    let bodies = [
        // The query twice: a harmless one first, a registration last.
        format!(r#"{{"query":"{{ __typename }}","query":{}}}"#, serde_json::to_string(register).unwrap()),
        // A repeated key inside the variables.
        format!(
            r#"{{"query":{},"variables":{{"i":{{"email":"d1@example.com","email":"d2@example.com","password":"a long passphrase here"}}}}}}"#,
            serde_json::to_string(register).unwrap()
        ),
    ];
    for body in bodies {
        let (status, text) = post_raw(&s, "/t/dupes/graphql", Some("application/json"), None, body.into_bytes()).await;
        assert_eq!(status, 400, "{text}");
        assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "{text}");
    }
    assert!(!exists(&s, &t.slug, "d1@example.com").await && !exists(&s, &t.slug, "d2@example.com").await);
    let token = s.platform_token.clone();
    let body = br#"{"query":"{ tenants { edges { cursor } } }","query":"{ tenants { edges { cursor } } }"}"#.to_vec();
    let (status, text) = post_raw(&s, "/graphql", Some("application/json"), Some(&token), body).await;
    assert_eq!((status, code(&parse(&text))), (400, Some("BAD_USER_INPUT")), "{text}");
}
both!(json_bodies_with_a_repeated_key_are_refused, duplicate_keys);

async fn body_limit(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("bulky").await;
    let mut doc = register_doc("big@example.com");
    doc["variables"]["padding"] = json!("x".repeat(65 * 1024));
    let (status, text) =
        post_raw(&s, "/t/bulky/graphql", Some("application/json"), None, serde_json::to_vec(&doc).unwrap()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "a contract error, not the framework's text: {text}");
    assert_no_leak("oversized body", &text);
    assert!(!exists(&s, &t.slug, "big@example.com").await, "an oversized request executed");

    // Just under the limit is served.
    let small = json!({ "query": "{ __typename }", "variables": { "padding": "x".repeat(60 * 1024) } });
    let (status, text) =
        post_raw(&s, "/t/bulky/graphql", Some("application/json"), None, serde_json::to_vec(&small).unwrap()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text)["data"]["__typename"], "Query");

    let token = s.platform_token.clone();
    let big = json!({ "query": "{ __typename }", "variables": { "padding": "x".repeat(65 * 1024) } });
    let (status, text) =
        post_raw(&s, "/graphql", Some("application/json"), Some(&token), serde_json::to_vec(&big).unwrap()).await;
    assert_eq!((status, code(&parse(&text))), (413, Some("BAD_USER_INPUT")), "{text}");
}
both!(bodies_over_64_kib_are_refused, body_limit);

// ------------------------------------------------------------------ document limits

fn aliases(n: usize) -> String {
    (0..n).map(|i| format!("a{i}: __typename")).collect::<Vec<_>>().join(" ")
}

async fn post_doc(s: &TestServer, path: &str, doc: &str) -> (u16, Value) {
    let token = s.platform_token.clone();
    let bearer = (path == "/graphql").then_some(token.as_str());
    let (status, text) =
        post_raw(s, path, Some("application/json"), bearer, serde_json::to_vec(&json!({ "query": doc })).unwrap())
            .await;
    (status, parse(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_with_more_than_30_aliases_are_refused() {
    let s = TestServer::start(Backend::Embedded).await;
    s.tenant_named("aliases").await;
    for path in ["/t/aliases/graphql", "/graphql"] {
        let (_, ok) = post_doc(&s, path, &format!("{{ {} }}", aliases(30))).await;
        assert_eq!(ok["data"]["a29"], "Query", "30 aliases are allowed: {ok}");
        for doc in [
            format!("{{ {} }}", aliases(31)),
            format!("{{ ... on Query {{ {} }} }}", aliases(31)),
            format!("{{ ...F }} fragment F on Query {{ {} }}", aliases(31)),
            format!("{{ {} ...F }} fragment F on Query {{ {} }}", aliases(16), aliases(16).replace("a", "b")),
        ] {
            let (_, body) = post_doc(&s, path, &doc).await;
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{path}: {body}");
            assert!(body["data"].is_null() || body.get("data").is_none(), "{body}");
        }
    }
    // Aliases cannot multiply a mutation's attempts past the limit either.
    let logins = (0..31)
        .map(|i| {
            format!("l{i}: login(input: {{ email: \"x@example.com\", password: \"nope nope nope\" }}) {{ __typename }}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let (_, body) = post_doc(&s, "/t/aliases/graphql", &format!("mutation {{ {logins} }}")).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
}

fn deep_introspection(of_types: usize) -> String {
    let open = "ofType { ".repeat(of_types);
    let close = " }".repeat(of_types);
    format!("{{ __schema {{ types {{ fields {{ type {{ {open}name{close} }} }} }} }} }}")
}

/// Nesting through a chain of fragments, each adding two levels.
fn deep_through_fragments(levels: usize) -> String {
    let mut doc = String::from("{ __schema { types { ...F0 } } }");
    for i in 0..levels {
        doc.push_str(&format!(" fragment F{i} on __Type {{ name fields {{ type {{ ...F{} }} }} }}", i + 1));
    }
    doc.push_str(&format!(" fragment F{levels} on __Type {{ name }}"));
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_deeper_than_the_limit_are_refused() {
    let s = TestServer::start(Backend::Embedded).await;
    s.tenant_named("deep").await;
    for path in ["/t/deep/graphql", "/graphql"] {
        let (_, ok) = post_doc(&s, path, &deep_introspection(2)).await;
        assert!(ok["data"]["__schema"].is_object(), "a shallow document is served: {ok}");
        let (_, ok) = post_doc(&s, path, &deep_through_fragments(3)).await;
        assert!(ok["data"]["__schema"].is_object(), "a shallow document is served: {ok}");
        // 17 deep inline, 19 and 33 deep through fragments (before the fix,
        // fragments were not counted until async-graphql's recursion limit of 32).
        for doc in [deep_introspection(12), deep_through_fragments(8), deep_through_fragments(15)] {
            let (_, body) = post_doc(&s, path, &doc).await;
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{path}: {body}");
            assert!(body["data"].is_null() || body.get("data").is_none(), "{body}");
        }
    }
}

/// The introspection query GraphiQL sends on load (graphql-js's
/// `getIntrospectionQuery()`, as bundled in the served `graphiql.min.js`):
/// nine levels of `ofType`, so 14 deep. The document limits must let it
/// through, or the served GraphiQL has no schema (no docs, no completion).
const GRAPHIQL_INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType {
  kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiqls_introspection_query_is_within_the_limits() {
    let s = TestServer::start(Backend::Embedded).await;
    s.tenant_named("docs").await;
    for path in ["/t/docs/graphql", "/graphql"] {
        let (status, body) = post_doc(&s, path, GRAPHIQL_INTROSPECTION).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.get("errors").is_none(), "{path}: {body}");
        let types = body["data"]["__schema"]["types"].as_array().unwrap_or_else(|| panic!("{path}: {body}"));
        assert!(types.iter().any(|t| t["name"] == "Mutation"), "{path}");
    }
}

/// A "fragment bomb": each fragment spreads the next one many times, so a
/// document of a few hundred bytes and no alias expands to millions of
/// fields (before the fix, 700 bytes cost the server 12 s of CPU and the
/// larger one below would have run for hours).
fn fragment_bomb(levels: usize, fanout: usize) -> String {
    let mut doc = String::from("{ ...F0 }");
    for i in 0..levels {
        let spreads = format!("...F{} ", i + 1).repeat(fanout);
        doc.push_str(&format!(" fragment F{i} on Query {{ __typename {spreads}}}"));
    }
    doc.push_str(&format!(" fragment F{levels} on Query {{ __typename }}"));
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_over_the_complexity_limit_are_refused() {
    let s = TestServer::start(Backend::Embedded).await;
    s.tenant_named("bomb").await;
    for path in ["/t/bomb/graphql", "/graphql"] {
        let (_, ok) = post_doc(&s, path, &fragment_bomb(2, 12)).await;
        assert_eq!(ok["data"]["__typename"], "Query", "a small expansion is served: {ok}");
        for doc in [
            fragment_bomb(4, 12),
            fragment_bomb(12, 30),
            "{ __typename }".replace("__typename", &"__typename ".repeat(1001)),
        ] {
            let (status, body) = post_doc(&s, path, &doc).await;
            assert_eq!((status, code(&body)), (400, Some("BAD_USER_INPUT")), "{path}: {body}");
        }
        // Aliases count once per spread too.
        let doc =
            format!("{{ ...F ...G }} fragment G on Query {{ ...F ...F }} fragment F on Query {{ {} }}", aliases(16));
        let (_, body) = post_doc(&s, path, &doc).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{path}: {body}");
    }
}

async fn page_size_limit(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t: Tenant = s.tenant_named("pages").await;
    let (access, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    for first in [101, 0, -1, 1000] {
        for q in [
            "query($f: Int) { tenants(first: $f) { edges { cursor } } }",
            "query($f: Int) { auditEvents(first: $f) { edges { cursor } } }",
        ] {
            let body = s.platform(q, json!({ "f": first })).await;
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{q} first={first}: {body}");
            assert_eq!(body["errors"][0]["extensions"]["field"], "first", "{body}");
        }
        for q in [
            "query($f: Int) { users(first: $f) { edges { cursor } } }",
            "query($f: Int) { auditEvents(first: $f) { edges { cursor } } }",
        ] {
            let body = s.gql(&t.slug, Some(&access), q, json!({ "f": first })).await;
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{q} first={first}: {body}");
            assert_eq!(body["errors"][0]["extensions"]["field"], "first", "{body}");
        }
    }
    let body = s.platform("{ tenants(first: 100) { edges { cursor } } }", json!({})).await;
    assert!(body["data"]["tenants"].is_object(), "first: 100 is allowed: {body}");
    let body = s.gql(&t.slug, Some(&access), "{ users(first: 100) { edges { cursor } } }", json!({})).await;
    assert!(body["data"]["users"].is_object(), "first: 100 is allowed: {body}");
}
both!(page_sizes_over_100_are_refused_with_field_first, page_size_limit);

// ------------------------------------------------------------------ errors

async fn malformed_requests(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.tenant_named("malformed").await;
    let token = s.platform_token.clone();
    for (path, bearer) in [("/t/malformed/graphql", None), ("/graphql", Some(token.as_str()))] {
        for raw in [&b"{\"query\": "[..], b"not json at all", b"", b"\"just a string\"", b"{\"query\": 42}"] {
            let (status, text) = post_raw(&s, path, Some("application/json"), bearer, raw.to_vec()).await;
            assert_eq!(status, 400, "{path} {:?}: {text}", String::from_utf8_lossy(raw));
            assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "{path}: {text}");
            assert_no_leak(path, &text);
        }
        // A JSON object without a query is an empty document.
        let (_, text) = post_raw(&s, path, Some("application/json"), bearer, b"{\"nope\": 1}".to_vec()).await;
        assert_eq!(code(&parse(&text)), Some("BAD_USER_INPUT"), "{path}: {text}");
        // Parse and validation errors carry the code too.
        for doc in [
            json!({ "query": "{ __typename " }),
            json!({ "query": "{ noSuchField }" }),
            json!({ "query": "query($x: Int!) { __typename }" }),
            json!({ "query": "query($x: Int!) { __typename }", "variables": { "x": "not an int" } }),
            json!({ "query": "{ __typename }", "operationName": "Missing" }),
            json!({ "query": "query A { __typename } query B { __typename }" }),
            json!({ "query": "{ __type(name: 42) { name } }" }),
        ] {
            let (_, text) =
                post_raw(&s, path, Some("application/json"), bearer, serde_json::to_vec(&doc).unwrap()).await;
            let body = parse(&text);
            let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{path} {doc}: {text}"));
            assert!(!errors.is_empty());
            for e in errors {
                assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{path} {doc}: {text}");
            }
            assert_no_leak(path, &text);
        }
    }
}
both!(malformed_requests_answer_bad_user_input, malformed_requests);

async fn no_internals_in_errors(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("quiet").await;
    let mut bodies: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, v: &Value| bodies.push((what.to_owned(), v.to_string()));

    // Unique violations are the failures most likely to surface driver text.
    let dup = s
        .platform(
            "mutation { createTenant(input: { slug: \"quiet\", name: \"x\", adminEmail: \"a@example.com\", adminPassword: \"correct horse battery staple\" }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(dup["errors"][0]["extensions"]["field"], "slug", "{dup}");
    keep("duplicate slug", &dup);
    let reg = s.register(&t.slug, "twice@example.com", PASSPHRASE).await;
    assert!(reg["data"]["register"].is_object(), "{reg}");
    let again = s.register(&t.slug, "Twice@Example.com", PASSPHRASE).await;
    assert_eq!(code(&again), Some("EMAIL_TAKEN"), "{again}");
    keep("duplicate email", &again);

    let (access, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    for (what, q) in [
        ("bad user cursor", "{ users(after: \"!!!\") { edges { cursor } } }"),
        ("bad event cursor", "{ auditEvents(after: \"bm90fGEtY3Vyc29y\") { edges { cursor } } }"),
        ("bad user id", "mutation { setUserDisabled(userId: \"not-a-uuid\", disabled: true) { id } }"),
        (
            "unknown user",
            "mutation { setUserDisabled(userId: \"00000000-0000-0000-0000-000000000000\", disabled: true) { id } }",
        ),
    ] {
        let body = s.gql(&t.slug, Some(&access), q, json!({})).await;
        assert!(code(&body).is_some(), "{what}: {body}");
        keep(what, &body);
    }
    keep("bad token", &s.gql(&t.slug, Some("not.a.jwt"), "{ me { id } }", json!({})).await);
    keep("wrong password", &s.login_raw(&t.slug, &t.admin_email, "wrong wrong wrong").await);
    keep("unknown tenant", &s.gql("no-such-tenant", None, "{ __typename }", json!({})).await);
    keep("bad slug", &s.gql("Bad_Slug", None, "{ __typename }", json!({})).await);
    keep("bad platform cursor", &s.platform("{ tenants(after: \"%%%\") { edges { cursor } } }", json!({})).await);
    keep("parse error", &s.gql(&t.slug, None, "mutation { register(", json!({})).await);

    for (what, text) in &bodies {
        let body = parse(text);
        assert!(code(&body).is_some(), "{what}: no code: {text}");
        assert_no_leak(what, text);
    }
}
both!(error_answers_never_carry_sql_or_stack_traces, no_internals_in_errors);
