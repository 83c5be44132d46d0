//! Email: verification, password reset and change, magic links and email
//! change, delivered to a real SMTP server (aiosmtpd, `tests/scripts/
//! smtp_sink.py`) or, on the embedded default without SMTP, written as
//! `.eml` files. Expiry is checked by moving authd's clock.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::graphiql::test_python;
use crate::harness::{Backend, Tenant, TestServer, capture_logs, captured_logs, code};

const APP: &str = "https://app.example.com/callback";
const PASSWORD: &str = "a long enough passphrase";

/// A running aiosmtpd that keeps every message it accepts.
pub struct Sink {
    child: Option<tokio::process::Child>,
    pub port: u16,
    pub dir: PathBuf,
    mode: &'static str,
    auth: Option<(&'static str, &'static str)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tls_files() -> (String, String, String) {
    let ca = std::env::var("AUTHD_TEST_TLS_CA_FILE")
        .expect("AUTHD_TEST_TLS_CA_FILE: run the suite with scripts/test.sh, which makes the test CA");
    let dir = std::path::Path::new(&ca).parent().unwrap().to_owned();
    (ca, dir.join("server.crt").display().to_string(), dir.join("server.key").display().to_string())
}

impl Sink {
    /// A sink that is not running yet (an SMTP outage), on a reserved port.
    pub fn down(mode: &'static str) -> Self {
        let dir = std::env::temp_dir().join(format!("authd-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { child: None, port: free_port(), dir, mode, auth: None }
    }

    pub async fn start(mode: &'static str) -> Self {
        let mut s = Self::down(mode);
        s.up().await;
        s
    }

    pub async fn up(&mut self) {
        let (python, scripts) = test_python();
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(scripts.join("smtp_sink.py")).args([
            "--port",
            &self.port.to_string(),
            "--dir",
            &self.dir.display().to_string(),
            "--mode",
            self.mode,
        ]);
        if self.mode != "plain" {
            let (_, cert, key) = tls_files();
            cmd.args(["--cert", &cert, "--key", &key]);
        }
        if let Some((u, p)) = self.auth {
            cmd.args(["--user", u, "--password", p]);
        }
        cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("start smtp_sink.py (aiosmtpd, installed by scripts/test.sh)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref l))) if l == "READY"), "smtp_sink.py did not start: {ready:?}");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        let auth = self.auth.map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
        match self.mode {
            "plain" => format!("smtp://{auth}127.0.0.1:{}", self.port),
            "starttls" => format!("smtp+starttls://{auth}localhost:{}", self.port),
            _ => format!("smtps://{auth}localhost:{}", self.port),
        }
    }

    /// Every message accepted so far, oldest first.
    pub fn mails(&self) -> Vec<Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names.iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }

    /// Messages to `to`, once at least `n` arrived (within 20 s).
    pub async fn wait_for(&self, to: &str, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let got = self.to(to);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{n} mail(s) to {to} did not arrive; have {:?}", self.mails());
    }

    pub fn to(&self, to: &str) -> Vec<Value> {
        self.mails().into_iter().filter(|m| m["rcpt_tos"].as_array().unwrap().iter().any(|r| r == to)).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `param` in the link of a message's text.
pub fn link_param(text: &str, param: &str) -> String {
    let start = text.find(&format!("{param}=")).unwrap_or_else(|| panic!("no {param}= in {text}")) + param.len() + 1;
    text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

async fn server(backend: Backend, sink: Option<&Sink>) -> TestServer {
    TestServer::start_with(backend, |env| {
        // Never polled within a test: queued mail wakes its sender, and a
        // retry (another replica's mail included) wakes one when it is due.
        env.insert("AUTHD_MAIL_POLL_MS".into(), "600000".into());
        env.insert("AUTHD_MAIL_RETRY_BASE_MS".into(), "200".into());
        env.insert("AUTHD_MAIL_FROM".into(), "accounts@authd.example.com".into());
        if let Some(s) = sink {
            env.insert("AUTHD_SMTP_URL".into(), s.url());
            if s.mode != "plain" {
                env.insert("AUTHD_SMTP_CA_FILE".into(), tls_files().0);
            }
        }
    })
    .await
}

/// A tenant whose app may receive links at [`APP`]; returns its admin's token.
async fn tenant(s: &TestServer, extra: Value) -> (Tenant, String) {
    let t = s.tenant().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let mut input = json!({ "allowedRedirectUris": [APP] });
    input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($i: TenantSettingsInput!) { updateTenantSettings(input: $i) { allowedRedirectUris } }",
            json!({ "i": input }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    (t, admin)
}

async fn register(s: &TestServer, t: &Tenant, email: &str, redirect: Option<&str>) -> Value {
    s.gql(
        &t.slug,
        None,
        "mutation($i: RegisterInput!) { register(input: $i) { id email emailVerified } }",
        json!({ "i": { "email": email, "password": PASSWORD, "redirectUri": redirect } }),
    )
    .await
}

async fn op(s: &TestServer, t: &Tenant, bearer: Option<&str>, doc: &str, vars: Value) -> Value {
    s.gql(&t.slug, bearer, doc, vars).await
}

const VERIFY: &str = "mutation($t: String!) { verifyEmail(token: $t) { id email emailVerified } }";
const REQUEST_RESET: &str = "mutation($e: String!, $r: String!) { requestPasswordReset(email: $e, redirectUri: $r) }";
const RESET: &str = "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }";
const ME: &str = "{ me { id email emailVerified } }";
const REFRESH: &str = "mutation($r: String) { refresh(refreshToken: $r) { accessToken refreshToken } }";

fn email(tag: &str) -> String {
    format!("{tag}-{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn amr(access: &str) -> Value {
    crate::tokens::claims_of(access)["amr"].clone()
}

/// Verification end to end through a real SMTP server: the mail's parts,
/// single use, replacement, and `requireVerifiedEmail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_through_smtp() {
    capture_logs();
    let sink = Sink::start("plain").await;
    let s = server(Backend::Production, Some(&sink)).await;
    let (t, admin) = tenant(&s, json!({ "requireVerifiedEmail": true })).await;
    let who = email("verify");

    // A redirect URI the tenant does not allow is refused before anything happens.
    let refused = register(&s, &t, &who, Some("https://evil.example.com/cb")).await;
    assert_eq!(code(&refused), Some("BAD_USER_INPUT"), "{refused}");
    assert_eq!(refused["errors"][0]["extensions"]["field"], "redirectUri");

    let user = register(&s, &t, &who, Some(APP)).await;
    assert_eq!(user["data"]["register"]["emailVerified"], false, "{user}");
    let mail = sink.wait_for(&who, 1).await.remove(0);
    assert_eq!(mail["mail_from"], "accounts@authd.example.com");
    assert!(mail["from"].as_str().unwrap().contains(&format!("Tenant {}", t.slug)), "{mail}");
    assert!(mail["subject"].as_str().unwrap().contains(&format!("Tenant {}", t.slug)), "{mail}");
    assert!(mail["text"].as_str().unwrap().contains("24 hours"), "{mail}");
    let token = link_param(mail["text"].as_str().unwrap(), "token");
    assert!(mail["text"].as_str().unwrap().contains(&format!("{APP}?token={token}")), "{mail}");
    assert!(mail["html"].as_str().unwrap().contains(&token), "the HTML part has the link too: {mail}");
    assert!(token.len() >= 43, "256 bits: {token}");

    // Unverified: a correct password is EMAIL_NOT_VERIFIED, a wrong one stays INVALID_CREDENTIALS.
    assert_eq!(code(&s.login_raw(&t.slug, &who, PASSWORD).await), Some("EMAIL_NOT_VERIFIED"));
    assert_eq!(code(&s.login_raw(&t.slug, &who, "not the passphrase").await), Some("INVALID_CREDENTIALS"));

    // A resent link replaces the first.
    let resend = "mutation($r: String!) { sendVerificationEmail(redirectUri: $r) }";
    assert_eq!(code(&op(&s, &t, None, resend, json!({ "r": APP })).await), Some("UNAUTHENTICATED"));
    // (No token for an unverified user while the tenant requires verification:
    // the admin, verified, turns the requirement off for this step.)
    let off = op(
        &s,
        &t,
        Some(&admin),
        "mutation { updateTenantSettings(input: { requireVerifiedEmail: false }) { requireVerifiedEmail } }",
        json!({}),
    )
    .await;
    assert_eq!(off["data"]["updateTenantSettings"]["requireVerifiedEmail"], false, "{off}");
    let (access, _) = s.login(&t.slug, &who, PASSWORD).await;
    assert_eq!(op(&s, &t, Some(&access), resend, json!({ "r": APP })).await["data"]["sendVerificationEmail"], true);
    let mails = sink.wait_for(&who, 2).await;
    let second = link_param(mails[1]["text"].as_str().unwrap(), "token");
    assert_ne!(second, token);
    assert_eq!(code(&op(&s, &t, None, VERIFY, json!({ "t": token })).await), Some("LINK_INVALID"), "replaced");
    let verified = op(&s, &t, None, VERIFY, json!({ "t": second })).await;
    assert_eq!(verified["data"]["verifyEmail"]["emailVerified"], true, "{verified}");
    assert_eq!(code(&op(&s, &t, None, VERIFY, json!({ "t": second })).await), Some("LINK_INVALID"), "single use");
    assert_eq!(code(&op(&s, &t, None, VERIFY, json!({ "t": "made-up" })).await), Some("LINK_INVALID"));
    assert_eq!(op(&s, &t, Some(&access), ME, json!({})).await["data"]["me"]["emailVerified"], true);
    // Already verified: false, and no mail.
    assert_eq!(op(&s, &t, Some(&access), resend, json!({ "r": APP })).await["data"]["sendVerificationEmail"], false);

    // The first admin counts as verified.
    let me = op(&s, &t, Some(&admin), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["emailVerified"], true, "{me}");

    // Audit events, and no token anywhere it should not be.
    let events =
        crate::harness::audit_log_with(&s, &t.slug, &admin, &["email.verification_sent", "email.verified"]).await;
    let metrics = s.http.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("authd_mail_sent_total"), "{metrics}");
    for secret in [&token, &second] {
        assert!(!events.contains(secret.as_str()), "a token in the audit log");
        assert!(!metrics.contains(secret.as_str()), "a token in the metrics");
        assert!(!captured_logs().contains(secret.as_str()), "a token in the logs");
    }
}

/// Password reset: the same answer for unknown addresses (and no mail),
/// the policy before the link is used, every session revoked, single use;
/// then `changePassword`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_and_change() {
    capture_logs();
    let sink = Sink::start("plain").await;
    let s = server(Backend::Production, Some(&sink)).await;
    let (t, admin) = tenant(&s, json!({ "passwordMinLength": 12 })).await;
    let who = email("reset");
    register(&s, &t, &who, None).await;
    let (access1, refresh1) = s.login(&t.slug, &who, PASSWORD).await;
    let (_, refresh2) = s.login(&t.slug, &who, PASSWORD).await;

    let nobody = email("nobody");
    let unknown = op(&s, &t, None, REQUEST_RESET, json!({ "e": nobody, "r": APP })).await;
    let known = op(&s, &t, None, REQUEST_RESET, json!({ "e": who, "r": APP })).await;
    assert_eq!(unknown, known, "the same answer for known and unknown addresses");
    assert_eq!(known["data"]["requestPasswordReset"], true);
    let bad_redirect = op(&s, &t, None, REQUEST_RESET, json!({ "e": who, "r": "https://app.example.com/other" })).await;
    assert_eq!(bad_redirect["errors"][0]["extensions"]["field"], "redirectUri", "{bad_redirect}");

    let mail = sink.wait_for(&who, 1).await.remove(0);
    assert!(mail["text"].as_str().unwrap().contains("30 minutes"), "{mail}");
    let token = link_param(mail["text"].as_str().unwrap(), "token");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.to(&nobody).is_empty(), "an unknown address got mail");

    // The policy is checked before the link is used up.
    let short = op(&s, &t, None, RESET, json!({ "t": token, "p": "too short" })).await;
    assert_eq!(code(&short), Some("BAD_USER_INPUT"), "{short}");
    assert_eq!(short["errors"][0]["extensions"]["field"], "newPassword");
    let new_password = "a brand new passphrase";
    assert_eq!(op(&s, &t, None, RESET, json!({ "t": token, "p": new_password })).await["data"]["resetPassword"], true);
    assert_eq!(code(&op(&s, &t, None, RESET, json!({ "t": token, "p": new_password })).await), Some("LINK_INVALID"));

    // Every session ended.
    assert_eq!(code(&op(&s, &t, Some(&access1), ME, json!({})).await), Some("UNAUTHENTICATED"));
    for r in [&refresh1, &refresh2] {
        assert!(op(&s, &t, None, REFRESH, json!({ "r": r })).await["errors"].is_array());
    }
    assert_eq!(code(&s.login_raw(&t.slug, &who, PASSWORD).await), Some("INVALID_CREDENTIALS"));
    let (access, _) = s.login(&t.slug, &who, new_password).await;
    // The reset proved the address.
    assert_eq!(op(&s, &t, Some(&access), ME, json!({})).await["data"]["me"]["emailVerified"], true);

    // changePassword: the current one is required; the other sessions end, this one stays.
    let (_, other_refresh) = s.login(&t.slug, &who, new_password).await;
    let change = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    let wrong =
        op(&s, &t, Some(&access), change, json!({ "c": "wrong passphrase", "n": "another new passphrase" })).await;
    assert_eq!(code(&wrong), Some("INVALID_CREDENTIALS"), "{wrong}");
    let changed = op(&s, &t, Some(&access), change, json!({ "c": new_password, "n": "another new passphrase" })).await;
    assert_eq!(changed["data"]["changePassword"], true, "{changed}");
    assert!(op(&s, &t, None, REFRESH, json!({ "r": other_refresh })).await["errors"].is_array(), "other session ended");
    assert!(op(&s, &t, Some(&access), ME, json!({})).await["data"]["me"].is_object(), "this session stays");
    s.login(&t.slug, &who, "another new passphrase").await;

    // Limits per address, unknown addresses exactly like known ones.
    for target in [&who, &nobody] {
        let mut last = Value::Null;
        for _ in 0..6 {
            last = op(&s, &t, None, REQUEST_RESET, json!({ "e": target, "r": APP })).await;
        }
        assert_eq!(code(&last), Some("RATE_LIMITED"), "{last}");
    }

    crate::harness::audit_log_with(
        &s,
        &t.slug,
        &admin,
        &["password.reset_requested", "password.reset", "password.changed"],
    )
    .await;
    assert!(!captured_logs().contains(&token), "a reset token in the logs");
}

/// Links expire (on authd's clock): reset after 30 minutes, magic link
/// after 15, verification after 24 hours. On the embedded default, with
/// mail written as `.eml` files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_expire_and_the_embedded_default_writes_eml_files() {
    capture_logs();
    let s = server(Backend::Embedded, None).await;
    let (t, _) = tenant(&s, json!({ "magicLinksEnabled": true })).await;
    let who = email("expire");
    let later = email("expire-later");
    register(&s, &t, &who, Some(APP)).await;
    let mail_dir = s.data_dir.join("mail");
    let eml = |n: usize| {
        let mail_dir = mail_dir.clone();
        async move {
            for _ in 0..200 {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&mail_dir)
                    .map(|d| {
                        d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect()
                    })
                    .unwrap_or_default();
                if files.len() >= n {
                    files.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
                    // Quoted-printable soft breaks and `=` escapes, undone.
                    let raw = std::fs::read_to_string(&files[n - 1]).unwrap();
                    return raw.replace("=\r\n", "").replace("=3D", "=");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no .eml file {n} in {}", mail_dir.display());
        }
    };
    let first = eml(1).await;
    assert!(first.contains(&format!("To: {who}")), "{first}");
    let verification = link_param(&first, "token");
    assert!(captured_logs().contains(".eml"), "the log names the file");
    assert!(!captured_logs().contains(&verification), "but never the link");
    register(&s, &t, &later, Some(APP)).await;
    let second = eml(2).await;
    assert!(second.contains(&format!("To: {later}")), "{second}");
    let late_verification = link_param(&second, "token");

    op(&s, &t, None, REQUEST_RESET, json!({ "e": who, "r": APP })).await;
    let reset = link_param(&eml(3).await, "token");
    let verifier = "v".repeat(50);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let magic_doc = "mutation($e: String!, $r: String!, $c: String!) { requestMagicLink(email: $e, redirectUri: $r, codeChallenge: $c) }";
    op(&s, &t, None, magic_doc, json!({ "e": who, "r": APP, "c": challenge })).await;
    let magic = link_param(&eml(4).await, "code");
    assert!(magic.starts_with("ml_"), "{magic}");

    let exchange =
        "mutation($c: String!, $v: String!) { exchangeLoginCode(code: $c, codeVerifier: $v) { __typename } }";
    s.deps().clock.advance(Duration::from_secs(15 * 60 + 5));
    assert_eq!(code(&op(&s, &t, None, exchange, json!({ "c": magic, "v": verifier })).await), Some("LINK_INVALID"));
    s.deps().clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        code(&op(&s, &t, None, RESET, json!({ "t": reset, "p": "a brand new passphrase" })).await),
        Some("LINK_INVALID")
    );
    // Verification lives a day: still good after 22.5 hours...
    s.deps().clock.advance(Duration::from_secs(22 * 3600));
    let ok = op(&s, &t, None, VERIFY, json!({ "t": verification })).await;
    assert_eq!(ok["data"]["verifyEmail"]["emailVerified"], true, "{ok}");
    // ...and not after 24.
    s.deps().clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(code(&op(&s, &t, None, VERIFY, json!({ "t": late_verification })).await), Some("LINK_INVALID"));
}

/// Magic links: PKCE S256 like social login, `amr ["email"]`, a second
/// factor for TOTP users, nothing sent while the tenant has them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magic_links_with_pkce_and_totp() {
    let sink = Sink::start("plain").await;
    let s = server(Backend::Production, Some(&sink)).await;
    let (t, admin) = tenant(&s, json!({})).await;
    let who = email("magic");
    register(&s, &t, &who, None).await;
    let verifier = "m".repeat(64);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    let request = "mutation($e: String!, $r: String!, $c: String!) { requestMagicLink(email: $e, redirectUri: $r, codeChallenge: $c) }";
    let exchange = "mutation($c: String!, $v: String!) { exchangeLoginCode(code: $c, codeVerifier: $v) { __typename ... on AuthTokens { accessToken user { emailVerified } } ... on MfaChallenge { challengeId } } }";

    // Off by default: the same answer, no mail.
    let off = op(&s, &t, None, request, json!({ "e": who, "r": APP, "c": challenge })).await;
    assert_eq!(off["data"]["requestMagicLink"], true, "{off}");
    let bad = op(&s, &t, None, request, json!({ "e": who, "r": APP, "c": "plain" })).await;
    assert_eq!(bad["errors"][0]["extensions"]["field"], "codeChallenge", "{bad}");
    op(
        &s,
        &t,
        Some(&admin),
        "mutation { updateTenantSettings(input: { magicLinksEnabled: true }) { magicLinksEnabled } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.to(&who).is_empty(), "a magic link was sent while disabled");

    op(&s, &t, None, request, json!({ "e": who, "r": APP, "c": challenge })).await;
    let mail = sink.wait_for(&who, 1).await.remove(0);
    assert!(mail["text"].as_str().unwrap().contains("15 minutes"));
    let code1 = link_param(mail["text"].as_str().unwrap(), "code");
    // A wrong verifier burns the code.
    let wrong = op(&s, &t, None, exchange, json!({ "c": code1, "v": "x".repeat(64) })).await;
    assert_eq!(code(&wrong), Some("UNAUTHENTICATED"), "{wrong}");
    assert_eq!(code(&op(&s, &t, None, exchange, json!({ "c": code1, "v": verifier })).await), Some("LINK_INVALID"));

    op(&s, &t, None, request, json!({ "e": who, "r": APP, "c": challenge })).await;
    let code2 = link_param(sink.wait_for(&who, 2).await[1]["text"].as_str().unwrap(), "code");
    let ok = op(&s, &t, None, exchange, json!({ "c": code2, "v": verifier })).await;
    let tokens = &ok["data"]["exchangeLoginCode"];
    assert_eq!(tokens["__typename"], "AuthTokens", "{ok}");
    assert_eq!(tokens["user"]["emailVerified"], true, "a magic link proves the address");
    assert_eq!(amr(tokens["accessToken"].as_str().unwrap()), json!(["email"]));
    assert_eq!(code(&op(&s, &t, None, exchange, json!({ "c": code2, "v": verifier })).await), Some("LINK_INVALID"));

    // A TOTP user gets the challenge, not tokens.
    let enrolled = crate::mfa::enrolled_user(&s, &t).await;
    op(&s, &t, None, request, json!({ "e": enrolled.email, "r": APP, "c": challenge })).await;
    let code3 = link_param(sink.wait_for(&enrolled.email, 1).await[0]["text"].as_str().unwrap(), "code");
    let mfa = op(&s, &t, None, exchange, json!({ "c": code3, "v": verifier })).await;
    assert_eq!(mfa["data"]["exchangeLoginCode"]["__typename"], "MfaChallenge", "{mfa}");
    crate::harness::audit_log_with(&s, &t.slug, &admin, &["magic_link.sent"]).await;
}

/// Email change: the password, a link to the new address, the old one told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_change() {
    let sink = Sink::start("plain").await;
    let s = server(Backend::Embedded, Some(&sink)).await;
    let (t, admin) = tenant(&s, json!({})).await;
    let old = email("old");
    let new = email("new");
    register(&s, &t, &old, None).await;
    let (access, _) = s.login(&t.slug, &old, PASSWORD).await;
    let request = "mutation($n: String!, $p: String!, $r: String!) { requestEmailChange(newEmail: $n, password: $p, redirectUri: $r) }";
    let wrong = op(&s, &t, Some(&access), request, json!({ "n": new, "p": "wrong passphrase", "r": APP })).await;
    assert_eq!(code(&wrong), Some("INVALID_CREDENTIALS"), "{wrong}");
    let taken = op(&s, &t, Some(&access), request, json!({ "n": t.admin_email, "p": PASSWORD, "r": APP })).await;
    assert_eq!(code(&taken), Some("EMAIL_TAKEN"), "{taken}");
    let ok = op(&s, &t, Some(&access), request, json!({ "n": new, "p": PASSWORD, "r": APP })).await;
    assert_eq!(ok["data"]["requestEmailChange"], true, "{ok}");
    let mail = sink.wait_for(&new, 1).await.remove(0);
    let token = link_param(mail["text"].as_str().unwrap(), "token");
    // Nothing changed yet.
    assert_eq!(op(&s, &t, Some(&access), ME, json!({})).await["data"]["me"]["email"], old);
    let confirm = "mutation($t: String!) { confirmEmailChange(token: $t) { email emailVerified } }";
    let done = op(&s, &t, None, confirm, json!({ "t": token })).await;
    assert_eq!(done["data"]["confirmEmailChange"], json!({ "email": new, "emailVerified": true }), "{done}");
    assert_eq!(code(&op(&s, &t, None, confirm, json!({ "t": token })).await), Some("LINK_INVALID"));
    let notice = sink.wait_for(&old, 1).await.remove(0);
    assert!(notice["text"].as_str().unwrap().contains(&new), "the old address is told: {notice}");
    s.login(&t.slug, &new, PASSWORD).await;
    assert_eq!(code(&s.login_raw(&t.slug, &old, PASSWORD).await), Some("INVALID_CREDENTIALS"));
    crate::harness::audit_log_with(&s, &t.slug, &admin, &["email.change_requested", "email.changed"]).await;
}

/// An SMTP outage during a reset request: the answer comes at once, the
/// mail arrives once the relay is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_outage_delays_but_loses_nothing() {
    let mut sink = Sink::down("plain");
    let s = server(Backend::Production, Some(&sink)).await;
    let (t, _) = tenant(&s, json!({})).await;
    let who = email("outage");
    register(&s, &t, &who, None).await;
    let answer = op(&s, &t, None, REQUEST_RESET, json!({ "e": who, "r": APP })).await;
    assert_eq!(answer["data"]["requestPasswordReset"], true, "{answer}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sink.up().await;
    let mails = sink.wait_for(&who, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.to(&who).len(), 1, "delivered exactly once: {mails:?}");
    let metrics = s.http.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    let retries = metrics.lines().find(|l| l.starts_with("authd_mail_retries_total")).unwrap();
    assert!(!retries.ends_with(" 0"), "the failed attempts are counted: {retries}");
}

/// Two replicas share one outbox: every message goes out once. Mail queued
/// while the relay is down, on a replica that then stops before sending
/// (as a crash between commit and send would), is delivered by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_outbox_and_send_each_mail_once() {
    let mut sink = Sink::down("plain");
    let mut a = server(Backend::Production, Some(&sink)).await;
    let (t, _) =
        tenant(&a, json!({ "rateLimits": { "registrationsPerIpPerHour": 100, "emailRequestsPerIpPerHour": 100 } }))
            .await;
    let b = a.replica(|_| {}).await;
    let users: Vec<String> = (0..12).map(|i| email(&format!("r{i}"))).collect();
    for (i, u) in users.iter().enumerate() {
        let via = if i % 2 == 0 { &a } else { &b };
        register(via, &t, u, None).await;
        let r = op(via, &t, None, REQUEST_RESET, json!({ "e": u, "r": APP })).await;
        assert_eq!(r["data"]["requestPasswordReset"], true, "{r}");
    }
    // The requests' mail is queued after the answer: give it a moment, then
    // stop replica A with its share still undelivered.
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.stop().await;
    sink.up().await;
    for u in &users {
        sink.wait_for(u, 1).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = sink.mails();
    assert_eq!(all.len(), users.len(), "each mail exactly once: {all:?}");
    drop(b);
}

/// STARTTLS with credentials, and implicit TLS, to a relay whose
/// certificate a private CA signed (`AUTHD_SMTP_CA_FILE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_credentials_and_implicit_tls() {
    for (mode, auth) in [("starttls", Some(("mailer", "relay-secret"))), ("smtps", None)] {
        let mut sink = Sink::down(mode);
        sink.auth = auth;
        sink.up().await;
        let s = server(Backend::Embedded, Some(&sink)).await;
        let (t, _) = tenant(&s, json!({})).await;
        let who = email(mode);
        register(&s, &t, &who, Some(APP)).await;
        let mail = sink.wait_for(&who, 1).await.remove(0);
        assert!(mail["text"].as_str().unwrap().contains("token="), "{mode}: {mail}");
    }
}

/// Postgres without SMTP: the operations that must mail answer
/// `UNAVAILABLE` (the same for every address); `register` still registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_smtp_is_unavailable_for_mail() {
    let s = server(Backend::Production, None).await;
    let (t, _) = tenant(&s, json!({})).await;
    let who = email("nosmtp");
    let reg = register(&s, &t, &who, Some(APP)).await;
    assert_eq!(reg["data"]["register"]["email"], who.as_str(), "{reg}");
    for e in [&who, &email("unknown")] {
        let r = op(&s, &t, None, REQUEST_RESET, json!({ "e": e, "r": APP })).await;
        assert_eq!(code(&r), Some("UNAVAILABLE"), "{r}");
    }
}

/// Tenant templates: a broken one is refused when saved; a good one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_templates_are_checked_when_saved_and_used() {
    let sink = Sink::start("plain").await;
    let s = server(Backend::Embedded, Some(&sink)).await;
    let (t, admin) = tenant(&s, json!({})).await;
    let save = "mutation($i: TenantSettingsInput!) { updateTenantSettings(input: $i) { emailTemplates { kind subject text html } } }";
    for broken in [
        json!({ "kind": "PASSWORD_RESET", "text": "{{ link " }),
        json!({ "kind": "PASSWORD_RESET", "text": "{{ no_such_variable }} {{ link }}" }),
        json!({ "kind": "PASSWORD_RESET", "text": "no link at all" }),
    ] {
        let r = op(&s, &t, Some(&admin), save, json!({ "i": { "emailTemplates": [broken] } })).await;
        assert_eq!(code(&r), Some("BAD_USER_INPUT"), "{r}");
        assert_eq!(r["errors"][0]["extensions"]["field"], "emailTemplates");
    }
    let good = json!({ "kind": "PASSWORD_RESET", "subject": "{{ tenant }}: new password", "html": "<p>Hi {{ \"<i>\" }} {{ email }}</p><a href=\"{{ link }}\">go</a>" });
    let r = op(&s, &t, Some(&admin), save, json!({ "i": { "emailTemplates": [good] } })).await;
    assert_eq!(r["data"]["updateTenantSettings"]["emailTemplates"][0]["kind"], "PASSWORD_RESET", "{r}");
    let who = email("templ");
    register(&s, &t, &who, None).await;
    op(&s, &t, None, REQUEST_RESET, json!({ "e": who, "r": APP })).await;
    let mail = sink.wait_for(&who, 1).await.remove(0);
    assert_eq!(mail["subject"], format!("Tenant {}: new password", t.slug));
    assert!(mail["text"].as_str().unwrap().contains("token="), "the built-in text part stays");
    assert!(mail["html"].as_str().unwrap().contains("Hi &lt;i&gt;"), "values are escaped in HTML: {mail}");
}
