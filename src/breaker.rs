//! The Redis circuit breaker: one state per proxy, shared by all its workers through the
//! shared-data store, so that when Redis fails every worker stops calling it at once and a few
//! probes (`half_open_probes` at a time, 1 by default) find out when it is back.
//!
//! closed --(failure_threshold consecutive failures)--> open
//! open --(open_ms elapsed)--> half-open: up to `half_open_probes` calls in flight
//! half-open --(success_threshold successes)--> closed; --(any failure)--> open
//!
//! A request is one call, whatever passes it takes (a dry pass then a write pass, a retry after
//! NOSCRIPT): it is recorded once, with its dry pass's call if that found a rule in force
//! unanswered, else when its last pass ends. A gathered callout is one call too: its ordinary
//! requests are recorded as one success or one failure, however many it carried, and each
//! probe among them on its own; one that fails is one failure in all (its other probes give
//! their places back). A probe whose request went away before its answer (the client hung up)
//! gives its place back without counting. A probe lost with its VM is replaced once it cannot
//! still be in flight: `max(open_ms, timeout_ms)` plus [`LATE_ANSWER_MS`] after it started, so
//! `half_open_probes` is never exceeded.

use crate::store::{with_retries, SharedStore, StoreError, CREATE_TOKEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    pub failure_threshold: u32,
    pub open_ms: u64,
    pub half_open_probes: u32,
    pub success_threshold: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec { failure_threshold: 5, open_ms: 5_000, half_open_probes: 1, success_threshold: 2 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    /// Consecutive failures (closed) or successes (half-open).
    count: u32,
    /// Probes in flight (half-open).
    probes: u32,
    /// When the phase began, epoch µs.
    since_us: u64,
}

impl State {
    const CLOSED: State = State { phase: Phase::Closed, count: 0, probes: 0, since_us: 0 };

    fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = match self.phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        };
        out[1..5].copy_from_slice(&self.count.to_le_bytes());
        out[5..9].copy_from_slice(&self.probes.to_le_bytes());
        out[9..17].copy_from_slice(&self.since_us.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> State {
        let b: &[u8; 17] = match b.try_into() {
            Ok(b) => b,
            Err(_) => return State::CLOSED,
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut since = [0u8; 8];
        since.copy_from_slice(&b[9..17]);
        let phase = match b[0] {
            1 => Phase::Open,
            2 => Phase::HalfOpen,
            _ => Phase::Closed,
        };
        State { phase, count: u32_at(1), probes: u32_at(5), since_us: u64::from_le_bytes(since) }
    }
}

/// Whether a request may call Redis now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    /// A half-open probe: report its result with [`Breaker::record`] like any call.
    Probe,
    /// Open: decide with `on_error` without calling.
    Skip,
}

/// Slack for an answer that arrives after its call's timeout (the host's timer fires late under
/// load; every worker's clock may trail another's by a tick).
pub const LATE_ANSWER_MS: u64 = 1_000;

pub struct Breaker<'a> {
    pub key: &'a str,
    pub spec: BreakerSpec,
    /// The longest a call can take (`redis.timeout_ms`: every pass of a request ends by then).
    pub timeout_ms: u64,
}

impl Breaker<'_> {
    /// Reads, transforms and writes the state with CAS, deciding again when another worker
    /// moved the breaker in between.
    fn modify<T>(&self, store: &impl SharedStore, mut f: impl FnMut(State) -> (State, T)) -> Result<T, StoreError> {
        with_retries(self.key, || {
            let (state, cas) = match store.get(self.key)? {
                Some((bytes, cas)) => (State::decode(&bytes), cas),
                None => (State::CLOSED, CREATE_TOKEN),
            };
            let (next, out) = f(state);
            if next != state {
                store.set(self.key, &next.encode(), cas)?;
            }
            Ok(out)
        })
    }

    /// How long, from `now_us`, an open breaker keeps calls from Redis (`None` when it is not
    /// open): what a request `on_error: deny` turned away is told to wait. At most `open_ms`:
    /// the worker that opened it may be a little ahead of this one's clock, and the first
    /// worker to reach the end probes for all.
    pub fn open_for_ms(&self, store: &impl SharedStore, now_us: u64) -> Option<u64> {
        let state = store.get(self.key).ok().flatten().map(|(b, _)| State::decode(&b))?;
        Some(self.open_wait_ms(state, now_us)).filter(|&ms| ms > 0)
    }

    /// [`Breaker::open_for_ms`] of `state`, 0 when it is not open.
    fn open_wait_ms(&self, state: State, now_us: u64) -> u64 {
        let until_us = state.since_us.saturating_add(self.spec.open_ms.saturating_mul(1000));
        if state.phase == Phase::Open && now_us < until_us {
            (until_us - now_us).div_ceil(1000).min(self.spec.open_ms)
        } else {
            0
        }
    }

    pub fn phase(&self, store: &impl SharedStore) -> Phase {
        store.get(self.key).ok().flatten().map(|(b, _)| State::decode(&b).phase).unwrap_or(Phase::Closed)
    }

    /// Asks to call Redis at `now_us`. A store failure permits the call: the breaker protects
    /// Redis, it must not add an outage of its own.
    pub fn permit(&self, store: &impl SharedStore, now_us: u64) -> Permit {
        self.permit_or_wait(store, now_us).0
    }

    /// [`Breaker::permit`], and with [`Permit::Skip`] what [`Breaker::open_for_ms`] would say
    /// (0 otherwise): an outage's denials are a flood, and this spares each a second read.
    pub fn permit_or_wait(&self, store: &impl SharedStore, now_us: u64) -> (Permit, u64) {
        let open_us = self.spec.open_ms.saturating_mul(1000);
        let stale_us = self.spec.open_ms.max(self.timeout_ms).saturating_add(LATE_ANSWER_MS).saturating_mul(1000);
        let result = self.modify(store, |s| match s.phase {
            Phase::Closed => (s, (Permit::Call, 0)),
            Phase::Open if now_us < s.since_us.saturating_add(open_us) => (s, (Permit::Skip, self.open_wait_ms(s, now_us))),
            Phase::Open => (State { phase: Phase::HalfOpen, count: 0, probes: 1, since_us: now_us }, (Permit::Probe, 0)),
            Phase::HalfOpen => {
                // Probes whose answer never came back (a worker restarted) must not wedge the
                // breaker half-open: once none of them can still be in flight (the newest was
                // granted longer ago than any call lasts), probe afresh.
                let stale = now_us >= s.since_us.saturating_add(stale_us);
                let probes = if stale { 0 } else { s.probes };
                if probes < self.spec.half_open_probes.max(1) {
                    (State { probes: probes.saturating_add(1), since_us: now_us, ..s }, (Permit::Probe, 0))
                } else {
                    (s, (Permit::Skip, 0))
                }
            }
        });
        result.unwrap_or((Permit::Call, 0))
    }

    /// [`Breaker::permit`] for a call whose answer decides no request (shadow rules alone): it
    /// goes only while the breaker is closed, and never takes a half-open probe's place, which
    /// its answer could not fill; while shadow calls held the places, every request in force
    /// would follow `on_error` unprobed.
    pub fn permit_unprobed(&self, store: &impl SharedStore) -> Permit {
        if self.phase(store) == Phase::Closed {
            Permit::Call
        } else {
            Permit::Skip
        }
    }

    /// A call made under `permit` will never report (its request ended first): a probe frees its
    /// place without counting as a success or a failure.
    pub fn abandon(&self, store: &impl SharedStore, permit: Permit) {
        if permit != Permit::Probe {
            return;
        }
        let _ = self.modify(store, |s| match s.phase {
            Phase::HalfOpen => (State { probes: s.probes.saturating_sub(1), ..s }, ()),
            _ => (s, ()),
        });
    }

    /// Reports the result of a call made under `permit`.
    pub fn record(&self, store: &impl SharedStore, permit: Permit, ok: bool, now_us: u64) {
        let spec = self.spec;
        let open = State { phase: Phase::Open, count: 0, probes: 0, since_us: now_us };
        let _ = self.modify(store, |s| {
            let next = match (s.phase, ok) {
                (Phase::Closed, true) if s.count == 0 => s,
                (Phase::Closed, true) => State { count: 0, ..s },
                // Counts saturate: the state is read back from shared data, where anything may lie.
                (Phase::Closed, false) if s.count.saturating_add(1) >= spec.failure_threshold.max(1) => open,
                (Phase::Closed, false) => State { count: s.count.saturating_add(1), ..s },
                // Only probes speak for a half-open breaker; a late answer to a call made while
                // closed says nothing about now.
                (Phase::HalfOpen, _) if permit != Permit::Probe => s,
                (Phase::HalfOpen, false) => open,
                (Phase::HalfOpen, true) if s.count.saturating_add(1) >= spec.success_threshold.max(1) => State::CLOSED,
                (Phase::HalfOpen, true) => State { count: s.count.saturating_add(1), probes: s.probes.saturating_sub(1), ..s },
                (Phase::Open, _) => s,
            };
            (next, ())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const SPEC: BreakerSpec = BreakerSpec { failure_threshold: 3, open_ms: 1000, half_open_probes: 1, success_threshold: 2 };

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_successful_probes() {
        let store = MemStore::default();
        let b = Breaker { key: "ns:breaker", spec: SPEC, timeout_ms: 20 };
        for t in 0..2 {
            assert_eq!(b.permit(&store, t), Permit::Call);
            b.record(&store, Permit::Call, false, t);
        }
        b.record(&store, Permit::Call, true, 2); // a success resets the streak
        for t in 3..6 {
            b.record(&store, Permit::Call, false, t);
        }
        assert_eq!(b.phase(&store), Phase::Open);
        assert_eq!(b.permit(&store, 500_000), Permit::Skip);
        // After open_ms: one probe at a time.
        assert_eq!(b.permit(&store, 1_000_005), Permit::Probe);
        assert_eq!(b.permit(&store, 1_000_006), Permit::Skip);
        b.record(&store, Permit::Probe, true, 1_000_007);
        assert_eq!(b.phase(&store), Phase::HalfOpen);
        assert_eq!(b.permit(&store, 1_000_008), Permit::Probe);
        b.record(&store, Permit::Probe, true, 1_000_009);
        assert_eq!(b.phase(&store), Phase::Closed);
        assert_eq!(b.permit(&store, 1_000_010), Permit::Call);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_does_not_wedge_it() {
        let store = MemStore::default();
        let b = Breaker { key: "k", spec: SPEC, timeout_ms: 20 };
        for t in 0..3 {
            b.record(&store, Permit::Call, false, t);
        }
        // Opened at t = 2 µs.
        assert_eq!(b.permit(&store, 1_000_001), Permit::Skip);
        assert_eq!(b.permit(&store, 1_000_002), Permit::Probe);
        b.record(&store, Permit::Probe, false, 1_000_001);
        assert_eq!(b.phase(&store), Phase::Open);
        assert_eq!(b.permit(&store, 1_500_000), Permit::Skip);
        // This probe's answer never arrives.
        assert_eq!(b.permit(&store, 2_000_001), Permit::Probe);
        assert_eq!(b.permit(&store, 2_500_000), Permit::Skip);
        assert_eq!(b.permit(&store, 3_000_002), Permit::Skip, "it may still be in flight");
        assert_eq!(b.permit(&store, 4_000_002), Permit::Probe, "a lost probe is replaced once it cannot be in flight");
    }

    #[test]
    fn a_probe_is_never_doubled_while_it_can_still_answer() {
        let store = MemStore::default();
        // Calls may take 5 s, longer than the breaker stays open.
        let b = Breaker { key: "k", spec: SPEC, timeout_ms: 5_000 };
        for t in 0..3 {
            b.record(&store, Permit::Call, false, t);
        }
        assert_eq!(b.permit(&store, 1_000_002), Permit::Probe);
        for t in [2_000_002, 4_000_000, 7_000_001] {
            assert_eq!(b.permit(&store, t), Permit::Skip, "at {t} µs the probe may still answer");
        }
        assert_eq!(b.permit(&store, 7_000_003), Permit::Probe);
    }

    #[test]
    fn an_abandoned_probe_frees_its_place_without_counting() {
        let store = MemStore::default();
        let b = Breaker { key: "k", spec: SPEC, timeout_ms: 20 };
        for t in 0..3 {
            b.record(&store, Permit::Call, false, t);
        }
        assert_eq!(b.permit(&store, 1_000_002), Permit::Probe);
        assert_eq!(b.permit(&store, 1_000_003), Permit::Skip);
        b.abandon(&store, Permit::Probe);
        assert_eq!(b.phase(&store), Phase::HalfOpen);
        assert_eq!(b.permit(&store, 1_000_004), Permit::Probe, "the place is free again");
        // Two successes are still needed: the abandoned one counted for nothing.
        b.record(&store, Permit::Probe, true, 1_000_005);
        assert_eq!(b.phase(&store), Phase::HalfOpen);
        b.abandon(&store, Permit::Call);
        assert_eq!(b.permit(&store, 1_000_006), Permit::Probe);
        b.record(&store, Permit::Probe, true, 1_000_007);
        assert_eq!(b.phase(&store), Phase::Closed);
    }

    #[test]
    fn late_answers_to_closed_calls_do_not_close_a_half_open_breaker() {
        let store = MemStore::default();
        let b = Breaker { key: "k", spec: BreakerSpec { success_threshold: 1, ..SPEC }, timeout_ms: 20 };
        for t in 0..3 {
            b.record(&store, Permit::Call, false, t);
        }
        assert_eq!(b.permit(&store, 1_000_002), Permit::Probe);
        b.record(&store, Permit::Call, true, 1_000_003);
        assert_eq!(b.phase(&store), Phase::HalfOpen);
    }

    /// Found by fuzzing (fuzz/ breaker_state): a stored state whose count is u32::MAX.
    #[test]
    fn a_stored_count_at_its_maximum_does_not_overflow() {
        let store = MemStore::default();
        let b = Breaker { key: "k", spec: SPEC, timeout_ms: 20 };
        let mut value = [0xffu8; 17];
        value[0] = 0;
        assert!(store.set("k", &value, 0).is_ok());
        b.record(&store, Permit::Call, false, 5);
        assert_eq!(b.phase(&store), Phase::Open);
        let mut half = [0xffu8; 17];
        half[0] = 2;
        half[9..17].copy_from_slice(&1_000u64.to_le_bytes());
        assert!(store.set("k", &half, 0).is_ok());
        b.record(&store, Permit::Probe, true, 2_000);
        assert_eq!(b.phase(&store), Phase::Closed);
    }

    #[test]
    fn a_probe_granted_late_is_not_taken_for_lost() {
        // The lost-probe wait runs from the newest probe granted: a probe granted long after the
        // breaker went half-open may still be in flight, and no second one joins it.
        let store = MemStore::default();
        let b = Breaker { key: "k", spec: BreakerSpec { failure_threshold: 1, ..SPEC }, timeout_ms: 2_000 };
        b.record(&store, Permit::Call, false, 0);
        let ms = |t: u64| t * 1000;
        assert_eq!(b.permit(&store, ms(1_000)), Permit::Probe);
        b.record(&store, Permit::Probe, true, ms(1_050));
        assert_eq!(b.permit(&store, ms(3_500)), Permit::Probe, "the second probe, after a quiet spell");
        assert_eq!(b.permit(&store, ms(4_100)), Permit::Skip, "the second may still be in flight");
        assert_eq!(b.permit(&store, ms(3_500 + 2_000 + LATE_ANSWER_MS)), Permit::Probe, "now it cannot be");
    }
}
