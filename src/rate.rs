//! Rate strings (`100/min`, `2 per 5s`, `0/0`) and their parsed form.

/// A limit of `limit` units of cost per `period_ms` milliseconds.
/// `Rate { limit: 0, period_ms: 0 }` is "unlimited" (`0/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub limit: u64,
    pub period_ms: u64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate { limit: 0, period_ms: 0 };

    pub fn is_unlimited(&self) -> bool {
        self.limit == 0 && self.period_ms == 0
    }
}
