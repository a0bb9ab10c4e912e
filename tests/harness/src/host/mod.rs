//! The host engine: workers (one VM each, sharing one process), the request lifecycle Envoy
//! runs on every HTTP stream, timers on the harness clock, callouts, and the scheduler that
//! decides which worker runs next.
//!
//! Every guest callback runs as a future on its worker's wasmtime fiber. A shared-data call
//! suspends it once (see [`Point`]), so with several workers busy the scheduler can run another
//! worker between one worker's `get` and its `set`, which is exactly where Envoy's workers race.

mod builder;
mod engine;
mod guest;
mod schedule;
mod steps;
mod stream;
mod time;

pub use builder::HostBuilder;
pub use engine::{check_imports, engine, load_module};
pub use schedule::{Picker, Runnable, Schedule};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;

use crate::abi::{LogLevel, MetricType, Status};
use crate::clock::Clock;
use crate::http::{
    Callout, CalloutOutcome, CalloutReply, HttpResponse, Origin, RedisCall, RedisOutcome, RedisReply, Request, RequestId,
    RequestState, Response, UpstreamRequest,
};
use crate::shared::{CalloutFault, LogEntry, Process, WriteFault};
use crate::vm::{self, lock, Effect, LocalReply, Plugin, Point, VmState};
use crate::HarnessError;

use guest::Exports;
use schedule::Sched;
use steps::{Delivery, Step};
use stream::Wait;
use time::Timer;

type StepFuture = Pin<Box<dyn Future<Output = (Store<VmState>, wasmtime::Result<i32>)> + Send>>;

struct Worker {
    store: Option<Store<VmState>>,
    ex: Exports,
    root: u32,
    queue: VecDeque<Step>,
    inflight: Option<(Step, StepFuture)>,
    failed: Option<String>,
    tick_ms: u32,
    tick_gen: u64,
    tick_queued: bool,
    park: Arc<Mutex<Option<Point>>>,
}

struct Req {
    spec: Request,
    worker: usize,
    ctx: u32,
    busy: bool,
    wait: Wait,
    continue_request: bool,
    continue_response: bool,
    local: Option<LocalReply>,
    local_started: bool,
    response_started: bool,
    origin: Origin,
    was_paused: bool,
    released: bool,
    response: Option<Response>,
    complete: bool,
}

/// A trap: the VM of `worker` is dead from then on (Envoy fails its streams closed).
#[derive(Debug, Clone)]
pub struct Trap {
    pub worker: usize,
    pub message: String,
}

type UpstreamFn = Box<dyn FnMut(&UpstreamRequest) -> HttpResponse>;
type CalloutFn = Box<dyn FnMut(&Callout) -> CalloutReply>;
type RedisFn = Box<dyn FnMut(&RedisCall) -> RedisReply>;

/// A proxy-wasm host emulating Envoy: several workers each running the module, sharing one
/// process (shared data, metrics, logs), driven by a settable clock.
pub struct Host {
    workers: Vec<Worker>,
    process: Arc<Mutex<Process>>,
    clock: Clock,
    plugin: Arc<Plugin>,
    properties: Vec<(String, Vec<u8>)>,
    requests: Vec<Req>,
    by_ctx: HashMap<(usize, u32), RequestId>,
    timers: BinaryHeap<Reverse<(u64, u64, Timer)>>,
    timer_seq: u64,
    callouts: Vec<Callout>,
    pending_calls: HashMap<(usize, u32), usize>,
    delayed: HashMap<(usize, u32), HttpResponse>,
    redis_calls: Vec<RedisCall>,
    pending_redis: HashMap<(usize, u32), usize>,
    upstream: UpstreamFn,
    on_callout: CalloutFn,
    on_redis: RedisFn,
    sched: Sched,
    next_worker: usize,
    traps: Vec<Trap>,
    max_wait: Duration,
}

/// A request being built by [`Host::request`]; `send` runs it.
pub struct RequestBuilder<'h> {
    host: &'h mut Host,
    req: Request,
}

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            #[doc = concat!("See [`Request::", stringify!($name), "`].")]
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.req = self.req.$name($($arg),*);
                self
            }
        )*
    };
}

impl RequestBuilder<'_> {
    forward!(
        header(name: &str, value: &str),
        authority(authority: &str),
        source(address: &str),
        route(name: &str),
        property_int(path: &str, value: i64),
        on_worker(i: usize),
        upstream(response: HttpResponse),
    );

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.req = self.req.body(body);
        self
    }

    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> Self {
        self.req = self.req.property(path, value);
        self
    }

    /// Sends the request and waits for its response, letting harness time pass while it waits
    /// (ticks, callout timeouts), as a client would. Panics on a harness error.
    pub fn send(self) -> Response {
        match self.host.try_send(self.req) {
            Ok(r) => r,
            Err(e) => panic!("harness error: {e}"),
        }
    }

    /// Starts the request and runs what can run now, without letting time pass.
    pub fn start(self) -> RequestId {
        match self.host.start(self.req) {
            Ok(id) => id,
            Err(e) => panic!("harness error: {e}"),
        }
    }
}

impl Host {
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// Starts building a request; finish with `.send()`.
    pub fn request(&mut self, method: &str, path: &str) -> RequestBuilder<'_> {
        RequestBuilder { host: self, req: Request::new(method, path) }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The `vm_id` whose shared data the workers use.
    pub fn vm_id(&self) -> &str {
        &self.plugin.vm_id
    }

    // -- requests ----------------------------------------------------------------------------

    /// Sends a request and waits for its response (see [`RequestBuilder::send`]).
    pub fn try_send(&mut self, req: Request) -> Result<Response, HarnessError> {
        let id = self.start(req)?;
        let max = self.max_wait;
        self.drive(|h| h.requests[id.0].complete, max)?;
        Ok(self.response_or_unfinished(id))
    }

    /// The client of a request goes away (a downstream reset) before it has its response:
    /// Envoy ends the stream at once (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`) and
    /// cancels its callouts, whose answers then never reach the guest. Returns false if the
    /// request already has its response.
    pub fn reset(&mut self, id: RequestId) -> bool {
        let Some(r) = self.requests.get(id.0) else { return false };
        if r.response.is_some() {
            return false;
        }
        let w = r.worker;
        let ctx = r.ctx;
        self.apply_effect(w, Effect::Close { ctx });
        self.settle();
        true
    }

    /// Starts a request (headers arrive) and runs what can run now, without letting time pass.
    pub fn start(&mut self, req: Request) -> Result<RequestId, HarnessError> {
        let id = self.enqueue_request(req);
        self.drive(|_| false, Duration::ZERO)?;
        Ok(id)
    }

    fn enqueue_request(&mut self, req: Request) -> RequestId {
        let n = self.workers.len();
        let worker = match req.worker {
            Some(w) => w.min(n - 1),
            None => {
                let w = self.next_worker % n;
                self.next_worker = self.next_worker.wrapping_add(1);
                w
            }
        };
        let id = RequestId(self.requests.len());
        self.requests.push(Req {
            spec: req,
            worker,
            ctx: 0,
            busy: false,
            wait: Wait::None,
            continue_request: false,
            continue_response: false,
            local: None,
            local_started: false,
            response_started: false,
            origin: Origin::Unfinished,
            was_paused: false,
            released: false,
            response: None,
            complete: false,
        });
        if let Some(msg) = self.workers[worker].failed.clone() {
            // Fail closed: a dead VM answers every request with 503 and runs nothing.
            let _ = msg;
            self.fail_request(id, Origin::VmFailed);
        } else {
            self.push_step(worker, Step::Create(id));
        }
        id
    }

    /// Sends many requests at once and runs them to completion with `schedule` deciding which
    /// worker goes next at every opportunity. Responses come back in the order given.
    pub fn run(&mut self, requests: Vec<Request>, schedule: Schedule) -> Vec<Response> {
        match self.try_run(requests, schedule) {
            Ok(r) => r,
            Err(e) => panic!("harness error: {e}"),
        }
    }

    pub fn try_run(&mut self, requests: Vec<Request>, schedule: Schedule) -> Result<Vec<Response>, HarnessError> {
        let previous = std::mem::replace(&mut self.sched, schedule.into());
        let ids: Vec<RequestId> = requests.into_iter().map(|r| self.enqueue_request(r)).collect();
        let max = self.max_wait;
        let result = self.drive(|h| ids.iter().all(|id| h.requests[id.0].complete), max);
        self.sched = previous;
        result?;
        Ok(ids.iter().map(|id| self.response_or_unfinished(*id)).collect())
    }

    /// Sets the schedule used from now on (default `InOrder`).
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.sched = schedule.into();
    }

    fn response_or_unfinished(&self, id: RequestId) -> Response {
        let r = &self.requests[id.0];
        match &r.response {
            Some(resp) => resp.clone(),
            None => Response {
                id,
                worker: r.worker,
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                origin: Origin::Unfinished,
                was_paused: r.was_paused,
                details: None,
            },
        }
    }

    /// The response of a request, once it has one.
    pub fn response(&self, id: RequestId) -> Option<&Response> {
        self.requests.get(id.0).and_then(|r| r.response.as_ref())
    }

    /// Where a request stands.
    pub fn state(&self, id: RequestId) -> RequestState {
        let Some(r) = self.requests.get(id.0) else { return RequestState::Failed };
        if let Some(resp) = &r.response {
            return match resp.origin {
                Origin::Local => RequestState::AnsweredLocally,
                Origin::Upstream => {
                    if r.released {
                        RequestState::Released
                    } else {
                        RequestState::Completed
                    }
                }
                Origin::VmFailed | Origin::Reset => RequestState::Failed,
                Origin::Unfinished => RequestState::Running,
            };
        }
        match r.wait {
            Wait::Request(_) | Wait::Response(_) => RequestState::Paused,
            _ if r.released => RequestState::Released,
            _ => RequestState::Running,
        }
    }

    // -- callouts ----------------------------------------------------------------------------

    fn dispatch_callout(&mut self, w: usize, ctx: u32, token: u32, n: u64, call: vm::CalloutRequest) {
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

    fn release_delayed(&mut self, w: usize, token: u32) {
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

    fn dispatch_redis(&mut self, w: usize, ctx: u32, token: u32, cluster: String, query: Vec<u8>) {
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

    // -- failures ----------------------------------------------------------------------------

    fn fail_worker(&mut self, w: usize, message: String) {
        let stderr: Vec<String> = lock(&self.process)
            .logs
            .iter()
            .filter(|l| l.worker == w && l.level >= LogLevel::Error)
            .map(|l| l.message.clone())
            .collect();
        let message = match stderr.last() {
            Some(last) => format!("{message}\nlast guest error log: {last}"),
            None => message,
        };
        self.traps.push(Trap { worker: w, message: message.clone() });
        let wk = &mut self.workers[w];
        wk.failed = Some(message);
        wk.queue.clear();
        wk.inflight = None;
        let ids: Vec<RequestId> = (0..self.requests.len())
            .map(RequestId)
            .filter(|id| self.requests[id.0].worker == w && !self.requests[id.0].complete)
            .collect();
        for id in ids {
            if self.requests[id.0].response.is_some() {
                self.requests[id.0].complete = true;
            } else {
                self.fail_request(id, Origin::VmFailed);
            }
        }
        self.pending_calls.retain(|(cw, _), _| *cw != w);
        self.pending_redis.retain(|(cw, _), _| *cw != w);
    }

    /// Traps so far (a trapped worker answers every request with 503).
    pub fn traps(&self) -> &[Trap] {
        &self.traps
    }

    // -- shared data, metrics, logs, faults --------------------------------------------------

    /// The value and CAS token of a shared-data key of this host's `vm_id`.
    pub fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.process).shared.get(&self.plugin.vm_id, key)
    }

    /// Writes shared data as a guest would (same CAS rules).
    pub fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Status {
        lock(&self.process).shared.set(&self.plugin.vm_id, key, value, cas)
    }

    /// Number of shared-data keys of this host's `vm_id`.
    pub fn shared_len(&self) -> usize {
        lock(&self.process).shared.len(&self.plugin.vm_id)
    }

    pub fn shared_keys(&self) -> Vec<String> {
        lock(&self.process).shared.keys(&self.plugin.vm_id)
    }

    /// Bytes of keys and values in shared data.
    pub fn shared_bytes(&self) -> usize {
        lock(&self.process).shared.bytes(&self.plugin.vm_id)
    }

    /// The next CAS stamp the process hands out; settable to test wrap-around.
    pub fn next_cas(&self) -> u32 {
        lock(&self.process).shared.next_cas()
    }

    pub fn set_next_cas(&self, next: u32) {
        lock(&self.process).shared.set_next_cas(next)
    }

    /// (reads, writes) of shared data by all guests so far.
    pub fn shared_ops(&self) -> (u64, u64) {
        let p = lock(&self.process);
        (p.shared_reads, p.shared_writes)
    }

    /// Fault injection.
    pub fn faults(&self) -> FaultInjector<'_> {
        FaultInjector { process: &self.process }
    }

    /// A metric's value by name (counters and gauges).
    pub fn metric(&self, name: &str) -> Option<i64> {
        lock(&self.process).metrics.get(name).map(|m| m.value)
    }

    /// Every metric: name → (type, value).
    pub fn metrics(&self) -> HashMap<String, (MetricType, i64)> {
        lock(&self.process).metrics.iter().map(|(k, m)| (k.clone(), (m.kind, m.value))).collect()
    }

    /// Every log line captured so far (`proxy_log`, and stdout/stderr as info/error).
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.process).logs.clone()
    }

    /// Log lines at `level` or above.
    pub fn logs_at_least(&self, level: LogLevel) -> Vec<LogEntry> {
        lock(&self.process).logs.iter().filter(|l| l.level >= level).cloned().collect()
    }

    /// Whether any line at `level` or above contains `text`.
    pub fn logged(&self, level: LogLevel, text: &str) -> bool {
        lock(&self.process).logs.iter().any(|l| l.level >= level && l.message.contains(text))
    }

    pub fn clear_logs(&self) {
        lock(&self.process).logs.clear();
    }

    /// `proxy_redis_init` calls of a worker: (cluster, username, password, timeout ms).
    pub fn redis_inits(&self, worker: usize) -> Vec<(String, String, String, u32)> {
        self.workers.get(worker).and_then(|w| w.store.as_ref()).map(|s| s.data().redis_inits.clone()).unwrap_or_default()
    }
}

/// Makes the next shared-data operations or callouts fail.
pub struct FaultInjector<'a> {
    process: &'a Arc<Mutex<Process>>,
}

impl FaultInjector<'_> {
    /// The next `k` shared-data writes (any worker) fail as given, changing nothing. Note that
    /// the Rust SDK's `set_shared_data` panics on any status but `Ok` and `CasMismatch`.
    pub fn fail_next_writes(&self, k: usize, fault: WriteFault) -> &Self {
        lock(self.process).faults.write_faults.extend(std::iter::repeat_n(fault, k));
        self
    }

    /// The next `k` shared-data reads fail with `status`.
    pub fn fail_next_reads(&self, k: usize, status: Status) -> &Self {
        lock(self.process).faults.read_faults.extend(std::iter::repeat_n(status, k));
        self
    }

    /// The next `k` callouts fail (reset), time out, or are rejected at dispatch.
    pub fn next_callouts(&self, k: usize, fault: CalloutFault) -> &Self {
        lock(self.process).faults.callout_faults.extend(std::iter::repeat_n(fault, k));
        self
    }

    /// The `n`-th callout of this host (counting from 1) fails as given.
    pub fn nth_callout(&self, n: u64, fault: CalloutFault) -> &Self {
        lock(self.process).faults.nth_callout.insert(n, fault);
        self
    }

    /// The next `k` Redis calls fail, time out, or are rejected.
    pub fn next_redis_calls(&self, k: usize, fault: CalloutFault) -> &Self {
        lock(self.process).faults.redis_faults.extend(std::iter::repeat_n(fault, k));
        self
    }
}
