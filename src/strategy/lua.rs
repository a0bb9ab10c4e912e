//! The Redis side of the strategies: the Lua decision script, assembled from
//! `src/redis/scripts/*.lua`, and its calling convention.
//!
//! One script decides every Redis rule of a request in one call, all-or-nothing: `KEYS[i]` is
//! rule i's state key and [`rule_args`] gives its six `ARGV` entries; the reply is
//! `{all_allowed, {allowed, remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms}...}` (see
//! the top of `decide.lua`). The scripts mirror the Rust strategies exactly, and the shared
//! case table is run through both (`tests/lua_cases.rs`).

use super::{capacity_param, Decision, Strategy};
use crate::rate::Rate;

/// The whole script, for `SCRIPT LOAD` / `EVAL`.
pub const SCRIPT: &str = concat!(
    include_str!("../redis/scripts/common.lua"),
    include_str!("../redis/scripts/fixed_window.lua"),
    include_str!("../redis/scripts/sliding_window_counter.lua"),
    include_str!("../redis/scripts/sliding_window_log.lua"),
    include_str!("../redis/scripts/token_bucket.lua"),
    include_str!("../redis/scripts/token_bucket_debt.lua"),
    include_str!("../redis/scripts/leaky_bucket.lua"),
    include_str!("../redis/scripts/leaky_bucket_queue.lua"),
    include_str!("../redis/scripts/gcra.lua"),
    include_str!("../redis/scripts/decide.lua"),
);

/// `ARGV` entries per key.
pub const ARGS_PER_RULE: usize = 6;

/// The `ARGV` entries of one rule: strategy name, limit, period_ms, cost, p1, p2.
pub fn rule_args(strategy: &Strategy, rate: &Rate, cost: u64) -> [String; ARGS_PER_RULE] {
    let (p1, p2) = match strategy {
        Strategy::FixedWindow | Strategy::SlidingWindowCounter => (0, 0),
        Strategy::SlidingWindowLog { max_entries } => (u64::from(*max_entries), 0),
        Strategy::TokenBucket { burst } | Strategy::LeakyBucket { burst } | Strategy::Gcra { burst } => {
            (capacity_param(*burst), 0)
        }
        Strategy::TokenBucketDebt { burst, max_debt } => (capacity_param(*burst), *max_debt),
        Strategy::LeakyBucketQueue { burst, max_delay_ms } => (capacity_param(*burst), *max_delay_ms),
    };
    [
        strategy.name().to_string(),
        rate.limit.to_string(),
        rate.period_ms.to_string(),
        cost.to_string(),
        p1.to_string(),
        p2.to_string(),
    ]
}

/// One rule's part of the reply (`{allowed, remaining, reset_ms, retry_after_ms, delay_ms,
/// ttl_ms}`) as a [`Decision`] for a rate whose limit is `limit`, plus the state's ttl in ms.
/// `None` unless it has exactly six non-negative fields.
pub fn decision_from_reply(limit: u64, fields: &[i64]) -> Option<(Decision, u64)> {
    let [allowed, remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms] = fields else {
        return None;
    };
    let u = |v: &i64| u64::try_from(*v).ok();
    let decision = Decision {
        allowed: *allowed == 1,
        limit,
        remaining: u(remaining)?,
        reset_ms: u(reset_ms)?,
        retry_after_ms: u(retry_after_ms)?,
        delay_ms: u(delay_ms)?,
    };
    Some((decision, u(ttl_ms)?))
}
