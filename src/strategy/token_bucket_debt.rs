//! Token bucket with debt: like the token bucket (`burst` tokens, default = limit, refilled at
//! limit per period, starting full), but tokens may go down to `−max_debt`: a request is
//! admitted while `tokens − cost ≥ −max_debt`. A client may borrow against the future and then
//! pays the debt back before it can burst again.
//!
//! In admissions this equals a token bucket of capacity `burst + max_debt` whose refill stops at
//! `burst + max_debt`; what differs is the accounting a user reasons about (tokens may be
//! negative). `remaining` counts what may still be taken, debt included
//! (`tokens + max_debt`), and `reset_ms` is the time until one more token comes back.
//!
//! Bound: over any interval of `d` ms (effective clock), admitted cost ≤ burst + max_debt +
//! d × limit / period.
//!
//! State (17 bytes): tag 5, last update (epoch ms), tokens × period_ms as a two's-complement
//! i64 (negative while in debt).

use super::codec::{self, TOKEN_BUCKET_DEBT};
use super::fluid::{self, Fluid};
use super::Outcome;
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, burst: u64, max_debt: u64, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let period = u128::from(rate.period_ms);
    // The level is the shortfall from a full bucket; it may reach (burst + max_debt) × period.
    let full = i128::from(burst).saturating_mul(i128::from(rate.period_ms));
    let f = Fluid {
        period,
        limit: u128::from(rate.limit),
        cap: (u128::from(burst) + u128::from(max_debt)).saturating_mul(period),
        queue: 0,
    };
    let (last, level) = match codec::decode::<2>(TOKEN_BUCKET_DEBT, state) {
        Some([last, tokens]) => {
            let tokens = i128::from(tokens as i64);
            (last, u128::try_from(full.saturating_sub(tokens)).unwrap_or(0).min(f.cap))
        }
        None => (now_ms, 0),
    };
    let eff = now_ms.max(last);
    let level = f.drain(level, u128::from(eff - last));
    let step = f.step(level, cost, eff - now_ms);
    fluid::outcome(rate, step, |lvl| {
        let tokens = full.saturating_sub(i128::try_from(lvl).unwrap_or(i128::MAX));
        let tokens = i64::try_from(tokens).unwrap_or(i64::MIN);
        codec::encode(TOKEN_BUCKET_DEBT, [eff, tokens as u64])
    })
}
