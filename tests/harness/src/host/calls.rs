//! HTTP callouts and Redis calls: dispatching them (meeting any injected fault), delivering
//! their answers now, later or never, and answering the ones a test holds.

use super::steps::{Delivery, Step};
use super::time::Timer;
use super::Host;
use crate::http::{Callout, CalloutOutcome, CalloutReply, RedisCall, RedisOutcome, RedisReply};
use crate::shared::CalloutFault;
use crate::vm::{self, lock};

impl Host {
    pub(super) fn dispatch_callout(&mut self, w: usize, ctx: u32, token: u32, n: u64, call: vm::CalloutRequest) {
        let timeout_ms = call.timeout_ms;
        let record = Callout {
            n,
            worker: w,
            token,
            context_id: ctx,
            request_id: self.by_ctx.get(&(w, ctx)).copied(),
            request: call,
            outcome: None,
        };
        let fault = {
            let mut p = lock(&self.process);
            p.faults.nth_callout.remove(&n).or_else(|| p.faults.callout_faults.pop_front())
        };
        let reply = match fault {
            Some(CalloutFault::Fail) => CalloutReply::Fail,
            Some(CalloutFault::Timeout) => CalloutReply::Timeout,
            // Rejections happened at dispatch time; anything else falls through.
            Some(CalloutFault::Reject(_)) | None => (self.on_callout)(&record),
        };
        let idx = self.callouts.len();
        self.callouts.push(record);
        self.pending_calls.insert((w, token), idx);
        let now = self.clock.monotonic_ns();
        if timeout_ms > 0 {
            self.arm(now + timeout_ms as u64 * 1_000_000, Timer::CallTimeout { worker: w, token });
        }
        self.deliver_callout(w, token, reply);
    }

    fn deliver_callout(&mut self, w: usize, token: u32, reply: CalloutReply) {
        let Some(idx) = self.pending_calls.get(&(w, token)).copied() else { return };
        match reply {
            CalloutReply::Respond(resp) => {
                self.pending_calls.remove(&(w, token));
                self.callouts[idx].outcome = Some(CalloutOutcome::Responded(resp.status));
                self.workers[w].queue.push_back(Step::CallReply { token, delivery: Delivery::Response(resp) });
            }
            CalloutReply::RespondAfter(d, resp) => {
                let due = self.clock.monotonic_ns() + d.as_nanos() as u64;
                self.delayed.insert((w, token), resp);
                self.arm(due, Timer::CallReplyDue { worker: w, token });
            }
            CalloutReply::Fail => {
                self.pending_calls.remove(&(w, token));
                self.callouts[idx].outcome = Some(CalloutOutcome::Failed);
                self.workers[w].queue.push_back(Step::CallReply { token, delivery: Delivery::Failure });
            }
            CalloutReply::Timeout | CalloutReply::Hold => {}
        }
    }

    pub(super) fn release_delayed(&mut self, w: usize, token: u32) {
        if let Some(resp) = self.delayed.remove(&(w, token)) {
            self.deliver_callout(w, token, CalloutReply::Respond(resp));
        }
    }

    /// Every HTTP callout dispatched so far.
    pub fn callouts(&self) -> &[Callout] {
        &self.callouts
    }

    /// Answers a held callout (by its number `n`); returns false if it was already answered or
    /// timed out.
    pub fn answer_callout(&mut self, n: u64, reply: CalloutReply) -> bool {
        let Some(c) = self.callouts.iter().find(|c| c.n == n) else { return false };
        let key = (c.worker, c.token);
        if !self.pending_calls.contains_key(&key) {
            return false;
        }
        self.deliver_callout(key.0, key.1, reply);
        self.settle();
        true
    }

    pub(super) fn dispatch_redis(&mut self, w: usize, ctx: u32, token: u32, cluster: String, query: Vec<u8>) {
        let n = self.redis_calls.len() as u64 + 1;
        let record = RedisCall {
            n,
            worker: w,
            token,
            context_id: ctx,
            request_id: self.by_ctx.get(&(w, ctx)).copied(),
            cluster: cluster.clone(),
            query,
            outcome: None,
        };
        let fault = lock(&self.process).faults.redis_faults.pop_front();
        let reply = match fault {
            Some(CalloutFault::Fail) => RedisReply::Fail(1),
            Some(CalloutFault::Timeout) => RedisReply::Timeout,
            Some(CalloutFault::Reject(_)) | None => (self.on_redis)(&record),
        };
        let timeout_ms = self.workers[w]
            .store
            .as_ref()
            .and_then(|s| s.data().redis_inits.iter().rev().find(|(c, ..)| *c == cluster).map(|i| i.3))
            .unwrap_or(0);
        let idx = self.redis_calls.len();
        self.redis_calls.push(record);
        self.pending_redis.insert((w, token), idx);
        if timeout_ms > 0 {
            let due = self.clock.monotonic_ns() + timeout_ms as u64 * 1_000_000;
            self.arm(due, Timer::RedisTimeout { worker: w, token });
        }
        self.deliver_redis(w, token, reply);
    }

    fn deliver_redis(&mut self, w: usize, token: u32, reply: RedisReply) {
        let Some(idx) = self.pending_redis.get(&(w, token)).copied() else { return };
        let (status, data, outcome) = match reply {
            RedisReply::Resp(data) => (0, data, RedisOutcome::Replied),
            RedisReply::Fail(s) => (if s == 0 { 1 } else { s }, Vec::new(), RedisOutcome::Failed(s)),
            RedisReply::Timeout | RedisReply::Hold => return,
        };
        self.pending_redis.remove(&(w, token));
        self.redis_calls[idx].outcome = Some(outcome);
        self.workers[w].queue.push_back(Step::RedisReply { token, status, data });
    }

    /// Every Redis call made so far.
    pub fn redis_calls(&self) -> &[RedisCall] {
        &self.redis_calls
    }

    /// Answers a held Redis call (by its number `n`).
    pub fn answer_redis(&mut self, n: u64, reply: RedisReply) -> bool {
        let Some(c) = self.redis_calls.iter().find(|c| c.n == n) else { return false };
        let key = (c.worker, c.token);
        if !self.pending_redis.contains_key(&key) {
            return false;
        }
        self.deliver_redis(key.0, key.1, reply);
        self.settle();
        true
    }
}
