//! HTTP to identity providers, without SSRF: a tenant admin chooses the
//! issuer URL, and discovery documents choose further URLs, so every URL is
//! untrusted input that must not reach the platform's own network.
//!
//! - `https` to public addresses only; private, loopback, link-local and
//!   other special-purpose ranges are refused unless inside
//!   `AUTHD_PROVIDER_ALLOWED_NETWORKS`, where plain `http` is allowed too.
//! - Names are checked after DNS resolution, and the connection uses the
//!   checked addresses only (the client's resolver filters them), so a name
//!   that resolves differently a second later (DNS rebinding) gains nothing.
//! - No proxy from the environment, no redirects followed, a time limit on
//!   every request and a size limit on every response.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

/// Largest response body read from a provider.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;

/// Why a provider request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not allowed (scheme, address); no connection was made.
    #[error("{0}")]
    Refused(String),
    /// The provider did not answer in time, refused the connection, or
    /// answered with an error status.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we cannot use.
    #[error("unexpected provider response: {0}")]
    Invalid(String),
}

impl From<FetchError> for authd_core::Error {
    fn from(e: FetchError) -> Self {
        match e {
            // A refused URL found at run time (e.g. in a discovery
            // document) is the provider's fault, not the caller's.
            FetchError::Refused(c) => authd_core::Error::Unavailable(format!("provider URL refused: {c}")),
            FetchError::Unavailable(c) | FetchError::Invalid(c) => authd_core::Error::Unavailable(c),
        }
    }
}

/// Which addresses providers may live at.
#[derive(Clone, Debug, Default)]
pub struct NetPolicy {
    pub allowed: Vec<IpNet>,
}

impl NetPolicy {
    fn in_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// May a connection go to `ip` (over https if `https`)?
    pub fn address_ok(&self, ip: IpAddr, https: bool) -> bool {
        self.in_allowed(ip) || (https && is_public(ip))
    }

    /// Checks a URL before any connection: scheme, no credentials, and every
    /// address its host resolves to.
    pub async fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(FetchError::Refused(format!("scheme {other:?} is not allowed; use https"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Refused("URLs with credentials are not allowed".into()));
        }
        let host = url.host().ok_or_else(|| FetchError::Refused("the URL has no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match host {
            url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
            url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
            url::Host::Domain(name) => {
                tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| FetchError::Unavailable(format!("resolving {name} timed out")))?
                    .map_err(|e| FetchError::Unavailable(format!("{name} does not resolve: {e}")))?
                    .map(|a| a.ip())
                    .collect()
            }
        };
        if addrs.is_empty() {
            return Err(FetchError::Refused("the host resolves to no address".into()));
        }
        for ip in addrs {
            if !self.address_ok(ip, https) {
                // Never the resolved address: the message goes back to a
                // tenant admin, who must not learn the platform's internal
                // DNS by naming hosts and reading the answers.
                return Err(FetchError::Refused(if https || !is_public(ip) {
                    "the host is not at a public address, nor inside AUTHD_PROVIDER_ALLOWED_NETWORKS".into()
                } else {
                    "plain http is allowed only inside AUTHD_PROVIDER_ALLOWED_NETWORKS; use https".into()
                }));
            }
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Globally routable unicast (RFC 6890 special-purpose ranges excluded).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18)) // 198.18/15 benchmarking
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside some networks)
        || (s[0] == 0x2001 && s[1] == 0x0000) // Teredo: wraps an IPv4 address
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: could reach any IPv4
        || s[0] == 0x2002 // 6to4: wraps an IPv4 address, private ones included
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0)) // ::/80 (IPv4-compatible and such)
}

/// The resolver the client connects through: it drops every address the
/// policy refuses for the client's scheme, so only checked addresses are ever
/// dialled (a name that resolved to an allowed network when checked cannot
/// turn into a public address for plain http a moment later).
struct PolicyResolver {
    policy: Arc<NetPolicy>,
    https: bool,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, https) = (self.policy.clone(), self.https);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.address_ok(a.ip(), https))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no allowed address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The clients all provider requests go through: one per scheme, each
/// resolving names under that scheme's rule.
pub struct ProviderHttp {
    https: reqwest::Client,
    http: reqwest::Client,
    pub policy: Arc<NetPolicy>,
}

impl ProviderHttp {
    pub fn new(policy: NetPolicy, timeout: Duration) -> authd_core::Result<Self> {
        let policy = Arc::new(policy);
        let client = |https: bool| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout)
                .dns_resolver(Arc::new(PolicyResolver { policy: policy.clone(), https }))
                .user_agent("authd")
                .build()
                .map_err(|e| authd_core::Error::internal(format!("cannot build the provider HTTP client: {e}")))
        };
        Ok(Self { https: client(true)?, http: client(false)?, policy })
    }

    /// The checked URL and the client for its scheme.
    async fn checked(&self, url: &str) -> Result<(Url, &reqwest::Client), FetchError> {
        let url = Url::parse(url).map_err(|e| FetchError::Refused(format!("not a URL: {e}")))?;
        self.policy.check_url(&url).await?;
        let client = if url.scheme() == "https" { &self.https } else { &self.http };
        Ok((url, client))
    }

    /// GETs JSON (discovery, JWKS, userinfo, GitHub's API).
    #[tracing::instrument(name = "provider.get_json", skip_all, fields(otel.kind = "client", http.request.method = "GET", server.address = %host_of(url)))]
    pub async fn get_json(&self, url: &str, bearer: Option<&str>) -> Result<serde_json::Value, FetchError> {
        let (url, client) = self.checked(url).await?;
        let mut req = client.get(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(FetchError::Unavailable(format!("provider answered {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Invalid(format!("not JSON: {e}")))
    }

    /// Runs a request the `oauth2` crate built (the token endpoint's code
    /// exchange) under the same rules as every provider call: checked URL,
    /// filtered addresses, no redirects, time and size limits. A 5xx or 3xx
    /// answer means the provider is unavailable; any other status goes back
    /// to the crate, which reads token errors from it.
    #[tracing::instrument(name = "provider.post_token", skip_all, fields(otel.kind = "client", http.request.method = %request.method(), server.address = %request.uri().host().unwrap_or_default()))]
    pub async fn execute(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, FetchError> {
        let (parts, body) = request.into_parts();
        let (url, client) = self.checked(&parts.uri.to_string()).await?;
        let req = client.request(parts.method, url).headers(parts.headers).body(body);
        let (status, headers, body) = self.send_full(req).await?;
        if status.is_server_error() || status.is_redirection() {
            return Err(FetchError::Unavailable(format!("token endpoint answered {status}")));
        }
        let mut response = oauth2::HttpResponse::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>), FetchError> {
        let (status, _, body) = self.send_full(req).await?;
        Ok((status, body))
    }

    async fn send_full(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), FetchError> {
        let mut resp = req.send().await.map_err(describe)?;
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(FetchError::Invalid("response too large".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FetchError::Invalid("response too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }
}

/// The host a provider call goes to: the only part of its URL a span
/// carries (a query could hold a code or a token).
fn host_of(url: &str) -> String {
    Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default()
}

fn describe(e: reqwest::Error) -> FetchError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The URL is ours to log (never carries a secret: codes go in bodies).
    FetchError::Unavailable(format!("{what}: {}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "fec0::1",
            "feff::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2002:a00:1::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "142.250.74.36", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn http_and_private_addresses_need_the_allowed_networks() {
        let closed = NetPolicy::default();
        let open = NetPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()] };
        let local = Url::parse("http://127.0.0.1:9/x").unwrap();
        assert!(matches!(closed.check_url(&local).await, Err(FetchError::Refused(_))));
        assert!(open.check_url(&local).await.is_ok());
        let meta = Url::parse("https://169.254.169.254/latest").unwrap();
        assert!(matches!(open.check_url(&meta).await, Err(FetchError::Refused(_))));
        let public_http = Url::parse("http://8.8.8.8/").unwrap();
        assert!(matches!(open.check_url(&public_http).await, Err(FetchError::Refused(_))));
        let creds = Url::parse("https://user:pw@8.8.8.8/").unwrap();
        assert!(matches!(open.check_url(&creds).await, Err(FetchError::Refused(_))));
    }

    #[tokio::test]
    async fn a_refusal_never_names_the_resolved_address() {
        let closed = NetPolicy::default();
        let url = Url::parse("https://localhost:9/").unwrap();
        let Err(FetchError::Refused(message)) = closed.check_url(&url).await else { panic!("not refused") };
        assert!(!message.contains("127.0.0.1") && !message.contains("::1"), "{message}");
    }

    #[tokio::test]
    async fn plain_http_connects_only_inside_the_allowed_networks() {
        use reqwest::dns::Resolve;
        let policy = Arc::new(NetPolicy { allowed: vec!["10.0.0.0/8".parse().unwrap()] });
        // A name resolving to a public address (here: localhost stands in,
        // loopback being neither allowed nor public) gets no address for
        // http, whatever it resolved to when checked.
        let http = PolicyResolver { policy: policy.clone(), https: false };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(http.resolve(name).await.is_err());
        assert!(policy.address_ok("10.1.2.3".parse().unwrap(), false));
        assert!(!policy.address_ok("8.8.8.8".parse().unwrap(), false), "public over http");
        assert!(policy.address_ok("8.8.8.8".parse().unwrap(), true));
    }
}
