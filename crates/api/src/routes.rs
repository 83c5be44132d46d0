//! The router. The public listener serves tenants (`/t/{tenant}/…`), health
//! and GraphiQL; the platform API and `/metrics` go on the admin listener when
//! one is configured, else on the public one too.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use authd_core::{Error, ErrorCode};
use authd_tenancy::audit::RequestMeta;
use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use chrono::Utc;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::AppState;
use crate::assets;
use crate::client;
use crate::errors::error_body;
use crate::graphql::{execute, parse_request};
use crate::observe;
use crate::platform_schema::PlatformRequest;
use crate::tenant_schema::TenantRequest;

/// Routes of the public listener.
pub fn public_router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/t/{tenant}/graphql", tenant_graphql_cors(get(tenant_graphiql).post(tenant_graphql), &state))
        .route("/t/{tenant}/.well-known/jwks.json", get(jwks))
        .route("/t/{tenant}/.well-known/openid-configuration", get(discovery))
        .route("/t/{tenant}/oauth/{provider}/callback", get(oauth_callback))
        .route("/t/{tenant}/examples/passkeys", get(passkeys_example))
        .route("/examples/passkeys.js", get(|| async { assets::passkeys_example_script() }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/graphiql-assets/{file}", get(asset));
    router = crate::sso_routes::routes(router);
    if state.config.platform_on_public {
        router =
            router.route("/graphql", get(platform_graphiql).post(platform_graphql)).route("/metrics", get(metrics));
    }
    let limit = state.config.max_body_bytes;
    with_http_layers(router, limit, REQUEST_TIMEOUT).with_state(state)
}

/// Routes of the admin listener: the platform API and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let router = Router::new()
        .route("/graphql", get(platform_graphiql).post(platform_graphql))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/graphiql-assets/{file}", get(asset));
    with_http_layers(router, limit, REQUEST_TIMEOUT).with_state(state)
}

/// The longest a request may take, from routing until its response starts
/// (reading the body included): past it the caller gets 503 `UNAVAILABLE`.
/// The work inside is bounded far below it (storage 1 s to connect and 5 s a
/// statement, providers 10 s a call, a full password-hashing queue refuses
/// at once), so only a stuck dependency or an overloaded replica reaches it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP layers both listeners' routes run inside, outermost first:
///
/// 1. an `X-Request-Id` that is not sane (`client::is_sane_request_id`) is
///    dropped, then `SetRequestIdLayer` gives a request without one a fresh
///    UUID v4 (`client::request_id` reads it for audit events and spans) and
///    `PropagateRequestIdLayer` echoes it on every response, the ones below
///    included;
/// 2. `observe::http_metrics` counts the final status, so a panic (500) and
///    a timeout (503) are counted;
/// 3. `CatchPanicLayer`: a panicking handler answers 500 `INTERNAL` and is
///    logged, and the connection lives on;
/// 4. the request timeout: 503 `UNAVAILABLE` after `timeout`;
/// 5. the body limit (`DefaultBodyLimit`, read by the `Bytes` extractors).
///
/// Public so that tests build their routers with exactly these layers.
pub fn with_http_layers<S>(router: Router<S>, max_body_bytes: usize, timeout: Duration) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let layers = tower::ServiceBuilder::new()
        .map_request(drop_insane_request_id)
        .layer(SetRequestIdLayer::new(HeaderName::from_static(client::REQUEST_ID_HEADER), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(client::REQUEST_ID_HEADER)))
        .layer(axum::middleware::from_fn(observe::http_metrics))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(HandleErrorLayer::new(move |e: tower::BoxError| async move { timed_out(&e, timeout) }))
        .timeout(timeout)
        .layer(DefaultBodyLimit::max(max_body_bytes));
    router.layer(layers)
}

/// A caller's `X-Request-Id` that is empty, too long or not visible ASCII
/// is removed, so that `SetRequestIdLayer` (which keeps any id present)
/// makes a fresh one.
fn drop_insane_request_id(mut req: axum::extract::Request) -> axum::extract::Request {
    let insane = req.headers().get(client::REQUEST_ID_HEADER).is_some_and(|v| !client::is_sane_request_id(v));
    if insane {
        req.headers_mut().remove(client::REQUEST_ID_HEADER);
    }
    req
}

/// The answer to a panicking handler: the contract's `INTERNAL` error. The
/// panic message is logged at error level (by `error_body`); the request,
/// its body included, is not.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    let body = error_body(Error::internal(format!("a request handler panicked: {message}")));
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

/// The answer to a request that ran out of time (or, never in practice,
/// another error of the layers below the timeout).
fn timed_out(e: &tower::BoxError, timeout: Duration) -> Response {
    if !e.is::<tower::timeout::error::Elapsed>() {
        return error_response(Error::internal(format!("request failed in a layer: {e}")));
    }
    tracing::warn!(timeout_ms = timeout.as_millis(), "request timed out");
    let body = serde_json::json!({ "errors": [{
        "message": "the request took too long; retry later",
        "extensions": { "code": ErrorCode::Unavailable.as_str() },
    }] });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::TenantNotFound => StatusCode::NOT_FOUND,
        ErrorCode::TenantDisabled => StatusCode::FORBIDDEN,
        ErrorCode::BadUserInput => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_response(e: Error) -> Response {
    let status = status_of(e.code());
    let retry = match &e {
        Error::RateLimited { retry_after } => Some(*retry_after),
        _ => None,
    };
    let mut resp = (status, axum::Json(error_body(e))).into_response();
    if let Some(secs) = retry
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A body that could not be read (over the size limit: 413) still gets a
/// contract error, not the framework's plain-text message.
/// The GraphQL request of a POST body, or the finished refusal (a body too
/// large or unreadable, a wrong content type, invalid JSON).
#[allow(clippy::result_large_err)]
fn read_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<async_graphql::Request, Response> {
    let body = body.map_err(|rejection| body_refused(state, rejection))?;
    parse_request(headers, &body, &state.documents)
}

fn body_refused(state: &AppState, rejection: BytesRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than {} bytes", state.config.max_body_bytes)
    } else {
        "the request body could not be read".to_owned()
    };
    (status, axum::Json(error_body(Error::bad_input_msg(None, message)))).into_response()
}

pub(crate) fn request_meta(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> RequestMeta {
    meta(state, peer, headers)
}

fn meta(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> RequestMeta {
    RequestMeta {
        ip: client::client_ip(Some(peer), headers, &state.config.trusted_proxies, state.config.forwarded_header)
            .map(|ip| ip.to_string()),
        user_agent: client::user_agent(headers),
        request_id: Some(client::request_id(headers)),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when storage and the token store answer, and not shutting down.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // Ready means: storage answers. Redis is deliberately not part of it: a
    // Redis outage hits every replica alike, so taking them all out of the
    // Service would only turn authd's own `UNAVAILABLE` answers (and the
    // token checks it can still serve, and the local fallback of the rate
    // limits) into the ingress's 503s; it shows in the backend-error
    // metrics and the logs instead.
    let deps = &state.platform.deps;
    let check = async { deps.store.ping().await.map_err(|e| e.to_string()) };
    match tokio::time::timeout(Duration::from_millis(1500), check).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "a backing service does not answer").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "a backing service does not answer").into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    assets::asset(&file)
}

async fn tenant_graphiql(Path(tenant): Path<String>) -> Response {
    if authd_core::Slug::parse(&tenant).is_err() {
        return error_response(Error::bad_input("tenant", "not a valid tenant slug"));
    }
    assets::graphiql_page(&format!("/t/{tenant}/graphql"))
}

async fn passkeys_example(Path(tenant): Path<String>) -> Response {
    if authd_core::Slug::parse(&tenant).is_err() {
        return error_response(Error::bad_input("tenant", "not a valid tenant slug"));
    }
    assets::passkeys_example_page()
}

async fn platform_graphiql() -> Response {
    assets::graphiql_page("/graphql")
}

/// A request's `Origin` is one the tenant allows (its settings'
/// `allowedOrigins`): put in the request's extensions by [`allowed_origin`],
/// read by the CORS layer and by cookie mode.
#[derive(Clone, Copy)]
struct OriginAllowed;

/// The tenant GraphQL endpoint's CORS: `tower-http`'s `CorsLayer` answers
/// preflights (`OPTIONS`, before method routing) and adds the headers to
/// responses, allowing exactly the origins the tenant lists, with credentials
/// (cookie mode needs them). Which origins those are is asked once per
/// request by the middleware in front of it, so the layer's own checks are a
/// lookup in the request's extensions.
fn tenant_graphql_cors(route: MethodRouter<AppState>, state: &AppState) -> MethodRouter<AppState> {
    let allowed =
        |_: &HeaderValue, parts: &axum::http::request::Parts| parts.extensions.get::<OriginAllowed>().is_some();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(allowed))
        .allow_credentials(AllowCredentials::predicate(allowed))
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-auth-mode"),
            HeaderName::from_static(client::REQUEST_ID_HEADER),
        ])
        .max_age(Duration::from_secs(600));
    route.layer(cors).layer(axum::middleware::from_fn_with_state(state.clone(), allowed_origin))
}

/// Marks a request whose `Origin` the tenant allows. An unknown or disabled
/// tenant allows none (the request itself then answers the tenant error).
async fn allowed_origin(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(origin) = client::origin(req.headers())
        && let Ok(rt) = state.platform.tenant(&tenant).await
        && rt.snapshot().record.settings.allowed_origins.contains(&origin)
    {
        req.extensions_mut().insert(OriginAllowed);
    }
    next.run(req).await
}

async fn tenant_graphql(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    origin_allowed: Option<Extension<OriginAllowed>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Everything the request does (tenant lookup, storage, token store) runs inside its span.
    let (span, request_id) = observe::graphql_span("tenant", &tenant, &headers);
    let origin_allowed = origin_allowed.is_some();
    tenant_graphql_traced(state, tenant, peer, headers, origin_allowed, body, (span.clone(), request_id))
        .instrument(span)
        .await
}

async fn tenant_graphql_traced(
    state: AppState,
    tenant: String,
    peer: SocketAddr,
    headers: HeaderMap,
    origin_allowed: bool,
    body: Result<Bytes, BytesRejection>,
    (span, request_id): (tracing::Span, String),
) -> Response {
    let rt = match state.platform.tenant(&tenant).await {
        Ok(rt) => rt,
        Err(Error::BadInput { .. }) => return error_response(Error::bad_input("tenant", "not a valid tenant slug")),
        Err(e) => return error_response(e),
    };
    // The tenant-wide quota: one tenant cannot exhaust the platform (429 + Retry-After).
    if let Err(e) = rt.check_quota() {
        return error_response(e);
    }
    let mut request = match read_request(&state, &headers, body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let cookie_mode =
        headers.get("x-auth-mode").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("cookie"));
    let started = std::time::Instant::now();
    let op = observe::operation(&state, "tenant", &mut request, &span);
    let mut request_meta = meta(&state, peer, &headers);
    request_meta.request_id = Some(request_id);
    let data = TenantRequest::new(
        state.platform.deps.clone(),
        rt,
        request_meta,
        client::bearer(&headers),
        client::cookie(&headers, client::ACCESS_COOKIE),
        client::cookie(&headers, client::REFRESH_COOKIE),
        origin_allowed,
        cookie_mode,
        state.config.public_url.starts_with("https://"),
    );
    let data = std::sync::Arc::new(data);
    let response = execute(&state.tenant_schema, request.data(data.clone())).await;
    observe::finish("tenant", &tenant, &op, &observe::outcome(&response), started, &span);
    let mut resp = axum::Json(response).into_response();
    for c in data.set_cookies.lock().drain(..) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn platform_authorized(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let token = client::bearer(headers)?;
    let expected = state.platform_token.expose_secret().as_bytes();
    // Constant-time: the comparison's duration does not reveal a prefix.
    let ok: bool = token.as_bytes().ct_eq(expected).into();
    ok.then(|| {
        let fp = state.platform.deps.keyring.keyed_hash("operator-token-id", token.as_bytes());
        format!("platform-token:{}", &fp[..12.min(fp.len())])
    })
}

async fn platform_graphql(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (span, request_id) = observe::graphql_span("platform", "", &headers);
    platform_graphql_traced(state, peer, headers, body, span.clone(), request_id).instrument(span).await
}

async fn platform_graphql_traced(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    span: tracing::Span,
    request_id: String,
) -> Response {
    let Some(operator) = platform_authorized(&state, &headers) else {
        let mut resp = error_response(Error::Unauthenticated);
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let mut request = match read_request(&state, &headers, body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let started = std::time::Instant::now();
    let op = observe::operation(&state, "platform", &mut request, &span);
    let mut request_meta = meta(&state, peer, &headers);
    request_meta.request_id = Some(request_id);
    let data = PlatformRequest { platform: state.platform.clone(), meta: request_meta, operator };
    let response = execute(&state.platform_schema, request.data(data)).await;
    observe::finish("platform", "", &op, &observe::outcome(&response), started, &span);
    let mut resp = axum::Json(response).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn cacheable_json(state: &AppState, value: serde_json::Value) -> Response {
    let mut resp = axum::Json(value).into_response();
    let max_age = state.platform.deps.config.jwks_max_age.as_secs();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

/// End of a social login: the provider sends the browser here; authd sends
/// it on to the app's `redirectUri` with a one-time `code` or an `error`.
/// A request that belongs to no started login gets an error page, never a
/// redirect (the target would be the request's choice).
#[tracing::instrument(name = "oauth.callback", skip_all, fields(otel.kind = "server", tenant = %tenant, provider = %provider))]
async fn oauth_callback(
    State(state): State<AppState>,
    Path((tenant, provider)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<authd_tenancy::oauth::CallbackParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let rt = match state.platform.tenant(&tenant).await {
        Ok(rt) => rt,
        Err(e) => return error_response(e),
    };
    if let Err(e) = rt.check_quota() {
        return error_response(e);
    }
    let params = query.map(|q| q.0).unwrap_or_default();
    let meta = meta(&state, peer, &headers);
    let ctx = authd_tenancy::TenantCtx { deps: &state.platform.deps, rt: &rt };
    let mut resp = match ctx.social().callback(&provider, params, &meta).await {
        authd_tenancy::oauth::CallbackOutcome::Redirect(to) => match HeaderValue::from_str(&to) {
            Ok(location) => {
                let mut resp = StatusCode::SEE_OTHER.into_response();
                resp.headers_mut().insert(header::LOCATION, location);
                resp
            }
            Err(_) => error_response(Error::internal("redirect URI is not a valid header value")),
        },
        authd_tenancy::oauth::CallbackOutcome::Rejected(e) => error_response(e),
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

async fn jwks(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    match state.platform.tenant_without_touch(&tenant).await {
        Ok(rt) => cacheable_json(&state, rt.snapshot().keys.jwks(Utc::now())),
        Err(e) => error_response(e),
    }
}

async fn discovery(State(state): State<AppState>, Path(tenant): Path<String>) -> Response {
    match state.platform.tenant_without_touch(&tenant).await {
        Ok(rt) => {
            let issuer = state.platform.deps.config.issuer(rt.slug.as_str());
            let alg = rt.snapshot().record.settings.signing_algorithm.as_str();
            cacheable_json(
                &state,
                serde_json::json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
                    "token_endpoint": format!("{issuer}/oauth2/token"),
                    "userinfo_endpoint": format!("{issuer}/oauth2/userinfo"),
                    "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
                    "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
                    "end_session_endpoint": format!("{issuer}/oauth2/logout"),
                    "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
                    "graphql_endpoint": format!("{issuer}/graphql"),
                    "response_types_supported": ["code"],
                    "response_modes_supported": ["query"],
                    "grant_types_supported": authd_tenancy::sso::GRANT_TYPES,
                    "scopes_supported": authd_tenancy::sso::SCOPES,
                    "claims_supported": ["sub", "iss", "aud", "azp", "exp", "iat", "auth_time", "nonce", "amr", "sid", "email", "email_verified"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": [alg],
                    "access_token_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                    "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                    "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                    "code_challenge_methods_supported": ["S256"],
                    "prompt_values_supported": ["none", "login", "consent"],
                    "authorization_response_iss_parameter_supported": true,
                    "claims_parameter_supported": false,
                    "request_parameter_supported": false,
                    "request_uri_parameter_supported": false,
                }),
            )
        }
        Err(e) => error_response(e),
    }
}

/// Prometheus text exposition (`observe::render_metrics`).
async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = observe::render_metrics(&state).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}
