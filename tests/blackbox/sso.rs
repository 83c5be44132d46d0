//! Single sign-on: each tenant as an OpenID provider. The flows are driven
//! by plain HTTP (a cookie-keeping client posting the hosted forms, the way a
//! browser without JavaScript would), by the certified relying party
//! `openid-client` (npm, `tests/scripts/oidc_rp.mjs`), and by headless
//! Chromium filling the hosted pages.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Tenant, TestServer, code};

const PASSWORD: &str = "sso user passphrase";
const CREATE: &str = "mutation($i: OAuthClientInput!) { createOAuthClient(input: $i) { client { clientId name public firstParty grantTypes scopes redirectUris postLogoutRedirectUris } clientSecret } }";

pub struct Client {
    pub id: String,
    pub secret: Option<String>,
    pub redirect: String,
}

pub async fn admin(s: &TestServer, t: &Tenant) -> String {
    s.login(&t.slug, &t.admin_email, &t.admin_password).await.0
}

pub async fn client(s: &TestServer, t: &Tenant, admin: &str, input: Value) -> Client {
    let body = s.gql(&t.slug, Some(admin), CREATE, json!({ "i": input })).await;
    let c = &body["data"]["createOAuthClient"];
    assert!(c.is_object(), "createOAuthClient: {body}");
    Client {
        id: c["client"]["clientId"].as_str().unwrap().to_owned(),
        secret: c["clientSecret"].as_str().map(str::to_owned),
        redirect: c["client"]["redirectUris"][0].as_str().unwrap_or_default().to_owned(),
    }
}

fn app(name: &str) -> String {
    format!("https://{name}.example.com/callback")
}

pub fn pkce() -> (String, String) {
    let verifier = authd_core::crypto::random_token(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A browser without JavaScript: keeps cookies, follows no redirect by itself.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn authorize_url(
    s: &TestServer,
    t: &Tenant,
    c: &Client,
    scope: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut u = url::Url::parse(&format!("{}/t/{}/oauth2/authorize", s.url, t.slug)).unwrap();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &c.id)
            .append_pair("redirect_uri", &c.redirect)
            .append_pair("scope", scope)
            .append_pair("state", "st-123")
            .append_pair("nonce", "n-456")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    u.to_string()
}

fn location(resp: &reqwest::Response) -> Option<String> {
    resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn absolute(s: &TestServer, to: &str) -> String {
    if to.starts_with('/') { format!("{}{to}", s.url) } else { to.to_owned() }
}

fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} field in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Follows the authorize redirect to the hosted page (if any): the final
/// location (the client's redirect URI), or the page's HTML.
pub enum Step {
    AtClient(String),
    Page { html: String },
}

pub async fn visit(b: &reqwest::Client, s: &TestServer, url: &str) -> Step {
    let mut url = url.to_owned();
    for _ in 0..5 {
        let resp = b.get(&url).send().await.unwrap();
        if let Some(to) = location(&resp) {
            let to = absolute(s, &to);
            if !to.starts_with(&s.url) {
                return Step::AtClient(to);
            }
            url = to;
            continue;
        }
        return Step::Page { html: resp.text().await.unwrap() };
    }
    panic!("too many redirects from {url}");
}

async fn post_form(
    b: &reqwest::Client,
    s: &TestServer,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Option<String>, String, HashMap<String, String>) {
    let resp = b.post(format!("{}{path}", s.url)).form(form).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers =
        resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect();
    let loc = location(&resp).map(|l| absolute(s, &l));
    (status, loc, resp.text().await.unwrap(), headers)
}

/// Signs in on the hosted form (and consents when asked); returns where
/// the browser lands at the client.
pub async fn sign_in(
    b: &reqwest::Client,
    s: &TestServer,
    t: &Tenant,
    url: &str,
    email: &str,
    password: &str,
) -> String {
    let Step::Page { html, .. } = visit(b, s, url).await else { panic!("expected the sign-in form") };
    assert!(html.contains("name=\"password\""), "{html}");
    let (status, loc, html, _) = post_form(
        b,
        s,
        &format!("/t/{}/login", t.slug),
        &[
            ("request", &field(&html, "request")),
            ("csrf_token", &field(&html, "csrf_token")),
            ("email", email),
            ("password", password),
        ],
    )
    .await;
    if let Some(loc) = loc {
        return loc;
    }
    assert!(html.contains("name=\"decision\""), "{status}: {html}");
    let (_, loc, html, _) = post_form(
        b,
        s,
        &format!("/t/{}/login/consent", t.slug),
        &[("request", &field(&html, "request")), ("csrf_token", &field(&html, "csrf_token")), ("decision", "allow")],
    )
    .await;
    loc.unwrap_or_else(|| panic!("no redirect after consent: {html}"))
}

async fn token(s: &TestServer, t: &Tenant, c: &Client, form: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}/t/{}/oauth2/token", s.url, t.slug)).form(form);
    if let Some(secret) = &c.secret {
        req = req.basic_auth(&c.id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn introspect(s: &TestServer, t: &Tenant, c: &Client, tok: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/t/{}/oauth2/introspect", s.url, t.slug))
        .basic_auth(&c.id, c.secret.as_deref())
        .form(&[("token", tok)])
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

use crate::tokens::claims_of as claims;

async fn user(s: &TestServer, t: &Tenant) -> String {
    let email = format!("sso-{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    s.register(&t.slug, &email, PASSWORD).await;
    email
}

/// The whole code flow by form posts: sign-in, code with `state` and `iss`,
/// tokens, ID token claims, userinfo, refresh, introspection, revocation,
/// and a reused code revoking what it gave.
async fn code_flow_by_forms(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    let c =
        client(&s, &t, &admin, json!({ "name": "Notes", "redirectUris": [app("notes")], "firstParty": true })).await;
    assert!(c.secret.as_ref().is_some_and(|s| s.len() >= 43), "a confidential client's secret, shown once");
    let email = user(&s, &t).await;
    let b = browser();
    let (verifier, challenge) = pkce();
    let url = authorize_url(&s, &t, &c, "openid email offline_access", &challenge, &[]);
    let landed = sign_in(&b, &s, &t, &url, &email, PASSWORD).await;
    assert!(landed.starts_with(&c.redirect), "{landed}");
    assert_eq!(param(&landed, "state").as_deref(), Some("st-123"));
    assert_eq!(param(&landed, "iss").as_deref(), Some(t.issuer.as_str()), "RFC 9207 iss");
    let code_ = param(&landed, "code").unwrap();

    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code_.as_str()),
        ("redirect_uri", c.redirect.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, body) = token(&s, &t, &c, &exchange).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], c.id.as_str());
    assert_eq!(id["azp"], c.id.as_str());
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["iss"], t.issuer.as_str());
    assert_eq!(id["amr"], json!(["pwd"]));
    assert_eq!(id["email"], email.as_str());
    assert!(id["sid"].is_string() && id["auth_time"].is_i64(), "{id}");
    let at = claims(&access);
    assert_eq!(at["client_id"], c.id.as_str());
    assert_eq!(at["scope"], "email offline_access openid");
    let refresh = body["refresh_token"].as_str().expect("offline_access gives a refresh token").to_owned();

    let info: Value = reqwest::Client::new()
        .get(format!("{}/t/{}/oauth2/userinfo", s.url, t.slug))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], id["sub"]);
    assert_eq!(info["email"], email.as_str());

    let i = introspect(&s, &t, &c, &access).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], c.id.as_str());
    // A client's refresh token is no token of the GraphQL API.
    let graphql = s
        .gql(
            &t.slug,
            None,
            "mutation($r: String) { refresh(refreshToken: $r) { accessToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert_eq!(code(&graphql), Some("UNAUTHENTICATED"), "{graphql}");
    let (status, refreshed) =
        token(&s, &t, &c, &[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())]).await;
    assert_eq!(status, 200, "{refreshed}");
    // A rotated-away refresh token is theft: the grant ends.
    let (status, reused) =
        token(&s, &t, &c, &[("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())]).await;
    assert_eq!((status, reused["error"].as_str()), (400, Some("invalid_grant")), "rotated away");
    assert_eq!(introspect(&s, &t, &c, refreshed["access_token"].as_str().unwrap()).await["active"], false);

    // The SSO session signs in without a form: a second code.
    let next_code = |challenge: String| {
        let url = authorize_url(&s, &t, &c, "openid offline_access", &challenge, &[]);
        let b = &b;
        let s = &s;
        async move {
            match visit(b, s, &url).await {
                Step::AtClient(u) => param(&u, "code").unwrap(),
                Step::Page { html } => panic!("the SSO session should sign in without a form: {html}"),
            }
        }
    };
    let (v2, ch2) = pkce();
    let code2 = next_code(ch2).await;
    let exchange2 = [
        ("grant_type", "authorization_code"),
        ("code", code2.as_str()),
        ("redirect_uri", c.redirect.as_str()),
        ("code_verifier", v2.as_str()),
    ];
    let (status, second) = token(&s, &t, &c, &exchange2).await;
    assert_eq!(status, 200, "{second}");
    let access2 = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&s, &t, &c, &access2).await["active"], true);
    // The code presented twice: invalid_grant, and what it gave is revoked.
    let (status, again) = token(&s, &t, &c, &exchange2).await;
    assert_eq!((status, again["error"].as_str()), (400, Some("invalid_grant")), "{again}");
    assert_eq!(introspect(&s, &t, &c, &access2).await["active"], false);

    // Revocation (RFC 7009) of a third grant's refresh token.
    let (v3, ch3) = pkce();
    let code3 = next_code(ch3).await;
    let (_, body) = token(
        &s,
        &t,
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code3),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &v3),
        ],
    )
    .await;
    let r3 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&s, &t, &c, &r3).await["active"], true);
    let resp = reqwest::Client::new()
        .post(format!("{}/t/{}/oauth2/revoke", s.url, t.slug))
        .basic_auth(&c.id, c.secret.as_deref())
        .form(&[("token", r3.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(introspect(&s, &t, &c, &r3).await["active"], false);
    assert_eq!(introspect(&s, &t, &c, body["access_token"].as_str().unwrap()).await["active"], false);

    // The SSO session is one of the user's sessions.
    let (mine, _) = s.login(&t.slug, &email, PASSWORD).await;
    let sessions = s.gql(&t.slug, Some(&mine), "{ sessions { id } }", json!({})).await;
    assert!(sessions["data"]["sessions"].to_string().contains(id["sid"].as_str().unwrap()), "{sessions}");
    // revokeSession ends the SSO session: the next authorize needs the form.
    let revoked =
        s.gql(&t.slug, Some(&mine), "mutation($i: ID!) { revokeSession(id: $i) }", json!({ "i": id["sid"] })).await;
    assert_eq!(revoked["data"]["revokeSession"], true, "{revoked}");
    let (_, ch4) = pkce();
    assert!(matches!(visit(&b, &s, &authorize_url(&s, &t, &c, "openid", &ch4, &[])).await, Step::Page { .. }));
    crate::harness::audit_log_with(
        &s,
        &t.slug,
        &admin,
        &["oauth_client.created", "sso.login_succeeded", "sso.token_issued"],
    )
    .await;
}
both!(sso_code_flow_by_forms, code_flow_by_forms);

/// One sign-in serves a second client; RP-initiated logout ends it for
/// both, and redirects only to a registered URI.
async fn sso_and_logout(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    let a = client(
        &s,
        &t,
        &admin,
        json!({ "name": "A", "redirectUris": [app("a")], "postLogoutRedirectUris": ["https://a.example.com/bye"], "firstParty": true }),
    )
    .await;
    let bc = client(&s, &t, &admin, json!({ "name": "B", "redirectUris": [app("b")], "firstParty": true })).await;
    let email = user(&s, &t).await;
    let b = browser();
    let (va, cha) = pkce();
    let landed = sign_in(&b, &s, &t, &authorize_url(&s, &t, &a, "openid", &cha, &[]), &email, PASSWORD).await;
    let (_, tokens) = token(
        &s,
        &t,
        &a,
        &[
            ("grant_type", "authorization_code"),
            ("code", &param(&landed, "code").unwrap()),
            ("redirect_uri", &a.redirect),
            ("code_verifier", &va),
        ],
    )
    .await;
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let access_a = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, chb) = pkce();
    let Step::AtClient(at_b) = visit(&b, &s, &authorize_url(&s, &t, &bc, "openid", &chb, &[])).await else {
        panic!("client B should get a code without a form");
    };
    assert!(param(&at_b, "code").is_some(), "{at_b}");

    // Not a registered post-logout URI: no redirect there.
    let bad = b
        .get(format!("{}/t/{}/oauth2/logout", s.url, t.slug))
        .query(&[("id_token_hint", id_token.as_str()), ("post_logout_redirect_uri", "https://evil.example.com/")])
        .send()
        .await
        .unwrap();
    assert!(location(&bad).is_none(), "never redirect to an unregistered URI");
    // It ended the session all the same; sign in again for the real logout.
    let (_, cha) = pkce();
    let landed = sign_in(&b, &s, &t, &authorize_url(&s, &t, &a, "openid", &cha, &[]), &email, PASSWORD).await;
    assert!(param(&landed, "code").is_some());
    let out = b
        .get(format!("{}/t/{}/oauth2/logout", s.url, t.slug))
        .query(&[
            ("client_id", a.id.as_str()),
            ("post_logout_redirect_uri", "https://a.example.com/bye"),
            ("state", "bye-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&out).as_deref(), Some("https://a.example.com/bye?state=bye-1"));
    // Both clients need the form again; A's tokens from the first session are dead.
    let (_, chb) = pkce();
    assert!(matches!(visit(&b, &s, &authorize_url(&s, &t, &bc, "openid", &chb, &[])).await, Step::Page { .. }));
    assert_eq!(introspect(&s, &t, &a, &access_a).await["active"], false);
    let (_, chb) = pkce();
    let none = visit(&b, &s, &authorize_url(&s, &t, &bc, "openid", &chb, &[("prompt", "none")])).await;
    let Step::AtClient(none) = none else { panic!("prompt=none answers at the client") };
    assert_eq!(param(&none, "error").as_deref(), Some("login_required"), "{none}");
}
both!(sso_across_clients_and_logout, sso_and_logout);

/// What each refusal test starts from: a tenant with a first-party and a
/// third-party client, a user, and a browser.
struct Refusal {
    s: TestServer,
    t: Tenant,
    admin: String,
    c: Client,
    third: Client,
    email: String,
    b: reqwest::Client,
}

async fn refusal() -> Refusal {
    let s = TestServer::start(Backend::Production).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    let c =
        client(&s, &t, &admin, json!({ "name": "Notes", "redirectUris": [app("notes")], "firstParty": true })).await;
    let third = client(&s, &t, &admin, json!({ "name": "Partner", "redirectUris": [app("partner")] })).await;
    let email = user(&s, &t).await;
    Refusal { s, t, admin, c, third, email, b: browser() }
}

/// No PKCE: an RFC 6749 error at the (registered) redirect URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_a_request_without_pkce() {
    let Refusal { s, t, c, b, .. } = refusal().await;
    let mut no_pkce = url::Url::parse(&authorize_url(&s, &t, &c, "openid", "x", &[])).unwrap();
    let kept: Vec<(String, String)> = no_pkce
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    no_pkce.query_pairs_mut().clear().extend_pairs(kept);
    let Step::AtClient(at) = visit(&b, &s, no_pkce.as_str()).await else { panic!("no PKCE: redirected error") };
    assert_eq!(param(&at, "error").as_deref(), Some("invalid_request"), "{at}");
    assert_eq!(param(&at, "state").as_deref(), Some("st-123"));
}

/// An unregistered redirect URI: an error page, no redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_never_redirects_to_an_unregistered_uri() {
    let Refusal { s, t, c, b, .. } = refusal().await;
    let (_, ch) = pkce();
    let evil = Client { id: c.id.clone(), secret: None, redirect: "https://evil.example.com/cb".into() };
    let resp = b.get(authorize_url(&s, &t, &evil, "openid", &ch, &[])).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(location(&resp).is_none());
    let page = resp.text().await.unwrap();
    assert!(!page.contains("evil.example.com"), "the page does not echo the URI either");
}

/// A client of another tenant is unknown here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_does_not_know_another_tenants_client() {
    let Refusal { s, t, b, .. } = refusal().await;
    let other = s.tenant().await;
    let other_admin = admin(&s, &other).await;
    let foreign = client(&s, &other, &other_admin, json!({ "name": "X", "redirectUris": [app("x")] })).await;
    let (_, ch) = pkce();
    let resp = b.get(authorize_url(&s, &t, &foreign, "openid", &ch, &[])).send().await.unwrap();
    assert_eq!(resp.status(), 400, "another tenant's client");
    assert!(location(&resp).is_none());
    // Nor does its secret work at this tenant's token endpoint.
    let (status, body) = token(&s, &t, &foreign, &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
}

/// `prompt=none` without a session answers `login_required` at the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_prompt_none_without_a_session() {
    let Refusal { s, t, c, b, .. } = refusal().await;
    let (_, ch) = pkce();
    let Step::AtClient(at) = visit(&b, &s, &authorize_url(&s, &t, &c, "openid", &ch, &[("prompt", "none")])).await
    else {
        panic!("prompt=none answers at the client")
    };
    assert_eq!(param(&at, "error").as_deref(), Some("login_required"));
}

/// A hosted form without its CSRF token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_a_form_without_its_csrf_token() {
    let Refusal { s, t, c, b, email, .. } = refusal().await;
    let (_, ch) = pkce();
    let Step::Page { html, .. } = visit(&b, &s, &authorize_url(&s, &t, &c, "openid", &ch, &[])).await else { panic!() };
    let login = format!("/t/{}/login", t.slug);
    let (status, loc, _, _) =
        post_form(&b, &s, &login, &[("request", &field(&html, "request")), ("email", &email), ("password", PASSWORD)])
            .await;
    assert_eq!((status, loc), (403, None), "a form without its CSRF token");
    let (status, _, _, _) = post_form(
        &b,
        &s,
        &login,
        &[("request", &field(&html, "request")), ("csrf_token", "forged"), ("email", &email), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(status, 403, "a forged CSRF token");
}

/// A wrong PKCE verifier: `invalid_grant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_a_wrong_verifier() {
    let Refusal { s, t, c, b, email, .. } = refusal().await;
    let (_, ch) = pkce();
    let landed = sign_in(&b, &s, &t, &authorize_url(&s, &t, &c, "openid", &ch, &[]), &email, PASSWORD).await;
    let (wrong, _) = pkce();
    let (status, body) = token(
        &s,
        &t,
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &param(&landed, "code").unwrap()),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &wrong),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
}

/// Consent denied for a third-party client: `access_denied` at the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_consent_denied() {
    let Refusal { s, t, third, b, email, .. } = refusal().await;
    let (_, ch) = pkce();
    let Step::Page { html, .. } = visit(&b, &s, &authorize_url(&s, &t, &third, "openid email", &ch, &[])).await else {
        panic!()
    };
    let (_, _, html, _) = post_form(
        &b,
        &s,
        &format!("/t/{}/login", t.slug),
        &[
            ("request", &field(&html, "request")),
            ("csrf_token", &field(&html, "csrf_token")),
            ("email", &email),
            ("password", PASSWORD),
        ],
    )
    .await;
    assert!(html.contains("name=\"decision\""), "a third-party client asks for consent: {html}");
    let (_, loc, _, _) = post_form(
        &b,
        &s,
        &format!("/t/{}/login/consent", t.slug),
        &[("request", &field(&html, "request")), ("csrf_token", &field(&html, "csrf_token")), ("decision", "deny")],
    )
    .await;
    assert_eq!(param(&loc.unwrap(), "error").as_deref(), Some("access_denied"));
}

/// A rotated secret: the old one is refused, the new one accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_refuses_a_rotated_secret() {
    let Refusal { s, t, admin, c, .. } = refusal().await;
    let rotated = s
        .gql(
            &t.slug,
            Some(&admin),
            "mutation($c: String!) { rotateOAuthClientSecret(clientId: $c) { clientSecret } }",
            json!({ "c": c.id }),
        )
        .await;
    let new_secret = rotated["data"]["rotateOAuthClientSecret"]["clientSecret"].as_str().unwrap().to_owned();
    let (status, body) = token(&s, &t, &c, &[("grant_type", "authorization_code"), ("code", "x")]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    let fresh = Client { id: c.id.clone(), secret: Some(new_secret), redirect: c.redirect.clone() };
    let (status, body) = token(&s, &t, &fresh, &[("grant_type", "authorization_code"), ("code", "x")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

/// A wrong-password flood on the hosted page is limited exactly like `login`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_limits_a_password_flood_like_login() {
    let Refusal { s, t, c, email, .. } = refusal().await;
    let b = browser();
    let (_, ch) = pkce();
    let Step::Page { html, .. } = visit(&b, &s, &authorize_url(&s, &t, &c, "openid", &ch, &[])).await else { panic!() };
    let (request, csrf) = (field(&html, "request"), field(&html, "csrf_token"));
    let mut limited = None;
    for i in 0..20 {
        let (status, _, page, headers) = post_form(
            &b,
            &s,
            &format!("/t/{}/login", t.slug),
            &[("request", &request), ("csrf_token", &csrf), ("email", &email), ("password", "wrong password here")],
        )
        .await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"), "429 carries Retry-After");
            assert!(page.contains("name=\"password\""), "and the form");
            limited = Some(i);
            break;
        }
        assert_eq!(status, 401, "{page}");
    }
    assert!(limited.is_some(), "the flood was never limited");
    // The GraphQL login of that account is throttled too (same counters).
    assert_eq!(code(&s.login_raw(&t.slug, &email, "wrong password here").await), Some("RATE_LIMITED"));
}

/// A certified relying party (openid-client 6) drives every flow: code with
/// PKCE and ID-token signature checks, refresh, client credentials,
/// introspection, revocation, UserInfo and the end-session URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_relying_party_signs_in() {
    let s = TestServer::start(Backend::Production).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    let c = client(
        &s,
        &t,
        &admin,
        json!({
            "name": "RP", "redirectUris": [app("rp")], "postLogoutRedirectUris": ["https://rp.example.com/bye"],
            "firstParty": true, "grantTypes": ["authorization_code", "refresh_token", "client_credentials"]
        }),
    )
    .await;
    let email = user(&s, &t).await;
    let secret = c.secret.clone().unwrap();
    // The subcommand first, then the client, then the subcommand's options.
    let rp = |mut args: Vec<String>| {
        let sub = args.remove(0);
        let mut all = vec![sub, "--issuer".to_owned(), t.issuer.clone(), "--client-id".into(), c.id.clone()];
        all.extend(["--client-secret".to_owned(), secret.clone()]);
        all.extend(args);
        rp_run(all)
    };
    let start = rp(vec![
        "start".into(),
        "--redirect-uri".into(),
        c.redirect.clone(),
        "--scope".into(),
        "openid email offline_access".into(),
    ])
    .await;
    let url = start["url"].as_str().unwrap();
    let b = browser();
    let landed = sign_in(&b, &s, &t, url, &email, PASSWORD).await;
    let tokens = rp(vec![
        "finish".into(),
        "--callback-url".into(),
        landed,
        "--verifier".into(),
        start["verifier"].as_str().unwrap().into(),
        "--state".into(),
        start["state"].as_str().unwrap().into(),
        "--nonce".into(),
        start["nonce"].as_str().unwrap().into(),
    ])
    .await;
    assert_eq!(tokens["claims"]["email"], email.as_str(), "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let sub = tokens["claims"]["sub"].as_str().unwrap().to_owned();
    let info = rp(vec!["userinfo".into(), "--access-token".into(), access.clone(), "--subject".into(), sub]).await;
    assert_eq!(info["email"], email.as_str(), "{info}");
    let refreshed =
        rp(vec!["refresh".into(), "--refresh-token".into(), tokens["refresh_token"].as_str().unwrap().into()]).await;
    assert!(refreshed["access_token"].is_string(), "{refreshed}");
    let intro =
        rp(vec!["introspect".into(), "--token".into(), refreshed["access_token"].as_str().unwrap().into()]).await;
    assert_eq!(intro["active"], true, "{intro}");
    rp(vec!["revoke".into(), "--token".into(), refreshed["refresh_token"].as_str().unwrap().into()]).await;
    let intro =
        rp(vec!["introspect".into(), "--token".into(), refreshed["refresh_token"].as_str().unwrap().into()]).await;
    assert_eq!(intro["active"], false, "{intro}");
    let cc = rp(vec!["client-credentials".into(), "--scope".into(), "email".into()]).await;
    let cc_claims = claims(cc["access_token"].as_str().unwrap());
    assert_eq!(cc_claims["sub"], c.id.as_str(), "client_credentials: sub is the client id");
    assert_eq!(cc_claims["client_id"], c.id.as_str());
    let end = rp(vec![
        "end-session".into(),
        "--post-logout-redirect-uri".into(),
        "https://rp.example.com/bye".into(),
        "--id-token-hint".into(),
        tokens["id_token"].as_str().unwrap().into(),
        "--state".into(),
        "s1".into(),
    ])
    .await;
    let resp = b.get(end["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(location(&resp).as_deref(), Some("https://rp.example.com/bye?state=s1"));
    let intro = rp(vec!["introspect".into(), "--token".into(), access]).await;
    assert_eq!(intro["active"], false, "logged out: {intro}");
}

pub async fn rp_run(args: Vec<String>) -> Value {
    let node = std::env::var("AUTHD_TEST_NODE").unwrap_or_else(|_| "node".into());
    let (_, scripts) = crate::graphiql::test_python();
    let out = tokio::process::Command::new(node)
        .arg(scripts.join("oidc_rp.mjs"))
        .args(&args)
        .output()
        .await
        .expect("run oidc_rp.mjs (node, installed by scripts/test.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oidc_rp.mjs {:?} failed:\n{stdout}\n{}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Headless Chromium fills the hosted sign-in page (no JavaScript needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_on_the_hosted_page() {
    let s = TestServer::start(Backend::Embedded).await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    // The "app" is a page of the test server itself, so the browser lands somewhere real.
    let landing = format!("{}/healthz?app=web", s.url);
    let c = client(&s, &t, &admin, json!({ "name": "Web", "redirectUris": [landing], "firstParty": true })).await;
    let email = user(&s, &t).await;
    let (verifier, ch) = pkce();
    let url = authorize_url(&s, &t, &c, "openid email", &ch, &[]);
    let (python, scripts) = crate::graphiql::test_python();
    let out = tokio::process::Command::new(python)
        .arg(scripts.join("sso_browser.py"))
        .args([url.as_str(), email.as_str(), PASSWORD, c.redirect.as_str()])
        .output()
        .await
        .expect("run sso_browser.py");
    assert!(
        out.status.success(),
        "browser flow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let landed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (status, body) = token(
        &s,
        &t,
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &param(&landed, "code").unwrap()),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims(body["id_token"].as_str().unwrap())["email"], email.as_str());
}

/// The hosted page's passkey button posts a usernameless passkey sign-in;
/// a verified passkey signs in without a password (driven here by the
/// software passkey, as the page's script would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_page_signs_in_with_a_passkey() {
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    let s = TestServer::start(Backend::Embedded).await;
    let t = crate::passkeys::tenant(&s).await;
    let admin = admin(&s, &t).await;
    let c =
        client(&s, &t, &admin, json!({ "name": "Notes", "redirectUris": [app("notes")], "firstParty": true })).await;
    let mut h = crate::passkeys::registered(&s, &t, true).await;
    let b = browser();
    let (verifier, ch) = pkce();
    let Step::Page { html } = visit(&b, &s, &authorize_url(&s, &t, &c, "openid", &ch, &[])).await else { panic!() };
    assert!(html.contains("id=\"passkey\"") && html.contains("/hosted-assets/passkey.js"), "{html}");
    let begin = s.gql(&t.slug, None, "mutation { beginPasskeyLogin { challengeId options } }", json!({})).await;
    let bl = &begin["data"]["beginPasskeyLogin"];
    let mut options = bl["options"].clone();
    options["allowCredentials"] = json!([{ "type": "public-key", "id": h.credential_id }]);
    options["userVerification"] = json!("required");
    let pkc = h.soft.do_authentication(crate::passkeys::origin(&s), crate::passkeys::request(&options)).unwrap();
    let pkc = crate::passkeys::with_user_handle(pkc, &h.user_id);
    let (_, loc, page, _) = post_form(
        &b,
        &s,
        &format!("/t/{}/login/passkey", t.slug),
        &[
            ("request", &field(&html, "request")),
            ("csrf_token", &field(&html, "csrf_token")),
            ("challenge_id", bl["challengeId"].as_str().unwrap()),
            ("credential", &serde_json::to_string(&pkc).unwrap()),
        ],
    )
    .await;
    let landed = loc.unwrap_or_else(|| panic!("no redirect: {page}"));
    let (status, body) = token(
        &s,
        &t,
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &param(&landed, "code").unwrap()),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["sub"], h.user_id.as_str());
    assert_eq!(id["amr"], json!(["hwk", "user"]));
    let _ = &mut h;
}

/// Client management: admins only; listing, updating (not `public`),
/// deleting (its tokens stop); a user's consent is revocable and then
/// asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_clients_are_managed_by_admins_and_consents_revocable() {
    let Refusal { s, t, admin, c, third, email, b } = refusal().await;
    let (user_token, _) = s.login(&t.slug, &email, PASSWORD).await;
    let list = "{ oauthClients { clientId name public firstParty redirectUris grantTypes scopes } }";
    assert_eq!(code(&s.gql(&t.slug, Some(&user_token), list, json!({})).await), Some("FORBIDDEN"));
    let listed = s.gql(&t.slug, Some(&admin), list, json!({})).await;
    let clients = listed["data"]["oauthClients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{listed}");
    assert!(!listed.to_string().contains("secret"), "no secret is ever listed");

    let update = "mutation($c: String!, $i: OAuthClientInput!) { updateOAuthClient(clientId: $c, input: $i) { name redirectUris } }";
    let renamed = s
        .gql(
            &t.slug,
            Some(&admin),
            update,
            json!({ "c": c.id, "i": { "name": "Notes 2", "redirectUris": [app("notes2")], "firstParty": true } }),
        )
        .await;
    assert_eq!(
        renamed["data"]["updateOAuthClient"],
        json!({ "name": "Notes 2", "redirectUris": [app("notes2")] }),
        "{renamed}"
    );
    let flip = s
        .gql(
            &t.slug,
            Some(&admin),
            update,
            json!({ "c": c.id, "i": { "name": "Notes", "redirectUris": [app("notes")], "public": true } }),
        )
        .await;
    assert_eq!(code(&flip), Some("BAD_USER_INPUT"), "public cannot change: {flip}");
    // The old redirect URI is no longer registered.
    let (_, ch) = pkce();
    let resp = b.get(authorize_url(&s, &t, &c, "openid", &ch, &[])).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    // Consent to the third-party client, then withdraw it: asked again.
    let (_, ch) = pkce();
    let landed = sign_in(&b, &s, &t, &authorize_url(&s, &t, &third, "openid email", &ch, &[]), &email, PASSWORD).await;
    assert!(param(&landed, "code").is_some(), "{landed}");
    let (_, ch) = pkce();
    assert!(
        matches!(visit(&b, &s, &authorize_url(&s, &t, &third, "openid email", &ch, &[])).await, Step::AtClient(_)),
        "remembered"
    );
    let revoke = "mutation($c: String!) { revokeOAuthConsent(clientId: $c) }";
    assert_eq!(
        s.gql(&t.slug, Some(&user_token), revoke, json!({ "c": third.id })).await["data"]["revokeOAuthConsent"],
        true
    );
    let (_, ch) = pkce();
    let Step::Page { html } = visit(&b, &s, &authorize_url(&s, &t, &third, "openid email", &ch, &[])).await else {
        panic!("consent is asked again")
    };
    assert!(html.contains("name=\"decision\""), "{html}");

    // Deleted: unknown to authorize and the token endpoint.
    let delete = "mutation($c: String!) { deleteOAuthClient(clientId: $c) }";
    assert_eq!(code(&s.gql(&t.slug, Some(&user_token), delete, json!({ "c": third.id })).await), Some("FORBIDDEN"));
    assert_eq!(s.gql(&t.slug, Some(&admin), delete, json!({ "c": third.id })).await["data"]["deleteOAuthClient"], true);
    assert_eq!(
        s.gql(&t.slug, Some(&admin), delete, json!({ "c": third.id })).await["data"]["deleteOAuthClient"],
        false
    );
    let (status, body) = token(&s, &t, &third, &[("grant_type", "client_credentials")]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    crate::harness::audit_log_with(
        &s,
        &t.slug,
        &admin,
        &["oauth_client.changed", "oauth_client.deleted", "sso.consent_granted"],
    )
    .await;
}

/// The hosted page's social-login button runs the tenant's provider flow
/// (here the `oidc-provider` npm package) and comes back to the hosted page,
/// which signs the user in and continues to the client: `amr ["fed"]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosted_page_signs_in_with_a_social_provider() {
    // The provider runs on loopback.
    let s = TestServer::start_with(Backend::Embedded, |env| {
        env.insert("AUTHD_PROVIDER_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
    })
    .await;
    let t = s.tenant().await;
    let admin = admin(&s, &t).await;
    let accounts = json!({ "social-user": { "email": "social-sso@example.com", "email_verified": true } });
    let op = crate::oauth::OidcProvider::start(&[crate::oauth::callback(&s, &t, "corp")], "normal", accounts).await;
    crate::oauth::configure_oidc(&s, &t, &admin, "corp", &op.issuer, Some(true)).await;
    let c =
        client(&s, &t, &admin, json!({ "name": "Notes", "redirectUris": [app("notes")], "firstParty": true })).await;
    let b = browser();
    let (verifier, ch) = pkce();
    let Step::Page { html } = visit(&b, &s, &authorize_url(&s, &t, &c, "openid email", &ch, &[])).await else {
        panic!("the sign-in page")
    };
    assert!(html.contains(&format!("/t/{}/login/provider/corp?request=", t.slug)), "a button per provider: {html}");
    let request = field(&html, "request");
    let resp = b.get(format!("{}/t/{}/login/provider/corp?request={request}", s.url, t.slug)).send().await.unwrap();
    let at_provider = location(&resp).unwrap_or_else(|| panic!("to the provider: {}", resp.status()));
    assert!(at_provider.starts_with(&op.issuer), "{at_provider}");
    let callback = crate::oauth::Browser::new()
        .run_until(&at_provider, "social-user", &crate::oauth::callback(&s, &t, "corp"))
        .await;
    // authd's callback returns to the hosted page, which goes on to the client.
    let landed = match visit(&b, &s, &callback).await {
        Step::AtClient(u) => u,
        Step::Page { html } => panic!("did not reach the client: {html}"),
    };
    let (status, body) = token(
        &s,
        &t,
        &c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &param(&landed, "code").unwrap()),
            ("redirect_uri", &c.redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], json!(["fed"]));
    assert_eq!(id["email"], "social-sso@example.com");
}
