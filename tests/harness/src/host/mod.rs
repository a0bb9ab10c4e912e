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

use crate::abi::{self, LogLevel, MetricType, Pairs, Status};
use crate::clock::Clock;
use crate::http::{
    Callout, CalloutOutcome, CalloutReply, HttpResponse, Origin, RedisCall, RedisOutcome, RedisReply, Request, RequestId,
    RequestState, Response, UpstreamRequest,
};
use crate::shared::{CalloutFault, LogEntry, Process, WriteFault};
use crate::vm::{self, find, lock, Effect, LocalReply, Plugin, Point, VmState};
use crate::HarnessError;

use guest::{Exports, GuestCall};
use schedule::Sched;
use time::Timer;

// ---------------------------------------------------------------------------------------------
// Workers, steps, requests.

#[derive(Debug, Clone)]
enum Delivery {
    Response(HttpResponse),
    Failure,
}

#[derive(Debug, Clone)]
enum Step {
    Create(RequestId),
    RequestHeaders(RequestId),
    RequestBody(RequestId),
    ResponseHeaders(RequestId),
    ResponseBody(RequestId),
    Done(RequestId),
    Log(RequestId),
    Delete(RequestId),
    CallReply { token: u32, delivery: Delivery },
    RedisReply { token: u32, status: i32, data: Vec<u8> },
    Tick,
    QueueReady(u32),
}

impl Step {
    fn request(&self) -> Option<RequestId> {
        match self {
            Step::Create(r)
            | Step::RequestHeaders(r)
            | Step::RequestBody(r)
            | Step::ResponseHeaders(r)
            | Step::ResponseBody(r)
            | Step::Done(r)
            | Step::Log(r)
            | Step::Delete(r) => Some(*r),
            _ => None,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    None,
    /// Paused in the request path, after this step.
    Request(Phase),
    /// Paused in the response path, after this step.
    Response(Phase),
    /// `proxy_on_done` returned false; waiting for `proxy_done`.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Body,
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

    fn prepare(&mut self, w: usize, store: &mut Store<VmState>, step: &Step, root: u32) -> Option<GuestCall> {
        let vm = store.data_mut();
        match step {
            Step::Create(id) => {
                let ctx = vm.alloc_context(false);
                let (headers, body, props) = self.request_data(*id, w);
                if let Some(c) = vm.contexts.get_mut(&ctx) {
                    c.request_headers = headers;
                    c.request_body = body;
                    c.properties = props;
                }
                self.requests[id.0].ctx = ctx;
                self.by_ctx.insert((w, ctx), *id);
                Some(GuestCall::ContextCreate { ctx, parent: root })
            }
            Step::RequestHeaders(id) => {
                let r = &self.requests[id.0];
                let c = vm.contexts.get(&r.ctx)?;
                let eos = c.request_body.is_empty() && c.request_trailers.is_empty();
                Some(GuestCall::RequestHeaders { ctx: r.ctx, n: c.request_headers.len() as u32, eos })
            }
            Step::RequestBody(id) => {
                let r = &self.requests[id.0];
                let c = vm.contexts.get_mut(&r.ctx)?;
                c.request_body_visible = true;
                Some(GuestCall::RequestBody { ctx: r.ctx, size: c.request_body.len() as u32, eos: true })
            }
            Step::ResponseHeaders(id) => {
                let r = &self.requests[id.0];
                let c = vm.contexts.get(&r.ctx)?;
                let eos = c.response_body.is_empty() && c.response_trailers.is_empty();
                Some(GuestCall::ResponseHeaders { ctx: r.ctx, n: c.response_headers.len() as u32, eos })
            }
            Step::ResponseBody(id) => {
                let r = &self.requests[id.0];
                let c = vm.contexts.get_mut(&r.ctx)?;
                c.response_body_visible = true;
                Some(GuestCall::ResponseBody { ctx: r.ctx, size: c.response_body.len() as u32, eos: true })
            }
            Step::Done(id) => Some(GuestCall::Done { ctx: self.requests[id.0].ctx }),
            Step::Log(id) => Some(GuestCall::Log { ctx: self.requests[id.0].ctx }),
            Step::Delete(id) => Some(GuestCall::Delete { ctx: self.requests[id.0].ctx }),
            Step::CallReply { token, delivery } => {
                let (headers, body, trailers) = match delivery {
                    Delivery::Response(resp) => {
                        let mut headers = resp.headers.clone();
                        if find(&headers, ":status").is_none() {
                            headers.insert(0, (":status".to_string(), resp.status.to_string()));
                        }
                        let (h, b) = (headers.len() as u32, resp.body.len() as u32);
                        vm.call_response = Some(vm::CallResponse { headers, body: resp.body.clone(), trailers: Vec::new() });
                        vm.status = (0, String::new());
                        (h, b, 0)
                    }
                    Delivery::Failure => {
                        vm.call_response = None;
                        vm.status = (Status::BrokenConnection as u32, "reset".to_string());
                        (0, 0, 0)
                    }
                };
                Some(GuestCall::HttpCallResponse { root, token: *token, headers, body, trailers })
            }
            Step::RedisReply { token, status, data } => {
                vm.redis_response = (*status == 0).then(|| data.clone());
                Some(GuestCall::RedisCallResponse { root, token: *token, status: *status, size: data.len() as u32 })
            }
            Step::Tick => {
                self.workers[w].tick_queued = false;
                Some(GuestCall::Tick { root })
            }
            Step::QueueReady(q) => Some(GuestCall::QueueReady { root, queue: *q }),
        }
    }

    /// Request headers, body and properties as Envoy would present them to the filter.
    fn request_data(&self, id: RequestId, w: usize) -> (Pairs, Vec<u8>, HashMap<String, Vec<u8>>) {
        let spec = &self.requests[id.0].spec;
        let mut headers: Pairs = vec![
            (":authority".into(), spec.authority.clone()),
            (":path".into(), spec.path.clone()),
            (":method".into(), spec.method.clone()),
            (":scheme".into(), "http".into()),
        ];
        headers.extend(spec.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
        if find(&headers, "x-request-id").is_none() {
            headers.push(("x-request-id".into(), format!("req-{}", id.0)));
        }
        if !spec.body.is_empty() && find(&headers, "content-length").is_none() {
            headers.push(("content-length".into(), spec.body.len().to_string()));
        }
        let source = spec.source.clone().unwrap_or_else(|| "127.0.0.1:40000".to_string());
        let port = source.rsplit_once(':').and_then(|(_, p)| p.parse::<i64>().ok()).unwrap_or(0);
        let (url_path, query) = match spec.path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (spec.path.clone(), String::new()),
        };
        let mut p: HashMap<String, Vec<u8>> = HashMap::new();
        let s = |v: &str| v.as_bytes().to_vec();
        let i = |v: i64| v.to_le_bytes().to_vec();
        p.insert("source.address".into(), s(&source));
        p.insert("source.port".into(), i(port));
        p.insert("destination.address".into(), s("127.0.0.1:10000"));
        p.insert("destination.port".into(), i(10000));
        p.insert("connection.id".into(), i(id.0 as i64 + 1));
        p.insert("request.path".into(), s(&spec.path));
        p.insert("request.url_path".into(), s(&url_path));
        p.insert("request.query".into(), s(&query));
        p.insert("request.host".into(), s(&spec.authority));
        p.insert("request.method".into(), s(&spec.method));
        p.insert("request.scheme".into(), s("http"));
        p.insert("request.protocol".into(), s("HTTP/1.1"));
        p.insert("request.time".into(), i(self.clock.now_ns() as i64));
        p.insert("request.size".into(), i(spec.body.len() as i64));
        if let Some(id) = find(&headers, "x-request-id") {
            p.insert("request.id".into(), s(id));
        }
        if let Some(ua) = find(&headers, "user-agent") {
            p.insert("request.useragent".into(), s(ua));
        }
        p.insert("xds.cluster_name".into(), s("upstream"));
        p.insert("xds.route_name".into(), s("default"));
        p.insert("worker".into(), i(w as i64));
        for (k, v) in self.properties.iter().chain(spec.properties.iter()) {
            p.insert(k.clone(), v.clone());
        }
        (headers, spec.body.clone(), p)
    }

    // -- after a callback ----------------------------------------------------------------------

    fn push_step(&mut self, w: usize, step: Step) {
        if let Some(id) = step.request() {
            self.requests[id.0].busy = true;
        }
        self.workers[w].queue.push_back(step);
    }

    fn finish_step(&mut self, w: usize, step: Step, ret: i32) {
        if let Some(store) = self.workers[w].store.as_mut() {
            let vm = store.data_mut();
            match &step {
                Step::CallReply { .. } => {
                    vm.call_response = None;
                    vm.status = (0, String::new());
                }
                Step::RedisReply { .. } => vm.redis_response = None,
                _ => {}
            }
        }
        self.after_step(w, Some(step), ret);
    }

    /// Applies a finished callback: its return value to its own request, then the effects it
    /// asked for, in order (Envoy runs them after the VM call returns).
    fn after_step(&mut self, w: usize, step: Option<Step>, ret: i32) {
        let effects = match self.workers[w].store.as_mut() {
            Some(s) => std::mem::take(&mut s.data_mut().effects),
            None => Vec::new(),
        };
        if let Some(step) = &step {
            if let Some(id) = step.request() {
                let ctx = self.requests[id.0].ctx;
                let local_here = effects.iter().any(|e| matches!(e, Effect::LocalReply { ctx: c, .. } if *c == ctx));
                // `send_local_response` stops iteration whatever the callback returns.
                let action = if local_here { abi::action::PAUSE } else { ret };
                self.requests[id.0].busy = false;
                self.advance_request(w, id, step, action);
            }
        }
        for effect in effects {
            self.apply_effect(w, effect);
        }
        let ready: Vec<u32> = std::mem::take(&mut lock(&self.process).queues.ready);
        for q in ready {
            let owner = lock(&self.process).queues.queues.get(&q).map(|e| e.0);
            if let Some(owner) = owner {
                if self.workers[owner].failed.is_none() {
                    self.workers[owner].queue.push_back(Step::QueueReady(q));
                }
            }
        }
    }

    fn advance_request(&mut self, w: usize, id: RequestId, step: &Step, action: i32) {
        let paused = action != abi::action::CONTINUE;
        match step {
            Step::Create(_) => self.push_step(w, Step::RequestHeaders(id)),
            Step::RequestHeaders(_) => {
                if paused {
                    self.pause(id, Wait::Request(Phase::Headers));
                } else {
                    self.after_request_headers(w, id);
                }
            }
            Step::RequestBody(_) => {
                if paused {
                    self.pause(id, Wait::Request(Phase::Body));
                } else {
                    self.send_upstream(w, id);
                }
            }
            Step::ResponseHeaders(_) => {
                if paused && !self.requests[id.0].local_started {
                    self.pause(id, Wait::Response(Phase::Headers));
                } else {
                    self.after_response_headers(w, id);
                }
            }
            Step::ResponseBody(_) => {
                if paused && !self.requests[id.0].local_started {
                    self.pause(id, Wait::Response(Phase::Body));
                } else {
                    self.finish_response(w, id);
                }
            }
            Step::Done(_) => {
                if action != 0 {
                    self.push_step(w, Step::Log(id));
                } else {
                    self.requests[id.0].wait = Wait::Done;
                    let ctx = self.requests[id.0].ctx;
                    if let Some(s) = self.workers[w].store.as_mut() {
                        s.data_mut().awaiting_done.insert(ctx);
                    }
                }
            }
            Step::Log(_) => self.push_step(w, Step::Delete(id)),
            Step::Delete(_) => {
                let ctx = self.requests[id.0].ctx;
                if let Some(s) = self.workers[w].store.as_mut() {
                    s.data_mut().contexts.remove(&ctx);
                }
                // Envoy cancels a deleted context's callouts: their answers never arrive.
                let calls = &self.callouts;
                self.pending_calls.retain(|(cw, _), idx| !(*cw == w && calls[*idx].context_id == ctx));
                let redis = &self.redis_calls;
                self.pending_redis.retain(|(cw, _), idx| !(*cw == w && redis[*idx].context_id == ctx));
                self.by_ctx.remove(&(w, ctx));
                self.requests[id.0].complete = true;
            }
            _ => {}
        }
        self.kick(w, id);
    }

    fn pause(&mut self, id: RequestId, wait: Wait) {
        let r = &mut self.requests[id.0];
        r.wait = wait;
        r.was_paused = true;
    }

    fn after_request_headers(&mut self, w: usize, id: RequestId) {
        if self.requests[id.0].spec.body.is_empty() {
            self.send_upstream(w, id);
        } else {
            self.push_step(w, Step::RequestBody(id));
        }
    }

    fn after_response_headers(&mut self, w: usize, id: RequestId) {
        let has_body = self.ctx(w, id).is_some_and(|c| !c.response_body.is_empty());
        if has_body {
            self.push_step(w, Step::ResponseBody(id));
        } else {
            self.finish_response(w, id);
        }
    }

    fn ctx(&self, w: usize, id: RequestId) -> Option<&vm::Ctx> {
        let ctx = self.requests[id.0].ctx;
        self.workers[w].store.as_ref()?.data().contexts.get(&ctx)
    }

    fn ctx_mut(&mut self, w: usize, id: RequestId) -> Option<&mut vm::Ctx> {
        let ctx = self.requests[id.0].ctx;
        self.workers[w].store.as_mut()?.data_mut().contexts.get_mut(&ctx)
    }

    /// The filter let the request through: the harness plays the upstream.
    fn send_upstream(&mut self, w: usize, id: RequestId) {
        let (headers, body) = match self.ctx(w, id) {
            Some(c) => (c.request_headers.clone(), c.request_body.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let up = UpstreamRequest {
            id,
            worker: w,
            method: find(&headers, ":method").unwrap_or_default().to_string(),
            path: find(&headers, ":path").unwrap_or_default().to_string(),
            headers,
            body,
        };
        let resp = match self.requests[id.0].spec.upstream.clone() {
            Some(r) => r,
            None => (self.upstream)(&up),
        };
        let mut headers: Pairs = vec![(":status".into(), resp.status.to_string())];
        headers.extend(resp.headers.iter().filter(|(k, _)| k != ":status").cloned());
        if find(&headers, "content-length").is_none() {
            headers.push(("content-length".into(), resp.body.len().to_string()));
        }
        if let Some(c) = self.ctx_mut(w, id) {
            c.response_headers = headers;
            c.response_body = resp.body;
        }
        let r = &mut self.requests[id.0];
        r.response_started = true;
        r.origin = Origin::Upstream;
        self.push_step(w, Step::ResponseHeaders(id));
    }

    /// Answers with the filter's local reply; like Envoy, the reply passes through the filter's
    /// own response callbacks.
    fn go_local(&mut self, w: usize, id: RequestId, reply: LocalReply) {
        let mut headers: Pairs = vec![(":status".into(), reply.status.to_string())];
        headers.extend(reply.headers.iter().filter(|(k, _)| k != ":status").cloned());
        if !reply.body.is_empty() && find(&headers, "content-type").is_none() {
            headers.push(("content-type".into(), "text/plain".into()));
        }
        if find(&headers, "content-length").is_none() {
            headers.push(("content-length".into(), reply.body.len().to_string()));
        }
        if let Some(c) = self.ctx_mut(w, id) {
            c.response_headers = headers;
            c.response_body = reply.body.clone();
        }
        let r = &mut self.requests[id.0];
        let mid_response = r.response_started;
        r.local_started = true;
        r.response_started = true;
        r.origin = Origin::Local;
        r.wait = Wait::None;
        r.spec.properties.push(("__details".into(), reply.details.into_bytes()));
        if mid_response {
            self.finish_response(w, id);
        } else {
            self.push_step(w, Step::ResponseHeaders(id));
        }
    }

    fn finish_response(&mut self, w: usize, id: RequestId) {
        if self.requests[id.0].response.is_some() {
            return;
        }
        let (headers, body) = match self.ctx(w, id) {
            Some(c) => (c.response_headers.clone(), c.response_body.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let r = &mut self.requests[id.0];
        r.wait = Wait::None;
        let status = find(&headers, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let details =
            r.spec.properties.iter().rev().find(|(k, _)| k == "__details").map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        r.response = Some(Response {
            id,
            worker: w,
            status,
            headers: headers.into_iter().filter(|(k, _)| k != ":status").collect(),
            body,
            origin: r.origin.clone(),
            was_paused: r.was_paused,
            details,
        });
        self.push_step(w, Step::Done(id));
    }

    fn fail_request(&mut self, id: RequestId, origin: Origin) {
        let r = &mut self.requests[id.0];
        let status = if origin == Origin::VmFailed { 503 } else { 0 };
        r.origin = origin.clone();
        r.wait = Wait::None;
        r.response = Some(Response {
            id,
            worker: r.worker,
            status,
            headers: Vec::new(),
            body: Vec::new(),
            origin,
            was_paused: r.was_paused,
            details: None,
        });
        r.complete = true;
    }

    /// Acts on a request's pending local reply or resumption once no callback of it is queued.
    fn kick(&mut self, w: usize, id: RequestId) {
        let r = &self.requests[id.0];
        if r.busy || r.complete || self.workers[w].failed.is_some() {
            return;
        }
        if !r.local_started && r.local.is_some() && r.response.is_none() {
            if let Some(reply) = self.requests[id.0].local.take() {
                self.go_local(w, id, reply);
            }
            return;
        }
        let r = &mut self.requests[id.0];
        match r.wait {
            Wait::Request(phase) if r.continue_request => {
                r.continue_request = false;
                r.wait = Wait::None;
                r.released = true;
                match phase {
                    Phase::Headers => self.after_request_headers(w, id),
                    Phase::Body => self.send_upstream(w, id),
                }
            }
            Wait::Response(phase) if r.continue_response => {
                r.continue_response = false;
                r.wait = Wait::None;
                match phase {
                    Phase::Headers => self.after_response_headers(w, id),
                    Phase::Body => self.finish_response(w, id),
                }
            }
            Wait::Request(_) | Wait::Response(_) | Wait::Done => {}
            Wait::None => {
                // Envoy ignores a continue for a stream that is not stopped.
                r.continue_request = false;
                r.continue_response = false;
            }
        }
    }

    fn apply_effect(&mut self, w: usize, effect: Effect) {
        match effect {
            Effect::Continue { ctx, stream } => {
                if let Some(id) = self.by_ctx.get(&(w, ctx)).copied() {
                    if stream == abi::stream::HTTP_REQUEST {
                        self.requests[id.0].continue_request = true;
                    } else {
                        self.requests[id.0].continue_response = true;
                    }
                    self.kick(w, id);
                }
            }
            Effect::Close { ctx, .. } => {
                if let Some(id) = self.by_ctx.get(&(w, ctx)).copied() {
                    if self.requests[id.0].response.is_none() {
                        let r = &mut self.requests[id.0];
                        r.origin = Origin::Reset;
                        r.wait = Wait::None;
                        r.response = Some(Response {
                            id,
                            worker: w,
                            status: 0,
                            headers: Vec::new(),
                            body: Vec::new(),
                            origin: Origin::Reset,
                            was_paused: r.was_paused,
                            details: None,
                        });
                        if !r.busy {
                            self.push_step(w, Step::Done(id));
                        }
                    }
                }
            }
            Effect::LocalReply { ctx, reply } => {
                if let Some(id) = self.by_ctx.get(&(w, ctx)).copied() {
                    if self.requests[id.0].response.is_none() {
                        self.requests[id.0].local = Some(reply);
                        self.kick(w, id);
                    }
                }
            }
            Effect::HttpCall { ctx, token, n, call } => self.dispatch_callout(w, ctx, token, n, call),
            Effect::RedisCall { ctx, token, cluster, query } => self.dispatch_redis(w, ctx, token, cluster, query),
            Effect::TickPeriod { ms } => {
                let now = self.clock.monotonic_ns();
                let wk = &mut self.workers[w];
                wk.tick_ms = ms;
                wk.tick_gen += 1;
                let gen = wk.tick_gen;
                if ms > 0 {
                    self.arm(now + ms as u64 * 1_000_000, Timer::Tick { worker: w, gen });
                }
            }
            Effect::Done { ctx } => {
                if let Some(id) = self.by_ctx.get(&(w, ctx)).copied() {
                    if self.requests[id.0].wait == Wait::Done {
                        self.requests[id.0].wait = Wait::None;
                        self.push_step(w, Step::Log(id));
                    }
                }
            }
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
