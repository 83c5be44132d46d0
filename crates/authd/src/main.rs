//! `authd`: see `authd --help`.

use std::process::ExitCode;

use authd::cli::{Cli, Command, TenantCommand};
use authd::config::Config;
use clap::Parser;

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Schema { which } = cli.command {
        print!("{}", authd::cli::schema_sdl(which));
        return Ok(());
    }
    let config = Config::from_env()?;
    // Traces are exported by `serve` only; one-shot commands just log.
    let serving = matches!(cli.command, Command::Serve);
    let telemetry = authd::telemetry::init(config.log_json, serving && config.otel_traces)?;
    match cli.command {
        Command::Serve => {
            // The embedded default migrates itself on open; Postgres is
            // migrated by `authd migrate` (as the owner role).
            let running = authd::start(config).await?;
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            running.shutdown().await;
            tracing::info!("stopped");
            telemetry.shutdown().await;
            Ok(())
        }
        Command::Migrate { create_service_role } => {
            authd::cli::migrate(&config, create_service_role.as_deref()).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Reseal => authd::cli::reseal(&config).await,
        Command::Tenant { command: TenantCommand::Create { slug, name, admin_email } } => {
            authd::cli::tenant_create(&config, slug, name, admin_email).await
        }
        Command::Schema { .. } => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the variable and the problem; no backtrace.
            eprintln!("authd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
