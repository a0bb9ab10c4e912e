//! Steps, the guest callbacks queued on a worker: what the guest sees before one runs, and what
//! its return value and the effects it asked for do once it has returned.

use std::collections::HashMap;

use wasmtime::Store;

use super::guest::GuestCall;
use super::stream::Wait;
use super::time::Timer;
use super::Host;
use crate::abi::{self, Pairs, Status};
use crate::http::{HttpResponse, Origin, RequestId, Response};
use crate::vm::{self, find, lock, Effect, VmState};

#[derive(Debug, Clone)]
pub(super) enum Delivery {
    Response(HttpResponse),
    Failure,
}

#[derive(Debug, Clone)]
pub(super) enum Step {
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
    pub(super) fn request(&self) -> Option<RequestId> {
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

impl Host {
    pub(super) fn prepare(&mut self, w: usize, store: &mut Store<VmState>, step: &Step, root: u32) -> Option<GuestCall> {
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

    pub(super) fn push_step(&mut self, w: usize, step: Step) {
        if let Some(id) = step.request() {
            self.requests[id.0].busy = true;
        }
        self.workers[w].queue.push_back(step);
    }

    pub(super) fn finish_step(&mut self, w: usize, step: Step, ret: i32) {
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
    pub(super) fn after_step(&mut self, w: usize, step: Option<Step>, ret: i32) {
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
            {
                let mut p = lock(&self.process);
                if p.faults.lost_queue_ready > 0 {
                    p.faults.lost_queue_ready -= 1;
                    continue;
                }
            }
            let owner = lock(&self.process).queues.queues.get(&q).map(|e| e.0);
            if let Some(owner) = owner {
                if self.workers[owner].failed.is_none() {
                    self.workers[owner].queue.push_back(Step::QueueReady(q));
                }
            }
        }
    }

    pub(super) fn apply_effect(&mut self, w: usize, effect: Effect) {
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
}
