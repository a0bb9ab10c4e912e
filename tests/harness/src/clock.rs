//! The harness clock: a wall clock the guest reads (settable, may step backwards, like NTP) and a
//! monotonic clock that drives timers (ticks, callout timeouts), as Envoy's dispatcher does.
//! Nothing here reads the machine's time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A handle on the host's clock; clones share the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    wall_ns: AtomicU64,
    mono_ns: AtomicU64,
}

/// 2030-01-01T00:00:00Z: a fixed, recognisable start so runs are reproducible.
pub const DEFAULT_START_NS: u64 = 1_893_456_000 * 1_000_000_000;

impl Default for Clock {
    fn default() -> Self {
        Clock::at_unix_ns(DEFAULT_START_NS)
    }
}

impl Clock {
    pub fn at_unix_ns(wall_ns: u64) -> Self {
        Clock { inner: Arc::new(Inner { wall_ns: AtomicU64::new(wall_ns), mono_ns: AtomicU64::new(1_000_000_000) }) }
    }

    /// Wall-clock nanoseconds since the Unix epoch, what `proxy_get_current_time_nanoseconds`
    /// and WASI's realtime clock return.
    pub fn now_ns(&self) -> u64 {
        self.inner.wall_ns.load(Ordering::SeqCst)
    }

    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_ns())
    }

    /// Monotonic nanoseconds (WASI's monotonic clock; timers run on it).
    pub fn monotonic_ns(&self) -> u64 {
        self.inner.mono_ns.load(Ordering::SeqCst)
    }

    /// Steps the wall clock to `t`, forwards or backwards. Timers are not affected: a wall-clock
    /// step does not make a tick fire, as in Envoy.
    pub fn set(&self, t: SystemTime) {
        let ns = t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        self.set_unix_ns(ns);
    }

    pub fn set_unix_ns(&self, ns: u64) {
        self.inner.wall_ns.store(ns, Ordering::SeqCst);
    }

    pub fn set_unix_ms(&self, ms: u64) {
        self.set_unix_ns(ms.saturating_mul(1_000_000));
    }

    /// Moves both clocks forward by `d` at once. Timers that fell due meanwhile fire once, late,
    /// at the host's next step (as on a busy Envoy worker). Use `Host::advance` to have every
    /// timer fire on time instead.
    pub fn advance(&self, d: Duration) {
        let ns = d.as_nanos() as u64;
        self.inner.wall_ns.fetch_add(ns, Ordering::SeqCst);
        self.inner.mono_ns.fetch_add(ns, Ordering::SeqCst);
    }

    pub(crate) fn advance_monotonic_to(&self, mono_ns: u64) {
        let now = self.monotonic_ns();
        if mono_ns > now {
            self.advance(Duration::from_nanos(mono_ns - now));
        }
    }
}
