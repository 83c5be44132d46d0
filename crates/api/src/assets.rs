//! GraphiQL, served from the binary (the files in `crates/api/assets`, taken
//! from pinned npm packages), so the page works offline and no third-party
//! script ever runs on the auth origin.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where the assets are served.
pub const ASSET_BASE: &str = "/graphiql-assets";

/// The page's policy: same-origin scripts only, no inline script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; \
                       frame-ancestors 'none'; form-action 'none'";

const INDEX: &str = include_str!("../assets/index.html");

static FILES: &[(&str, &str, &[u8])] = &[
    ("graphiql.min.js", "text/javascript; charset=utf-8", include_bytes!("../assets/graphiql.min.js")),
    ("graphiql.min.css", "text/css; charset=utf-8", include_bytes!("../assets/graphiql.min.css")),
    ("react.production.min.js", "text/javascript; charset=utf-8", include_bytes!("../assets/react.production.min.js")),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/react-dom.production.min.js"),
    ),
    ("init.js", "text/javascript; charset=utf-8", include_bytes!("../assets/init.js")),
    ("init.css", "text/css; charset=utf-8", include_bytes!("../assets/init.css")),
];

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The GraphiQL page for `endpoint`. A GET never executes an operation.
pub fn graphiql_page(endpoint: &str) -> Response {
    let body = INDEX.replace("{{ASSET_BASE}}", ASSET_BASE).replace("{{ENDPOINT}}", &html_escape(endpoint));
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    security_headers(&mut resp);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The passkeys example page (`crates/api/web`), for the tenant it is served under.
pub fn passkeys_example_page() -> Response {
    let mut resp =
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../web/passkeys.html")).into_response();
    security_headers(&mut resp);
    resp
}

/// The passkeys example's script.
pub fn passkeys_example_script() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../web/passkeys.js"))
        .into_response();
    security_headers(&mut resp);
    resp
}

/// One asset file, cached by browsers for a day.
pub fn asset(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => {
            let mut resp = ([(header::CONTENT_TYPE, *content_type)], *bytes).into_response();
            security_headers(&mut resp);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
            resp
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
