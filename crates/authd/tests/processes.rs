//! authd as real processes (`CARGO_BIN_EXE_authd serve`), the way Kubernetes
//! runs it: two replicas on one Postgres and one Redis behave as one service;
//! SIGTERM under a steady load drops nothing and exits 0; traces reach an OTLP
//! receiver as real protobuf (decoded by the official `opentelemetry-proto`
//! package) and `/metrics` reads cleanly with the official Prometheus parser.
//!
//! Needs what scripts/test.sh provides: `AUTHD_TEST_DATABASE_URL`,
//! `AUTHD_TEST_REDIS_URL` and `AUTHD_TEST_PYTHON` (a venv with
//! tests/scripts/requirements.txt).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};

const PASSWORD: &str = "a perfectly fine passphrase";
const ADMIN_PASSWORD: &str = "correct horse battery staple";
const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { __typename ... on AuthTokens { accessToken refreshToken user { id } } } }";
const ME: &str = "{ me { id } }";

// ------------------------------------------------------------------ helpers

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scripts")
}

fn python() -> String {
    std::env::var("AUTHD_TEST_PYTHON")
        .expect("AUTHD_TEST_PYTHON must name a Python with tests/scripts/requirements.txt (scripts/test.sh sets it up)")
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("authd-proc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Creates an empty database and migrates it as the owner (superuser).
async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("AUTHD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("authd_test_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres must answer at AUTHD_TEST_DATABASE_URL (scripts/test.sh sets it up)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    authd_store::postgres::migrate_postgres(&url).await.expect("migrate");
    url
}

/// Cheap hashing, a free port, JSON logs (to find the bound address).
fn base_env() -> HashMap<String, String> {
    [
        ("AUTHD_LISTEN", "127.0.0.1:0"),
        ("AUTHD_ARGON2_MEMORY_KIB", "64"),
        ("AUTHD_ARGON2_ITERATIONS", "1"),
        ("AUTHD_HASH_THREADS", "2"),
        ("AUTHD_SHUTDOWN_DELAY_SECS", "0"),
        ("AUTHD_DRAIN_SECS", "5"),
        ("AUTHD_LOG_FORMAT", "json"),
        ("AUTHD_PLATFORM_TOKEN", "platform-token-for-process-tests-0123456789"),
        ("RUST_LOG", "info,sqlx=warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("AUTHD_DATA_DIR".to_owned(), temp_dir().display().to_string())])
    .collect()
}

/// Postgres + Redis, shared by every replica given this environment.
async fn production_env() -> HashMap<String, String> {
    let mut env = base_env();
    env.insert("DATABASE_URL".into(), fresh_database().await);
    env.insert(
        "REDIS_URL".into(),
        std::env::var("AUTHD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    env.insert("AUTHD_REDIS_PREFIX".into(), format!("authd-proc-{}", uuid::Uuid::new_v4().simple()));
    env.insert("AUTHD_MASTER_KEY".into(), authd_core::crypto::MasterKey::generate().to_base64());
    // Replicas behind one Service share the public URL, hence the issuer.
    env.insert("AUTHD_PUBLIC_URL".into(), "http://authd.test".into());
    env
}

/// One `authd serve` process; killed on drop if still running.
struct Authd {
    child: Child,
    url: String,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    platform_token: String,
}

impl Authd {
    fn spawn(env: &HashMap<String, String>) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn authd");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "authd is serving"
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                sink.lock().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("authd did not start; its log:\n{}", logs.lock().join("\n"));
            }
        };
        Self {
            child,
            url: format!("http://{addr}"),
            logs,
            http: reqwest::Client::new(),
            platform_token: env["AUTHD_PLATFORM_TOKEN"].clone(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit, up to `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        query: &str,
        vars: Value,
    ) -> Value {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&json!({ "query": query, "variables": vars }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    async fn platform(&self, query: &str, vars: Value) -> Value {
        let token = self.platform_token.clone();
        self.post("/graphql", Some(&token), &[], query, vars).await
    }

    async fn gql(&self, slug: &str, bearer: Option<&str>, query: &str, vars: Value) -> Value {
        self.post(&format!("/t/{slug}/graphql"), bearer, &[], query, vars).await
    }

    /// Creates a tenant; returns (slug, tenant id).
    async fn tenant(&self) -> (String, String) {
        let slug = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let body = self
            .platform(
                "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
                json!({ "i": { "slug": slug, "name": "Process test", "adminEmail": admin_email(&slug), "adminPassword": ADMIN_PASSWORD } }),
            )
            .await;
        let id = body["data"]["createTenant"]["id"].as_str().unwrap_or_else(|| panic!("createTenant: {body}"));
        (slug, id.to_owned())
    }

    async fn register(&self, slug: &str, email: &str) -> String {
        let body = self
            .gql(
                slug,
                None,
                "mutation($i: RegisterInput!) { register(input: $i) { id } }",
                json!({ "i": { "email": email, "password": PASSWORD } }),
            )
            .await;
        body["data"]["register"]["id"].as_str().unwrap_or_else(|| panic!("register: {body}")).to_owned()
    }

    async fn login_raw(&self, slug: &str, email: &str, password: &str) -> Value {
        self.gql(slug, None, LOGIN, json!({ "i": { "email": email, "password": password } })).await
    }

    /// (access token, refresh token).
    async fn login(&self, slug: &str, email: &str, password: &str) -> (String, String) {
        let body = self.login_raw(slug, email, password).await;
        let t = &body["data"]["login"];
        let access = t["accessToken"].as_str().unwrap_or_else(|| panic!("login: {body}")).to_owned();
        (access, t["refreshToken"].as_str().unwrap_or_default().to_owned())
    }

    async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }
}

impl Drop for Authd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_email(slug: &str) -> String {
    format!("admin@{slug}.example.com")
}

fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// Polls `f` until it returns true, for at most `limit`; returns whether it did.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------ multi-replica

/// Changes reach the other replica through Redis (deny list, pub/sub) or its
/// change feed (`AUTHD_TENANT_REFRESH_MS`, 5 s by default with Redis, a
/// backstop for lost notices): allow a few seconds for pub/sub.
const PROPAGATION: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_and_redis_behave_as_one_service() {
    let env = production_env().await;
    let a = Authd::spawn(&env);
    let b = Authd::spawn(&env);
    let (slug, _) = a.tenant().await;
    let uid = a.register(&slug, "user@example.com").await;

    // A token issued by one replica is accepted by the other.
    let (access, refresh) = a.login(&slug, "user@example.com", PASSWORD).await;
    let me = b.gql(&slug, Some(&access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["id"], uid.as_str(), "{me}");

    // A session revoked on A is refused on B, access and refresh token alike.
    let out =
        a.gql(&slug, Some(&access), "mutation($r: String) { logout(refreshToken: $r) }", json!({ "r": refresh })).await;
    assert_eq!(out["data"]["logout"], true, "{out}");
    let me = b.gql(&slug, Some(&access), ME, json!({})).await;
    assert_eq!(code(&me), Some("UNAUTHENTICATED"), "revoked on A, still accepted by B: {me}");
    let again = b
        .gql(&slug, None, "mutation($r: String) { refresh(refreshToken: $r) { accessToken } }", json!({ "r": refresh }))
        .await;
    assert!(again["data"].is_null() || again["data"]["refresh"].is_null(), "refresh after logout on B: {again}");
    assert!(code(&again).is_some(), "{again}");

    // A key rotated on A signs A's new tokens, and B verifies them.
    let (admin, _) = a.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let old_kid = kid(&admin);
    let rotated = a.gql(&slug, Some(&admin), "mutation { rotateSigningKey(immediate: true) { kid } }", json!({})).await;
    let new_kid = rotated["data"]["rotateSigningKey"]["kid"].as_str().unwrap_or_else(|| panic!("{rotated}")).to_owned();
    assert_ne!(new_kid, old_kid);
    let (fresh, _) = a.login(&slug, "user@example.com", PASSWORD).await;
    assert_eq!(kid(&fresh), new_kid, "A signs with the rotated key");
    let accepted = eventually(PROPAGATION, || async {
        b.gql(&slug, Some(&fresh), ME, json!({})).await["data"]["me"]["id"] == uid.as_str()
    })
    .await;
    assert!(accepted, "B never verified a token signed with the key rotated on A");
    // And B signs with it too once it has reloaded.
    let (from_b, _) = b.login(&slug, "user@example.com", PASSWORD).await;
    let b_kid_ok = kid(&from_b) == new_kid
        || eventually(PROPAGATION, || async { kid(&b.login(&slug, "user@example.com", PASSWORD).await.0) == new_kid })
            .await;
    assert!(b_kid_ok, "B kept signing with the old key");

    // A user disabled on A is refused on both: their tokens and their logins.
    let (on_b, _) = b.login(&slug, "user@example.com", PASSWORD).await;
    let admin = a.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await.0;
    let off = a
        .gql(
            &slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }",
            json!({ "u": uid }),
        )
        .await;
    assert_eq!(off["data"]["setUserDisabled"]["disabled"], true, "{off}");
    let refused = eventually(PROPAGATION, || async {
        code(&b.gql(&slug, Some(&on_b), ME, json!({})).await) == Some("UNAUTHENTICATED")
    })
    .await;
    assert!(refused, "B still accepts the token of a user disabled on A");
    for (name, replica) in [("A", &a), ("B", &b)] {
        let body = replica.login_raw(&slug, "user@example.com", PASSWORD).await;
        assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "disabled user logs in on {name}: {body}");
    }

    // A tenant disabled through A's platform API is refused on both.
    let (admin, _) = b.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let off = a
        .platform(
            "mutation($s: String!) { setTenantDisabled(slug: $s, disabled: true) { disabled } }",
            json!({ "s": slug }),
        )
        .await;
    assert_eq!(off["data"]["setTenantDisabled"]["disabled"], true, "{off}");
    for (name, replica) in [("A", &a), ("B", &b)] {
        let disabled = eventually(PROPAGATION, || async {
            code(&replica.login_raw(&slug, &admin_email(&slug), ADMIN_PASSWORD).await) == Some("TENANT_DISABLED")
        })
        .await;
        assert!(disabled, "{name} still serves logins of a disabled tenant");
        let me = replica.gql(&slug, Some(&admin), ME, json!({})).await;
        assert_eq!(code(&me), Some("TENANT_DISABLED"), "{name} still serves tokens of a disabled tenant: {me}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_reconfigured_on_one_replica_is_used_by_the_other_within_a_second() {
    let mut env = production_env().await;
    // The provider is a GitHub Enterprise base on loopback: nothing is
    // contacted, the authorization URL is built from the configuration.
    env.insert("AUTHD_PROVIDER_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
    // The periodic reload is ten minutes away: only the change notice over
    // Redis pub/sub can bring the new configuration in time.
    env.insert("AUTHD_TENANT_REFRESH_MS".into(), "600000".into());
    let a = Authd::spawn(&env);
    let b = Authd::spawn(&env);
    let (slug, _) = a.tenant().await;
    let (admin, _) = a.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let app = "https://app.example.com/callback";
    let set = a
        .gql(
            &slug,
            Some(&admin),
            "mutation($u: [String!]) { updateTenantSettings(input: { allowedRedirectUris: $u }) { allowedRedirectUris } }",
            json!({ "u": [app] }),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    let upsert = |client_id: &'static str| {
        a.gql(
            &slug,
            Some(&admin),
            "mutation($i: OAuthProviderInput!) { upsertOAuthProvider(input: $i) { name clientId } }",
            json!({ "i": { "name": "ghe", "kind": "GITHUB", "clientId": client_id, "clientSecret": "s3cret-value",
                           "issuer": "http://127.0.0.1:9", "displayName": "GitHub" } }),
        )
    };
    async fn start(replica: &Authd, slug: &str, app: &str) -> Value {
        replica
            .gql(
                slug,
                None,
                "mutation($r: String!, $c: String!) { startOAuthLogin(provider: \"ghe\", redirectUri: $r, codeChallenge: $c) { authorizationUrl } }",
                json!({ "r": app, "c": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM" }),
            )
            .await
    }
    let client_of = |body: Value| -> Option<String> {
        let url = url::Url::parse(body["data"]["startOAuthLogin"]["authorizationUrl"].as_str()?).ok()?;
        url.query_pairs().find(|(k, _)| k == "client_id").map(|(_, v)| v.into_owned())
    };
    let first = upsert("first-client").await;
    assert_eq!(first["data"]["upsertOAuthProvider"]["clientId"], "first-client", "{first}");
    let seen = eventually(Duration::from_millis(1500), || async {
        client_of(start(&b, &slug, app).await).as_deref() == Some("first-client")
    })
    .await;
    assert!(seen, "B never offered the provider created on A: {}", start(&b, &slug, app).await);
    let second = upsert("second-client").await;
    assert_eq!(second["data"]["upsertOAuthProvider"]["clientId"], "second-client", "{second}");
    // "Within a second", with half a second of slack for a loaded CI machine.
    let changed = Instant::now();
    let updated = eventually(Duration::from_millis(1500), || async {
        client_of(start(&b, &slug, app).await).as_deref() == Some("second-client")
    })
    .await;
    assert!(
        updated,
        "B still uses the old configuration {:?} after {:?}",
        client_of(start(&b, &slug, app).await),
        changed.elapsed()
    );
    assert_eq!(client_of(start(&a, &slug, app).await).as_deref(), Some("second-client"));
}

// ------------------------------------------------------------------ SIGTERM

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_steady_load_fails_no_request_and_exits_zero() {
    const DELAY: u64 = 3;
    const DRAIN: u64 = 5;
    let mut env = base_env();
    env.insert("AUTHD_SHUTDOWN_DELAY_SECS".into(), DELAY.to_string());
    env.insert("AUTHD_DRAIN_SECS".into(), DRAIN.to_string());
    let mut server = Authd::spawn(&env);
    let (slug, _) = server.tenant().await;
    server.register(&slug, "load@example.com").await;
    let (access, _) = server.login(&slug, "load@example.com", PASSWORD).await;

    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let term_sent = Arc::new(AtomicBool::new(false));
    let ok_before = Arc::new(AtomicU64::new(0));
    let ok_after = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for i in 0..4 {
        let (url, slug, access) = (url.clone(), slug.clone(), access.clone());
        let (stop, term_sent, ok_before, ok_after, failures) =
            (stop.clone(), term_sent.clone(), ok_before.clone(), ok_after.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            // Each worker keeps its pooled keep-alive connections, like a client behind a load balancer.
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Acquire) {
                let after = term_sent.load(Ordering::Acquire);
                // A token check, and a token-store read. Paced under the
                // tenant quota (500/s by default), which would answer 429.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let body =
                    if i % 2 == 0 { json!({ "query": ME }) } else { json!({ "query": "{ sessions { id current } }" }) };
                let res = http.post(format!("{url}/t/{slug}/graphql")).bearer_auth(&access).json(&body).send().await;
                match res {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) if v["errors"].is_null() => {
                            if after { &ok_after } else { &ok_before }.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(v) => failures.lock().push(format!("error answer: {v}")),
                        Err(e) => failures.lock().push(format!("body: {e:?}")),
                    },
                    Ok(r) => failures.lock().push(format!("status {}", r.status())),
                    Err(e) => failures.lock().push(format!("request: {e:?}")),
                }
            }
        }));
    }
    // Readiness as Kubernetes sees it.
    let probe = reqwest::Client::new();
    let ready = probe.get(format!("{url}/readyz")).send().await.unwrap().status();
    assert_eq!(ready.as_u16(), 200);
    while ok_before.load(Ordering::Relaxed) < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    term_sent.store(true, Ordering::Release);
    server.sigterm();
    let signalled = Instant::now();
    let mut probes_ok_after_503 = 0;
    let saw_503 = eventually(Duration::from_secs(DELAY), || async {
        probe.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    assert!(saw_503, "/readyz never turned 503 after SIGTERM");
    // A request in flight when the listener stops accepting: its body is
    // only half sent until after the delay, so it is still being read when
    // the drain begins, and must get its full answer.
    let in_flight = {
        let addr = url.trim_start_matches("http://").to_owned();
        let (slug, access) = (slug.clone(), access.clone());
        let finish_at = tokio::time::Instant::from_std(signalled) + Duration::from_millis(DELAY * 1000 + 700);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let body = serde_json::to_vec(&json!({ "query": ME })).unwrap();
            let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /t/{slug}/graphql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {access}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            sock.write_all(&body[..body.len() / 2]).await.unwrap();
            tokio::time::sleep_until(finish_at).await;
            sock.write_all(&body[body.len() / 2..]).await.unwrap();
            let mut answer = Vec::new();
            sock.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        })
    };
    let at_503 = ok_after.load(Ordering::Relaxed);
    // Endpoints are updated within the delay: the load balancer stops
    // sending new requests about a second after readiness fails.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    if probe.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        probes_ok_after_503 += 1;
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    let served_while_unready = ok_after.load(Ordering::Relaxed) - at_503;

    let in_flight = in_flight.await.unwrap();
    assert!(
        in_flight.starts_with("HTTP/1.1 200") && in_flight.contains("\"me\":{\"id\""),
        "the request in flight at the end of the delay was not answered: {in_flight:?}"
    );
    let status = server.wait_exit(Duration::from_secs(DELAY + DRAIN + 5));
    let failures = failures.lock().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed around SIGTERM, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served_while_unready > 0, "nothing was served between readiness 503 and the end of the delay");
    assert_eq!(probes_ok_after_503, 1, "liveness must keep answering during the delay");
    let status = status
        .unwrap_or_else(|| panic!("authd did not exit within delay + drain; log:\n{}", server.logs.lock().join("\n")));
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.logs.lock().join("\n"));
    assert!(signalled.elapsed() < Duration::from_secs(DELAY + DRAIN + 5));
    let logs = server.logs.lock().join("\n");
    assert!(logs.contains("shutdown requested") && logs.contains("\"stopped\""), "{logs}");
}

// ---------------------------------------------------- traces and metrics

/// A minimal OTLP/HTTP receiver: stores every request body, answers 200.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    store.lock().push((target, buf[head_end..head_end + len].to_vec()));
                    buf.drain(..head_end + len);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), bodies)
}

/// Decodes the exports with the official `opentelemetry-proto` package.
fn decode_spans(bodies: &[(String, Vec<u8>)]) -> Vec<Value> {
    let dir = temp_dir();
    let mut paths = Vec::new();
    for (i, (_, body)) in bodies.iter().enumerate() {
        let p = dir.join(format!("export-{i}.pb"));
        std::fs::write(&p, body).unwrap();
        paths.push(p);
    }
    let out = Command::new(python()).arg(scripts_dir().join("otlp_decode.py")).args(&paths).output().unwrap();
    assert!(out.status.success(), "otlp_decode.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Parses an exposition with the official Prometheus parser.
fn parse_metrics(text: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(scripts_dir().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sum of the samples named `sample` whose labels include `labels`.
fn sum(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"))
        .iter()
        .filter(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .map(|s| s[2].as_f64().unwrap_or(0.0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_joined_to_the_callers_trace_without_secrets() {
    let (endpoint, bodies) = otlp_receiver().await;
    let mut env = base_env();
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint);
    // Batches leave only when full or at shutdown: the export below proves
    // that graceful shutdown flushes the exporter.
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into());
    let mut server = Authd::spawn(&env);
    let (slug, tenant_id) = server.tenant().await;
    server.register(&slug, "traced@example.com").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let login = server
        .post(
            &format!("/t/{slug}/graphql"),
            None,
            &[("traceparent", &traceparent)],
            &format!("mutation TracedLogin {}", &LOGIN["mutation".len()..]),
            json!({ "i": { "email": "traced@example.com", "password": PASSWORD } }),
        )
        .await;
    let access = login["data"]["login"]["accessToken"].as_str().unwrap_or_else(|| panic!("{login}")).to_owned();
    let refresh = login["data"]["login"]["refreshToken"].as_str().unwrap().to_owned();
    let wrong = server.login_raw(&slug, "traced@example.com", "not the password at all").await;
    assert_eq!(code(&wrong), Some("INVALID_CREDENTIALS"));

    // The audit event of the traced login carries the trace id as its request id.
    let (admin, _) = server.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let found = eventually(Duration::from_secs(5), || async {
        let body = server
            .gql(
                &slug,
                Some(&admin),
                "{ auditEvents(first: 100, type: \"login.succeeded\") { edges { node { requestId } } } }",
                json!({}),
            )
            .await;
        body["data"]["auditEvents"]["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["node"]["requestId"] == trace_id))
    })
    .await;
    assert!(found, "no login.succeeded audit event with requestId = the traceparent's trace id");

    // Graceful shutdown flushes the exporter.
    assert!(bodies.lock().is_empty(), "exported before shutdown although the schedule delay is 10 minutes");
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).expect("authd exits");
    assert!(status.success(), "{status:?}");
    let bodies = bodies.lock().clone();
    assert!(!bodies.is_empty(), "nothing was exported");
    assert!(
        bodies.iter().all(|(target, _)| target == "/v1/traces"),
        "{:?}",
        bodies.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    // No secret in any payload, encoded or not.
    for (_, body) in &bodies {
        for secret in
            [PASSWORD, ADMIN_PASSWORD, "not the password at all", access.as_str(), refresh.as_str(), admin.as_str()]
        {
            assert!(!body.windows(secret.len()).any(|w| w == secret.as_bytes()), "an export carries a secret");
        }
        let platform = env["AUTHD_PLATFORM_TOKEN"].as_bytes();
        assert!(!body.windows(platform.len()).any(|w| w == platform), "an export carries the platform token");
    }

    let spans = decode_spans(&bodies);
    assert!(spans.iter().all(|s| s["resource"]["service.name"] == "authd"), "service.name");
    let traced: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace_id).collect();
    let op = traced
        .iter()
        .find(|s| s["name"] == "mutation login")
        .unwrap_or_else(|| panic!("no `mutation login` span in the caller's trace: {traced:?}"));
    assert_eq!(op["parent_span_id"], parent_id, "the operation span's parent is the caller's span");
    let a = &op["attributes"];
    assert_eq!(a["tenant"], slug.as_str(), "{a}");
    assert_eq!(a["graphql.operation.type"], "mutation", "{a}");
    assert_eq!(a["graphql.operation.name"], "TracedLogin", "{a}");
    assert_eq!(a["graphql.root_fields"], "login", "{a}");
    assert_eq!(a["outcome"], "ok", "{a}");
    // Token-store calls made by the login are children in the same trace, tagged with the tenant.
    let token_calls: Vec<&&Value> =
        traced.iter().filter(|s| s["name"].as_str().unwrap().starts_with("tokens.")).collect();
    assert!(token_calls.iter().any(|s| s["name"] == "tokens.create_session"), "{traced:?}");
    assert!(token_calls.iter().all(|s| s["attributes"]["tenant"] == tenant_id.as_str()), "{token_calls:?}");
    // So are the storage calls, with the database system and the tenant id.
    let lookup = traced
        .iter()
        .find(|s| s["name"] == "store.user_by_email")
        .unwrap_or_else(|| panic!("no store.user_by_email span in the login's trace: {traced:?}"));
    assert_eq!(lookup["attributes"]["db.system"], "sqlite");
    assert_eq!(lookup["attributes"]["tenant"], tenant_id.as_str());
    assert_eq!(lookup["parent_span_id"], op["span_id"], "storage spans are children of the operation span");
    // Background work (periodic tenant reloads, the audit sink) makes no
    // spans of its own: every storage and token-store span has a parent.
    let orphans: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("store.") || n.starts_with("tokens.")))
        .filter(|s| s["parent_span_id"] == "")
        .collect();
    assert!(orphans.is_empty(), "root storage spans: {orphans:?}");
    // The failed login is its own trace, with the error code as outcome.
    let failed = spans
        .iter()
        .find(|s| s["name"] == "mutation login" && s["attributes"]["outcome"] == "invalid_credentials")
        .unwrap_or_else(|| panic!("no failed login span"));
    assert_ne!(failed["trace_id"], trace_id);
    // Nothing in any attribute looks like a credential.
    for s in &spans {
        let text = s["attributes"].to_string();
        for secret in [PASSWORD, ADMIN_PASSWORD, access.as_str(), refresh.as_str()] {
            assert!(!text.contains(secret), "{}: {text}", s["name"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser_and_move_with_traffic() {
    let server = Authd::spawn(&base_env());
    let (slug, _) = server.tenant().await;
    server.register(&slug, "counted@example.com").await;
    let before = parse_metrics(&server.metrics().await);
    server.login(&slug, "counted@example.com", PASSWORD).await;
    let wrong = server.login_raw(&slug, "counted@example.com", "not the password at all").await;
    assert_eq!(code(&wrong), Some("INVALID_CREDENTIALS"));
    let after = parse_metrics(&server.metrics().await);

    for (family, kind) in [
        ("authd_graphql_requests", "counter"),
        ("authd_graphql_request_duration_seconds", "histogram"),
        ("authd_login_attempts", "counter"),
        ("authd_backend_errors", "counter"),
        ("authd_hash_queue_depth", "gauge"),
        ("authd_hash_queue_wait_seconds", "histogram"),
        ("authd_active_tenants", "gauge"),
        ("authd_actor_restarts", "counter"),
        ("authd_rate_limited", "counter"),
        ("authd_password_verifications", "counter"),
    ] {
        assert_eq!(after[family]["type"], kind, "{family}: {}", after[family]);
        assert!(after[family]["help"].as_str().is_some_and(|h| !h.is_empty()), "{family} has no HELP");
    }
    let delta = |family: &str, sample: &str, labels: &[(&str, &str)]| {
        sum(&after, family, sample, labels) - sum(&before, family, sample, labels)
    };
    assert_eq!(delta("authd_login_attempts", "authd_login_attempts_total", &[("outcome", "success")]), 1.0);
    assert_eq!(delta("authd_login_attempts", "authd_login_attempts_total", &[("outcome", "invalid_credentials")]), 1.0);
    let login_ok = [("schema", "tenant"), ("operation", "login"), ("type", "mutation"), ("outcome", "ok")];
    assert_eq!(delta("authd_graphql_requests", "authd_graphql_requests_total", &login_ok), 1.0);
    let count =
        delta("authd_graphql_request_duration_seconds", "authd_graphql_request_duration_seconds_count", &login_ok);
    assert_eq!(count, 1.0);
    let inf = [login_ok.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        delta("authd_graphql_request_duration_seconds", "authd_graphql_request_duration_seconds_bucket", &inf),
        1.0
    );
    assert!(delta("authd_hash_queue_wait_seconds", "authd_hash_queue_wait_seconds_count", &[]) >= 2.0);
    assert!(sum(&after, "authd_active_tenants", "authd_active_tenants", &[]) >= 1.0);
    // Per-tenant labels are off by default.
    let samples = after["authd_graphql_requests"]["samples"].as_array().unwrap();
    assert!(samples.iter().all(|s| s[1].get("tenant").is_none()), "tenant label present by default");
    // Every HTTP request counts by route template, also those refused
    // before any operation ran; an unknown tenant's slug is no label.
    server.http.get(format!("{}/t/{slug}/.well-known/jwks.json", server.url)).send().await.unwrap();
    server.gql("no-such-tenant", None, ME, json!({})).await;
    let http = parse_metrics(&server.metrics().await);
    assert_eq!(http["authd_http_requests"]["type"], "counter");
    assert_eq!(http["authd_http_request_duration_seconds"]["type"], "histogram");
    let jwks = [("route", "/t/{tenant}/.well-known/jwks.json"), ("method", "GET"), ("status", "200")];
    assert_eq!(sum(&http, "authd_http_requests", "authd_http_requests_total", &jwks), 1.0);
    let unknown = [("route", "/t/{tenant}/graphql"), ("method", "POST"), ("status", "404")];
    assert_eq!(sum(&http, "authd_http_requests", "authd_http_requests_total", &unknown), 1.0);
    let text = server.metrics().await;
    assert!(!text.contains("no-such-tenant") && !text.contains(&slug), "a slug became a label: {text}");
    // An unknown root field does not mint an operation label.
    server.gql(&slug, None, "{ noSuchField }", json!({})).await;
    let text = server.metrics().await;
    assert!(!text.contains("noSuchField"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_tenant_labels_when_switched_on() {
    let mut env = base_env();
    env.insert("AUTHD_METRICS_TENANT_LABELS".into(), "true".into());
    let server = Authd::spawn(&env);
    let (slug, _) = server.tenant().await;
    server.register(&slug, "labelled@example.com").await;
    server.login(&slug, "labelled@example.com", PASSWORD).await;
    let families = parse_metrics(&server.metrics().await);
    let labels = [("operation", "login"), ("outcome", "ok"), ("tenant", slug.as_str())];
    assert_eq!(sum(&families, "authd_graphql_requests", "authd_graphql_requests_total", &labels), 1.0);
    assert_eq!(
        sum(
            &families,
            "authd_login_attempts",
            "authd_login_attempts_total",
            &[("outcome", "success"), ("tenant", &slug)]
        ),
        1.0
    );
}

/// A private Redis on a free port (the shared one must not be stopped).
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test.sh");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
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
async fn a_token_store_outage_shows_in_backend_error_metrics_and_error_spans() {
    let mut redis = PrivateRedis::start();
    let (endpoint, bodies) = otlp_receiver().await;
    let mut env = production_env().await;
    env.insert("REDIS_URL".into(), format!("redis://127.0.0.1:{}", redis.port));
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint);
    let mut server = Authd::spawn(&env);
    let (slug, _) = server.tenant().await;
    server.register(&slug, "outage@example.com").await;
    server.login(&slug, "outage@example.com", PASSWORD).await;
    let before = parse_metrics(&server.metrics().await);

    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let down = server.login_raw(&slug, "outage@example.com", PASSWORD).await;
    assert_eq!(code(&down), Some("UNAVAILABLE"), "{down}");

    let after = parse_metrics(&server.metrics().await);
    let errors =
        |m: &Value| sum(m, "authd_backend_errors", "authd_backend_errors_total", &[("backend", "token_store")]);
    assert!(errors(&after) > errors(&before), "no token-store error counted");
    let unavailable = [("operation", "login"), ("outcome", "unavailable")];
    assert_eq!(sum(&after, "authd_graphql_requests", "authd_graphql_requests_total", &unavailable), 1.0);

    // Shutting down with the token store gone still exits 0 and flushes.
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).expect("authd exits with Redis down");
    assert!(status.success(), "{status:?}");
    let spans = decode_spans(&bodies.lock().clone());
    let failed_op = spans
        .iter()
        .find(|s| s["name"] == "mutation login" && s["attributes"]["outcome"] == "unavailable")
        .unwrap_or_else(|| panic!("no failed login span"));
    assert_eq!(failed_op["status"], 2, "the operation span has an error status: {failed_op}");
    let failed_call = spans.iter().find(|s| {
        s["trace_id"] == failed_op["trace_id"] && s["name"].as_str().unwrap().starts_with("tokens.") && s["status"] == 2
    });
    assert!(failed_call.is_some(), "no token-store span with an error status in the failed login's trace");
}

// ------------------------------------------------------------------ the database role

/// `authd serve` warns when it logs in as a role that could undo row-level
/// security (here: the superuser the tests migrate with); the login role
/// `authd migrate --create-service-role` makes serves without a warning and
/// cannot read across tenants even after `RESET ROLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_about_a_powerful_login_role_and_the_service_role_is_not_one() {
    let env = production_env().await;
    let owner_url = env["DATABASE_URL"].clone();
    let as_owner = Authd::spawn(&env);
    let warned = |logs: &[String]| logs.iter().any(|l| l.contains("\"WARN\"") && l.contains("is a superuser"));
    assert!(eventually(Duration::from_secs(5), || async { warned(&as_owner.logs.lock()) }).await, "no warning");
    drop(as_owner);

    let role = format!("authd_svc_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let out = Command::new(env!("CARGO_BIN_EXE_authd"))
        .args(["migrate", "--create-service-role", &role])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &owner_url)
        .env("AUTHD_SERVICE_ROLE_PASSWORD", "service role password")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&role) && !stderr.contains("service role password"), "{stderr}");

    let mut url = url::Url::parse(&owner_url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("service role password")).unwrap();
    let mut service_env = env.clone();
    service_env.insert("DATABASE_URL".into(), url.to_string());
    let service = Authd::spawn(&service_env);
    let (slug, _) = service.tenant().await;
    service.register(&slug, "user@example.com").await;
    let (token, _) = service.login(&slug, "user@example.com", PASSWORD).await;
    assert!(service.gql(&slug, Some(&token), ME, json!({})).await["data"]["me"]["id"].is_string());
    assert!(!service.logs.lock().iter().any(|l| l.contains("\"WARN\"") && l.contains("login role")), "warned");

    // An SQL foothold as the service role: RESET ROLE leaves RLS in force.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url.as_str()).await.unwrap();
    sqlx::query("RESET ROLE").execute(&mut conn).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut conn).await.unwrap();
    assert_eq!(users, 0, "without app.tenant_id no tenant's rows are visible");
    let dropped = sqlx::query("ALTER TABLE users DISABLE ROW LEVEL SECURITY").execute(&mut conn).await;
    assert!(dropped.is_err(), "the service role owns nothing");
}

// ------------------------------------------------------------------ a stopped Postgres

/// A private Postgres cluster this test may stop and start (`initdb` under a
/// temporary directory; as root, run as the `postgres` system user).
struct PrivatePostgres {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

impl PrivatePostgres {
    fn pg(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn init() -> Self {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|d| d.join("initdb").exists())
            .or_else(|| {
                std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .flatten()
                    .map(|e| e.path().join("bin"))
                    .find(|d| d.join("initdb").exists())
            })
            .expect("a Postgres server installation (scripts/test.sh installs Debian's postgresql)");
        let root = running_as_root();
        let dir = std::env::temp_dir().join(format!("authd-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let run_as = root.then_some("postgres");
        if root {
            assert!(Command::new("chown").args(["postgres:", dir.to_str().unwrap()]).status().unwrap().success());
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = Self { bindir, data: dir.join("data"), port, run_as };
        let out = pg
            .pg("initdb")
            .args(["--auth=trust", "-U", "postgres", "--no-locale", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.start();
        pg
    }

    fn start(&self) {
        let opts = format!("-h 127.0.0.1 -p {} -k {} -c fsync=off", self.port, self.data.parent().unwrap().display());
        let log = self.data.parent().unwrap().join("postgres.log");
        let out = self
            .pg("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn stop_immediately(&self) {
        let out =
            self.pg("pg_ctl").args(["-w", "-D"]).arg(&self.data).args(["-m", "immediate", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl").args(["-w", "-D"]).arg(&self.data).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Postgres stopped (`pg_ctl stop -m immediate`) under a steady load of
/// `createTenant`, `register`, `login` and `me`: every answer while it is down is
/// UNAVAILABLE within 2 s (none waits longer), `/readyz` turns 503 within
/// 2 s, both recover within 2 s of its return, and every acknowledged
/// registration and tenant exists afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_postgres_answers_unavailable_fast_and_loses_no_acknowledged_write() {
    let pg = PrivatePostgres::init();
    authd_store::postgres::migrate_postgres(&pg.url()).await.expect("migrate");
    let mut env = production_env().await;
    env.insert("DATABASE_URL".into(), pg.url());
    let authd = Arc::new(Authd::spawn(&env));
    let (slug, _) = authd.tenant().await;
    let (admin, _) = authd.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let set = authd
        .gql(
            &slug,
            Some(&admin),
            "mutation { updateTenantSettings(input: { rateLimits: { registrationsPerIpPerHour: 10000, loginPerIpPerMinute: 10000 } }) { passwordMinLength } }",
            json!({}),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    authd.register(&slug, "steady@example.com").await;
    let (token, _) = authd.login(&slug, "steady@example.com", PASSWORD).await;

    let stop = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let tenants = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (authd, slug, token) = (authd.clone(), slug.clone(), token.clone());
        let (stop, slow, acknowledged, tenants) = (stop.clone(), slow.clone(), acknowledged.clone(), tenants.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let email = format!("w{worker}-{i}@example.com");
                let started = Instant::now();
                let body = authd
                    .gql(
                        &slug,
                        None,
                        "mutation($i: RegisterInput!) { register(input: $i) { id } }",
                        json!({ "i": { "email": email, "password": PASSWORD } }),
                    )
                    .await;
                if body["data"]["register"]["id"].is_string() {
                    acknowledged.lock().push(email);
                } else {
                    assert_eq!(code(&body), Some("UNAVAILABLE"), "{body}");
                }
                if started.elapsed() > Duration::from_secs(2) {
                    slow.fetch_add(1, Ordering::Relaxed);
                }
                let started = Instant::now();
                let me = authd.gql(&slug, Some(&token), ME, json!({})).await;
                assert!(me["data"]["me"]["id"].is_string() || code(&me) == Some("UNAVAILABLE"), "{me}");
                if started.elapsed() > Duration::from_secs(2) {
                    slow.fetch_add(1, Ordering::Relaxed);
                }
                let started = Instant::now();
                let login = authd.login_raw(&slug, "steady@example.com", PASSWORD).await;
                // Attempts answered UNAVAILABLE are not refunded to the
                // account's failure budget, so RATE_LIMITED is honest too.
                assert!(
                    login["data"]["login"]["accessToken"].is_string()
                        || matches!(code(&login), Some("UNAVAILABLE" | "RATE_LIMITED")),
                    "{login}"
                );
                if started.elapsed() > Duration::from_secs(2) {
                    slow.fetch_add(1, Ordering::Relaxed);
                }
                if i % 5 == 0 {
                    let started = Instant::now();
                    let new_slug = format!("w{worker}-{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
                    let created = authd
                        .platform(
                            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
                            json!({ "i": { "slug": new_slug, "name": "Outage", "adminEmail": admin_email(&new_slug), "adminPassword": ADMIN_PASSWORD } }),
                        )
                        .await;
                    if created["data"]["createTenant"]["id"].is_string() {
                        tenants.lock().push(new_slug);
                    } else {
                        assert_eq!(code(&created), Some("UNAVAILABLE"), "{created}");
                    }
                    if started.elapsed() > Duration::from_secs(2) {
                        slow.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop_immediately();
    let down = Instant::now();
    let readyz = |want: u16| {
        let authd = authd.clone();
        move || {
            let authd = authd.clone();
            async move {
                authd.http.get(format!("{}/readyz", authd.url)).send().await.map(|r| r.status().as_u16()).ok()
                    == Some(want)
            }
        }
    };
    assert!(eventually(Duration::from_secs(2), readyz(503)).await, "readiness did not turn 503 within 2 s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start();
    assert!(eventually(Duration::from_secs(2), readyz(200)).await, "readiness did not return within 2 s");
    let recovered = eventually(Duration::from_secs(2), || {
        let (authd, slug, token) = (authd.clone(), slug.clone(), token.clone());
        async move { authd.gql(&slug, Some(&token), ME, json!({})).await["data"]["me"]["id"].is_string() }
    })
    .await;
    assert!(recovered, "token checks did not recover within 2 s");
    let _ = down;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(slow.load(Ordering::Relaxed), 0, "calls that took more than 2 s");
    let emails = acknowledged.lock().clone();
    assert!(!emails.is_empty());
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = ANY($1)")
        .bind(&emails)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored as usize, emails.len(), "every acknowledged registration is stored");
    let slugs = tenants.lock().clone();
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE slug = ANY($1)")
        .bind(&slugs)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(created as usize, slugs.len(), "every acknowledged tenant is stored");
}

// ------------------------------------------------------------------ mail

/// A mail queued by a process that is then killed (SIGKILL, between the
/// commit and the send: its relay was down) is delivered by the next
/// process, exactly once, and neither process logs its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_queued_by_a_killed_process_is_delivered_once_by_the_next() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = production_env().await;
    env.insert("AUTHD_SMTP_URL".into(), format!("smtp://127.0.0.1:{port}"));
    env.insert("AUTHD_MAIL_POLL_MS".into(), "100".into());
    env.insert("AUTHD_MAIL_RETRY_BASE_MS".into(), "100".into());
    let mut a = Authd::spawn(&env);
    let (slug, _) = a.tenant().await;
    let (admin, _) = a.login(&slug, &admin_email(&slug), ADMIN_PASSWORD).await;
    let app = "https://app.example.com/reset";
    let set = a
        .gql(
            &slug,
            Some(&admin),
            "mutation($u: [String!]!) { updateTenantSettings(input: { allowedRedirectUris: $u }) { allowedRedirectUris } }",
            json!({ "u": [app] }),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    let who = "crash@example.com";
    a.register(&slug, who).await;
    let asked = a
        .gql(
            &slug,
            None,
            "mutation($e: String!, $r: String!) { requestPasswordReset(email: $e, redirectUri: $r) }",
            json!({ "e": who, "r": app }),
        )
        .await;
    assert_eq!(asked["data"]["requestPasswordReset"], true, "{asked}");

    // Committed: the row is in the outbox (read as the superuser).
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&env["DATABASE_URL"]).await.unwrap();
    let mut queued = 0i64;
    for _ in 0..200 {
        queued = sqlx::query_scalar("SELECT count(*) FROM mail_outbox").fetch_one(&mut db).await.unwrap();
        if queued == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 1, "the reset mail was not queued");
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    // The relay comes back; a new process finds the mail.
    let dir = temp_dir();
    let mut sink = Command::new(python())
        .arg(scripts_dir().join("smtp_sink.py"))
        .args(["--port", &port.to_string(), "--dir", &dir.display().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("smtp_sink.py");
    let mut ready = String::new();
    BufReader::new(sink.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "READY");
    let b = Authd::spawn(&env);
    let mails = || -> Vec<Value> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    };
    assert!(eventually(Duration::from_secs(20), || async { !mails().is_empty() }).await, "the mail never arrived");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = mails();
    let _ = sink.kill();
    let _ = sink.wait();
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    assert_eq!(got[0]["rcpt_tos"], json!([who]));
    let text = got[0]["text"].as_str().unwrap();
    let start = text.find("token=").unwrap() + "token=".len();
    let token: String =
        text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert!(token.len() >= 43, "{text}");
    for (name, p) in [("first", &a), ("second", &b)] {
        let logs = p.logs.lock().join("\n");
        assert!(!logs.contains(&token), "the {name} process logged the reset token");
    }
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_outbox").fetch_one(&mut db).await.unwrap();
    assert_eq!(outbox, 0, "a delivered mail leaves the outbox");
}
