//! The eight limiting strategies, each a pure function
//! `(state bytes, now, cost, rate, params) -> (decision, new state)`.
//!
//! State is an opaque byte string owned by the strategy (empty = never seen). Bytes that do not
//! decode are treated as a fresh state, never as an error: the store is shared and may hold
//! anything after a config change.
//!
//! # Conventions shared by every strategy (and mirrored by the Lua scripts)
//!
//! - **Millisecond clock.** `now_us` is floored to whole milliseconds before deciding. Rates
//!   and every field of a [`Decision`] are in milliseconds, and working in ms keeps the scaled
//!   quantities below (`capacity × period_ms`, ≤ 8.64e13 for a million per day) under 2^53, so
//!   the Lua mirror, whose numbers are doubles, computes bit-identical results.
//! - **Time never runs backwards for a key.** When `now` is earlier than the time recorded in
//!   the state (a wall clock that stepped back), the strategy decides as if it were that
//!   recorded time; durations it returns are still measured from the real `now`. Stepping
//!   back therefore can only delay admissions, never add any.
//! - **Rounding.** `remaining` is floored, `reset_ms`, `retry_after_ms` and `delay_ms` are
//!   rounded up to whole milliseconds, so `retry_after_ms` is exact: the same request is
//!   admitted at `now + retry_after_ms` (absent other traffic) and would not be one ms earlier.
//! - **Denials and peeks consume nothing**: `state` is `None`. A `cost` of 0 is a peek and is
//!   always allowed.
//! - **A cost above the capacity can never pass**: it is denied with `retry_after_ms` = the
//!   period (a hint to back off; retrying will not help).
//! - **Invalid rates** (limit 0 or period 0, which the config compiler rejects): allowed,
//!   nothing stored.
//! - `burst: Some(0)` means the default (= limit), as `0` does in the Lua calling convention.
//!
//! The exact bound each strategy guarantees is stated in its module and checked by the property
//! tests; the shared case table `tests/cases/strategies.json` pins concrete values for every
//! backend.
//!
//! ```
//! use sluice::rate::Rate;
//! use sluice::strategy::{decide, Strategy};
//! let rate = Rate { limit: 2, period_ms: 1000 };
//! let s = Strategy::TokenBucket { burst: None };
//! let now = 1_700_000_000_000_000; // epoch µs
//! let a = decide(&s, &rate, &[], now, 1);
//! assert!(a.decision.allowed && a.decision.remaining == 1);
//! let b = decide(&s, &rate, a.state.as_deref().unwrap_or(&[]), now, 2);
//! assert!(!b.decision.allowed && b.decision.retry_after_ms == 500);
//! ```

use crate::rate::Rate;

mod catalogue;
pub(crate) mod codec;
mod fluid;

#[cfg(any(test, feature = "testing"))]
pub mod cases;
pub mod fixed_window;
pub mod gcra;
pub mod leaky_bucket;
pub mod leaky_bucket_queue;
pub mod sliding_window_counter;
pub mod sliding_window_log;
pub mod token_bucket;
pub mod token_bucket_debt;

#[cfg(test)]
mod tests;

pub use catalogue::{Entry, Param, Strategy, CATALOGUE, NAMES};
pub use codec::State;

/// The answer for one rule and one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The quota advertised to the client (the rate's limit).
    pub limit: u64,
    /// Units of cost still available right after this decision.
    pub remaining: u64,
    /// Milliseconds until more quota is available than `remaining` (the rate limit fields' `t`,
    /// draft -10: a token frees, the oldest logged request expires, the window resets); 0 when
    /// nothing is taken.
    pub reset_ms: u64,
    /// When denied: milliseconds after which the same request would be admitted. 0 when allowed.
    pub retry_after_ms: u64,
    /// When admitted by `leaky_bucket_queue`: how long the request must wait first. Else 0.
    pub delay_ms: u64,
}

/// A decision plus what to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// The state to write back; `None` when the state is unchanged (e.g. a plain denial).
    pub state: Option<State>,
    /// Microseconds from `now` after which the stored state (the new one, or the unchanged one
    /// when `state` is `None`) is equivalent to "never seen" (so its slot may be reused).
    /// Always > 0 when `state` is `Some`; 0 when the state is already equivalent to fresh.
    pub ttl_us: u64,
}

/// Decides one request of `cost` units at `now_us` (epoch microseconds) against `state`
/// (empty = never seen; undecodable = never seen).
pub fn decide(strategy: &Strategy, rate: &Rate, state: &[u8], now_us: u64, cost: u64) -> Outcome {
    if rate.limit == 0 || rate.period_ms == 0 {
        return Outcome {
            decision: Decision { allowed: true, limit: rate.limit, remaining: rate.limit, ..Decision::default() },
            state: None,
            ttl_us: 0,
        };
    }
    let now_ms = now_us / 1000;
    match strategy {
        Strategy::FixedWindow => fixed_window::decide(rate, state, now_ms, cost),
        Strategy::SlidingWindowCounter => sliding_window_counter::decide(rate, state, now_ms, cost),
        Strategy::SlidingWindowLog { max_entries } => sliding_window_log::decide(rate, *max_entries, state, now_ms, cost),
        Strategy::TokenBucket { burst } => token_bucket::decide(rate, capacity(rate, *burst), state, now_ms, cost),
        Strategy::TokenBucketDebt { burst, max_debt } => {
            token_bucket_debt::decide(rate, capacity(rate, *burst), *max_debt, state, now_ms, cost)
        }
        Strategy::LeakyBucket { burst } => leaky_bucket::decide(rate, capacity(rate, *burst), state, now_ms, cost),
        Strategy::LeakyBucketQueue { burst, max_delay_ms } => {
            leaky_bucket_queue::decide(rate, capacity(rate, *burst), *max_delay_ms, state, now_ms, cost)
        }
        Strategy::Gcra { burst } => gcra::decide(rate, capacity(rate, *burst), state, now_ms, cost),
    }
}

/// `burst` with its default (the limit); 0 also means the default.
fn capacity(rate: &Rate, burst: Option<u64>) -> u64 {
    match burst {
        Some(b) if b > 0 => b,
        _ => rate.limit,
    }
}

/// An admission: `state` is what to store (`None` for a peek), `ttl_ms` its lifetime.
fn admit(rate: &Rate, remaining: u64, reset_ms: u64, delay_ms: u64, state: Option<State>, ttl_ms: u64) -> Outcome {
    Outcome {
        decision: Decision { allowed: true, limit: rate.limit, remaining, reset_ms, retry_after_ms: 0, delay_ms },
        state,
        ttl_us: ttl_ms.saturating_mul(1000),
    }
}

/// A denial: nothing is stored; `ttl_ms` is the remaining lifetime of the unchanged state.
fn deny(rate: &Rate, remaining: u64, reset_ms: u64, retry_after_ms: u64, ttl_ms: u64) -> Outcome {
    Outcome {
        decision: Decision { allowed: false, limit: rate.limit, remaining, reset_ms, retry_after_ms, delay_ms: 0 },
        state: None,
        ttl_us: ttl_ms.saturating_mul(1000),
    }
}

/// Narrows a u128 intermediate to u64, saturating (only reachable with absurd inputs).
fn sat(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// ⌈a / b⌉ for b > 0 (0 for b = 0).
fn ceil_div(a: u128, b: u128) -> u128 {
    let (q, r) = div_rem(a, b);
    q + u128::from(r != 0)
}

/// `a × b / d` for d > 0, rounded up when `up`, saturating: one 64-bit multiply and divide
/// when the product fits, as it does for any realistic rule, and 128 bits (a software routine
/// on wasm32) only when it does not.
fn mul_div(a: u64, b: u64, d: u64, up: bool) -> u64 {
    match a.checked_mul(b) {
        Some(p) if up => p.div_ceil(d),
        Some(p) => p / d,
        None => {
            let p = u128::from(a) * u128::from(b);
            sat(if up { ceil_div(p, u128::from(d)) } else { div_rem(p, u128::from(d)).0 })
        }
    }
}

/// `a / b` and `a % b` for b > 0 (0 and 0 for b = 0), in 64-bit arithmetic whenever both
/// fit, as they do for any realistic rule: on wasm32 a 128-bit division is a call into a
/// software routine, a twentieth of ten rules' guest work before this.
fn div_rem(a: u128, b: u128) -> (u128, u128) {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => (a.checked_div(b).map_or(0, u128::from), a.checked_rem(b).map_or(0, u128::from)),
        _ => (a.checked_div(b).unwrap_or(0), a.checked_rem(b).unwrap_or(0)),
    }
}
