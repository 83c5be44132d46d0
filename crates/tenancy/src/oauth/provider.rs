//! `OAuthProviderActor`: one per configured provider of a running tenant. It
//! holds the provider's config, its endpoints (from the discovery document
//! for OpenID Connect, fixed for GitHub) and its JWKS.
//!
//! Network calls never run inside its handler: a fetch runs in a task that
//! reports back with a message, and callers waiting meanwhile are queued and
//! answered together. A failed fetch is not cached (the next caller tries
//! again); the JWKS is refetched for an unknown `kid` at most once a minute,
//! so a stream of forged `kid`s cannot make authd hammer the provider.
//!
//! Supervision: restarted alone by the tenant supervisor, with the config
//! from the tenant's snapshot; it holds nothing that is not in storage or
//! refetchable, so a restart loses only caches.

use std::sync::Arc;
use std::time::Duration;

use authd_core::{Error, Result, TenantId};
use authd_store::OAuthProviderRecord;
use oauth2::AuthType;
use openidconnect::JsonWebKey;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::net::{FetchError, ProviderHttp};

pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub const GITHUB_BASE: &str = "https://github.com";
const GITHUB_API: &str = "https://api.github.com";

/// How often at most the JWKS is refetched for an unknown key id.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(60);

/// `OAuthProviderKind` (stored lowercase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Google,
    Github,
    Oidc,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Google => "google",
            Self::Github => "github",
            Self::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "google" => Ok(Self::Google),
            "github" => Ok(Self::Github),
            "oidc" => Ok(Self::Oidc),
            other => Err(Error::internal(format!("unknown provider kind {other:?} in storage"))),
        }
    }

    /// Speaks OpenID Connect (ID tokens, discovery)?
    pub fn is_oidc(self) -> bool {
        !matches!(self, Self::Github)
    }

    /// Default of `trustEmailVerified`: Google's `email_verified` and
    /// GitHub's verified-emails API are believed; a generic issuer's is not.
    pub fn trusts_email_by_default(self) -> bool {
        !matches!(self, Self::Oidc)
    }

    pub fn default_scopes(self) -> Vec<String> {
        match self {
            Self::Github => vec!["read:user".into(), "user:email".into()],
            _ => vec!["openid".into(), "email".into(), "profile".into()],
        }
    }
}

/// Where a provider's endpoints are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// OpenID Connect: the issuer ID tokens must name.
    pub issuer: Option<String>,
    pub authorization: String,
    pub token: String,
    pub userinfo: Option<String>,
    pub jwks_uri: Option<String>,
    /// GitHub: the REST API base (`/user`, `/user/emails`).
    pub api: Option<String>,
    /// How the client authenticates at the token endpoint: HTTP Basic
    /// (RFC 6749 §2.3.1, OpenID Connect's default) or in the form body.
    pub client_auth: AuthType,
}

/// The issuer an OIDC provider of this config must have, or for GitHub
/// the web base URL.
pub fn base_of(record: &OAuthProviderRecord, kind: ProviderKind) -> String {
    let default = match kind {
        ProviderKind::Google => GOOGLE_ISSUER,
        ProviderKind::Github => GITHUB_BASE,
        ProviderKind::Oidc => "",
    };
    record.issuer.clone().unwrap_or_else(|| default.to_owned())
}

/// Fetches (OIDC discovery) or derives (GitHub) a provider's endpoints.
pub async fn fetch_endpoints(http: &ProviderHttp, record: &OAuthProviderRecord) -> Result<Endpoints> {
    let kind = ProviderKind::parse(&record.kind)?;
    let base = base_of(record, kind);
    if kind == ProviderKind::Github {
        let base = base.trim_end_matches('/');
        // github.com's API lives on its own host; GitHub Enterprise Server
        // (and a test stand-in) serve it under `{base}/api/v3`.
        let api = if base == GITHUB_BASE { GITHUB_API.to_owned() } else { format!("{base}/api/v3") };
        return Ok(Endpoints {
            issuer: None,
            authorization: format!("{base}/login/oauth/authorize"),
            token: format!("{base}/login/oauth/access_token"),
            userinfo: None,
            jwks_uri: None,
            api: Some(api),
            client_auth: AuthType::RequestBody,
        });
    }
    let url = format!("{}/.well-known/openid-configuration", base.trim_end_matches('/'));
    let doc = http.get_json(&url, None).await?;
    let field = |name: &str| doc.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    // OpenID Connect Discovery §4.3: the document's issuer must be exactly
    // the one it was fetched for, or it could vouch for another issuer.
    let issuer = field("issuer").ok_or_else(|| FetchError::Invalid("discovery has no issuer".into()))?;
    if issuer != base {
        return Err(FetchError::Invalid(format!("discovery names issuer {issuer:?}, not {base:?}")).into());
    }
    let need =
        |name: &str| field(name).ok_or_else(|| Error::from(FetchError::Invalid(format!("discovery lacks {name}"))));
    let methods: Vec<String> = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let client_auth = if methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic") {
        AuthType::BasicAuth
    } else {
        AuthType::RequestBody
    };
    Ok(Endpoints {
        issuer: Some(issuer),
        authorization: need("authorization_endpoint")?,
        token: need("token_endpoint")?,
        userinfo: field("userinfo_endpoint"),
        jwks_uri: Some(need("jwks_uri")?),
        api: None,
        client_auth,
    })
}

async fn fetch_jwks(http: &ProviderHttp, endpoints: &Endpoints) -> Result<CoreJsonWebKeySet> {
    let uri = endpoints.jwks_uri.as_deref().ok_or_else(|| Error::internal("provider has no JWKS"))?;
    let doc = http.get_json(uri, None).await?;
    // Keys `openidconnect` cannot read (other key types) are skipped, not fatal.
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| Error::from(FetchError::Invalid("JWKS has no keys".into())))?
        .iter()
        .filter_map(|k| serde_json::from_value::<CoreJsonWebKey>(k.clone()).ok())
        .collect();
    Ok(CoreJsonWebKeySet::new(keys))
}

/// Whether the key set has a key with this id.
fn has_kid(set: &CoreJsonWebKeySet, kid: &str) -> bool {
    set.keys().iter().any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
}

// ---------------------------------------------------------------- the actor

pub struct OAuthProviderActor;

pub struct ProviderArgs {
    pub tenant: TenantId,
    pub record: Arc<OAuthProviderRecord>,
    pub http: Arc<ProviderHttp>,
    /// The shared dependencies (the clock the JWKS refetch limit reads; tests move it).
    pub deps: Arc<crate::Deps>,
}

type EndpointsReply = RpcReplyPort<Result<Arc<Endpoints>>>;
type KeysReply = RpcReplyPort<Result<Arc<CoreJsonWebKeySet>>>;

pub struct ProviderState {
    tenant: TenantId,
    record: Arc<OAuthProviderRecord>,
    http: Arc<ProviderHttp>,
    /// Bumped on reconfiguration: fetches started before it are dropped.
    generation: u64,
    endpoints: Option<Arc<Endpoints>>,
    endpoints_waiting: Vec<EndpointsReply>,
    endpoints_fetching: bool,
    jwks: Option<Arc<CoreJsonWebKeySet>>,
    /// When the JWKS was last fetched (ms, by `deps.clock`).
    jwks_fetched: Option<i64>,
    deps: Arc<crate::Deps>,
    jwks_waiting: Vec<KeysReply>,
}

pub enum ProviderMsg {
    Name(RpcReplyPort<String>),
    /// The provider's endpoints (fetched on first use).
    Endpoints(EndpointsReply),
    /// The provider's JWKS, refetched first if it lacks `kid` and was not
    /// fetched within the last minute.
    Keys {
        kid: Option<String>,
        reply: KeysReply,
    },
    /// The config changed (another replica, or this one).
    Reconfigure(Arc<OAuthProviderRecord>),
    EndpointsFetched(u64, Result<Arc<Endpoints>>),
    KeysFetched(u64, Result<Arc<CoreJsonWebKeySet>>),
    #[cfg(feature = "testing")]
    Crash,
}

fn share<T>(r: &Result<Arc<T>>) -> Result<Arc<T>> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(Error::Unavailable(e.cause().unwrap_or("provider unavailable").to_owned())),
    }
}

impl ProviderState {
    fn fetch_endpoints(&mut self, myself: &ActorRef<ProviderMsg>) {
        if self.endpoints_fetching {
            return; // one fetch in flight
        }
        self.endpoints_fetching = true;
        let (me, http, record, generation) = (myself.clone(), self.http.clone(), self.record.clone(), self.generation);
        tokio::spawn(async move {
            let result = fetch_endpoints(&http, &record).await.map(Arc::new);
            let _ = me.cast(ProviderMsg::EndpointsFetched(generation, result));
        });
    }

    fn fetch_keys(&mut self, myself: &ActorRef<ProviderMsg>, endpoints: Arc<Endpoints>) {
        let (me, http, generation) = (myself.clone(), self.http.clone(), self.generation);
        self.jwks_fetched = Some(self.deps.clock.now_ms());
        tokio::spawn(async move {
            let result = fetch_jwks(&http, &endpoints).await.map(Arc::new);
            let _ = me.cast(ProviderMsg::KeysFetched(generation, result));
        });
    }
}

#[ractor::async_trait]
impl Actor for OAuthProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderState;
    type Arguments = ProviderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ProviderMsg>,
        args: ProviderArgs,
    ) -> Result<ProviderState, ActorProcessingErr> {
        Ok(ProviderState {
            tenant: args.tenant,
            record: args.record,
            http: args.http,
            generation: 0,
            endpoints: None,
            endpoints_waiting: Vec::new(),
            endpoints_fetching: false,
            jwks: None,
            jwks_fetched: None,
            deps: args.deps,
            jwks_waiting: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProviderMsg>,
        msg: ProviderMsg,
        state: &mut ProviderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProviderMsg::Name(reply) => {
                let _ = reply.send(state.record.name.clone());
            }
            ProviderMsg::Endpoints(reply) => match &state.endpoints {
                Some(e) => {
                    let _ = reply.send(Ok(e.clone()));
                }
                None => {
                    state.endpoints_waiting.push(reply);
                    state.fetch_endpoints(&myself);
                }
            },
            ProviderMsg::Keys { kid, reply } => {
                let known = match (&state.jwks, &kid) {
                    (Some(set), Some(kid)) => has_kid(set, kid),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                let every = i64::try_from(JWKS_REFETCH_EVERY.as_millis()).unwrap_or(60_000);
                let recent = state.jwks_fetched.is_some_and(|t| state.deps.clock.now_ms() - t < every);
                if let (Some(set), true) = (&state.jwks, known || recent) {
                    // An unknown kid within the minute: the caller fails the
                    // token; no new fetch.
                    let _ = reply.send(Ok(set.clone()));
                    return Ok(());
                }
                let first = state.jwks_waiting.is_empty();
                state.jwks_waiting.push(reply);
                if !first {
                    return Ok(()); // a fetch is in flight
                }
                match state.endpoints.clone() {
                    Some(endpoints) => state.fetch_keys(&myself, endpoints),
                    // The keys fetch starts when the endpoints arrive.
                    None => state.fetch_endpoints(&myself),
                }
            }
            ProviderMsg::EndpointsFetched(generation, result) => {
                state.endpoints_fetching = false;
                if generation != state.generation {
                    // Fetched for an old config: fetch again for the waiters.
                    if !state.endpoints_waiting.is_empty() || !state.jwks_waiting.is_empty() {
                        state.fetch_endpoints(&myself);
                    }
                    return Ok(());
                }
                if let Err(e) = &result {
                    tracing::warn!(tenant = %state.tenant, provider = %state.record.name, error = ?e.cause(), "provider discovery failed");
                }
                for w in state.endpoints_waiting.drain(..) {
                    let _ = w.send(share(&result));
                }
                match result {
                    Ok(endpoints) => {
                        state.endpoints = Some(endpoints.clone());
                        if !state.jwks_waiting.is_empty() {
                            state.fetch_keys(&myself, endpoints);
                        }
                    }
                    Err(e) => {
                        for w in state.jwks_waiting.drain(..) {
                            let _ = w.send(Err(Error::Unavailable(e.cause().unwrap_or_default().to_owned())));
                        }
                    }
                }
            }
            ProviderMsg::KeysFetched(generation, result) => {
                if generation == state.generation {
                    match &result {
                        Ok(set) => state.jwks = Some(set.clone()),
                        Err(e) => {
                            tracing::warn!(tenant = %state.tenant, provider = %state.record.name, error = ?e.cause(), "provider JWKS fetch failed");
                            // Let the next caller retry at once.
                            state.jwks_fetched = None;
                        }
                    }
                }
                for w in state.jwks_waiting.drain(..) {
                    // A failed refetch still leaves the keys we had.
                    let answer = match (&result, &state.jwks) {
                        (Err(_), Some(old)) => Ok(old.clone()),
                        _ => share(&result),
                    };
                    let _ = w.send(answer);
                }
            }
            ProviderMsg::Reconfigure(record) => {
                let endpoints_changed = record.kind != state.record.kind || record.issuer != state.record.issuer;
                state.record = record;
                if endpoints_changed {
                    state.generation += 1;
                    state.endpoints = None;
                    state.jwks = None;
                    state.jwks_fetched = None;
                }
            }
            #[cfg(feature = "testing")]
            ProviderMsg::Crash => {
                return Err("injected provider failure".into());
            }
        }
        Ok(())
    }
}
