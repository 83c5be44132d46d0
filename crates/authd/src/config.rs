//! Configuration: read once at start-up from the environment, validated
//! before anything starts, and passed down as a typed struct. Nothing else
//! reads the environment. Every secret variable may instead be given as
//! `NAME_FILE`, a path to read it from (how Kubernetes mounts secrets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use authd_core::crypto::MasterKey;
use authd_core::password::Argon2Params;
use ipnet::IpNet;
use secrecy::SecretString;

/// A bad value: names the variable and the problem, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: String,
    pub problem: String,
}

fn err(var: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { var: var.to_owned(), problem: problem.into() }
}

/// Every variable authd reads, with its meaning (the README's table and the
/// Helm chart are checked against this list).
pub const VARIABLES: &[(&str, bool, &str)] = &[
    ("AUTHD_LISTEN", false, "address to serve on (default 127.0.0.1:8080)"),
    ("AUTHD_PUBLIC_URL", false, "the URL clients see; issuers derive from it (default http://{AUTHD_LISTEN})"),
    ("DATABASE_URL", true, "Postgres URL; absent: embedded SQLite under AUTHD_DATA_DIR"),
    ("REDIS_URL", true, "Redis URL (or comma-separated cluster seeds); absent: in-process token store"),
    ("AUTHD_REDIS_PREFIX", false, "prefix of every Redis key (default authd)"),
    (
        "AUTHD_REDIS_CA_FILE",
        false,
        "PEM file of the CA that signed a rediss:// server's certificate (default: the webpki roots)",
    ),
    ("AUTHD_DATA_DIR", false, "where the embedded default keeps its files (default ./authd-data)"),
    ("AUTHD_MASTER_KEY", true, "base64 of 32 random bytes; seals keys and secrets at rest"),
    ("AUTHD_MASTER_KEY_PREVIOUS", true, "comma-separated previous master keys, still accepted for opening (rotation)"),
    ("AUTHD_PLATFORM_TOKEN", true, "bearer token of the platform API"),
    ("AUTHD_ADMIN_LISTEN", false, "second listener for the platform API and /metrics (default: none)"),
    ("AUTHD_TRUSTED_PROXIES", false, "comma-separated CIDRs whose forwarding header is believed (default: none)"),
    (
        "AUTHD_FORWARDED_HEADER",
        false,
        "the header the trusted proxies write: x-forwarded-for (default) or forwarded; the other is ignored",
    ),
    ("AUTHD_PROVIDER_ALLOWED_NETWORKS", false, "comma-separated CIDRs where OAuth providers may live although private"),
    ("AUTHD_TENANT_IDLE_TIMEOUT_SECS", false, "stop an idle tenant's actors after this long (default 600)"),
    (
        "AUTHD_TENANT_REFRESH_MS",
        false,
        "how often the change feed asks storage which tenants changed (one query per process; default 5000 with Redis, whose pub/sub brings changes at once, else 1000)",
    ),
    ("AUTHD_ARGON2_MEMORY_KIB", false, "argon2id memory cost (default 19456)"),
    ("AUTHD_ARGON2_ITERATIONS", false, "argon2id time cost (default 2)"),
    ("AUTHD_ARGON2_PARALLELISM", false, "argon2id lanes (default 1)"),
    ("AUTHD_HASH_THREADS", false, "password-hashing threads (default: number of CPUs)"),
    ("AUTHD_HASH_QUEUE_PER_TENANT", false, "hashing jobs one tenant may queue before RATE_LIMITED (default 64)"),
    (
        "AUTHD_REPLICAS",
        false,
        "how many replicas share the limits; while Redis is unreachable each enforces 1/N (default 1)",
    ),
    ("AUTHD_DB_MAX_CONNECTIONS", false, "Postgres pool size (default 16)"),
    (
        "AUTHD_AUDIT_QUEUE_MAX",
        false,
        "audit events (refusals, failed logins) queued for writing at most; beyond, dropped and counted (default 10000)",
    ),
    (
        "AUTHD_DB_ACQUIRE_TIMEOUT_MS",
        false,
        "longest wait for a Postgres connection (connecting included) before UNAVAILABLE (default 1000)",
    ),
    ("AUTHD_DB_STATEMENT_TIMEOUT_MS", false, "Postgres statement_timeout of the service's connections (default 5000)"),
    ("AUTHD_SHUTDOWN_DELAY_SECS", false, "on SIGTERM, keep serving this long with /readyz at 503 (default 5)"),
    ("AUTHD_DRAIN_SECS", false, "then let in-flight requests finish for at most this long (default 20)"),
    ("AUTHD_LOG_FORMAT", false, "text or json (default text)"),
    ("AUTHD_METRICS_TENANT_LABELS", false, "add a tenant label to per-request metrics (default false: cardinality)"),
    (
        "AUTHD_SMTP_URL",
        true,
        "SMTP relay for mail: smtp:// (plain, a local relay), smtp+starttls:// or smtps://, credentials in the URL (default: none; the embedded default then writes .eml files into AUTHD_DATA_DIR/mail)",
    ),
    ("AUTHD_MAIL_FROM", false, "sender address of every mail (default no-reply@ the public URL's host)"),
    (
        "AUTHD_SMTP_CA_FILE",
        false,
        "PEM file of a CA to trust for the SMTP relay's certificate, besides the webpki roots",
    ),
    ("AUTHD_SMTP_TIMEOUT_MS", false, "time limit of one SMTP delivery (default 10000)"),
    ("AUTHD_MAIL_POLL_MS", false, "longest the mail sender sleeps with nothing due (default 60000)"),
    (
        "AUTHD_MAIL_RETRY_BASE_MS",
        false,
        "first retry delay of a failed delivery; doubles up to 10 minutes (default 2000)",
    ),
];

#[derive(Clone, Debug)]
pub enum Storage {
    Postgres { url: String },
    Embedded,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: String,
    /// `AUTHD_PUBLIC_URL` was not set: it follows the bound address.
    pub public_url_from_listen: bool,
    pub storage: Storage,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// `AUTHD_REDIS_CA_FILE`, read at start-up.
    pub redis_ca_pem: Option<Vec<u8>>,
    pub data_dir: PathBuf,
    /// `None` on the embedded default means "generate into the data dir".
    pub master_key: Option<MasterKey>,
    pub previous_master_keys: Vec<MasterKey>,
    pub platform_token: Option<SecretString>,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: authd_api::client::ForwardedHeader,
    pub provider_allowed_networks: Vec<IpNet>,
    pub tenant_idle_timeout: Duration,
    pub tenant_refresh_interval: Duration,
    pub argon2: Argon2Params,
    pub hash_threads: usize,
    pub hash_queue_per_tenant: usize,
    pub db_max_connections: u32,
    pub audit_queue_max: usize,
    pub db_timeouts: authd_store::postgres::PgTimeouts,
    pub replicas: u32,
    pub shutdown_delay: Duration,
    pub drain_time: Duration,
    pub log_json: bool,
    /// `AUTHD_METRICS_TENANT_LABELS`.
    pub metrics_tenant_labels: bool,
    /// `AUTHD_SMTP_URL` (a secret: it may hold credentials).
    pub smtp_url: Option<SecretString>,
    /// `AUTHD_MAIL_FROM`.
    pub mail_from: lettre::Address,
    /// `AUTHD_SMTP_CA_FILE`, read at start-up.
    pub smtp_ca_pem: Option<Vec<u8>>,
    pub smtp_timeout: Duration,
    pub mail_timing: authd_tenancy::mail::SenderTiming,
    /// An OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the SDK reads the value) and
    /// neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
    pub otel_traces: bool,
}

impl std::fmt::Debug for Config {
    /// Secrets masked: this is what start-up prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field(
                "storage",
                &match &self.storage {
                    Storage::Postgres { url } => format!("postgres ({})", mask_url(url)),
                    Storage::Embedded => format!("embedded sqlite in {}", self.data_dir.display()),
                },
            )
            .field("redis", &self.redis_url.as_deref().map(mask_url))
            .field("smtp", &self.smtp_url.as_ref().map(|u| mask_url(secrecy::ExposeSecret::expose_secret(u))))
            .field("mail_from", &self.mail_from.to_string())
            .field("master_key", &self.master_key.as_ref().map(|k| format!("id {}", k.id())))
            .field("platform_token", &self.platform_token.as_ref().map(|_| "***"))
            .field("admin_listen", &self.admin_listen)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("argon2", &self.argon2)
            .field("otel_traces", &self.otel_traces)
            .finish_non_exhaustive()
    }
}

/// Hides the password of a URL.
pub fn mask_url(url: &str) -> String {
    match url::Url::parse(url.split(',').next().unwrap_or(url)) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable)".into(),
    }
}

/// Reads variables through `get` (the environment in production, a map in tests).
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn plain(&self, name: &str) -> Option<String> {
        (self.0)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// A secret: `NAME`, or the contents of the file named by `NAME_FILE`.
    fn secret(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let file_var = format!("{name}_FILE");
        match (self.plain(name), self.plain(&file_var)) {
            (Some(_), Some(_)) => Err(err(name, format!("set either {name} or {file_var}, not both"))),
            (Some(v), None) => Ok(Some(v)),
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                .map_err(|e| err(&file_var, format!("cannot read {path}: {e}"))),
            (None, None) => Ok(None),
        }
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError> {
        match self.plain(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| err(name, format!("cannot parse {v:?}"))),
        }
    }

    fn cidrs(&self, name: &str) -> Result<Vec<IpNet>, ConfigError> {
        let Some(v) = self.plain(name) else { return Ok(Vec::new()) };
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| err(name, format!("{s:?} is not a CIDR or address")))
            })
            .collect()
    }
}

impl Config {
    /// Production storage needs its secrets from the environment: generating
    /// them would give every replica a different key. (`authd migrate` needs
    /// neither, so only the commands that serve or seal call this.)
    pub fn require_production_secrets(&self) -> Result<(), ConfigError> {
        if matches!(self.storage, Storage::Postgres { .. }) {
            if self.master_key.is_none() {
                return Err(err("AUTHD_MASTER_KEY", "required with DATABASE_URL (base64 of 32 random bytes)"));
            }
            if self.platform_token.is_none() {
                return Err(err("AUTHD_PLATFORM_TOKEN", "required with DATABASE_URL"));
            }
        }
        Ok(())
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(get);
        let listen: SocketAddr = env.parse("AUTHD_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let public_url_from_listen = env.plain("AUTHD_PUBLIC_URL").is_none();
        let public_url = env.plain("AUTHD_PUBLIC_URL").unwrap_or_else(|| format!("http://{listen}"));
        match url::Url::parse(&public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(err("AUTHD_PUBLIC_URL", "must be an absolute http(s) URL")),
        }
        let public_url = public_url.trim_end_matches('/').to_owned();

        let storage = match env.secret("DATABASE_URL")? {
            Some(url) => {
                let parsed = url::Url::parse(&url).map_err(|_| err("DATABASE_URL", "not a URL"))?;
                if !matches!(parsed.scheme(), "postgres" | "postgresql") {
                    return Err(err("DATABASE_URL", "must be a postgres:// URL"));
                }
                Storage::Postgres { url }
            }
            None => Storage::Embedded,
        };
        let redis_url = env.secret("REDIS_URL")?;
        let has_redis = redis_url.is_some();
        if let Some(url) = redis_url.as_ref().filter(|u| !u.starts_with("redis+cluster://")) {
            for seed in url.split(',') {
                let ok = url::Url::parse(seed.trim()).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss"));
                if !ok {
                    return Err(err("REDIS_URL", format!("{} is not a redis:// URL", mask_url(seed.trim()))));
                }
            }
        }
        let redis_prefix = env.plain("AUTHD_REDIS_PREFIX").unwrap_or_else(|| "authd".into());
        if redis_prefix.contains(['{', '}', ' ']) {
            return Err(err("AUTHD_REDIS_PREFIX", "must not contain braces or spaces"));
        }
        let data_dir = PathBuf::from(env.plain("AUTHD_DATA_DIR").unwrap_or_else(|| "./authd-data".into()));

        let master_key = env
            .secret("AUTHD_MASTER_KEY")?
            .map(|v| MasterKey::from_base64(&v).map_err(|e| err("AUTHD_MASTER_KEY", e.to_string())))
            .transpose()?;
        let previous_master_keys = match env.secret("AUTHD_MASTER_KEY_PREVIOUS")? {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|k| MasterKey::from_base64(k.trim()).map_err(|e| err("AUTHD_MASTER_KEY_PREVIOUS", e.to_string())))
                .collect::<Result<_, _>>()?,
        };
        let platform_token = env.secret("AUTHD_PLATFORM_TOKEN")?;
        if let Some(t) = &platform_token
            && t.len() < 32
        {
            return Err(err("AUTHD_PLATFORM_TOKEN", "must be at least 32 characters"));
        }
        let admin_listen = match env.plain("AUTHD_ADMIN_LISTEN") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| err("AUTHD_ADMIN_LISTEN", format!("cannot parse {v:?}")))?),
        };
        let argon2 = Argon2Params {
            memory_kib: env.parse("AUTHD_ARGON2_MEMORY_KIB", 19456)?,
            iterations: env.parse("AUTHD_ARGON2_ITERATIONS", 2)?,
            parallelism: env.parse("AUTHD_ARGON2_PARALLELISM", 1)?,
        };
        if argon2.memory_kib < 8 * argon2.parallelism.max(1) || argon2.iterations < 1 || argon2.parallelism < 1 {
            return Err(err("AUTHD_ARGON2_MEMORY_KIB", "argon2 parameters out of range"));
        }
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let log_format = env.plain("AUTHD_LOG_FORMAT").unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            _ => return Err(err("AUTHD_LOG_FORMAT", "must be text or json")),
        };
        let metrics_tenant_labels = match env.plain("AUTHD_METRICS_TENANT_LABELS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => return Err(err("AUTHD_METRICS_TENANT_LABELS", "must be true or false")),
        };
        let otel_endpoint =
            env.plain("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env.plain("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if let Some(e) = &otel_endpoint
            && !url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(err("OTEL_EXPORTER_OTLP_ENDPOINT", "must be an http(s) URL"));
        }
        let otel_traces = otel_endpoint.is_some()
            && !env.plain("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && !env.plain("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let smtp_url = env.secret("AUTHD_SMTP_URL")?;
        if let Some(u) = &smtp_url {
            let settings =
                authd_tenancy::mail::SmtpSettings { url: u.clone(), ca_pem: None, timeout: Duration::from_secs(10) };
            if let Err(e) = authd_tenancy::mail::Mailer::smtp_transport(&settings) {
                return Err(err("AUTHD_SMTP_URL", e.to_string()));
            }
        }
        let host = url::Url::parse(&public_url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let default_from = if host.contains('.') { format!("no-reply@{host}") } else { "no-reply@localhost".into() };
        let mail_from_text = env.plain("AUTHD_MAIL_FROM").unwrap_or(default_from);
        let mail_from: lettre::Address = mail_from_text
            .parse()
            .map_err(|_| err("AUTHD_MAIL_FROM", format!("{mail_from_text:?} is not an email address")))?;
        let smtp_timeout = Duration::from_millis(env.parse("AUTHD_SMTP_TIMEOUT_MS", 10_000u64)?.max(100));
        let mail_timing = authd_tenancy::mail::SenderTiming {
            poll_interval: Duration::from_millis(env.parse("AUTHD_MAIL_POLL_MS", 60_000u64)?.max(10)),
            retry_base: Duration::from_millis(env.parse("AUTHD_MAIL_RETRY_BASE_MS", 2000u64)?.max(10)),
            send_timeout: smtp_timeout,
            ..Default::default()
        };
        Ok(Self {
            smtp_url: smtp_url.map(SecretString::from),
            mail_from,
            smtp_ca_pem: match env.plain("AUTHD_SMTP_CA_FILE") {
                Some(path) => Some(
                    std::fs::read(&path).map_err(|e| err("AUTHD_SMTP_CA_FILE", format!("cannot read {path}: {e}")))?,
                ),
                None => None,
            },
            smtp_timeout,
            mail_timing,
            listen,
            public_url,
            public_url_from_listen,
            storage,
            redis_url,
            redis_prefix,
            redis_ca_pem: match env.plain("AUTHD_REDIS_CA_FILE") {
                Some(path) => Some(
                    std::fs::read(&path).map_err(|e| err("AUTHD_REDIS_CA_FILE", format!("cannot read {path}: {e}")))?,
                ),
                None => None,
            },
            data_dir,
            master_key,
            previous_master_keys,
            platform_token: platform_token.map(SecretString::from),
            admin_listen,
            trusted_proxies: env.cidrs("AUTHD_TRUSTED_PROXIES")?,
            forwarded_header: env.parse("AUTHD_FORWARDED_HEADER", Default::default())?,
            provider_allowed_networks: env.cidrs("AUTHD_PROVIDER_ALLOWED_NETWORKS")?,
            tenant_idle_timeout: Duration::from_secs(env.parse("AUTHD_TENANT_IDLE_TIMEOUT_SECS", 600)?),
            tenant_refresh_interval: Duration::from_millis(
                env.parse::<u64>("AUTHD_TENANT_REFRESH_MS", default_refresh_ms(has_redis))?.max(50),
            ),
            argon2,
            hash_threads: env.parse("AUTHD_HASH_THREADS", cpus)?.max(1),
            hash_queue_per_tenant: env.parse("AUTHD_HASH_QUEUE_PER_TENANT", 64)?.max(1),
            db_max_connections: env.parse("AUTHD_DB_MAX_CONNECTIONS", 16)?.max(1),
            audit_queue_max: env.parse("AUTHD_AUDIT_QUEUE_MAX", 10_000usize)?.max(1),
            db_timeouts: authd_store::postgres::PgTimeouts {
                acquire: Duration::from_millis(env.parse("AUTHD_DB_ACQUIRE_TIMEOUT_MS", 1000u64)?.max(1)),
                statement: Duration::from_millis(env.parse("AUTHD_DB_STATEMENT_TIMEOUT_MS", 5000u64)?.max(1)),
            },
            replicas: env.parse("AUTHD_REPLICAS", 1)?.max(1),
            shutdown_delay: Duration::from_secs(env.parse("AUTHD_SHUTDOWN_DELAY_SECS", 5)?),
            drain_time: Duration::from_secs(env.parse("AUTHD_DRAIN_SECS", 20)?),
            log_json,
            metrics_tenant_labels,
            otel_traces,
        })
    }
}

/// The change feed's default interval. With Redis, other replicas' change
/// notices arrive at once over pub/sub and the feed only catches a lost one,
/// so it looks every 5 s (a fifth of the idle storage traffic); without
/// Redis it is how changes arrive, every second.
fn default_refresh_ms(redis: bool) -> u64 {
    if redis { 5000 } else { 1000 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_embedded_default_needs_nothing() {
        let c = cfg(&[]).unwrap();
        assert!(matches!(c.storage, Storage::Embedded));
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn the_change_feed_looks_less_often_where_redis_brings_changes() {
        let every = |pairs: &[(&str, &str)]| cfg(pairs).unwrap().tenant_refresh_interval;
        assert_eq!(every(&[]), Duration::from_secs(1));
        assert_eq!(every(&[("REDIS_URL", "redis://127.0.0.1:6379")]), Duration::from_secs(5));
        let set = [("REDIS_URL", "redis://127.0.0.1:6379"), ("AUTHD_TENANT_REFRESH_MS", "700")];
        assert_eq!(every(&set), Duration::from_millis(700), "an explicit setting wins");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (pairs, var) in [
            (vec![("AUTHD_LISTEN", "nonsense")], "AUTHD_LISTEN"),
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (vec![("AUTHD_MASTER_KEY", "c2hvcnQ=")], "AUTHD_MASTER_KEY"),
            (vec![("AUTHD_TRUSTED_PROXIES", "10.0.0.0/33")], "AUTHD_TRUSTED_PROXIES"),
            (vec![("REDIS_URL", "http://x")], "REDIS_URL"),
            (vec![("AUTHD_METRICS_TENANT_LABELS", "sometimes")], "AUTHD_METRICS_TENANT_LABELS"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("AUTHD_SMTP_URL", "http://mail.example.com")], "AUTHD_SMTP_URL"),
            (vec![("AUTHD_MAIL_FROM", "not an address")], "AUTHD_MAIL_FROM"),
        ] {
            let e = cfg(&pairs).err().unwrap();
            assert_eq!(e.var, var, "{e}");
        }
    }

    #[test]
    fn traces_are_exported_only_with_an_endpoint_and_not_disabled() {
        assert!(!cfg(&[]).unwrap().otel_traces);
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        assert!(cfg(&on).unwrap().otel_traces);
        assert!(cfg(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]).unwrap().otel_traces);
        assert!(!cfg(&[on[0], ("OTEL_SDK_DISABLED", "true")]).unwrap().otel_traces);
        assert!(!cfg(&[on[0], ("OTEL_TRACES_EXPORTER", "none")]).unwrap().otel_traces);
        assert!(!cfg(&[]).unwrap().metrics_tenant_labels);
        assert!(cfg(&[("AUTHD_METRICS_TENANT_LABELS", "true")]).unwrap().metrics_tenant_labels);
    }

    #[test]
    fn production_storage_requires_its_secrets_to_serve_but_not_to_migrate() {
        let c = cfg(&[("DATABASE_URL", "postgres://localhost/x")]).unwrap();
        assert_eq!(c.require_production_secrets().unwrap_err().var, "AUTHD_MASTER_KEY");
        let key = authd_core::crypto::MasterKey::generate().to_base64();
        let c = cfg(&[("DATABASE_URL", "postgres://localhost/x"), ("AUTHD_MASTER_KEY", &key)]).unwrap();
        assert_eq!(c.require_production_secrets().unwrap_err().var, "AUTHD_PLATFORM_TOKEN");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("authd-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "t".repeat(40) + "\n").unwrap();
        let c = cfg(&[("AUTHD_PLATFORM_TOKEN_FILE", path.to_str().unwrap())]).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(c.platform_token.unwrap().expose_secret(), "t".repeat(40));
        let debug = format!("{:?}", cfg(&[("AUTHD_PLATFORM_TOKEN_FILE", path.to_str().unwrap())]).unwrap());
        assert!(!debug.contains(&"t".repeat(40)));
    }
}
