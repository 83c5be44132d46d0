//! Start-up and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, anyhow};
use authd_api::{ApiConfig, AppState};
use authd_core::crypto::{Keyring, MasterKey};
use authd_store::Store;
use authd_store::postgres::PgStore;
use authd_store::sqlite::SqliteStore;
use authd_tenancy::audit::AuditSink;
use authd_tenancy::hashing::HashPool;
use authd_tenancy::{Deps, Platform, TenancyConfig};
use authd_tokens::TokenStore;
use authd_tokens::memory::MemoryTokenStore;
use authd_tokens::redis_store::RedisTokenStore;
use authd_tokens::sqlite::SqliteTokenStore;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Storage};

/// Opens storage: Postgres as the application role, or the embedded SQLite
/// file (migrated on open).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.storage {
        Storage::Postgres { url } => {
            let store = PgStore::connect_with(url, config.db_max_connections, config.db_timeouts)
                .await
                .map_err(|e| anyhow!("DATABASE_URL: cannot connect as the application role: {e}"))?;
            match store.login_role_problems().await {
                Ok(problems) => {
                    for problem in problems {
                        tracing::warn!(
                            "{problem}: row-level security holds only while the service keeps its SET ROLE; \
                             run `authd serve` as a login role that is a member of authd_app and owns nothing \
                             (`authd migrate --create-service-role <name>` creates one)"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not check the database login role"),
            }
            Arc::new(store)
        }
        Storage::Embedded => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("AUTHD_DATA_DIR: cannot create {}", config.data_dir.display()))?;
            Arc::new(
                SqliteStore::open(&config.data_dir)
                    .await
                    .map_err(|e| anyhow!("AUTHD_DATA_DIR: cannot open the embedded database: {e}"))?,
            )
        }
    })
}

/// Who opens the token store: `authd serve`, or a CLI command that never
/// touches sessions (so it must not need the file a running server holds).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    Server,
    Cli,
}

async fn open_tokens(config: &Config, opener: Opener) -> anyhow::Result<Arc<dyn TokenStore>> {
    Ok(match &config.redis_url {
        Some(url) => {
            let store = RedisTokenStore::connect_with_ca(url, &config.redis_prefix, config.redis_ca_pem.as_deref())
                .await
                .map_err(|e| anyhow!("REDIS_URL: {e}"))?;
            // An evicted deny entry would revive a revoked session.
            store.check_eviction_policy().await.map_err(|e| anyhow!("REDIS_URL: {e}"))?;
            Arc::new(store)
        }
        // The embedded default keeps sessions, revocations and limits in its
        // own SQLite file beside the data, so a restart forgets nothing (a
        // logged-out token must stay refused).
        // The CLI's commands (tenant creation, resealing) need no sessions,
        // and a second process must not write the file a running server
        // remembers revocations of (its memos see only its own writes).
        None if matches!(config.storage, Storage::Embedded) && opener == Opener::Cli => {
            Arc::new(MemoryTokenStore::new())
        }
        None if matches!(config.storage, Storage::Embedded) => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("AUTHD_DATA_DIR: cannot create {}", config.data_dir.display()))?;
            let path = config.data_dir.join("tokens.db");
            Arc::new(
                SqliteTokenStore::open(&path)
                    .await
                    .map_err(|e| anyhow!("AUTHD_DATA_DIR: cannot open the token store {}: {e}", path.display()))?,
            )
        }
        // Postgres without Redis: one replica, state in process.
        None => Arc::new(MemoryTokenStore::new()),
    })
}

/// Writes `contents` to a new file readable by the owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// A secret of the embedded default: from the configuration, else read from
/// (or generated once into) a `0600` file in the data dir.
fn embedded_secret(dir: &Path, name: &str, generate: impl FnOnce() -> String) -> anyhow::Result<(String, bool)> {
    let path = dir.join(name);
    if path.exists() {
        let v = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((v.trim().to_owned(), false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("AUTHD_DATA_DIR: cannot create {}", dir.display()))?;
    let v = generate();
    write_private(&path, &v)?;
    Ok((v, true))
}

pub fn master_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let current = match &config.master_key {
        Some(k) => k.clone(),
        None => {
            let (v, created) = embedded_secret(&config.data_dir, "master.key", || MasterKey::generate().to_base64())?;
            if created {
                tracing::warn!(
                    path = %config.data_dir.join("master.key").display(),
                    "AUTHD_MASTER_KEY is not set: generated one into the data dir (fine for a laptop; set it in production)"
                );
            }
            MasterKey::from_base64(&v).map_err(|e| anyhow!("{}: {e}", config.data_dir.join("master.key").display()))?
        }
    };
    Ok(Keyring::new(current, config.previous_master_keys.clone()))
}

fn platform_token(config: &Config) -> anyhow::Result<SecretString> {
    match &config.platform_token {
        Some(t) => Ok(t.clone()),
        None => {
            let path = config.data_dir.join("platform-token");
            let (v, created) =
                embedded_secret(&config.data_dir, "platform-token", || authd_core::crypto::random_token(32))?;
            if created {
                tracing::info!(path = %path.display(), "generated the platform API token (read it from this file)");
            } else {
                tracing::info!(path = %path.display(), "platform API token is in this file");
            }
            Ok(SecretString::from(v))
        }
    }
}

fn tenancy_config(config: &Config) -> TenancyConfig {
    TenancyConfig {
        public_url: config.public_url.clone(),
        argon2: config.argon2,
        tenant_idle_timeout: config.tenant_idle_timeout,
        tenant_refresh_interval: config.tenant_refresh_interval,
        provider_allowed_networks: config.provider_allowed_networks.clone(),
        ..TenancyConfig::default()
    }
}

/// Builds every shared dependency (no listener).
pub async fn build_deps(config: &Config) -> anyhow::Result<Arc<Deps>> {
    build_deps_for(config, Opener::Server).await
}

/// [`build_deps`] for `opener`.
pub async fn build_deps_for(config: &Config, opener: Opener) -> anyhow::Result<Arc<Deps>> {
    // Every storage call becomes a span and counts its failures.
    let system = match config.storage {
        Storage::Postgres { .. } => "postgresql",
        Storage::Embedded => "sqlite",
    };
    // Every token-store call becomes a span and counts its failures.
    let tenant_calls = authd_tenancy::traced::TenantCalls::default();
    let tokens =
        authd_tenancy::traced::TracedTokenStore::wrap(open_tokens(config, opener).await?, tenant_calls.clone());
    // Storage too; its writes of user rows also reach the user memo.
    let store = authd_tenancy::traced::TracedStore::wrap(
        open_store(config).await?,
        system,
        tokens.clone(),
        tenant_calls.clone(),
    );
    let keyring = Arc::new(master_keyring(config)?);
    let hasher = HashPool::new(config.hash_threads, config.hash_queue_per_tenant)?;
    let audit = AuditSink::start(store.clone(), config.audit_queue_max);
    let mail = mailer(config)?;
    Ok(Arc::new(Deps {
        store,
        tokens,
        keyring,
        hasher,
        audit,
        config: tenancy_config(config),
        clock: Default::default(),
        fallback: authd_tenancy::limits::Fallback::new(config.replicas),
        provider_http: Default::default(),
        mail,
        tenant_calls,
    }))
}

/// Mail goes to the SMTP relay when one is configured; else the embedded
/// default writes `.eml` files into the data dir, and Postgres has none
/// (flows that must send mail answer `UNAVAILABLE`).
fn mailer(config: &Config) -> anyhow::Result<Option<Arc<authd_tenancy::mail::Mailer>>> {
    use authd_tenancy::mail::{Mailer, SmtpSettings, Transport};
    let transport = match (&config.smtp_url, &config.storage) {
        (Some(url), _) => {
            let settings = SmtpSettings {
                url: url.expose_secret().to_owned(),
                ca_pem: config.smtp_ca_pem.clone(),
                timeout: config.smtp_timeout,
            };
            Transport::Smtp(Mailer::smtp_transport(&settings).map_err(|e| anyhow!("AUTHD_SMTP_URL: {e}"))?)
        }
        (None, Storage::Embedded) => {
            let dir = config.data_dir.join("mail");
            tracing::info!(dir = %dir.display(), "AUTHD_SMTP_URL is not set: mail is written as .eml files here");
            Transport::Files(dir)
        }
        (None, Storage::Postgres { .. }) => {
            tracing::warn!(
                "AUTHD_SMTP_URL is not set: email verification, password reset and magic links are unavailable"
            );
            return Ok(None);
        }
    };
    Ok(Some(Arc::new(Mailer::new(config.mail_from.clone(), transport, config.mail_timing))))
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub platform: Platform,
    pub state: AppState,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    config: Config,
}

impl Running {
    /// The platform API's token (tests read it to call the platform API).
    pub fn platform_token(&self) -> &SecretString {
        &self.state.platform_token
    }

    /// Graceful shutdown: readiness turns 503 at once, requests are still
    /// served for the configured delay, then listeners stop accepting,
    /// in-flight requests finish (bounded by the drain time), actors stop and
    /// batched audit events are flushed.
    pub async fn shutdown(self) {
        self.state.shutting_down.store(true, Ordering::Release);
        tokio::time::sleep(self.config.shutdown_delay).await;
        let _ = self.shutdown_tx.send(true);
        let drain = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(self.config.drain_time, drain).await.is_err() {
            tracing::warn!("drain time elapsed with requests still in flight");
        }
        self.platform.shutdown().await;
    }
}

async fn serve(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "listener failed");
    }
}

/// Starts the service: storage, token store, actor tree and listeners.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    config.require_production_secrets()?;
    // Bind first: with port 0 the issuer must name the port actually bound.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow!("AUTHD_LISTEN: cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    if config.public_url_from_listen {
        config.public_url = format!("http://{addr}");
    }
    tracing::info!(config = ?config, "starting authd");
    authd_tenancy::metrics::set_tenant_labels(config.metrics_tenant_labels);
    let deps = build_deps(&config).await?;
    let token = platform_token(&config)?;
    let platform = Platform::start(deps).await?;
    let api = ApiConfig {
        public_url: config.public_url.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        forwarded_header: config.forwarded_header,
        platform_on_public: config.admin_listen.is_none(),
        max_body_bytes: 64 * 1024,
    };
    let state = AppState::new(platform.clone(), api, token);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(serve(listener, authd_api::public_router(state.clone()), shutdown_rx.clone()))];
    if let Some(mailer) = platform.deps.mail.clone() {
        let deps = platform.deps.clone();
        tasks.push(tokio::spawn(authd_tenancy::mail::run_sender(deps, mailer, shutdown_rx.clone())));
    }
    let mut admin_addr = None;
    if let Some(admin) = config.admin_listen {
        let l =
            TcpListener::bind(admin).await.map_err(|e| anyhow!("AUTHD_ADMIN_LISTEN: cannot listen on {admin}: {e}"))?;
        admin_addr = Some(l.local_addr()?);
        tasks.push(tokio::spawn(serve(l, authd_api::admin_router(state.clone()), shutdown_rx)));
    }
    tracing::info!(%addr, admin = ?admin_addr, "authd is serving");
    Ok(Running { addr, admin_addr, platform, state, shutdown_tx, tasks, config })
}
