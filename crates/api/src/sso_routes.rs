//! The HTTP side of single sign-on: the OpenID provider's endpoints
//! (`/t/{tenant}/oauth2/…`) and the hosted sign-in pages (`/t/{tenant}/login`),
//! server-rendered with askama (compile-time checked templates in
//! `crates/api/templates`), working without JavaScript.
//!
//! Every page sends a strict content-security policy (`frame-ancestors
//! 'none'`, no script at all), every form carries a CSRF token (a
//! double-submit cookie, `SameSite=Lax` and `HttpOnly` like the SSO cookie),
//! and the pages call the same services as GraphQL (`login`, `verifyMfa`,
//! social login), so every limit, lockout and audit event applies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use authd_core::Error;
use authd_tenancy::TenantRuntime;
use authd_tenancy::sso::{AuthorizeOutcome, AuthorizeParams, ClientAuth, Next, OAuthError, SsoSession};
use authd_tenancy::{LoginOutcome, TenantCtx};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::client;

/// The SSO session cookie (scoped to `/t/{tenant}`).
pub const SSO_COOKIE: &str = "authd_sso";
/// The CSRF double-submit cookie of the hosted forms.
pub const CSRF_COOKIE: &str = "authd_csrf";

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/t/{tenant}/oauth2/authorize", get(authorize))
        .route("/t/{tenant}/oauth2/token", post(token))
        .route("/t/{tenant}/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/t/{tenant}/oauth2/introspect", post(introspect))
        .route("/t/{tenant}/oauth2/revoke", post(revoke))
        .route("/t/{tenant}/oauth2/logout", get(logout))
        .route("/t/{tenant}/login", get(login_page).post(login_submit))
        .route("/t/{tenant}/login/mfa", post(mfa_submit))
        .route("/t/{tenant}/login/consent", post(consent_submit))
        .route("/t/{tenant}/login/provider/{provider}", get(social_start))
        .route("/t/{tenant}/login/social", get(social_return))
        .route("/t/{tenant}/login/passkey", post(passkey_submit))
        .route("/hosted-assets/hosted.css", get(css))
        .route("/hosted-assets/passkey.js", get(passkey_js))
}

// ------------------------------------------------------------------ pages

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    tenant_name: String,
    client_name: String,
    slug: String,
    request: String,
    csrf: String,
    email: String,
    error: Option<String>,
    providers: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "mfa.html")]
struct MfaPage {
    tenant_name: String,
    slug: String,
    request: String,
    csrf: String,
    challenge_id: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage {
    tenant_name: String,
    client_name: String,
    slug: String,
    request: String,
    csrf: String,
    scopes: Vec<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    tenant_name: String,
    title: String,
    message: String,
}

const CSS: &str = include_str!("../templates/hosted.css");
const PASSKEY_JS: &str = include_str!("../templates/passkey.js");

async fn passkey_js() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PASSKEY_JS).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    resp
}

async fn css() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    resp
}

/// What a scope lets the client do, in words.
fn describe_scope(s: &str) -> String {
    match s {
        "openid" => "know who you are".into(),
        "profile" => "see your basic profile".into(),
        "email" => "see your email address".into(),
        "offline_access" => "stay signed in while you are away".into(),
        other => other.to_owned(),
    }
}

/// A rendered page with the hosted pages' headers: no script, no framing,
/// forms only to authd (and to `redirect_to`, where a form's answer may
/// redirect), nothing cached.
fn page(status: StatusCode, html: String, redirect_to: Option<&str>) -> Response {
    let form_action = match redirect_to.and_then(|u| url::Url::parse(u).ok()) {
        Some(u) => format!("'self' {}", u.origin().ascii_serialization()),
        None => "'self'".to_owned(),
    };
    // The one script is the optional passkey button's, from authd itself.
    let csp = format!(
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn render(t: &impl Template) -> String {
    t.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "a hosted page failed to render");
        "internal error".to_owned()
    })
}

fn message(status: StatusCode, tenant_name: &str, title: &str, text: &str) -> Response {
    let html =
        render(&MessagePage { tenant_name: tenant_name.to_owned(), title: title.to_owned(), message: text.to_owned() });
    page(status, html, None)
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(location) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            resp.headers_mut().insert(header::LOCATION, location);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

// ------------------------------------------------------------------ plumbing

/// One request to a tenant's provider: the tenant, who is calling, cookies.
struct Call {
    state: AppState,
    rt: Arc<TenantRuntime>,
    meta: authd_tenancy::audit::RequestMeta,
    headers: HeaderMap,
}

/// Every hosted page and endpoint starts the same way: the tenant of the
/// path (its quota checked), the caller's address and headers.
impl FromRequestParts<AppState> for Call {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let tenant = params.get("tenant").map(String::as_str).unwrap_or_default();
        let ConnectInfo(peer) =
            ConnectInfo::<SocketAddr>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let rt = state.platform.tenant(tenant).await.map_err(crate::routes::error_response)?;
        rt.check_quota().map_err(crate::routes::error_response)?;
        let meta = crate::routes::request_meta(state, peer, &parts.headers);
        Ok(Self { state: state.clone(), rt, meta, headers: parts.headers.clone() })
    }
}

impl Call {
    fn ctx(&self) -> TenantCtx<'_> {
        TenantCtx { deps: &self.state.platform.deps, rt: &self.rt }
    }

    fn tenant_name(&self) -> String {
        self.rt.snapshot().record.name.clone()
    }

    fn slug(&self) -> String {
        self.rt.slug.as_str().to_owned()
    }

    fn secure(&self) -> bool {
        self.state.config.public_url.starts_with("https://")
    }

    fn cookie(&self, name: &str) -> Option<String> {
        client::cookie(&self.headers, name)
    }

    fn path(&self) -> String {
        format!("/t/{}", self.rt.slug.as_str())
    }

    /// The CSRF token of this browser: the cookie's, or a new one (set on
    /// the response by [`Call::finish`]).
    fn csrf(&self) -> (String, bool) {
        match self.cookie(CSRF_COOKIE).filter(|c| c.len() == 43) {
            Some(c) => (c, false),
            None => (authd_core::crypto::random_token(32), true),
        }
    }

    fn csrf_ok(&self, form: &HashMap<String, String>) -> bool {
        match (self.cookie(CSRF_COOKIE), form.get("csrf_token")) {
            (Some(c), Some(f)) if !c.is_empty() => c.as_bytes().ct_eq(f.as_bytes()).into(),
            _ => false,
        }
    }

    fn set_cookie(&self, resp: &mut Response, name: &str, value: &str, max_age: u64) {
        if let Some(v) = client::set_cookie(name, value, &self.path(), max_age, self.secure()) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

fn form_of(body: &Bytes) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn sso_of(call: &Call) -> Option<SsoSession> {
    call.ctx().sso().sso_session(call.cookie(SSO_COOKIE).as_deref()).await.ok().flatten()
}

// ------------------------------------------------------------------ authorize

async fn authorize(call: Call, Query(q): Query<AuthorizeParams>) -> Response {
    let ctx = call.ctx();
    match ctx.sso().authorize(q, call.cookie(SSO_COOKIE).as_deref(), &call.meta).await {
        Ok(AuthorizeOutcome::Redirect(to)) => redirect(&to),
        Ok(AuthorizeOutcome::ErrorPage(text)) => {
            message(StatusCode::BAD_REQUEST, &call.tenant_name(), "This sign-in cannot continue", &text)
        }
        Err(e) => failure(&call, e),
    }
}

fn failure(call: &Call, e: Error) -> Response {
    if let Some(c) = e.cause() {
        tracing::warn!(cause = c, "hosted sign-in failed");
    }
    let status = match e {
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::BadInput { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, &call.tenant_name(), "Something went wrong", "Please try again in a moment.")
}

// ------------------------------------------------------------------ hosted sign-in

#[derive(serde::Deserialize)]
struct RequestQuery {
    request: Option<String>,
}

fn expired(call: &Call) -> Response {
    message(
        StatusCode::BAD_REQUEST,
        &call.tenant_name(),
        "This sign-in has expired",
        "Go back to the application and start again.",
    )
}

/// Renders the sign-in form (status, error and the email to keep).
async fn login_form(call: &Call, request: &str, status: StatusCode, error: Option<String>, email: &str) -> Response {
    let Ok(Some(r)) = call.ctx().sso().request(request).await else { return expired(call) };
    let (csrf, fresh) = call.csrf();
    let providers = call
        .ctx()
        .social()
        .providers_public()
        .into_iter()
        .filter(|p| p.enabled)
        .map(|p| (p.name, p.display_name))
        .collect();
    let html = render(&LoginPage {
        tenant_name: call.tenant_name(),
        client_name: r.client_name.clone(),
        slug: call.slug(),
        request: request.to_owned(),
        csrf: csrf.clone(),
        email: if email.is_empty() { r.login_hint.clone().unwrap_or_default() } else { email.to_owned() },
        error,
        providers,
    });
    let mut resp = page(status, html, Some(&r.redirect_uri));
    if fresh {
        call.set_cookie(&mut resp, CSRF_COOKIE, &csrf, 3600);
    }
    resp
}

async fn mfa_form(
    call: &Call,
    request: &str,
    challenge_id: &str,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let (csrf, fresh) = call.csrf();
    let redirect_to = call.ctx().sso().request(request).await.ok().flatten().map(|r| r.redirect_uri);
    let html = render(&MfaPage {
        tenant_name: call.tenant_name(),
        slug: call.slug(),
        request: request.to_owned(),
        csrf: csrf.clone(),
        challenge_id: challenge_id.to_owned(),
        error,
    });
    let mut resp = page(status, html, redirect_to.as_deref());
    if fresh {
        call.set_cookie(&mut resp, CSRF_COOKIE, &csrf, 3600);
    }
    resp
}

/// A throttled form answer carries `Retry-After` (whole seconds).
fn retry_after_header(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The methods a finished sign-in's session records (`fallback` if the
/// token store cannot say).
async fn session_amr(call: &Call, session: authd_core::SessionId, fallback: &str) -> Vec<String> {
    match call.state.platform.deps.tokens.get_session(call.rt.id, session).await {
        Ok(Some(s)) => s.amr,
        _ => vec![fallback.into()],
    }
}

/// Where a request goes once the person is (or is not yet) signed in.
async fn proceed(call: &Call, request: &str, sso: Option<&SsoSession>) -> Response {
    let next = match call.ctx().sso().continue_request(request, sso).await {
        Ok(Some(n)) => n,
        Ok(None) => return expired(call),
        Err(e) => return failure(call, e),
    };
    match next {
        Next::Redirect(to) => redirect(&to),
        Next::Login => login_form(call, request, StatusCode::OK, None, "").await,
        Next::Consent { scopes } => {
            let Ok(Some(r)) = call.ctx().sso().request(request).await else { return expired(call) };
            let (csrf, fresh) = call.csrf();
            let html = render(&ConsentPage {
                tenant_name: call.tenant_name(),
                client_name: r.client_name.clone(),
                slug: call.slug(),
                request: request.to_owned(),
                csrf: csrf.clone(),
                scopes: scopes.iter().map(|s| describe_scope(s)).collect(),
            });
            let mut resp = page(StatusCode::OK, html, Some(&r.redirect_uri));
            if fresh {
                call.set_cookie(&mut resp, CSRF_COOKIE, &csrf, 3600);
            }
            resp
        }
    }
}

async fn login_page(call: Call, Query(q): Query<RequestQuery>) -> Response {
    let Some(request) = q.request.filter(|r| !r.is_empty()) else {
        return message(
            StatusCode::BAD_REQUEST,
            &call.tenant_name(),
            "Nothing to sign in to",
            "Open the application you want to use; it brings you here.",
        );
    };
    let sso = sso_of(&call).await;
    proceed(&call, &request, sso.as_ref()).await
}

/// A finished first (and second) factor: the SSO session starts, its
/// cookie is set, and the request proceeds.
async fn signed_in(call: &Call, request: &str, tokens: &authd_tenancy::IssuedTokens, amr: Vec<String>) -> Response {
    let (cookie, sso) = match call.ctx().sso().start_sso(tokens, amr, &call.meta).await {
        Ok(v) => v,
        Err(e) => return failure(call, e),
    };
    let mut resp = proceed(call, request, Some(&sso)).await;
    let ttl = call.state.platform.deps.config.refresh_token_ttl.as_secs();
    call.set_cookie(&mut resp, SSO_COOKIE, &cookie, ttl);
    resp
}

fn refused_csrf(call: &Call) -> Response {
    message(
        StatusCode::FORBIDDEN,
        &call.tenant_name(),
        "This form has expired",
        "Go back, reload the page and try again.",
    )
}

async fn login_submit(call: Call, body: Bytes) -> Response {
    let form = form_of(&body);
    if !call.csrf_ok(&form) {
        return refused_csrf(&call);
    }
    let request = form.get("request").cloned().unwrap_or_default();
    if call.ctx().sso().request(&request).await.ok().flatten().is_none() {
        return expired(&call);
    }
    let email = form.get("email").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    match call.ctx().accounts().login(&email, &password, &call.meta).await {
        Ok(LoginOutcome::Tokens(t)) => signed_in(&call, &request, &t, vec!["pwd".into()]).await,
        Ok(LoginOutcome::MfaChallenge { challenge_id, .. }) => {
            mfa_form(&call, &request, &challenge_id, StatusCode::OK, None).await
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Try again in {retry_after} seconds.");
            retry_after_header(
                login_form(&call, &request, StatusCode::TOO_MANY_REQUESTS, Some(text), &email).await,
                retry_after,
            )
        }
        Err(Error::InvalidCredentials) => {
            let text = "The email or the password is wrong.".to_owned();
            login_form(&call, &request, StatusCode::UNAUTHORIZED, Some(text), &email).await
        }
        Err(Error::EmailNotVerified) => {
            let text = "Verify your email address first: open the link we mailed you.".to_owned();
            login_form(&call, &request, StatusCode::FORBIDDEN, Some(text), &email).await
        }
        Err(Error::BadInput { message, .. }) => {
            login_form(&call, &request, StatusCode::BAD_REQUEST, Some(message), &email).await
        }
        Err(e) => failure(&call, e),
    }
}

async fn mfa_submit(call: Call, body: Bytes) -> Response {
    let form = form_of(&body);
    if !call.csrf_ok(&form) {
        return refused_csrf(&call);
    }
    let request = form.get("request").cloned().unwrap_or_default();
    let challenge = form.get("challenge_id").cloned().unwrap_or_default();
    let code = form.get("code").cloned().unwrap_or_default();
    let ctx = call.ctx();
    match ctx.mfa().verify_mfa(&challenge, &code, &call.meta).await {
        Ok(tokens) => {
            let amr = session_amr(&call, tokens.session, "otp").await;
            signed_in(&call, &request, &tokens, amr).await
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Try again in {retry_after} seconds.");
            retry_after_header(
                mfa_form(&call, &request, &challenge, StatusCode::TOO_MANY_REQUESTS, Some(text)).await,
                retry_after,
            )
        }
        Err(Error::MfaInvalid) => {
            let text = "That code is wrong or has expired.".to_owned();
            mfa_form(&call, &request, &challenge, StatusCode::UNAUTHORIZED, Some(text)).await
        }
        Err(e) => failure(&call, e),
    }
}

/// The passkey button's answer: a usernameless passkey sign-in.
async fn passkey_submit(call: Call, body: Bytes) -> Response {
    let form = form_of(&body);
    if !call.csrf_ok(&form) {
        return refused_csrf(&call);
    }
    let request = form.get("request").cloned().unwrap_or_default();
    let challenge = form.get("challenge_id").cloned().unwrap_or_default();
    let credential: serde_json::Value =
        form.get("credential").and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
    match call.ctx().passkeys().finish_login(&challenge, credential, &call.meta).await {
        Ok(LoginOutcome::Tokens(t)) => {
            let amr = session_amr(&call, t.session, "hwk").await;
            signed_in(&call, &request, &t, amr).await
        }
        Ok(LoginOutcome::MfaChallenge { challenge_id, .. }) => {
            mfa_form(&call, &request, &challenge_id, StatusCode::OK, None).await
        }
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Try again in {retry_after} seconds.");
            retry_after_header(
                login_form(&call, &request, StatusCode::TOO_MANY_REQUESTS, Some(text), "").await,
                retry_after,
            )
        }
        Err(_) => {
            let text = "That passkey did not sign you in.".to_owned();
            login_form(&call, &request, StatusCode::UNAUTHORIZED, Some(text), "").await
        }
    }
}

async fn consent_submit(call: Call, body: Bytes) -> Response {
    let form = form_of(&body);
    if !call.csrf_ok(&form) {
        return refused_csrf(&call);
    }
    let request = form.get("request").cloned().unwrap_or_default();
    let Some(sso) = sso_of(&call).await else {
        return proceed(&call, &request, None).await;
    };
    let allow = match form.get("decision").map(String::as_str) {
        Some("allow") => true,
        Some("deny") => false,
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                &call.tenant_name(),
                "Choose Allow or Deny",
                "Go back and choose.",
            );
        }
    };
    match call.ctx().sso().decide(&request, &sso, allow, &call.meta).await {
        Ok(Some(to)) => redirect(&to),
        Ok(None) => expired(&call),
        Err(e) => failure(&call, e),
    }
}

async fn social_start(
    call: Call,
    Path((_, provider)): Path<(String, String)>,
    Query(q): Query<RequestQuery>,
) -> Response {
    let request = q.request.unwrap_or_default();
    match call.ctx().sso().start_social(&request, &provider, &call.meta).await {
        Ok(Some(to)) => redirect(&to),
        Ok(None) => expired(&call),
        Err(Error::RateLimited { retry_after }) => {
            let text = format!("Too many attempts. Try again in {retry_after} seconds.");
            retry_after_header(
                login_form(&call, &request, StatusCode::TOO_MANY_REQUESTS, Some(text), "").await,
                retry_after,
            )
        }
        Err(Error::ProviderNotFound | Error::BadInput { .. }) => {
            login_form(
                &call,
                &request,
                StatusCode::BAD_REQUEST,
                Some("That sign-in option is not available.".into()),
                "",
            )
            .await
        }
        Err(e) => failure(&call, e),
    }
}

#[derive(serde::Deserialize)]
struct SocialReturn {
    request: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

async fn social_return(call: Call, Query(q): Query<SocialReturn>) -> Response {
    let request = q.request.unwrap_or_default();
    let (Some(code), None) = (q.code, q.error) else {
        return login_form(&call, &request, StatusCode::UNAUTHORIZED, Some("That sign-in did not succeed.".into()), "")
            .await;
    };
    let Ok(Some(verifier)) = call.ctx().sso().social_verifier(&request).await else { return expired(&call) };
    match call.ctx().social().exchange_login_code(&code, &verifier, &call.meta).await {
        Ok(LoginOutcome::Tokens(t)) => signed_in(&call, &request, &t, vec!["fed".into()]).await,
        Ok(LoginOutcome::MfaChallenge { challenge_id, .. }) => {
            mfa_form(&call, &request, &challenge_id, StatusCode::OK, None).await
        }
        Err(_) => {
            login_form(&call, &request, StatusCode::UNAUTHORIZED, Some("That sign-in did not succeed.".into()), "")
                .await
        }
    }
}

// ------------------------------------------------------------------ endpoints

fn oauth_error(e: OAuthError, basic: bool) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, axum::Json(serde_json::json!({ "error": e.error, "error_description": e.description })))
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.status == 401 && basic {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"authd\""));
    }
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    resp
}

fn client_auth(headers: &HeaderMap, form: &HashMap<String, String>) -> ClientAuth {
    ClientAuth {
        basic: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(authd_tenancy::sso::basic_credentials),
        client_id: form.get("client_id").cloned(),
        client_secret: form.get("client_secret").cloned(),
    }
}

/// The start of every client-authenticated endpoint (token, introspection,
/// revocation): the tenant, the form body, the client's credentials.
struct ClientCall {
    call: Call,
    form: HashMap<String, String>,
    auth: ClientAuth,
}

impl FromRequest<AppState> for ClientCall {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let call = Call::from_request_parts(&mut parts, state).await?;
        let body =
            Bytes::from_request(Request::from_parts(parts, body), state).await.map_err(IntoResponse::into_response)?;
        let form = form_of(&body);
        let auth = client_auth(&call.headers, &form);
        Ok(Self { call, form, auth })
    }
}

fn json_no_store(body: serde_json::Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn token(ClientCall { call, form, auth }: ClientCall) -> Response {
    let basic = auth.basic.is_some();
    match call.ctx().sso().token(auth, &form, &call.meta).await {
        Ok(body) => json_no_store(body),
        Err(e) => oauth_error(e, basic),
    }
}

async fn introspect(ClientCall { call, form, auth }: ClientCall) -> Response {
    let basic = auth.basic.is_some();
    let token = form.get("token").cloned().unwrap_or_default();
    match call.ctx().sso().introspect(auth, &token, &call.meta).await {
        Ok(body) => json_no_store(body),
        Err(e) => oauth_error(e, basic),
    }
}

async fn revoke(ClientCall { call, form, auth }: ClientCall) -> Response {
    let basic = auth.basic.is_some();
    let token = form.get("token").cloned().unwrap_or_default();
    match call.ctx().sso().revoke(auth, &token, &call.meta).await {
        Ok(()) => json_no_store(serde_json::json!({})),
        Err(e) => oauth_error(e, basic),
    }
}

async fn userinfo(call: Call) -> Response {
    let challenge = |status: StatusCode, value: &'static str| {
        let mut resp = status.into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        resp
    };
    let Some(token) = client::bearer(&call.headers) else {
        return challenge(StatusCode::UNAUTHORIZED, "Bearer");
    };
    match call.ctx().sso().userinfo(&token).await {
        Ok(body) => json_no_store(body),
        Err(Error::Forbidden(_)) => challenge(StatusCode::FORBIDDEN, "Bearer error=\"insufficient_scope\""),
        Err(Error::Unauthenticated) => challenge(StatusCode::UNAUTHORIZED, "Bearer error=\"invalid_token\""),
        Err(e) => crate::routes::error_response(e),
    }
}

#[derive(serde::Deserialize)]
struct LogoutQuery {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

async fn logout(call: Call, Query(q): Query<LogoutQuery>) -> Response {
    let outcome = call
        .ctx()
        .sso()
        .end_session(
            q.id_token_hint.as_deref(),
            q.client_id.as_deref(),
            q.post_logout_redirect_uri.as_deref(),
            q.state.as_deref(),
            call.cookie(SSO_COOKIE).as_deref(),
            &call.meta,
        )
        .await;
    let mut resp = match outcome {
        Ok(Some(to)) => redirect(&to),
        Ok(None) => message(StatusCode::OK, &call.tenant_name(), "Signed out", "You are signed out."),
        Err(Error::BadInput { message: m, .. }) => message(
            StatusCode::BAD_REQUEST,
            &call.tenant_name(),
            "Signed out",
            &format!("You are signed out, but {m}."),
        ),
        Err(e) => failure(&call, e),
    };
    // The cookie goes whatever happened.
    call.set_cookie(&mut resp, SSO_COOKIE, "", 0);
    resp
}
