//! The audit log: every security-relevant action leaves one event
//! with the right actor, subject, client IP and user agent; events are
//! tenant-owned, queryable newest first, never hold a secret, and exist
//! exactly when their change does.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestServer, capture_logs, captured_logs, code};
use crate::mfa::pyotp;

const IP: &str = "203.0.113.77";
const UA: &str = "audit-test-agent/1.0";

/// A server that believes X-Forwarded-For from loopback, so tests can set the client IP.
async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |env| {
        env.insert("AUTHD_TRUSTED_PROXIES".into(), "127.0.0.0/8,::1/128".into());
        env.insert("AUTHD_TENANT_REFRESH_MS".into(), "100".into());
    })
    .await
}

async fn call(s: &TestServer, slug: &str, bearer: Option<&str>, query: &str, variables: Value) -> Value {
    let mut req = s
        .http
        .post(format!("{}/t/{slug}/graphql", s.url))
        .header("x-forwarded-for", IP)
        .header("user-agent", UA)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap().json().await.unwrap()
}

async fn login(s: &TestServer, slug: &str, email: &str, pw: &str) -> Value {
    call(
        s,
        slug,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { __typename ... on AuthTokens { accessToken refreshToken user { id } } ... on MfaChallenge { challengeId } } }",
        json!({ "i": { "email": email, "password": pw } }),
    )
    .await
}

async fn events(s: &TestServer, slug: &str, admin: &str, kind: &str) -> Vec<Value> {
    s.deps().audit.flush().await;
    let body = call(
        s,
        slug,
        Some(admin),
        "query($t: String) { auditEvents(first: 100, type: $t) { edges { node { id at type actorId subjectId ip userAgent requestId detail } } } }",
        json!({ "t": kind }),
    )
    .await;
    body["data"]["auditEvents"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

fn one<'a>(evs: &'a [Value], kind: &str) -> &'a Value {
    assert_eq!(evs.len(), 1, "exactly one {kind}: {evs:?}");
    let e = &evs[0];
    assert_eq!(e["type"], kind);
    assert_eq!(e["ip"], IP, "{kind} carries the client IP");
    assert_eq!(e["userAgent"], UA, "{kind} carries the user agent");
    assert!(e["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{kind} has a request id");
    e
}

async fn every_event_type(backend: Backend) {
    capture_logs();
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin_body = login(&s, &t.slug, &t.admin_email, &t.admin_password).await;
    let admin = admin_body["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let admin_id = admin_body["data"]["login"]["user"]["id"].as_str().unwrap().to_owned();

    // user.registered
    let pw = "an audited passphrase";
    let reg = call(
        &s,
        &t.slug,
        None,
        "mutation($i: RegisterInput!) { register(input: $i) { id } }",
        json!({ "i": { "email": "bob@example.com", "password": pw } }),
    )
    .await;
    let bob = reg["data"]["register"]["id"].as_str().unwrap().to_owned();
    let e = one(
        &events(&s, &t.slug, &admin, "user.registered")
            .await
            .into_iter()
            .filter(|e| e["subjectId"] == bob.as_str())
            .collect::<Vec<_>>(),
        "user.registered",
    )
    .clone();
    assert_eq!(e["subjectId"], bob.as_str());

    // login.failed with reason classes; the client only sees INVALID_CREDENTIALS.
    for (email, pass) in [("nobody@example.com", pw), ("bob@example.com", "wrong wrong wrong")] {
        assert_eq!(code(&login(&s, &t.slug, email, pass).await), Some("INVALID_CREDENTIALS"));
    }
    let failed = events(&s, &t.slug, &admin, "login.failed").await;
    let reasons: Vec<&str> = failed.iter().filter_map(|e| e["detail"]["reason"].as_str()).collect();
    assert!(reasons.contains(&"unknown_email") && reasons.contains(&"wrong_password"), "{failed:?}");
    let wrong = failed.iter().find(|e| e["detail"]["reason"] == "wrong_password").unwrap();
    assert_eq!(wrong["subjectId"], bob.as_str());
    assert_eq!(wrong["ip"], IP);

    // login.succeeded
    let bob_login = login(&s, &t.slug, "bob@example.com", pw).await;
    let bob_token = bob_login["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let bob_refresh = bob_login["data"]["login"]["refreshToken"].as_str().unwrap().to_owned();
    let ok: Vec<Value> = events(&s, &t.slug, &admin, "login.succeeded")
        .await
        .into_iter()
        .filter(|e| e["subjectId"] == bob.as_str())
        .collect();
    let e = one(&ok, "login.succeeded");
    assert_eq!(e["actorId"], bob.as_str());

    // refresh.reuse_detected
    let r1 = call(
        &s,
        &t.slug,
        None,
        "mutation($r: String) { refresh(refreshToken: $r) { refreshToken } }",
        json!({ "r": bob_refresh }),
    )
    .await;
    assert!(r1["data"]["refresh"]["refreshToken"].is_string());
    let r2 = call(
        &s,
        &t.slug,
        None,
        "mutation($r: String) { refresh(refreshToken: $r) { refreshToken } }",
        json!({ "r": bob_refresh }),
    )
    .await;
    assert_eq!(code(&r2), Some("TOKEN_REUSED"));
    let e = one(&events(&s, &t.slug, &admin, "refresh.reuse_detected").await, "refresh.reuse_detected").clone();
    assert_eq!(e["subjectId"], bob.as_str());
    let _ = bob_token;

    // session.logout, session.revoked, session.logout_all
    let l = login(&s, &t.slug, "bob@example.com", pw).await;
    let (tok, rt) = (
        l["data"]["login"]["accessToken"].as_str().unwrap().to_owned(),
        l["data"]["login"]["refreshToken"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        call(&s, &t.slug, Some(&tok), "mutation($r: String) { logout(refreshToken: $r) }", json!({ "r": rt })).await["data"]
            ["logout"],
        true
    );
    one(&events(&s, &t.slug, &admin, "session.logout").await, "session.logout");
    let l1 =
        login(&s, &t.slug, "bob@example.com", pw).await["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let l2 =
        login(&s, &t.slug, "bob@example.com", pw).await["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let sessions = call(&s, &t.slug, Some(&l1), "{ sessions { id current } }", json!({})).await;
    let other = sessions["data"]["sessions"].as_array().unwrap().iter().find(|x| x["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(&s, &t.slug, Some(&l1), "mutation($id: ID!) { revokeSession(id: $id) }", json!({ "id": other })).await["data"]
            ["revokeSession"],
        true
    );
    one(&events(&s, &t.slug, &admin, "session.revoked").await, "session.revoked");
    let _ = l2;
    let n = call(&s, &t.slug, Some(&l1), "mutation { logoutAll }", json!({})).await;
    assert!(n["data"]["logoutAll"].as_i64().unwrap() >= 1, "{n}");
    one(&events(&s, &t.slug, &admin, "session.logout_all").await, "session.logout_all");

    // user.disabled / user.enabled / user.role_changed (actor = admin, subject = bob)
    for (q, kind) in [
        ("mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { id } }", "user.disabled"),
        ("mutation($u: ID!) { setUserDisabled(userId: $u, disabled: false) { id } }", "user.enabled"),
        ("mutation($u: ID!) { setUserRole(userId: $u, role: ADMIN) { id } }", "user.role_changed"),
    ] {
        let body = call(&s, &t.slug, Some(&admin), q, json!({ "u": bob })).await;
        assert!(body["errors"].is_null(), "{body}");
        let evs = events(&s, &t.slug, &admin, kind).await;
        let e = one(&evs, kind);
        assert_eq!(e["actorId"], admin_id.as_str());
        assert_eq!(e["subjectId"], bob.as_str());
    }
    assert_eq!(
        events(&s, &t.slug, &admin, "user.role_changed").await[0]["detail"],
        json!({ "from": "user", "to": "admin" })
    );

    // key.rotated, settings.changed (which fields, never values)
    assert!(call(&s, &t.slug, Some(&admin), "mutation { rotateSigningKey { kid } }", json!({})).await["data"]["rotateSigningKey"]["kid"].is_string());
    let e = one(&events(&s, &t.slug, &admin, "key.rotated").await, "key.rotated").clone();
    assert_eq!(e["actorId"], admin_id.as_str());
    let set = call(&s, &t.slug, Some(&admin), "mutation { updateTenantSettings(input: { allowedOrigins: [\"https://app.example.org\"], passwordMinLength: 10 }) { passwordMinLength } }", json!({})).await;
    assert!(set["errors"].is_null(), "{set}");
    let e = one(&events(&s, &t.slug, &admin, "settings.changed").await, "settings.changed").clone();
    assert_eq!(e["detail"]["fields"], json!(["passwordMinLength", "allowedOrigins"]));
    assert!(!e["detail"].to_string().contains("app.example.org"), "names, not values");

    // totp.enrolled, mfa.failed, mfa.succeeded, totp.replay_refused, recovery_code.used, totp.disabled
    let begin = call(
        &s,
        &t.slug,
        Some(&l1),
        "mutation($p: String!) { beginTotpEnrollment(password: $p) { secret } }",
        json!({ "p": pw }),
    )
    .await;
    let _ = begin;
    let l = login(&s, &t.slug, "bob@example.com", pw).await;
    let tok = l["data"]["login"]["accessToken"].as_str().unwrap().to_owned();
    let begin = call(
        &s,
        &t.slug,
        Some(&tok),
        "mutation($p: String!) { beginTotpEnrollment(password: $p) { secret } }",
        json!({ "p": pw }),
    )
    .await;
    let secret = begin["data"]["beginTotpEnrollment"]["secret"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp();
    let codes = call(
        &s,
        &t.slug,
        Some(&tok),
        "mutation($c: String!) { confirmTotpEnrollment(code: $c) { codes } }",
        json!({ "c": pyotp(&secret, now).await }),
    )
    .await;
    let recovery: Vec<String> = serde_json::from_value(codes["data"]["confirmTotpEnrollment"]["codes"].clone())
        .unwrap_or_else(|_| panic!("{codes}"));
    one(&events(&s, &t.slug, &admin, "totp.enrolled").await, "totp.enrolled");
    let ch =
        login(&s, &t.slug, "bob@example.com", pw).await["data"]["login"]["challengeId"].as_str().unwrap().to_owned();
    let verify = "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken } }";
    assert_eq!(
        code(&call(&s, &t.slug, None, verify, json!({ "i": { "challengeId": ch, "code": "000000" } })).await),
        Some("MFA_INVALID")
    );
    one(&events(&s, &t.slug, &admin, "mfa.failed").await, "mfa.failed");
    let ok = call(&s, &t.slug, None, verify, json!({ "i": { "challengeId": ch, "code": recovery[0] } })).await;
    let mfa_tok = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap_or_else(|| panic!("{ok}")).to_owned();
    one(&events(&s, &t.slug, &admin, "recovery_code.used").await, "recovery_code.used");
    one(&events(&s, &t.slug, &admin, "mfa.succeeded").await, "mfa.succeeded");
    let ch =
        login(&s, &t.slug, "bob@example.com", pw).await["data"]["login"]["challengeId"].as_str().unwrap().to_owned();
    let replay = pyotp(&secret, now).await; // the step confirm used
    assert_eq!(
        code(&call(&s, &t.slug, None, verify, json!({ "i": { "challengeId": ch, "code": replay } })).await),
        Some("MFA_INVALID")
    );
    one(&events(&s, &t.slug, &admin, "totp.replay_refused").await, "totp.replay_refused");
    let next = pyotp(&secret, chrono::Utc::now().timestamp() + 30).await;
    let off = call(
        &s,
        &t.slug,
        Some(&mfa_tok),
        "mutation($p: String!, $c: String!) { disableTotp(password: $p, code: $c) }",
        json!({ "p": pw, "c": next }),
    )
    .await;
    assert_eq!(off["data"]["disableTotp"], true, "{off}");
    one(&events(&s, &t.slug, &admin, "totp.disabled").await, "totp.disabled");

    // No event, stored or logged, holds a password, token, TOTP secret or recovery code.
    let all = s
        .deps()
        .store
        .audit_events(authd_core::TenantId(t.id.parse().unwrap()), &Default::default(), None, 1000)
        .await
        .unwrap();
    let stored = format!("{all:?}");
    let logs = captured_logs();
    for secret_value in
        [pw, t.admin_password.as_str(), &admin, &tok, &mfa_tok, &bob_refresh, &secret, &recovery[0], &recovery[5]]
    {
        assert!(!stored.contains(secret_value), "an event detail holds a secret");
        assert!(!logs.contains(secret_value), "a log line holds a secret");
    }
}
both!(every_security_event_is_recorded_with_actor_subject_ip_and_agent, every_event_type);

async fn tenant_isolation(backend: Backend) {
    let s = server(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let a_admin = s.login(&a.slug, &a.admin_email, &a.admin_password).await.0;
    let b_login = s.login_raw(&b.slug, &b.admin_email, &b.admin_password).await;
    let b_admin_id = b_login["data"]["login"]["user"]["id"].as_str().unwrap().to_owned();
    // A's admin token on B's route: refused.
    let cross = call(&s, &b.slug, Some(&a_admin), "{ auditEvents { edges { node { id } } } }", json!({})).await;
    assert_eq!(code(&cross), Some("UNAUTHENTICATED"));
    // Filtering A's events by B's user id finds nothing of B's.
    let filtered = call(
        &s,
        &a.slug,
        Some(&a_admin),
        "query($u: ID) { auditEvents(userId: $u) { edges { node { id } } } }",
        json!({ "u": b_admin_id }),
    )
    .await;
    assert_eq!(filtered["data"]["auditEvents"]["edges"], json!([]));
    // A's own list holds no event whose subject is B's admin.
    s.deps().audit.flush().await;
    let mine = call(
        &s,
        &a.slug,
        Some(&a_admin),
        "{ auditEvents(first: 100) { edges { node { subjectId actorId } } } }",
        json!({}),
    )
    .await;
    assert!(!mine.to_string().contains(&b_admin_id), "{mine}");
    // A non-admin cannot read the tenant's events at all.
    s.register(&a.slug, "plain@example.com", "plain user passphrase").await;
    let plain = s.login(&a.slug, "plain@example.com", "plain user passphrase").await.0;
    assert_eq!(
        code(&call(&s, &a.slug, Some(&plain), "{ auditEvents { edges { node { id } } } }", json!({})).await),
        Some("FORBIDDEN")
    );
    // …but sees their own sign-in history.
    let me = call(&s, &a.slug, Some(&plain), "{ me { recentActivity { type } } }", json!({})).await;
    let types: Vec<&str> =
        me["data"]["me"]["recentActivity"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"user.registered"), "{me}");
}
both!(a_tenant_admin_cannot_read_another_tenants_events, tenant_isolation);

async fn pagination_and_filters(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = s.login(&t.slug, &t.admin_email, &t.admin_password).await.0;
    for i in 0..5 {
        s.register(&t.slug, &format!("p{i}@example.com"), "pagination passphrase").await;
    }
    s.deps().audit.flush().await;
    let q = "query($a: String, $since: DateTime) { auditEvents(first: 2, after: $a, type: \"user.registered\", since: $since) { edges { cursor node { at } } pageInfo { hasNextPage endCursor } } }";
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let body = call(&s, &t.slug, Some(&admin), q, json!({ "a": after })).await;
        let conn = &body["data"]["auditEvents"];
        for e in conn["edges"].as_array().unwrap() {
            seen.push(e["node"]["at"].as_str().unwrap().to_owned());
        }
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 6, "5 users + the admin");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none = call(&s, &t.slug, Some(&admin), q, json!({ "since": future })).await;
    assert_eq!(none["data"]["auditEvents"]["edges"], json!([]));
    let bad = call(&s, &t.slug, Some(&admin), q, json!({ "a": "not-a-cursor" })).await;
    assert_eq!(code(&bad), Some("BAD_USER_INPUT"));
}
both!(audit_events_page_newest_first_and_filter, pagination_and_filters);

async fn failed_change_leaves_no_event(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let tenant = authd_core::TenantId(t.id.parse().unwrap());
    s.register(&t.slug, "victim@example.com", "victim passphrase ok").await;
    let store = &s.deps().store;
    let user = store.user_by_email(tenant, "victim@example.com").await.unwrap().unwrap();
    let before = store.audit_events(tenant, &Default::default(), None, 1000).await.unwrap();
    // An event whose id already exists makes the event insert fail inside the
    // transaction: the change it records must not happen either.
    let mut ev = authd_tenancy::audit::event("user.disabled", &Default::default(), None, Some(user.id), None);
    ev.id = before[0].id;
    let change = authd_store::UserChange { disabled: Some(true), ..Default::default() };
    assert!(store.update_user(tenant, user.id, &change, Some(&ev)).await.is_err());
    let after_user = store.user_by_id(tenant, user.id).await.unwrap().unwrap();
    assert!(!after_user.disabled, "the change was rolled back with its event");
    let after = store.audit_events(tenant, &Default::default(), None, 1000).await.unwrap();
    assert_eq!(after.len(), before.len());
    // And through the API: a refused admin mutation writes no event.
    let admin = s.login(&t.slug, &t.admin_email, &t.admin_password).await.0;
    let me =
        s.gql(&t.slug, Some(&admin), "{ me { id } }", json!({})).await["data"]["me"]["id"].as_str().unwrap().to_owned();
    let refused = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserRole(userId: $u, role: USER) { id } }",
            json!({ "u": me }),
        )
        .await;
    assert_eq!(code(&refused), Some("BAD_USER_INPUT"), "the last admin stays: {refused}");
    s.deps().audit.flush().await;
    let roles = store
        .audit_events(
            tenant,
            &authd_store::AuditFilter { kind: Some("user.role_changed".into()), ..Default::default() },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(roles.is_empty());
}
both!(a_failure_inside_a_change_leaves_neither_the_change_nor_its_event, failed_change_leaves_no_event);

async fn retention(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let tenant = authd_core::TenantId(t.id.parse().unwrap());
    let mut old = authd_tenancy::audit::event("login.failed", &Default::default(), None, None, None);
    old.at = chrono::Utc::now() - chrono::Duration::days(91);
    s.deps().store.append_events(tenant, &[old.clone()]).await.unwrap();
    let all = |s: &TestServer| {
        let store = s.deps().store.clone();
        async move { store.audit_events(tenant, &Default::default(), None, 1000).await.unwrap() }
    };
    assert!(all(&s).await.iter().any(|e| e.id == old.id));
    // Starting the tenant runs its retention job (default 90 days).
    s.gql(&t.slug, None, "{ __typename }", json!({})).await;
    for _ in 0..100 {
        if !all(&s).await.iter().any(|e| e.id == old.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = all(&s).await;
    assert!(!left.iter().any(|e| e.id == old.id), "the 91-day-old event is gone");
    assert!(left.iter().any(|e| e.kind == "user.registered"), "recent events stay");
}
both!(retention_removes_only_events_older_than_the_tenants_setting, retention);

/// The `X-Request-Id` of a response is the `requestId` of the audit events
/// its request left: the caller's when sane, else a fresh UUID v4.
async fn request_ids(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let long = "r".repeat(300);
    for (i, sent) in [Some("audit-request-1"), Some("has spaces"), Some(long.as_str()), None].into_iter().enumerate() {
        let mut req = s.http.post(format!("{}/t/{}/graphql", s.url, t.slug)).json(&json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { __typename } }",
            "variables": { "i": { "email": format!("request-id-{i}@example.com"), "password": "a wrong password" } },
        }));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let echoed = resp.headers().get("x-request-id").expect("x-request-id on the response").to_str().unwrap();
        let echoed = echoed.to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "{body}");
        match sent {
            Some(id @ "audit-request-1") => assert_eq!(echoed, id),
            _ => assert!(uuid::Uuid::parse_str(&echoed).is_ok_and(|u| u.get_version_num() == 4), "{sent:?} → {echoed}"),
        }
        // `events` flushes the queue, so the next refusal does not coalesce into this one.
        let all = events(&s, &t.slug, &admin, "login.failed").await;
        assert_eq!(all.len(), i + 1, "{all:?}");
        assert_eq!(all[0]["requestId"], echoed.as_str(), "{sent:?}: the newest event has the response's id: {all:?}");
    }
}
both!(the_responses_request_id_is_its_audit_events_request_id, request_ids);

/// A flood of failed logins while the audit table is locked (storage slow):
/// the queue never passes `AUTHD_AUDIT_QUEUE_MAX`, repeated refusals of one
/// client coalesce, and once storage answers every failure is accounted for
/// in the stored events' counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_while_storage_is_slow_stays_bounded_and_coalesces() {
    use sqlx::Connection;
    let s = TestServer::start_with(Backend::Production, |env| {
        env.insert("AUTHD_TRUSTED_PROXIES".into(), "127.0.0.0/8,::1/128".into());
        env.insert("AUTHD_AUDIT_QUEUE_MAX".into(), "20".into());
        env.insert("AUTHD_DB_STATEMENT_TIMEOUT_MS".into(), "60000".into());
    })
    .await;
    let t = s.tenant().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    s.deps().audit.flush().await;
    // Storage turns slow: the audit table is locked by another session.
    let mut blocker = sqlx::PgConnection::connect(s.database_url.as_deref().unwrap()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE").execute(&mut blocker).await.unwrap();
    let metric = |name: &'static str| {
        let (http, url) = (s.http.clone(), format!("{}/metrics", s.url));
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /metrics"))
        }
    };
    let mut failures = 0u64;
    for i in 0..80 {
        let body = login(&s, &t.slug, &format!("nobody{i}@example.com"), "a wrong password").await;
        if code(&body) == Some("INVALID_CREDENTIALS") {
            failures += 1;
        }
        if i % 10 == 0 {
            assert!(metric("authd_audit_queue_length").await <= 20.0, "the queue passed its bound");
        }
    }
    assert!(metric("authd_audit_queue_length").await <= 20.0);
    assert!(metric("authd_audit_events_coalesced_total").await > 0.0, "repeated refusals coalesce");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    s.deps().audit.flush().await;
    let failed: Vec<Value> = events(&s, &t.slug, &admin, "login.failed")
        .await
        .into_iter()
        .filter(|e| e["detail"]["reason"] == "unknown_email")
        .collect();
    assert!(!failed.is_empty() && (failed.len() as u64) < failures, "{} events for {failures} failures", failed.len());
    let counted: u64 = failed.iter().map(|e| e["detail"]["count"].as_u64().unwrap_or(1)).sum();
    assert_eq!(counted, failures, "every failure is counted: {failed:?}");
}
