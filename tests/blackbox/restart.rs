//! The embedded default forgets nothing on restart: its sessions, refresh
//! token families, revocations, limits and MFA challenges live in a SQLite
//! file beside the data (`tokens.db`), not in memory.

use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, code};

const PASSWORD: &str = "a perfectly fine passphrase";

/// Stops `s` and starts the embedded default again on the same data
/// directory and address (so the same issuer).
async fn restart(s: &mut TestServer) -> TestServer {
    s.stop().await;
    let mut env = s.env.clone();
    env.insert("AUTHD_LISTEN".into(), s.url.trim_start_matches("http://").to_owned());
    let dir = std::path::PathBuf::from(env["AUTHD_DATA_DIR"].clone());
    TestServer::start_env(Backend::Embedded, env, dir).await
}

async fn me(s: &TestServer, slug: &str, token: &str) -> Value {
    s.gql(slug, Some(token), "{ me { id } }", json!({})).await
}

async fn refresh(s: &TestServer, slug: &str, token: &str) -> Value {
    s.gql(
        slug,
        None,
        "mutation($r: String) { refresh(refreshToken: $r) { accessToken refreshToken } }",
        json!({ "r": token }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_revocations_limits_and_challenges_survive_a_restart() {
    let mut s = TestServer::start(Backend::Embedded).await;
    let t = s.tenant().await;
    s.register(&t.slug, "kept@example.com", PASSWORD).await;
    s.register(&t.slug, "out@example.com", PASSWORD).await;
    let (kept_access, kept_refresh) = s.login(&t.slug, "kept@example.com", PASSWORD).await;
    let (out_access, out_refresh) = s.login(&t.slug, "out@example.com", PASSWORD).await;
    let logout = s.gql(&t.slug, Some(&out_access), "mutation { logout }", json!({})).await;
    assert_eq!(logout["data"]["logout"], true, "{logout}");
    // A limit reached before the restart.
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let set = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation { updateTenantSettings(input: { rateLimits: { failedLoginsPerAccountPerHour: 2 } }) { passwordMinLength } }",
            json!({}),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    for _ in 0..3 {
        s.login_raw(&t.slug, "limited@example.com", "a wrong password").await;
    }
    assert_eq!(code(&s.login_raw(&t.slug, "limited@example.com", "a wrong password").await), Some("RATE_LIMITED"));
    // An MFA challenge in flight.
    let u = crate::mfa::enrolled_user(&s, &t).await;
    let challenge = s.login_raw(&t.slug, &u.email, &u.password).await;
    let challenge_id =
        challenge["data"]["login"]["challengeId"].as_str().unwrap_or_else(|| panic!("{challenge}")).to_owned();

    let s = restart(&mut s).await;

    assert!(me(&s, &t.slug, &kept_access).await["data"]["me"]["id"].is_string(), "a session survives");
    assert_eq!(code(&me(&s, &t.slug, &out_access).await), Some("UNAUTHENTICATED"), "a logout survives");
    assert_eq!(code(&refresh(&s, &t.slug, &out_refresh).await), Some("UNAUTHENTICATED"));
    let rotated = refresh(&s, &t.slug, &kept_refresh).await;
    assert!(rotated["data"]["refresh"]["refreshToken"].is_string(), "a refresh token from before rotates: {rotated}");
    assert_eq!(
        code(&s.login_raw(&t.slug, "limited@example.com", "a wrong password").await),
        Some("RATE_LIMITED"),
        "a limit survives"
    );
    let verified = s
        .gql(
            &t.slug,
            None,
            "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken } }",
            json!({ "i": { "challengeId": challenge_id, "code": u.recovery[0] } }),
        )
        .await;
    assert!(verified["data"]["verifyMfa"]["accessToken"].is_string(), "the challenge survives: {verified}");
    let sessions = s.gql(&t.slug, Some(&kept_access), "{ sessions { id } }", json!({})).await;
    assert_eq!(sessions["data"]["sessions"].as_array().map(Vec::len), Some(1), "{sessions}");
}
