//! Two-factor authentication with TOTP and recovery codes, checked
//! with an independent TOTP implementation (pyotp; oathtool in one test).

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::graphiql::test_python;
use crate::harness::{Backend, Tenant, TestServer, capture_logs, captured_logs, code};

const STEP: i64 = 30;

/// The code an authenticator app shows at `unix` for `secret` (pyotp).
pub async fn pyotp(secret: &str, unix: i64) -> String {
    let (python, scripts) = test_python();
    let out = tokio::process::Command::new(python)
        .arg(scripts.join("totp.py"))
        .arg(secret)
        .arg(unix.to_string())
        .output()
        .await
        .expect("run totp.py");
    assert!(out.status.success(), "totp.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn oathtool(secret: &str, unix: i64) -> String {
    let out = tokio::process::Command::new("oathtool")
        .args(["--totp", "-b", "-N", &format!("@{unix}"), secret])
        .output()
        .await
        .expect("oathtool is installed by scripts/test.sh (Debian package oathtool)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Waits until the current 30 s step has at least 8 s left, so "one step
/// ahead" and "two steps ahead" stay what they say for the next few calls.
async fn fresh_step() {
    let left = STEP - now() % STEP;
    if left < 8 {
        tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap() + 1)).await;
    }
}

const ENROLL: &str = "mutation($p: String!) { beginTotpEnrollment(password: $p) { secret otpauthUri qrSvg } }";
const CONFIRM: &str = "mutation($c: String!) { confirmTotpEnrollment(code: $c) { codes } }";
const VERIFY: &str =
    "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken refreshToken user { totpEnabled } } }";

pub(crate) struct Enrolled {
    pub(crate) secret: String,
    pub(crate) recovery: Vec<String>,
    pub(crate) email: String,
    pub(crate) password: String,
}

/// Registers a user and turns TOTP on with a code for the current step.
pub(crate) async fn enrolled_user(s: &TestServer, t: &Tenant) -> Enrolled {
    let email = format!("u{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = "totp user passphrase".to_owned();
    s.register(&t.slug, &email, &password).await;
    let (token, _) = s.login(&t.slug, &email, &password).await;
    let begin = s.gql(&t.slug, Some(&token), ENROLL, json!({ "p": password })).await;
    let e = &begin["data"]["beginTotpEnrollment"];
    let secret = e["secret"].as_str().unwrap_or_else(|| panic!("{begin}")).to_owned();
    let uri = e["otpauthUri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(
        uri.contains(&format!("secret={secret}"))
            && uri.contains("algorithm=SHA1")
            && uri.contains("digits=6")
            && uri.contains("period=30")
    );
    assert!(uri.contains(&format!("issuer={}", t_name_encoded(t))), "issuer is the tenant name: {uri}");
    assert!(e["qrSvg"].as_str().unwrap().contains("<svg"), "an SVG made in process");
    let svg = e["qrSvg"].as_str().unwrap();
    assert!(!svg.contains("href") && !svg.contains("<image"), "drawn in process, no external image");
    // 160 bits = 32 base32 characters.
    assert_eq!(secret.len(), 32);
    // Pending enrollment changes nothing: login still gives tokens.
    let before = s.login_raw(&t.slug, &email, &password).await;
    assert_eq!(before["data"]["login"]["__typename"], "AuthTokens");
    fresh_step().await;
    let confirm = s.gql(&t.slug, Some(&token), CONFIRM, json!({ "c": pyotp(&secret, now()).await })).await;
    let codes: Vec<String> = serde_json::from_value(confirm["data"]["confirmTotpEnrollment"]["codes"].clone())
        .unwrap_or_else(|_| panic!("{confirm}"));
    assert_eq!(codes.len(), 10);
    Enrolled { secret, recovery: codes, email, password }
}

fn t_name_encoded(t: &Tenant) -> String {
    format!("Tenant%20{}", t.slug)
}

async fn challenge(s: &TestServer, t: &Tenant, u: &Enrolled) -> String {
    let body = s.login_raw(&t.slug, &u.email, &u.password).await;
    let l = &body["data"]["login"];
    assert_eq!(l["__typename"], "MfaChallenge", "{body}");
    assert_eq!(l["methods"], json!(["totp", "recovery_code"]));
    l["challengeId"].as_str().unwrap().to_owned()
}

async fn verify(s: &TestServer, t: &Tenant, challenge: &str, c: &str) -> Value {
    s.gql(&t.slug, None, VERIFY, json!({ "i": { "challengeId": challenge, "code": c } })).await
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn independent_codes_work_once_and_only_within_one_step(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    fresh_step().await;
    // The confirm code used this step; the next step's code (one step of drift) is accepted.
    let next = pyotp(&u.secret, now() + STEP).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &next).await;
    let access = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap_or_else(|| panic!("{ok}"));
    assert_eq!(claims(access)["amr"], json!(["pwd", "otp"]));
    // The same code again: refused (RFC 6238 §5.2), even on a fresh challenge.
    let c2 = challenge(&s, &t, &u).await;
    assert_eq!(code(&verify(&s, &t, &c2, &next).await), Some("MFA_INVALID"));
    // Two steps away: refused.
    let far = pyotp(&u.secret, now() + 3 * STEP).await;
    assert_eq!(code(&verify(&s, &t, &c2, &far).await), Some("MFA_INVALID"));
    let past = pyotp(&u.secret, now() - 2 * STEP).await;
    assert_eq!(code(&verify(&s, &t, &c2, &past).await), Some("MFA_INVALID"));
    // The replay was an audit event.
    s.deps().audit.flush().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let ev = s
        .gql(
            &t.slug,
            Some(&admin),
            "{ auditEvents(type: \"totp.replay_refused\") { edges { node { type subjectId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(ev["data"]["auditEvents"]["edges"].as_array().unwrap().len(), 1, "{ev}");
}
both!(
    independent_totp_codes_are_accepted_once_and_only_within_one_step,
    independent_codes_work_once_and_only_within_one_step
);

async fn oathtool_agrees(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    fresh_step().await;
    let at = now() + STEP;
    assert_eq!(oathtool(&u.secret, at).await, pyotp(&u.secret, at).await);
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &oathtool(&u.secret, at).await).await;
    assert!(ok["data"]["verifyMfa"]["accessToken"].is_string(), "{ok}");
}
both!(oathtool_codes_are_accepted, oathtool_agrees);

async fn recovery_codes_work_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &u.recovery[0].to_uppercase()).await;
    assert!(ok["data"]["verifyMfa"]["accessToken"].is_string(), "{ok}");
    let c = challenge(&s, &t, &u).await;
    assert_eq!(code(&verify(&s, &t, &c, &u.recovery[0]).await), Some("MFA_INVALID"));
    // Regeneration (needs a current TOTP code) invalidates the old set.
    let token = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap().to_owned();
    fresh_step().await;
    let regen = s
        .gql(
            &t.slug,
            Some(&token),
            "mutation($c: String!) { regenerateRecoveryCodes(code: $c) { codes } }",
            json!({ "c": pyotp(&u.secret, now() + STEP).await }),
        )
        .await;
    let fresh: Vec<String> = serde_json::from_value(regen["data"]["regenerateRecoveryCodes"]["codes"].clone())
        .unwrap_or_else(|_| panic!("{regen}"));
    assert_eq!(fresh.len(), 10);
    let c = challenge(&s, &t, &u).await;
    assert_eq!(code(&verify(&s, &t, &c, &u.recovery[1]).await), Some("MFA_INVALID"), "old set is dead");
    let ok = verify(&s, &t, &c, &fresh[3]).await;
    assert!(ok["data"]["verifyMfa"]["accessToken"].is_string(), "{ok}");
}
both!(recovery_codes_work_once_and_regeneration_replaces_them, recovery_codes_work_once);

async fn five_wrong_codes_kill(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    for _ in 0..5 {
        assert_eq!(code(&verify(&s, &t, &c, "000000").await), Some("MFA_INVALID"));
    }
    fresh_step().await;
    let good = pyotp(&u.secret, now() + STEP).await;
    assert_eq!(code(&verify(&s, &t, &c, &good).await), Some("MFA_INVALID"), "the challenge is dead");
    let c2 = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c2, &good).await;
    assert!(ok["data"]["verifyMfa"]["accessToken"].is_string(), "a new login works: {ok}");
}
both!(five_wrong_codes_kill_the_challenge, five_wrong_codes_kill);

async fn malformed_and_foreign(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let u = enrolled_user(&s, &a).await;
    let c = challenge(&s, &a, &u).await;
    for bad in ["", "12345", "1234567", "abcdef", "12 34 5x", &"9".repeat(200)] {
        let body = verify(&s, &a, &c, bad).await;
        assert_eq!(code(&body), Some("MFA_INVALID"), "{bad:?}: {body}");
    }
    fresh_step().await;
    let good = pyotp(&u.secret, now() + STEP).await;
    for bad_id in ["", "nope", "00000000-0000-0000-0000-000000000000"] {
        assert_eq!(code(&verify(&s, &a, bad_id, &good).await), Some("MFA_INVALID"));
    }
    // A challenge of tenant A presented to tenant B.
    assert_eq!(code(&verify(&s, &b, &c, &good).await), Some("MFA_INVALID"));
    // The messages give no hint about which part was wrong.
    let m1 = verify(&s, &a, "nope", &good).await["errors"][0]["message"].clone();
    let m2 = verify(&s, &a, &c, "000000").await["errors"][0]["message"].clone();
    assert_eq!(m1, m2);
}
both!(malformed_codes_and_unknown_or_foreign_challenges_are_mfa_invalid, malformed_and_foreign);

async fn concurrent_same_code(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    fresh_step().await;
    let next = pyotp(&u.secret, now() + STEP).await;
    let mut challenges = Vec::new();
    for _ in 0..6 {
        challenges.push(challenge(&s, &t, &u).await);
    }
    let results = futures::future::join_all(challenges.iter().map(|c| verify(&s, &t, c, &next))).await;
    let ok = results.iter().filter(|r| r["data"]["verifyMfa"]["accessToken"].is_string()).count();
    assert_eq!(ok, 1, "exactly one success: {results:?}");
    assert!(results.iter().filter(|r| code(r).is_some()).all(|r| code(r) == Some("MFA_INVALID")));
}
both!(concurrent_verify_with_one_code_succeeds_exactly_once, concurrent_same_code);

async fn secret_never_leaks(backend: Backend) {
    capture_logs();
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &u.recovery[0]).await;
    let token = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap().to_owned();
    let me = s
        .gql(
            &t.slug,
            Some(&token),
            "{ me { id email totpEnabled recentActivity { type detail } } sessions { id } }",
            json!({}),
        )
        .await;
    assert_eq!(me["data"]["me"]["totpEnabled"], true);
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    s.deps().audit.flush().await;
    let events = s.gql(&t.slug, Some(&admin), "{ auditEvents(first: 100) { edges { node { type detail } } } users { edges { node { email totpEnabled } } } }", json!({})).await;
    let types: Vec<&str> = events["data"]["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["node"]["type"].as_str())
        .collect();
    assert!(
        types.contains(&"totp.enrolled") && types.contains(&"recovery_code.used") && types.contains(&"mfa.succeeded"),
        "{types:?}"
    );
    let everything = format!("{me}{events}{}", captured_logs());
    let lower = u.secret.to_lowercase();
    assert!(!everything.contains(&u.secret) && !everything.contains(&lower), "the TOTP secret leaked");
    for code in &u.recovery {
        assert!(!everything.contains(code.as_str()), "a recovery code leaked");
    }
    assert!(!everything.contains(&u.password), "the password leaked");
}
both!(the_totp_secret_never_appears_in_logs_or_query_results, secret_never_leaks);

async fn disable_needs_both_factors(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &u.recovery[0]).await;
    let token = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap().to_owned();
    // Another session, which disabling revokes.
    let c2 = challenge(&s, &t, &u).await;
    let other =
        verify(&s, &t, &c2, &u.recovery[1]).await["data"]["verifyMfa"]["accessToken"].as_str().unwrap().to_owned();
    const DISABLE: &str = "mutation($p: String!, $c: String!) { disableTotp(password: $p, code: $c) }";
    fresh_step().await;
    let good = pyotp(&u.secret, now() + STEP).await;
    let wrong_pw = s.gql(&t.slug, Some(&token), DISABLE, json!({ "p": "wrong password!", "c": good })).await;
    assert_eq!(code(&wrong_pw), Some("INVALID_CREDENTIALS"));
    let wrong_code = s.gql(&t.slug, Some(&token), DISABLE, json!({ "p": u.password, "c": "000000" })).await;
    assert_eq!(code(&wrong_code), Some("MFA_INVALID"));
    let done = s.gql(&t.slug, Some(&token), DISABLE, json!({ "p": u.password, "c": good })).await;
    assert_eq!(done["data"]["disableTotp"], true, "{done}");
    let me_other = s.gql(&t.slug, Some(&other), "{ me { id } }", json!({})).await;
    assert_eq!(code(&me_other), Some("UNAUTHENTICATED"), "other sessions are revoked");
    let me = s.gql(&t.slug, Some(&token), "{ me { totpEnabled } }", json!({})).await;
    assert_eq!(me["data"]["me"]["totpEnabled"], false, "the current session stays: {me}");
    assert_eq!(s.login_raw(&t.slug, &u.email, &u.password).await["data"]["login"]["__typename"], "AuthTokens");
}
both!(disabling_totp_needs_password_and_code_and_revokes_other_sessions, disable_needs_both_factors);

async fn admins_must_enroll(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let set = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation { updateTenantSettings(input: { requireMfaForAdmins: true }) { requireMfaForAdmins } }",
            json!({}),
        )
        .await;
    assert_eq!(set["data"]["updateTenantSettings"]["requireMfaForAdmins"], true, "{set}");
    let (limited, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let users = s.gql(&t.slug, Some(&limited), "{ users { edges { node { id } } } }", json!({})).await;
    assert_eq!(code(&users), Some("FORBIDDEN"));
    assert!(users["errors"][0]["message"].as_str().unwrap().contains("enrollment"), "{users}");
    let sessions = s.gql(&t.slug, Some(&limited), "{ sessions { id } }", json!({})).await;
    assert_eq!(code(&sessions), Some("FORBIDDEN"));
    let me = s.gql(&t.slug, Some(&limited), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str());
    // Enrollment is allowed with the limited token.
    let begin = s.gql(&t.slug, Some(&limited), ENROLL, json!({ "p": t.admin_password })).await;
    let secret =
        begin["data"]["beginTotpEnrollment"]["secret"].as_str().unwrap_or_else(|| panic!("{begin}")).to_owned();
    fresh_step().await;
    let confirm = s.gql(&t.slug, Some(&limited), CONFIRM, json!({ "c": pyotp(&secret, now()).await })).await;
    assert!(confirm["data"]["confirmTotpEnrollment"]["codes"].is_array(), "{confirm}");
    // After enrolling, a fresh login (with the second factor) may administer.
    let body = s.login_raw(&t.slug, &t.admin_email, &t.admin_password).await;
    let c = body["data"]["login"]["challengeId"].as_str().unwrap().to_owned();
    let ok = verify(&s, &t, &c, &pyotp(&secret, now() + STEP).await).await;
    let full = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap_or_else(|| panic!("{ok}")).to_owned();
    let users = s.gql(&t.slug, Some(&full), "{ users { edges { node { id } } } }", json!({})).await;
    assert!(users["data"]["users"]["edges"].is_array(), "{users}");
}
both!(require_mfa_for_admins_limits_tokens_until_enrolled, admins_must_enroll);

async fn enrollment_refused_while_on_and_needs_password(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let wrong = s.gql(&t.slug, Some(&token), ENROLL, json!({ "p": "not the password" })).await;
    assert_eq!(code(&wrong), Some("INVALID_CREDENTIALS"));
    let confirm_without = s.gql(&t.slug, Some(&token), CONFIRM, json!({ "c": "123456" })).await;
    assert_eq!(code(&confirm_without), Some("MFA_INVALID"), "no pending enrollment");
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &u.recovery[0]).await;
    let tok = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap().to_owned();
    let again = s.gql(&t.slug, Some(&tok), ENROLL, json!({ "p": u.password })).await;
    assert_eq!(code(&again), Some("BAD_USER_INPUT"), "{again}");
}
both!(enrollment_needs_the_password_and_is_refused_while_totp_is_on, enrollment_refused_while_on_and_needs_password);

// ------------------------------------------------------------------ re-checks are limited

async fn set_rate_limits(s: &TestServer, t: &Tenant, limits: Value) {
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($r: RateLimitPolicyInput!) { updateTenantSettings(input: { rateLimits: $r }) { passwordMinLength } }",
            json!({ "r": limits }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
}

/// One request with `n` aliases of `field` (a burst that a per-request limit
/// would not see); returns the error codes in order.
async fn alias_burst(s: &TestServer, t: &Tenant, token: &str, n: usize, field: &str) -> Vec<String> {
    let doc: String = (0..n).map(|i| format!("a{i}: {field} ")).collect();
    let body = s.gql(&t.slug, Some(token), &format!("mutation {{ {doc} }}"), json!({})).await;
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn rechecks_count_against_the_limits(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    set_rate_limits(&s, &t, json!({ "mfaAttemptsPerAccountPer15Minutes": 5, "failedLoginsPerAccountPerHour": 4 }))
        .await;
    let u = enrolled_user(&s, &t).await;
    let c = challenge(&s, &t, &u).await;
    let ok = verify(&s, &t, &c, &u.recovery[0]).await;
    let token = ok["data"]["verifyMfa"]["accessToken"].as_str().unwrap_or_else(|| panic!("{ok}")).to_owned();

    // 30 guesses of a TOTP code in one request: the account's MFA attempts
    // run out (verifyMfa already used one), the rest are refused unchecked.
    let codes = alias_burst(&s, &t, &token, 30, r#"regenerateRecoveryCodes(code: "000000") { codes }"#).await;
    assert_eq!(codes.len(), 30, "{codes:?}");
    let refused = codes.iter().filter(|c| *c == "RATE_LIMITED").count();
    assert!(refused >= 26, "at most 4 guesses are checked: {codes:?}");
    assert!(codes.iter().all(|c| c == "RATE_LIMITED" || c == "MFA_INVALID"), "{codes:?}");
    // Even the right code is refused now: the limit holds, not the guess.
    fresh_step().await;
    let right = pyotp(&u.secret, now()).await;
    let body = s
        .gql(
            &t.slug,
            Some(&token),
            "mutation($c: String!) { regenerateRecoveryCodes(code: $c) { codes } }",
            json!({ "c": right }),
        )
        .await;
    assert_eq!(code(&body), Some("RATE_LIMITED"), "{body}");
    assert!(body["errors"][0]["extensions"]["retryAfter"].as_u64().is_some(), "{body}");
    let disable = s
        .gql(
            &t.slug,
            Some(&token),
            "mutation($p: String!, $c: String!) { disableTotp(password: $p, code: $c) }",
            json!({ "p": u.password, "c": right }),
        )
        .await;
    assert_eq!(code(&disable), Some("RATE_LIMITED"), "{disable}");

    // Password re-checks count as failed logins of the account: guessing the
    // password through beginTotpEnrollment locks login out too.
    let email = format!("p{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = "the real passphrase";
    s.register(&t.slug, &email, password).await;
    let (victim, _) = s.login(&t.slug, &email, password).await;
    let codes =
        alias_burst(&s, &t, &victim, 12, r#"beginTotpEnrollment(password: "a guessed password") { secret }"#).await;
    assert!(codes.iter().any(|c| c == "RATE_LIMITED"), "{codes:?}");
    assert!(codes.iter().filter(|c| *c == "INVALID_CREDENTIALS").count() <= 4, "{codes:?}");
    let login = s.login_raw(&t.slug, &email, password).await;
    assert_eq!(code(&login), Some("RATE_LIMITED"), "the account's failed logins are shared: {login}");
}
both!(mfa_and_password_rechecks_count_against_the_accounts_limits, rechecks_count_against_the_limits);

async fn password_is_required_for_enrollment_when_the_user_has_one(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let body = s.gql(&t.slug, Some(&token), "mutation { beginTotpEnrollment { secret } }", json!({})).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "password", "{body}");
}
both!(
    enrollment_without_a_password_is_refused_for_password_users,
    password_is_required_for_enrollment_when_the_user_has_one
);

/// `authd reseal` reads every sealed TOTP secret, re-seals it and writes it
/// back; an enrollment that lands in between must survive (compare-and-swap
/// on the sealed value), or the user's new secret would be replaced by a
/// stale one.
async fn reseal_never_overwrites_a_concurrent_enrollment(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let tenant = authd_core::TenantId(t.id.parse().unwrap());
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let first = s.gql(&t.slug, Some(&token), ENROLL, json!({ "p": t.admin_password })).await;
    assert!(first["errors"].is_null(), "{first}");
    let store = &s.deps().store;
    // What reseal read...
    let read = store.sealed_totp_secrets(tenant).await.unwrap();
    let (user, active, pending) = read.into_iter().find(|(_, _, p)| p.is_some()).expect("a pending secret");
    // ...then the user starts over, and a new pending secret lands...
    let second = s.gql(&t.slug, Some(&token), ENROLL, json!({ "p": t.admin_password })).await;
    let secret =
        second["data"]["beginTotpEnrollment"]["secret"].as_str().unwrap_or_else(|| panic!("{second}")).to_owned();
    // ...before reseal writes what it re-sealed from the stale read.
    let stale = authd_store::TotpReseal {
        user,
        was_active: active.clone(),
        was_pending: pending.clone(),
        active,
        pending: Some("stale re-sealed value".into()),
    };
    assert_eq!(store.reseal_totp_secrets(tenant, &[stale]).await.unwrap(), 0, "the changed row is left alone");
    // The second enrollment still confirms with its own secret.
    fresh_step().await;
    let confirm = s.gql(&t.slug, Some(&token), CONFIRM, json!({ "c": pyotp(&secret, now()).await })).await;
    assert!(confirm["data"]["confirmTotpEnrollment"]["codes"].is_array(), "{confirm}");
    // And an unchanged row is replaced.
    let read = store.sealed_totp_secrets(tenant).await.unwrap();
    let (user, active, pending) = read.into_iter().find(|(_, a, _)| a.is_some()).expect("an active secret");
    let current =
        authd_store::TotpReseal { user, was_active: active.clone(), was_pending: pending.clone(), active, pending };
    assert_eq!(store.reseal_totp_secrets(tenant, &[current]).await.unwrap(), 1);
}
both!(reseal_never_overwrites_an_enrollment_that_lands_while_it_runs, reseal_never_overwrites_a_concurrent_enrollment);
