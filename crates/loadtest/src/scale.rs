//! Tenants at scale (`--scale N`): what a process that knows many tenants
//! costs while most of them do nothing, and how fast a tenant nobody touched
//! answers its first request.
//!
//! 1. Make sure tenants `scale-000000` … exist (created through the platform
//!    API with `--concurrency` clients; ones a previous run created are kept
//!    and reused, so a second run against the same server measures at once).
//! 2. Touch `--scale-active` of them with one GraphQL request each: their
//!    supervisors start, as for tenants with recent traffic.
//! 3. Wait for the start-up work to settle, then measure an idle window of
//!    `--scale-idle-secs`: the server's CPU (% of one core), its RSS and,
//!    with `--database-url`, the transactions Postgres committed for the
//!    server's database per second.
//! 4. The first request to `--scale-cold` untouched tenants, one at a time:
//!    a JWKS fetch for some (what resource servers do), a GraphQL request for
//!    others (which starts the tenant); p50 and p99 of each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::Semaphore;

use crate::client::Api;
use crate::cpu::Process;
use crate::stats::percentile;
use crate::target::Target;

pub struct ScalePlan {
    pub tenants: usize,
    pub active: usize,
    pub cold: usize,
    pub idle: Duration,
    pub concurrency: usize,
    /// Whose CPU and memory are the server's.
    pub process: Option<Process>,
    /// The server's Postgres database, to count its transactions.
    pub database_url: Option<String>,
}

pub struct ScaleReport {
    pub tenants: usize,
    pub created: usize,
    pub active: usize,
    pub idle_secs: f64,
    pub cpu_percent: Option<f64>,
    pub rss_mib: Option<f64>,
    pub pg_tx_per_sec: Option<f64>,
    /// First JWKS of untouched tenants: (p50, p99) in ms.
    pub cold_jwks: (f64, f64),
    /// First GraphQL request of untouched tenants: (p50, p99) in ms.
    pub cold_graphql: (f64, f64),
    pub cold: usize,
}

fn slug(i: usize) -> String {
    format!("scale-{i:06}")
}

pub async fn run(plan: &ScalePlan, target: &Target) -> anyhow::Result<ScaleReport> {
    if plan.active + 2 * plan.cold > plan.tenants {
        bail!("--scale must be at least --scale-active + 2 × --scale-cold");
    }
    let api = Api::new(&target.url, &target.platform_url, plan.concurrency)?;
    eprintln!("scale: making sure {} tenants exist…", plan.tenants);
    let created = ensure_tenants(&api, target, plan).await?;
    eprintln!("scale: {created} created, touching {}…", plan.active);
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..plan.active {
        let (api, gate) = (api.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            api.touch(&slug(i)).await.map_err(|code| anyhow::anyhow!("touching {}: {code}", slug(i)))
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    // A tenant's first housekeeping tick comes a few seconds after it starts:
    // measure the steady state after it.
    eprintln!("scale: settling (15 s), then idle for {:.0} s…", plan.idle.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pg = match &plan.database_url {
        Some(url) => Some(Postgres::connect(url).await?),
        None => None,
    };
    let cpu0 = plan.process.and_then(crate::cpu::cpu_ns);
    let tx0 = match &pg {
        Some(pg) => Some(pg.transactions().await?),
        None => None,
    };
    let started = Instant::now();
    tokio::time::sleep(plan.idle).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = plan.process.and_then(crate::cpu::cpu_ns);
    let tx1 = match &pg {
        // Postgres publishes a backend's counts when it goes idle, at most
        // once a second: wait for the last ones.
        Some(pg) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Some(pg.transactions().await?)
        }
        None => None,
    };
    let cpu_percent = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a) as f64 / 1e9 / wall * 100.0);
    // Our own two reads are transactions too.
    let pg_tx_per_sec = tx0.zip(tx1).map(|(a, b)| b.saturating_sub(a).saturating_sub(1) as f64 / wall);
    let rss_mib = plan.process.and_then(Process::rss_mib);

    eprintln!("scale: first requests to {} untouched tenants…", 2 * plan.cold);
    let base = plan.active;
    let mut jwks = Vec::new();
    for i in base..base + plan.cold {
        let t = Instant::now();
        api.jwks(&slug(i)).await.map_err(|code| anyhow::anyhow!("JWKS of {}: {code}", slug(i)))?;
        jwks.push(t.elapsed().as_micros() as u64);
    }
    let mut graphql = Vec::new();
    for i in base + plan.cold..base + 2 * plan.cold {
        let t = Instant::now();
        api.touch(&slug(i)).await.map_err(|code| anyhow::anyhow!("first request to {}: {code}", slug(i)))?;
        graphql.push(t.elapsed().as_micros() as u64);
    }
    Ok(ScaleReport {
        tenants: plan.tenants,
        created,
        active: plan.active,
        idle_secs: wall,
        cpu_percent,
        rss_mib,
        pg_tx_per_sec,
        cold_jwks: p50_p99(jwks),
        cold_graphql: p50_p99(graphql),
        cold: plan.cold,
    })
}

fn p50_p99(mut micros: Vec<u64>) -> (f64, f64) {
    micros.sort_unstable();
    let ms = |q| percentile(&micros, q).map_or(0.0, |v| v as f64 / 1000.0);
    (ms(0.5), ms(0.99))
}

/// Creates the missing tenants; returns how many it created.
async fn ensure_tenants(api: &Api, target: &Target, plan: &ScalePlan) -> anyhow::Result<usize> {
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut created = 0;
    for i in 0..plan.tenants {
        let (api, gate, token) = (api.clone(), gate.clone(), target.platform_token.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let slug = slug(i);
            if api.tenant_exists(&token, &slug).await? {
                return anyhow::Ok(false);
            }
            let password = format!("scale-admin-{}", uuid::Uuid::new_v4().simple());
            api.create_tenant(&token, &slug, &format!("admin@{slug}.example.com"), &password).await?;
            Ok(true)
        });
        // Bounded memory for 100,000 tenants: reap finished tasks as we go.
        while set.len() > 4 * plan.concurrency.max(1) {
            created += usize::from(set.join_next().await.context("a creation task vanished")???);
        }
        if i > 0 && i % 10_000 == 0 {
            eprintln!("scale: … {i} tenants after {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    while let Some(r) = set.join_next().await {
        created += usize::from(r??);
    }
    Ok(created)
}

/// Reads Postgres's transaction counts of one database.
struct Postgres {
    url: String,
}

impl Postgres {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let pg = Self { url: url.to_owned() };
        pg.transactions().await.context("cannot read pg_stat_database (--database-url)")?;
        Ok(pg)
    }

    /// Transactions committed and rolled back in the URL's database, as the
    /// statistics collector has them.
    async fn transactions(&self) -> anyhow::Result<u64> {
        let out = tokio::process::Command::new("psql")
            .arg(&self.url)
            .args([
                "-tAc",
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            ])
            .output()
            .await
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().context("psql printed no count")
    }
}

impl ScaleReport {
    pub fn print(&self) {
        let opt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.d$}"));
        println!();
        println!(
            "tenants at scale: {} known ({} created now), {} touched once, then idle for {:.0} s",
            self.tenants, self.created, self.active, self.idle_secs
        );
        println!();
        println!(
            "| idle: CPU % of a core | Postgres tx/s | RSS MiB | first JWKS p50 / p99 ms | first GraphQL p50 / p99 ms |"
        );
        println!(
            "|----------------------:|--------------:|--------:|------------------------:|---------------------------:|"
        );
        println!(
            "| {:>21} | {:>13} | {:>7} | {:>11.1} / {:>9.1} | {:>14.1} / {:>9.1} |",
            opt(self.cpu_percent, 2),
            opt(self.pg_tx_per_sec, 2),
            opt(self.rss_mib, 0),
            self.cold_jwks.0,
            self.cold_jwks.1,
            self.cold_graphql.0,
            self.cold_graphql.1,
        );
        println!("({} untouched tenants each for the first JWKS and the first GraphQL request)", self.cold);
    }
}
