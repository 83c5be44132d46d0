//! The server under load: one started in this process (the default), or an
//! external one at `--url`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use authd::Running;
use authd::config::{Config, Storage};
use authd_core::password::Argon2Params;
use secrecy::ExposeSecret;

pub struct Target {
    /// Base URL of the tenant API.
    pub url: String,
    /// Base URL of the platform API (the admin listener if configured).
    pub platform_url: String,
    pub platform_token: String,
    /// What the report says the server is.
    pub description: String,
    spawned: Option<Spawned>,
}

struct Spawned {
    running: Running,
    data_dir: PathBuf,
}

impl Target {
    /// Starts authd in process on a free port, with its data in a fresh temp
    /// dir and the given hashing parameters. The rest of its configuration
    /// comes from the environment as for `authd serve`, so `DATABASE_URL` and
    /// `REDIS_URL` there put the spawned server on Postgres and Redis.
    pub async fn spawn(argon2: Argon2Params, hash_threads: usize) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!("authd-load-{}", uuid::Uuid::new_v4().simple()));
        let overrides: HashMap<&'static str, String> = [
            ("AUTHD_LISTEN", "127.0.0.1:0".to_owned()),
            ("AUTHD_PUBLIC_URL", "http://127.0.0.1".to_owned()),
            ("AUTHD_DATA_DIR", data_dir.display().to_string()),
            ("AUTHD_ARGON2_MEMORY_KIB", argon2.memory_kib.to_string()),
            ("AUTHD_ARGON2_ITERATIONS", argon2.iterations.to_string()),
            ("AUTHD_ARGON2_PARALLELISM", argon2.parallelism.to_string()),
            ("AUTHD_HASH_THREADS", hash_threads.to_string()),
            // Nothing to drain for: the run is over when shutdown starts.
            ("AUTHD_SHUTDOWN_DELAY_SECS", "0".to_owned()),
            ("AUTHD_DRAIN_SECS", "2".to_owned()),
        ]
        .into_iter()
        .collect();
        let config = Config::from_lookup(|k| overrides.get(k).cloned().or_else(|| std::env::var(k).ok()))
            .context("configuration of the spawned server")?;
        let storage = match &config.storage {
            Storage::Postgres { .. } => "Postgres",
            Storage::Embedded => "embedded SQLite",
        };
        let tokens = if config.redis_url.is_some() { "Redis" } else { "in-process token store" };
        let running = authd::start(config).await.context("cannot start the in-process server")?;
        let url = format!("http://{}", running.addr);
        let platform_url = running.admin_addr.map_or_else(|| url.clone(), |a| format!("http://{a}"));
        let platform_token = running.platform_token().expose_secret().to_owned();
        Ok(Self {
            description: format!("in-process authd at {url} ({storage} + {tokens})"),
            url,
            platform_url,
            platform_token,
            spawned: Some(Spawned { running, data_dir }),
        })
    }

    /// An external server. The platform token comes from the flag, else the
    /// file, else the embedded default's `./authd-data/platform-token`.
    pub fn external(
        url: &str,
        platform_url: Option<&str>,
        token: Option<String>,
        token_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if !url.starts_with("http://") {
            bail!(
                "--url must be an http:// URL (this tool speaks plain HTTP; put it next to the server, not behind TLS)"
            );
        }
        let platform_token = match (token, token_file) {
            (Some(t), _) => t,
            (None, Some(path)) => read_token(path)?,
            (None, None) => {
                let default = Path::new("authd-data/platform-token");
                if !default.exists() {
                    bail!("give the platform token: --platform-token, --platform-token-file or AUTHD_PLATFORM_TOKEN");
                }
                read_token(default)?
            }
        };
        let url = url.trim_end_matches('/').to_owned();
        Ok(Self {
            description: format!("external authd at {url}"),
            platform_url: platform_url.map_or_else(|| url.clone(), |p| p.trim_end_matches('/').to_owned()),
            url,
            platform_token,
            spawned: None,
        })
    }

    pub fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// Stops a spawned server and removes its data; nothing for an external one.
    pub async fn stop(self) {
        if let Some(s) = self.spawned {
            s.running.shutdown().await;
            let _ = std::fs::remove_dir_all(&s.data_dir);
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the platform token from {}", path.display()))?;
    Ok(token.trim().to_owned())
}
