//! The worker's current configuration, shared by its root and request contexts (and found by
//! callbacks that arrive at the root), and the fields of verdicts reached at the root.

use std::cell::RefCell;
use std::rc::Rc;

use super::metrics::Metrics;
use crate::engine::Limiter;

/// Header fields, in order.
pub(super) type Fields = Vec<crate::response::Field>;

/// One configuration of the filter, shared by the worker's contexts.
pub(super) struct Shared {
    pub limiter: Limiter,
    pub metrics: Metrics,
    /// Shared-data key of the clock's high-water mark.
    pub clock_key: String,
}

thread_local! {
    /// The worker's current config, for callbacks that arrive at the root (Higress' Redis
    /// callout answers there).
    pub(super) static SHARED: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
    /// Rate limit fields of verdicts reached at the root (a gathered or Redis callout answers
    /// there), until their request's response.
    static FIELDS: RefCell<Vec<(u32, Fields)>> = const { RefCell::new(Vec::new()) };
}

/// The worker's current config.
#[cfg(feature = "redis-callout")]
pub(super) fn current() -> Option<Rc<Shared>> {
    SHARED.with(|s| s.borrow().clone())
}

/// Keeps the rate limit fields of request `ctx`'s verdict, reached at the root, until its
/// response.
pub(super) fn keep_fields(ctx: u32, fields: Fields) {
    if !fields.is_empty() {
        FIELDS.with(|h| h.borrow_mut().push((ctx, fields)));
    }
}

/// The rate limit fields of request `ctx`'s verdict, when it was reached at the root.
pub(super) fn take_fields(ctx: u32) -> Option<Fields> {
    FIELDS.with(|h| {
        let mut h = h.borrow_mut();
        let i = h.iter().position(|(c, _)| *c == ctx)?;
        Some(h.swap_remove(i).1)
    })
}
