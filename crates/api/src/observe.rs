//! Observability of the transport: one span per GraphQL operation (joined to
//! the caller's trace when a W3C `traceparent` is sent), the request
//! metrics, and the `/metrics` exposition.
//!
//! Span attributes are the tenant, the operation (its client-chosen name, its
//! type and its root fields) and the outcome: never variables, tokens or
//! passwords. The metrics' `operation` label is the root field, and only a
//! field the schema declares, so clients cannot mint label values.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use axum::http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::AppState;
use crate::client;

/// Reads propagation headers (`traceparent`, `tracestate`) from a request.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one GraphQL request and the request id audit events carry:
/// the trace id when tracing is on (so an audit event leads to its trace),
/// else the request's `X-Request-Id` (the caller's if sane, else a fresh
/// UUID: `client::request_id`). The span records the `X-Request-Id` too, so
/// the id a response carries leads to its trace.
pub fn graphql_span(schema: &'static str, tenant: &str, headers: &HeaderMap) -> (tracing::Span, String) {
    let header_id = client::request_id(headers);
    let span = tracing::info_span!(
        "graphql",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        graphql.schema = schema,
        tenant = tenant,
        request_id = header_id.as_str(),
        graphql.operation.name = tracing::field::Empty,
        graphql.operation.type = tracing::field::Empty,
        graphql.root_fields = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails only when no OpenTelemetry layer is installed: then there is no trace to join.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    let request_id = if trace_id != opentelemetry::trace::TraceId::INVALID { trace_id.to_string() } else { header_id };
    (span, request_id)
}

/// What a request asks for, as far as metrics and spans care.
pub struct Operation {
    /// `query`, `mutation`, `subscription`, or `invalid` (unparsable).
    pub kind: &'static str,
    /// The metrics label: the one root field, `multiple`, or `unknown`.
    pub label: String,
}

/// Names declared by each schema (types, fields, arguments), computed once.
static NAMES: OnceLock<[HashSet<String>; 2]> = OnceLock::new();

fn declared(state: &AppState, schema: &'static str) -> &'static HashSet<String> {
    let names = NAMES.get_or_init(|| {
        [state.tenant_schema.names().into_iter().collect(), state.platform_schema.names().into_iter().collect()]
    });
    if schema == "tenant" { &names[0] } else { &names[1] }
}

/// Parses the document (already bounded in size by `parse_request`) and
/// records the operation on `span`.
pub fn operation(
    state: &AppState,
    schema: &'static str,
    request: &mut async_graphql::Request,
    span: &tracing::Span,
) -> Operation {
    let operation_name = request.operation_name.clone();
    // Parsed once per document by `parse_request` (the request keeps it for
    // execution); parsing here happens only for a document that failed.
    let Ok(doc) = request.parsed_query() else {
        return Operation { kind: "invalid", label: "unknown".into() };
    };
    let op = match (&doc.operations, operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => Some((None, op)),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.iter().find(|(n, _)| n.as_str() == name).map(|(n, op)| (Some(n.as_str()), op))
        }
        // A lone named operation needs no `operationName`.
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.iter().next().map(|(n, op)| (Some(n.as_str()), op))
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    let Some((name, op)) = op else { return Operation { kind: "invalid", label: "unknown".into() } };
    let kind = match op.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    let mut fields: Vec<&str> = op
        .node
        .selection_set
        .node
        .items
        .iter()
        .filter_map(|s| match &s.node {
            Selection::Field(f) => Some(f.node.name.node.as_str()),
            _ => None,
        })
        .collect();
    fields.sort_unstable();
    fields.dedup();
    let names = declared(state, schema);
    let label = match fields.as_slice() {
        [one] if names.contains(*one) => (*one).to_owned(),
        [_] | [] => "unknown".to_owned(),
        _ => "multiple".to_owned(),
    };
    let known: Vec<&str> = fields.iter().copied().filter(|f| names.contains(*f)).collect();
    span.record("graphql.operation.type", kind);
    span.record("graphql.root_fields", known.join(",").as_str());
    // The span has started (its trace id was read), so rename it directly:
    // tracing-opentelemetry applies `otel.name` only before that.
    span.context().span().update_name(format!("{kind} {label}"));
    if let Some(name) = name.filter(|n| n.len() <= 64) {
        span.record("graphql.operation.name", name);
    }
    Operation { kind, label }
}

/// `ok`, or the first error's contract code in lower case.
pub fn outcome(response: &async_graphql::Response) -> String {
    let Some(err) = response.errors.first() else { return "ok".into() };
    match err.extensions.as_ref().and_then(|e| e.get("code")) {
        Some(async_graphql::Value::String(s)) => s.to_ascii_lowercase(),
        Some(async_graphql::Value::Enum(s)) => s.to_ascii_lowercase(),
        _ => "internal".into(),
    }
}

/// Records a finished request on its span and in the metrics.
pub fn finish(
    schema: &'static str,
    tenant: &str,
    op: &Operation,
    outcome: &str,
    started: std::time::Instant,
    span: &tracing::Span,
) {
    use authd_tenancy::metrics as m;
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
    let tenant = if schema == "tenant" { m::tenant_label(tenant) } else { "" };
    let labels = [schema, op.label.as_str(), op.kind, outcome, tenant];
    m::REQUESTS.inc(&labels);
    m::REQUEST_SECONDS.observe(&labels, started.elapsed().as_secs_f64());
}

/// Counts every request by route template (`/t/{tenant}/graphql`, never
/// the path itself), method and status, including those refused before a
/// GraphQL operation ran (unknown tenant, quota, bad body).
pub async fn http_metrics(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use authd_tenancy::metrics as m;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Methods are client-chosen tokens: only the ones authd serves become labels.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    m::HTTP_REQUESTS.inc(&[&route, method, &status]);
    m::HTTP_SECONDS.observe(&[&route], started.elapsed().as_secs_f64());
    resp
}

/// Prometheus text exposition (version 0.0.4) of every family, encoded by
/// `prometheus-client`. Values kept elsewhere (atomics, queue lengths) are
/// read now, into a registry built for this scrape.
pub fn render_metrics(state: &AppState) -> String {
    use authd_tenancy::metrics::{self as m, register};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let stats = state.platform.deps.hasher.stats();
    let mut r = prometheus_client::registry::Registry::default();
    m::HTTP_REQUESTS.register(&mut r);
    m::HTTP_SECONDS.register(&mut r);
    m::REQUESTS.register(&mut r);
    m::REQUEST_SECONDS.register(&mut r);
    m::LOGINS.register(&mut r);
    m::BACKEND_ERRORS.register(&mut r);
    m::HASH_WAIT_SECONDS.register(&mut r);
    // Counter names without `_total`: the encoder appends it.
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 8] = [
        ("authd_mail_sent", "Mails the relay accepted (or written as .eml files).", &m::MAIL_SENT),
        (
            "authd_mail_failed",
            "Mails abandoned: refused for good by the relay, or undeliverable after every attempt.",
            &m::MAIL_FAILED,
        ),
        ("authd_mail_retries", "Mail deliveries that failed and will be retried.", &m::MAIL_RETRIES),
        (
            "authd_tenant_lookups",
            "Storage lookups of a tenant by slug (unknown slugs are mostly answered from memory).",
            &m::TENANT_LOOKUPS,
        ),
        ("authd_actor_restarts", "Tenant children restarted after a failure.", &m::ACTOR_RESTARTS),
        ("authd_password_verifications", "Argon2 verifications performed.", &m::PASSWORD_VERIFICATIONS),
        ("authd_password_hashes", "Argon2 hashes computed.", &m::PASSWORD_HASHES),
        ("authd_rate_limited", "Requests refused by a rate limit or the tenant quota.", &m::RATE_LIMITED),
    ];
    for (name, help, v) in counters {
        register(&mut r, name, help, ConstCounter::new(load(v)));
    }
    let active = ConstGauge::new(state.platform.active_tenants());
    register(&mut r, "authd_active_tenants", "Tenant supervisors running.", active);
    let depth = ConstGauge::new(load(&stats.queued));
    register(&mut r, "authd_hash_queue_depth", "Hashing jobs waiting for a worker.", depth);
    register(
        &mut r,
        "authd_mail_queued",
        "Mails waiting in the outbox (all replicas), as last read by this replica's sender.",
        ConstGauge::new(load(&m::MAIL_QUEUED)),
    );
    register(
        &mut r,
        "authd_mail_oldest_queued_seconds",
        "Age of the oldest mail in the outbox, as last read by this replica's sender.",
        ConstGauge::new(load(&m::MAIL_OLDEST_SECONDS)),
    );
    let audit = &state.platform.deps.audit.stats;
    register(
        &mut r,
        "authd_audit_queue_length",
        "Audit events waiting to be written (bounded by AUTHD_AUDIT_QUEUE_MAX).",
        ConstGauge::new(load(&audit.queued)),
    );
    register(
        &mut r,
        "authd_audit_events_dropped",
        "Audit events not stored because the queue was full (they are in the log).",
        ConstCounter::new(load(&audit.dropped)),
    );
    register(
        &mut r,
        "authd_audit_events_coalesced",
        "Repeated refusals merged into a queued event (its detail.count).",
        ConstCounter::new(load(&audit.coalesced)),
    );
    register(
        &mut r,
        "authd_hash_refused",
        "Hashing jobs refused (tenant queue full).",
        ConstCounter::new(load(&stats.refused)),
    );
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
    out
}

/// Counts a password login by outcome: `success`, `mfa_required`, or the
/// error code in lower case.
pub fn count_login(slug: &str, outcome: &authd_core::Result<authd_tenancy::LoginOutcome>) {
    use authd_tenancy::LoginOutcome;
    use authd_tenancy::metrics as m;
    let code;
    let label = match outcome {
        Ok(LoginOutcome::Tokens(_)) => "success",
        Ok(LoginOutcome::MfaChallenge { .. }) => "mfa_required",
        Err(e) => {
            code = e.code().as_str().to_ascii_lowercase();
            code.as_str()
        }
    };
    m::LOGINS.inc(&[label, m::tenant_label(slug)]);
}
