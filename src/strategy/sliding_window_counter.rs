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
//! `reset_ms` is the time until the estimate falls to 0 (up to two periods: the current
//! window's count is weighted through the next window). `remaining` is
//! `floor(limit − estimate)`.
//!
//! State (25 bytes): tag 2, current window start (epoch ms), current count, previous count.

use super::codec::{self, SLIDING_WINDOW_COUNTER};
use super::{admit, deny, div, sat, Outcome};
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
    let p = u128::from(period);
    let l = u128::from(limit);
    let weight = p - u128::from(eff - start);
    // Everything below is in units of 1/period of a request.
    let used = |cur: u64| (u128::from(prev) * weight).saturating_add(u128::from(cur) * p);
    let remaining = |cur: u64| sat(div((l * p).saturating_sub(used(cur)), p));
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
    let reset = until_empty(cur);
    if cost == 0 {
        return admit(rate, remaining(cur), reset, 0, None, reset);
    }
    if cost > limit {
        return deny(rate, remaining(cur), reset, period, reset);
    }
    let after = cur.checked_add(cost).filter(|&a| a <= limit);
    if let Some(after) = after {
        if used(after) <= l * p {
            let state = codec::encode(SLIDING_WINDOW_COUNTER, [start, after, prev]);
            let reset = until_empty(after);
            return admit(rate, remaining(after), reset, 0, Some(state), reset);
        }
    }
    let at = if after.is_some() {
        // Admitted later in this window, once the previous window's weight has shrunk enough.
        start.saturating_add(first_fit(p, l, prev, cur, cost))
    } else {
        // Not before the next window, where the current count becomes the weighted one.
        start.saturating_add(period).saturating_add(first_fit(p, l, cur, 0, cost))
    };
    deny(rate, remaining(cur), reset, at.saturating_sub(now_ms), reset)
}

/// The first elapsed time `e` (ms into a window with `prev` weighted and `cur` current) at
/// which `prev × (period − e) + (cur + cost) × period ≤ limit × period`, given
/// `cur + cost ≤ limit`. At most `period` (where the weight is 0).
fn first_fit(p: u128, l: u128, prev: u64, cur: u64, cost: u64) -> u64 {
    let room = (l - u128::from(cur) - u128::from(cost)) * p;
    if prev == 0 {
        return 0;
    }
    sat(p - div(room, u128::from(prev)).min(p))
}
