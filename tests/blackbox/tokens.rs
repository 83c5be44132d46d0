//! Password accounts and the token lifecycle: access tokens that
//! independent JOSE libraries verify from the JWKS, refresh rotation and reuse
//! detection, logout and sessions, cross-tenant replay, forged and expired
//! tokens, key rotation, login enumeration (counted in argon2 verifications),
//! cookie mode and CORS, and registration rules.
//!
//! The helpers at the top are shared with `admin.rs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use authd_core::TenantId;
use authd_core::claims::AccessClaims;
use authd_core::crypto::SealContext;
use authd_core::keys::{Signer, SigningKeyMaterial};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};

use crate::all;
use crate::harness::{Backend, Tenant, TestServer, code, eventually};

/// A password no policy refuses.
pub(crate) const PASSWORD: &str = "a perfectly fine passphrase";

const REFRESH: &str =
    "mutation($r: String) { refresh(refreshToken: $r) { accessToken refreshToken expiresIn user { id } } }";
const SETTINGS_FIELDS: &str = "accessTokenLifetimeMinutes signingAlgorithm audience passwordMinLength requireMfaForAdmins \
     allowedRedirectUris allowedOrigins linkByVerifiedEmail auditRetentionDays rateLimits { loginPerIpPerMinute }";

// ------------------------------------------------------------------ helpers

/// The header and claims of a compact JWS, decoded but not verified.
pub(crate) fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let decode =
        |p: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON") };
    (decode(parts[0]), decode(parts[1]))
}

pub(crate) fn claims_of(token: &str) -> Value {
    jwt_parts(token).1
}

pub(crate) fn tenant_id(t: &Tenant) -> TenantId {
    t.id.parse().expect("tenant id")
}

pub(crate) async fn me(s: &TestServer, slug: &str, token: &str) -> Value {
    s.gql(slug, Some(token), "{ me { id email role disabled } }", json!({})).await
}

/// Asserts that `token` is accepted (`me` answers) on `slug`.
pub(crate) async fn assert_accepted(s: &TestServer, slug: &str, token: &str, what: &str) {
    let body = me(s, slug, token).await;
    assert!(body["data"]["me"]["id"].is_string(), "{what}: expected the token to be accepted: {body}");
}

/// Asserts that `token` is refused with `UNAUTHENTICATED` on `slug`, by
/// `me` (which also reads the user) and by `sessions` (which relies on the
/// token and the session deny list alone).
pub(crate) async fn assert_refused(s: &TestServer, slug: &str, token: &str, what: &str) {
    let body = me(s, slug, token).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{what}: expected the token to be refused: {body}");
    let body = s.gql(slug, Some(token), "{ sessions { id } }", json!({})).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{what}: expected the token to be refused by sessions: {body}");
}

pub(crate) async fn refresh(s: &TestServer, slug: &str, token: &str) -> Value {
    s.gql(slug, None, REFRESH, json!({ "r": token })).await
}

pub(crate) async fn admin_token(s: &TestServer, t: &Tenant) -> String {
    s.login(&t.slug, &t.admin_email, &t.admin_password).await.0
}

/// Registers `email` with [`PASSWORD`]; returns the user id.
pub(crate) async fn register_user(s: &TestServer, t: &Tenant, email: &str) -> String {
    let reg = s.register(&t.slug, email, PASSWORD).await;
    reg["data"]["register"]["id"].as_str().unwrap_or_else(|| panic!("register {email} failed: {reg}")).to_owned()
}

/// Registers `email` and logs in: `(user id, access token, refresh token)`.
pub(crate) async fn user(s: &TestServer, t: &Tenant, email: &str) -> (String, String, String) {
    let id = register_user(s, t, email).await;
    let (access, refresh) = s.login(&t.slug, email, PASSWORD).await;
    (id, access, refresh)
}

pub(crate) async fn update_settings(s: &TestServer, slug: &str, admin: &str, input: Value) -> Value {
    s.gql(
        slug,
        Some(admin),
        &format!("mutation($i: TenantSettingsInput!) {{ updateTenantSettings(input: $i) {{ {SETTINGS_FIELDS} }} }}"),
        json!({ "i": input }),
    )
    .await
}

/// The tenant's settings as its admin reads them.
pub(crate) async fn settings(s: &TestServer, slug: &str, admin: &str) -> Value {
    let body = s.gql(slug, Some(admin), &format!("{{ tenantSettings {{ {SETTINGS_FIELDS} }} }}"), json!({})).await;
    assert!(body["data"]["tenantSettings"].is_object(), "{body}");
    body["data"]["tenantSettings"].clone()
}

/// Sets the settings and panics unless the change was accepted.
pub(crate) async fn set_settings(s: &TestServer, slug: &str, admin: &str, input: Value) -> Value {
    let body = update_settings(s, slug, admin, input.clone()).await;
    assert!(body["data"]["updateTenantSettings"].is_object(), "updateTenantSettings({input}) failed: {body}");
    body["data"]["updateTenantSettings"].clone()
}

/// Every user of the tenant, straight from storage.
pub(crate) async fn stored_users(s: &TestServer, t: &Tenant) -> Vec<authd_store::UserRecord> {
    s.deps().store.list_users(tenant_id(t), None, None, 10_000).await.expect("list users")
}

pub(crate) async fn audit_count(s: &TestServer, t: &Tenant, admin: &str, kind: &str) -> usize {
    s.deps().audit.flush().await;
    let body = s
        .gql(
            &t.slug,
            Some(admin),
            "query($k: String) { auditEvents(first: 100, type: $k) { edges { node { type } } } }",
            json!({ "k": kind }),
        )
        .await;
    body["data"]["auditEvents"]["edges"].as_array().unwrap_or_else(|| panic!("auditEvents failed: {body}")).len()
}

/// A POST to the tenant's GraphQL endpoint with extra headers.
pub(crate) async fn post_with(
    s: &TestServer,
    slug: &str,
    headers: &[(&str, &str)],
    query: &str,
    variables: Value,
) -> (reqwest::StatusCode, HeaderMap, Value) {
    let mut req =
        s.http.post(format!("{}/t/{slug}/graphql", s.url)).json(&json!({ "query": query, "variables": variables }));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.json().await.expect("json body"))
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().expect("ascii cookie").to_owned()).collect()
}

/// The `Set-Cookie` line for `name`, and the cookie's value.
fn cookie_named(headers: &HeaderMap, name: &str) -> (String, String) {
    let line = set_cookies(headers)
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", set_cookies(headers)));
    let value = line.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    (line, value)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

// ------------------------------------------------------------------ independent verifiers

fn scripts_dir() -> PathBuf {
    std::env::var_os("AUTHD_TEST_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

/// The venv python with PyJWT that `scripts/test.sh` installs.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AUTHD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-env/venv/bin/python");
    assert!(
        venv.exists(),
        "AUTHD_TEST_PYTHON is not set and there is no venv at {}: the independent JWT verifier (PyJWT) is missing. \
         Run `bash scripts/test.sh --setup-only` (or `eval \"$(scripts/test.sh --setup-only --keep)\"`) first.",
        venv.display()
    );
    venv
}

fn node() -> PathBuf {
    let dir = scripts_dir();
    assert!(
        dir.join("node_modules/jose").is_dir(),
        "npm jose is not installed in {}: the independent JWT verifier (jose) is missing. \
         Run `bash scripts/test.sh --setup-only` first.",
        dir.display()
    );
    std::env::var_os("AUTHD_TEST_NODE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("node"))
}

/// Runs a tool: its stdout when it exits 0, its stderr when it exits 1 (a
/// refusal). Anything else means the tool itself is broken: panic, by name.
async fn run_tool(program: PathBuf, args: Vec<String>, tool: &str) -> Result<String, String> {
    let out =
        tokio::process::Command::new(&program).args(&args).stdin(Stdio::null()).output().await.unwrap_or_else(|e| {
            panic!("cannot run {tool} with {}: {e} (run `bash scripts/test.sh --setup-only`)", program.display())
        });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8(out.stdout).expect("utf-8 output")),
        Some(1) => Err(stderr),
        _ => panic!("{tool} could not run ({}): {stderr}", out.status),
    }
}

/// PyJWT (`tests/scripts/verify_jwt.py`), given only the JWKS URL: the
/// verified claims, or why it refused.
pub(crate) async fn pyjwt_verify(jwks_url: &str, token: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    let script = scripts_dir().join("verify_jwt.py");
    assert!(script.exists(), "{} is missing", script.display());
    let args = [
        script.display().to_string(),
        "--typ".into(),
        "at+jwt".into(),
        jwks_url.into(),
        token.into(),
        issuer.into(),
        audience.into(),
    ];
    let out = run_tool(python(), args.to_vec(), "verify_jwt.py (PyJWT)").await?;
    Ok(serde_json::from_str(out.trim()).expect("verify_jwt.py prints the claims as JSON"))
}

/// npm `jose` (`tests/scripts/verify_jwt.mjs`), given only the JWKS URL.
pub(crate) async fn jose_verify(jwks_url: &str, token: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    let node = node();
    let script = scripts_dir().join("verify_jwt.mjs");
    let args = [script.display().to_string(), jwks_url.into(), token.into(), issuer.into(), audience.into()];
    let out = run_tool(node, args.to_vec(), "verify_jwt.mjs (jose)").await?;
    Ok(serde_json::from_str(out.trim()).expect("verify_jwt.mjs prints the claims as JSON"))
}

pub(crate) fn jwks_url(s: &TestServer, slug: &str) -> String {
    format!("{}/t/{slug}/.well-known/jwks.json", s.url)
}

pub(crate) async fn jwks(s: &TestServer, slug: &str) -> Value {
    s.http.get(jwks_url(s, slug)).send().await.expect("jwks").json().await.expect("jwks json")
}

fn published_kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_owned()).collect()
}

/// Signs `claims` with the tenant's stored key `kid`, opened with the
/// server's master key: a token authd could have issued, with any claims.
async fn forge(s: &TestServer, t: &Tenant, kid: &str, claims: &AccessClaims) -> String {
    let tid = tenant_id(t);
    let records = s.deps().store.signing_keys(tid).await.expect("signing keys");
    let record = records.iter().find(|r| r.kid == kid).unwrap_or_else(|| panic!("key {kid} is not stored"));
    let der = s
        .deps()
        .keyring
        .open(&record.private_key_sealed, &SealContext { tenant: tid, purpose: "signing-key", row: &record.kid })
        .expect("open the sealed signing key");
    let material = SigningKeyMaterial::from_pkcs8_der(record.algorithm, &record.kid, &der).expect("key material");
    Signer::new(&material).expect("signer").sign(claims).expect("sign")
}

// ------------------------------------------------------------------ access tokens

/// ES256 by default, then EdDSA and RS256 by tenant setting (each an
/// immediate rotation): every token is verified by PyJWT and by jose from
/// the JWKS URL alone, and carries the contract's header and claims.
async fn independent_libraries_verify_access_tokens(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let uid = register_user(&s, &t, "alice@example.com").await;
    let admin = admin_token(&s, &t).await;

    let resp = s.http.get(format!("{}/t/{}/.well-known/openid-configuration", s.url, t.slug)).send().await.unwrap();
    assert!(resp.status().is_success());
    let discovery: Value = resp.json().await.unwrap();
    assert_eq!(discovery["issuer"], t.issuer.as_str(), "{discovery}");
    assert_eq!(discovery["jwks_uri"], format!("{}/.well-known/jwks.json", t.issuer), "{discovery}");
    // The issuer is built from AUTHD_PUBLIC_URL, which in tests names port 0
    // (the listener's configured address), so fetch the JWKS where the server
    // really listens.
    let jwks_uri = jwks_url(&s, &t.slug);

    let mut earlier: Vec<(String, String)> = Vec::new();
    for (setting, alg) in [(None, "ES256"), (Some("EDDSA"), "EdDSA"), (Some("RS256"), "RS256")] {
        if let Some(setting) = setting {
            let saved = set_settings(&s, &t.slug, &admin, json!({ "signingAlgorithm": setting })).await;
            assert_eq!(saved["signingAlgorithm"], setting);
        }
        let body = s.login_raw(&t.slug, "alice@example.com", PASSWORD).await;
        let tokens = &body["data"]["login"];
        assert_eq!(tokens["__typename"], "AuthTokens", "{body}");
        assert_eq!(tokens["tokenType"], "Bearer");
        assert_eq!(tokens["expiresIn"], 900, "15 minutes by default: {body}");
        let access = tokens["accessToken"].as_str().unwrap().to_owned();
        let refresh_token = tokens["refreshToken"].as_str().expect("refresh token in the body");
        // Opaque, at least 256 bits.
        assert!(URL_SAFE_NO_PAD.decode(refresh_token).map(|b| b.len() >= 32).unwrap_or(refresh_token.len() >= 43));

        let (header, claims) = jwt_parts(&access);
        assert_eq!(header["alg"], alg, "{header}");
        assert_eq!(header["typ"], "at+jwt", "{header}");
        let kid = header["kid"].as_str().expect("kid in the header");
        let set = jwks(&s, &t.slug).await;
        let jwk = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("{kid} not in {set}"));
        assert_eq!(jwk["alg"], alg, "{jwk}");
        assert!(jwk.get("d").is_none() && jwk.get("p").is_none(), "private parts published: {jwk}");

        assert_eq!(claims["iss"], t.issuer.as_str(), "{claims}");
        assert_eq!(claims["sub"], uid.as_str());
        assert_eq!(claims["aud"], t.slug.as_str(), "the audience defaults to the slug");
        assert_eq!(claims["tid"], t.id.as_str());
        for uuid in ["sid", "jti"] {
            uuid::Uuid::parse_str(claims[uuid].as_str().unwrap_or_default())
                .unwrap_or_else(|_| panic!("{uuid}: {claims}"));
        }
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
        assert_eq!(claims["amr"], json!(["pwd"]));
        assert_eq!(claims["role"], "user");

        let py = pyjwt_verify(&jwks_uri, &access, &t.issuer, &t.slug)
            .await
            .unwrap_or_else(|e| panic!("PyJWT refused a {alg} access token: {e}"));
        assert_eq!(py["jti"], claims["jti"]);
        let js = jose_verify(&jwks_uri, &access, &t.issuer, &t.slug)
            .await
            .unwrap_or_else(|e| panic!("jose refused a {alg} access token: {e}"));
        assert_eq!(js["sub"], uid.as_str());
        // The verifiers have teeth: another audience is refused.
        pyjwt_verify(&jwks_uri, &access, &t.issuer, "someone-else").await.expect_err("PyJWT accepted a wrong audience");
        earlier.push((alg.to_owned(), access));
    }
    // Keys rotated away stay published: every earlier token still verifies,
    // independently and at authd.
    for (alg, token) in &earlier {
        pyjwt_verify(&jwks_uri, token, &t.issuer, &t.slug)
            .await
            .unwrap_or_else(|e| panic!("the {alg} token no longer verifies after later rotations: {e}"));
        assert_accepted(&s, &t.slug, token, alg).await;
    }
}
all!(
    independent_jose_libraries_verify_es256_eddsa_and_rs256_tokens_from_the_jwks,
    independent_libraries_verify_access_tokens
);

async fn jwks_and_discovery_are_cacheable(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    for path in ["jwks.json", "openid-configuration"] {
        let resp = s.http.get(format!("{}/t/{}/.well-known/{path}", s.url, t.slug)).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let cache = header_str(resp.headers(), "cache-control")
            .unwrap_or_else(|| panic!("{path}: no Cache-Control"))
            .to_owned();
        let max_age: u64 = cache
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no max-age in {cache:?}"));
        assert!(max_age > 0, "{path}: {cache}");
        assert!(cache.contains("public"), "{path}: {cache}");
        let body: Value = resp.json().await.unwrap();
        if path == "openid-configuration" {
            // ID tokens: the tenant's algorithm; access tokens: any a key of it may have.
            assert_eq!(body["id_token_signing_alg_values_supported"], json!(["ES256"]), "{body}");
            for alg in ["ES256", "EdDSA", "RS256"] {
                assert!(
                    body["access_token_signing_alg_values_supported"].as_array().unwrap().iter().any(|a| a == alg),
                    "{body}"
                );
            }
        } else {
            assert_eq!(body["keys"].as_array().map(Vec::len), Some(1), "a new tenant publishes its one key: {body}");
        }
    }
    let unknown = s.http.get(format!("{}/t/no-such-tenant/.well-known/jwks.json", s.url)).send().await.unwrap();
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(code(&body), Some("TENANT_NOT_FOUND"), "{body}");
}
all!(jwks_and_openid_configuration_are_served_with_cache_headers, jwks_and_discovery_are_cacheable);

/// `rotateSigningKey` publishes the next key before it signs; `immediate`
/// (a compromised key) makes the new key sign at once and takes every older
/// key out of the JWKS and out of verification.
async fn key_rotation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    register_user(&s, &t, "alice@example.com").await;
    let admin = admin_token(&s, &t).await;
    let (old_token, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    let k0 = jwt_parts(&old_token).0["kid"].as_str().unwrap().to_owned();
    assert_eq!(published_kids(&jwks(&s, &t.slug).await), vec![k0.clone()]);

    const ROTATE: &str =
        "mutation($i: Boolean) { rotateSigningKey(immediate: $i) { kid algorithm createdAt activatesAt } }";
    let body = s.gql(&t.slug, Some(&admin), ROTATE, json!({ "i": false })).await;
    let next = &body["data"]["rotateSigningKey"];
    let k1 = next["kid"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert_eq!(next["algorithm"], "ES256");
    let created = chrono::DateTime::parse_from_rfc3339(next["createdAt"].as_str().unwrap()).unwrap();
    let activates = chrono::DateTime::parse_from_rfc3339(next["activatesAt"].as_str().unwrap()).unwrap();
    assert!(activates > created, "a scheduled key activates later: {next}");
    let kids = published_kids(&jwks(&s, &t.slug).await);
    assert!(kids.contains(&k0) && kids.contains(&k1), "the next key is published before it signs: {kids:?}");
    let (token, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    assert_eq!(jwt_parts(&token).0["kid"], k0.as_str(), "the next key must not sign yet");

    let body = s.gql(&t.slug, Some(&admin), ROTATE, json!({ "i": true })).await;
    let k2 = body["data"]["rotateSigningKey"]["kid"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let (new_token, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    assert_eq!(jwt_parts(&new_token).0["kid"], k2.as_str(), "an immediate rotation signs at once");
    assert_eq!(published_kids(&jwks(&s, &t.slug).await), vec![k2.clone()], "only the new key is published");
    assert_refused(&s, &t.slug, &old_token, "a token of the compromised key").await;
    assert_refused(&s, &t.slug, &admin, "the admin's token of the compromised key").await;
    assert_accepted(&s, &t.slug, &new_token, "a token of the new key").await;
    let url = jwks_url(&s, &t.slug);
    assert!(pyjwt_verify(&url, &old_token, &t.issuer, &t.slug).await.is_err(), "old token fails from the JWKS");
    pyjwt_verify(&url, &new_token, &t.issuer, &t.slug).await.expect("new token verifies from the JWKS");
    let admin = admin_token(&s, &t).await;
    assert_eq!(audit_count(&s, &t, &admin, "key.rotated").await, 2);
}
all!(rotate_signing_key_publishes_the_next_key_before_it_signs, key_rotation);

/// How long a change pushed over Redis may take to reach another replica.
const PUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// An immediate rotation on one replica refuses the old key's tokens on the
/// other replicas too (they hear of it over Redis, not at their next
/// periodic reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_rotation_refuses_the_old_key_on_every_replica() {
    let s1 = TestServer::start(Backend::Production).await;
    let t = s1.tenant().await;
    register_user(&s1, &t, "alice@example.com").await;
    let s2 = second_replica(&s1).await;
    let (old_token, _) = s1.login(&t.slug, "alice@example.com", PASSWORD).await;
    assert_accepted(&s2, &t.slug, &old_token, "on the second replica before the rotation").await;
    let admin = admin_token(&s1, &t).await;
    let body = s1.gql(&t.slug, Some(&admin), "mutation { rotateSigningKey(immediate: true) { kid } }", json!({})).await;
    let k2 = body["data"]["rotateSigningKey"]["kid"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert_refused(&s1, &t.slug, &old_token, "on the rotating replica, at once").await;
    let refused = eventually(PUSH, || async {
        code(&s2.gql(&t.slug, Some(&old_token), "{ me { id } }", json!({})).await) == Some("UNAUTHENTICATED")
    })
    .await;
    assert!(refused, "the second replica still accepts the compromised key after 2 s");
    assert_eq!(published_kids(&jwks(&s2, &t.slug).await), vec![k2]);
}

/// Settings changed and a tenant disabled on one replica reach another at
/// once over Redis pub/sub, not at its change feed's next look (ten minutes
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_tenant_state_reach_other_replicas_without_the_change_feed() {
    let s1 = TestServer::start(Backend::Production).await;
    let t = s1.tenant().await;
    let s2 = second_replica(&s1).await;
    let admin = admin_token(&s1, &t).await;
    let settings = "{ tenantSettings { passwordMinLength } }";
    // The second replica runs the tenant (its snapshot is loaded) first.
    let before = s2.gql(&t.slug, Some(&admin), settings, json!({})).await;
    let old = before["data"]["tenantSettings"]["passwordMinLength"].as_i64().unwrap_or_else(|| panic!("{before}"));
    let new = old + 3;
    let set =
        format!("mutation {{ updateTenantSettings(input: {{passwordMinLength: {new}}}) {{ passwordMinLength }} }}");
    let body = s1.gql(&t.slug, Some(&admin), &set, json!({})).await;
    assert_eq!(body["data"]["updateTenantSettings"]["passwordMinLength"], new, "{body}");
    let seen = eventually(PUSH, || async {
        s2.gql(&t.slug, Some(&admin), settings, json!({})).await["data"]["tenantSettings"]["passwordMinLength"] == new
    })
    .await;
    assert!(seen, "the second replica still has the old settings after 2 s");
    let off = s1
        .platform(
            "mutation($s: String!) { setTenantDisabled(slug: $s, disabled: true) { disabled } }",
            json!({ "s": t.slug }),
        )
        .await;
    assert_eq!(off["data"]["setTenantDisabled"]["disabled"], true, "{off}");
    let refused = eventually(PUSH, || async {
        code(&s2.gql(&t.slug, Some(&admin), "{ me { id } }", json!({})).await) == Some("TENANT_DISABLED")
    })
    .await;
    assert!(refused, "the second replica still serves a disabled tenant after 2 s");
}

/// A second replica of `s1` (same Postgres, Redis and public URL) whose
/// change feed looks only every ten minutes: whatever it learns in a test,
/// it learns by push.
async fn second_replica(s1: &TestServer) -> TestServer {
    s1.replica(|env| {
        env.insert("AUTHD_PUBLIC_URL".into(), s1.url.clone());
        env.insert("AUTHD_TENANT_REFRESH_MS".into(), "600000".into());
    })
    .await
}

/// Replica 2 remembers that sessions are live and what the user's row holds
/// (so its `me` needs no round trip); a logout, a logout everywhere, a
/// refresh-token reuse and a user change made on replica 1 are then seen by
/// replica 2's very next request, without polling and without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_user_changes_on_one_replica_hold_on_the_other_at_once() {
    let s1 = TestServer::start(Backend::Production).await;
    let t = s1.tenant().await;
    let s2 = second_replica(&s1).await;
    let alice = register_user(&s1, &t, "alice@example.com").await;
    let (a1, r1) = s1.login(&t.slug, "alice@example.com", PASSWORD).await;
    let (a2, r2) = s1.login(&t.slug, "alice@example.com", PASSWORD).await;
    let (a3, _) = s1.login(&t.slug, "alice@example.com", PASSWORD).await;
    let (_, b1, _) = user(&s1, &t, "bob@example.com").await;
    for _ in 0..3 {
        for token in [&a1, &a2, &a3, &b1] {
            assert_accepted(&s2, &t.slug, token, "on replica 2 before any change").await;
        }
    }
    // Logout of one session.
    let body = s1.gql(&t.slug, None, "mutation($r: String) { logout(refreshToken: $r) }", json!({ "r": r1 })).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_refused(&s2, &t.slug, &a1, "a logged-out session on replica 2").await;
    assert_accepted(&s2, &t.slug, &a2, "another session of the same user").await;
    // Refresh-token reuse revokes the session inside the rotation script.
    let body = refresh(&s1, &t.slug, &r2).await;
    assert!(body["data"]["refresh"]["accessToken"].is_string(), "{body}");
    let body = refresh(&s1, &t.slug, &r2).await;
    assert_eq!(code(&body), Some("TOKEN_REUSED"), "{body}");
    assert_refused(&s2, &t.slug, &a2, "a session revoked for reuse, on replica 2").await;
    // A user change: replica 2's next `me` shows it.
    let admin = admin_token(&s1, &t).await;
    let set_role = "mutation($u: ID!) { setUserRole(userId: $u, role: ADMIN) { role } }";
    let body = s1.gql(&t.slug, Some(&admin), set_role, json!({ "u": alice })).await;
    assert_eq!(body["data"]["setUserRole"]["role"], "ADMIN", "{body}");
    let body = me(&s2, &t.slug, &a3).await;
    assert_eq!(body["data"]["me"]["role"], "ADMIN", "replica 2 still shows the old row: {body}");
    // Disabling the user: refused at once on replica 2.
    let disable = "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }";
    let body = s1.gql(&t.slug, Some(&admin), disable, json!({ "u": alice })).await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], true, "{body}");
    assert_refused(&s2, &t.slug, &a3, "a disabled user's token on replica 2").await;
    // Logout everywhere, made on replica 2 this time, holds on replica 1.
    assert_accepted(&s1, &t.slug, &b1, "bob on replica 1").await;
    let body = s2.gql(&t.slug, Some(&b1), "mutation { logoutAll }", json!({})).await;
    assert!(body["data"]["logoutAll"].is_number(), "{body}");
    assert_refused(&s1, &t.slug, &b1, "bob after logging out everywhere, on replica 1").await;
}

// ------------------------------------------------------------------ refresh and sessions

/// Every use rotates; presenting a rotated token again is theft: that call
/// says `TOKEN_REUSED` and revokes the session (its newest refresh token and
/// its access tokens). Once the session is gone, any of its tokens is just
/// `UNAUTHENTICATED`. Other sessions of the user are untouched.
async fn refresh_rotation_and_reuse(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (uid, a0, r0) = user(&s, &t, "alice@example.com").await;
    let (other_access, other_refresh) = s.login(&t.slug, "alice@example.com", PASSWORD).await;

    let body = refresh(&s, &t.slug, &r0).await;
    let a1 = body["data"]["refresh"]["accessToken"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let r1 = body["data"]["refresh"]["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(r1, r0, "refresh rotates the token");
    assert_eq!(body["data"]["refresh"]["user"]["id"], uid.as_str());
    assert_eq!(claims_of(&a1)["sid"], claims_of(&a0)["sid"], "the session stays the same");
    assert_accepted(&s, &t.slug, &a1, "the refreshed access token").await;

    let body = refresh(&s, &t.slug, &r1).await;
    let r2 = body["data"]["refresh"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("the new token refreshes: {body}"))
        .to_owned();
    let a2 = body["data"]["refresh"]["accessToken"].as_str().unwrap().to_owned();

    let reused = refresh(&s, &t.slug, &r0).await;
    assert_eq!(code(&reused), Some("TOKEN_REUSED"), "{reused}");
    assert!(reused["data"].is_null() || reused["data"]["refresh"].is_null(), "{reused}");

    // The whole session is revoked.
    let body = refresh(&s, &t.slug, &r2).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "the newest refresh token of a revoked session: {body}");
    for (what, token) in [("a0", &a0), ("a1", &a1), ("a2", &a2)] {
        assert_refused(&s, &t.slug, token, what).await;
    }
    let again = refresh(&s, &t.slug, &r0).await;
    assert_eq!(code(&again), Some("UNAUTHENTICATED"), "the family is gone: {again}");

    // A token names its session, but naming it is not enough: an altered
    // token (an earlier generation, someone else's MAC) is unknown and
    // revokes nothing.
    let parts: Vec<&str> = other_refresh.split('.').collect();
    assert_eq!(parts.len(), 4, "{other_refresh}");
    let mac_of_r2 = r2.rsplit('.').next().unwrap();
    for forged in [
        format!("{}.0.{}.{}", parts[0], parts[2], parts[3]),
        format!("{}.{}.{}.{mac_of_r2}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}.{}", claims_of(&a0)["sid"].as_str().unwrap().replace('-', ""), parts[1], parts[2], parts[3]),
    ] {
        let body = refresh(&s, &t.slug, &forged).await;
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{forged}: {body}");
    }

    // The user's other session lives on.
    assert_accepted(&s, &t.slug, &other_access, "another session").await;
    let body = refresh(&s, &t.slug, &other_refresh).await;
    assert!(body["data"]["refresh"]["accessToken"].is_string(), "{body}");

    let admin = admin_token(&s, &t).await;
    assert_eq!(audit_count(&s, &t, &admin, "refresh.reuse_detected").await, 1);

    for garbage in ["", "x", &"y".repeat(300)] {
        let body = refresh(&s, &t.slug, garbage).await;
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{garbage:?}: {body}");
    }
}
all!(refresh_rotates_and_reuse_revokes_the_whole_session, refresh_rotation_and_reuse);

/// Eight concurrent refreshes with one token: the rotation is atomic, so
/// exactly one succeeds; exactly one of the others detects the reuse
/// (`TOKEN_REUSED`, revoking the session) and the rest find the session gone
/// (`UNAUTHENTICATED`). Afterwards nothing of the session works.
async fn concurrent_refresh(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, access, r0) = user(&s, &t, "alice@example.com").await;
    let calls = (0..8).map(|_| refresh(&s, &t.slug, &r0));
    let results = futures::future::join_all(calls).await;
    let winners: Vec<&Value> = results.iter().filter(|b| b["data"]["refresh"]["accessToken"].is_string()).collect();
    let codes: Vec<Option<&str>> = results.iter().map(code).collect();
    assert_eq!(winners.len(), 1, "exactly one refresh wins: {codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == Some("TOKEN_REUSED")).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == Some("UNAUTHENTICATED")).count(), 6, "{codes:?}");
    let won = &winners[0]["data"]["refresh"];
    let body = refresh(&s, &t.slug, won["refreshToken"].as_str().unwrap()).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "the winner's token belongs to the revoked session: {body}");
    assert_refused(&s, &t.slug, won["accessToken"].as_str().unwrap(), "the winner's access token").await;
    assert_refused(&s, &t.slug, &access, "the first access token").await;
    let admin = admin_token(&s, &t).await;
    assert_eq!(audit_count(&s, &t, &admin, "refresh.reuse_detected").await, 1);
}
all!(concurrent_refresh_with_one_token_has_exactly_one_winner, concurrent_refresh);

async fn logout_revokes_the_session(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, access, refresh_token) = user(&s, &t, "alice@example.com").await;
    let (other_access, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;

    const LOGOUT: &str = "mutation($r: String) { logout(refreshToken: $r) }";
    let body = s.gql(&t.slug, None, LOGOUT, json!({ "r": refresh_token })).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_refused(&s, &t.slug, &access, "the access token of a logged-out session").await;
    let body = refresh(&s, &t.slug, &refresh_token).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
    let body = s.gql(&t.slug, None, LOGOUT, json!({ "r": refresh_token })).await;
    assert_eq!(body["data"]["logout"], false, "a second logout revokes nothing: {body}");

    // Without an argument: the caller's own session, by bearer token.
    assert_accepted(&s, &t.slug, &other_access, "the other session").await;
    let body = s.gql(&t.slug, Some(&other_access), LOGOUT, json!({})).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_refused(&s, &t.slug, &other_access, "after logout by bearer").await;
    let body = s.gql(&t.slug, None, LOGOUT, json!({})).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "logout with nothing to go on: {body}");
}
all!(logout_refuses_the_old_access_token_and_refresh_token, logout_revokes_the_session);

/// Logging out with a refresh token that its session already rotated away
/// (someone else refreshed with a copy) ends the whole session, as reuse
/// does, instead of answering `false` and leaving it alive.
async fn logout_with_a_rotated_away_token(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, _, r0) = user(&s, &t, "alice@example.com").await;
    let body = refresh(&s, &t.slug, &r0).await;
    let a1 = body["data"]["refresh"]["accessToken"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let r1 = body["data"]["refresh"]["refreshToken"].as_str().unwrap().to_owned();
    const LOGOUT: &str = "mutation($r: String) { logout(refreshToken: $r) }";
    let body = s.gql(&t.slug, None, LOGOUT, json!({ "r": r0 })).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_refused(&s, &t.slug, &a1, "the family's current access token").await;
    assert_eq!(code(&refresh(&s, &t.slug, &r1).await), Some("UNAUTHENTICATED"), "the family's current refresh token");
}
all!(logout_with_a_rotated_away_refresh_token_ends_its_session, logout_with_a_rotated_away_token);

/// A refresh token issued by a build from before tokens named their session
/// (43 random characters, kept in Redis as its keyed hash under `rt:`)
/// keeps working after the upgrade: it refreshes once, into a token of the
/// current format for the same session, and presented again it is a reuse
/// that ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_from_before_named_tokens_keeps_working() {
    let key = authd_core::crypto::MasterKey::generate();
    let s = TestServer::start_with(Backend::Production, |env| {
        drop(env.insert("AUTHD_MASTER_KEY".into(), key.to_base64()));
    })
    .await;
    let t = s.tenant().await;
    let (uid, _, _) = user(&s, &t, "alice@example.com").await;
    // The session as the earlier build wrote it.
    let legacy = authd_core::crypto::random_token(32);
    let hash = authd_core::crypto::Keyring::from(key).keyed_hash("refresh-token", legacy.as_bytes());
    let sid = authd_core::SessionId::new().to_string();
    let ns = format!("{}:{{{}}}:", s.redis_prefix.as_deref().unwrap(), t.id);
    let now = chrono::Utc::now().timestamp().to_string();
    let client = redis::Client::open(crate::harness::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut seed = redis::pipe();
    seed.cmd("HSET")
        .arg(format!("{ns}sess:{sid}"))
        .arg(&["user", uid.as_str(), "created", &now, "last_used", &now, "amr", r#"["pwd"]"#, "rt", &hash])
        .cmd("PEXPIRE")
        .arg(format!("{ns}sess:{sid}"))
        .arg(600_000)
        .cmd("SET")
        .arg(format!("{ns}rt:{hash}"))
        .arg(&sid)
        .arg("PX")
        .arg(600_000)
        .cmd("ZADD")
        .arg(format!("{ns}fam:{sid}"))
        .arg(i64::MAX / 2)
        .arg(&hash)
        .cmd("SADD")
        .arg(format!("{ns}usess:{uid}"))
        .arg(&sid);
    seed.query_async::<()>(&mut conn).await.unwrap();

    let body = refresh(&s, &t.slug, &legacy).await;
    let r1 = body["data"]["refresh"]["refreshToken"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let a1 = body["data"]["refresh"]["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&a1)["sid"], sid.as_str(), "the same session");
    assert_eq!(r1.split('.').count(), 4, "a token of the current format: {r1}");
    let body = refresh(&s, &t.slug, &r1).await;
    let r2 = body["data"]["refresh"]["refreshToken"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let reused = refresh(&s, &t.slug, &legacy).await;
    assert_eq!(code(&reused), Some("TOKEN_REUSED"), "{reused}");
    assert_eq!(code(&refresh(&s, &t.slug, &r2).await), Some("UNAUTHENTICATED"), "the session is gone");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}*{sid}*")).query_async(&mut conn).await.unwrap();
    // Its refresh limit's counter expires on its own.
    keys.retain(|k| !k.starts_with(&format!("{ns}rl:")));
    assert_eq!(keys, [format!("{ns}deny:{sid}")], "nothing of the session is left but its deny entry");
}

/// After a master-key rotation (`AUTHD_MASTER_KEY_PREVIOUS` set), a refresh
/// token issued under the old key still logs its session out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_finds_sessions_under_a_previous_master_key() {
    let k1 = authd_core::crypto::MasterKey::generate().to_base64();
    let k2 = authd_core::crypto::MasterKey::generate().to_base64();
    let mut first =
        TestServer::start_with(Backend::Production, |env| drop(env.insert("AUTHD_MASTER_KEY".into(), k1.clone())))
            .await;
    let t = first.tenant().await;
    let (_, access, refresh_token) = user(&first, &t, "alice@example.com").await;
    first.stop().await;
    let mut env = first.env.clone();
    env.insert("AUTHD_MASTER_KEY".into(), k2);
    env.insert("AUTHD_MASTER_KEY_PREVIOUS".into(), k1);
    // The same address (so the same issuer) as the first run.
    env.insert("AUTHD_LISTEN".into(), first.url.trim_start_matches("http://").to_owned());
    let second = TestServer::start_env(Backend::Production, env, std::env::temp_dir().join("authd-unused")).await;
    assert_accepted(&second, &t.slug, &access, "before logout").await;
    let body = second
        .gql(&t.slug, None, "mutation($r: String) { logout(refreshToken: $r) }", json!({ "r": refresh_token }))
        .await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_refused(&second, &t.slug, &access, "after logout").await;
    assert_eq!(code(&refresh(&second, &t.slug, &refresh_token).await), Some("UNAUTHENTICATED"));
}

async fn logout_all_and_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, a1, _) = user(&s, &t, "alice@example.com").await;
    let (a2, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    let (a3, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    let (_, bob, _) = user(&s, &t, "bob@example.com").await;

    let body =
        s.gql(&t.slug, Some(&a2), "{ sessions { id createdAt lastUsedAt userAgent ip current } }", json!({})).await;
    let sessions = body["data"]["sessions"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(sessions.len(), 3, "{body}");
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{body}");
    assert_eq!(current[0]["id"], claims_of(&a2)["sid"], "the session id is the token's sid");
    assert_eq!(current[0]["ip"], "127.0.0.1");

    // Revoking another user's session: false, and it keeps working.
    let bob_sid = claims_of(&bob)["sid"].as_str().unwrap().to_owned();
    const REVOKE: &str = "mutation($id: ID!) { revokeSession(id: $id) }";
    let body = s.gql(&t.slug, Some(&a1), REVOKE, json!({ "id": bob_sid })).await;
    assert_eq!(body["data"]["revokeSession"], false, "{body}");
    assert_accepted(&s, &t.slug, &bob, "bob's session after alice tried to revoke it").await;
    let body = s.gql(&t.slug, Some(&a1), REVOKE, json!({ "id": "not-a-session" })).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "id");

    // Revoking one's own other session.
    let body = s.gql(&t.slug, Some(&a1), REVOKE, json!({ "id": claims_of(&a3)["sid"] })).await;
    assert_eq!(body["data"]["revokeSession"], true, "{body}");
    assert_refused(&s, &t.slug, &a3, "a revoked session").await;

    let body = s.gql(&t.slug, Some(&a1), "mutation { logoutAll }", json!({})).await;
    assert_eq!(body["data"]["logoutAll"], 2, "two live sessions were left: {body}");
    assert_refused(&s, &t.slug, &a1, "after logoutAll").await;
    assert_refused(&s, &t.slug, &a2, "after logoutAll").await;
    assert_accepted(&s, &t.slug, &bob, "another user's session after logoutAll").await;
}
all!(logout_all_counts_and_sessions_mark_the_current_one, logout_all_and_sessions);

// ------------------------------------------------------------------ refused tokens

/// A token of tenant A is refused on tenant B's route, also when B's
/// audience is configured identical to A's.
async fn cross_tenant_replay(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let (_, token, _) = user(&s, &a, "alice@example.com").await;
    assert_accepted(&s, &a.slug, &token, "on its own tenant").await;
    assert_refused(&s, &b.slug, &token, "replayed on another tenant").await;

    for t in [&a, &b] {
        let admin = admin_token(&s, t).await;
        set_settings(&s, &t.slug, &admin, json!({ "audience": "https://api.shared.example.com" })).await;
    }
    let (token, _) = s.login(&a.slug, "alice@example.com", PASSWORD).await;
    assert_eq!(claims_of(&token)["aud"], "https://api.shared.example.com");
    assert_accepted(&s, &a.slug, &token, "with the shared audience").await;
    assert_refused(&s, &b.slug, &token, "replayed on a tenant with the same audience").await;
    // Even signed by B's own key, A's tid and iss are refused at B.
    let mut claims: AccessClaims = serde_json::from_value(claims_of(&token)).unwrap();
    let b_kid = published_kids(&jwks(&s, &b.slug).await).remove(0);
    claims.jti = uuid::Uuid::new_v4();
    let forged = forge(&s, &b, &b_kid, &claims).await;
    assert_refused(&s, &b.slug, &forged, "A's claims under B's key").await;
}
all!(a_token_of_one_tenant_is_refused_by_another, cross_tenant_replay);

/// `alg: none` and HS256 keyed with the tenant's public key (taken from the
/// JWKS, as an attacker would) are refused.
async fn alg_none_and_hmac_confusion(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, token, _) = user(&s, &t, "alice@example.com").await;
    assert_accepted(&s, &t.slug, &token, "the genuine token").await;
    let (header, _) = jwt_parts(&token);
    let kid = header["kid"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let signature = token.split('.').nth(2).unwrap();

    for alg in ["none", "None", "NONE"] {
        let h = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "at+jwt", "kid": kid }).to_string());
        for sig in ["", signature] {
            assert_refused(&s, &t.slug, &format!("{h}.{payload}.{sig}"), &format!("alg {alg}")).await;
        }
    }

    let set = jwks(&s, &t.slug).await;
    let jwk = set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone();
    const HMAC_FORGER: &str = r#"
import base64, hashlib, hmac, json, sys
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
jwk_text, payload = sys.argv[1], sys.argv[2]
jwk = json.loads(jwk_text)
key = ECAlgorithm.from_jwk(jwk_text)
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secrets = [
    key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
    jwk_text.encode(),
    json.dumps(jwk).encode(),
]
for alg, digest in [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)]:
    header = b64(json.dumps({"alg": alg, "typ": "at+jwt", "kid": jwk["kid"]}).encode())
    for secret in secrets:
        sig = hmac.new(secret, (header + "." + payload).encode(), digest).digest()
        print(header + "." + payload + "." + b64(sig))
"#;
    let out = run_tool(
        python(),
        vec!["-c".into(), HMAC_FORGER.into(), jwk.to_string(), payload.into()],
        "HMAC forger (python)",
    )
    .await
    .unwrap_or_else(|e| panic!("the HMAC forger failed: {e}"));
    let forged: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(forged.len(), 15);
    for f in forged {
        assert_refused(&s, &t.slug, f, &format!("HMAC with the public key: {}", jwt_parts(f).0)).await;
    }
    assert_accepted(&s, &t.slug, &token, "the genuine token, still").await;
}
all!(alg_none_and_hs256_keyed_with_the_public_key_are_refused, alg_none_and_hmac_confusion);

/// Tokens signed with the tenant's real key but with bad claims: expired,
/// another issuer, another audience, another tenant id. The control, same
/// key and good claims, is accepted, so each refusal is the claim's.
async fn forged_claims(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (_, token, _) = user(&s, &t, "alice@example.com").await;
    let kid = jwt_parts(&token).0["kid"].as_str().unwrap().to_owned();
    let genuine: AccessClaims = serde_json::from_value(claims_of(&token)).unwrap();
    let now = chrono::Utc::now().timestamp();
    let with = |f: &dyn Fn(&mut AccessClaims)| {
        let mut c = genuine.clone();
        c.jti = uuid::Uuid::new_v4();
        f(&mut c);
        c
    };

    let control = forge(&s, &t, &kid, &with(&|_| {})).await;
    assert_accepted(&s, &t.slug, &control, "re-signed genuine claims").await;

    let expired = forge(
        &s,
        &t,
        &kid,
        &with(&|c| {
            c.iat = now - 1000;
            c.exp = now - 60;
        }),
    )
    .await;
    assert_refused(&s, &t.slug, &expired, "expired a minute ago").await;
    let err = pyjwt_verify(&jwks_url(&s, &t.slug), &expired, &t.issuer, &t.slug).await.expect_err("PyJWT accepted it");
    assert!(err.contains("Expired"), "{err}");

    type Change<'a> = &'a dyn Fn(&mut AccessClaims);
    let cases: [(&str, Change); 4] = [
        ("another issuer", &|c| c.iss = format!("{}x", c.iss)),
        ("another audience", &|c| c.aud = "someone-else".into()),
        ("another tenant id", &|c| c.tid = uuid::Uuid::new_v4()),
        ("an unknown role", &|c| c.role = "root".into()),
    ];
    for (what, change) in cases {
        let forged = forge(&s, &t, &kid, &with(change)).await;
        assert_refused(&s, &t.slug, &forged, what).await;
    }
}
all!(expired_and_misaddressed_tokens_signed_with_the_real_key_are_refused, forged_claims);

async fn disabled_users(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let (uid, access, refresh_token) = user(&s, &t, "alice@example.com").await;
    let admin = admin_token(&s, &t).await;
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }",
            json!({ "u": uid }),
        )
        .await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], true, "{body}");
    assert_refused(&s, &t.slug, &access, "a disabled user's access token").await;
    let body = refresh(&s, &t.slug, &refresh_token).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
    let body = s.login_raw(&t.slug, "alice@example.com", PASSWORD).await;
    assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "{body}");

    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: false) { disabled } }",
            json!({ "u": uid }),
        )
        .await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], false, "{body}");
    let (fresh, _) = s.login(&t.slug, "alice@example.com", PASSWORD).await;
    assert_accepted(&s, &t.slug, &fresh, "after re-enabling").await;
    assert_refused(&s, &t.slug, &access, "the old token stays revoked").await;
}
all!(a_disabled_users_tokens_are_refused_and_login_fails, disabled_users);

/// Disabling wins the race with logins in flight: however the logins and the
/// disable interleave, no session of the user survives it.
async fn disable_race(backend: Backend) {
    // Hashing slow enough that the disable lands while logins that already
    // read the (still enabled) user wait for their password check.
    let s = std::sync::Arc::new(
        TestServer::start_with(backend, |env| drop(env.insert("AUTHD_ARGON2_ITERATIONS".into(), "300".into()))).await,
    );
    let t = s.tenant().await;
    let (uid, _, _) = user(&s, &t, "racer@example.com").await;
    let admin = admin_token(&s, &t).await;
    let mut logins = Vec::new();
    for _ in 0..16 {
        let (s, slug) = (s.clone(), t.slug.clone());
        logins.push(tokio::spawn(async move { s.login_raw(&slug, "racer@example.com", PASSWORD).await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }",
            json!({ "u": uid }),
        )
        .await;
    assert_eq!(body["data"]["setUserDisabled"]["disabled"], true, "{body}");
    let mut signed_in = 0;
    for login in logins {
        let body = login.await.unwrap();
        let Some(token) = body["data"]["login"]["accessToken"].as_str() else { continue };
        signed_in += 1;
        for query in ["{ sessions { id } }", "{ me { id } }"] {
            let answer = s.gql(&t.slug, Some(token), query, json!({})).await;
            assert_eq!(code(&answer), Some("UNAUTHENTICATED"), "a session outlived the disable: {answer}");
        }
        let answer = s.gql(&t.slug, Some(token), "mutation { logoutAll }", json!({})).await;
        assert_eq!(code(&answer), Some("UNAUTHENTICATED"), "{answer}");
    }
    eprintln!("{signed_in} logins got tokens across the disable");
}
all!(disabling_a_user_wins_the_race_with_logins_in_flight, disable_race);

// ------------------------------------------------------------------ enumeration

/// Unknown email, wrong password and disabled user: the same code and
/// message, and exactly one argon2 verification each (a success too).
async fn login_failures_look_alike(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    register_user(&s, &t, "alice@example.com").await;
    let bob = register_user(&s, &t, "bob@example.com").await;
    let admin = admin_token(&s, &t).await;
    let body = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { id } }",
            json!({ "u": bob }),
        )
        .await;
    assert!(body["data"]["setUserDisabled"].is_object(), "{body}");

    let tid = tenant_id(&t);
    let stats = s.deps().hasher.stats();
    let mut messages = Vec::new();
    for (what, email, password) in [
        ("unknown email", "nobody@example.com", PASSWORD),
        ("unknown email, again", "nobody-else@example.com", "another passphrase entirely"),
        ("wrong password", "alice@example.com", "not alice's passphrase"),
        ("disabled user, right password", "bob@example.com", PASSWORD),
        ("disabled user, wrong password", "bob@example.com", "not bob's passphrase"),
    ] {
        let before = (stats.count(tid, "verify"), stats.count(tid, "hash"));
        let body = s.login_raw(&t.slug, email, password).await;
        assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "{what}: {body}");
        let after = (stats.count(tid, "verify"), stats.count(tid, "hash"));
        assert_eq!(after.0 - before.0, 1, "{what}: argon2 verifications");
        assert_eq!(after.1 - before.1, 0, "{what}: argon2 hashes");
        messages.push(body["errors"][0]["message"].as_str().unwrap().to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "the messages differ: {messages:?}");

    let before = stats.count(tid, "verify");
    s.login(&t.slug, "alice@example.com", PASSWORD).await;
    assert_eq!(stats.count(tid, "verify") - before, 1, "a successful login");
}
all!(unknown_email_wrong_password_and_disabled_user_cost_one_verification_each, login_failures_look_alike);

// ------------------------------------------------------------------ cookies and CORS

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.com";
const LOGIN: &str =
    "mutation($i: LoginInput!) { login(input: $i) { ... on AuthTokens { accessToken refreshToken expiresIn } } }";

async fn cookie_mode(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    register_user(&s, &t, "alice@example.com").await;
    let admin = admin_token(&s, &t).await;

    let creds = json!({ "i": { "email": "alice@example.com", "password": PASSWORD } });
    let (_, headers, body) = post_with(&s, &t.slug, &[("x-auth-mode", "cookie")], LOGIN, creds.clone()).await;
    let login = &body["data"]["login"];
    assert!(login["accessToken"].is_string(), "{body}");
    assert!(login["refreshToken"].is_null(), "cookie mode keeps the refresh token out of the body: {body}");
    let (access_line, access_cookie) = cookie_named(&headers, "authd_access");
    let (refresh_line, refresh_cookie) = cookie_named(&headers, "authd_refresh");
    assert_eq!(access_cookie, login["accessToken"].as_str().unwrap());
    assert!(refresh_cookie.len() >= 43, "{refresh_line}");
    for line in [&access_line, &refresh_line] {
        let attrs: Vec<String> = line.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
        assert!(attrs.contains(&"httponly".into()), "{line}");
        assert!(attrs.contains(&"samesite=lax".into()), "{line}");
        assert!(attrs.contains(&format!("path=/t/{}", t.slug)), "{line}");
        assert!(!attrs.contains(&"secure".into()), "the public URL is http: {line}");
    }
    // Without cookie mode the refresh token is in the body.
    let (_, _, body) = post_with(&s, &t.slug, &[], LOGIN, creds).await;
    assert!(body["data"]["login"]["refreshToken"].is_string(), "{body}");

    let access = format!("authd_access={access_cookie}");
    let me_q = "{ me { email } }";
    // No origin is allowed yet: the cookie alone authenticates nothing.
    let (_, _, body) = post_with(&s, &t.slug, &[("cookie", &access), ("origin", APP)], me_q, json!({})).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");

    set_settings(&s, &t.slug, &admin, json!({ "allowedOrigins": [APP] })).await;
    let (_, headers, body) = post_with(&s, &t.slug, &[("cookie", &access), ("origin", APP)], me_q, json!({})).await;
    assert_eq!(body["data"]["me"]["email"], "alice@example.com", "an allowed origin: {body}");
    assert_eq!(header_str(&headers, "access-control-allow-origin"), Some(APP));
    assert_eq!(header_str(&headers, "access-control-allow-credentials"), Some("true"));
    for origin in [Some(EVIL), Some("https://app.example.com.evil.example"), Some("null"), None] {
        let mut h = vec![("cookie", access.as_str())];
        h.extend(origin.map(|o| ("origin", o)));
        let (_, headers, body) = post_with(&s, &t.slug, &h, me_q, json!({})).await;
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "origin {origin:?}: {body}");
        assert_eq!(header_str(&headers, "access-control-allow-origin"), None, "origin {origin:?}");
    }

    // refresh() without an argument reads the refresh cookie, from an allowed origin only.
    let refresh_c = format!("authd_refresh={refresh_cookie}");
    const REFRESH_NOARG: &str = "mutation { refresh { accessToken refreshToken } }";
    let (_, _, body) =
        post_with(&s, &t.slug, &[("cookie", &refresh_c), ("origin", EVIL)], REFRESH_NOARG, json!({})).await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{body}");
    let (_, headers, body) = post_with(
        &s,
        &t.slug,
        &[("cookie", &refresh_c), ("origin", APP), ("x-auth-mode", "cookie")],
        REFRESH_NOARG,
        json!({}),
    )
    .await;
    assert!(
        body["data"]["refresh"]["accessToken"].is_string(),
        "the refused attempt did not consume the cookie: {body}"
    );
    assert!(body["data"]["refresh"]["refreshToken"].is_null(), "{body}");
    let (_, new_refresh) = cookie_named(&headers, "authd_refresh");
    let (_, new_access) = cookie_named(&headers, "authd_access");
    assert_ne!(new_refresh, refresh_cookie, "the refresh cookie rotates");

    // logout() without an argument reads the refresh cookie and clears both cookies.
    let both_cookies = format!("authd_access={new_access}; authd_refresh={new_refresh}");
    let (_, headers, body) =
        post_with(&s, &t.slug, &[("cookie", &both_cookies), ("origin", APP)], "mutation { logout }", json!({})).await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    for name in ["authd_access", "authd_refresh"] {
        let (line, value) = cookie_named(&headers, name);
        assert!(value.is_empty() && line.to_ascii_lowercase().contains("max-age=0"), "{line}");
    }
    let (_, _, body) =
        post_with(&s, &t.slug, &[("cookie", &format!("authd_access={new_access}")), ("origin", APP)], me_q, json!({}))
            .await;
    assert_eq!(code(&body), Some("UNAUTHENTICATED"), "after logout: {body}");
}
all!(cookie_mode_sets_http_only_cookies_and_serves_allowed_origins_only, cookie_mode);

async fn cors_preflight(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin_token(&s, &t).await;
    set_settings(&s, &t.slug, &admin, json!({ "allowedOrigins": [APP] })).await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, format!("{}/t/{}/graphql", s.url, t.slug))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-auth-mode")
            .send()
    };
    let resp = preflight(APP).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(header_str(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header_str(h, "access-control-allow-credentials"), Some("true"));
    assert!(header_str(h, "access-control-allow-methods").unwrap_or_default().contains("POST"));
    let allowed = header_str(h, "access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for needed in ["content-type", "x-auth-mode", "authorization"] {
        assert!(allowed.contains(needed), "{needed} not in {allowed}");
    }
    let resp = preflight(EVIL).await.unwrap();
    assert_eq!(header_str(resp.headers(), "access-control-allow-origin"), None);
    assert_eq!(header_str(resp.headers(), "access-control-allow-credentials"), None);
}
all!(cors_preflight_answers_allowed_origins_only, cors_preflight);

// ------------------------------------------------------------------ registration

async fn email_normalisation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.tenant().await;
    let b = s.tenant().await;
    let body = s.register(&a.slug, "  Bob.Smith@Example.COM ", PASSWORD).await;
    assert_eq!(body["data"]["register"]["email"], "bob.smith@example.com", "{body}");
    assert_eq!(body["data"]["register"]["role"], "USER");
    let count = stored_users(&s, &a).await.len();
    // Fullwidth letters fold under NFKC; case and whitespace do not matter.
    for same in
        ["bob.smith@example.com", "BOB.SMITH@EXAMPLE.COM", "\tbob.smith@example.com\n", "ｂｏｂ.ｓｍｉｔｈ@example.com"]
    {
        let body = s.register(&a.slug, same, "another fine passphrase").await;
        assert_eq!(code(&body), Some("EMAIL_TAKEN"), "{same:?}: {body}");
    }
    assert_eq!(stored_users(&s, &a).await.len(), count, "nothing written");
    // Concurrent registrations of one email: the unique index decides.
    let racing = (0..4).map(|i| {
        s.register(
            &a.slug,
            "Carol@example.com",
            ["one fine passphrase", "two fine passphrases", "three fine passphrases", "four fine passphrases"][i],
        )
    });
    let results = futures::future::join_all(racing).await;
    let codes: Vec<Option<&str>> = results.iter().map(code).collect();
    assert_eq!(results.iter().filter(|b| b["data"]["register"]["id"].is_string()).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == Some("EMAIL_TAKEN")).count(), 3, "{codes:?}");
    let count = count + 1;
    assert_eq!(stored_users(&s, &a).await.len(), count);
    // The same email in another tenant is another account.
    let body = s.register(&b.slug, "bob.smith@example.com", "a different passphrase").await;
    assert!(body["data"]["register"]["id"].is_string(), "{body}");
    s.login(&a.slug, "BOB.SMITH@example.com ", PASSWORD).await;
    s.login(&b.slug, "ｂｏｂ.smith@example.com", "a different passphrase").await;
    let body = s.login_raw(&b.slug, "bob.smith@example.com", PASSWORD).await;
    assert_eq!(code(&body), Some("INVALID_CREDENTIALS"), "each tenant has its own password: {body}");

    for bad in ["", "bob", "bob@", "@example.com", "bob@example", "b ob@example.com"] {
        let body = s.register(&a.slug, bad, PASSWORD).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{bad:?}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "email", "{bad:?}: {body}");
    }
    assert_eq!(stored_users(&s, &a).await.len(), count, "nothing written");
}
all!(register_normalises_emails_unique_per_tenant, email_normalisation);

async fn password_policy(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let tid = tenant_id(&t);
    let users = stored_users(&s, &t).await.len();
    let hashes = s.deps().hasher.stats().count(tid, "hash");
    let refused = |email: &'static str, password: String, why: &'static str| {
        let s = &s;
        let slug = t.slug.clone();
        async move {
            let body = s.register(&slug, email, &password).await;
            assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{why}: {body}");
            assert_eq!(body["errors"][0]["extensions"]["field"], "password", "{why}: {body}");
            let message = body["errors"][0]["message"].as_str().unwrap();
            assert!(!message.contains(&password), "the message echoes the password: {message}");
        }
    };
    refused("a@example.com", "short12".into(), "7 characters").await;
    refused("a@example.com", "password123".into(), "a common password").await;
    refused("a@example.com", "PassWord123".into(), "a common password in other case").await;
    refused("a@example.com", "ｐａｓｓｗｏｒｄ１２３".into(), "a common password in fullwidth").await;
    refused("a@example.com", "x".repeat(4097), "4097 bytes").await;
    refused("a@example.com", "é".repeat(2049), "4098 bytes in 2049 characters").await;
    assert_eq!(stored_users(&s, &t).await.len(), users, "nothing written");
    assert_eq!(s.deps().hasher.stats().count(tid, "hash") - hashes, 0, "nothing hashed");

    // Length counts characters, not bytes, and 4096 bytes are accepted.
    let body = s.register(&t.slug, "b@example.com", &"é".repeat(2048)).await;
    assert!(body["data"]["register"]["id"].is_string(), "4096 bytes: {body}");

    let admin = admin_token(&s, &t).await;
    set_settings(&s, &t.slug, &admin, json!({ "passwordMinLength": 64 })).await;
    let sixty_four = "horse battery staple correct ".repeat(3)[..64].to_owned();
    assert_eq!(sixty_four.chars().count(), 64);
    refused("c@example.com", sixty_four[..63].to_owned(), "63 characters under a minimum of 64").await;
    let body = s.register(&t.slug, "c@example.com", &sixty_four).await;
    assert!(body["data"]["register"]["id"].is_string(), "64 characters under a minimum of 64: {body}");
    s.login(&t.slug, "c@example.com", &sixty_four).await;
    assert_eq!(stored_users(&s, &t).await.len(), users + 2);
}
all!(register_enforces_the_password_policy_and_writes_nothing_on_failure, password_policy);
