//! The [`Host`]: its state, the request API a test drives (`send`, `start`, `run`, `reset`,
//! `state`), and what a trap does to a worker's requests.
//!
//! The host is the engine of the harness: workers (one VM each, sharing one process), the
//! request lifecycle Envoy runs on every HTTP stream, timers on the harness clock, callouts,
//! and the scheduler that decides which worker runs next, each in a submodule of its own.
//!
//! Every guest callback runs as a future on its worker's wasmtime fiber. A shared-data call
//! suspends it once (see [`Point`]), so with several workers busy the scheduler can run another
//! worker between one worker's `get` and its `set`, which is exactly where Envoy's workers race.

mod builder;
mod calls;
mod engine;
mod guest;
mod inspect;
mod schedule;
mod steps;
mod stream;
mod time;

pub use builder::HostBuilder;
pub use engine::{check_imports, engine, load_module};
pub use inspect::FaultInjector;
pub use schedule::{Picker, Runnable, Schedule};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;

use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::http::{
    Callout, CalloutReply, HttpResponse, Origin, RedisCall, RedisReply, Request, RequestId, RequestState, Response,
    UpstreamRequest,
};
use crate::shared::Process;
use crate::vm::{lock, Effect, LocalReply, Plugin, Point, VmState};
use crate::HarnessError;

use guest::Exports;
use schedule::Sched;
use steps::Step;
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
    /// The module every worker runs, kept to start a worker's VM afresh.
    module: wasmtime::Module,
    /// The crossings of VMs started afresh since, which [`Host::crossings`] still counts.
    retired: crate::vm::Crossings,
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
    /// Envoy ends the stream at once (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`). Its
    /// HTTP callouts belong to the root and are still answered; its Redis callouts are
    /// dropped. Returns false if the request already has its response.
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

    /// Starts several requests at once (all their headers arrive before any callback of theirs
    /// runs, as in one turn of Envoy's event loop) and runs what can run now, without letting
    /// time pass.
    pub fn start_many(&mut self, reqs: Vec<Request>) -> Result<Vec<RequestId>, HarnessError> {
        let ids = reqs.into_iter().map(|r| self.enqueue_request(r)).collect();
        self.drive(|_| false, Duration::ZERO)?;
        Ok(ids)
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

    /// The size of worker `w`'s linear memory in bytes (it only grows): what the guest has kept
    /// at its peak. `None` while a step of that worker is suspended.
    pub fn guest_memory_bytes(&self, w: usize) -> Option<usize> {
        let store = self.workers.get(w)?.store.as_ref()?;
        Some(store.data().memory?.data_size(store))
    }
}
