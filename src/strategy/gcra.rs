//! GCRA (generic cell rate algorithm): one theoretical arrival time (TAT) per key. The emission
//! interval is `T = period / limit`; a request of cost `n` moves the TAT to
//! `max(TAT, now) + n × T` and is admitted if that is at most `burst × T` ahead of now.
//! `burst` defaults to the limit (that many requests may arrive at once); 1 = strict spacing.
//!
//! `T` is rarely a whole number of ms, so the TAT is kept as whole ms plus a fraction in
//! 1/limit ms; `(TAT − now) × limit` is then exactly the scaled level of the
//! [fluid](super::fluid) model, which decides (GCRA is the virtual-scheduling form of a leaky
//! bucket). A clock stepping back makes the TAT look further ahead: fewer admissions, never more.
//!
//! Bound: over any interval of `d` ms (effective clock), admitted cost ≤ burst +
//! d × limit / period.
//!
//! State (17 bytes): tag 8, TAT whole epoch ms, TAT fraction in 1/limit ms (< limit).

use super::codec::{self, GCRA};
use super::fluid::{self, Fluid};
use super::{div_rem, sat, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, burst: u64, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let period = u128::from(rate.period_ms);
    let limit = u128::from(rate.limit);
    let f = Fluid { period, limit, cap: u128::from(burst) * period, queue: 0 };
    let level = match codec::decode::<2>(GCRA, state) {
        Some([tat_ms, frac]) => {
            let ahead =
                (i128::from(tat_ms) - i128::from(now_ms)).saturating_mul(i128::from(rate.limit)).saturating_add(i128::from(frac));
            u128::try_from(ahead).unwrap_or(0)
        }
        None => 0,
    };
    let step = f.step(level, cost, 0);
    fluid::outcome(rate, step, |lvl| {
        let (ahead_ms, frac) = div_rem(lvl, limit);
        codec::encode(GCRA, [sat(u128::from(now_ms) + ahead_ms), sat(frac)])
    })
}
