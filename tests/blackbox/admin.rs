//! Tenant-admin operations: who may call them (the role in the
//! token, re-checked against storage), users and their pagination, disabling
//! and roles, settings and their validation, and the last admin.

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Tenant, TestServer, code};
use crate::tokens::{
    PASSWORD, admin_token, assert_accepted, assert_refused, audit_count, claims_of, jwks_url, pyjwt_verify, refresh,
    register_user, set_settings, settings, stored_users, update_settings, user,
};

const USERS: &str = "query($f: Int!, $a: String, $p: String) { users(first: $f, after: $a, emailPrefix: $p) { \
     edges { cursor node { id email role disabled } } pageInfo { hasNextPage endCursor } } }";
const DISABLE: &str =
    "mutation($u: ID!, $d: Boolean!) { setUserDisabled(userId: $u, disabled: $d) { id email role disabled } }";
const ROLE: &str = "mutation($u: ID!, $r: Role!) { setUserRole(userId: $u, role: $r) { id email role disabled } }";

fn field(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["field"].as_str()
}

async fn set_disabled(s: &TestServer, t: &Tenant, admin: &str, uid: &str, disabled: bool) -> Value {
    s.gql(&t.slug, Some(admin), DISABLE, json!({ "u": uid, "d": disabled })).await
}

async fn set_role(s: &TestServer, t: &Tenant, admin: &str, uid: &str, role: &str) -> Value {
    s.gql(&t.slug, Some(admin), ROLE, json!({ "u": uid, "r": role })).await
}

/// The user id in an access token.
fn subject(token: &str) -> String {
    claims_of(token)["sub"].as_str().expect("sub").to_owned()
}

/// Every admin operation, as `(name, query, variables)`.
fn admin_operations(uid: &str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("users", "{ users(first: 10) { edges { node { id } } } }", json!({})),
        ("tenantSettings", "{ tenantSettings { audience } }", json!({})),
        ("auditEvents", "{ auditEvents(first: 10) { edges { node { type } } } }", json!({})),
        (
            "updateTenantSettings",
            "mutation { updateTenantSettings(input: { accessTokenLifetimeMinutes: 5, allowedOrigins: [\"https://evil.example.com\"] }) { audience } }",
            json!({}),
        ),
        ("setUserDisabled", DISABLE, json!({ "u": uid, "d": true })),
        ("setUserRole", ROLE, json!({ "u": uid, "r": "ADMIN" })),
        ("rotateSigningKey", "mutation { rotateSigningKey(immediate: true) { kid } }", json!({})),
    ]
}

async fn non_admins_are_forbidden(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (uid, token, _) = user(&s, &t, "mallory@example.com").await;
    let admin = admin_token(&s, &t).await;
    let settings_before = settings(&s, &t.slug, &admin).await;
    let kids_before = s.http.get(jwks_url(&s, &t.slug)).send().await.unwrap().text().await.unwrap();
    for (name, query, vars) in admin_operations(&uid) {
        let body = s.gql(&t.slug, Some(&token), query, vars.clone()).await;
        assert_eq!(code(&body), Some("FORBIDDEN"), "{name} as a user: {body}");
        let body = s.gql(&t.slug, None, query, vars).await;
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{name} anonymously: {body}");
    }
    // Nothing happened.
    assert_eq!(settings(&s, &t.slug, &admin).await, settings_before);
    let kids_after = s.http.get(jwks_url(&s, &t.slug)).send().await.unwrap().text().await.unwrap();
    assert_eq!(kids_after, kids_before, "no key was added");
    let me = s.gql(&t.slug, Some(&token), "{ me { role disabled } }", json!({})).await;
    assert_eq!(me["data"]["me"], json!({ "role": "USER", "disabled": false }), "{me}");
}
both!(non_admins_get_forbidden_on_every_admin_operation, non_admins_are_forbidden);

/// The `role` claim alone is not enough: a demoted admin's still-valid token
/// (role=admin) is refused, and so is a disabled admin's.
async fn admin_role_is_rechecked(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let uid = register_user(&s, &t, "carol@example.com").await;
    let body = set_role(&s, &t, &admin, &uid, "ADMIN").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "ADMIN", "{body}");
    let (carol, _) = s.login(&t.slug, "carol@example.com", PASSWORD).await;
    assert_eq!(claims_of(&carol)["role"], "admin");
    let body = s.gql(&t.slug, Some(&carol), USERS, json!({ "f": 10 })).await;
    assert!(body["data"]["users"]["edges"].is_array(), "a promoted admin lists users: {body}");

    let body = set_role(&s, &t, &admin, &uid, "USER").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "USER", "{body}");
    assert_eq!(claims_of(&carol)["role"], "admin", "the token still says admin");
    for (name, query, vars) in admin_operations(&uid) {
        let body = s.gql(&t.slug, Some(&carol), query, vars).await;
        assert_eq!(code(&body), Some("FORBIDDEN"), "{name} with a demoted admin's token: {body}");
    }
    // A promoted user's old token (role=user) does not become an admin token either.
    let (old_user_token, _) = s.login(&t.slug, "carol@example.com", PASSWORD).await;
    set_role(&s, &t, &admin, &uid, "ADMIN").await;
    let body = s.gql(&t.slug, Some(&old_user_token), USERS, json!({ "f": 10 })).await;
    assert_eq!(code(&body), Some("FORBIDDEN"), "{body}");
    assert_eq!(audit_count(&s, &t, &admin, "user.role_changed").await, 3);
}
both!(the_admin_role_is_rechecked_against_storage, admin_role_is_rechecked);

async fn users_pagination(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let mut page_users = Vec::new();
    for i in 0..5 {
        page_users.push(register_user(&s, &t, &format!("page-{i}@example.com")).await);
    }
    register_user(&s, &t, "other@example.com").await;
    register_user(&s, &t, "pagex@example.com").await;
    let total = stored_users(&s, &t).await.len();
    assert_eq!(total, 8, "seven users and the admin");

    // Follow the cursors two at a time.
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let body = s.gql(&t.slug, Some(&admin), USERS, json!({ "f": 2, "a": after })).await;
        let conn = &body["data"]["users"];
        let edges = conn["edges"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert!(edges.len() <= 2, "{body}");
        seen.extend(edges.iter().map(|e| e["node"]["id"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages <= 10, "the cursors do not advance: {body}");
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        assert_eq!(conn["pageInfo"]["endCursor"], edges.last().unwrap()["cursor"], "{body}");
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (total, total), "every user once: {seen:?}");
    assert_eq!(pages, 4);

    // emailPrefix, case-insensitively; LIKE wildcards are literal.
    for (prefix, expected) in
        [("page-", 5), ("PAGE-", 5), ("page", 6), ("page-3@", 1), ("nobody", 0), ("%", 0), ("_", 0), ("page_", 0)]
    {
        let body = s.gql(&t.slug, Some(&admin), USERS, json!({ "f": 100, "p": prefix })).await;
        let edges = body["data"]["users"]["edges"].as_array().unwrap_or_else(|| panic!("{prefix}: {body}"));
        assert_eq!(edges.len(), expected, "emailPrefix {prefix:?}: {body}");
    }
    let body = s.gql(&t.slug, Some(&admin), USERS, json!({ "f": 2, "p": "page-" })).await;
    let conn = &body["data"]["users"];
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    let body = s
        .gql(&t.slug, Some(&admin), USERS, json!({ "f": 100, "p": "page-", "a": conn["pageInfo"]["endCursor"] }))
        .await;
    assert_eq!(body["data"]["users"]["edges"].as_array().map(Vec::len), Some(3), "{body}");

    for (what, vars, f) in [
        ("first: 0", json!({ "f": 0 }), "first"),
        ("first: 101", json!({ "f": 101 }), "first"),
        ("a foreign cursor", json!({ "f": 10, "a": "not-a-cursor" }), "after"),
    ] {
        let body = s.gql(&t.slug, Some(&admin), USERS, vars).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{what}: {body}");
        assert_eq!(field(&body), Some(f), "{what}: {body}");
    }
}
both!(users_paginates_by_cursor_and_filters_by_email_prefix, users_pagination);

async fn disabling_revokes_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let (uid, a1, r1) = user(&s, &t, "dave@example.com").await;
    let (a2, r2) = s.login(&t.slug, "dave@example.com", PASSWORD).await;
    let (_, other, _) = user(&s, &t, "erin@example.com").await;

    let body = set_disabled(&s, &t, &admin, &uid, true).await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], true, "{body}");
    assert_eq!(body["data"]["setUserDisabled"]["id"], uid.as_str());
    for (what, token) in [("first session", &a1), ("second session", &a2)] {
        assert_refused(&s, &t.slug, token, what).await;
    }
    for r in [&r1, &r2] {
        assert_eq!(code(&refresh(&s, &t.slug, r).await), Some("UNAUTHENTICATED"));
    }
    assert_accepted(&s, &t.slug, &other, "another user").await;
    let body = s.gql(&t.slug, Some(&admin), USERS, json!({ "f": 10, "p": "dave" })).await;
    assert_eq!(body["data"]["users"]["edges"][0]["node"]["disabled"], true, "{body}");

    let body = set_disabled(&s, &t, &admin, &uid, false).await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], false, "{body}");
    assert_refused(&s, &t.slug, &a1, "enabling does not revive old sessions").await;
    s.login(&t.slug, "dave@example.com", PASSWORD).await;
    assert_eq!(audit_count(&s, &t, &admin, "user.disabled").await, 1);
    assert_eq!(audit_count(&s, &t, &admin, "user.enabled").await, 1);
}
both!(set_user_disabled_revokes_every_session_of_the_user, disabling_revokes_sessions);

async fn set_user_role(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let uid = register_user(&s, &t, "frank@example.com").await;
    let body = set_role(&s, &t, &admin, &uid, "ADMIN").await;
    assert_eq!(
        body["data"]["setUserRole"],
        json!({ "id": uid, "email": "frank@example.com", "role": "ADMIN", "disabled": false })
    );
    let (token, _) = s.login(&t.slug, "frank@example.com", PASSWORD).await;
    assert_eq!(claims_of(&token)["role"], "admin");
    let me = s.gql(&t.slug, Some(&token), "{ me { role } }", json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "ADMIN");
    // Setting the same role again changes nothing and records nothing.
    let body = set_role(&s, &t, &admin, &uid, "ADMIN").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "ADMIN", "{body}");
    let body = set_role(&s, &t, &admin, &uid, "USER").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "USER", "{body}");
    let (token, _) = s.login(&t.slug, "frank@example.com", PASSWORD).await;
    assert_eq!(claims_of(&token)["role"], "user");
    let body = set_role(&s, &t, &admin, &uid, "ROOT").await;
    assert!(body["errors"].is_array() && body["data"].is_null(), "an unknown role: {body}");
    assert_eq!(audit_count(&s, &t, &admin, "user.role_changed").await, 2);
}
both!(set_user_role_changes_the_role_of_new_tokens, set_user_role);

async fn malformed_user_ids(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let users_before = stored_users(&s, &t).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in ["", "nope", "123", "'; DROP TABLE users; --", unknown.as_str()] {
        for (name, body) in [
            ("setUserDisabled", set_disabled(&s, &t, &admin, id, true).await),
            ("setUserRole", set_role(&s, &t, &admin, id, "ADMIN").await),
        ] {
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{name}({id:?}): {body}");
            assert_eq!(field(&body), Some("userId"), "{name}({id:?}): {body}");
        }
    }
    // A user of another tenant is no user here.
    let other = s.tenant().await;
    let foreign = register_user(&s, &other, "zoe@example.com").await;
    let body = set_disabled(&s, &t, &admin, &foreign, true).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let (zoe, _) = s.login(&other.slug, "zoe@example.com", PASSWORD).await;
    assert_accepted(&s, &other.slug, &zoe, "the other tenant's user").await;

    let body = s
        .gql(&t.slug, Some(&admin), "{ auditEvents(first: 5, userId: \"nope\") { edges { cursor } } }", json!({}))
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(field(&body), Some("userId"));
    let after: Vec<_> = stored_users(&s, &t).await.into_iter().map(|u| (u.id, u.role, u.disabled)).collect();
    let before: Vec<_> = users_before.into_iter().map(|u| (u.id, u.role, u.disabled)).collect();
    assert_eq!(after, before, "nothing written");
}
both!(malformed_user_ids_are_bad_user_input, malformed_user_ids);

/// The tenant keeps at least one enabled admin.
async fn last_admin(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let first = subject(&admin);

    let body = set_role(&s, &t, &admin, &first, "USER").await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "demoting the last admin: {body}");
    assert_eq!(field(&body), Some("userId"));
    let body = set_disabled(&s, &t, &admin, &first, true).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "disabling the last admin: {body}");
    assert_eq!(field(&body), Some("userId"));
    let me = s.gql(&t.slug, Some(&admin), "{ me { role disabled } }", json!({})).await;
    assert_eq!(me["data"]["me"], json!({ "role": "ADMIN", "disabled": false }), "unchanged: {me}");

    // With a second admin, the first may go; then the second is the last.
    let second = register_user(&s, &t, "grace@example.com").await;
    set_role(&s, &t, &admin, &second, "ADMIN").await;
    let (second_token, _) = s.login(&t.slug, "grace@example.com", PASSWORD).await;
    let body = set_disabled(&s, &t, &second_token, &first, true).await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], true, "{body}");
    assert_refused(&s, &t.slug, &admin, "the disabled first admin").await;
    let body = set_role(&s, &t, &second_token, &second, "USER").await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "a disabled admin does not count: {body}");
    let body = set_role(&s, &t, &second_token, &first, "USER").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "USER", "demoting a disabled admin is fine: {body}");
}
both!(the_last_admin_cannot_be_disabled_or_demoted, last_admin);

async fn settings_validation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let before = settings(&s, &t.slug, &admin).await;
    assert_eq!(before["accessTokenLifetimeMinutes"], 15);
    assert_eq!(before["signingAlgorithm"], "ES256");
    assert_eq!(before["audience"], t.slug.as_str());
    assert_eq!(before["passwordMinLength"], 8);
    assert_eq!(before["requireMfaForAdmins"], false);
    assert_eq!(before["allowedOrigins"], json!([]));
    for (input, f) in [
        (json!({ "accessTokenLifetimeMinutes": 0 }), "accessTokenLifetimeMinutes"),
        (json!({ "accessTokenLifetimeMinutes": 61 }), "accessTokenLifetimeMinutes"),
        (json!({ "accessTokenLifetimeMinutes": -5 }), "accessTokenLifetimeMinutes"),
        (json!({ "passwordMinLength": 7 }), "passwordMinLength"),
        (json!({ "passwordMinLength": 65 }), "passwordMinLength"),
        (json!({ "allowedOrigins": ["https://app.example.com/path"] }), "allowedOrigins"),
        (json!({ "allowedOrigins": ["https://app.example.com/"] }), "allowedOrigins"),
        (json!({ "allowedOrigins": ["app.example.com"] }), "allowedOrigins"),
        (json!({ "audience": "bad\u{7}audience" }), "audience"),
        // One good field and one bad: all or nothing.
        (json!({ "accessTokenLifetimeMinutes": 30, "passwordMinLength": 7 }), "passwordMinLength"),
        (
            json!({ "audience": "fine", "allowedOrigins": ["https://ok.example.com", "https://x.example.com/p"] }),
            "allowedOrigins",
        ),
    ] {
        let body = update_settings(&s, &t.slug, &admin, input.clone()).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{input}: {body}");
        assert_eq!(field(&body), Some(f), "{input}: {body}");
        assert_eq!(settings(&s, &t.slug, &admin).await, before, "{input} changed something");
    }
    assert_eq!(audit_count(&s, &t, &admin, "settings.changed").await, 0);
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let c = claims_of(&token);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900, "the lifetime is unchanged");

    // Edge values are accepted.
    let saved =
        set_settings(&s, &t.slug, &admin, json!({ "accessTokenLifetimeMinutes": 60, "passwordMinLength": 64 })).await;
    assert_eq!(
        (saved["accessTokenLifetimeMinutes"].clone(), saved["passwordMinLength"].clone()),
        (json!(60), json!(64))
    );
    let saved =
        set_settings(&s, &t.slug, &admin, json!({ "accessTokenLifetimeMinutes": 1, "passwordMinLength": 8 })).await;
    assert_eq!((saved["accessTokenLifetimeMinutes"].clone(), saved["passwordMinLength"].clone()), (json!(1), json!(8)));
    assert_eq!(saved["allowedOrigins"], json!([]), "fields not given are unchanged");
    assert_eq!(audit_count(&s, &t, &admin, "settings.changed").await, 2);
}
both!(update_tenant_settings_validates_and_changes_nothing_on_bad_input, settings_validation);

async fn lifetime_and_audience(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    register_user(&s, &t, "heidi@example.com").await;
    let admin = admin_token(&s, &t).await;

    set_settings(&s, &t.slug, &admin, json!({ "accessTokenLifetimeMinutes": 5 })).await;
    let body = s.login_raw(&t.slug, "heidi@example.com", PASSWORD).await;
    assert_eq!(body["data"]["login"]["expiresIn"], 300, "{body}");
    let token = body["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let c = claims_of(&token);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    let body = refresh(&s, &t.slug, body["data"]["login"]["refreshToken"].as_str().unwrap()).await;
    assert_eq!(body["data"]["refresh"]["expiresIn"], 300, "{body}");

    let saved = set_settings(&s, &t.slug, &admin, json!({ "audience": "  https://api.example.com  " })).await;
    assert_eq!(saved["audience"], "https://api.example.com", "trimmed");
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let (token, _) = s.login(&t.slug, "heidi@example.com", PASSWORD).await;
    assert_eq!(claims_of(&token)["aud"], "https://api.example.com");
    assert_accepted(&s, &t.slug, &token, "a token with the new audience").await;
    pyjwt_verify(&jwks_url(&s, &t.slug), &token, &t.issuer, "https://api.example.com")
        .await
        .unwrap_or_else(|e| panic!("PyJWT refused the new audience: {e}"));

    // An empty audience means the slug again.
    let saved = set_settings(&s, &t.slug, &admin, json!({ "audience": "" })).await;
    assert_eq!(saved["audience"], t.slug.as_str());
    let (token, _) = s.login(&t.slug, "heidi@example.com", PASSWORD).await;
    assert_eq!(claims_of(&token)["aud"], t.slug.as_str());
}
both!(lifetime_and_audience_changes_show_in_new_tokens, lifetime_and_audience);

/// A settings change is visible to every later request: a periodic reload
/// that read storage before the change must not put the old settings back.
/// (Reloads every 50 ms, so one is often in flight during an update.)
async fn settings_changes_stick(backend: Backend) {
    let s = TestServer::start_with(backend, |env| {
        env.insert("AUTHD_TENANT_REFRESH_MS".into(), "50".into());
    })
    .await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    let mut stale = Vec::new();
    for i in 0..60u32 {
        let minutes = i % 59 + 1;
        set_settings(&s, &t.slug, &admin, json!({ "accessTokenLifetimeMinutes": minutes })).await;
        for read in 0..6 {
            let now = settings(&s, &t.slug, &admin).await;
            if now["accessTokenLifetimeMinutes"] != minutes {
                stale.push(format!("update {i} to {minutes}, read {read}: {}", now["accessTokenLifetimeMinutes"]));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert!(stale.is_empty(), "an update was undone by a stale reload: {stale:#?}");
}
both!(settings_changes_are_not_undone_by_a_concurrent_reload, settings_changes_stick);

/// Two admins demoting each other at the same moment: the store serializes
/// the check with the change, so the tenant always keeps an enabled admin.
async fn mutual_demotion(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let tenant = authd_core::TenantId(t.id.parse().unwrap());
    for round in 0..4 {
        let (a_token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
        let email = format!("second{round}@example.com");
        let reg = s.register(&t.slug, &email, "second admin passphrase").await;
        let b_id = reg["data"]["register"]["id"].as_str().unwrap().to_owned();
        let promote = s
            .gql(
                &t.slug,
                Some(&a_token),
                "mutation($u: ID!) { setUserRole(userId: $u, role: ADMIN) { role } }",
                json!({ "u": b_id }),
            )
            .await;
        assert_eq!(promote["data"]["setUserRole"]["role"], "ADMIN", "{promote}");
        let (b_token, _) = s.login(&t.slug, &email, "second admin passphrase").await;
        let a_id = s.gql(&t.slug, Some(&a_token), "{ me { id } }", json!({})).await["data"]["me"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let demote = "mutation($u: ID!) { setUserRole(userId: $u, role: USER) { role } }";
        let (x, y) = tokio::join!(
            s.gql(&t.slug, Some(&a_token), demote, json!({ "u": b_id })),
            s.gql(&t.slug, Some(&b_token), demote, json!({ "u": a_id })),
        );
        let admins = s.deps().store.count_active_admins(tenant).await.unwrap();
        assert!(admins >= 1, "round {round}: no admin left: {x} {y}");
        // Put things back for the next round: A stays the admin.
        if x["errors"].is_array() {
            let (b2, _) = s.login(&t.slug, &email, "second admin passphrase").await;
            s.gql(
                &t.slug,
                Some(&b2),
                "mutation($u: ID!) { setUserRole(userId: $u, role: ADMIN) { role } }",
                json!({ "u": a_id }),
            )
            .await;
            let (a2, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
            s.gql(&t.slug, Some(&a2), demote, json!({ "u": b_id })).await;
        }
    }
}
both!(two_admins_demoting_each_other_at_once_leave_an_admin, mutual_demotion);
