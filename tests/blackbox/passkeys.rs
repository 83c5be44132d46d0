//! Passkeys through the GraphQL API, driven by webauthn-authenticator-rs's
//! software passkey (a real authenticator implementation: it makes the key
//! pair, signs authenticator data and client data, keeps a counter), and in
//! headless Chromium with a virtual authenticator on the example page.

use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs_proto::{CreationChallengeResponse, PublicKeyCredential, RequestChallengeResponse};

use crate::both;
use crate::harness::{Backend, Tenant, TestServer, code};

const PASSWORD: &str = "passkey user passphrase";
const BEGIN_REG: &str = "mutation { beginPasskeyRegistration { challengeId options } }";
const FINISH_REG: &str = "mutation($c: String!, $k: JSON!, $n: String) { finishPasskeyRegistration(challengeId: $c, credential: $k, name: $n) { id name createdAt lastUsedAt backupEligible backupState } }";
const BEGIN_LOGIN: &str = "mutation($e: String) { beginPasskeyLogin(email: $e) { challengeId options } }";
const FINISH_LOGIN: &str = "mutation($c: String!, $k: JSON!) { finishPasskeyLogin(challengeId: $c, credential: $k) { __typename ... on AuthTokens { accessToken user { id } } ... on MfaChallenge { challengeId } } }";
const LIST: &str = "{ passkeys { id name lastUsedAt } }";

/// A user with a password session and a software passkey.
pub(crate) struct Holder {
    pub(crate) soft: SoftPasskey,
    pub(crate) access: String,
    pub(crate) email: String,
    pub(crate) user_id: String,
    pub(crate) credential_id: String,
}

/// Where the tenant's app runs (the software authenticator, like a browser,
/// wants https or localhost, and a domain rather than the test server's IP).
pub(crate) const ORIGIN: &str = "https://login.example.com";

pub(crate) fn origin(_s: &TestServer) -> url::Url {
    url::Url::parse(ORIGIN).unwrap()
}

/// A tenant whose relying party is `example.com`, accepting [`ORIGIN`].
pub(crate) async fn tenant(s: &TestServer) -> Tenant {
    let t = s.tenant().await;
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let set = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($o: [String!]!) { updateTenantSettings(input: { webauthnRpId: \"example.com\", webauthnOrigins: $o }) { webauthnRpId webauthnOrigins } }",
            json!({ "o": [ORIGIN] }),
        )
        .await;
    assert_eq!(set["data"]["updateTenantSettings"]["webauthnRpId"], "example.com", "{set}");
    // The RP ID must be a registrable suffix of every accepted origin's host.
    let bad = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation { updateTenantSettings(input: { webauthnOrigins: [\"https://example.org\"] }) { webauthnOrigins } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&bad), Some("BAD_USER_INPUT"), "{bad}");
    assert_eq!(bad["errors"][0]["extensions"]["field"], "webauthnOrigins");
    t
}

use crate::tokens::claims_of as claims;

fn creation(options: &Value) -> CreationChallengeResponse {
    serde_json::from_value(json!({ "publicKey": options })).unwrap_or_else(|e| panic!("{e}: {options}"))
}

pub(crate) fn request(options: &Value) -> RequestChallengeResponse {
    serde_json::from_value(json!({ "publicKey": options })).unwrap_or_else(|e| panic!("{e}: {options}"))
}

pub(crate) async fn registered(s: &TestServer, t: &Tenant, verify_user: bool) -> Holder {
    let email = format!("pk-{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    s.register(&t.slug, &email, PASSWORD).await;
    let (access, _) = s.login(&t.slug, &email, PASSWORD).await;
    let me = s.gql(&t.slug, Some(&access), "{ me { id } }", json!({})).await;
    let user_id = me["data"]["me"]["id"].as_str().unwrap().to_owned();
    let begin = s.gql(&t.slug, Some(&access), BEGIN_REG, json!({})).await;
    let b = &begin["data"]["beginPasskeyRegistration"];
    let mut options = b["options"].clone();
    assert!(options["challenge"].is_string() && options["rp"]["id"].is_string(), "{begin}");
    assert_eq!(options["authenticatorSelection"]["userVerification"], "preferred", "{options}");
    assert_eq!(options["authenticatorSelection"]["residentKey"], "preferred", "{options}");
    if verify_user {
        // This authenticator verifies the user only when told to.
        options["authenticatorSelection"]["userVerification"] = json!("required");
    }
    let mut soft = SoftPasskey::new(true);
    let cred = soft.do_registration(origin(s), creation(&options)).expect("software passkey registers");
    let credential_id = cred.id.clone();
    let fin = s
        .gql(
            &t.slug,
            Some(&access),
            FINISH_REG,
            json!({ "c": b["challengeId"], "k": serde_json::to_value(&cred).unwrap(), "n": "Laptop" }),
        )
        .await;
    assert_eq!(fin["data"]["finishPasskeyRegistration"]["name"], "Laptop", "{fin}");
    Holder { soft, access, email, user_id, credential_id }
}

/// Begins a sign-in and has the authenticator answer. `tweak` changes what
/// the client hands its authenticator (the server never sees that).
async fn assertion(
    s: &TestServer,
    t: &Tenant,
    h: &mut Holder,
    email: Option<&str>,
    origin_url: url::Url,
    tweak: impl FnOnce(&mut Value),
) -> (String, PublicKeyCredential) {
    let begin = s.gql(&t.slug, None, BEGIN_LOGIN, json!({ "e": email })).await;
    let b = &begin["data"]["beginPasskeyLogin"];
    let mut options = b["options"].clone();
    assert!(options["rpId"].is_string(), "request options carry rpId: {begin}");
    tweak(&mut options);
    let pkc = h.soft.do_authentication(origin_url, request(&options)).expect("software passkey signs");
    (b["challengeId"].as_str().unwrap().to_owned(), pkc)
}

async fn finish(s: &TestServer, t: &Tenant, challenge: &str, pkc: &PublicKeyCredential) -> Value {
    s.gql(&t.slug, None, FINISH_LOGIN, json!({ "c": challenge, "k": serde_json::to_value(pkc).unwrap() })).await
}

/// The user handle a discoverable credential returns (not signed: the
/// software authenticator keeps no discoverable credentials, so the test
/// client adds it).
pub(crate) fn with_user_handle(mut pkc: PublicKeyCredential, user_id: &str) -> PublicKeyCredential {
    pkc.response.user_handle = Some(uuid::Uuid::parse_str(user_id).unwrap().as_bytes().to_vec());
    pkc
}

async fn register_and_sign_in(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = tenant(&s).await;
    let mut h = registered(&s, &t, false).await;

    let list = s.gql(&t.slug, Some(&h.access), LIST, json!({})).await;
    assert_eq!(list["data"]["passkeys"].as_array().unwrap().len(), 1, "{list}");
    // Existing passkeys are excluded from a new registration.
    let again = s.gql(&t.slug, Some(&h.access), BEGIN_REG, json!({})).await;
    let excluded = again["data"]["beginPasskeyRegistration"]["options"]["excludeCredentials"].to_string();
    assert!(excluded.contains(&h.credential_id), "{again}");

    // With an email: the user's passkeys are offered; no UV: one factor.
    let email = h.email.clone();
    let cid = h.credential_id.clone();
    let (c, pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |o| {
        assert_eq!(o["allowCredentials"][0]["id"], cid.as_str(), "{o}");
    })
    .await;
    let ok = finish(&s, &t, &c, &pkc).await;
    let tokens = &ok["data"]["finishPasskeyLogin"];
    assert_eq!(tokens["__typename"], "AuthTokens", "{ok}");
    assert_eq!(claims(tokens["accessToken"].as_str().unwrap())["amr"], json!(["hwk"]));
    // Replayed: the challenge is single use.
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"));

    // Usernameless, with user verification: two factors.
    let user_id = h.user_id.clone();
    let (c, pkc) = assertion(&s, &t, &mut h, None, origin(&s), |o| {
        assert!(o["allowCredentials"].as_array().is_none_or(Vec::is_empty), "{o}");
        o["allowCredentials"] = json!([{ "type": "public-key", "id": cid }]);
        o["userVerification"] = json!("required");
    })
    .await;
    let ok = finish(&s, &t, &c, &with_user_handle(pkc, &user_id)).await;
    let tokens = &ok["data"]["finishPasskeyLogin"];
    assert_eq!(tokens["user"]["id"], user_id.as_str(), "{ok}");
    assert_eq!(claims(tokens["accessToken"].as_str().unwrap())["amr"], json!(["hwk", "user"]));

    // Without a user handle a usernameless sign-in finds no one.
    let (c, pkc) = assertion(&s, &t, &mut h, None, origin(&s), as_discoverable_owned(&cid)).await;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"));

    // Rename, list, delete; a deleted passkey signs in no more.
    let id = list["data"]["passkeys"][0]["id"].as_str().unwrap().to_owned();
    let renamed = s
        .gql(
            &t.slug,
            Some(&h.access),
            "mutation($i: ID!) { renamePasskey(id: $i, name: \"Phone\") { name } }",
            json!({ "i": id }),
        )
        .await;
    assert_eq!(renamed["data"]["renamePasskey"]["name"], "Phone", "{renamed}");
    let list = s.gql(&t.slug, Some(&h.access), LIST, json!({})).await;
    assert!(list["data"]["passkeys"][0]["lastUsedAt"].is_string(), "{list}");
    let del = s.gql(&t.slug, Some(&h.access), "mutation($i: ID!) { deletePasskey(id: $i) }", json!({ "i": id })).await;
    assert_eq!(del["data"]["deletePasskey"], true, "{del}");
    // (The account has no passkey now, so a decoy is offered: the client names its own.)
    let (c, pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), as_discoverable_owned(&cid)).await;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"));

    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    crate::harness::audit_log_with(
        &s,
        &t.slug,
        &admin,
        &["passkey.registered", "passkey.login_succeeded", "passkey.login_failed", "passkey.deleted"],
    )
    .await;
}
both!(passkeys_register_and_sign_in, register_and_sign_in);

/// A usernameless ceremony, with the client naming its own credential to
/// the software authenticator.
fn as_discoverable_owned(cid: &str) -> impl FnOnce(&mut Value) + '_ {
    move |o| {
        o["allowCredentials"] = json!([{ "type": "public-key", "id": cid }]);
    }
}

/// Each forgery is refused with UNAUTHENTICATED: wrong origin, wrong RP
/// ID, another tenant's challenge, a bad signature, a counter going
/// backwards, a registration from a wrong origin.
async fn refusals(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = tenant(&s).await;
    let other = tenant(&s).await;
    let mut h = registered(&s, &t, false).await;
    let email = h.email.clone();

    // Within the RP ID as far as the authenticator can tell, but not an accepted origin.
    let evil = url::Url::parse("https://evil.example.com").unwrap();
    let (c, pkc) = assertion(&s, &t, &mut h, Some(&email), evil.clone(), |_| {}).await;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"), "wrong origin");

    let (c, pkc) =
        assertion(&s, &t, &mut h, Some(&email), origin(&s), |o| o["rpId"] = json!("login.example.com")).await;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"), "wrong RP ID");

    let (c, mut pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |_| {}).await;
    let last = pkc.response.signature.len() - 1;
    pkc.response.signature[last] ^= 0x01;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"), "bad signature");

    // Another tenant's challenge: begun at `other`, finished at `t`, and the reverse.
    let begin = s.gql(&other.slug, None, BEGIN_LOGIN, json!({ "e": null })).await;
    let foreign = begin["data"]["beginPasskeyLogin"]["challengeId"].as_str().unwrap().to_owned();
    let (_, pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |_| {}).await;
    assert_eq!(code(&finish(&s, &t, &foreign, &pkc).await), Some("UNAUTHENTICATED"), "foreign challenge");
    // A passkey of tenant t never signs in at `other`.
    let cid = h.credential_id.clone();
    let user_id = h.user_id.clone();
    let begin = s.gql(&other.slug, None, BEGIN_LOGIN, json!({ "e": null })).await;
    let b = &begin["data"]["beginPasskeyLogin"];
    let mut options = b["options"].clone();
    options["allowCredentials"] = json!([{ "type": "public-key", "id": cid }]);
    let pkc = with_user_handle(h.soft.do_authentication(origin(&s), request(&options)).unwrap(), &user_id);
    let cross = s
        .gql(
            &other.slug,
            None,
            FINISH_LOGIN,
            json!({ "c": b["challengeId"], "k": serde_json::to_value(&pkc).unwrap() }),
        )
        .await;
    assert_eq!(code(&cross), Some("UNAUTHENTICATED"), "another tenant's passkey: {cross}");

    // A counter going backwards: two ceremonies signed in order, finished in reverse.
    let (c1, first) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |_| {}).await;
    let (c2, second) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |_| {}).await;
    assert_eq!(finish(&s, &t, &c2, &second).await["data"]["finishPasskeyLogin"]["__typename"], "AuthTokens");
    let back = finish(&s, &t, &c1, &first).await;
    assert_eq!(code(&back), Some("UNAUTHENTICATED"), "counter went backwards: {back}");

    // Registration from a wrong origin.
    let begin = s.gql(&t.slug, Some(&h.access), BEGIN_REG, json!({})).await;
    let b = &begin["data"]["beginPasskeyRegistration"];
    let mut soft = SoftPasskey::new(true);
    let cred = soft.do_registration(evil, creation(&b["options"])).unwrap();
    let fin = s
        .gql(
            &t.slug,
            Some(&h.access),
            FINISH_REG,
            json!({ "c": b["challengeId"], "k": serde_json::to_value(&cred).unwrap() }),
        )
        .await;
    assert_eq!(code(&fin), Some("UNAUTHENTICATED"), "registration from a wrong origin: {fin}");

    // Refusals are audited in batches: give the last one a moment.
    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let mut events = String::new();
    for _ in 0..50 {
        events = s
            .gql(
                &t.slug,
                Some(&admin),
                "{ auditEvents(first: 100, type: \"passkey.login_failed\") { edges { node { detail } } } }",
                json!({}),
            )
            .await
            .to_string();
        if events.contains("counter_not_increasing") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(events.contains("counter_not_increasing"), "{events}");
}
both!(passkeys_refusals, refusals);

/// Unknown emails get options shaped like a known user's; TOTP users
/// without user verification get the MFA challenge; disabled users none.
async fn enumeration_mfa_and_disable(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = tenant(&s).await;
    let mut h = registered(&s, &t, false).await;
    let email = h.email.clone();
    let known =
        s.gql(&t.slug, None, BEGIN_LOGIN, json!({ "e": email })).await["data"]["beginPasskeyLogin"]["options"].clone();
    let unknown = s.gql(&t.slug, None, BEGIN_LOGIN, json!({ "e": "nobody@example.com" })).await["data"]["beginPasskeyLogin"]["options"].clone();
    let again = s.gql(&t.slug, None, BEGIN_LOGIN, json!({ "e": "nobody@example.com" })).await["data"]["beginPasskeyLogin"]["options"].clone();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&known), keys(&unknown), "{known} vs {unknown}");
    assert_eq!(unknown["allowCredentials"].as_array().unwrap().len(), 1);
    assert_eq!(unknown["allowCredentials"][0]["id"], again["allowCredentials"][0]["id"], "stable per address");

    // Enroll TOTP (with the password) for the passkey's user.
    let begin = s
        .gql(
            &t.slug,
            Some(&h.access),
            "mutation($p: String!) { beginTotpEnrollment(password: $p) { secret } }",
            json!({ "p": PASSWORD }),
        )
        .await;
    let secret = begin["data"]["beginTotpEnrollment"]["secret"].as_str().unwrap().to_owned();
    let code_now = crate::mfa::pyotp(&secret, chrono::Utc::now().timestamp()).await;
    let confirm = s
        .gql(
            &t.slug,
            Some(&h.access),
            "mutation($c: String!) { confirmTotpEnrollment(code: $c) { codes } }",
            json!({ "c": code_now }),
        )
        .await;
    assert!(confirm["errors"].is_null(), "{confirm}");

    let (c, pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), |_| {}).await;
    let r = finish(&s, &t, &c, &pkc).await;
    assert_eq!(r["data"]["finishPasskeyLogin"]["__typename"], "MfaChallenge", "one factor, then TOTP: {r}");
    let (c, pkc) =
        assertion(&s, &t, &mut h, Some(&email), origin(&s), |o| o["userVerification"] = json!("required")).await;
    let r = finish(&s, &t, &c, &pkc).await;
    assert_eq!(r["data"]["finishPasskeyLogin"]["__typename"], "AuthTokens", "a verified passkey is two factors: {r}");

    let (admin, _) = s.login(&t.slug, &t.admin_email, &t.admin_password).await;
    let dis = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($u: ID!) { setUserDisabled(userId: $u, disabled: true) { disabled } }",
            json!({ "u": h.user_id }),
        )
        .await;
    assert_eq!(dis["data"]["setUserDisabled"]["disabled"], true, "{dis}");
    // A disabled user's passkeys are not offered; the client still tries its own.
    let cid = h.credential_id.clone();
    let (c, pkc) = assertion(&s, &t, &mut h, Some(&email), origin(&s), as_discoverable_owned(&cid)).await;
    assert_eq!(code(&finish(&s, &t, &c, &pkc).await), Some("UNAUTHENTICATED"));
}
both!(passkeys_enumeration_mfa_and_disable, enumeration_mfa_and_disable);

/// The example page in headless Chromium with a virtual authenticator
/// (CTAP2, resident keys, user verification): register after a password
/// sign-in, then sign in with the email and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_page_registers_and_signs_in_in_a_real_browser() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = TestServer::start_with(Backend::Embedded, |env| {
        env.insert("AUTHD_LISTEN".into(), format!("127.0.0.1:{port}"));
        // WebAuthn needs a domain (not an IP) as the RP ID; localhost is a secure context.
        env.insert("AUTHD_PUBLIC_URL".into(), format!("http://localhost:{port}"));
    })
    .await;
    let t = s.tenant().await;
    let email = "browser-passkey@example.com";
    s.register(&t.slug, email, PASSWORD).await;
    let page = format!("http://localhost:{port}/t/{}/examples/passkeys", t.slug);
    let (python, scripts) = crate::graphiql::test_python();
    let out = tokio::process::Command::new(python)
        .arg(scripts.join("passkey_browser.py"))
        .args([page.as_str(), email, PASSWORD])
        .output()
        .await
        .expect("run passkey_browser.py");
    assert!(
        out.status.success(),
        "browser flow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    for flow in ["email", "usernameless"] {
        let r = &results[flow];
        assert_eq!(r["__typename"], "AuthTokens", "{flow}: {results}");
        assert_eq!(r["user"]["email"], email);
        assert_eq!(claims(r["accessToken"].as_str().unwrap())["amr"], json!(["hwk", "user"]), "{flow}");
    }
}
