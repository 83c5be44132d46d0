//! The printed result: markdown tables (paste them into an issue as they
//! are) and a one-line summary that says PASS or FAIL.

use authd_core::password::Argon2Params;

use crate::ceiling::Ceiling;
use crate::stats::Summary;

pub struct Fairness {
    pub tenant_a: String,
    pub tenant_b: String,
    pub b_alone: Summary,
    pub b_under_flood: Summary,
    pub a_flood: Summary,
    pub flood_clients: usize,
}

pub struct Report {
    pub target: String,
    pub tenants: usize,
    pub concurrency: usize,
    pub phase_secs: f64,
    pub argon2: Argon2Params,
    pub hash_threads: usize,
    pub cpus: usize,
    pub phases: Vec<Summary>,
    pub ceiling_before: Ceiling,
    pub ceiling_after: Ceiling,
    pub fairness: Option<Fairness>,
    pub expected_codes: Vec<String>,
    pub max_error_percent: f64,
}

fn row(label: &str, s: &Summary) -> String {
    format!(
        "| {label:<24} | {:>7} | {:>6} | {:>8.1} | {:>7.1} | {:>7.1} | {:>7.1} |",
        s.ok,
        s.error_count(),
        s.per_sec,
        s.p50_ms,
        s.p99_ms,
        s.max_ms
    )
}

const HEADER: &str = "| phase                    |      ok | errors |    req/s |  p50 ms |  p99 ms |  max ms |\n\
                      |:-------------------------|--------:|-------:|---------:|--------:|--------:|--------:|";

impl Report {
    /// The ceiling the ratios use: the mean of the two measurements, which
    /// bracket the phases in time and so share their share of a noisy machine.
    pub fn ceiling(&self) -> f64 {
        (self.ceiling_before.per_sec + self.ceiling_after.per_sec) / 2.0
    }

    fn phase(&self, name: &str) -> Option<&Summary> {
        self.phases.iter().find(|s| s.name == name)
    }

    /// Measured rate ÷ ceiling.
    pub fn ratio(&self, name: &str) -> Option<f64> {
        let c = self.ceiling();
        self.phase(name).filter(|_| c > 0.0).map(|s| s.per_sec / c)
    }

    fn all_summaries(&self) -> Vec<&Summary> {
        let mut all: Vec<&Summary> = self.phases.iter().collect();
        if let Some(f) = &self.fairness {
            all.extend([&f.b_alone, &f.b_under_flood, &f.a_flood]);
        }
        all
    }

    /// Why the run fails, if it does: a phase without a single success, or
    /// unexpected errors above the threshold.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.all_summaries() {
            if s.ok == 0 {
                out.push(format!("{}: no successful request", s.name));
            }
            let pct = s.unexpected_error_percent(&self.expected_codes);
            if pct > self.max_error_percent {
                out.push(format!(
                    "{}: {pct:.2}% unexpected errors ({})",
                    s.name,
                    s.errors_line()
                ));
            }
        }
        out
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    pub fn print(&self) {
        println!();
        println!("target: {}", self.target);
        println!(
            "load: {} tenants, {} clients, {:.1} s per phase; argon2id m={} KiB t={} p={} on {} hashing threads ({} CPUs)",
            self.tenants,
            self.concurrency,
            self.phase_secs,
            self.argon2.memory_kib,
            self.argon2.iterations,
            self.argon2.parallelism,
            self.hash_threads,
            self.cpus
        );
        println!();
        println!("{HEADER}");
        for s in &self.phases {
            println!("{}", row(&s.name, s));
        }
        let with_errors: Vec<String> = self
            .all_summaries()
            .iter()
            .filter(|s| !s.errors.is_empty())
            .map(|s| format!("{}: {}", s.name, s.errors_line()))
            .collect();
        if !with_errors.is_empty() {
            println!();
            println!("errors by code: {}", with_errors.join("; "));
        }

        println!();
        println!(
            "| argon2id ceiling, {:>2} threads | hashes | hashes/s |",
            self.hash_threads
        );
        println!("|:------------------------------|-------:|---------:|");
        println!(
            "| before the phases             | {:>6} | {:>8.1} |",
            self.ceiling_before.hashes, self.ceiling_before.per_sec
        );
        println!(
            "| after the phases              | {:>6} | {:>8.1} |",
            self.ceiling_after.hashes, self.ceiling_after.per_sec
        );
        println!(
            "| mean (used for the ratios)    |        | {:>8.1} |",
            self.ceiling()
        );
        println!();
        println!("| ratio              | value |");
        println!("|:-------------------|------:|");
        for name in ["login", "register"] {
            if let Some(r) = self.ratio(name) {
                println!("| {:<18} | {r:>5.2} |", format!("{name} / ceiling"));
            }
        }

        if let Some(f) = &self.fairness {
            println!();
            println!(
                "fairness: tenant B ({}) logs in alone, then while tenant A ({}) floods with {} clients",
                f.tenant_b, f.tenant_a, f.flood_clients
            );
            println!();
            println!("{HEADER}");
            println!("{}", row("B alone", &f.b_alone));
            println!("{}", row("B while A floods", &f.b_under_flood));
            println!("{}", row("A's flood", &f.a_flood));
            println!();
            if f.b_alone.p99_ms > 0.0 {
                println!(
                    "B's login p99 under A's flood: {:.2}× its p99 alone",
                    f.b_under_flood.p99_ms / f.b_alone.p99_ms
                );
            }
        }

        println!();
        println!("{}", self.summary_line());
    }

    pub fn summary_line(&self) -> String {
        let failures = self.failures();
        let verdict = if failures.is_empty() {
            "PASS".to_owned()
        } else {
            format!("FAIL ({})", failures.join("; "))
        };
        let mut parts = Vec::new();
        if let (Some(l), Some(r)) = (self.phase("login"), self.ratio("login")) {
            parts.push(format!(
                "login {:.1}/s = {r:.2} of the argon2id ceiling ({:.1} hashes/s)",
                l.per_sec,
                self.ceiling()
            ));
        }
        if let Some(r) = self.ratio("register") {
            parts.push(format!("register {r:.2}"));
        }
        for name in ["refresh", "me"] {
            if let Some(s) = self.phase(name) {
                parts.push(format!("{name} {:.0}/s p99 {:.1} ms", s.per_sec, s.p99_ms));
            }
        }
        if let Some(f) = &self.fairness {
            parts.push(format!(
                "fairness: B p99 {:.1} → {:.1} ms under flood",
                f.b_alone.p99_ms, f.b_under_flood.p99_ms
            ));
        }
        let (unexpected, total) = self.all_summaries().iter().fold((0, 0), |(u, t), s| {
            (
                u + s.unexpected_errors(&self.expected_codes),
                t + s.ok + s.error_count(),
            )
        });
        parts.push(format!("unexpected errors {unexpected}/{total}"));
        format!("authd-load: {verdict}: {}", parts.join("; "))
    }
}
