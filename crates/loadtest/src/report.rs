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

/// The argon2id ceiling, measured around the phases that hash.
pub struct Ceilings {
    pub before_register: Ceiling,
    pub before_login: Ceiling,
    pub after_login: Ceiling,
}

impl Ceilings {
    /// The two measurements taken just before and just after a phase.
    fn around(&self, phase: &str) -> Option<[Ceiling; 2]> {
        match phase {
            "register" => Some([self.before_register, self.before_login]),
            "login" => Some([self.before_login, self.after_login]),
            _ => None,
        }
    }

    /// The ceiling (hashes/s) a phase is compared with: the mean of the
    /// measurements around it, taken under about the same machine load.
    pub fn for_phase(&self, phase: &str) -> Option<f64> {
        self.around(phase).map(|[a, b]| (a.per_sec + b.per_sec) / 2.0)
    }

    /// CPU time of one hash around a phase.
    pub fn cpu_for_phase(&self, phase: &str) -> Option<f64> {
        let [a, b] = self.around(phase)?;
        Some((a.cpu_ms_per_hash? + b.cpu_ms_per_hash?) / 2.0)
    }

    /// Highest ÷ lowest measurement: how much the machine's load moved.
    pub fn spread(&self) -> f64 {
        let rates = [self.before_register, self.before_login, self.after_login].map(|c| c.per_sec);
        let max = rates.iter().copied().fold(f64::MIN, f64::max);
        let min = rates.iter().copied().fold(f64::MAX, f64::min);
        if min > 0.0 { max / min } else { f64::INFINITY }
    }
}

pub struct Report {
    pub target: String,
    pub tenants: usize,
    pub concurrency: usize,
    pub phase_secs: f64,
    pub argon2: Argon2Params,
    pub hash_threads: usize,
    pub cpus: usize,
    /// The machine's 1-minute load average when the run began.
    pub load_before: Option<f64>,
    pub phases: Vec<Summary>,
    pub ceiling_mode: crate::ceiling::Mode,
    pub ceilings: Ceilings,
    pub fairness: Option<Fairness>,
    pub expected_codes: Vec<String>,
    pub max_error_percent: f64,
}

fn opt(v: Option<f64>, width: usize, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.decimals$}"),
        None => format!("{:>width$}", "-"),
    }
}

const HEADER: &str = "\
| phase              |      ok | errors |    req/s |  p50 ms |  p99 ms |  max ms | CPU ms/req | req/CPU-s |
|:-------------------|--------:|-------:|---------:|--------:|--------:|--------:|-----------:|----------:|";

fn row(label: &str, s: &Summary) -> String {
    format!(
        "| {label:<18} | {:>7} | {:>6} | {:>8.1} | {:>7.1} | {:>7.1} | {:>7.1} | {} | {} |",
        s.ok,
        s.error_count(),
        s.per_sec,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        opt(s.cpu_ms_per_ok, 10, 2),
        // Requests per CPU-second: the figure a busy machine moves least.
        opt(s.cpu_ms_per_ok.filter(|c| *c > 0.0).map(|c| 1000.0 / c), 9, 0),
    )
}

impl Report {
    fn phase(&self, name: &str) -> Option<&Summary> {
        self.phases.iter().find(|s| s.name == name)
    }

    /// A phase's rate ÷ the ceiling measured around it.
    pub fn ratio(&self, name: &str) -> Option<f64> {
        let c = self.ceilings.for_phase(name).filter(|c| *c > 0.0)?;
        self.phase(name).map(|s| s.per_sec / c)
    }

    /// CPU of one hash ÷ CPU of one request: the share of a request's cost
    /// that is the hash it cannot avoid. Unlike [`Report::ratio`] it hardly
    /// moves with the machine's load.
    pub fn cpu_ratio(&self, name: &str) -> Option<f64> {
        let hash = self.ceilings.cpu_for_phase(name)?;
        let request = self.phase(name)?.cpu_ms_per_ok.filter(|c| *c > 0.0)?;
        Some(hash / request)
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
                out.push(format!("{}: {pct:.2}% unexpected errors ({})", s.name, s.errors_line()));
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
            "load: {} tenants, {} clients, {:.1} s per phase; argon2id m={} KiB t={} p={} on {} hashing threads; {} CPUs (load average {} before the run)",
            self.tenants,
            self.concurrency,
            self.phase_secs,
            self.argon2.memory_kib,
            self.argon2.iterations,
            self.argon2.parallelism,
            self.hash_threads,
            self.cpus,
            self.load_before.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.1}")),
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

        let c = &self.ceilings;
        println!();
        let mode = match self.ceiling_mode {
            crate::ceiling::Mode::Raw => "raw",
            crate::ceiling::Mode::Authd => "authd",
        };
        let title = format!("argon2id ceiling ({mode}, {} threads)", self.hash_threads);
        println!("| {title:<35} | hashes | hashes/s | CPU ms/hash |");
        println!("|:------------------------------------|-------:|---------:|------------:|");
        for (label, m) in [
            ("before register", c.before_register),
            ("between register and login", c.before_login),
            ("after login", c.after_login),
        ] {
            println!("| {label:<35} | {:>6} | {:>8.1} | {} |", m.hashes, m.per_sec, opt(m.cpu_ms_per_hash, 11, 2));
        }
        println!();
        println!("| phase    |  req/s | ceiling hashes/s | req/s ÷ ceiling | CPU: hash ÷ request |");
        println!("|:---------|-------:|-----------------:|----------------:|--------------------:|");
        for name in ["login", "register"] {
            if let (Some(s), Some(ceiling), Some(r)) = (self.phase(name), c.for_phase(name), self.ratio(name)) {
                println!(
                    "| {name:<8} | {:>6.1} | {ceiling:>16.1} | {r:>15.2} | {} |",
                    s.per_sec,
                    opt(self.cpu_ratio(name), 19, 2)
                );
            }
        }
        let busy = self.load_before.is_some_and(|l| l >= self.cpus as f64 / 2.0);
        if busy || c.spread() > 1.25 {
            let cpu_hint = if self.cpu_ratio("login").is_some() {
                "`CPU: hash ÷ request` depends far less on that share (memory contention still moves it by some 10%): read it as the ratio an idle machine would show."
            } else {
                "Run again on a quieter machine before comparing."
            };
            println!();
            println!(
                "note: the machine was busy (load {} before the run on {} CPUs; the ceiling moved by {:.0}%). \
                 Other processes take a share of the CPUs that depends on how many threads each side runs, and the \
                 server runs more threads than the ceiling, so `req/s ÷ ceiling` comes out too high (it can pass 1). \
                 {cpu_hint}",
                self.load_before.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.1}")),
                self.cpus,
                (c.spread() - 1.0) * 100.0
            );
        }

        if let Some(f) = &self.fairness {
            println!();
            println!(
                "fairness: tenant B ({}) logs in alone, then while tenant A ({}) floods logins with {} clients",
                f.tenant_b, f.tenant_a, f.flood_clients
            );
            println!();
            println!("{HEADER}");
            println!("{}", row("B alone", &f.b_alone));
            println!("{}", row("B while A floods", &f.b_under_flood));
            println!("{}", row("A's flood", &f.a_flood));
            if f.b_alone.p99_ms > 0.0 {
                println!();
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
        let verdict = if failures.is_empty() { "PASS".to_owned() } else { format!("FAIL ({})", failures.join("; ")) };
        let mut parts = Vec::new();
        if let (Some(l), Some(r), Some(ceiling)) =
            (self.phase("login"), self.ratio("login"), self.ceilings.for_phase("login"))
        {
            let cpu = self.cpu_ratio("login").map(|c| format!(", CPU {c:.2}")).unwrap_or_default();
            parts.push(format!(
                "login {:.1}/s p99 {:.0} ms = {r:.2} of the argon2id ceiling ({ceiling:.1} hashes/s{cpu})",
                l.per_sec, l.p99_ms
            ));
        }
        if let (Some(s), Some(r)) = (self.phase("register"), self.ratio("register")) {
            parts.push(format!("register {:.1}/s = {r:.2}", s.per_sec));
        }
        for name in ["refresh", "me"] {
            if let Some(s) = self.phase(name) {
                parts.push(format!("{name} {:.0}/s p99 {:.1} ms", s.per_sec, s.p99_ms));
            }
        }
        if let Some(f) = &self.fairness {
            parts.push(format!(
                "fairness: B p99 {:.0} → {:.0} ms under flood",
                f.b_alone.p99_ms, f.b_under_flood.p99_ms
            ));
        }
        let (unexpected, total) = self
            .all_summaries()
            .iter()
            .fold((0, 0), |(u, t), s| (u + s.unexpected_errors(&self.expected_codes), t + s.ok + s.error_count()));
        parts.push(format!("unexpected errors {unexpected}/{total}"));
        format!("authd-load: {verdict}: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Samples;

    fn summary(name: &str, ok: usize, errors: &[(&str, usize)]) -> Summary {
        let mut s = Samples::default();
        for _ in 0..ok {
            s.ok(Duration::from_millis(5));
        }
        for (code, n) in errors {
            for _ in 0..*n {
                s.error(code);
            }
        }
        Summary::new(name, s, Duration::from_secs(1))
    }

    fn report(phases: Vec<Summary>) -> Report {
        let c = Ceiling { hashes: 100, per_sec: 50.0, cpu_ms_per_hash: Some(20.0) };
        Report {
            target: "test".into(),
            tenants: 1,
            concurrency: 1,
            phase_secs: 1.0,
            argon2: Argon2Params::default(),
            hash_threads: 2,
            cpus: 2,
            load_before: None,
            phases,
            ceiling_mode: crate::ceiling::Mode::Raw,
            ceilings: Ceilings { before_register: c, before_login: c, after_login: c },
            fairness: None,
            expected_codes: vec!["RATE_LIMITED".into()],
            max_error_percent: 1.0,
        }
    }

    #[test]
    fn unexpected_errors_over_the_threshold_fail_the_run() {
        let r = report(vec![summary("login", 98, &[("INTERNAL", 2)])]);
        assert!(!r.passed());
        assert!(r.summary_line().contains("FAIL"), "{}", r.summary_line());
    }

    #[test]
    fn back_pressure_and_rare_errors_pass() {
        let r = report(vec![summary("login", 995, &[("RATE_LIMITED", 300), ("INTERNAL", 5)])]);
        assert!(r.passed(), "{:?}", r.failures());
    }

    #[test]
    fn a_phase_without_success_fails() {
        let r = report(vec![summary("me", 0, &[("RATE_LIMITED", 3)])]);
        assert!(!r.passed());
    }

    #[test]
    fn login_is_compared_with_the_ceiling_around_it() {
        let mut r = report(vec![summary("login", 40, &[])]);
        r.ceilings.after_login.per_sec = 30.0;
        // Mean of 50 (before login) and 30 (after): 40 hashes/s.
        assert!((r.ratio("login").unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(r.ratio("me"), None);
    }
}
