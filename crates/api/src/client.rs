//! Who is calling: client IP (forwarding headers believed only from trusted
//! proxies), request ids, cookies and CORS.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;

/// Which forwarding header the trusted proxies write (`AUTHD_FORWARDED_HEADER`).
/// Only that one is read: ingress controllers append to `X-Forwarded-For` but
/// pass a client's own `Forwarded` through untouched, so believing both would
/// let a client choose its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!("{other:?} is neither x-forwarded-for nor forwarded")),
        }
    }
}

/// The client address: the peer, unless the peer is a trusted proxy, in which
/// case the right-most address of the configured forwarding header that is
/// not itself a trusted proxy. A forged header from an untrusted peer is
/// ignored, and so is the header the proxies do not write, so neither can
/// dodge per-IP limits.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
    which: ForwardedHeader,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    match which {
        ForwardedHeader::Forwarded => {
            for value in headers.get_all("forwarded") {
                let Ok(s) = value.to_str() else { continue };
                for element in s.split(',') {
                    for pair in element.split(';') {
                        let Some((k, v)) = pair.trim().split_once('=') else { continue };
                        if k.trim().eq_ignore_ascii_case("for")
                            && let Some(ip) = parse_forwarded_for(v.trim())
                        {
                            chain.push(ip);
                        }
                    }
                }
            }
        }
        ForwardedHeader::XForwardedFor => {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(s) = value.to_str() else { continue };
                chain.extend(s.split(',').filter_map(|p| p.trim().parse::<IpAddr>().ok()));
            }
        }
    }
    Some(chain.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer))
}

fn parse_forwarded_for(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.parse().ok().or_else(|| v.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
}

/// The request id header, set on every request by the router's layers
/// (`routes::with_http_layers`) and echoed on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A caller's request id is kept when it is 1 to 128 visible ASCII
/// characters (no spaces, no control characters); anything else is replaced.
pub fn is_sane_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

/// The request's id: the `X-Request-Id` the router's layers set (the
/// caller's, if sane, else a fresh UUID v4), so audit events, spans and the
/// response header carry the same id. Outside those layers (a test calling
/// a handler directly), the same rules apply here.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .filter(|v| is_sane_request_id(v))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect())
}

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The value of the request cookie `name` (RFC 6265 `Cookie` headers, parsed
/// by the `cookie` crate).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

pub const ACCESS_COOKIE: &str = "authd_access";
pub const REFRESH_COOKIE: &str = "authd_refresh";

/// A `Set-Cookie` value scoped to the tenant's path (docs/api.md, Cookies).
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let c = cookie::Cookie::build((name, value))
        .path(path)
        .max_age(cookie::time::Duration::seconds(i64::try_from(max_age).unwrap_or(i64::MAX)))
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .secure(secure)
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

pub fn origin(headers: &HeaderMap) -> Option<String> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let sane = "0193a6b2-7c1e-7d00-9f00-abcdefabcdef";
        assert_eq!(request_id(&headers(&[("x-request-id", sane)])), sane);
        for insane in ["", "has space", &"a".repeat(129)] {
            assert!(!is_sane_request_id(&HeaderValue::from_str(insane).unwrap()), "{insane:?}");
            let fresh = request_id(&headers(&[("x-request-id", insane)]));
            assert!(uuid::Uuid::parse_str(&fresh).is_ok(), "{insane:?} → {fresh}");
        }
        assert!(is_sane_request_id(&HeaderValue::from_static("a-b_c.d:e/f")));
        assert!(!is_sane_request_id(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
        assert!(uuid::Uuid::parse_str(&request_id(&HeaderMap::new())).is_ok());
    }

    #[test]
    fn forged_forwarded_for_from_an_untrusted_peer_is_ignored() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(Some(peer), &h, &[], ForwardedHeader::XForwardedFor), Some(peer.ip()));
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        // The client wrote `Forwarded`; the proxy appended to X-Forwarded-For.
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "198.51.100.7")]);
        let xff = ForwardedHeader::XForwardedFor;
        assert_eq!(client_ip(Some(peer), &h, &trusted, xff), Some("198.51.100.7".parse().unwrap()));
        let only_forwarded = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(client_ip(Some(peer), &only_forwarded, &trusted, xff), Some(peer.ip()));
        let fwd = ForwardedHeader::Forwarded;
        assert_eq!(client_ip(Some(peer), &h, &trusted, fwd), Some("6.6.6.6".parse().unwrap()));
        assert_eq!("Forwarded".parse::<ForwardedHeader>(), Ok(fwd));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }

    #[test]
    fn a_trusted_proxy_is_believed_right_to_left() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.5")]);
        let xff = ForwardedHeader::XForwardedFor;
        assert_eq!(client_ip(Some(peer), &h, &trusted, xff), Some("198.51.100.7".parse().unwrap()));
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:443\";proto=https")]);
        let fwd = ForwardedHeader::Forwarded;
        assert_eq!(client_ip(Some(peer), &h, &trusted, fwd), Some("2001:db8::1".parse().unwrap()));
    }
}
