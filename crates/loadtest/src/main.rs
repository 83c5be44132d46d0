//! `authd-load`: a benchmark that drives authd with N tenants and C
//! concurrent clients through register, login, refresh and `me`, and prints
//! for each requests/s, p50 and p99. In the same run, on the same cores, it
//! measures the raw argon2id ceiling (hashes/s with the server's parameters
//! on the server's number of hashing threads) and prints login/ceiling: how
//! close password logins come to the physical limit. On a shared, noisy
//! machine the ratios are the figures to compare between runs, not the
//! absolute rates; when the server runs in this process it also prints the
//! CPU time per request, and hash CPU ÷ login CPU, which the machine's load
//! moves much less than wall-clock rates.
//!
//! By default it starts authd in this process (embedded SQLite, in-process
//! token store, temp data dir); `--url` drives an external server instead.
//! It exits non-zero when a phase's unexpected error rate passes
//! `--max-error-percent`, so `--quick` doubles as a CI smoke test.
//!
//! Layout:
//! - [`target`]: the server under load, spawned in process or external.
//! - [`client`]: GraphQL calls (measured operations and tenant set-up).
//! - [`phases`]: simulated clients and the timed phases.
//! - [`ceiling`]: the argon2id hashes/s these cores can do.
//! - [`cpu`]: CPU time from `/proc`, the noise-resistant view.
//! - [`stats`]: samples, percentiles and the per-phase summary.
//! - [`report`]: the tables and the one-line summary.
//! - [`scale`]: `--scale`: idle cost and first-request latency with many tenants.

mod ceiling;
mod client;
mod cpu;
mod phases;
mod report;
mod scale;
mod stats;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use authd_core::password::Argon2Params;
use clap::Parser;

use crate::ceiling::Ceiling;
use crate::client::Api;
use crate::phases::{Phase, Shared, Worker, run_phase};
use crate::report::{Ceilings, Fairness, Report};
use crate::target::Target;

/// Load test for authd: register, login, refresh and `me` under N tenants
/// and C concurrent clients, compared with the raw argon2id ceiling.
#[derive(Parser, Debug)]
#[command(name = "authd-load", version, about)]
struct Args {
    /// Drive the authd at this base URL (http only) instead of starting one
    /// in process.
    #[arg(long, env = "AUTHD_LOAD_URL")]
    url: Option<String>,
    /// Base URL of the platform API when it is on a separate admin listener.
    #[arg(long, requires = "url")]
    platform_url: Option<String>,
    /// Start authd in this process (the default without --url).
    #[arg(long, conflicts_with = "url")]
    spawn: bool,
    /// Platform API token of the external server.
    #[arg(long, env = "AUTHD_PLATFORM_TOKEN", hide_env_values = true)]
    platform_token: Option<String>,
    /// File holding the platform API token (default ./authd-data/platform-token).
    #[arg(long)]
    platform_token_file: Option<PathBuf>,
    /// Tenants created for the run; clients are spread across them.
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Concurrent clients (each sends one request at a time).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Length of each phase in seconds (default 8, or 2 with --quick).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Length of each argon2id ceiling measurement in seconds (default 3, or 1 with --quick).
    #[arg(long)]
    ceiling_secs: Option<f64>,
    /// How the ceiling hashes: `raw` argon2id into memory kept per thread
    /// (the algorithm's cost), or `authd`'s own `hash_password`, which
    /// allocates on every call.
    #[arg(long, value_enum, default_value = "raw")]
    ceiling_mode: ceiling::Mode,
    /// Short phases for a smoke run.
    #[arg(long)]
    quick: bool,
    /// argon2id memory cost in KiB; must match the server's.
    #[arg(long, env = "AUTHD_ARGON2_MEMORY_KIB", default_value_t = 19456)]
    argon2_memory_kib: u32,
    /// argon2id passes; must match the server's.
    #[arg(long, env = "AUTHD_ARGON2_ITERATIONS", default_value_t = 2)]
    argon2_iterations: u32,
    /// argon2id lanes; must match the server's.
    #[arg(long, env = "AUTHD_ARGON2_PARALLELISM", default_value_t = 1)]
    argon2_parallelism: u32,
    /// Hashing threads of the server, and of the ceiling measurement
    /// (default: number of CPUs, as the server's default).
    #[arg(long, env = "AUTHD_HASH_THREADS")]
    hash_threads: Option<usize>,
    /// Also measure fairness: tenant B's login latency alone, then while
    /// tenant A floods logins.
    #[arg(long)]
    fairness: bool,
    /// Tenant A's flooding clients in the fairness phase (default 4 × concurrency).
    #[arg(long)]
    fairness_flood: Option<usize>,
    /// Tenant B's clients in the fairness phase.
    #[arg(long, default_value_t = 2)]
    fairness_clients: usize,
    /// Error codes that do not count as failures (back-pressure is a correct answer).
    #[arg(long, value_delimiter = ',', default_value = "RATE_LIMITED")]
    expected_codes: Vec<String>,
    /// Exit non-zero when any phase's unexpected errors exceed this share of its requests.
    #[arg(long, default_value_t = 1.0)]
    max_error_percent: f64,
    /// Leave the created tenants on an external server (they are deleted by default).
    #[arg(long)]
    keep_tenants: bool,
    /// PID of the external authd (on this machine): its own CPU time gives
    /// each phase's requests per authd CPU-second, and `--scale` its idle
    /// CPU and RSS.
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Instead of the load phases, measure tenants at scale: make sure this
    /// many tenants exist (`scale-000000`…, kept for the next run), touch
    /// `--scale-active` of them, measure an idle window, then time the first
    /// requests to untouched ones.
    #[arg(long)]
    scale: Option<usize>,
    /// Tenants touched once before the idle window.
    #[arg(long, default_value_t = 2000)]
    scale_active: usize,
    /// Untouched tenants timed for their first JWKS, and as many for their
    /// first GraphQL request.
    #[arg(long, default_value_t = 200)]
    scale_cold: usize,
    /// Length of the idle window in seconds.
    #[arg(long, default_value_t = 30.0)]
    scale_idle_secs: f64,
    /// The external server's Postgres database (needs `psql`): `--scale`
    /// counts the transactions it commits during the idle window.
    #[arg(long, requires = "url")]
    database_url: Option<String>,
}

/// The run's settings once defaults are resolved.
struct Plan {
    phase: Duration,
    ceiling: Duration,
    ceiling_mode: ceiling::Mode,
    argon2: Argon2Params,
    hash_threads: usize,
    cpus: usize,
    /// Read before this process adds its own load.
    load_before: Option<f64>,
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
        bail!("{flag} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

impl Plan {
    fn of(args: &Args) -> anyhow::Result<Self> {
        if args.tenants == 0 || args.concurrency == 0 {
            bail!("--tenants and --concurrency must be at least 1");
        }
        if args.fairness && (args.tenants < 2 || args.concurrency < 2) {
            bail!("--fairness needs at least 2 tenants and 2 clients (tenant A floods, tenant B measures)");
        }
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(Self {
            phase: secs(args.duration_secs.unwrap_or(if args.quick { 2.0 } else { 8.0 }), "--duration-secs")?,
            ceiling: secs(args.ceiling_secs.unwrap_or(if args.quick { 1.0 } else { 3.0 }), "--ceiling-secs")?,
            ceiling_mode: args.ceiling_mode,
            argon2: Argon2Params {
                memory_kib: args.argon2_memory_kib,
                iterations: args.argon2_iterations,
                parallelism: args.argon2_parallelism,
            },
            hash_threads: args.hash_threads.unwrap_or(cpus).max(1),
            cpus,
            load_before: cpu::load_average(),
        })
    }
}

async fn ceiling(plan: &Plan) -> anyhow::Result<Ceiling> {
    let (mode, params, threads, duration) = (plan.ceiling_mode, plan.argon2, plan.hash_threads, plan.ceiling);
    tokio::task::spawn_blocking(move || ceiling::measure(mode, params, threads, duration))
        .await
        .context("the ceiling measurement did not finish")?
}

/// Creates the tenants and lifts their rate limits; returns their slugs.
async fn create_tenants(api: &Api, target: &Target, n: usize, run_id: &str) -> anyhow::Result<Vec<String>> {
    let mut slugs = Vec::with_capacity(n);
    for i in 0..n {
        let slug = format!("load-{run_id}-{i}");
        let admin_email = format!("admin@{slug}.example.com");
        let admin_password = format!("load-admin-{}", uuid::Uuid::new_v4().simple());
        api.create_tenant(&target.platform_token, &slug, &admin_email, &admin_password).await?;
        slugs.push(slug.clone());
        api.lift_rate_limits(&slug, &admin_email, &admin_password).await?;
    }
    Ok(slugs)
}

async fn run(args: &Args, plan: &Plan, target: &Target, slugs: &mut Vec<String>) -> anyhow::Result<Report> {
    let pool = args.concurrency + if args.fairness { flood_clients(args) + args.fairness_clients } else { 0 };
    let api = Api::new(&target.url, &target.platform_url, pool)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    eprintln!("setting up {} tenants…", args.tenants);
    *slugs = create_tenants(&api, target, args.tenants, &run_id).await?;

    let mut shared = Arc::new(Shared {
        api: api.clone(),
        slugs: slugs.clone(),
        password: format!("load-user-{}", uuid::Uuid::new_v4().simple()),
        users: Vec::new(),
        cpu_of: cpu_of(args, target),
    });
    let mut workers: Vec<Worker> = (0..args.concurrency).map(|i| Worker::new(i, i % args.tenants)).collect();
    let mut phases = Vec::new();
    // The ceiling is measured right before and right after each phase that
    // hashes (register, login), so that each ratio compares two figures
    // taken under the same share of a machine whose load changes.
    let mut ceilings = Vec::new();
    for phase in [Phase::Register, Phase::Login, Phase::Refresh, Phase::Me] {
        if matches!(phase, Phase::Register | Phase::Login) {
            eprintln!("argon2id ceiling ({:.0} s)…", plan.ceiling.as_secs_f64());
            ceilings.push(ceiling(plan).await?);
        }
        eprintln!("phase {} ({:.0} s, {} clients)…", phase.name(), plan.phase.as_secs_f64(), workers.len());
        let (back, summary) = run_phase(&shared, workers, phase, phase.name(), plan.phase).await?;
        workers = back;
        phases.push(summary);
        if phase == Phase::Register {
            // Later phases (and fairness clients) may log in as any user of their tenant.
            let mut users = vec![Vec::new(); args.tenants];
            for w in &workers {
                users[w.tenant].extend(w.users.iter().cloned());
            }
            if let Some(empty) = users.iter().take(args.concurrency).position(Vec::is_empty) {
                bail!("no user could be registered in tenant {} (see the register errors)", slugs[empty]);
            }
            shared = Arc::new(Shared {
                api: api.clone(),
                slugs: slugs.clone(),
                password: shared.password.clone(),
                users,
                cpu_of: shared.cpu_of,
            });
        }
        if phase == Phase::Login {
            eprintln!("argon2id ceiling ({:.0} s)…", plan.ceiling.as_secs_f64());
            ceilings.push(ceiling(plan).await?);
        }
    }
    let [before_register, before_login, after_login] = ceilings[..] else {
        bail!("expected three ceiling measurements, got {}", ceilings.len());
    };

    let fairness = if args.fairness { Some(fairness(args, plan, &shared).await?) } else { None };
    Ok(Report {
        target: format!(
            "{}; CPU figures: {}",
            target.description,
            match cpu_of(args, target) {
                Some(cpu::Process::This) => "this process (server and load generator together)".to_owned(),
                Some(cpu::Process::Pid(pid)) => format!("the authd process {pid} alone"),
                None => "none (pass --server-pid)".to_owned(),
            }
        ),
        tenants: args.tenants,
        concurrency: args.concurrency,
        phase_secs: plan.phase.as_secs_f64(),
        argon2: plan.argon2,
        hash_threads: plan.hash_threads,
        cpus: plan.cpus,
        load_before: plan.load_before,
        phases,
        ceiling_mode: plan.ceiling_mode,
        ceilings: Ceilings { before_register, before_login, after_login },
        fairness,
        expected_codes: args.expected_codes.clone(),
        max_error_percent: args.max_error_percent,
    })
}

/// Whose CPU time counts as the server's: this process when it runs the
/// server, the external server's with `--server-pid`.
fn cpu_of(args: &Args, target: &Target) -> Option<cpu::Process> {
    if target.is_spawned() { Some(cpu::Process::This) } else { args.server_pid.map(cpu::Process::Pid) }
}

fn flood_clients(args: &Args) -> usize {
    args.fairness_flood.unwrap_or(4 * args.concurrency).max(1)
}

/// Tenant B's login latency with `fairness_clients` clients, alone and then
/// while tenant A floods logins with many more clients. The hashing pool
/// serves tenants round-robin, so B should wait for at most one hash per
/// busy tenant, not for A's queue.
async fn fairness(args: &Args, plan: &Plan, shared: &Arc<Shared>) -> anyhow::Result<Fairness> {
    let flood = flood_clients(args);
    let b_clients = args.fairness_clients.max(1);
    let b_workers = |base: usize| (0..b_clients).map(move |i| Worker::new(base + i, 1)).collect::<Vec<_>>();
    eprintln!("fairness: tenant B alone ({b_clients} clients, {:.0} s)…", plan.phase.as_secs_f64());
    let (_, alone) = run_phase(shared, b_workers(0), Phase::Login, "B alone", plan.phase).await?;
    eprintln!("fairness: tenant B while tenant A floods ({flood} clients)…");
    let a_workers: Vec<Worker> = (0..flood).map(|i| Worker::new(10_000 + i, 0)).collect();
    let (a, b) = tokio::join!(
        run_phase(shared, a_workers, Phase::Login, "A flood", plan.phase),
        run_phase(shared, b_workers(b_clients), Phase::Login, "B under flood", plan.phase),
    );
    let ((_, mut a), (_, mut b)) = (a?, b?);
    // Both ran at once: the process's CPU time is theirs together, not each's.
    a.cpu_ms_per_ok = None;
    b.cpu_ms_per_ok = None;
    Ok(Fairness {
        tenant_a: shared.slugs[0].clone(),
        tenant_b: shared.slugs[1].clone(),
        b_alone: alone,
        b_under_flood: b,
        a_flood: a,
        flood_clients: flood,
    })
}

async fn main_async(args: Args) -> anyhow::Result<ExitCode> {
    let plan = Plan::of(&args)?;
    let target = match (&args.url, args.spawn) {
        (Some(url), false) => Target::external(
            url,
            args.platform_url.as_deref(),
            args.platform_token.clone(),
            args.platform_token_file.as_deref(),
        )?,
        _ => {
            eprintln!("starting authd in process…");
            Target::spawn(plan.argon2, plan.hash_threads).await?
        }
    };
    if let Some(tenants) = args.scale {
        let scale = scale::ScalePlan {
            tenants,
            active: args.scale_active,
            cold: args.scale_cold,
            idle: secs(args.scale_idle_secs, "--scale-idle-secs")?,
            concurrency: args.concurrency,
            process: cpu_of(&args, &target),
            database_url: args.database_url.clone(),
        };
        let result = scale::run(&scale, &target).await;
        target.stop().await;
        result?.print();
        return Ok(ExitCode::SUCCESS);
    }
    let mut slugs = Vec::new();
    let result = run(&args, &plan, &target, &mut slugs).await;
    if !target.is_spawned()
        && !args.keep_tenants
        && !slugs.is_empty()
        && let Ok(api) = Api::new(&target.url, &target.platform_url, 1)
    {
        for slug in &slugs {
            if let Err(e) = api.delete_tenant(&target.platform_token, slug).await {
                eprintln!("warning: {e:#}");
            }
        }
    }
    target.stop().await;
    let report = result?;
    report.print();
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The in-process server logs through `tracing`; silent unless asked.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authd-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("authd-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
