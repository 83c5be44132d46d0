//! The router's HTTP layers (`routes::with_http_layers`, the exact function
//! both listeners use) around a tiny router: panics, request ids, timeouts,
//! and the metrics seeing the final status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use authd_api::client;
use authd_api::routes::with_http_layers;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const LIMIT: usize = 1024;

async fn boom() -> &'static str {
    panic!("boom from a handler")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

/// Answers the id the handler sees, as audit events and spans read it.
async fn echo_id(headers: HeaderMap) -> String {
    client::request_id(&headers)
}

fn app(timeout: Duration) -> Router {
    let router = Router::new()
        .route("/layers-test/panic", get(boom))
        // The same, for the connection test (each test counts its own route).
        .route("/layers-test/panic-again", get(boom))
        .route("/layers-test/slow", get(slow))
        .route("/layers-test/id", get(echo_id));
    with_http_layers(router, LIMIT, timeout)
}

async fn call(app: Router, path: &str, request_id: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(path);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn response_id(headers: &HeaderMap) -> &str {
    headers.get("x-request-id").expect("every response carries x-request-id").to_str().unwrap()
}

fn http_requests(route: &str, status: &str) -> f64 {
    authd_tenancy::metrics::HTTP_REQUESTS.get(&[route, "GET", status])
}

#[tokio::test]
async fn a_panicking_handler_answers_500_internal_and_is_counted() {
    let before = http_requests("/layers-test/panic", "500");
    let (status, headers, body) = call(app(Duration::from_secs(30)), "/layers-test/panic", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"errors": [{"message": "internal error", "extensions": {"code": "INTERNAL"}}]})
    );
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert!(uuid::Uuid::parse_str(response_id(&headers)).is_ok());
    // Metrics run outside the panic catcher: they saw the 500.
    assert_eq!(http_requests("/layers-test/panic", "500"), before + 1.0);
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .expect("content-length")
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
                return (head, body);
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_panic_does_not_drop_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(Duration::from_secs(30))).await });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two requests on one keep-alive connection: the panic, then a normal one.
    stream.write_all(b"GET /layers-test/panic-again HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(body.contains(r#""code":"INTERNAL""#), "{body}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    stream.write_all(b"GET /layers-test/id HTTP/1.1\r\nhost: test\r\nx-request-id: second\r\n\r\n").await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "second");
    server.abort();
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let (status, headers, body) = call(app(Duration::from_secs(30)), "/layers-test/id", None).await;
    assert_eq!(status, StatusCode::OK);
    let id = response_id(&headers);
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    // The handler (audit events, spans) sees the id the response carries.
    assert_eq!(body, id);
    // Also on answers that no handler made.
    let (status, headers, _) = call(app(Duration::from_secs(30)), "/layers-test/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(uuid::Uuid::parse_str(response_id(&headers)).is_ok());
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_unchanged() {
    for id in ["0193a6b2-7c1e-7d00-9f00-abcdefabcdef", "req-42", &"x".repeat(128)] {
        let (_, headers, body) = call(app(Duration::from_secs(30)), "/layers-test/id", Some(id)).await;
        assert_eq!(response_id(&headers), id);
        assert_eq!(body, id);
    }
}

#[tokio::test]
async fn an_insane_request_id_is_replaced() {
    for id in [&"x".repeat(300) as &str, "has spaces in it", "tab\there", ""] {
        let (_, headers, body) = call(app(Duration::from_secs(30)), "/layers-test/id", Some(id)).await;
        let got = response_id(&headers);
        assert_ne!(got, id);
        assert_eq!(uuid::Uuid::parse_str(got).unwrap().get_version_num(), 4, "{id:?} → {got}");
        assert_eq!(body, got);
    }
}

#[tokio::test]
async fn a_request_past_the_timeout_answers_503_unavailable() {
    let before = http_requests("/layers-test/slow", "503");
    let started = std::time::Instant::now();
    let (status, headers, body) = call(app(Duration::from_millis(200)), "/layers-test/slow", Some("slow-1")).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["errors"][0]["extensions"], serde_json::json!({"code": "UNAVAILABLE"}));
    assert!(json["errors"][0]["message"].is_string());
    assert_eq!(response_id(&headers), "slow-1");
    assert_eq!(http_requests("/layers-test/slow", "503"), before + 1.0);
}

#[test]
fn the_production_timeout_is_30_seconds() {
    assert_eq!(authd_api::routes::REQUEST_TIMEOUT, Duration::from_secs(30));
}
