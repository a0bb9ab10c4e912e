//! The filter's clock on this worker: host readings turned monotonic and never stopping (see
//! [`crate::clock`]), and the high-water mark the workers of one proxy meet at.

use std::cell::Cell;

use super::abi;

use crate::clock::{self, Clock};
use crate::store::CREATE_TOKEN;

thread_local! {
    /// This worker's clock: host time is wall-clock and may step backwards.
    static CLOCK: Cell<Clock> = Cell::new(Clock::default());
}

/// The host's wall clock in epoch microseconds: this runs on every request a rule applies to
/// (docs/architecture.md, "Host facts: time").
fn host_us() -> Option<u64> {
    abi::now_ns().ok().map(|ns| ns / 1000)
}

/// The time in epoch microseconds: never earlier than a time already returned on this worker,
/// and running on after the host's clock steps back. A reading the host failed to give is the
/// latest time returned: taken as 0 it would be a step back to 1970, which the clock would
/// absorb by running every later reading fifty years ahead, expiring every count at once.
pub(super) fn now_us() -> u64 {
    let host = host_us();
    CLOCK.with(|c| {
        let mut clock = c.get();
        let t = host.map_or(clock.last(), |h| clock.now(h));
        c.set(clock);
        t
    })
}

/// Brings this worker's clock up to the proxy's high-water mark in shared data, and raises the
/// mark to it: workers then agree within one tick, and a new VM resumes where the last left.
/// Best effort: a lost race only means another worker wrote a mark at least as late.
pub(super) fn sync(key: &str) {
    let (mark, cas) = match abi::get_shared_data(key) {
        Ok(Some((v, cas))) => (clock::decode_mark(&v).unwrap_or(0), cas),
        _ => (0, CREATE_TOKEN),
    };
    let Some(host) = host_us() else { return };
    let now = CLOCK.with(|c| {
        let mut clock = c.get();
        let t = clock.catch_up(host, mark);
        c.set(clock);
        t
    });
    if now > mark {
        let _ = abi::set_shared_data(key, &clock::encode_mark(now), cas);
    }
}
