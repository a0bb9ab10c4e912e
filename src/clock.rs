//! sluice's time: a clock that never runs backwards yet never stops, built from the host's wall
//! clock, and the deadlines of Redis calls measured on it.
//!
//! Envoy's clock is wall time and may step back (docs/architecture.md, "Host facts: time").
//! Clamping to the latest reading would stop time until the host caught up, an hour after a
//! one-hour step: windows would not roll, queued requests would not be released, the breaker
//! would not probe. Instead,
//! after a step back the clock carries on from the latest time it returned, at the host's pace
//! (an offset absorbs the step). Workers of one proxy share a high-water mark in shared data at
//! every tick (see [`Clock::catch_up`]), so they agree within one tick period and a restarted
//! VM resumes from the mark, never reading the state it wrote as coming from the future.

/// How far apart two workers' clocks may be: they agree within one tick period, and the host's
/// longest is this (its metrics flush; rules that queue tick faster).
pub const WORKER_SKEW_US: u64 = 100_000;

/// A monotonic clock over host readings, in epoch microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Added to host readings: the sum of the backward steps seen (and of catch-ups).
    offset_us: u64,
    /// The latest time returned.
    last_us: u64,
}

impl Clock {
    /// The time now, given the host's reading: never earlier than a time already returned,
    /// and advancing with the host even right after the host stepped back.
    pub fn now(&mut self, host_us: u64) -> u64 {
        let t = host_us.saturating_add(self.offset_us);
        if t < self.last_us {
            self.offset_us = self.offset_us.saturating_add(self.last_us - t);
            return self.last_us;
        }
        self.last_us = t;
        t
    }

    /// The latest time returned.
    pub fn last(&self) -> u64 {
        self.last_us
    }

    /// Moves this clock up to `mark`, a time another worker (or an earlier VM) has returned,
    /// if it is behind it. Returns the time now; the caller stores it as the new mark when it
    /// is later than `mark`.
    pub fn catch_up(&mut self, host_us: u64, mark: u64) -> u64 {
        let now = self.now(host_us);
        if mark > now {
            self.offset_us = self.offset_us.saturating_add(mark - now);
            self.last_us = mark;
            return mark;
        }
        now
    }
}

/// The shared-data value of the high-water mark: epoch µs, little-endian. Anything else reads
/// as no mark.
pub fn decode_mark(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_le_bytes)
}

pub fn encode_mark(t: u64) -> [u8; 8] {
    t.to_le_bytes()
}

/// The timeout to give a Redis call dispatched at `now_us` that must end by `deadline_us`, in
/// whole milliseconds; `None` under 1 ms. The host takes timeouts in milliseconds and reads 0 as
/// "no timeout", so a call with less than 1 ms left must not be made at all: the rule's
/// `on_error` decides at once.
pub fn call_timeout_ms(now_us: u64, deadline_us: u64) -> Option<u64> {
    let ms = deadline_us.saturating_sub(now_us) / 1000;
    (ms >= 1).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000;
    const T: u64 = 1_700_000_000_000_000;

    #[test]
    fn a_step_back_neither_rewinds_nor_stops_the_clock() {
        let mut c = Clock::default();
        assert_eq!(c.now(T), T);
        assert_eq!(c.now(T + 10), T + 10);
        // The host steps back an hour: time goes on from where it was.
        assert_eq!(c.now(T + 10 - HOUR), T + 10);
        assert_eq!(c.now(T + 20 - HOUR), T + 20);
        assert_eq!(c.now(T + 1_000_000 - HOUR), T + 1_000_000);
        // A second, smaller step back is absorbed the same way.
        assert_eq!(c.now(T + 500_000 - HOUR), T + 1_000_000);
        assert_eq!(c.now(T + 600_000 - HOUR), T + 1_100_000);
    }

    #[test]
    fn workers_catch_up_with_the_shared_mark() {
        // One worker saw the step right after T; another (or a new VM) only reads the mark.
        let mut late = Clock::default();
        assert_eq!(late.catch_up(T - HOUR, T + 5), T + 5);
        assert_eq!(late.now(T - HOUR + 100), T + 105);
        // A mark behind the clock changes nothing.
        assert_eq!(late.catch_up(T - HOUR + 200, T), T + 205);
    }

    #[test]
    fn calls_need_at_least_a_millisecond() {
        assert_eq!(call_timeout_ms(T, T + 20_000), Some(20));
        assert_eq!(call_timeout_ms(T, T + 1_999), Some(1));
        assert_eq!(call_timeout_ms(T, T + 999), None);
        assert_eq!(call_timeout_ms(T, T), None);
        assert_eq!(call_timeout_ms(T + 5, T), None);
    }

    #[test]
    fn marks_round_trip_and_garbage_is_no_mark() {
        assert_eq!(decode_mark(&encode_mark(T)), Some(T));
        assert_eq!(decode_mark(b"short"), None);
    }
}
