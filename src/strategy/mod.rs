//! The eight limiting strategies, each a pure function
//! `(state bytes, now, cost, rate, params) -> (decision, new state)`.
//!
//! State is an opaque byte string owned by the strategy (empty = never seen). Bytes that do not
//! decode are treated as a fresh state, never as an error: the store is shared and may hold
//! anything after a config change.

use crate::rate::Rate;

/// Which algorithm a rule uses, with its parameters (already validated by the config compiler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    FixedWindow,
    SlidingWindowCounter,
    /// Exact log of admitted (time, cost) entries; memory O(limit), capped at `max_entries`.
    SlidingWindowLog { max_entries: u32 },
    /// Capacity `burst` (default = limit), refilled at limit/period.
    TokenBucket { burst: Option<u64> },
    /// Like a token bucket, but a request is admitted while tokens stay ≥ -max_debt.
    TokenBucketDebt { burst: Option<u64>, max_debt: u64 },
    /// Capacity `burst` (default = limit), drains at limit/period; full = reject.
    LeakyBucket { burst: Option<u64> },
    /// Excess waits (admitted with a delay) up to `max_delay_ms`, else rejected.
    LeakyBucketQueue { burst: Option<u64>, max_delay_ms: u64 },
    /// Generic cell rate algorithm; `burst` (default = limit) requests may arrive at once,
    /// 1 = strict spacing.
    Gcra { burst: Option<u64> },
}

/// The answer for one rule and one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The quota advertised to the client (the rate's limit).
    pub limit: u64,
    /// Units of cost still available right after this decision.
    pub remaining: u64,
    /// Milliseconds until the quota is fully restored (or the window resets).
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
    pub state: Option<Vec<u8>>,
    /// Microseconds from `now` after which the stored state is equivalent to "never seen"
    /// (so its slot may be reused). Always > 0 when `state` is `Some`.
    pub ttl_us: u64,
}
