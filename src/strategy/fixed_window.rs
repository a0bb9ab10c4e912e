//! Fixed window: a counter per window of `period` ms, windows aligned to the epoch
//! (`floor(now / period)`), so every proxy and Redis agree on the boundaries.
//!
//! Bound: admitted cost ≤ limit in every aligned window (effective clock: after the clock steps
//! back, requests keep counting in the latest window seen until it ends).
//!
//! `reset_ms` is the time to the end of the current window (0 while nothing is counted in it);
//! a denial's `retry_after_ms` is the same (the next window starts empty).
//!
//! State (17 bytes): tag 1, window start (epoch ms), admitted cost in that window.

use super::codec::{self, FIXED_WINDOW};
use super::{admit, deny, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let (limit, period) = (rate.limit, rate.period_ms);
    let now_window = now_ms - now_ms % period;
    let (start, count) = match codec::decode::<2>(FIXED_WINDOW, state) {
        // A stored window later than now's: the clock stepped back; keep counting in it.
        Some([start, count]) if start >= now_window => (start, count),
        _ => (now_window, 0),
    };
    let reset = start.saturating_add(period) - now_ms;
    let remaining = limit.saturating_sub(count);
    // Nothing counted in the window: nothing frees when it ends, so no reset to tell.
    let lived = if count > 0 { reset } else { 0 };
    if cost == 0 {
        return admit(rate, remaining, lived, 0, None, lived);
    }
    if cost > limit {
        return deny(rate, remaining, lived, period, lived);
    }
    match count.checked_add(cost) {
        Some(after) if after <= limit => {
            let state = codec::encode(FIXED_WINDOW, [start, after]);
            admit(rate, limit - after, reset, 0, Some(state), reset)
        }
        _ => deny(rate, remaining, reset, reset, lived),
    }
}
