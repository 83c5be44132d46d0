//! The actor tree: a tenant's supervisor starts on its first request (once,
//! under concurrency), restarts a failed child alone, and stops when idle.

use std::time::Duration;

use authd_tenancy::tenant::{ChildKind, TenantMsg};
use serde_json::json;

use crate::harness::{Backend, TestServer};

async fn restarts(s: &TestServer, slug: &str) -> u64 {
    let rt = s.running().platform.running(slug).expect("tenant running");
    let sup = rt.supervisor().expect("supervisor");
    ractor::call_t!(sup, TenantMsg::Restarts, 5000).expect("restarts")
}

async fn wait_until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_start_exactly_one_supervisor() {
    let s = TestServer::start(Backend::Embedded).await;
    let t = s.tenant().await;
    assert!(s.running().platform.running(&t.slug).is_none(), "createTenant does not start the tenant");
    let futures = (0..16).map(|_| s.gql(&t.slug, None, "{ __typename }", json!({})));
    let bodies = futures::future::join_all(futures).await;
    assert!(bodies.iter().all(|b| b["data"]["__typename"] == "Query"), "{bodies:?}");
    assert_eq!(s.running().platform.active_tenants(), 1);
    let first = s.running().platform.running(&t.slug).unwrap();
    // Later requests reuse the same runtime.
    s.gql(&t.slug, None, "{ __typename }", json!({})).await;
    let again = s.running().platform.running(&t.slug).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_panic_restarts_only_that_child_and_other_tenants_keep_answering() {
    let s = TestServer::start(Backend::Embedded).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let (a_token, _) = s.login(&a.slug, &a.admin_email, &a.admin_password).await;
    let (b_token, _) = s.login(&b.slug, &b.admin_email, &b.admin_password).await;
    let a_rt = s.running().platform.running(&a.slug).unwrap();
    let b_rt = s.running().platform.running(&b.slug).unwrap();
    let b_sup = b_rt.supervisor().unwrap().get_id();
    assert_eq!(restarts(&s, &a.slug).await, 0);

    for kind in [ChildKind::Session, ChildKind::RateLimiter] {
        a_rt.supervisor().unwrap().cast(TenantMsg::CrashChild(kind)).unwrap();
        // Requests for both tenants are answered while the child restarts.
        let me_b = s.gql(&b.slug, Some(&b_token), "{ me { email } }", json!({})).await;
        assert_eq!(me_b["data"]["me"]["email"], b.admin_email.as_str(), "{me_b}");
        let me_a = s.gql(&a.slug, Some(&a_token), "{ me { email } }", json!({})).await;
        assert_eq!(me_a["data"]["me"]["email"], a.admin_email.as_str(), "{me_a}");
    }
    let mut n = 0;
    for _ in 0..200 {
        n = restarts(&s, &a.slug).await;
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(n, 2, "each failed child was restarted once");
    // The tenant supervisor itself did not restart, nor did B's anything.
    assert!(a_rt.is_alive());
    assert!(std::sync::Arc::ptr_eq(&a_rt, &s.running().platform.running(&a.slug).unwrap()));
    assert_eq!(restarts(&s, &b.slug).await, 0);
    assert_eq!(b_rt.supervisor().unwrap().get_id(), b_sup);
    // The restarted session actor works: key rotation goes through it.
    let rot = s.gql(&a.slug, Some(&a_token), "mutation { rotateSigningKey { kid } }", json!({})).await;
    assert!(rot["data"]["rotateSigningKey"]["kid"].is_string(), "{rot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_stops_and_a_later_request_starts_it_again() {
    let s = TestServer::start_with(Backend::Embedded, |env| {
        env.insert("AUTHD_TENANT_IDLE_TIMEOUT_SECS".into(), "1".into());
        env.insert("AUTHD_TENANT_REFRESH_MS".into(), "100".into());
    })
    .await;
    let t = s.tenant().await;
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let first = s.running().platform.running(&t.slug).unwrap();
    wait_until("the idle tenant to stop", || !first.is_alive()).await;
    wait_until("the platform to forget it", || s.running().platform.active_tenants() == 0).await;
    // Sessions live in the token store, so the token still works after restart.
    let me = s.gql(&t.slug, Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str(), "{me}");
    let second = s.running().platform.running(&t.slug).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &second), "a new supervisor was started");
    assert!(second.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervision_works_the_same_on_postgres_and_redis() {
    let s = TestServer::start(Backend::Production).await;
    let t = s.tenant().await;
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let rt = s.running().platform.running(&t.slug).unwrap();
    rt.supervisor().unwrap().cast(TenantMsg::CrashChild(ChildKind::Session)).unwrap();
    let me = s.gql(&t.slug, Some(&token), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str());
    let mut n = 0;
    for _ in 0..200 {
        n = restarts(&s, &t.slug).await;
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(n, 1);
}
