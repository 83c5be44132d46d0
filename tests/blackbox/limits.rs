//! Per-tenant rate limiting and brute-force protection: counts,
//! not times; an injectable clock instead of sleeping.

use std::time::Duration;

use serde_json::{Value, json};

use crate::all;
use crate::harness::{Backend, Tenant, TestServer, code};

async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |env| {
        env.insert("AUTHD_TRUSTED_PROXIES".into(), "127.0.0.0/8".into());
    })
    .await
}

const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { __typename ... on AuthTokens { accessToken } } }";

async fn login_from(s: &TestServer, slug: &str, ip: &str, email: &str, pw: &str) -> Value {
    s.http
        .post(format!("{}/t/{slug}/graphql", s.url))
        .header("x-forwarded-for", ip)
        .json(&json!({ "query": LOGIN, "variables": { "i": { "email": email, "password": pw } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn set_limits(s: &TestServer, t: &Tenant, limits: Value) {
    let admin = s.login(&t.slug, &t.admin_email, &t.admin_password).await.0;
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($r: RateLimitPolicyInput!) { updateTenantSettings(input: { rateLimits: $r }) { rateLimits { loginPerIpPerMinute } } }",
            json!({ "r": limits }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
}

fn retry_after(body: &Value) -> u64 {
    body["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap_or_else(|| panic!("no retryAfter: {body}"))
}

fn tenant_id(t: &Tenant) -> authd_core::TenantId {
    authd_core::TenantId(t.id.parse().unwrap())
}

async fn per_ip(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 3 })).await;
    for _ in 0..3 {
        assert_eq!(
            code(&login_from(&s, &t.slug, "198.51.100.1", &t.admin_email, "wrong password here").await),
            Some("INVALID_CREDENTIALS")
        );
    }
    let limited = login_from(&s, &t.slug, "198.51.100.1", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&limited), Some("RATE_LIMITED"), "{limited}");
    assert!(retry_after(&limited) >= 1);
    // Another IP is not limited by the first one's attempts.
    let other = login_from(&s, &t.slug, "198.51.100.2", &t.admin_email, &t.admin_password).await;
    assert_eq!(other["data"]["login"]["__typename"], "AuthTokens", "{other}");
}
all!(login_attempts_are_limited_per_client_ip, per_ip);

async fn login_with(s: &TestServer, slug: &str, headers: &[(&str, &str)], email: &str, pw: &str) -> Value {
    let mut req = s.http.post(format!("{}/t/{slug}/graphql", s.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.json(&json!({ "query": LOGIN, "variables": { "i": { "email": email, "password": pw } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A client behind the proxy writes its own `Forwarded` header, a new
/// address each time; the proxy appends the real address to
/// `X-Forwarded-For`. Only the latter counts, so the client stays limited.
async fn spoofed_forwarded(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 3 })).await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let forged = format!("for=203.0.113.{i}");
        let headers = [("forwarded", forged.as_str()), ("x-forwarded-for", "198.51.100.9")];
        codes.push(
            code(&login_with(&s, &t.slug, &headers, &t.admin_email, "wrong password here").await).map(str::to_owned),
        );
    }
    assert_eq!(codes[3].as_deref(), Some("RATE_LIMITED"), "{codes:?}");
    assert_eq!(codes[4].as_deref(), Some("RATE_LIMITED"), "{codes:?}");
}
all!(a_spoofed_forwarded_header_does_not_dodge_per_ip_limits, spoofed_forwarded);

/// IPv6 clients are limited per /64: rotating through addresses of one
/// prefix is one client; another prefix is another client.
async fn ipv6_prefix(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 3 })).await;
    for i in 1..=3 {
        let ip = format!("2001:db8:1:2::{i:x}");
        let body = login_from(&s, &t.slug, &ip, &t.admin_email, "wrong password here").await;
        assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "{body}");
    }
    let rotated = login_from(&s, &t.slug, "2001:db8:1:2:ffff:ffff:ffff:fffe", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&rotated), Some("RATE_LIMITED"), "same /64: {rotated}");
    let neighbour = login_from(&s, &t.slug, "2001:db8:1:3::1", &t.admin_email, &t.admin_password).await;
    assert_eq!(neighbour["data"]["login"]["__typename"], "AuthTokens", "another /64: {neighbour}");
}
all!(ipv6_clients_are_limited_per_64_prefix, ipv6_prefix);

async fn burst(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let before = s.deps().hasher.stats().count(tenant_id(&t), "verify");
    let attempts = (0..50).map(|_| login_from(&s, &t.slug, "198.51.100.9", &t.admin_email, "not the password at all"));
    let results = futures::future::join_all(attempts).await;
    let verifications = s.deps().hasher.stats().count(tenant_id(&t), "verify") - before;
    let limited = results.iter().filter(|r| code(r) == Some("RATE_LIMITED")).count();
    let invalid = results.iter().filter(|r| code(r) == Some("INVALID_CREDENTIALS")).count();
    assert_eq!(limited + invalid, 50, "{results:?}");
    // The failure burst allows 5 quick attempts per (account, IP): at most 5 hashes.
    assert!(verifications <= 5, "{verifications} argon2 verifications for a 50-request burst");
    assert_eq!(verifications as usize, invalid, "every verified attempt answered INVALID_CREDENTIALS");
    assert!(limited >= 45);
}
all!(a_concurrent_wrong_password_burst_performs_at_most_the_allowed_verifications, burst);

async fn unknown_like_known(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let run = |email: String, ip: &'static str| {
        let s = &s;
        let slug = t.slug.clone();
        async move {
            let mut codes = Vec::new();
            for _ in 0..7 {
                codes.push(code(&login_from(s, &slug, ip, &email, "wrong password!!").await).map(str::to_owned));
            }
            codes
        }
    };
    let known = run(t.admin_email.clone(), "198.51.100.20").await;
    let unknown = run("nobody-here@example.com".into(), "198.51.100.21").await;
    assert_eq!(known, unknown, "RATE_LIMITED reveals nothing about which accounts exist");
    assert!(known.iter().any(|c| c.as_deref() == Some("RATE_LIMITED")), "{known:?}");
}
all!(unknown_emails_are_limited_exactly_like_existing_ones, unknown_like_known);

async fn retry_after_is_accurate(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 2 })).await;
    let ip = "198.51.100.30";
    s.register(&t.slug, "clock@example.com", "clock user passphrase").await;
    for _ in 0..2 {
        login_from(&s, &t.slug, ip, "clock@example.com", "clock user passphrase").await;
    }
    let limited = login_from(&s, &t.slug, ip, "clock@example.com", "clock user passphrase").await;
    let wait = retry_after(&limited);
    assert!((29..=31).contains(&wait), "2 per minute: the next slot is ~30 s away, got {wait}");
    // One second early: still limited.
    s.deps().clock.advance(Duration::from_secs(wait - 1) - Duration::from_millis(500));
    assert_eq!(
        code(&login_from(&s, &t.slug, ip, "clock@example.com", "clock user passphrase").await),
        Some("RATE_LIMITED")
    );
    // At retryAfter (±1 s): allowed.
    s.deps().clock.advance(Duration::from_millis(1500));
    let ok = login_from(&s, &t.slug, ip, "clock@example.com", "clock user passphrase").await;
    assert_eq!(ok["data"]["login"]["__typename"], "AuthTokens", "{ok}");
}
all!(retry_after_matches_when_the_next_attempt_succeeds, retry_after_is_accurate);

async fn forged_xff(backend: Backend) {
    // No trusted proxies: X-Forwarded-For from the peer is not believed.
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 4 })).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let ip = format!("192.0.2.{i}");
        codes.push(code(&login_from(&s, &t.slug, &ip, "x@example.com", "whatever password").await).map(str::to_owned));
    }
    // The admin's own login above counted as one attempt from the same peer.
    assert!(codes.iter().filter(|c| c.as_deref() == Some("RATE_LIMITED")).count() >= 2, "{codes:?}");
}
all!(forged_forwarded_for_from_an_untrusted_peer_is_ignored, forged_xff);

async fn tenants_are_independent(backend: Backend) {
    let s = server(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    set_limits(&s, &a, json!({ "loginPerIpPerMinute": 2 })).await;
    let ip = "198.51.100.40";
    for _ in 0..6 {
        login_from(&s, &a.slug, ip, &a.admin_email, "flood flood flood").await;
    }
    assert_eq!(code(&login_from(&s, &a.slug, ip, &a.admin_email, &a.admin_password).await), Some("RATE_LIMITED"));
    let ok = login_from(&s, &b.slug, ip, &b.admin_email, &b.admin_password).await;
    assert_eq!(ok["data"]["login"]["__typename"], "AuthTokens", "tenant B is not limited by A: {ok}");
}
all!(one_tenant_being_limited_does_not_limit_another, tenants_are_independent);

async fn aliases_count_per_call(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 3 })).await;
    let fields: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "a{i}: login(input: {{ email: \"z@example.com\", password: \"wrong password {i}\" }}) {{ __typename }}"
            )
        })
        .collect();
    let body: Value = s
        .http
        .post(format!("{}/t/{}/graphql", s.url, t.slug))
        .header("x-forwarded-for", "198.51.100.50")
        .json(&json!({ "query": format!("mutation {{ {} }}", fields.join(" ")) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors = body["errors"].as_array().unwrap();
    let limited = errors.iter().filter(|e| e["extensions"]["code"] == "RATE_LIMITED").count();
    assert_eq!(limited, 7, "10 aliased logins get the attempts of 10 requests: {body}");
}
all!(aliased_logins_count_once_per_call, aliases_count_per_call);

async fn success_resets(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let ip = "198.51.100.60";
    for _ in 0..4 {
        assert_eq!(
            code(&login_from(&s, &t.slug, ip, &t.admin_email, "wrong wrong wrong").await),
            Some("INVALID_CREDENTIALS")
        );
    }
    let ok = login_from(&s, &t.slug, ip, &t.admin_email, &t.admin_password).await;
    assert_eq!(ok["data"]["login"]["__typename"], "AuthTokens");
    // The burst window was reset: four more failures are verified again, not refused.
    for _ in 0..4 {
        assert_eq!(
            code(&login_from(&s, &t.slug, ip, &t.admin_email, "wrong wrong wrong").await),
            Some("INVALID_CREDENTIALS")
        );
    }
}
all!(a_successful_login_resets_the_failure_counters, success_resets);

async fn bad_policy(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = s.login(&t.slug, &t.admin_email, &t.admin_password).await.0;
    for (field, value) in
        [("failedLoginsPerAccountPerHour", 101), ("loginPerIpPerMinute", 0), ("registrationsPerIpPerHour", -1)]
    {
        let body = s
            .gql(&t.slug, Some(&admin), "mutation($r: RateLimitPolicyInput!) { updateTenantSettings(input: { rateLimits: $r }) { passwordMinLength } }", json!({ "r": { field: value } }))
            .await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{field}={value}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], format!("rateLimits.{field}"));
    }
}
all!(rate_limit_policies_are_validated, bad_policy);

async fn tenant_quota(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "tenantRequestsPerSecond": 2 })).await;
    // Let the rate limiter actor pick up the new policy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let resp = s
            .http
            .post(format!("{}/t/{}/graphql", s.url, t.slug))
            .json(&json!({ "query": "{ __typename }" }))
            .send()
            .await
            .unwrap();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        statuses.push((resp.status().as_u16(), retry));
    }
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!limited.is_empty(), "{statuses:?}");
    assert!(limited.iter().all(|(_, r)| r.as_deref().is_some_and(|r| r.parse::<u64>().is_ok())), "{statuses:?}");
}
all!(a_tenant_wide_quota_answers_429_with_retry_after, tenant_quota);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit() {
    let s1 = server(Backend::Production).await;
    let t = s1.tenant().await;
    set_limits(&s1, &t, json!({ "loginPerIpPerMinute": 4 })).await;
    let s2 = s1.replica(|_| {}).await;
    let ip = "198.51.100.70";
    let mut codes = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { &s1 } else { &s2 };
        codes.push(code(&login_from(s, &t.slug, ip, &t.admin_email, "wrong password!!").await).map(str::to_owned));
    }
    let allowed = codes.iter().filter(|c| c.as_deref() == Some("INVALID_CREDENTIALS")).count();
    assert_eq!(allowed, 4, "the policy's number, not twice it: {codes:?}");
}

/// A private Redis on a free port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self {
            child: std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--maxmemory-policy", "noeviction"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed by scripts/test.sh"),
            port,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = redis.child.kill();
        panic!("private redis did not start");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_limits_fall_back_to_local_governors_and_token_calls_answer_unavailable() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let s = TestServer::start_with(Backend::Production, |env| {
        env.insert("REDIS_URL".into(), format!("redis://127.0.0.1:{port}"));
        env.insert("AUTHD_TRUSTED_PROXIES".into(), "127.0.0.0/8".into());
        env.insert("AUTHD_REPLICAS".into(), "2".into());
    })
    .await;
    let t = s.tenant().await;
    set_limits(&s, &t, json!({ "loginPerIpPerMinute": 6 })).await;
    let ok = login_from(&s, &t.slug, "198.51.100.80", &t.admin_email, &t.admin_password).await;
    assert_eq!(ok["data"]["login"]["__typename"], "AuthTokens", "{ok}");
    // Redis goes away.
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let mut codes = Vec::new();
    for i in 0..5 {
        let email = format!("nobody{i}@example.com");
        codes.push(code(&login_from(&s, &t.slug, "198.51.100.81", &email, "some password").await).map(str::to_owned));
    }
    // 6 per minute across 2 replicas: this replica alone allows 3 attempts from
    // the IP (verified, then refused as wrong); the rest are limited locally.
    let invalid = codes.iter().filter(|c| c.as_deref() == Some("INVALID_CREDENTIALS")).count();
    let limited = codes.iter().filter(|c| c.as_deref() == Some("RATE_LIMITED")).count();
    assert_eq!((invalid, limited), (3, 2), "{codes:?}");
    // A correct login needs the token store for its session: UNAVAILABLE, safe to retry.
    let down = login_from(&s, &t.slug, "198.51.100.82", &t.admin_email, &t.admin_password).await;
    assert_eq!(code(&down), Some("UNAVAILABLE"), "{down}");
    // Readiness follows storage only: every replica would fail alike.
    let ready = s.http.get(format!("{}/readyz", s.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
