//! Process-wide metrics the observability layer exports at `/metrics`.
//!
//! Plain counters are atomics bumped where things happen. Labelled families
//! ([`Family`]) keep one series per label set and render themselves in the
//! Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE`
//! lines, escaped label values, cumulative histogram buckets with `+Inf`,
//! `_sum` and `_count`.
//!
//! Label values are bounded by construction: operation names come from the
//! schema, outcomes from the error codes. The `tenant` label is the one
//! unbounded dimension, so it is off unless [`set_tenant_labels`] switched it
//! on (`AUTHD_METRICS_TENANT_LABELS=true`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// Children restarted by tenant supervisors.
pub static ACTOR_RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Argon2 verifications performed (including dummy ones).
pub static PASSWORD_VERIFICATIONS: AtomicU64 = AtomicU64::new(0);
/// Argon2 hashes computed (registration, re-hash).
pub static PASSWORD_HASHES: AtomicU64 = AtomicU64::new(0);
pub static ACTIVE_TENANTS: AtomicU64 = AtomicU64::new(0);
/// Requests refused by a rate limit.
pub static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
/// Storage lookups of a tenant by slug (a request for a tenant not running
/// on this replica); unknown slugs mostly cost none.
pub static TENANT_LOOKUPS: AtomicU64 = AtomicU64::new(0);
/// Mails the relay accepted (or written as files).
pub static MAIL_SENT: AtomicU64 = AtomicU64::new(0);
/// Mails abandoned: refused for good, or undeliverable after every attempt.
pub static MAIL_FAILED: AtomicU64 = AtomicU64::new(0);
/// Delivery attempts that failed and will be retried.
pub static MAIL_RETRIES: AtomicU64 = AtomicU64::new(0);
/// Mails in the outbox (every replica's), as last read.
pub static MAIL_QUEUED: AtomicU64 = AtomicU64::new(0);
/// Age of the oldest mail in the outbox, in seconds, as last read.
pub static MAIL_OLDEST_SECONDS: AtomicU64 = AtomicU64::new(0);

static TENANT_LABELS: AtomicBool = AtomicBool::new(false);

/// Adds a `tenant` label to the per-request families (high cardinality: one
/// series per tenant and operation).
pub fn set_tenant_labels(on: bool) {
    TENANT_LABELS.store(on, Ordering::Relaxed);
}

pub fn tenant_labels() -> bool {
    TENANT_LABELS.load(Ordering::Relaxed)
}

/// Seconds; from a fast token-store script to a slow argon2 queue.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Default)]
struct Series {
    value: f64,
    /// Per bucket (not cumulative); rendered cumulatively.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A metric family with labels.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Series>>,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, kind: Kind::Counter, labels, buckets: &[], series: Mutex::new(BTreeMap::new()) }
    }

    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self { name, help, kind: Kind::Histogram, labels, buckets, series: Mutex::new(BTreeMap::new()) }
    }

    fn key(&self, values: &[&str]) -> Vec<String> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    /// Adds `n` to a counter.
    pub fn inc_by(&self, values: &[&str], n: u64) {
        self.series.lock().entry(self.key(values)).or_default().value += n as f64;
    }

    pub fn inc(&self, values: &[&str]) {
        self.inc_by(values, 1);
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, values: &[&str], v: f64) {
        let mut series = self.series.lock();
        let s = series.entry(self.key(values)).or_default();
        if s.buckets.len() != self.buckets.len() {
            s.buckets = vec![0; self.buckets.len()];
        }
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            s.buckets[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }

    /// The current value of a counter series (0 if never touched).
    pub fn get(&self, values: &[&str]) -> f64 {
        self.series.lock().get(&self.key(values)).map_or(0.0, |s| s.value)
    }

    /// Appends the family in the text exposition format.
    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for (values, s) in self.series.lock().iter() {
            // An empty value is the same as no label to Prometheus: leave it out.
            let labels: Vec<(&str, &str)> = self
                .labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            match self.kind {
                Kind::Counter | Kind::Gauge => sample(out, self.name, "", &labels, s.value),
                Kind::Histogram => {
                    let mut cumulative = 0;
                    for (i, bound) in self.buckets.iter().enumerate() {
                        cumulative += s.buckets.get(i).copied().unwrap_or(0);
                        let le = fmt_value(*bound);
                        let mut with_le = labels.clone();
                        with_le.push(("le", &le));
                        sample(out, self.name, "_bucket", &with_le, cumulative as f64);
                    }
                    let mut with_le = labels.clone();
                    with_le.push(("le", "+Inf"));
                    sample(out, self.name, "_bucket", &with_le, s.count as f64);
                    sample(out, self.name, "_sum", &labels, s.sum);
                    sample(out, self.name, "_count", &labels, s.count as f64);
                }
            }
        }
    }
}

/// `# HELP` and `# TYPE` lines (HELP escapes `\` and newlines).
pub fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line; label values escape `\`, `"` and newlines.
pub fn sample(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", fmt_value(value));
}

/// A single-series family.
pub fn single(out: &mut String, name: &str, help: &str, kind: Kind, value: f64) {
    header(out, name, help, kind);
    sample(out, name, "", &[], value);
}

fn fmt_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// GraphQL root fields executed, by operation (root field), operation type
/// and outcome (`ok` or the error code); `tenant` when switched on.
pub static REQUESTS: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "authd_graphql_requests_total",
        "GraphQL requests, by operation (root field), operation type and outcome (ok or the error code).",
        &["schema", "operation", "type", "outcome", "tenant"],
    )
});

/// Request latency, by the same labels as [`REQUESTS`].
pub static REQUEST_SECONDS: LazyLock<Family> = LazyLock::new(|| {
    Family::histogram(
        "authd_graphql_request_duration_seconds",
        "GraphQL request latency in seconds, by operation, operation type and outcome.",
        &["schema", "operation", "type", "outcome", "tenant"],
        LATENCY_BUCKETS,
    )
});

/// Every HTTP request, by route template (never the raw path), method and status.
pub static HTTP_REQUESTS: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "authd_http_requests_total",
        "HTTP requests by route template, method and status code.",
        &["route", "method", "status"],
    )
});

/// HTTP latency by route template.
pub static HTTP_SECONDS: LazyLock<Family> = LazyLock::new(|| {
    Family::histogram(
        "authd_http_request_duration_seconds",
        "HTTP request latency in seconds, by route template.",
        &["route"],
        LATENCY_BUCKETS,
    )
});

/// Login attempts by outcome (`success`, `mfa_required`, or the error code).
pub static LOGINS: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "authd_login_attempts_total",
        "Password logins by outcome: success, mfa_required, or the error code (invalid_credentials, rate_limited, ...).",
        &["outcome", "tenant"],
    )
});

/// Calls to storage or the token store that failed for a backend reason.
pub static BACKEND_ERRORS: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "authd_backend_errors_total",
        "Storage and token-store calls that failed (unavailable or internal), by backend.",
        &["backend"],
    )
});

/// Time a hashing job waited for a worker.
pub static HASH_WAIT_SECONDS: LazyLock<Family> = LazyLock::new(|| {
    Family::histogram(
        "authd_hash_queue_wait_seconds",
        "Seconds a password-hashing job waited in the fair queue before a worker took it.",
        &[],
        LATENCY_BUCKETS,
    )
});

/// The `tenant` label value: the slug when tenant labels are on, else empty
/// (an empty label value is the same as no label to Prometheus).
pub fn tenant_label(slug: &str) -> &str {
    if tenant_labels() { slug } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let f = Family::histogram("t_seconds", "help", &["op"], &[0.1, 1.0]);
        f.observe(&["a\"b\\c\nd"], 0.05);
        f.observe(&["a\"b\\c\nd"], 0.5);
        f.observe(&["a\"b\\c\nd"], 5.0);
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("# TYPE t_seconds histogram"), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="0.1"} 1"#), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="1"} 2"#), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="+Inf"} 3"#), "{out}");
        assert!(out.contains(r#"t_seconds_count{op="a\"b\\c\nd"} 3"#), "{out}");
        assert!(out.contains(r#"t_seconds_sum{op="a\"b\\c\nd"} 5.55"#), "{out}");
    }
}
