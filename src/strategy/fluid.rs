//! The fluid level shared by the token bucket, its debt variant, both leaky buckets and GCRA:
//! a level that rises by `cost × period_ms` per admitted request and drains by `limit` per
//! millisecond, so one unit of cost drains in exactly `period_ms / limit` ms with no rounding.
//!
//! These five strategies differ in what they store (tokens, a level, a theoretical arrival
//! time) and in their capacity, not in this arithmetic: a token bucket's tokens are
//! `capacity − level`, GCRA's theoretical arrival time is `now + level / limit`. Scaled levels
//! stay below `(burst + max_debt) × period_ms + max_delay_ms × limit`, under 2^53 for realistic
//! rules, which keeps the Lua mirror exact.

use super::{ceil_div, div_rem, sat};

/// One rule's fluid parameters, in scaled units (cost × ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fluid {
    /// Scale of one unit of cost: the period in ms.
    pub period: u128,
    /// Drain per ms: the rate's limit.
    pub limit: u128,
    /// Scaled capacity: a request is admitted at once while `level + cost × period ≤ cap`.
    pub cap: u128,
    /// Scaled extra level admitted with a delay (leaky_bucket_queue), 0 elsewhere.
    pub queue: u128,
}

/// The result of one decision on a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub allowed: bool,
    /// The level after the decision (unchanged when denied or peeking).
    pub level: u128,
    /// Whether `level` must be stored.
    pub write: bool,
    pub remaining: u64,
    /// Until one more unit of cost is free (the rate limit fields' `t`).
    pub reset_ms: u64,
    pub retry_after_ms: u64,
    pub delay_ms: u64,
    /// Until the level is empty: how long the state matters.
    pub ttl_ms: u64,
}

impl Fluid {
    /// The level after `elapsed_ms` of draining. The comparison comes first so that
    /// `elapsed × limit` is only formed when it is below `level + limit` (exact in Lua too).
    pub fn drain(&self, level: u128, elapsed_ms: u128) -> u128 {
        if elapsed_ms >= ceil_div(level, self.limit) {
            0
        } else {
            level - elapsed_ms * self.limit
        }
    }

    /// Decides `cost` on `level` (already drained to the effective time, which is `lag_ms`
    /// after the real now). Durations are returned from the real now.
    pub fn step(&self, level: u128, cost: u64, lag_ms: u64) -> Step {
        let lag = u128::from(lag_ms);
        let need_units = u128::from(cost) * self.period;
        let empty = |lvl: u128| if lvl == 0 { 0 } else { sat(ceil_div(lvl, self.limit).saturating_add(lag)) };
        // What may still be taken, and when one unit more may: once the level is down to
        // `cap − (remaining + 1) × period`, which is `period − (cap − level) mod period` of
        // draining away (the whole of what is over `cap`, and a unit, for a queued level). An
        // empty level has all there is.
        let left = |lvl: u128| {
            let (units, part) = div_rem(self.cap.saturating_sub(lvl), self.period);
            let over = lvl.saturating_sub(self.cap);
            let next = match lvl {
                0 => 0,
                _ => sat(ceil_div(over.saturating_add(self.period - part), self.limit).saturating_add(lag)),
            };
            (sat(units), next)
        };
        // The level as it is, for a peek or a denial (an admission answers for its new level).
        let base = || {
            let (remaining, reset_ms) = left(level);
            Step { allowed: true, level, write: false, remaining, reset_ms, retry_after_ms: 0, delay_ms: 0, ttl_ms: empty(level) }
        };
        if cost == 0 {
            return base();
        }
        if need_units > self.cap {
            return Step { allowed: false, retry_after_ms: sat(self.period), ..base() };
        }
        let need = level.saturating_add(need_units);
        let bound = self.cap.saturating_add(self.queue);
        if need <= bound {
            let delay_ms = if need > self.cap { sat(ceil_div(need - self.cap, self.limit).saturating_add(lag)) } else { 0 };
            let (remaining, reset_ms) = left(need);
            return Step {
                allowed: true,
                level: need,
                write: true,
                remaining,
                reset_ms,
                retry_after_ms: 0,
                delay_ms,
                ttl_ms: empty(need),
            };
        }
        let retry = ceil_div(need - bound, self.limit).saturating_add(lag);
        Step { allowed: false, retry_after_ms: sat(retry), ..base() }
    }
}

/// Turns a [`Step`] into an [`Outcome`](super::Outcome), encoding the new level with `encode`
/// when it must be stored. The state lives until the level has drained.
pub(crate) fn outcome(rate: &crate::rate::Rate, s: Step, encode: impl FnOnce(u128) -> super::State) -> super::Outcome {
    if s.allowed {
        let state = if s.write { Some(encode(s.level)) } else { None };
        super::admit(rate, s.remaining, s.reset_ms, s.delay_ms, state, s.ttl_ms)
    } else {
        super::deny(rate, s.remaining, s.reset_ms, s.retry_after_ms, s.ttl_ms)
    }
}
