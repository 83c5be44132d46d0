//! The transport: axum routes and the two async-graphql schemas (platform and
//! tenant). Resolvers parse input, authenticate and call the tenancy layer;
//! no business rule lives here. Domain errors become the contract's error
//! codes in exactly one function ([`errors::to_graphql`]).
//!
//! This crate never names a database or Redis type.
//!
//! Layout:
//! - [`routes`]: the router: public and admin listeners, their HTTP layers (request ids, panics, timeout), health, JWKS and discovery, GraphiQL.
//! - [`graphql`]: request hygiene (JSON POST only, no batching, size/depth/complexity/alias limits) and execution.
//! - [`errors`]: the one mapping from domain errors to GraphQL errors.
//! - [`cursor`]: opaque Relay cursors shared by both schemas.
//! - [`client`]: client IP (trusted proxies), request ids, cookies and CORS.
//! - [`observe`]: the span of each GraphQL operation (W3C trace context), request metrics, `/metrics`.
//! - [`tenant_schema`], [`tenant_mfa`], [`tenant_oauth`] and [`platform_schema`]: the GraphQL types and resolvers.
//! - [`assets`]: GraphiQL, served from the binary.

pub mod assets;
pub mod client;
pub mod cursor;
pub mod errors;
pub mod graphql;
pub mod observe;
pub mod platform_schema;
pub mod routes;
pub mod sso_routes;
pub mod tenant_email;
pub mod tenant_mfa;
pub mod tenant_oauth;
pub mod tenant_passkeys;
pub mod tenant_schema;
pub mod tenant_sso;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use authd_tenancy::Platform;
use ipnet::IpNet;

pub use routes::{admin_router, public_router};

/// Settings of the transport layer, from the binary's configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `AUTHD_PUBLIC_URL` without trailing slash.
    pub public_url: String,
    /// `AUTHD_TRUSTED_PROXIES`.
    pub trusted_proxies: Vec<IpNet>,
    /// `AUTHD_FORWARDED_HEADER`: the header those proxies write.
    pub forwarded_header: client::ForwardedHeader,
    /// Serve the platform API and `/metrics` on the public listener too
    /// (no admin listener configured).
    pub platform_on_public: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// Shared state of every route.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub config: Arc<ApiConfig>,
    /// The platform API's bearer token (compared in constant time).
    pub platform_token: Arc<secrecy::SecretString>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
    pub tenant_schema: tenant_schema::TenantSchema,
    pub platform_schema: platform_schema::PlatformSchema,
    /// Parsed documents of recent requests (parsed once, not per request).
    pub documents: Arc<graphql::Documents>,
}

impl AppState {
    pub fn new(platform: Platform, config: ApiConfig, platform_token: secrecy::SecretString) -> Self {
        Self {
            platform,
            config: Arc::new(config),
            platform_token: Arc::new(platform_token),
            shutting_down: Arc::new(AtomicBool::new(false)),
            tenant_schema: tenant_schema::build(),
            platform_schema: platform_schema::build(),
            documents: Arc::default(),
        }
    }
}
