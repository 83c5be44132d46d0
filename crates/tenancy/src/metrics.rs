//! Process-wide metrics the observability layer exports at `/metrics`.
//!
//! Plain counters are atomics bumped where things happen; `/metrics` reads
//! them at scrape time. Labelled families ([`CounterFamily`],
//! [`HistogramFamily`]) keep one series per label set in a
//! `prometheus-client` family. The exposition itself (the Prometheus text
//! format, version 0.0.4: `# HELP`/`# TYPE`, escaping, cumulative buckets
//! with `+Inf`, `_sum`, `_count`) is `prometheus_client`'s.
//!
//! Label values are bounded by construction: operation names come from the
//! schema, outcomes from the error codes. The `tenant` label is the one
//! unbounded dimension, so it is off unless [`set_tenant_labels`] switched it
//! on (`AUTHD_METRICS_TENANT_LABELS=true`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
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

/// A series' labels in declared order. An empty value is the same as no
/// label to Prometheus: it is left out.
type Labels = Vec<(&'static str, String)>;

fn labels(names: &'static [&'static str], values: &[&str]) -> Labels {
    debug_assert_eq!(values.len(), names.len(), "{names:?}");
    names.iter().zip(values).filter(|(_, v)| !v.is_empty()).map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Registers `metric` under `name` with its help text. A counter's name is
/// given without `_total` (the encoder appends it), and the registry appends
/// the help's final full stop itself, so it is taken off here.
pub fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// A family that is exposed (`# HELP` and `# TYPE`) before its first series
/// too: `prometheus-client` leaves empty families out, and scrapers and
/// dashboards expect every family.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Builds each series' histogram with the family's bucket bounds.
#[derive(Clone, Debug)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// A labelled counter family (`name` without `_total`).
#[derive(Debug)]
pub struct CounterFamily {
    pub name: &'static str,
    pub help: &'static str,
    labels: &'static [&'static str],
    series: Family<Labels, Counter>,
}

impl CounterFamily {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, labels, series: Family::default() }
    }

    /// Adds `n` to the series of `values` (one per label, in order).
    pub fn inc_by(&self, values: &[&str], n: u64) {
        self.series.get_or_create(&labels(self.labels, values)).inc_by(n);
    }

    pub fn inc(&self, values: &[&str]) {
        self.inc_by(values, 1);
    }

    /// The current value of a series (0 if never touched).
    pub fn get(&self, values: &[&str]) -> f64 {
        self.series.get(&labels(self.labels, values)).map_or(0.0, |c| c.get() as f64)
    }

    pub fn register(&self, registry: &mut Registry) {
        register(registry, self.name, self.help, Declared(self.series.clone()));
    }
}

/// A labelled histogram family.
#[derive(Debug)]
pub struct HistogramFamily {
    pub name: &'static str,
    pub help: &'static str,
    labels: &'static [&'static str],
    series: Family<Labels, Histogram, Buckets>,
}

impl HistogramFamily {
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self { name, help, labels, series: Family::new_with_constructor(Buckets(buckets)) }
    }

    /// Records one observation in the series of `values`.
    pub fn observe(&self, values: &[&str], v: f64) {
        self.series.get_or_create(&labels(self.labels, values)).observe(v);
    }

    pub fn register(&self, registry: &mut Registry) {
        register(registry, self.name, self.help, Declared(self.series.clone()));
    }
}

/// GraphQL root fields executed, by operation (root field), operation type
/// and outcome (`ok` or the error code); `tenant` when switched on.
pub static REQUESTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::new(
        "authd_graphql_requests",
        "GraphQL requests, by operation (root field), operation type and outcome (ok or the error code).",
        &["schema", "operation", "type", "outcome", "tenant"],
    )
});

/// Request latency, by the same labels as [`REQUESTS`].
pub static REQUEST_SECONDS: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::new(
        "authd_graphql_request_duration_seconds",
        "GraphQL request latency in seconds, by operation, operation type and outcome.",
        &["schema", "operation", "type", "outcome", "tenant"],
        LATENCY_BUCKETS,
    )
});

/// Every HTTP request, by route template (never the raw path), method and status.
pub static HTTP_REQUESTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::new(
        "authd_http_requests",
        "HTTP requests by route template, method and status code.",
        &["route", "method", "status"],
    )
});

/// HTTP latency by route template.
pub static HTTP_SECONDS: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::new(
        "authd_http_request_duration_seconds",
        "HTTP request latency in seconds, by route template.",
        &["route"],
        LATENCY_BUCKETS,
    )
});

/// Login attempts by outcome (`success`, `mfa_required`, or the error code).
pub static LOGINS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::new(
        "authd_login_attempts",
        "Password logins by outcome: success, mfa_required, or the error code (invalid_credentials, rate_limited, ...).",
        &["outcome", "tenant"],
    )
});

/// Calls to storage or the token store that failed for a backend reason.
pub static BACKEND_ERRORS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::new(
        "authd_backend_errors",
        "Storage and token-store calls that failed (unavailable or internal), by backend.",
        &["backend"],
    )
});

/// Time a hashing job waited for a worker.
pub static HASH_WAIT_SECONDS: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::new(
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

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap_or_default();
        out
    }

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let f = HistogramFamily::new("t_seconds", "Help.", &["op", "tenant"], &[0.1, 1.0]);
        for v in [0.05, 0.5, 5.0] {
            f.observe(&["a\"b\\c\nd", ""], v);
        }
        let mut registry = Registry::default();
        f.register(&mut registry);
        let out = encode(&registry);
        assert!(out.starts_with("# HELP t_seconds Help.\n# TYPE t_seconds histogram\n"), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="0.1"} 1"#), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="1"} 2"#), "{out}");
        assert!(out.contains(r#"t_seconds_bucket{op="a\"b\\c\nd",le="+Inf"} 3"#), "{out}");
        assert!(out.contains(r#"t_seconds_count{op="a\"b\\c\nd"} 3"#), "{out}");
        assert!(out.contains(r#"t_seconds_sum{op="a\"b\\c\nd"} 5.55"#), "{out}");
    }

    #[test]
    fn counters_keep_their_names_and_empty_families_their_header() {
        let f = CounterFamily::new("t_requests", "Requests.", &["outcome"]);
        let empty = CounterFamily::new("t_errors", "Errors.", &["backend"]);
        f.inc(&["ok"]);
        f.inc_by(&["ok"], 2);
        assert_eq!(f.get(&["ok"]), 3.0);
        assert_eq!(f.get(&["no"]), 0.0);
        let mut registry = Registry::default();
        f.register(&mut registry);
        empty.register(&mut registry);
        let out = encode(&registry);
        assert_eq!(
            out,
            "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\nt_requests_total{outcome=\"ok\"} 3\n\
             # HELP t_errors_total Errors.\n# TYPE t_errors_total counter\n"
        );
    }
}
