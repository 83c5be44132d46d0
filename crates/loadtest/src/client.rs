//! GraphQL over HTTP against authd: the four measured operations, and the
//! set-up calls (create a tenant, lift its rate limits, delete it).
//!
//! Measured calls fail with a short code (the contract's `extensions.code`,
//! `TRANSPORT` or `HTTP_<status>`) because that is what the report counts;
//! set-up calls fail with the whole message because a person reads it.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

const REGISTER: &str = "mutation($i: RegisterInput!) { register(input: $i) { id } }";
const LOGIN: &str =
    "mutation($i: LoginInput!) { login(input: $i) { __typename ... on AuthTokens { accessToken refreshToken } } }";
const REFRESH: &str = "mutation($t: String!) { refresh(refreshToken: $t) { accessToken refreshToken } }";
const ME: &str = "query { me { id } }";

/// An access token and the refresh token of the same session.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// An HTTP client with a keep-alive pool, shared by every simulated client:
/// connections are reused, as a real application's backend would.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// Where the platform API is (the admin listener when there is one).
    platform_base: String,
}

impl Api {
    pub fn new(base: &str, platform_base: &str, pool: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool.max(1))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("authd-load/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            platform_base: platform_base.trim_end_matches('/').to_owned(),
        })
    }

    /// One GraphQL request; `Err` carries the error code.
    async fn call(&self, url: &str, bearer: Option<&str>, query: &str, variables: Value) -> Result<Value, String> {
        let mut req = self.http.post(url).json(&json!({ "query": query, "variables": variables }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp =
            req.send().await.map_err(|e| if e.is_timeout() { "TIMEOUT".to_owned() } else { "TRANSPORT".to_owned() })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|_| format!("HTTP_{}", status.as_u16()))?;
        if let Some(first) = body.get("errors").and_then(|e| e.get(0)) {
            let code = first.pointer("/extensions/code").and_then(Value::as_str).unwrap_or("UNKNOWN");
            return Err(code.to_owned());
        }
        if !status.is_success() {
            return Err(format!("HTTP_{}", status.as_u16()));
        }
        Ok(body)
    }

    fn tenant_url(&self, slug: &str) -> String {
        format!("{}/t/{slug}/graphql", self.base)
    }

    pub async fn register(&self, slug: &str, email: &str, password: &str) -> Result<(), String> {
        let vars = json!({ "i": { "email": email, "password": password } });
        self.call(&self.tenant_url(slug), None, REGISTER, vars).await.map(|_| ())
    }

    pub async fn login(&self, slug: &str, email: &str, password: &str) -> Result<Tokens, String> {
        let vars = json!({ "i": { "email": email, "password": password } });
        let body = self.call(&self.tenant_url(slug), None, LOGIN, vars).await?;
        let login = &body["data"]["login"];
        if login["__typename"].as_str() == Some("MfaChallenge") {
            return Err("MFA_CHALLENGE".into());
        }
        tokens(login)
    }

    pub async fn refresh(&self, slug: &str, refresh_token: &str) -> Result<Tokens, String> {
        let body = self.call(&self.tenant_url(slug), None, REFRESH, json!({ "t": refresh_token })).await?;
        tokens(&body["data"]["refresh"])
    }

    pub async fn me(&self, slug: &str, access_token: &str) -> Result<(), String> {
        let body = self.call(&self.tenant_url(slug), Some(access_token), ME, json!({})).await?;
        match body.pointer("/data/me/id") {
            Some(Value::String(_)) => Ok(()),
            _ => Err("BAD_RESPONSE".into()),
        }
    }

    /// A set-up call: the `data` of the answer, or an error a person can read.
    async fn setup(
        &self,
        url: &str,
        bearer: Option<&str>,
        what: &str,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.post(url).json(&json!({ "query": query, "variables": variables }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.with_context(|| format!("{what}: cannot reach {url}"))?;
        let status = resp.status();
        let body: Value =
            resp.json().await.with_context(|| format!("{what}: {url} answered HTTP {status} without JSON"))?;
        if let Some(errors) = body.get("errors").filter(|e| e.as_array().is_some_and(|a| !a.is_empty())) {
            bail!("{what} failed (HTTP {status}): {errors}");
        }
        Ok(body["data"].clone())
    }

    /// Creates a tenant with its first admin; returns its id.
    pub async fn create_tenant(
        &self,
        platform_token: &str,
        slug: &str,
        admin_email: &str,
        admin_password: &str,
    ) -> anyhow::Result<String> {
        let url = format!("{}/graphql", self.platform_base);
        let data = self
            .setup(
                &url,
                Some(platform_token),
                &format!("createTenant {slug}"),
                "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id slug } }",
                json!({ "i": { "slug": slug, "name": format!("load test {slug}"), "adminEmail": admin_email, "adminPassword": admin_password } }),
            )
            .await?;
        match data.pointer("/createTenant/id").and_then(Value::as_str) {
            Some(id) => Ok(id.to_owned()),
            None => bail!("createTenant {slug}: no id in the answer"),
        }
    }

    /// Raises the tenant's rate limits (as its admin) so that the run
    /// measures the server's capacity, not its throttling: every simulated
    /// client comes from one IP and refreshes far faster than a person would.
    pub async fn lift_rate_limits(&self, slug: &str, admin_email: &str, admin_password: &str) -> anyhow::Result<()> {
        let admin = self
            .login(slug, admin_email, admin_password)
            .await
            .map_err(|code| anyhow::anyhow!("tenant {slug}: the admin cannot log in ({code})"))?;
        let high = 1_000_000;
        self.setup(
            &self.tenant_url(slug),
            Some(&admin.access),
            &format!("updateTenantSettings {slug}"),
            "mutation($i: TenantSettingsInput!) { updateTenantSettings(input: $i) { rateLimits { loginPerIpPerMinute } } }",
            json!({ "i": { "rateLimits": {
                "loginPerIpPerMinute": high,
                "registrationsPerIpPerHour": high,
                "refreshPerSessionPerMinute": high,
                "tenantRequestsPerSecond": high,
            } } }),
        )
        .await
        .map(|_| ())
    }

    /// Whether a tenant with this slug exists (the platform API's `tenant`).
    pub async fn tenant_exists(&self, platform_token: &str, slug: &str) -> anyhow::Result<bool> {
        let url = format!("{}/graphql", self.platform_base);
        let data = self
            .setup(
                &url,
                Some(platform_token),
                &format!("tenant {slug}"),
                "query($s: String!) { tenant(slug: $s) { id } }",
                json!({ "s": slug }),
            )
            .await?;
        Ok(!data["tenant"].is_null())
    }

    /// The smallest GraphQL request a tenant answers (`{ __typename }`): the
    /// first one makes the replica start the tenant.
    pub async fn touch(&self, slug: &str) -> Result<(), String> {
        self.call(&self.tenant_url(slug), None, "{ __typename }", json!({})).await.map(|_| ())
    }

    /// The tenant's JWKS, as a resource server fetches it.
    pub async fn jwks(&self, slug: &str) -> Result<(), String> {
        let url = format!("{}/t/{slug}/.well-known/jwks.json", self.base);
        let resp = self.http.get(&url).send().await.map_err(|_| "TRANSPORT".to_owned())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP_{}", resp.status().as_u16()));
        }
        resp.bytes().await.map(|_| ()).map_err(|_| "TRANSPORT".to_owned())
    }

    pub async fn delete_tenant(&self, platform_token: &str, slug: &str) -> anyhow::Result<()> {
        let url = format!("{}/graphql", self.platform_base);
        self.setup(
            &url,
            Some(platform_token),
            &format!("deleteTenant {slug}"),
            "mutation($s: String!) { deleteTenant(slug: $s) }",
            json!({ "s": slug }),
        )
        .await
        .map(|_| ())
    }
}

fn tokens(v: &Value) -> Result<Tokens, String> {
    match (v["accessToken"].as_str(), v["refreshToken"].as_str()) {
        (Some(a), Some(r)) => Ok(Tokens { access: a.to_owned(), refresh: r.to_owned() }),
        _ => Err("BAD_RESPONSE".into()),
    }
}
