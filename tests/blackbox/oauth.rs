//! Social login, end to end against a real OpenID Provider (the
//! certified `oidc-provider` npm package, started per test on 127.0.0.1 by
//! `tests/scripts/oidc_provider.mjs`) and a GitHub stand-in, driven by a
//! cookie-keeping HTTP client that fills in the provider's login and consent
//! forms as a browser would.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::both;
use crate::harness::{Backend, Tenant, TestServer, code};

/// The app's redirect URI (never fetched: the test reads the redirect).
const APP: &str = "https://app.example.com/auth/done";
/// The app's PKCE pair (challenge = BASE64URL(SHA-256(verifier)), computed with Python's hashlib).
const APP_VERIFIER: &str = "dBjftJeZ4CVP-mJ92K1uqbS2Qb2Ad5g7Cmd8ZEz8nB4";
const APP_CHALLENGE: &str = "b3yFjyxcwzAbYpkV8fa2EKs9erTmBEotrfmOkqnz2P0";
const CLIENT_ID: &str = "authd-test-client";
const CLIENT_SECRET: &str = "a client secret that must never be shown";

const UPSERT: &str = "mutation($i: OAuthProviderInput!) { upsertOAuthProvider(input: $i) { name kind displayName clientId clientSecretSet issuer scopes enabled trustEmailVerified createdAt updatedAt } }";
const START: &str = "mutation($p: String!, $r: String!, $c: String!) { startOAuthLogin(provider: $p, redirectUri: $r, codeChallenge: $c) { authorizationUrl } }";
const EXCHANGE: &str = "mutation($c: String!, $v: String!) { exchangeLoginCode(code: $c, codeVerifier: $v) { __typename ... on AuthTokens { accessToken refreshToken user { id email } } ... on MfaChallenge { challengeId methods } } }";

// ------------------------------------------------------------------ kit

/// A running `oidc-provider`, killed on drop.
pub struct OidcProvider {
    pub issuer: String,
    _child: tokio::process::Child,
}

fn scripts_dir() -> std::path::PathBuf {
    std::env::var("AUTHD_TEST_SCRIPTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

impl OidcProvider {
    /// Starts a provider whose client may redirect to the callbacks of `callbacks`.
    pub async fn start(callbacks: &[String], mode: &str, accounts: Value) -> Self {
        let node = std::env::var("AUTHD_TEST_NODE").unwrap_or_else(|_| "node".into());
        let config = json!({
            "clientId": CLIENT_ID,
            "clientSecret": CLIENT_SECRET,
            "redirectUris": callbacks,
            "mode": mode,
            "accounts": accounts,
        });
        let mut child = tokio::process::Command::new(node)
            .arg(scripts_dir().join("oidc_provider.mjs"))
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(
                    std::env::temp_dir().join(format!("oidc-provider-{}.log", uuid::Uuid::new_v4().simple())),
                )
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
            )
            .kill_on_drop(true)
            .spawn()
            .expect("node runs tests/scripts/oidc_provider.mjs (scripts/test.sh installs oidc-provider with npm ci)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("oidc_provider.mjs starts")
            .unwrap()
            .expect("oidc_provider.mjs prints its issuer (is oidc-provider installed in tests/scripts?)");
        let issuer = serde_json::from_str::<Value>(&line).unwrap()["issuer"].as_str().unwrap().to_owned();
        // Keep reading: a closed pipe would kill the provider on its next write.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { issuer, _child: child }
    }
}

/// A server that lets providers live on loopback (as in-house IdPs would).
async fn server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |env| {
        env.insert("AUTHD_PROVIDER_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
    })
    .await
}

pub(crate) fn callback(s: &TestServer, t: &Tenant, provider: &str) -> String {
    format!("{}/t/{}/oauth/{}/callback", s.url, t.slug, provider)
}

/// Logs the tenant admin in and allows the app's redirect URI.
async fn admin(s: &TestServer, t: &Tenant, link_by_email: bool) -> String {
    let (token, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let body = s
        .gql(
            &t.slug,
            Some(&token),
            "mutation($l: Boolean!, $r: [String!]!) { updateTenantSettings(input: { allowedRedirectUris: $r, linkByVerifiedEmail: $l }) { allowedRedirectUris } }",
            json!({ "l": link_by_email, "r": [APP] }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    token
}

async fn upsert(s: &TestServer, t: &Tenant, admin: &str, input: Value) -> Value {
    s.gql(&t.slug, Some(admin), UPSERT, json!({ "i": input })).await
}

pub(crate) async fn configure_oidc(
    s: &TestServer,
    t: &Tenant,
    admin: &str,
    name: &str,
    issuer: &str,
    trust: Option<bool>,
) {
    let mut input = json!({
        "name": name, "kind": "OIDC", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
        "issuer": issuer, "displayName": format!("IdP {name}"),
    });
    if let Some(trust) = trust {
        input["trustEmailVerified"] = json!(trust);
    }
    let body = upsert(s, t, admin, input).await;
    assert_eq!(body["data"]["upsertOAuthProvider"]["name"], name, "{body}");
}

async fn start(s: &TestServer, t: &Tenant, provider: &str) -> Value {
    s.gql(&t.slug, None, START, json!({ "p": provider, "r": APP, "c": APP_CHALLENGE })).await
}

async fn start_url(s: &TestServer, t: &Tenant, provider: &str) -> String {
    let body = start(s, t, provider).await;
    body["data"]["startOAuthLogin"]["authorizationUrl"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
}

async fn exchange(s: &TestServer, t: &Tenant, code: &str, verifier: &str) -> Value {
    s.gql(&t.slug, None, EXCHANGE, json!({ "c": code, "v": verifier })).await
}

/// A browser: keeps cookies, follows redirects by hand so the test sees
/// where it is sent.
pub struct Browser {
    http: reqwest::Client,
}

impl Browser {
    pub fn new() -> Self {
        let http =
            reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http }
    }

    /// Follows redirects and fills the provider's forms (login as `login`,
    /// then consent) until the browser is sent to a URL starting with
    /// `stop_at`, which is returned without being fetched.
    pub async fn run_until(&self, url: &str, login: &str, stop_at: &str) -> String {
        let mut next = self.http.get(url);
        let mut current = url::Url::parse(url).unwrap();
        for _ in 0..20 {
            let resp = next.send().await.unwrap();
            let status = resp.status();
            if status.is_redirection() {
                let location = resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
                let target = current.join(&location).unwrap();
                if target.as_str().starts_with(stop_at) {
                    return target.to_string();
                }
                current = target.clone();
                next = self.http.get(target);
                continue;
            }
            let html = resp.text().await.unwrap();
            assert!(status.is_success(), "{status} at {current}: {html}");
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("a form at {current}: {html}"))
                .replace("&amp;", "&");
            let target = current.join(&action).unwrap();
            let form: Vec<(&str, &str)> = if html.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any password")]
            } else {
                vec![("prompt", "consent")]
            };
            current = target.clone();
            next = self.http.post(target).form(&form);
        }
        panic!("too many steps from {url}");
    }

    /// Signs in at the provider and returns the consent page's abort URL.
    pub async fn run_until_consent(&self, url: &str, login: &str) -> String {
        let mut next = self.http.get(url);
        let mut current = url::Url::parse(url).unwrap();
        for _ in 0..20 {
            let resp = next.send().await.unwrap();
            if resp.status().is_redirection() {
                let location = resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
                current = current.join(&location).unwrap();
                next = self.http.get(current.clone());
                continue;
            }
            let html = resp.text().await.unwrap();
            let action = html.split("action=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
            if html.contains("name=\"login\"") {
                let target = current.join(&action).unwrap();
                current = target.clone();
                next = self.http.post(target).form(&[("prompt", "login"), ("login", login), ("password", "pw")]);
                continue;
            }
            let abort = html
                .split("href=\"")
                .filter_map(|r| r.split('"').next())
                .find(|h| h.contains("/abort"))
                .unwrap_or_else(|| panic!("an abort link on the consent page: {html}"));
            return current.join(abort).unwrap().to_string();
        }
        panic!("no consent page from {url}");
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.unwrap()
    }

    /// Follows one callback URL and returns where authd sends the browser.
    pub async fn callback(&self, url: &str) -> Result<url::Url, (u16, Value)> {
        let resp = self.get(url).await;
        if resp.status() == reqwest::StatusCode::SEE_OTHER {
            let location = resp.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
            return Ok(url::Url::parse(&location).unwrap());
        }
        let status = resp.status().as_u16();
        Err((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A whole login at `provider` as `login`: returns the app's redirect.
async fn login_via(s: &TestServer, t: &Tenant, provider: &str, login: &str) -> url::Url {
    let browser = Browser::new();
    let url = start_url(s, t, provider).await;
    let cb = browser.run_until(&url, login, &callback(s, t, provider)).await;
    let app = browser.callback(&cb).await.unwrap_or_else(|e| panic!("callback refused: {e:?}"));
    assert!(app.as_str().starts_with(APP), "{app}");
    app
}

fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn events(s: &TestServer, t: &Tenant, admin: &str, kind: &str) -> Vec<Value> {
    let body = s
        .gql(
            &t.slug,
            Some(admin),
            "query($t: String) { auditEvents(first: 100, type: $t) { edges { node { type actorId subjectId detail } } } }",
            json!({ "t": kind }),
        )
        .await;
    let edges = body["data"]["auditEvents"]["edges"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
    edges.into_iter().map(|e| e["node"].clone()).collect()
}

/// Audit events are partly batched: wait until one of `kind` with `reason` shows up.
async fn rejected_with(s: &TestServer, t: &Tenant, admin: &str, reason: &str) {
    for _ in 0..50 {
        let found = events(s, t, admin, "oauth.callback_rejected").await;
        if found.iter().any(|e| e["detail"]["reason"] == reason) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no oauth.callback_rejected event with reason {reason}");
}

// ------------------------------------------------------------------ the whole flow

async fn oidc_login_end_to_end(backend: Backend) {
    crate::harness::capture_logs();
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;

    // Admins see the config (secret write-only); everyone sees the button.
    let configs = s
        .gql(
            &t.slug,
            Some(&admin),
            "{ oauthProviderConfigs { name kind clientId clientSecretSet issuer scopes enabled trustEmailVerified } }",
            json!({}),
        )
        .await;
    let c = &configs["data"]["oauthProviderConfigs"][0];
    assert_eq!(c["kind"], "OIDC");
    assert_eq!(c["clientSecretSet"], true);
    assert_eq!(c["trustEmailVerified"], false, "generic OIDC is not trusted for email_verified by default");
    assert_eq!(c["scopes"], json!(["openid", "email", "profile"]));
    assert!(!configs.to_string().contains(CLIENT_SECRET));
    let public = s.gql(&t.slug, None, "{ oauthProviders { name kind displayName } }", json!({})).await;
    assert_eq!(
        public["data"]["oauthProviders"],
        json!([{ "name": "corp", "kind": "OIDC", "displayName": "IdP corp" }])
    );
    let refused = s.gql(&t.slug, None, "{ oauthProviderConfigs { name } }", json!({})).await;
    assert_eq!(code(&refused), Some("UNAUTHENTICATED"));

    // The authorization request: PKCE S256, state, nonce, our callback.
    let url = url::Url::parse(&start_url(&s, &t, "corp").await).unwrap();
    assert!(url.as_str().starts_with(&format!("{}/auth?", op.issuer)), "{url}");
    assert_eq!(param(&url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(&url, "redirect_uri"), Some(callback(&s, &t, "corp")));
    assert!(param(&url, "state").unwrap().len() >= 22 && param(&url, "nonce").unwrap().len() >= 22);
    assert_ne!(param(&url, "code_challenge").as_deref(), Some(APP_CHALLENGE), "authd's own verifier upstream");

    let app = login_via(&s, &t, "corp", "alice").await;
    let code_ = param(&app, "code").unwrap_or_else(|| panic!("a code: {app}"));
    let body = exchange(&s, &t, &code_, APP_VERIFIER).await;
    let tokens = &body["data"]["exchangeLoginCode"];
    assert_eq!(tokens["__typename"], "AuthTokens", "{body}");
    // A provider not trusted for `email_verified` proves no address: the
    // account has none (the claim stays on the identity).
    assert!(tokens["user"]["email"].is_null(), "{body}");
    let access = tokens["accessToken"].as_str().unwrap();
    assert_eq!(claims(access)["amr"], json!(["fed"]));
    let me = s.gql(&t.slug, Some(access), "{ me { id email role } }", json!({})).await;
    assert!(me["data"]["me"]["email"].is_null(), "{me}");
    assert_eq!(me["data"]["me"]["role"], "USER");
    let first_id = me["data"]["me"]["id"].clone();

    // The code is single use.
    assert_eq!(code(&exchange(&s, &t, &code_, APP_VERIFIER).await), Some("UNAUTHENTICATED"));

    // The same person again is the same user.
    let again = login_via(&s, &t, "corp", "alice").await;
    let body = exchange(&s, &t, &param(&again, "code").unwrap(), APP_VERIFIER).await;
    assert_eq!(body["data"]["exchangeLoginCode"]["user"]["id"], first_id);

    assert!(!events(&s, &t, &admin, "oauth_provider.changed").await.is_empty());
    for _ in 0..50 {
        if events(&s, &t, &admin, "oauth.login_succeeded").await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logins = events(&s, &t, &admin, "oauth.login_succeeded").await;
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0]["subjectId"], first_id);
    assert_eq!(logins[0]["detail"]["provider"], "corp");

    // Nothing secret reaches a log line: not the client secret, not a login code.
    let logs = crate::harness::captured_logs();
    assert!(!logs.contains(CLIENT_SECRET), "the client secret was logged");
    assert!(!logs.contains(&code_), "a login code was logged");
}
both!(oidc_login_works_end_to_end, oidc_login_end_to_end);

/// The person declines at the provider: the app is told, nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_consent_sends_the_app_an_error() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let browser = Browser::new();
    let url = start_url(&s, &t, "corp").await;
    // Sign in, then follow the consent page's "cancel" link instead of consenting.
    let consent = browser.run_until_consent(&url, "alice").await;
    let cb = browser.run_until(&consent, "alice", &callback(&s, &t, "corp")).await;
    let app = browser.callback(&cb).await.unwrap();
    assert_eq!(param(&app, "error").as_deref(), Some("UNAUTHENTICATED"), "{app}");
    rejected_with(&s, &t, &admin, "provider_error").await;
}

// ------------------------------------------------------------------ callback refusals

async fn wrong_state(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let browser = Browser::new();
    let url = start_url(&s, &t, "corp").await;
    let cb = browser.run_until(&url, "alice", &callback(&s, &t, "corp")).await;
    let mut forged = url::Url::parse(&cb).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" { "forged-state-value-0123456789".into() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let (status, body) = browser.callback(forged.as_str()).await.expect_err("a forged state is refused");
    assert_eq!(status, 400);
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
    rejected_with(&s, &t, &admin, "unknown_state").await;
    // The real state still works afterwards.
    let app = browser.callback(&cb).await.unwrap();
    assert!(param(&app, "code").is_some());
}
both!(wrong_state_is_refused, wrong_state);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_state_is_refused() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let browser = Browser::new();
    let cb = browser.run_until(&start_url(&s, &t, "corp").await, "alice", &callback(&s, &t, "corp")).await;
    assert!(param(&browser.callback(&cb).await.unwrap(), "code").is_some());
    let (status, body) = browser.callback(&cb).await.expect_err("a used state is refused");
    assert_eq!(status, 400);
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
    rejected_with(&s, &t, &admin, "unknown_state").await;
}

async fn state_from_another_tenant(backend: Backend) {
    let s = server(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let admin_a = admin(&s, &a, false).await;
    let admin_b = admin(&s, &b, false).await;
    let op = OidcProvider::start(&[callback(&s, &a, "corp"), callback(&s, &b, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &a, &admin_a, "corp", &op.issuer, None).await;
    configure_oidc(&s, &b, &admin_b, "corp", &op.issuer, None).await;
    let browser = Browser::new();
    let cb = browser.run_until(&start_url(&s, &a, "corp").await, "alice", &callback(&s, &a, "corp")).await;
    // Tenant A's state and code, presented at tenant B's callback.
    let moved = cb.replace(&format!("/t/{}/", a.slug), &format!("/t/{}/", b.slug));
    let (status, body) = browser.callback(&moved).await.expect_err("another tenant's state is unknown here");
    assert_eq!(status, 400);
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
    rejected_with(&s, &b, &admin_b, "unknown_state").await;
}
both!(state_from_another_tenant_is_refused, state_from_another_tenant);

/// A login where the provider (in `mode`) answers a bad ID token: the app is
/// sent `error=UNAUTHENTICATED` and the refusal is audited with `reason`.
async fn refused_id_token(backend: Backend, mode: &str, reason: &str) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], mode, json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let app = login_via(&s, &t, "corp", "mallory").await;
    assert_eq!(param(&app, "error").as_deref(), Some("UNAUTHENTICATED"), "{app}");
    assert!(param(&app, "code").is_none());
    rejected_with(&s, &t, &admin, reason).await;
    let users = s.gql(&t.slug, Some(&admin), "{ users { edges { node { email } } } }", json!({})).await;
    assert_eq!(users["data"]["users"]["edges"].as_array().unwrap().len(), 1, "no account was created: {users}");
}

async fn tampered_id_token(backend: Backend) {
    refused_id_token(backend, "tamper_signature", "id_token_signature").await;
}
both!(tampered_id_token_is_refused, tampered_id_token);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_signed_by_another_key_is_refused() {
    refused_id_token(Backend::Embedded, "foreign_key", "id_token_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_with_wrong_nonce_is_refused() {
    refused_id_token(Backend::Embedded, "wrong_nonce", "id_token_nonce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_for_another_audience_is_refused() {
    refused_id_token(Backend::Embedded, "wrong_audience", "id_token_audience").await;
}

/// An HMAC keyed by the client secret proves nothing the client could not
/// have made itself: asymmetric algorithms only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_signed_with_the_client_secret_is_refused() {
    refused_id_token(Backend::Embedded, "hmac_client_secret", "id_token_algorithm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_expired_beyond_the_leeway_is_refused() {
    refused_id_token(Backend::Embedded, "expired", "id_token_expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_authorized_for_another_client_is_refused() {
    refused_id_token(Backend::Embedded, "foreign_azp", "id_token_azp").await;
}

// ------------------------------------------------------------------ the app's leg

async fn expired_code(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let app = login_via(&s, &t, "corp", "alice").await;
    // The code lives 60 s: move authd's clock past it instead of sleeping.
    s.deps().clock.advance(Duration::from_secs(61));
    let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
}
both!(expired_login_code_is_refused, expired_code);

async fn wrong_verifier(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let app = login_via(&s, &t, "corp", "alice").await;
    let code_ = param(&app, "code").unwrap();
    let body = exchange(&s, &t, &code_, "another-verifier-of-the-right-length-0123456789").await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
    // The first attempt consumed the code: it cannot be tried again.
    assert_eq!(code(&exchange(&s, &t, &code_, APP_VERIFIER).await), Some("UNAUTHENTICATED"));
}
both!(wrong_app_verifier_is_refused, wrong_verifier);

async fn unlisted_redirect_uri(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    for uri in [
        "https://evil.example.com/auth/done",
        "https://app.example.com/auth/done/",
        "https://app.example.com/auth/done?x=1",
    ] {
        let body = s.gql(&t.slug, None, START, json!({ "p": "corp", "r": uri, "c": APP_CHALLENGE })).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{uri}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "redirectUri");
    }
    let unknown = s.gql(&t.slug, None, START, json!({ "p": "nope", "r": APP, "c": APP_CHALLENGE })).await;
    assert_eq!(code(&unknown), Some("PROVIDER_NOT_FOUND"));
    let plain = s.gql(&t.slug, None, START, json!({ "p": "corp", "r": APP, "c": "plain" })).await;
    assert_eq!(code(&plain), Some("BAD_USER_INPUT"));
}
both!(redirect_uri_not_on_the_list_is_refused, unlisted_redirect_uri);

// ------------------------------------------------------------------ SSRF and providers down

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_outside_the_allowed_networks_is_refused_without_connecting() {
    // No AUTHD_PROVIDER_ALLOWED_NETWORKS: loopback and private issuers are refused.
    let s = TestServer::start(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    for issuer in [
        format!("http://127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("https://localhost:{port}"),
        "https://169.254.169.254".to_owned(),
        "https://10.0.0.1".to_owned(),
        "ftp://example.com".to_owned(),
    ] {
        let body =
            upsert(&s, &t, &admin, json!({ "name": "corp", "kind": "OIDC", "clientId": "c", "issuer": issuer })).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{issuer}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "issuer");
        if issuer.contains("localhost") {
            // What a name resolves to is never told (no DNS oracle).
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(!message.contains("127.0.0.1") && !message.contains("::1"), "{message}");
        }
    }
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection was made to the refused issuer"
    );
    let configs = s.gql(&t.slug, Some(&admin), "{ oauthProviderConfigs { name } }", json!({})).await;
    assert_eq!(configs["data"]["oauthProviderConfigs"], json!([]));
}

async fn provider_refusing_connections(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    configure_oidc(&s, &t, &admin, "down", &format!("http://127.0.0.1:{port}"), None).await;
    let body = start(&s, &t, "down").await;
    assert_eq!(code(&body), Some("UNAVAILABLE"), "{body}");
}
both!(provider_down_connection_refused_is_unavailable, provider_refusing_connections);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_timeout_is_unavailable() {
    let s = server(Backend::Embedded).await;
    // A short provider timeout for this server (set before first use).
    let policy = authd_tenancy::oauth::net::NetPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()] };
    let http = authd_tenancy::oauth::net::ProviderHttp::new(policy, Duration::from_millis(500)).unwrap();
    assert!(s.deps().provider_http.set(Arc::new(http)).is_ok());
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    configure_oidc(&s, &t, &admin, "slow", &format!("http://127.0.0.1:{port}"), None).await;
    let body = start(&s, &t, "slow").await;
    assert_eq!(code(&body), Some("UNAVAILABLE"), "{body}");
    // Other providers of the tenant keep working meanwhile.
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    assert!(param(&login_via(&s, &t, "corp", "alice").await, "code").is_some());
    hold.abort();
}

// ------------------------------------------------------------------ account linking

async fn sign_in(s: &TestServer, t: &Tenant, provider: &str, login: &str) -> Value {
    let app = login_via(s, t, provider, login).await;
    let Some(code_) = param(&app, "code") else {
        let admin = s.login(&t.slug, &t.admin_email, &t.admin_password).await.0;
        tokio::time::sleep(Duration::from_millis(800)).await;
        panic!("{app}: {:?}", events(s, t, &admin, "oauth.callback_rejected").await);
    };
    let body = exchange(s, t, &code_, APP_VERIFIER).await;
    assert_eq!(body["data"]["exchangeLoginCode"]["__typename"], "AuthTokens", "{body}");
    body["data"]["exchangeLoginCode"].clone()
}

async fn me_of(s: &TestServer, t: &Tenant, token: &str) -> Value {
    let body = s.gql(&t.slug, Some(token), "{ me { id email emailVerified } }", json!({})).await;
    body["data"]["me"].clone()
}

async fn linking(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    s.register(&t.slug, "dave@example.com", "dave's long passphrase").await;
    let accounts = json!({
        "dave": { "email": "dave@example.com", "email_verified": false },
        "frank": { "email": "frank@example.com", "email_verified": true },
        "grace": { "email": "grace@example.com", "email_verified": false },
    });
    let op = OidcProvider::start(&[callback(&s, &t, "corp"), callback(&s, &t, "other")], "normal", accounts).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, Some(true)).await;
    configure_oidc(&s, &t, &admin, "other", &op.issuer, Some(true)).await;

    // Unverified email: never linked; a new user without the taken address.
    let user = sign_in(&s, &t, "corp", "dave").await["user"].clone();
    assert!(user["email"].is_null(), "{user}");
    let (dave_token, _) = s.login(&t.slug, "dave@example.com", "dave's long passphrase").await;
    let dave = me_of(&s, &t, &dave_token).await;
    assert_ne!(dave["id"], user["id"], "the password account was not taken over");
    assert_eq!(dave["emailVerified"], false);

    // An unverified address that nobody has is not given to the new account
    // either: it would block (or claim) the address's real owner.
    let grace = sign_in(&s, &t, "corp", "grace").await;
    assert!(grace["user"]["email"].is_null(), "{grace}");
    let taken = s.register(&t.slug, "grace@example.com", "grace's long passphrase").await;
    assert!(taken["errors"].is_null(), "the address stays free for its owner: {taken}");

    // Verified by a trusted provider: the new account has the proven email…
    let frank = sign_in(&s, &t, "corp", "frank").await;
    let frank_me = me_of(&s, &t, frank["accessToken"].as_str().unwrap()).await;
    assert_eq!(frank_me["email"], "frank@example.com");
    assert_eq!(frank_me["emailVerified"], true, "{frank_me}");
    // …and another provider asserting the same proven email links into it.
    let again = sign_in(&s, &t, "other", "frank").await;
    assert_eq!(again["user"]["id"], frank_me["id"], "{again}");
    let linked = events(&s, &t, &admin, "account.linked").await;
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0]["subjectId"], frank_me["id"]);
}
both!(unverified_email_is_not_linked_and_verified_is, linking);

/// Account pre-hijacking: an attacker registers the victim's address with a
/// password before the victim ever signs in. The victim's later social login
/// (email verified by a trusted provider) must not enter the attacker's
/// account, and the attacker's password must not open the victim's.
async fn pre_hijack(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    s.register(&t.slug, "victim@example.com", "attacker's passphrase").await;
    let accounts = json!({ "victim": { "email": "victim@example.com", "email_verified": true } });
    let op = OidcProvider::start(&[callback(&s, &t, "google")], "normal", accounts).await;
    configure_oidc(&s, &t, &admin, "google", &op.issuer, Some(true)).await;
    let victim = sign_in(&s, &t, "google", "victim").await;
    let (attacker_token, _) = s.login(&t.slug, "victim@example.com", "attacker's passphrase").await;
    let attacker = me_of(&s, &t, &attacker_token).await;
    assert_ne!(victim["user"]["id"], attacker["id"], "one account for two people");
    assert!(victim["user"]["email"].is_null(), "{victim}");
    assert!(events(&s, &t, &admin, "account.linked").await.is_empty());
    // The victim's next sign-in lands in the same (their own) account.
    let next = sign_in(&s, &t, "google", "victim").await;
    assert_eq!(next["user"]["id"], victim["user"]["id"]);
}
both!(a_password_account_registered_first_is_never_entered_by_social_login, pre_hijack);

/// Identities belong to the issuer: a provider re-pointed to another issuer
/// whose user has the same `sub` gets a new account, not the old one's.
async fn repointed_provider(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let accounts = json!({ "1001": { "email": "first@example.com", "email_verified": true } });
    let first = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", accounts.clone()).await;
    configure_oidc(&s, &t, &admin, "corp", &first.issuer, Some(true)).await;
    let old = sign_in(&s, &t, "corp", "1001").await;
    assert_eq!(sign_in(&s, &t, "corp", "1001").await["user"]["id"], old["user"]["id"], "same issuer, same account");
    let second = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", accounts).await;
    assert_ne!(first.issuer, second.issuer);
    configure_oidc(&s, &t, &admin, "corp", &second.issuer, Some(true)).await;
    // The provider's actor takes the new configuration asynchronously.
    for _ in 0..100 {
        if start_url(&s, &t, "corp").await.starts_with(&second.issuer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = sign_in(&s, &t, "corp", "1001").await;
    assert_ne!(new["user"]["id"], old["user"]["id"], "a colliding sub of another issuer is another person");
    assert!(new["user"]["email"].is_null(), "the old account keeps its address: {new}");
}
both!(a_provider_repointed_to_another_issuer_never_matches_old_identities, repointed_provider);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_provider_never_links_even_verified_email() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    s.register(&t.slug, "erin@example.com", "erin's long passphrase").await;
    let accounts = json!({ "erin": { "email": "erin@example.com", "email_verified": true } });
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", accounts).await;
    // OIDC's default: trustEmailVerified false.
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let app = login_via(&s, &t, "corp", "erin").await;
    let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    assert!(body["data"]["exchangeLoginCode"]["user"]["email"].is_null(), "{body}");
    assert!(events(&s, &t, &admin, "account.linked").await.is_empty());
}

// ------------------------------------------------------------------ configuration

async fn providers_config(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "web"), callback(&s, &t, "mobile")], "normal", json!({})).await;
    // Two providers of one kind (e.g. web and mobile client ids).
    configure_oidc(&s, &t, &admin, "web", &op.issuer, None).await;
    configure_oidc(&s, &t, &admin, "mobile", &op.issuer, None).await;
    let google = upsert(
        &s,
        &t,
        &admin,
        json!({ "name": "google", "kind": "GOOGLE", "clientId": "g.apps", "clientSecret": "g-secret" }),
    )
    .await;
    let g = &google["data"]["upsertOAuthProvider"];
    assert_eq!(g["kind"], "GOOGLE", "{google}");
    assert_eq!(g["trustEmailVerified"], true);
    assert_eq!(g["displayName"], "Google");
    assert!(g["issuer"].is_null());
    let names = s.gql(&t.slug, None, "{ oauthProviders { name kind } }", json!({})).await;
    assert_eq!(names["data"]["oauthProviders"].as_array().unwrap().len(), 3, "{names}");

    // Updates keep the secret when none is given; disabling hides the button.
    let updated = upsert(
        &s,
        &t,
        &admin,
        json!({ "name": "mobile", "kind": "OIDC", "clientId": CLIENT_ID, "issuer": op.issuer, "enabled": false }),
    )
    .await;
    assert_eq!(updated["data"]["upsertOAuthProvider"]["clientSecretSet"], true, "{updated}");
    assert_eq!(updated["data"]["upsertOAuthProvider"]["enabled"], false);
    let names = s.gql(&t.slug, None, "{ oauthProviders { name } }", json!({})).await;
    assert_eq!(names["data"]["oauthProviders"], json!([{ "name": "google" }, { "name": "web" }]));
    assert_eq!(code(&start(&s, &t, "mobile").await), Some("PROVIDER_NOT_FOUND"));
    assert!(param(&login_via(&s, &t, "web", "alice").await, "code").is_some());

    // Only admins configure.
    s.register(&t.slug, "user@example.com", "a user's long passphrase").await;
    let (user, _) = s.login(&t.slug, "user@example.com", "a user's long passphrase").await;
    let denied = upsert(&s, &t, &user, json!({ "name": "x", "kind": "GOOGLE", "clientId": "x" })).await;
    assert_eq!(code(&denied), Some("FORBIDDEN"));

    let del = s.gql(&t.slug, Some(&admin), "mutation { deleteOAuthProvider(name: \"web\") }", json!({})).await;
    assert_eq!(del["data"]["deleteOAuthProvider"], true, "{del}");
    let again = s.gql(&t.slug, Some(&admin), "mutation { deleteOAuthProvider(name: \"web\") }", json!({})).await;
    assert_eq!(again["data"]["deleteOAuthProvider"], false);
    assert_eq!(code(&start(&s, &t, "web").await), Some("PROVIDER_NOT_FOUND"));
    let deleted = events(&s, &t, &admin, "oauth_provider.deleted").await;
    assert_eq!(deleted[0]["detail"]["provider"], "web");
    let changed = events(&s, &t, &admin, "oauth_provider.changed").await;
    assert_eq!(changed.len(), 4);
    assert!(!changed.iter().any(|e| e.to_string().contains("g-secret")), "no secret in the audit log");
}
both!(several_providers_are_configured_updated_and_deleted, providers_config);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_is_sealed_at_rest() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    upsert(
        &s,
        &t,
        &admin,
        json!({ "name": "google", "kind": "GOOGLE", "clientId": "g", "clientSecret": CLIENT_SECRET }),
    )
    .await;
    let tenant_id = authd_core::TenantId(t.id.parse::<uuid::Uuid>().unwrap());
    let rows = s.deps().store.oauth_providers(tenant_id).await.unwrap();
    let sealed = rows[0].client_secret_sealed.clone().unwrap();
    assert!(!sealed.contains(CLIENT_SECRET) && !sealed.contains("client secret"));
}

// ------------------------------------------------------------------ GitHub

/// A GitHub stand-in speaking GitHub's OAuth and REST endpoints.
async fn github_stand_in(email_list: Value) -> String {
    use axum::extract::{Form, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::{get, post};

    #[derive(Clone)]
    struct Gh {
        emails: Value,
        /// code → PKCE challenge
        codes: Arc<parking_lot::Mutex<HashMap<String, String>>>,
    }
    async fn authorize(State(gh): State<Gh>, Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
        assert_eq!(q["client_id"], "gh-client");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!q.contains_key("nonce"), "GitHub is not OpenID Connect");
        let code = format!("gh-code-{}", uuid::Uuid::new_v4().simple());
        gh.codes.lock().insert(code.clone(), q["code_challenge"].clone());
        let mut to = url::Url::parse(&q["redirect_uri"]).unwrap();
        to.query_pairs_mut().append_pair("code", &code).append_pair("state", &q["state"]);
        Redirect::to(to.as_str())
    }
    async fn token(
        State(gh): State<Gh>,
        headers: HeaderMap,
        Form(f): Form<HashMap<String, String>>,
    ) -> impl IntoResponse {
        assert_eq!(headers["accept"], "application/json");
        assert_eq!(f["client_id"], "gh-client");
        assert_eq!(f["client_secret"], "gh-secret");
        let Some(challenge) = gh.codes.lock().remove(&f["code"]) else {
            return axum::Json(json!({ "error": "bad_verification_code" }));
        };
        assert_eq!(sha2_free::s256(&f["code_verifier"]), challenge, "PKCE verifier matches");
        axum::Json(json!({ "access_token": "gho_test", "token_type": "bearer", "scope": "read:user,user:email" }))
    }
    async fn user(headers: HeaderMap) -> impl IntoResponse {
        if headers["authorization"] != "Bearer gho_test" {
            return (StatusCode::UNAUTHORIZED, axum::Json(json!({}))).into_response();
        }
        axum::Json(json!({ "id": 4242, "login": "octocat", "email": null })).into_response()
    }
    async fn emails(State(gh): State<Gh>, headers: HeaderMap) -> impl IntoResponse {
        assert_eq!(headers["authorization"], "Bearer gho_test");
        axum::Json(gh.emails.clone())
    }
    let gh = Gh { emails: email_list, codes: Default::default() };
    let app = axum::Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(token))
        .route("/api/v3/user", get(user))
        .route("/api/v3/user/emails", get(emails))
        .with_state(gh);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// S256 without a SHA-256 crate in the test's dependencies: Python's hashlib.
mod sha2_free {
    pub fn s256(verifier: &str) -> String {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,hashlib,base64;print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).decode().rstrip('='))",
                verifier,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

async fn github_login(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let base = github_stand_in(json!([
        { "email": "octo-unverified@example.com", "primary": false, "verified": false },
        { "email": "octocat@example.com", "primary": true, "verified": true },
    ]))
    .await;
    let body = upsert(&s, &t, &admin, json!({ "name": "github", "kind": "GITHUB", "clientId": "gh-client", "clientSecret": "gh-secret", "issuer": base })).await;
    let g = &body["data"]["upsertOAuthProvider"];
    assert_eq!(g["trustEmailVerified"], true, "{body}");
    assert_eq!(g["scopes"], json!(["read:user", "user:email"]));
    let browser = Browser::new();
    let url = start_url(&s, &t, "github").await;
    assert!(url.starts_with(&format!("{base}/login/oauth/authorize?")), "{url}");
    let cb = browser.run_until(&url, "octocat", &callback(&s, &t, "github")).await;
    let app = browser.callback(&cb).await.unwrap();
    let body = exchange(&s, &t, &param(&app, "code").unwrap_or_else(|| panic!("{app}")), APP_VERIFIER).await;
    let tokens = &body["data"]["exchangeLoginCode"];
    assert_eq!(tokens["user"]["email"], "octocat@example.com", "{body}");
    let me = s.gql(&t.slug, tokens["accessToken"].as_str(), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "octocat@example.com");
    assert_eq!(claims(tokens["accessToken"].as_str().unwrap())["amr"], json!(["fed"]));
}
both!(github_login_works_against_a_stand_in, github_login);

// ------------------------------------------------------------------ a real browser

/// A tenant's web app: one page at `/auth/done` that the login ends on.
async fn web_app() -> String {
    let app = axum::Router::new().route(
        "/auth/done",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>app: signed in</title><p>Welcome back.</p>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("{base}/auth/done")
}

/// The same flow once in headless Chromium driven by WebDriver (selenium +
/// chromedriver), serially (one browser at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_works_in_headless_chromium() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let app_url = web_app().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let set = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($r: [String!]!) { updateTenantSettings(input: { allowedRedirectUris: $r }) { allowedRedirectUris } }",
            json!({ "r": [app_url] }),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, Some(true)).await;
    let body = s.gql(&t.slug, None, START, json!({ "p": "corp", "r": app_url, "c": APP_CHALLENGE })).await;
    let url = body["data"]["startOAuthLogin"]["authorizationUrl"].as_str().unwrap_or_else(|| panic!("{body}"));

    let (python, scripts) = crate::graphiql::test_python();
    let out = tokio::process::Command::new(python)
        .arg(scripts.join("oauth_browser.py"))
        .args([url, "browser-user", app_url.as_str()])
        .output()
        .await
        .expect("run oauth_browser.py");
    assert!(
        out.status.success(),
        "browser flow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let landed = url::Url::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let code_ = param(&landed, "code").unwrap_or_else(|| panic!("a code: {landed}"));
    let body = exchange(&s, &t, &code_, APP_VERIFIER).await;
    let access = body["data"]["exchangeLoginCode"]["accessToken"].as_str().unwrap_or_else(|| panic!("{body}"));
    let me = s.gql(&t.slug, Some(access), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "browser-user@example.com");
}

// ------------------------------------------------------------------ second factor

/// A social login never skips TOTP: a social-only user enrolls without a
/// password (a sign-in of the last 5 minutes re-authenticates), and the next
/// exchange answers an MFA challenge whose tokens say `["fed","otp"]`.
async fn social_login_with_totp(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    let accounts = json!({ "totp-user": { "email": "totp-social@example.com", "email_verified": true } });
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", accounts).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, Some(true)).await;
    let first = sign_in(&s, &t, "corp", "totp-user").await;
    let token = first["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(claims(&token)["amr"], json!(["fed"]));
    // No password to give: the fresh sign-in is the re-authentication.
    let with_password = s
        .gql(&t.slug, Some(&token), "mutation { beginTotpEnrollment(password: \"guess\") { secret } }", json!({}))
        .await;
    assert_eq!(code(&with_password), Some("INVALID_CREDENTIALS"), "{with_password}");
    let begin = s.gql(&t.slug, Some(&token), "mutation { beginTotpEnrollment { secret } }", json!({})).await;
    let secret =
        begin["data"]["beginTotpEnrollment"]["secret"].as_str().unwrap_or_else(|| panic!("{begin}")).to_owned();
    let now = chrono::Utc::now().timestamp();
    if 30 - now % 30 < 8 {
        tokio::time::sleep(Duration::from_secs(9)).await;
    }
    let code_now = crate::mfa::pyotp(&secret, chrono::Utc::now().timestamp()).await;
    let confirm = s
        .gql(
            &t.slug,
            Some(&token),
            "mutation($c: String!) { confirmTotpEnrollment(code: $c) { codes } }",
            json!({ "c": code_now }),
        )
        .await;
    let recovery =
        confirm["data"]["confirmTotpEnrollment"]["codes"][0].as_str().unwrap_or_else(|| panic!("{confirm}")).to_owned();

    let app = login_via(&s, &t, "corp", "totp-user").await;
    let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    let result = &body["data"]["exchangeLoginCode"];
    assert_eq!(result["__typename"], "MfaChallenge", "{body}");
    assert!(result["accessToken"].is_null());
    let verified = s
        .gql(
            &t.slug,
            None,
            "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken } }",
            json!({ "i": { "challengeId": result["challengeId"], "code": recovery } }),
        )
        .await;
    let access = verified["data"]["verifyMfa"]["accessToken"].as_str().unwrap_or_else(|| panic!("{verified}"));
    assert_eq!(claims(access)["amr"], json!(["fed", "otp"]));
}
both!(social_login_never_skips_totp, social_login_with_totp);

// ------------------------------------------------------------------ supervision and replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_provider_actor_restarts_alone() {
    use authd_tenancy::tenant::TenantMsg;
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp"), callback(&s, &t, "other")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    configure_oidc(&s, &t, &admin, "other", &op.issuer, None).await;
    assert!(param(&login_via(&s, &t, "corp", "alice").await, "code").is_some());
    let sup = s.running().platform.running(&t.slug).unwrap().supervisor().unwrap();
    let restarts = || async { ractor::call_t!(sup, TenantMsg::Restarts, 5000).unwrap() };
    assert_eq!(restarts().await, 0);
    sup.cast(TenantMsg::CrashProvider("corp".into())).unwrap();
    // The other provider and the rest of the tenant answer meanwhile.
    assert!(param(&login_via(&s, &t, "other", "bob").await, "code").is_some());
    let me = s.gql(&t.slug, Some(&admin), "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], t.admin_email.as_str());
    for _ in 0..200 {
        if restarts().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(restarts().await, 1, "exactly the crashed provider's actor was restarted");
    // The restarted actor serves again (its caches refetched).
    assert!(param(&login_via(&s, &t, "corp", "alice").await, "code").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_changes_reach_another_replica_which_can_finish_the_flow() {
    let s1 = server(Backend::Production).await;
    let t = s1.tenant().await;
    let admin = admin(&s1, &t, false).await;
    // A second replica on the same Postgres and Redis, behind the same public URL.
    let s2 = s1
        .replica(|env| {
            env.insert("AUTHD_PUBLIC_URL".into(), s1.url.clone());
            // Its periodic reload is far away: the change must arrive by Redis pub/sub.
            env.insert("AUTHD_TENANT_REFRESH_MS".into(), "600000".into());
        })
        .await;
    // Replica 2 runs the tenant before the provider exists.
    assert_eq!(code(&start(&s2, &t, "corp").await), Some("PROVIDER_NOT_FOUND"));

    let op = OidcProvider::start(&[callback(&s1, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s1, &t, &admin, "corp", &op.issuer, Some(true)).await;
    // Announced over Redis pub/sub: poll (up to 5 s), don't sleep a fixed time.
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = s2.gql(&t.slug, None, "{ oauthProviders { name } }", json!({})).await;
        if seen["data"]["oauthProviders"] == json!([{ "name": "corp" }]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["data"]["oauthProviders"], json!([{ "name": "corp" }]));

    // Started on replica 2, finished (callback, exchange) on replica 1.
    let browser = Browser::new();
    let url = start_url(&s2, &t, "corp").await;
    let cb = browser.run_until(&url, "alice", &callback(&s1, &t, "corp")).await;
    let app = browser.callback(&cb).await.unwrap();
    let body = exchange(&s1, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    assert_eq!(body["data"]["exchangeLoginCode"]["user"]["email"], "alice@example.com", "{body}");

    // A deletion on replica 1 reaches replica 2's actors too.
    s1.gql(&t.slug, Some(&admin), "mutation { deleteOAuthProvider(name: \"corp\") }", json!({})).await;
    let mut last = None;
    for _ in 0..100 {
        last = code(&start(&s2, &t, "corp").await).map(str::to_owned);
        if last.as_deref() == Some("PROVIDER_NOT_FOUND") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.as_deref(), Some("PROVIDER_NOT_FOUND"));
}

/// The provider rotates its key: a token with an unknown `kid` makes authd
/// refetch the JWKS, but at most once a minute (a stream of forged kids
/// cannot make it hammer the provider). The minute passes on authd's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_the_jwks_at_most_once_a_minute() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, Some(true)).await;
    // Fetches the JWKS (old key only).
    assert!(param(&login_via(&s, &t, "corp", "alice").await, "code").is_some());
    let rotated = reqwest::Client::new().post(format!("{}/__rotate", op.issuer)).send().await.unwrap();
    assert!(rotated.status().is_success());
    // Within the minute: the JWKS is not refetched, the new kid is unknown.
    let app = login_via(&s, &t, "corp", "alice").await;
    assert_eq!(param(&app, "error").as_deref(), Some("UNAUTHENTICATED"), "{app}");
    rejected_with(&s, &t, &admin, "id_token_unknown_key").await;
    // A minute later the unknown kid triggers a refetch, and the login works.
    s.deps().clock.advance(Duration::from_secs(61));
    let app = login_via(&s, &t, "corp", "alice").await;
    let body = exchange(&s, &t, &param(&app, "code").unwrap_or_else(|| panic!("{app}")), APP_VERIFIER).await;
    assert_eq!(body["data"]["exchangeLoginCode"]["user"]["email"], "alice@example.com", "{body}");
}

/// `authd reseal` re-seals OAuth client secrets under the new master key:
/// afterwards the old key can go and social login still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseal_moves_client_secrets_to_the_new_master_key() {
    let k1 = authd_core::crypto::MasterKey::generate().to_base64();
    let k2 = authd_core::crypto::MasterKey::generate().to_base64();
    let mut first = TestServer::start_with(Backend::Embedded, |env| {
        env.insert("AUTHD_PROVIDER_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
        env.insert("AUTHD_MASTER_KEY".into(), k1.clone());
    })
    .await;
    let t = first.tenant().await;
    let admin = admin(&first, &t, false).await;
    // The second run serves on another port: the provider accepts both callbacks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second_addr = listener.local_addr().unwrap();
    drop(listener);
    let second_callback = format!("http://{second_addr}/t/{}/oauth/corp/callback", t.slug);
    let op = OidcProvider::start(&[callback(&first, &t, "corp"), second_callback], "normal", json!({})).await;
    configure_oidc(&first, &t, &admin, "corp", &op.issuer, None).await;
    first.stop().await;

    let mut env = first.env.clone();
    env.insert("AUTHD_MASTER_KEY".into(), k2.clone());
    env.insert("AUTHD_MASTER_KEY_PREVIOUS".into(), k1.clone());
    let lookup = env.clone();
    let config = authd::config::Config::from_lookup(move |k| lookup.get(k).cloned()).unwrap();
    let deps = authd::server::build_deps(&config).await.unwrap();
    let report = authd_tenancy::reseal::reseal_all(&deps).await.unwrap();
    assert_eq!(report.oauth_client_secrets, 1, "{report:?}");
    deps.audit.flush().await;
    drop(deps);

    // The new key alone now opens the secret: the code exchange authenticates.
    env.remove("AUTHD_MASTER_KEY_PREVIOUS");
    env.insert("AUTHD_LISTEN".into(), second_addr.to_string());
    let second = TestServer::start_env(Backend::Embedded, env, std::env::temp_dir().join("authd-unused")).await;
    let app = login_via(&second, &t, "corp", "alice").await;
    assert!(param(&app, "code").is_some(), "{app}");
}

/// Provider answers are not trusted blindly: a redirect is not followed (the
/// target sees no connection), an oversized answer is not read, and a
/// discovery document naming another issuer is refused. Each is `UNAVAILABLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_redirects_oversized_answers_and_foreign_issuers_are_refused() {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/.well-known/openid-configuration", trap.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/redirecting/.well-known/openid-configuration",
            axum::routing::get(move || {
                let to = trap_url.clone();
                async move { (StatusCode::FOUND, [(header::LOCATION, to)]).into_response() }
            }),
        )
        .route(
            "/huge/.well-known/openid-configuration",
            axum::routing::get(|| async { format!("{{\"issuer\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)) }),
        )
        .route(
            "/foreign/.well-known/openid-configuration",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "issuer": "https://accounts.example.com",
                    "authorization_endpoint": "https://accounts.example.com/auth",
                    "token_endpoint": "https://accounts.example.com/token",
                    "jwks_uri": "https://accounts.example.com/jwks",
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    for name in ["redirecting", "huge", "foreign"] {
        configure_oidc(&s, &t, &admin, name, &format!("{base}/{name}"), None).await;
        let body = start(&s, &t, name).await;
        assert_eq!(code(&body), Some("UNAVAILABLE"), "{name}: {body}");
    }
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_cannot_sign_in_through_a_provider() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let app = login_via(&s, &t, "corp", "alice").await;
    let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    let id = body["data"]["exchangeLoginCode"]["user"]["id"].as_str().unwrap().to_owned();
    let off = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }",
            json!({ "u": id }),
        )
        .await;
    assert_eq!(off["data"]["setUserDisabled"]["disabled"], true, "{off}");
    let app = login_via(&s, &t, "corp", "alice").await;
    assert_eq!(param(&app, "error").as_deref(), Some("UNAUTHENTICATED"), "{app}");
    rejected_with(&s, &t, &admin, "user_disabled").await;
}

/// Two first logins of the same person at once end in one account.
async fn concurrent_first_logins(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    let (b1, b2) = (Browser::new(), Browser::new());
    let cb1 = b1.run_until(&start_url(&s, &t, "corp").await, "zed", &callback(&s, &t, "corp")).await;
    let cb2 = b2.run_until(&start_url(&s, &t, "corp").await, "zed", &callback(&s, &t, "corp")).await;
    let (a1, a2) = tokio::join!(b1.callback(&cb1), b2.callback(&cb2));
    let mut ids = Vec::new();
    for app in [a1.unwrap(), a2.unwrap()] {
        let body = exchange(&s, &t, &param(&app, "code").unwrap_or_else(|| panic!("{app}")), APP_VERIFIER).await;
        ids.push(body["data"]["exchangeLoginCode"]["user"]["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    let users = s.gql(&t.slug, Some(&admin), "{ users { edges { node { id } } } }", json!({})).await;
    assert_eq!(users["data"]["users"]["edges"].as_array().unwrap().len(), 2, "admin and one federated user");
}
both!(concurrent_first_logins_make_one_account, concurrent_first_logins);

/// GitHub's verified-emails API decides linking: an address GitHub has not
/// verified never takes over the account that has it.
async fn github_linking(backend: Backend) {
    let s = server(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    // Unverified: no email on the new account; verified: the new account has
    // the proven address; a second provider asserting it verified links into
    // that account (whose own address is proven).
    for (name, verified, with_email) in [("gh-a", false, false), ("gh-b", true, true), ("gh-c", true, true)] {
        let base =
            github_stand_in(json!([{ "email": "octocat@example.com", "primary": true, "verified": verified }])).await;
        let body = upsert(
            &s,
            &t,
            &admin,
            json!({ "name": name, "kind": "GITHUB", "clientId": "gh-client", "clientSecret": "gh-secret", "issuer": base }),
        )
        .await;
        assert!(body["errors"].is_null(), "{body}");
        let browser = Browser::new();
        let cb = browser.run_until(&start_url(&s, &t, name).await, "octocat", &callback(&s, &t, name)).await;
        let app = browser.callback(&cb).await.unwrap();
        let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
        let email = &body["data"]["exchangeLoginCode"]["user"]["email"];
        if with_email {
            assert_eq!(email, "octocat@example.com", "{body}");
        } else {
            assert!(email.is_null(), "{body}");
        }
    }
    assert_eq!(events(&s, &t, &admin, "account.linked").await.len(), 1, "gh-c linked into gh-b's account");
}
both!(github_unverified_email_is_not_linked, github_linking);

/// Each start stores a state for 10 minutes: starts are limited per IP like
/// login attempts (`loginPerIpPerMinute`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_social_logins_is_rate_limited_per_ip() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, false).await;
    let set = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation { updateTenantSettings(input: { rateLimits: { loginPerIpPerMinute: 3 } }) { audience } }",
            json!({}),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    let op = OidcProvider::start(&[callback(&s, &t, "corp")], "normal", json!({})).await;
    configure_oidc(&s, &t, &admin, "corp", &op.issuer, None).await;
    for _ in 0..3 {
        assert!(start(&s, &t, "corp").await["errors"].is_null());
    }
    let limited = start(&s, &t, "corp").await;
    assert_eq!(code(&limited), Some("RATE_LIMITED"), "{limited}");
    assert!(limited["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap() >= 1);
}

/// GOOGLE is OpenID Connect with Google's issuer preset (and its
/// `email_verified` trusted); pointed at the test provider it runs the same flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_kind_is_an_oidc_preset() {
    let s = server(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t, true).await;
    let accounts = json!({ "gina": { "email": "gina@example.com", "email_verified": true } });
    let op = OidcProvider::start(&[callback(&s, &t, "google")], "normal", accounts).await;
    let body = upsert(
        &s,
        &t,
        &admin,
        json!({ "name": "google", "kind": "GOOGLE", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "issuer": op.issuer }),
    )
    .await;
    assert_eq!(body["data"]["upsertOAuthProvider"]["trustEmailVerified"], true, "{body}");
    let app = login_via(&s, &t, "google", "gina").await;
    let body = exchange(&s, &t, &param(&app, "code").unwrap(), APP_VERIFIER).await;
    // Trusted and verified: the new account has the proven address.
    let access = body["data"]["exchangeLoginCode"]["accessToken"].as_str().unwrap_or_else(|| panic!("{body}"));
    let me = me_of(&s, &t, access).await;
    assert_eq!(me["email"], "gina@example.com", "{me}");
    assert_eq!(me["emailVerified"], true, "{me}");
}
