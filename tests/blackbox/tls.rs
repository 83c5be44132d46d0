//! TLS to the backing services, against the private Postgres and TLS-only
//! Redis that scripts/test.sh starts with a certificate of its own test CA:
//! the server's name and chain are verified (`sslmode=verify-full`, and the
//! CA in `AUTHD_REDIS_CA_FILE` for `rediss://`), never merely accepted.

use serde_json::json;
use sqlx::{Connection, Row};

use crate::harness::{Backend, TestServer};

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: scripts/test.sh starts a TLS Postgres and a TLS Redis and exports it")
    })
}

/// A fresh, migrated database on the TLS-only Postgres; its URL keeps the
/// `sslmode=verify-full&sslrootcert=…` query.
async fn tls_database() -> String {
    let admin = required("AUTHD_TEST_TLS_DATABASE_URL");
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("a verified TLS connection to the test Postgres");
    let name = format!("authd_test_tls_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    authd_store::postgres::migrate_postgres(&url).await.expect("migrations over TLS");
    url
}

/// With `sslmode=verify-full`, authd's connections to Postgres are encrypted
/// (rustls) and checked against the CA; with `rediss://` and the CA file, so
/// are its Redis connections; and the whole service works over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_verified_tls_to_postgres_and_redis() {
    let db = tls_database().await;
    let redis = required("AUTHD_TEST_TLS_REDIS_URL");
    let ca = required("AUTHD_TEST_TLS_CA_FILE");
    let s = TestServer::start_with(Backend::Production, |env| {
        env.insert("DATABASE_URL".into(), db.clone());
        env.insert("REDIS_URL".into(), redis.clone());
        env.insert("AUTHD_REDIS_CA_FILE".into(), ca.clone());
    })
    .await;
    let t = s.tenant().await;
    let (token, refresh) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let me = s.gql(&t.slug, Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str(), "{me}");
    let rotated = s
        .gql(
            &t.slug,
            None,
            "mutation($r: String) { refresh(refreshToken: $r) { refreshToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert!(rotated["data"]["refresh"]["refreshToken"].is_string(), "sessions live in the TLS Redis: {rotated}");

    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let row =
        sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&mut conn).await.unwrap();
    assert!(row.get::<bool, _>("ssl"), "the connection is encrypted");
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND s.ssl",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(encrypted >= 1, "authd's pool connections are encrypted");
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND NOT s.ssl",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(plain, 0, "no connection of authd is in clear text");
}

/// A server whose certificate does not chain to a trusted CA is refused:
/// without `AUTHD_REDIS_CA_FILE` the test CA is unknown to the webpki roots,
/// and so is it to Postgres without `sslrootcert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let redis = required("AUTHD_TEST_TLS_REDIS_URL");
    let store = authd_tokens::RedisTokenStore::connect(&redis, "authd-tls-test").await;
    assert!(store.is_err(), "a certificate of an unknown CA was accepted");
    let ca = std::fs::read(required("AUTHD_TEST_TLS_CA_FILE")).unwrap();
    let store = authd_tokens::RedisTokenStore::connect_with_ca(&redis, "authd-tls-test", Some(&ca)).await;
    assert!(store.is_ok(), "{:?}", store.err());

    let admin = required("AUTHD_TEST_TLS_DATABASE_URL");
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_query(Some("sslmode=verify-full"));
    assert!(sqlx::PgConnection::connect(url.as_str()).await.is_err(), "Postgres' certificate without its CA");
}
