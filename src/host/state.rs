//! The worker's current configuration, shared by its root and request contexts (and found by
//! callbacks that arrive at the root).

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
}

/// The worker's current config.
#[cfg(feature = "redis-callout")]
pub(super) fn current() -> Option<Rc<Shared>> {
    SHARED.with(|s| s.borrow().clone())
}
