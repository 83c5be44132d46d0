//! The core path end to end: a tenant, a user, login, me, refresh.

use serde_json::json;

use crate::both;
use crate::harness::{Backend, TestServer, code};

async fn register_login_me_refresh(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let reg = s.register(&t.slug, "Alice@Example.com", "a perfectly fine passphrase").await;
    assert_eq!(reg["data"]["register"]["email"], "alice@example.com", "{reg}");
    let (access, refresh) = s.login(&t.slug, "alice@example.com", "a perfectly fine passphrase").await;
    let me = s.gql(&t.slug, Some(&access), "{ me { email role totpEnabled } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "alice@example.com", "{me}");
    assert_eq!(me["data"]["me"]["role"], "USER");
    let r = s
        .gql(
            &t.slug,
            None,
            "mutation($r: String) { refresh(refreshToken: $r) { accessToken refreshToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert!(r["data"]["refresh"]["accessToken"].is_string(), "{r}");
    let again = s
        .gql(
            &t.slug,
            None,
            "mutation($r: String) { refresh(refreshToken: $r) { accessToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert_eq!(code(&again), Some("TOKEN_REUSED"), "{again}");
}
both!(register_login_me_refresh_work_end_to_end, register_login_me_refresh);
