//! Leaky bucket with a queue: the leaky bucket (capacity `burst`, default = limit, draining at
//! limit per period), except that a request that would overflow is admitted with `delay_ms` =
//! the time until it fits, if that is at most `max_delay_ms`; otherwise it is denied. A queued
//! request's cost is added to the level at once, so the level may exceed the capacity by up to
//! `max_delay_ms × limit / period`, later requests wait behind it and the order is preserved.
//!
//! `remaining` is what may still pass without waiting (`capacity − level`, floored at 0);
//! `retry_after_ms` after a denial is when the same request would be admitted (possibly with
//! the full `max_delay_ms`).
//!
//! Bounds, over any interval of `d` ms (effective clock): admitted cost ≤ burst +
//! (max_delay_ms + d) × limit / period by decision time, and ≤ burst + (d + 1) × limit / period
//! by release time (decision time + delay; the 1 ms is `delay_ms` being rounded up, which can
//! make requests that are less than a millisecond apart in the fluid model share one).
//!
//! State (17 bytes): tag 7, last update (epoch ms), level × period_ms.

use super::codec::{self, LEAKY_BUCKET_QUEUE};
use super::fluid::{self, Fluid};
use super::{sat, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, burst: u64, max_delay_ms: u64, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let period = u128::from(rate.period_ms);
    let limit = u128::from(rate.limit);
    let f = Fluid { period, limit, cap: u128::from(burst) * period, queue: u128::from(max_delay_ms) * limit };
    let (last, level) = match codec::decode::<2>(LEAKY_BUCKET_QUEUE, state) {
        Some([last, level]) => (last, u128::from(level)),
        None => (now_ms, 0),
    };
    let eff = now_ms.max(last);
    let level = f.drain(level, u128::from(eff - last));
    let step = f.step(level, cost, eff - now_ms);
    fluid::outcome(rate, step, |lvl| codec::encode(LEAKY_BUCKET_QUEUE, [eff, sat(lvl)]))
}
