//! Token bucket: `burst` tokens (default = limit), refilled continuously at limit per period,
//! starting full; a request takes `cost` tokens or is denied.
//!
//! Bound: over any interval of `d` ms (by the effective clock, see the parent module), admitted
//! cost ≤ burst + d × limit / period.
//!
//! State (17 bytes): tag 4, last update (epoch ms), tokens × period_ms (so fractional tokens are
//! exact integers).

use super::codec::{self, TOKEN_BUCKET};
use super::fluid::{self, Fluid};
use super::{sat, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, burst: u64, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let period = u128::from(rate.period_ms);
    let f = Fluid { period, limit: u128::from(rate.limit), cap: u128::from(burst) * period, queue: 0 };
    let (last, level) = match codec::decode::<2>(TOKEN_BUCKET, state) {
        Some([last, tokens]) => (last, f.cap - u128::from(tokens).min(f.cap)),
        None => (now_ms, 0),
    };
    let eff = now_ms.max(last);
    let level = f.drain(level, u128::from(eff - last));
    let step = f.step(level, cost, eff - now_ms);
    fluid::outcome(rate, step, |lvl| codec::encode(TOKEN_BUCKET, [eff, sat(f.cap - lvl.min(f.cap))]))
}
