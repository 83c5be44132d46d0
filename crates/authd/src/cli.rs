//! The `authd` subcommands.

use std::io::Read;

use anyhow::{Context, anyhow, bail};
use authd_tenancy::CreateTenant;
use authd_tenancy::audit::RequestMeta;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Storage};

/// authd: multi-tenant authentication (GraphQL, JWT, refresh tokens, TOTP, social login).
#[derive(Parser, Debug)]
#[command(name = "authd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (configuration from the environment; see the README).
    Serve,
    /// Apply database migrations and exit (run as the owner role).
    Migrate {
        /// Also create (or fix) this login role for `authd serve`: a member of
        /// authd_app that owns nothing. Its password comes from
        /// AUTHD_SERVICE_ROLE_PASSWORD when set, never from the command line.
        #[arg(long, value_name = "NAME")]
        create_service_role: Option<String>,
    },
    /// Print a GraphQL schema (SDL).
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
    /// Re-seal every signing key and TOTP secret under AUTHD_MASTER_KEY,
    /// opening them with it or with AUTHD_MASTER_KEY_PREVIOUS (after a
    /// master-key rotation).
    Reseal,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SchemaKind {
    Platform,
    Tenant,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant with its first admin. The admin password is read from
    /// AUTHD_ADMIN_PASSWORD or standard input, never from the command line.
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        admin_email: String,
    },
}

pub fn schema_sdl(which: SchemaKind) -> String {
    match which {
        SchemaKind::Platform => authd_api::platform_schema::build().sdl(),
        SchemaKind::Tenant => authd_api::tenant_schema::build().sdl(),
    }
}

pub async fn migrate(config: &Config, service_role: Option<&str>) -> anyhow::Result<()> {
    match &config.storage {
        Storage::Postgres { url } => {
            authd_store::postgres::migrate_postgres(url)
                .await
                .map_err(|e| anyhow!("DATABASE_URL: migration failed: {e}"))?;
            match service_role {
                Some(name) => {
                    let password = std::env::var("AUTHD_SERVICE_ROLE_PASSWORD").ok();
                    authd_store::postgres::create_service_role(url, name, password.as_deref())
                        .await
                        .map_err(|e| anyhow!("--create-service-role: {e}"))?;
                    eprintln!(
                        "login role {name} is a member of authd_app and owns nothing: run `authd serve` with \
                         DATABASE_URL naming {name}{}",
                        if password.is_some() { "" } else { " (set its password with AUTHD_SERVICE_ROLE_PASSWORD)" }
                    );
                }
                None => eprintln!(
                    "run `authd serve` as a login role that is a member of authd_app and owns nothing, not as this \
                     owner role: `authd migrate --create-service-role authd_service` creates one \
                     (or: CREATE ROLE authd_service LOGIN PASSWORD '...'; GRANT authd_app TO authd_service;)"
                ),
            }
            Ok(())
        }
        Storage::Embedded => {
            // Opening the embedded store migrates it.
            crate::server::open_store(config).await.map(|_| ())
        }
    }
}

fn admin_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("AUTHD_ADMIN_PASSWORD") {
        return Ok(p);
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("cannot read the admin password from standard input")?;
    let p = s.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        bail!("AUTHD_ADMIN_PASSWORD: not set and standard input was empty");
    }
    Ok(p)
}

pub async fn tenant_create(config: &Config, slug: String, name: String, admin_email: String) -> anyhow::Result<()> {
    config.require_production_secrets()?;
    let admin_password = admin_password()?;
    let deps = crate::server::build_deps_for(config, crate::server::Opener::Cli).await?;
    let platform = authd_tenancy::Platform::start(deps).await?;
    let input = CreateTenant { slug, name, admin_email, admin_password };
    let result = platform.create_tenant(input, "cli", &RequestMeta::default()).await;
    platform.shutdown().await;
    let t = result.map_err(|e| anyhow!("{}: {e}", e.code()))?;
    println!("created tenant {} ({}) issuer {}", t.slug, t.id, platform.deps.config.issuer(t.slug.as_str()));
    Ok(())
}

pub async fn reseal(config: &Config) -> anyhow::Result<()> {
    if config.master_key.is_none() {
        bail!("AUTHD_MASTER_KEY: required (the new master key to seal under)");
    }
    let deps = crate::server::build_deps_for(config, crate::server::Opener::Cli).await?;
    let report = authd_tenancy::reseal::reseal_all(&deps).await.map_err(|e| anyhow!("{}: {e}", e.code()))?;
    println!(
        "resealed {} signing keys, {} TOTP secrets and {} OAuth client secrets across {} tenants under master key {}",
        report.signing_keys,
        report.totp_secrets,
        report.oauth_client_secrets,
        report.tenants,
        deps.keyring.current().id()
    );
    Ok(())
}
