//! Sliding window counter: epoch-aligned windows as in the fixed window, but the previous
//! window's count is weighted by the part of it still inside the sliding window:
//! `estimate = previous × (period − elapsed) / period + current`, and a request is admitted if
//! `estimate + cost ≤ limit`. The comparison is done in whole numbers
//! (`previous × (period − elapsed) + (current + cost) × period ≤ limit × period`), so no
//! rounding favours the client.
//!
//! Bounds (effective clock): admitted cost ≤ limit in every aligned window, so < 2 × limit in
//! any interval of `period` ms; and at every admission the weighted estimate above, recounted
//! from the history, is ≤ limit. (The estimate assumes the previous window's requests were
//! spread evenly; that is the approximation this strategy trades for its 25-byte state.)
//!
//! `remaining` is `floor(limit − estimate)`; `reset_ms` is the time until one more fits (the
//! estimate falls as the previous window's weight shrinks, and the current count becomes the
//! weighted one in the next window). The state matters until the estimate falls to 0, up to
//! two periods.
//!
//! State (25 bytes): tag 2, current window start (epoch ms), current count, previous count.

use super::codec::{self, SLIDING_WINDOW_COUNTER};
use super::{admit, deny, mul_div, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let (limit, period) = (rate.limit, rate.period_ms);
    let (stored_start, cur, prev) = match codec::decode::<3>(SLIDING_WINDOW_COUNTER, state) {
        Some([start, cur, prev]) => (start, cur, prev),
        None => (now_ms - now_ms % period, 0, 0),
    };
    // Never decide earlier than the stored window's start (the clock may have stepped back).
    let eff = now_ms.max(stored_start);
    let start = eff - eff % period;
    let (cur, prev) = if start == stored_start {
        (cur, prev)
    } else if Some(start) == stored_start.checked_add(period) {
        (0, cur)
    } else {
        (0, 0)
    };
    // The previous window's weighted count, `prev × weight / period`, rounded up: with whole
    // counts, `estimate + cost ≤ limit` is `cur + cost + weighted ≤ limit`, and the remaining
    // `floor(limit − estimate)` is `limit − cur − weighted`.
    let weight = period - (eff - start);
    let weighted = mul_div(prev, weight, period, true);
    let remaining = |cur: u64| limit.saturating_sub(cur).saturating_sub(weighted);
    // The estimate is 0 once the current count has slid out of the next window.
    let until_empty = |cur: u64| {
        let end = if cur > 0 {
            start.saturating_add(period.saturating_mul(2))
        } else if prev > 0 {
            start.saturating_add(period)
        } else {
            return 0;
        };
        end - now_ms
    };
    // When `cost` (at most the limit) fits on `cur`: later in this window, once the previous
    // window's weight has shrunk enough, or in the next, where `cur` becomes the weighted one.
    let fits_at = |cur: u64, cost: u64| {
        if cur.checked_add(cost).is_some_and(|a| a <= limit) {
            start.saturating_add(first_fit(period, limit, prev, cur, cost))
        } else {
            start.saturating_add(period).saturating_add(first_fit(period, limit, cur, 0, cost))
        }
    };
    // One more than `rem`, what `cur` leaves, fits (nothing counted: all of it is there). The
    // weight is never 0 inside a window, so nothing is counted only when both counts are 0.
    let next = |cur: u64, rem: u64| match (cur, prev) {
        (0, 0) => 0,
        _ => fits_at(cur, rem.saturating_add(1)).saturating_sub(now_ms),
    };
    // As things stand, for a peek or a denial (an admission answers for what it leaves).
    let ttl = until_empty(cur);
    let as_is = || {
        let left = remaining(cur);
        (left, next(cur, left))
    };
    if cost == 0 {
        let (left, reset) = as_is();
        return admit(rate, left, reset, 0, None, ttl);
    }
    if cost > limit {
        let (left, reset) = as_is();
        return deny(rate, left, reset, period, ttl);
    }
    let after = cur.checked_add(cost).filter(|&a| a <= limit);
    if let Some(after) = after {
        if weighted <= limit - after {
            let state = codec::encode(SLIDING_WINDOW_COUNTER, [start, after, prev]);
            let left = remaining(after);
            return admit(rate, left, next(after, left), 0, Some(state), until_empty(after));
        }
    }
    let (left, reset) = as_is();
    deny(rate, left, reset, fits_at(cur, cost).saturating_sub(now_ms), ttl)
}

/// The first elapsed time `e` (ms into a window with `prev` weighted and `cur` current) at
/// which `prev × (period − e) + (cur + cost) × period ≤ limit × period`, given
/// `cur + cost ≤ limit`. At most `period` (where the weight is 0).
fn first_fit(period: u64, limit: u64, prev: u64, cur: u64, cost: u64) -> u64 {
    if prev == 0 {
        return 0;
    }
    let spare = limit.saturating_sub(cur).saturating_sub(cost);
    period - mul_div(spare, period, prev, false).min(period)
}
