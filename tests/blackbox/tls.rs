//! TLS to the backing services: managed Postgres usually requires it.

use serde_json::json;
use sqlx::{Connection, Row};

use crate::harness::{Backend, TestServer, fresh_database};

/// With `sslmode=require`, authd's connections to Postgres are encrypted
/// (rustls), and the whole service works over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_when_the_url_requires_it() {
    let url = fresh_database().await;
    let mut plain = sqlx::PgConnection::connect(&url).await.unwrap();
    let offered: String = sqlx::query_scalar("SHOW ssl").fetch_one(&mut plain).await.unwrap();
    if offered != "on" {
        // A private test cluster (initdb) has no certificate; Debian's has one.
        eprintln!("note: this Postgres does not offer TLS (ssl = {offered}); nothing to check");
        return;
    }
    let tls_url = format!("{url}?sslmode=require");
    let mut conn = sqlx::PgConnection::connect(&tls_url).await.expect("TLS connection");
    let row = sqlx::query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(row.get::<bool, _>("ssl"), "the connection is encrypted");
    // The service itself on a TLS-only URL.
    let s = TestServer::start_with(Backend::Production, |env| {
        env.insert("DATABASE_URL".into(), tls_url.clone());
    })
    .await;
    let t = s.tenant().await;
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let me = s.gql(&t.slug, Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str(), "{me}");
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND s.ssl",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(encrypted >= 1, "authd's pool connections are encrypted");
}
