//! The platform API (`POST /graphql`) and tenant routing: creating, listing,
//! disabling and deleting tenants, the platform token, input validation,
//! all-or-nothing writes, and health/readiness.

use std::collections::BTreeMap;
use std::sync::Arc;

use authd_core::settings::{Role, TenantSettings};
use authd_core::{EventId, Slug, TenantId, UserId};
use authd_store::{AuditEvent, AuditFilter, NewTenant, NewUser, PlatformEvent, SigningKeyRecord};
use base64::Engine;
use chrono::Utc;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{self, Backend, TestServer, code, eventually};

const CREATE: &str =
    "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id slug name issuer disabled createdAt } }";
const PASSWORD: &str = "correct horse battery staple";

async fn create(s: &TestServer, slug: &str, name: &str, email: &str, password: &str) -> Value {
    s.platform(CREATE, json!({ "i": { "slug": slug, "name": name, "adminEmail": email, "adminPassword": password } }))
        .await
}

/// Every tenant's slug, oldest first, following the cursors to the end.
async fn tenant_slugs(s: &TestServer) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let body = s
            .platform(
                "query($a: String) { tenants(first: 100, after: $a) { edges { node { slug } } pageInfo { hasNextPage endCursor } } }",
                json!({ "a": after }),
            )
            .await;
        let conn = &body["data"]["tenants"];
        assert!(conn.is_object(), "{body}");
        for e in conn["edges"].as_array().unwrap() {
            out.push(e["node"]["slug"].as_str().unwrap().to_owned());
        }
        if conn["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

/// Every operator action, newest first.
async fn platform_events(s: &TestServer) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let body = s
            .platform(
                "query($a: String) { auditEvents(first: 100, after: $a) { edges { node { id at type actorId ip userAgent requestId detail } } pageInfo { hasNextPage endCursor } } }",
                json!({ "a": after }),
            )
            .await;
        let conn = &body["data"]["auditEvents"];
        assert!(conn.is_object(), "{body}");
        out.extend(conn["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()));
        if conn["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

fn field(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["field"].as_str()
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    s.http.get(format!("{}{path}", s.url)).send().await.unwrap()
}

async fn get_json(s: &TestServer, path: &str) -> (u16, Value) {
    let resp = get(s, path).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The `kid` in a JWT's header.
fn jwt_kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

/// Rows per tenant-owned table (tables whose primary key leads with
/// `tenant_id`, discovered from the catalog) that belong to `tenant`.
pub(crate) async fn owned_rows(s: &TestServer, tenant: TenantId) -> BTreeMap<String, i64> {
    use sqlx::Connection;
    let mut out = BTreeMap::new();
    match s.backend {
        Backend::Production | Backend::Cluster => {
            let mut conn = sqlx::PgConnection::connect(s.database_url.as_deref().unwrap()).await.unwrap();
            for t in crate::rls::tenant_owned_tables(&mut conn).await {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{t}\" WHERE tenant_id = $1"
                )))
                .bind(tenant.0)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                out.insert(t, n);
            }
        }
        Backend::Embedded => {
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(s.data_dir.join("authd.db"));
            let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT m.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND p.pk = 1 AND p.name = 'tenant_id' ORDER BY m.name",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(tables.len() >= 3, "tenant-owned tables not found: {tables:?}");
            for t in tables {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{t}\" WHERE tenant_id = ?1"
                )))
                .bind(tenant.to_string())
                .fetch_one(&mut conn)
                .await
                .unwrap();
                out.insert(t, n);
            }
        }
    }
    out
}

fn total(rows: &BTreeMap<String, i64>) -> i64 {
    rows.values().sum()
}

// ------------------------------------------------------------------ create

async fn create_tenant_creates_admin_and_first_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let body = create(&s, "acme", "  Acme Corp ", "Admin@Acme.Example.COM", PASSWORD).await;
    let t = &body["data"]["createTenant"];
    assert_eq!(t["slug"], "acme", "{body}");
    assert_eq!(t["name"], "Acme Corp", "the name is trimmed: {body}");
    assert_eq!(t["disabled"], false);
    assert!(t["issuer"].as_str().unwrap().ends_with("/t/acme"), "{body}");
    let tenant_id: TenantId = t["id"].as_str().unwrap().parse().unwrap();

    // The first admin can log in (email normalised) and is an admin.
    let login = s.login_raw("acme", "admin@acme.example.com", PASSWORD).await;
    let tokens = &login["data"]["login"];
    assert_eq!(tokens["__typename"], "AuthTokens", "{login}");
    assert_eq!(tokens["user"]["role"], "ADMIN", "{login}");
    assert_eq!(tokens["user"]["email"], "admin@acme.example.com");
    let access = tokens["accessToken"].as_str().unwrap();
    let users = s.gql("acme", Some(access), "{ users { edges { node { id email role } } } }", json!({})).await;
    let edges =
        users["data"]["users"]["edges"].as_array().unwrap_or_else(|| panic!("admin cannot list users: {users}"));
    assert_eq!(edges.len(), 1, "{users}");
    assert_eq!(edges[0]["node"]["role"], "ADMIN");
    let admin_id = edges[0]["node"]["id"].as_str().unwrap().to_owned();

    // The first signing key: exactly one published, and it signed the token.
    let (status, jwks) = get_json(&s, "/t/acme/.well-known/jwks.json").await;
    assert_eq!(status, 200, "{jwks}");
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kid"].as_str().unwrap(), jwt_kid(access));
    assert!(keys[0].get("d").is_none(), "the JWKS must never carry a private key: {jwks}");

    // The tenant's own audit log records the admin's creation...
    let events = s
        .gql(
            "acme",
            Some(access),
            "{ auditEvents(type: \"user.registered\") { edges { node { type subjectId } } } }",
            json!({}),
        )
        .await;
    let events = events["data"]["auditEvents"]["edges"].as_array().unwrap_or_else(|| panic!("{events}"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["node"]["subjectId"].as_str().unwrap(), admin_id);

    // ...and the platform's records the operator's action.
    let platform = platform_events(&s).await;
    let created: Vec<_> = platform.iter().filter(|e| e["type"] == "tenant.created").collect();
    assert_eq!(created.len(), 1, "{platform:?}");
    assert_eq!(created[0]["detail"]["tenantSlug"], "acme");
    assert_eq!(created[0]["detail"]["tenantId"].as_str().unwrap(), tenant_id.to_string());
    assert!(created[0]["detail"]["operator"].as_str().unwrap().starts_with("platform-token:"), "{:?}", created[0]);

    // One row per table written, all of them tenant-scoped.
    let rows = owned_rows(&s, tenant_id).await;
    assert_eq!(rows["users"], 1, "{rows:?}");
    assert_eq!(rows["signing_keys"], 1, "{rows:?}");
    assert!(rows["audit_events"] >= 1, "{rows:?}");
}
both!(
    create_tenant_creates_the_tenant_its_first_admin_and_its_first_signing_key,
    create_tenant_creates_admin_and_first_key
);

// ------------------------------------------------------------------ read

async fn tenants_pagination(backend: Backend) {
    let s = TestServer::start(backend).await;
    for slug in ["first-one", "second-one", "third-one"] {
        s.tenant_named(slug).await;
    }
    let q = "query($a: String) { tenants(first: 2, after: $a) { edges { cursor node { slug } } \
             pageInfo { hasNextPage hasPreviousPage endCursor } } }";
    let page1 = s.platform(q, json!({ "a": null })).await;
    let conn = &page1["data"]["tenants"];
    let slugs: Vec<&str> =
        conn["edges"].as_array().unwrap().iter().map(|e| e["node"]["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["first-one", "second-one"], "oldest first: {page1}");
    assert_eq!(conn["pageInfo"]["hasNextPage"], true, "{page1}");
    let end = conn["pageInfo"]["endCursor"].as_str().unwrap().to_owned();
    assert_eq!(conn["edges"][1]["cursor"].as_str().unwrap(), end);

    let page2 = s.platform(q, json!({ "a": end })).await;
    let conn = &page2["data"]["tenants"];
    let slugs: Vec<&str> =
        conn["edges"].as_array().unwrap().iter().map(|e| e["node"]["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["third-one"], "{page2}");
    assert_eq!(conn["pageInfo"]["hasNextPage"], false, "{page2}");
    assert_eq!(conn["pageInfo"]["hasPreviousPage"], true, "{page2}");

    // Exactly the page size: no phantom next page.
    let all = s.platform("{ tenants(first: 3) { edges { node { slug } } pageInfo { hasNextPage } } }", json!({})).await;
    assert_eq!(all["data"]["tenants"]["edges"].as_array().unwrap().len(), 3, "{all}");
    assert_eq!(all["data"]["tenants"]["pageInfo"]["hasNextPage"], false, "{all}");

    // A cursor that did not come from the API is bad input, not a crash.
    for bad in ["not a cursor", "bm90LWEtdXVpZA"] {
        let body =
            s.platform("query($a: String) { tenants(after: $a) { edges { cursor } } }", json!({ "a": bad })).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
        assert_eq!(field(&body), Some("after"), "{body}");
    }
}
both!(tenants_are_paged_with_cursors_oldest_first, tenants_pagination);

async fn tenant_by_slug(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("findable").await;
    let body = s.platform("{ tenant(slug: \"findable\") { id slug name issuer disabled createdAt } }", json!({})).await;
    assert_eq!(body["data"]["tenant"]["id"].as_str().unwrap(), t.id, "{body}");
    assert_eq!(body["data"]["tenant"]["name"], "Tenant findable");
    assert_eq!(body["data"]["tenant"]["issuer"].as_str().unwrap(), t.issuer);
    assert_eq!(body["data"]["tenant"]["disabled"], false);
    let missing = s.platform("{ tenant(slug: \"not-there\") { id } }", json!({})).await;
    assert!(missing["data"]["tenant"].is_null(), "{missing}");
    assert!(missing.get("errors").is_none(), "an unknown slug is null, not an error: {missing}");
}
both!(tenant_by_slug_is_found_or_null, tenant_by_slug);

// ------------------------------------------------------------------ disable

async fn disabled_tenant(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("sleepy").await;
    let other = s.tenant_named("awake").await;
    let (access, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;

    let set = "mutation($s: String!, $d: Boolean!) { setTenantDisabled(slug: $s, disabled: $d) { slug disabled } }";
    let body = s.platform(set, json!({ "s": "sleepy", "d": true })).await;
    assert_eq!(body["data"]["setTenantDisabled"]["disabled"], true, "{body}");

    // Every tenant route answers TENANT_DISABLED and nothing else.
    let login = s.login_raw(&t.slug, &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&login), Some("TENANT_DISABLED"), "{login}");
    assert!(login["data"].is_null(), "{login}");
    let me = s.gql(&t.slug, Some(&access), "{ me { id } }", json!({})).await;
    assert_eq!(code(&me), Some("TENANT_DISABLED"), "an access token issued before is refused too: {me}");
    for path in ["/t/sleepy/.well-known/jwks.json", "/t/sleepy/.well-known/openid-configuration"] {
        let (status, body) = get_json(&s, path).await;
        assert_eq!(code(&body), Some("TENANT_DISABLED"), "{path}: {body}");
        assert_eq!(status, 403, "{path}");
        assert!(body.get("keys").is_none() && body.get("issuer").is_none(), "{body}");
    }
    let read = s.platform("{ tenant(slug: \"sleepy\") { disabled } }", json!({})).await;
    assert_eq!(read["data"]["tenant"]["disabled"], true, "{read}");

    // Other tenants never notice.
    s.login(&other.slug, &other.admin_email, &other.admin_password).await;

    // Re-enabled, it serves again.
    let body = s.platform(set, json!({ "s": "sleepy", "d": false })).await;
    assert_eq!(body["data"]["setTenantDisabled"]["disabled"], false, "{body}");
    s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let (status, _) = get_json(&s, "/t/sleepy/.well-known/jwks.json").await;
    assert_eq!(status, 200);

    let kinds: Vec<String> = platform_events(&s)
        .await
        .iter()
        .filter(|e| e["detail"]["tenantSlug"] == "sleepy")
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["tenant.enabled", "tenant.disabled", "tenant.created"], "newest first");

    let unknown = s.platform(set, json!({ "s": "nobody-here", "d": true })).await;
    assert_eq!(code(&unknown), Some("TENANT_NOT_FOUND"), "{unknown}");
}
both!(disabled_tenant_answers_tenant_disabled_until_re_enabled, disabled_tenant);

// ------------------------------------------------------------------ delete

async fn delete_tenant(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("doomed").await;
    let keep = s.tenant_named("survivor").await;
    let tenant_id: TenantId = t.id.parse().unwrap();
    let reg = s.register("doomed", "user@example.com", "a perfectly fine passphrase").await;
    assert!(reg["data"]["register"].is_object(), "{reg}");
    let (access, _) = s.login("doomed", &t.admin_email, &t.admin_password).await;
    let old_kid = jwt_kid(&access);
    let before = owned_rows(&s, tenant_id).await;
    assert!(before["users"] == 2 && before["signing_keys"] == 1, "{before:?}");
    let survivor_before = owned_rows(&s, keep.id.parse().unwrap()).await;
    let redis_keys_before = redis_keys(&s, tenant_id).await;
    if backend == Backend::Production {
        assert!(redis_keys_before > 0, "a login stores a session in Redis");
    }

    let del = "mutation($s: String!) { deleteTenant(slug: $s) }";
    let body = s.platform(del, json!({ "s": "doomed" })).await;
    assert_eq!(body["data"]["deleteTenant"], true, "{body}");

    // Every row it owned is gone; the other tenant's are untouched.
    let after = owned_rows(&s, tenant_id).await;
    assert_eq!(total(&after), 0, "rows left behind: {after:?}");
    assert_eq!(owned_rows(&s, keep.id.parse().unwrap()).await, survivor_before);
    assert!(s.deps().store.tenant_by_id(tenant_id).await.unwrap().is_none());
    assert_eq!(redis_keys(&s, tenant_id).await, 0, "token-store keys of the tenant are purged");

    // Its routes answer TENANT_NOT_FOUND.
    let login = s.login_raw("doomed", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&login), Some("TENANT_NOT_FOUND"), "{login}");
    let (status, jwks) = get_json(&s, "/t/doomed/.well-known/jwks.json").await;
    assert_eq!((status, code(&jwks)), (404, Some("TENANT_NOT_FOUND")), "{jwks}");
    let read = s.platform("{ tenant(slug: \"doomed\") { id } }", json!({})).await;
    assert!(read["data"]["tenant"].is_null(), "{read}");
    assert_eq!(tenant_slugs(&s).await, ["survivor"]);
    let again = s.platform(del, json!({ "s": "doomed" })).await;
    assert_eq!(again["data"]["deleteTenant"], false, "deleting twice: {again}");

    // The slug can be taken again, by a tenant that shares nothing with the old one.
    let body = create(&s, "doomed", "Reborn", "boss@example.com", "another fine passphrase").await;
    let new_id = body["data"]["createTenant"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert_ne!(new_id, t.id);
    let old_admin = s.login_raw("doomed", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&old_admin), Some("INVALID_CREDENTIALS"), "{old_admin}");
    let old_user = s.login_raw("doomed", "user@example.com", "a perfectly fine passphrase").await;
    assert_eq!(code(&old_user), Some("INVALID_CREDENTIALS"), "{old_user}");
    let me = s.gql("doomed", Some(&access), "{ me { id } }", json!({})).await;
    assert_eq!(code(&me), Some("UNAUTHENTICATED"), "a token of the deleted tenant is refused by its successor: {me}");
    let (_, jwks) = get_json(&s, "/t/doomed/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 1, "{jwks}");
    assert_ne!(kids[0], old_kid);
    s.login("doomed", "boss@example.com", "another fine passphrase").await;

    // The operator's actions on the deleted tenant survive it.
    let events: Vec<Value> =
        platform_events(&s).await.into_iter().filter(|e| e["detail"]["tenantId"] == json!(t.id)).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["tenant.deleted", "tenant.created"], "{events:?}");
    for e in &events {
        assert_eq!(e["detail"]["tenantSlug"], "doomed");
        assert!(e["detail"]["operator"].as_str().unwrap().starts_with("platform-token:"), "{e}");
        assert!(e["actorId"].is_null());
        assert!(e["requestId"].is_string(), "{e}");
    }

    let bad = s.platform(del, json!({ "s": "Bad_Slug" })).await;
    assert_eq!(code(&bad), Some("BAD_USER_INPUT"), "{bad}");
}
both!(delete_tenant_removes_everything_it_owned_and_frees_the_slug, delete_tenant);

/// Token-store keys of `tenant` (Redis only; the in-process store has none to count).
async fn redis_keys(s: &TestServer, tenant: TenantId) -> usize {
    let Some(prefix) = &s.redis_prefix else {
        return 0;
    };
    let client = redis::Client::open(harness::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:{{{tenant}}}:*")).query_async(&mut conn).await.unwrap();
    keys.len()
}

// ------------------------------------------------------------------ token

async fn platform_token_required(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("token-test").await;
    let (access, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let token = s.platform_token.clone();
    let mut wrong = token.clone().into_bytes();
    wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).unwrap();
    let prefix = token[..token.len() - 1].to_owned();
    let longer = format!("{token}x");
    let body = json!({
        "query": CREATE,
        "variables": { "i": { "slug": "sneaky", "name": "Sneaky", "adminEmail": "a@example.com", "adminPassword": PASSWORD } },
    });
    let headers: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {prefix}")),
        Some(format!("Bearer {longer}")),
        Some("Bearer ".into()),
        Some(format!("Basic {token}")),
        Some(format!("Bearer {access}")),
    ];
    for h in headers {
        let mut req = s.http.post(format!("{}/graphql", s.url)).json(&body);
        if let Some(h) = &h {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{h:?}");
        assert!(resp.headers().get("www-authenticate").is_some());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{h:?}: {body}");
        assert!(body["data"].is_null());
    }
    // Queries are refused too, and none of the mutations above did anything.
    let resp = s
        .http
        .post(format!("{}/graphql", s.url))
        .json(&json!({ "query": "{ tenants { edges { cursor } } }" }))
        .send()
        .await
        .unwrap();
    let read: Value = resp.json().await.unwrap();
    assert_eq!(code(&read), Some("UNAUTHENTICATED"), "{read}");
    assert_eq!(tenant_slugs(&s).await, ["token-test"]);
}
both!(platform_api_refuses_a_missing_or_wrong_token, platform_token_required);

// ------------------------------------------------------------------ bad input

async fn bad_input_writes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.tenant_named("taken").await;
    let events_before = platform_events(&s).await.len();
    let long_name = "n".repeat(201);
    let long_slug = "a".repeat(64);
    let ok_email = "admin@example.com";
    let cases: Vec<(&str, &str, &str, &str, &str)> = vec![
        // (slug, name, email, password, field at fault)
        ("A B", "Name", ok_email, PASSWORD, "slug"),
        ("ab", "Name", ok_email, PASSWORD, "slug"),
        ("-abc", "Name", ok_email, PASSWORD, "slug"),
        ("abc-", "Name", ok_email, PASSWORD, "slug"),
        ("Upper", "Name", ok_email, PASSWORD, "slug"),
        ("a_b_c", "Name", ok_email, PASSWORD, "slug"),
        (&long_slug, "Name", ok_email, PASSWORD, "slug"),
        ("taken", "Another", "other@example.com", PASSWORD, "slug"),
        ("fresh", "", ok_email, PASSWORD, "name"),
        ("fresh", "   ", ok_email, PASSWORD, "name"),
        ("fresh", &long_name, ok_email, PASSWORD, "name"),
        ("fresh", "Name", "not-an-email", PASSWORD, "adminEmail"),
        ("fresh", "Name", "a@b", PASSWORD, "adminEmail"),
        ("fresh", "Name", "", PASSWORD, "adminEmail"),
        ("fresh", "Name", ok_email, "password", "adminPassword"),
        ("fresh", "Name", ok_email, "Password1", "adminPassword"),
        ("fresh", "Name", ok_email, "short1", "adminPassword"),
        ("fresh", "Name", ok_email, "", "adminPassword"),
    ];
    for (slug, name, email, password, want) in cases {
        let body = create(&s, slug, name, email, password).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{slug:?}/{name:?}/{email:?}/{password:?}: {body}");
        assert_eq!(field(&body), Some(want), "{slug:?}/{name:?}/{email:?}/{password:?}: {body}");
        assert!(body["data"].is_null(), "{body}");
        assert_eq!(tenant_slugs(&s).await, ["taken"], "a refused createTenant wrote a tenant");
        assert_eq!(platform_events(&s).await.len(), events_before, "a refused createTenant wrote an event");
    }
    let login = s.login_raw("taken", "other@example.com", PASSWORD).await;
    assert_eq!(code(&login), Some("INVALID_CREDENTIALS"), "the duplicate's admin must not exist: {login}");
}
both!(create_tenant_refuses_bad_input_and_writes_nothing, bad_input_writes_nothing);

// ------------------------------------------------------------------ atomicity

fn records(slug: &str, event_id: EventId) -> (NewTenant, NewUser, SigningKeyRecord, AuditEvent, PlatformEvent) {
    let now = Utc::now();
    let tenant = NewTenant {
        id: TenantId::new(),
        slug: Slug::parse(slug).unwrap(),
        name: "Half done".into(),
        settings: TenantSettings::default(),
        created_at: now,
    };
    let admin = NewUser {
        id: UserId::new(),
        email: Some(format!("admin@{slug}.example.com")),
        email_verified: false,
        password_hash: None,
        role: Role::Admin,
        created_at: now,
    };
    let key = SigningKeyRecord {
        kid: "half-done-key".into(),
        algorithm: TenantSettings::default().signing_algorithm,
        private_key_sealed: "not-a-real-key".into(),
        public_jwk: json!({}),
        created_at: now,
        activates_at: now,
    };
    let tenant_event = AuditEvent {
        id: EventId::new(),
        at: now,
        kind: "user.registered".into(),
        actor_id: None,
        subject_id: Some(admin.id),
        ip: None,
        user_agent: None,
        request_id: None,
        detail: None,
    };
    let platform_event = PlatformEvent {
        id: event_id,
        at: now,
        kind: "tenant.created".into(),
        tenant_id: Some(tenant.id),
        tenant_slug: Some(slug.into()),
        operator: Some("test".into()),
        ip: None,
        user_agent: None,
        request_id: None,
        detail: None,
    };
    (tenant, admin, key, tenant_event, platform_event)
}

async fn create_tenant_atomic(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.tenant_named("existing").await;
    let store = Arc::clone(&s.deps().store);
    let existing = store.platform_events(None, 10).await.unwrap();
    assert_eq!(existing.len(), 1);

    // The platform event is the transaction's last insert: reusing an
    // existing event's id makes it fail after the tenant, its admin, its key
    // and its tenant event were written.
    let (tenant, admin, key, tenant_event, platform_event) = records("half-done", existing[0].id);
    let result = store.create_tenant(&tenant, &admin, &key, &tenant_event, &platform_event).await;
    assert!(result.is_err(), "a duplicate event id must fail the transaction");

    assert!(store.tenant_by_slug("half-done").await.unwrap().is_none());
    assert!(store.tenant_by_id(tenant.id).await.unwrap().is_none());
    assert!(store.user_by_id(tenant.id, admin.id).await.unwrap().is_none());
    assert!(store.signing_keys(tenant.id).await.unwrap().is_empty());
    assert!(store.audit_events(tenant.id, &AuditFilter::default(), None, 10).await.unwrap().is_empty());
    let rows = owned_rows(&s, tenant.id).await;
    assert_eq!(total(&rows), 0, "rows left behind: {rows:?}");
    assert_eq!(store.platform_events(None, 10).await.unwrap().len(), 1);

    // Through the API: not there, and the slug was not burnt.
    let login = s.login_raw("half-done", "admin@half-done.example.com", PASSWORD).await;
    assert_eq!(code(&login), Some("TENANT_NOT_FOUND"), "{login}");
    assert_eq!(tenant_slugs(&s).await, ["existing"]);
    s.tenant_named("half-done").await;
    assert_eq!(tenant_slugs(&s).await, ["existing", "half-done"]);
}
both!(create_tenant_failing_halfway_leaves_nothing_behind, create_tenant_atomic);

async fn delete_tenant_atomic(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant_named("sturdy").await;
    let tenant_id: TenantId = t.id.parse().unwrap();
    s.register("sturdy", "user@example.com", "a perfectly fine passphrase").await;
    let (access, _) = s.login("sturdy", &t.admin_email, &t.admin_password).await;
    s.deps().audit.flush().await;
    let before = owned_rows(&s, tenant_id).await;
    let store = Arc::clone(&s.deps().store);
    let existing = store.platform_events(None, 10).await.unwrap();

    // Its platform event is written after the cascade: a duplicate id fails it.
    let mut event = existing[0].clone();
    event.kind = "tenant.deleted".into();
    let result = store.delete_tenant(&Slug::parse("sturdy").unwrap(), &event).await;
    assert!(result.is_err(), "a duplicate event id must fail the transaction");

    assert_eq!(owned_rows(&s, tenant_id).await, before, "a failed delete removed rows");
    assert!(store.tenant_by_id(tenant_id).await.unwrap().is_some());
    assert_eq!(store.platform_events(None, 10).await.unwrap().len(), existing.len());
    s.login("sturdy", &t.admin_email, &t.admin_password).await;
    s.login("sturdy", "user@example.com", "a perfectly fine passphrase").await;
    let (_, jwks) = get_json(&s, "/t/sturdy/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"].as_str().unwrap(), jwt_kid(&access));
}
both!(delete_tenant_failing_halfway_leaves_the_tenant_whole, delete_tenant_atomic);

// ------------------------------------------------------------------ routing

async fn tenant_routing(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.tenant_named("known").await;
    let q = json!({ "query": "{ __typename }" });
    let post = |path: &str| s.http.post(format!("{}{path}", s.url)).json(&q).send();

    let resp = post("/t/no-such-tenant/graphql").await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), Some("TENANT_NOT_FOUND"), "{body}");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
    assert!(body["data"].is_null(), "{body}");
    for path in ["/t/no-such-tenant/.well-known/jwks.json", "/t/no-such-tenant/.well-known/openid-configuration"] {
        let (status, body) = get_json(&s, path).await;
        assert_eq!((status, code(&body)), (404, Some("TENANT_NOT_FOUND")), "{path}: {body}");
    }

    for path in ["/t/Bad_Slug/graphql", "/t/ab/graphql", "/t/-abc/graphql"] {
        let resp = post(path).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{path}: {body}");
    }
    let (status, body) = get_json(&s, "/t/Bad_Slug/.well-known/jwks.json").await;
    assert_eq!((status, code(&body)), (400, Some("BAD_USER_INPUT")), "{body}");

    let resp = post("/t/known/graphql").await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["__typename"], "Query", "{body}");

    let health = get(&s, "/healthz").await;
    assert_eq!(health.status().as_u16(), 200);
    let ready = get(&s, "/readyz").await;
    assert_eq!(ready.status().as_u16(), 200);
}
both!(tenant_routing_answers_not_found_bad_input_and_health, tenant_routing);

// ------------------------------------------------------------------ readiness

/// A TCP forwarder that can be stopped and started again on the same port:
/// stopping it closes every forwarded connection, as a crashed server would.
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self { port, target: target.to_owned(), tasks: Arc::default() };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().push(conn);
            }
        });
        self.tasks.lock().push(accept);
    }

    fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

fn host_port(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap())
}

fn via_proxy(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

async fn readyz_status(s: &TestServer) -> u16 {
    get(s, "/readyz").await.status().as_u16()
}

/// Polls readiness until it reports `want` (a backing service coming back
/// reconnects in the background); gives up after a bounded number of tries.
async fn wait_ready(s: &TestServer, want: u16) -> u16 {
    let mut last = 0;
    for _ in 0..60 {
        last = readyz_status(s).await;
        if last == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    last
}

/// Postgres stops answering (its connections are cut and new ones refused):
/// `/readyz` says 503 while `/healthz` still says 200; tenant requests that
/// need the database answer UNAVAILABLE without leaking driver text; when it
/// answers again, so does readiness.
///
/// Done with a TCP forwarder in front of Postgres rather than by stopping
/// the shared server (other tests use it) or dropping the database (which
/// leaves nothing to come back to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_postgres_does_not_answer() {
    let proxy = Proxy::start(&host_port(&harness::pg_admin_url())).await;
    let port = proxy.port;
    let s = TestServer::start_with(Backend::Production, |env| {
        let url = env["DATABASE_URL"].clone();
        env.insert("DATABASE_URL".into(), via_proxy(&url, port));
    })
    .await;
    assert_eq!(readyz_status(&s).await, 200);
    let t = s.tenant().await;
    s.register(&t.slug, "before@example.com", "a long passphrase here").await;
    let (token, _) = s.login(&t.slug, "before@example.com", "a long passphrase here").await;

    proxy.stop();
    let started = std::time::Instant::now();
    assert_eq!(readyz_status(&s).await, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "readiness took {:?}", started.elapsed());
    // Every call that needs Postgres answers UNAVAILABLE within 2 s, also
    // when many wait at once (none queues behind a dead connection).
    let calls = (0..12).map(|i| {
        let (http, url) = (s.http.clone(), format!("{}/t/{}/graphql", s.url, t.slug));
        async move {
            let started = std::time::Instant::now();
            let body: Value = http
                .post(url)
                .json(&json!({
                    "query": "mutation($i: LoginInput!) { login(input: $i) { __typename } }",
                    "variables": { "i": { "email": format!("u{i}@example.com"), "password": "a long passphrase here" } }
                }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), code(&body).map(str::to_owned))
        }
    });
    for (took, answer) in futures::future::join_all(calls).await {
        assert_eq!(answer.as_deref(), Some("UNAVAILABLE"));
        assert!(took < std::time::Duration::from_secs(2), "a call took {took:?} while Postgres was down");
    }
    assert_eq!(get(&s, "/healthz").await.status().as_u16(), 200, "liveness does not depend on storage");
    // What needs no storage keeps working: the running tenant's JWKS and
    // discovery, and token checks whose session state is in Redis.
    for path in ["/.well-known/jwks.json", "/.well-known/openid-configuration"] {
        let resp = get(&s, &format!("/t/{}{path}", t.slug)).await;
        assert_eq!(resp.status().as_u16(), 200, "{path} while Postgres is down");
    }
    let sessions = s.gql(&t.slug, Some(&token), "{ sessions { id } }", json!({})).await;
    assert_eq!(sessions["data"]["sessions"].as_array().map(Vec::len), Some(1), "{sessions}");
    let resp = s
        .http
        .post(format!("{}/t/never-loaded/graphql", s.url))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, code(&body)), (503, Some("UNAVAILABLE")), "{text}");
    for leak in ["SELECT", "sqlx", "postgres", "connection refused", "127.0.0.1"] {
        assert!(!text.to_lowercase().contains(&leak.to_lowercase()), "leaks {leak:?}: {text}");
    }

    proxy.restart().await;
    let back = std::time::Instant::now();
    assert_eq!(wait_ready(&s, 200).await, 200, "readiness comes back with Postgres");
    assert!(back.elapsed() < std::time::Duration::from_secs(2), "recovery took {:?}", back.elapsed());
    // What was acknowledged before the outage is there; new writes work.
    s.login(&t.slug, "before@example.com", "a long passphrase here").await;
    let after = s.register(&t.slug, "after@example.com", "a long passphrase here").await;
    assert!(after["errors"].is_null(), "{after}");
}

/// Requests for unknown slugs cost no database query: a flood of random
/// slugs answers TENANT_NOT_FOUND from memory; only a small, process-wide
/// budget of lookups (for tenants another replica created a moment ago) may
/// go to storage, while a known tenant is always found.
async fn unknown_slugs(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    assert!(eventually(PROPAGATION, || async { s.running().platform.slugs.is_loaded() }).await, "slugs loaded");
    // This server's own count (the metric `authd_tenant_lookups_total` is the
    // process's, shared with every test running beside this one).
    let text = get(&s, "/metrics").await.text().await.unwrap();
    assert!(text.contains("authd_tenant_lookups_total"), "the metric is exposed");
    let lookups = || async { s.running().platform.tenant_lookups() as f64 };
    let before = lookups().await;
    let started = std::time::Instant::now();
    for i in 0..300 {
        let slug = format!("nope-{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let body = s.gql(&slug, None, "{ __typename }", json!({})).await;
        assert_eq!(code(&body), Some("TENANT_NOT_FOUND"), "{body}");
    }
    let spent = lookups().await - before;
    let budget = 20.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(spent <= budget, "{spent} storage lookups for 300 unknown slugs (budget {budget})");
    let known = s.gql(&t.slug, None, "{ __typename }", json!({})).await;
    assert!(known["errors"].is_null(), "{known}");
}
both!(unknown_slugs_cost_no_query, unknown_slugs);

/// Tenants touched once (a JWKS fetch, as a resource server makes, and a
/// GraphQL request) cost no storage or token-store call of their own while
/// nothing happens: their actors tick (idleness, retention) and the change
/// feed looks for changes once per process, not once per tenant. Counted
/// through the traced wrappers, which every backend call passes.
async fn idle_tenants(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut tenants = Vec::new();
    for _ in 0..20 {
        tenants.push(s.tenant().await);
    }
    for t in &tenants {
        let jwks = crate::tokens::jwks(&s, &t.slug).await;
        assert!(jwks["keys"].is_array(), "{jwks}");
        let body = s.gql(&t.slug, None, "{ __typename }", json!({})).await;
        assert!(body["errors"].is_null(), "{body}");
    }
    assert!(s.running().platform.active_tenants() >= 20, "the tenants run");
    // Their first tick runs retention once (then every six hours).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let calls = || s.deps().tenant_calls.load(std::sync::atomic::Ordering::Relaxed);
    let before = calls();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(calls() - before, 0, "20 idle tenants made backend calls of their own");
    assert!(s.running().platform.active_tenants() >= 20, "and still run");
    // The counter does count: one request is calls.
    let t = &tenants[0];
    s.register(&t.slug, "someone@example.com", "a long passphrase here").await;
    assert!(calls() > before, "a registration made no counted call");
}
both!(idle_tenants_make_no_backend_calls, idle_tenants);

/// Redis stops answering: readiness stays (every replica would fail alike,
/// and pulling them all out of the Service helps nobody), while calls that
/// need Redis answer UNAVAILABLE within 2 s; they work again when it is back.
/// (The server refuses to start on an unreachable Redis, hence the forwarder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_unavailable_fast_and_keeps_readiness() {
    let proxy = Proxy::start(&host_port(&harness::redis_url())).await;
    let port = proxy.port;
    let s = TestServer::start_with(Backend::Production, |env| {
        let url = env["REDIS_URL"].clone();
        env.insert("REDIS_URL".into(), via_proxy(&url, port));
    })
    .await;
    assert_eq!(readyz_status(&s).await, 200);
    let t = s.tenant().await;
    proxy.stop();
    assert_eq!(readyz_status(&s).await, 200, "readiness does not follow Redis");
    assert_eq!(get(&s, "/healthz").await.status().as_u16(), 200);
    let started = std::time::Instant::now();
    let body = s.login_raw(&t.slug, &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&body), Some("UNAVAILABLE"), "a new session needs Redis: {body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    proxy.restart().await;
    assert!(
        eventually(PROPAGATION, || async {
            s.login_raw(&t.slug, &t.admin_email, &t.admin_password).await["errors"].is_null()
        })
        .await,
        "logins work again when Redis is back"
    );
}

/// The database is gone for good (dropped under the running server): 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_database_is_dropped() {
    use sqlx::Connection;
    let s = TestServer::start(Backend::Production).await;
    assert_eq!(readyz_status(&s).await, 200);
    let db = url::Url::parse(s.database_url.as_deref().unwrap()).unwrap().path().trim_start_matches('/').to_owned();
    let mut admin = sqlx::PgConnection::connect(&harness::pg_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{db}\" WITH (FORCE)"))).execute(&mut admin).await.unwrap();
    assert_eq!(readyz_status(&s).await, 503);
}

/// Another replica's change arrives at the latest with its periodic reload.
const PROPAGATION: std::time::Duration = std::time::Duration::from_secs(10);

/// Replicas share Postgres and Redis: a tenant disabled, re-enabled or
/// deleted through one replica stops (or resumes) being served by another
/// that had it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_delete_reach_the_other_replicas() {
    let first = TestServer::start_with(Backend::Production, |env| {
        env.insert("AUTHD_TENANT_REFRESH_MS".into(), "100".into());
    })
    .await;
    let second = first.replica(|_| {}).await;
    let t = first.tenant_named("shared").await;
    // The second replica has the tenant running (and its keys cached).
    second.login("shared", &t.admin_email, &t.admin_password).await;
    let jwks_code = |s: &TestServer| {
        let url = format!("{}/t/shared/.well-known/jwks.json", s.url);
        let http = s.http.clone();
        async move {
            let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            code(&body).map(str::to_owned)
        }
    };
    assert_eq!(jwks_code(&second).await, None);

    let set = "mutation($d: Boolean!) { setTenantDisabled(slug: \"shared\", disabled: $d) { disabled } }";
    first.platform(set, json!({ "d": true })).await;
    assert!(
        eventually(PROPAGATION, || async { jwks_code(&second).await.as_deref() == Some("TENANT_DISABLED") }).await,
        "the other replica still serves a disabled tenant"
    );
    let login = second.login_raw("shared", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&login), Some("TENANT_DISABLED"), "{login}");

    first.platform(set, json!({ "d": false })).await;
    assert!(
        eventually(PROPAGATION, || async { jwks_code(&second).await.is_none() }).await,
        "re-enabling does not reach the other replica"
    );

    first.platform("mutation { deleteTenant(slug: \"shared\") }", json!({})).await;
    assert!(
        eventually(PROPAGATION, || async { jwks_code(&second).await.as_deref() == Some("TENANT_NOT_FOUND") }).await,
        "the other replica still serves a deleted tenant"
    );
    let login = second.login_raw("shared", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&login), Some("TENANT_NOT_FOUND"), "{login}");
}

/// Every test database is dropped with the server that made it, so test runs
/// leave nothing in the developer's Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_database_is_dropped_with_its_server() {
    use sqlx::Connection;
    let s = TestServer::start(Backend::Production).await;
    let name = s.owned_database.clone().expect("the harness made a database");
    assert!(name.starts_with(&format!("authd_test_{}_", std::process::id())), "{name}");
    drop(s);
    let mut admin = sqlx::PgConnection::connect(&harness::pg_admin_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} is still there");
}
