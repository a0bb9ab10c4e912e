//! Harness time: the timers (ticks, callout and Redis timeouts, delayed callout replies) and
//! the drive loop, which runs what can run and lets time pass only while a test waits.

use std::cmp::Reverse;
use std::time::Duration;

use super::steps::{Delivery, Step};
use super::Host;
use crate::http::{CalloutOutcome, HttpResponse, RedisOutcome};
use crate::HarnessError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Tick { worker: usize, gen: u64 },
    CallTimeout { worker: usize, token: u32 },
    CallReplyDue { worker: usize, token: u32 },
    RedisTimeout { worker: usize, token: u32 },
}

impl Host {
    /// Lets `d` of harness time pass, firing every timer (ticks, callout timeouts and delayed
    /// replies) at its due time and running what each one triggers.
    pub fn advance(&mut self, d: Duration) {
        let target = self.clock.monotonic_ns().saturating_add(d.as_nanos() as u64);
        if let Err(e) = self.drive_to(target) {
            panic!("harness error: {e}");
        }
    }

    fn drive_to(&mut self, target: u64) -> Result<(), HarnessError> {
        loop {
            self.fire_due_timers();
            self.run_ready()?;
            match self.next_timer() {
                Some(t) if t <= target => self.clock.advance_monotonic_to(t),
                _ => break,
            }
        }
        self.clock.advance_monotonic_to(target);
        self.fire_due_timers();
        self.run_ready()
    }

    /// Runs everything that can run now (including timers already due), without letting time
    /// pass.
    pub fn settle(&mut self) {
        if let Err(e) = self.drive(|_| false, Duration::ZERO) {
            panic!("harness error: {e}");
        }
    }

    /// The tick period a worker's root context set.
    pub fn tick_period(&self, worker: usize) -> Option<Duration> {
        let ms = self.workers.get(worker)?.tick_ms;
        (ms > 0).then(|| Duration::from_millis(ms as u64))
    }

    fn next_timer(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    pub(super) fn arm(&mut self, due_ns: u64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((due_ns, self.timer_seq, timer)));
    }

    fn fire_due_timers(&mut self) {
        let now = self.clock.monotonic_ns();
        while let Some(Reverse((due, _, timer))) = self.timers.peek().cloned() {
            if due > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Tick { worker, gen } => {
                    let wk = &mut self.workers[worker];
                    if gen != wk.tick_gen || wk.tick_ms == 0 || wk.failed.is_some() {
                        continue;
                    }
                    if !wk.tick_queued {
                        wk.tick_queued = true;
                        wk.queue.push_back(Step::Tick);
                    }
                    // Envoy re-arms the tick timer for one period after it fired; a late timer
                    // therefore fires once, not once per missed period.
                    let period = wk.tick_ms as u64 * 1_000_000;
                    self.arm(now + period, Timer::Tick { worker, gen });
                }
                Timer::CallTimeout { worker, token } => {
                    if let Some(idx) = self.pending_calls.remove(&(worker, token)) {
                        self.callouts[idx].outcome = Some(CalloutOutcome::TimedOut);
                        let resp = HttpResponse::new(504)
                            .header("content-length", "24")
                            .header("content-type", "text/plain")
                            .body("upstream request timeout");
                        self.workers[worker].queue.push_back(Step::CallReply { token, delivery: Delivery::Response(resp) });
                    }
                }
                Timer::CallReplyDue { worker, token } => self.release_delayed(worker, token),
                Timer::RedisTimeout { worker, token } => {
                    if let Some(idx) = self.pending_redis.remove(&(worker, token)) {
                        self.redis_calls[idx].outcome = Some(RedisOutcome::TimedOut);
                        self.workers[worker].queue.push_back(Step::RedisReply { token, status: 1, data: Vec::new() });
                    }
                }
            }
        }
    }

    // -- the drive loop ----------------------------------------------------------------------

    /// Runs until `done`, letting up to `max_wait` of harness time pass when nothing can run
    /// but a timer is pending.
    pub(super) fn drive(&mut self, done: impl Fn(&Host) -> bool, max_wait: Duration) -> Result<(), HarnessError> {
        let deadline = self.clock.monotonic_ns().saturating_add(max_wait.as_nanos() as u64);
        loop {
            self.fire_due_timers();
            while !done(self) {
                if !self.step_once()? {
                    break;
                }
            }
            if done(self) {
                return Ok(());
            }
            match self.next_timer() {
                Some(t) if t <= deadline => self.clock.advance_monotonic_to(t),
                _ => return Ok(()),
            }
        }
    }
}
