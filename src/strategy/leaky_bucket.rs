//! Leaky bucket (as a meter): a level of capacity `burst` (default = limit) that drains at
//! limit per period, starting empty; a request is admitted if `level + cost ≤ capacity`, and
//! fills the bucket by `cost`.
//!
//! Bound: over any interval of `d` ms (effective clock), admitted cost ≤ burst +
//! d × limit / period. (The same admissions as a token bucket of the same burst: the level is
//! the bucket's missing tokens.)
//!
//! State (17 bytes): tag 6, last update (epoch ms), level × period_ms.

use super::codec::{self, LEAKY_BUCKET};
use super::fluid::{self, Fluid};
use super::{sat, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, burst: u64, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let period = u128::from(rate.period_ms);
    let f = Fluid { period, limit: u128::from(rate.limit), cap: u128::from(burst) * period, queue: 0 };
    let (last, level) = match codec::decode::<2>(LEAKY_BUCKET, state) {
        Some([last, level]) => (last, u128::from(level)),
        None => (now_ms, 0),
    };
    let eff = now_ms.max(last);
    let level = f.drain(level, u128::from(eff - last));
    let step = f.step(level, cost, eff - now_ms);
    fluid::outcome(rate, step, |lvl| codec::encode(LEAKY_BUCKET, [eff, sat(lvl)]))
}
