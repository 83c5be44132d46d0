//! The test kit: starts a whole authd in process on a free port, on the
//! embedded default or on a fresh Postgres database (one per test) and a
//! per-test Redis key prefix, and hands tests an HTTP client for it.

use std::collections::HashMap;
use std::sync::Arc;

use authd::Running;
use authd::config::Config;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// Which storage a server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in a temp dir, in-process token store.
    Embedded,
    /// A fresh Postgres database and a Redis key prefix.
    Production,
    /// Like `Production`, but the token store is the local 3-master Redis
    /// Cluster (`AUTHD_TEST_REDIS_CLUSTER_URL`, started by scripts/test.sh).
    Cluster,
}

impl Backend {
    /// Postgres storage (and a Redis token store).
    pub fn is_postgres(self) -> bool {
        matches!(self, Backend::Production | Backend::Cluster)
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("AUTHD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("AUTHD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Comma-separated `redis://` seeds of the test Redis Cluster. Required: a
/// cluster test that silently skipped would prove nothing.
pub fn redis_cluster_url() -> String {
    std::env::var("AUTHD_TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .expect("AUTHD_TEST_REDIS_CLUSTER_URL must name the seeds of a Redis Cluster (scripts/test.sh starts one)")
}

tokio::task_local! {
    /// The Redis key prefix servers started by an `all!` cluster test use, so
    /// that the test can inspect every key they wrote afterwards.
    static CLUSTER_PREFIX: String;
}

/// Replaces the database name of a Postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("postgres url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Creates an empty database and migrates it as the owner (superuser).
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    // The pid in the name lets scripts/test.sh drop what a killed run left.
    let name = format!("authd_test_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres must answer at AUTHD_TEST_DATABASE_URL (scripts/test.sh sets it up)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create db");
    let url = with_database(&admin, &name);
    authd_store::postgres::migrate_postgres(&url).await.expect("migrate");
    url
}

pub struct TestServer {
    pub running: Option<Running>,
    pub url: String,
    pub platform_token: String,
    pub backend: Backend,
    pub database_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub data_dir: std::path::PathBuf,
    pub http: reqwest::Client,
    pub env: HashMap<String, String>,
    /// The database this server's harness created, dropped with the server
    /// (replicas started from its environment share it and do not own it).
    pub owned_database: Option<String>,
}

/// Test configuration: cheap argon2, a free port, no shutdown delay.
pub fn base_env(backend: Backend, data_dir: &std::path::Path) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("AUTHD_LISTEN", "127.0.0.1:0"),
        ("AUTHD_ARGON2_MEMORY_KIB", "64"),
        ("AUTHD_ARGON2_ITERATIONS", "1"),
        ("AUTHD_HASH_THREADS", "2"),
        ("AUTHD_SHUTDOWN_DELAY_SECS", "0"),
        ("AUTHD_DRAIN_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("AUTHD_DATA_DIR".into(), data_dir.display().to_string());
    if backend.is_postgres() {
        env.insert("AUTHD_MASTER_KEY".into(), authd_core::crypto::MasterKey::generate().to_base64());
        env.insert("AUTHD_PLATFORM_TOKEN".into(), authd_core::crypto::random_token(32));
        let random_prefix = || format!("authd-test-{}", uuid::Uuid::new_v4().simple());
        let (url, prefix) = match backend {
            Backend::Cluster => {
                (redis_cluster_url(), CLUSTER_PREFIX.try_with(Clone::clone).unwrap_or_else(|_| random_prefix()))
            }
            _ => (redis_url(), random_prefix()),
        };
        env.insert("REDIS_URL".into(), url);
        env.insert("AUTHD_REDIS_PREFIX".into(), prefix);
    }
    env
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server; `tweak` may change the environment it reads.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        let data_dir = std::env::temp_dir().join(format!("authd-test-{}", uuid::Uuid::new_v4().simple()));
        let mut env = base_env(backend, &data_dir);
        let mut owned = None;
        if backend.is_postgres() {
            let url = fresh_database().await;
            owned = url::Url::parse(&url).ok().map(|u| u.path().trim_start_matches('/').to_owned());
            env.insert("DATABASE_URL".into(), url);
        }
        tweak(&mut env);
        let mut server = Self::start_env(backend, env, data_dir).await;
        server.owned_database = owned;
        server
    }

    /// Starts a server from a full environment (e.g. a second replica).
    pub async fn start_env(backend: Backend, env: HashMap<String, String>, data_dir: std::path::PathBuf) -> Self {
        let lookup = env.clone();
        let config = Config::from_lookup(move |k| lookup.get(k).cloned()).expect("test config");
        let running = authd::start(config).await.expect("server starts");
        let url = format!("http://{}", running.addr);
        let platform_token = running.platform_token().expose_secret().to_owned();
        let http = reqwest::Client::builder().build().expect("client");
        Self {
            url,
            platform_token,
            backend,
            database_url: env.get("DATABASE_URL").cloned(),
            redis_prefix: env.get("AUTHD_REDIS_PREFIX").cloned(),
            data_dir,
            http,
            env,
            running: Some(running),
            owned_database: None,
        }
    }

    /// Another replica of this server: the same environment (database,
    /// Redis and key prefix, secrets, public URL), its own data directory
    /// and port; `tweak` may change the environment first.
    pub async fn replica(&self, tweak: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        let mut env = self.env.clone();
        env.insert("AUTHD_LISTEN".into(), "127.0.0.1:0".into());
        let dir = std::env::temp_dir().join(format!("authd-test-{}", uuid::Uuid::new_v4().simple()));
        env.insert("AUTHD_DATA_DIR".into(), dir.display().to_string());
        tweak(&mut env);
        Self::start_env(self.backend, env, dir).await
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn deps(&self) -> &Arc<authd_tenancy::Deps> {
        &self.running().platform.deps
    }

    #[allow(dead_code)] // for tests that stop a replica mid-test
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// POSTs a GraphQL document to `path` and returns the JSON body.
    pub async fn post(&self, path: &str, bearer: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req =
            self.http.post(format!("{}{}", self.url, path)).json(&json!({ "query": query, "variables": variables }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.expect("request");
        resp.json().await.expect("json body")
    }

    pub async fn platform(&self, query: &str, variables: Value) -> Value {
        let token = self.platform_token.clone();
        self.post("/graphql", Some(&token), query, variables).await
    }

    pub async fn gql(&self, slug: &str, bearer: Option<&str>, query: &str, variables: Value) -> Value {
        self.post(&format!("/t/{slug}/graphql"), bearer, query, variables).await
    }

    /// Creates a tenant with a random slug and returns it with its admin's credentials.
    pub async fn tenant(&self) -> Tenant {
        let slug = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        self.tenant_named(&slug).await
    }

    pub async fn tenant_named(&self, slug: &str) -> Tenant {
        let admin_email = format!("admin@{slug}.example.com");
        let admin_password = "correct horse battery staple".to_owned();
        let body = self
            .platform(
                "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id slug issuer } }",
                json!({ "i": { "slug": slug, "name": format!("Tenant {slug}"), "adminEmail": admin_email, "adminPassword": admin_password } }),
            )
            .await;
        let t = &body["data"]["createTenant"];
        assert!(t.is_object(), "createTenant failed: {body}");
        Tenant {
            id: t["id"].as_str().unwrap().to_owned(),
            slug: slug.to_owned(),
            issuer: t["issuer"].as_str().unwrap().to_owned(),
            admin_email,
            admin_password,
        }
    }

    pub async fn register(&self, slug: &str, email: &str, password: &str) -> Value {
        self.gql(
            slug,
            None,
            "mutation($i: RegisterInput!) { register(input: $i) { id email role } }",
            json!({ "i": { "email": email, "password": password } }),
        )
        .await
    }

    /// Logs in and returns `(accessToken, refreshToken)`, panicking on failure.
    pub async fn login(&self, slug: &str, email: &str, password: &str) -> (String, String) {
        let body = self.login_raw(slug, email, password).await;
        let t = &body["data"]["login"];
        let access = t["accessToken"].as_str().unwrap_or_else(|| panic!("login failed: {body}")).to_owned();
        (access, t["refreshToken"].as_str().unwrap_or_default().to_owned())
    }

    pub async fn login_raw(&self, slug: &str, email: &str, password: &str) -> Value {
        self.gql(
            slug,
            None,
            "mutation($i: LoginInput!) { login(input: $i) { __typename ... on AuthTokens { accessToken refreshToken expiresIn tokenType user { id email role } } ... on MfaChallenge { challengeId methods expiresIn } } }",
            json!({ "i": { "email": email, "password": password } }),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        // Every test database is dropped after its test (on a thread with
        // its own runtime: `drop` cannot await).
        if let Some(name) = self.owned_database.take() {
            drop(self.running.take());
            let admin = pg_admin_url();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                    }
                });
            })
            .join();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub issuer: String,
    pub admin_email: String,
    pub admin_password: String,
}

/// The error code of the first GraphQL error in `body`, if any.
/// Polls `check` every 20 ms until it holds or `limit` has passed (a
/// change reaching another replica, a background task finishing).
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// Runs an async test body on both backends: `both!(name, body_fn)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$body($crate::harness::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis() {
                super::$body($crate::harness::Backend::Production).await
            }
        }
    };
}

/// Runs an async test body on the embedded default, on Postgres + Redis and
/// on Postgres + the local Redis Cluster: `all!(name, body_fn)`. The cluster
/// variant then checks that every key the servers wrote carries a tenant's
/// hash tag ([`check_cluster_keys`]).
#[macro_export]
macro_rules! all {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$body($crate::harness::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_redis() {
                super::$body($crate::harness::Backend::Production).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                $crate::harness::on_cluster(super::$body($crate::harness::Backend::Cluster)).await
            }
        }
    };
}

/// Runs a cluster test body with a known key prefix, then checks its keys.
pub async fn on_cluster(body: impl std::future::Future<Output = ()>) {
    let prefix = format!("authd-test-{}", uuid::Uuid::new_v4().simple());
    CLUSTER_PREFIX.scope(prefix.clone(), body).await;
    let seen = check_cluster_keys(&prefix).await;
    eprintln!("cluster: {seen} keys under {prefix} carry their tenant's hash tag");
}

/// Every key under `prefix` on every node of the test cluster is
/// `{prefix}:{<tenant uuid>}:…`, so all of a tenant's keys hash to that
/// tenant's slot (and a multi-key script never crosses slots). Returns how
/// many keys were seen.
pub async fn check_cluster_keys(prefix: &str) -> usize {
    let mut seen = 0;
    for seed in redis_cluster_url().split(',') {
        let client = redis::Client::open(seed.trim()).expect("cluster seed URL");
        let mut conn = client.get_multiplexed_async_connection().await.expect("cluster node answers");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            for key in keys {
                seen += 1;
                let rest = &key[prefix.len() + 1..];
                let tag = rest
                    .strip_prefix('{')
                    .and_then(|r| r.split_once("}:"))
                    .map(|(t, _)| t)
                    .unwrap_or_else(|| panic!("key {key:?} does not start with a {{tenant}} hash tag"));
                assert!(uuid::Uuid::parse_str(tag).is_ok(), "key {key:?}: hash tag {tag:?} is not a tenant id");
                let key_slot: u16 =
                    redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query_async(&mut conn).await.unwrap();
                let tenant_slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(format!("{{{tag}}}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(key_slot, tenant_slot, "key {key:?} is not in its tenant's slot");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    seen
}

/// Everything the servers in this test binary log (all tests share it), so
/// tests can assert that no secret ever reaches a log line.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(init_logs).lock()).into_owned()
}

/// Installs the capturing subscriber (idempotent); call before starting servers.
pub fn capture_logs() {
    LOGS.get_or_init(init_logs);
}

static LOGS: std::sync::OnceLock<Arc<parking_lot::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() -> Arc<parking_lot::Mutex<Vec<u8>>> {
    let buf = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writer = LogWriter(buf.clone());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,authd=debug,authd_api=debug,authd_tenancy=debug,authd_store=debug,authd_tokens=debug,authd_core=debug,audit=info",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init();
    buf
}

/// The tenant's audit log as text once it holds every one of `kinds`
/// (events that record no change are written in batches), within 5 s;
/// panics naming the missing ones otherwise.
pub async fn audit_log_with(s: &TestServer, slug: &str, admin: &str, kinds: &[&str]) -> String {
    let mut log = String::new();
    for _ in 0..50 {
        log = s
            .gql(slug, Some(admin), "{ auditEvents(first: 100) { edges { node { type detail } } } }", json!({}))
            .await
            .to_string();
        if kinds.iter().all(|k| log.contains(&format!("\"{k}\""))) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = kinds.iter().filter(|k| !log.contains(&format!("\"{k}\""))).collect();
    panic!("audit events {missing:?} missing: {log}");
}
