//! Sliding window log: the exact log of admitted `(time, cost)` entries of the last `period`
//! ms. A request is admitted if the cost logged in `(now − period, now]` plus its own is at
//! most the limit. An entry stops counting exactly `period` ms after it was admitted.
//!
//! Memory is capped at `max_entries` entries (at least 1): entries of the same millisecond are
//! merged, and when the log is full its two oldest entries are merged into one carrying both
//! costs at the later timestamp. A merged cost therefore expires later than it would have: the
//! cap can only make the log under-admit, never over-admit.
//!
//! Bound: admitted cost ≤ limit in every interval of `period` ms (effective clock).
//!
//! `reset_ms` is the time until the oldest entry expires, freeing its cost; the state matters
//! until the newest one does (the log is then empty). `retry_after_ms` is when enough of the
//! oldest entries have expired for the same request.
//!
//! State (1 + 16 × entries bytes): tag 3, then per entry, oldest first: time (epoch ms), cost.

use super::codec::{self, SLIDING_WINDOW_LOG};
use super::{admit, deny, sat, Outcome};
use crate::rate::Rate;

pub(crate) fn decide(rate: &Rate, max_entries: u32, state: &[u8], now_ms: u64, cost: u64) -> Outcome {
    let (limit, period) = (rate.limit, rate.period_ms);
    let mut log = decode(state).unwrap_or_default();
    // Never decide earlier than the newest entry (the clock may have stepped back).
    let eff = log.last().map_or(now_ms, |&(t, _)| now_ms.max(t));
    log.retain(|&(t, _)| t.saturating_add(period) > eff);
    let used: u128 = log.iter().map(|&(_, c)| u128::from(c)).sum();
    let remaining = sat(u128::from(limit).saturating_sub(used));
    // Until an entry expires, from now: the oldest frees quota, the newest empties the log.
    let expiry = |e: Option<&(u64, u64)>| e.map_or(0, |&(t, _)| t.saturating_add(period).saturating_sub(now_ms));
    let (reset, ttl) = (expiry(log.first()), expiry(log.last()));
    if cost == 0 {
        return admit(rate, remaining, reset, 0, None, ttl);
    }
    if cost > limit {
        return deny(rate, remaining, reset, period, ttl);
    }
    let excess = used + u128::from(cost);
    if excess <= u128::from(limit) {
        match log.last_mut() {
            Some((t, c)) if *t == eff => *c = c.saturating_add(cost),
            _ => log.push((eff, cost)),
        }
        // Over the cap, the oldest entries fold into the first one kept, in one pass: a log
        // stored under a larger cap (or longer than any the filter writes) costs its length,
        // not its length squared.
        let cap = usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX);
        if let Some(over) = log.len().checked_sub(cap).filter(|&n| n > 0) {
            let folded = log.iter().take(over + 1).fold(0u64, |sum, &(_, c)| sum.saturating_add(c));
            log.drain(..over);
            if let Some((_, c)) = log.first_mut() {
                *c = folded;
            }
        }
        let (reset, ttl) = (expiry(log.first()), expiry(log.last()));
        let fields: Vec<u64> = log.iter().flat_map(|&(t, c)| [t, c]).collect();
        let state = codec::encode_vec(SLIDING_WINDOW_LOG, &fields);
        return admit(rate, remaining_after(limit, excess), reset, 0, Some(state), ttl);
    }
    // Expire the oldest entries until the request fits; the last one to go sets the time.
    let mut need = excess - u128::from(limit);
    let mut at = eff;
    for &(t, c) in &log {
        at = t.saturating_add(period);
        need = need.saturating_sub(u128::from(c));
        if need == 0 {
            break;
        }
    }
    deny(rate, remaining, reset, at.saturating_sub(now_ms), ttl)
}

fn remaining_after(limit: u64, used: u128) -> u64 {
    sat(u128::from(limit).saturating_sub(used))
}

/// The log, oldest first; `None` unless it is well formed (pairs in time order).
fn decode(state: &[u8]) -> Option<Vec<(u64, u64)>> {
    let fields = codec::decode_vec(SLIDING_WINDOW_LOG, state)?;
    if fields.len() % 2 != 0 {
        return None;
    }
    let log: Vec<(u64, u64)> = fields.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    if log.windows(2).any(|w| w[0].0 > w[1].0) {
        return None;
    }
    Some(log)
}
