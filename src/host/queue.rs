//! Requests paused by `leaky_bucket_queue`, released by the root's tick when their time comes.
//! The tick arrives at the root context, so this is a worker-wide table, not per-request state.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::abi;

thread_local! {
    /// Paused requests by release time, then arrival (FIFO among equals): (at µs, seq, context).
    static QUEUE: RefCell<BinaryHeap<Reverse<(u64, u64, u32)>>> = const { RefCell::new(BinaryHeap::new()) };
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

/// Holds request `ctx` until `release_us`.
pub(super) fn hold(ctx: u32, release_us: u64) {
    let seq = SEQ.with(|s| {
        let n = s.get();
        s.set(n + 1);
        n
    });
    QUEUE.with(|q| q.borrow_mut().push(Reverse((release_us, seq, ctx))));
}

/// Resumes every request due at `now_us`.
pub(super) fn release_due(now_us: u64) {
    loop {
        let due = QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            match q.peek() {
                Some(Reverse((at, _, _))) if *at <= now_us => q.pop().map(|Reverse((_, _, ctx))| ctx),
                _ => None,
            }
        });
        let Some(ctx) = due else { break };
        // The request may be gone (client hung up): then there is nothing to resume.
        if abi::set_effective_context(ctx).is_ok() {
            let _ = abi::resume_http_request();
        }
    }
}
