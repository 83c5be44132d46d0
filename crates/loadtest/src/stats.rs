//! What a phase measured: latencies of successful requests and failures by
//! GraphQL error code, reduced to a [`Summary`] (rate and percentiles).
//!
//! Latencies are kept whole and sorted at the end rather than bucketed: a
//! default run records well under a million samples, so exact percentiles
//! cost a few megabytes and no histogram dependency.

use std::collections::BTreeMap;
use std::time::Duration;

/// Raw samples of one worker, or of a whole phase once merged.
#[derive(Debug, Default)]
pub struct Samples {
    /// Latency of each successful request, in microseconds.
    pub ok_micros: Vec<u64>,
    /// Failed requests by GraphQL error code (or `TRANSPORT`, `HTTP_<status>`).
    pub errors: BTreeMap<String, u64>,
}

impl Samples {
    pub fn ok(&mut self, latency: Duration) {
        self.ok_micros.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: Samples) {
        self.ok_micros.extend(other.ok_micros);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// One phase, reduced.
#[derive(Clone, Debug)]
pub struct Summary {
    pub name: String,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Successful requests per second of wall time.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time of the whole process per successful request, when the
    /// server runs in this process (Linux only).
    pub cpu_ms_per_ok: Option<f64>,
}

/// The `q` quantile (0..=1) of sorted values, nearest-rank: the smallest value
/// with at least `q` of the samples at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(micros: Option<u64>) -> f64 {
    micros.map_or(f64::NAN, |us| us as f64 / 1000.0)
}

impl Summary {
    pub fn new(name: &str, mut samples: Samples, elapsed: Duration) -> Self {
        samples.ok_micros.sort_unstable();
        let sorted = &samples.ok_micros;
        let ok = sorted.len() as u64;
        let secs = elapsed.as_secs_f64();
        Self {
            name: name.to_owned(),
            ok,
            per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            p50_ms: ms(percentile(sorted, 0.50)),
            p99_ms: ms(percentile(sorted, 0.99)),
            max_ms: ms(sorted.last().copied()),
            errors: samples.errors,
            cpu_ms_per_ok: None,
        }
    }

    /// Records the CPU time the process spent in the phase.
    pub fn with_cpu(mut self, cpu_ns: Option<u64>) -> Self {
        self.cpu_ms_per_ok = cpu_ns.filter(|_| self.ok > 0).map(|ns| ns as f64 / 1e6 / self.ok as f64);
        self
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Errors whose code is not in `expected`.
    pub fn unexpected_errors(&self, expected: &[String]) -> u64 {
        self.errors
            .iter()
            .filter(|(code, _)| !expected.iter().any(|e| e.eq_ignore_ascii_case(code)))
            .map(|(_, n)| n)
            .sum()
    }

    /// Unexpected errors as a percentage of all requests.
    pub fn unexpected_error_percent(&self, expected: &[String]) -> f64 {
        let total = self.ok + self.error_count();
        if total == 0 {
            return 0.0;
        }
        100.0 * self.unexpected_errors(expected) as f64 / total as f64
    }

    /// `CODE n, CODE n` or `-`.
    pub fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            return "-".into();
        }
        self.errors.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn expected_codes_do_not_count_as_failures() {
        let mut s = Samples::default();
        for _ in 0..97 {
            s.ok(Duration::from_millis(2));
        }
        s.error("RATE_LIMITED");
        s.error("RATE_LIMITED");
        s.error("INTERNAL");
        let sum = Summary::new("login", s, Duration::from_secs(1));
        assert_eq!(sum.ok, 97);
        assert_eq!(sum.error_count(), 3);
        assert_eq!(sum.unexpected_errors(&["RATE_LIMITED".into()]), 1);
        assert!((sum.unexpected_error_percent(&["RATE_LIMITED".into()]) - 1.0).abs() < 1e-9);
        assert!((sum.per_sec - 97.0).abs() < 1e-9);
        assert!((sum.p50_ms - 2.0).abs() < 1e-9);
    }
}
