//! GCRA (the generic cell rate algorithm) in integer microseconds, shared by
//! both backends so they decide identically. The Redis backend runs the same
//! arithmetic in Lua (`redis_store::RATE`); keep the two in step.
//!
//! One value per key: the theoretical arrival time (TAT) of the next request.
//! Each allowed request moves it `interval` (= `period / limit`) into the
//! future; a request is refused while the TAT would run more than
//! `tolerance` (= `limit * interval`, the whole burst) ahead of now.
//!
//! Every quantity stays below 2^53 so Lua's doubles hold it exactly: `now`
//! is clamped to [0, 2^52] µs (year 2112) and `period` to ten years.

use std::time::Duration;

use crate::RateDecision;

const MAX_NOW_US: i64 = 1 << 52;
const MAX_PERIOD_US: i64 = 10 * 366 * 24 * 3600 * 1_000_000;

/// What a rate check has to do.
pub(crate) enum Plan {
    /// Decided without reading the key (`limit == 0` or `period == 0`).
    Fixed(RateDecision),
    /// Read the stored TAT and [`Params::decide`].
    Check(Params),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub now_us: i64,
    pub interval_us: i64,
    pub tolerance_us: i64,
}

/// The outcome of one check: the answer, and the TAT to store with its TTL
/// when the request was allowed.
pub(crate) struct Decision {
    pub answer: RateDecision,
    pub store: Option<(i64, u64)>,
}

pub(crate) fn plan(limit: u32, period: Duration, now_ms: i64) -> Plan {
    let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX).min(MAX_PERIOD_US);
    if limit == 0 {
        let retry_after_ms = u64::try_from(ceil_div(period_us, 1000)).unwrap_or(0);
        return Plan::Fixed(RateDecision::Limited { retry_after_ms });
    }
    if period_us == 0 {
        return Plan::Fixed(RateDecision::Allowed { remaining: limit });
    }
    let now_us = now_ms.saturating_mul(1000).clamp(0, MAX_NOW_US);
    // Rounded up: never more than `limit` per `period`, and exact whenever
    // `limit` divides the period in microseconds (every practical policy).
    let interval_us = ceil_div(period_us, i64::from(limit));
    Plan::Check(Params { now_us, interval_us, tolerance_us: interval_us * i64::from(limit) })
}

impl Params {
    pub(crate) fn decide(&self, stored_tat: Option<i64>) -> Decision {
        let Params { now_us: now, interval_us: interval, tolerance_us: tolerance } = *self;
        let tat = stored_tat.unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let wait = new_tat - tolerance - now;
        if wait > 0 {
            let retry_after_ms = u64::try_from(ceil_div(wait, 1000)).unwrap_or(u64::MAX);
            return Decision { answer: RateDecision::Limited { retry_after_ms }, store: None };
        }
        let remaining = u32::try_from((now + tolerance - new_tat) / interval).unwrap_or(u32::MAX);
        let ttl_ms = u64::try_from(ceil_div(new_tat - now, 1000)).unwrap_or(1).max(1);
        Decision { answer: RateDecision::Allowed { remaining }, store: Some((new_tat, ttl_ms)) }
    }
}

/// `a / b` rounded up, for `a >= 0`, `b > 0`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: u32, period_ms: u64, now_ms: i64) -> Params {
        match plan(limit, Duration::from_millis(period_ms), now_ms) {
            Plan::Check(p) => p,
            Plan::Fixed(d) => panic!("unexpected fixed decision {d:?}"),
        }
    }

    #[test]
    fn a_burst_of_exactly_limit_then_one_interval_to_wait() {
        let p = params(5, 10_000, 1_000);
        let mut tat = None;
        for left in (0..5).rev() {
            let d = p.decide(tat);
            assert_eq!(d.answer, RateDecision::Allowed { remaining: left });
            tat = d.store.map(|(t, _)| t);
        }
        let d = p.decide(tat);
        assert_eq!(d.answer, RateDecision::Limited { retry_after_ms: 2_000 });
        assert!(d.store.is_none());
    }

    #[test]
    fn an_uneven_interval_rounds_up_never_lets_more_through() {
        // 3 per second: 333_334 µs apart, so the 4th waits 334 ms (rounded up).
        let p = params(3, 1_000, 0);
        let mut tat = None;
        for _ in 0..3 {
            tat = p.decide(tat).store.map(|(t, _)| t);
        }
        assert_eq!(p.decide(tat).answer, RateDecision::Limited { retry_after_ms: 334 });
    }

    #[test]
    fn zero_limit_refuses_and_zero_period_allows() {
        assert!(matches!(
            plan(0, Duration::from_secs(60), 0),
            Plan::Fixed(RateDecision::Limited { retry_after_ms: 60_000 })
        ));
        assert!(matches!(plan(7, Duration::ZERO, 0), Plan::Fixed(RateDecision::Allowed { remaining: 7 })));
    }
}
