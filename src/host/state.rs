//! A configuration, shared by its root and the request contexts made under it (and kept by
//! whatever is in flight for them), and the fields of verdicts reached at the root.

use std::cell::RefCell;

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
    /// Rate limit fields of verdicts reached at the root (a gathered or Redis callout answers
    /// there), until their request's response.
    static FIELDS: RefCell<Vec<(u32, Fields)>> = const { RefCell::new(Vec::new()) };
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
