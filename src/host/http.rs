//! One request's context: it starts the decision, waits for Redis when a rule needs it, carries
//! out the verdict, and adds the rate limit fields to the response. A call the request sends
//! alone waits on the context itself; a gathered call ([`super::batch`]) and a Higress Redis
//! callout answer at the root.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::abi::{self, Action, Headers};

use crate::engine::{Heard, Pending, Resumed, Step, Verdict};
use crate::headers;
use crate::redis::wire::Reply;
use crate::response::LocalResponse;

use super::batch;
use super::queue;
use super::request::HostRequest;
use super::shared::EnvoyShared;
use super::state::{self, Fields, Shared};
use super::time::now_us;
use super::transport::{self, Sent};
use super::websocket::{self, WsRef};

/// What the stream does after a verdict.
pub(super) enum Flow {
    Continue,
    /// Answered locally, waiting for Redis, or queued for release by the tick.
    Hold,
}

/// Where a request stands after Redis answered.
pub(super) enum Settled {
    /// A verdict, carried out: what the stream does, and the fields for the response.
    Done(Flow, Fields),
    /// Another call went out.
    Waiting(Sent),
}

/// Carries out a verdict for request `ctx`: counts it, answers a denial, queues a delayed
/// admission; returns the rate limit fields an admission adds to the response.
pub(super) fn apply(shared: &Shared, ctx: u32, verdict: Verdict) -> (Flow, Fields) {
    shared.metrics.count(&verdict);
    match verdict {
        Verdict::Admit { headers, delay_ms, .. } => {
            if delay_ms == 0 {
                return (Flow::Continue, headers);
            }
            queue::hold(ctx, now_us().saturating_add(delay_ms.saturating_mul(1000)));
            (Flow::Hold, headers)
        }
        Verdict::Deny { response, .. } => {
            let status = send_limited(&response);
            if status != 0 {
                log::warn!("sluice: cannot send the limited response: status {status}");
                return (Flow::Continue, Vec::new());
            }
            (Flow::Hold, Vec::new())
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// Answers the request with `status`, `headers` (encoded, [`headers::encode`]) and `body`, or
/// a gRPC request with `grpc_status` (Envoy turns the reply into a gRPC error for those and
/// ignores it otherwise); the host's status (0: sent). Not the SDK's `send_http_response`: that
/// one takes the headers as a vector to encode them again, and panics (a trap) on any status
/// but Ok.
fn send_local_response(status: u32, headers: &[u8], body: &[u8], grpc_status: u8) -> u32 {
    // SAFETY: every pointer is valid for its length for the duration of the call, which only
    // reads them; a null details pointer with size 0 means no details, as the ABI allows.
    unsafe {
        let (body_ptr, headers_ptr) = (body.as_ptr(), headers.as_ptr());
        let grpc = i32::from(grpc_status);
        proxy_send_local_response(status, std::ptr::null(), 0, body_ptr, body.len(), headers_ptr, headers.len(), grpc)
    }
}

thread_local! {
    /// The last limited response sent and its encoded headers: a flood sends the same one
    /// (the core hands out the same response while it shows the same).
    static SENT: RefCell<Option<(Arc<LocalResponse>, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Sends a limited response, encoding its headers only when it is not the last one sent.
fn send_limited(response: &Arc<LocalResponse>) -> u32 {
    let encode = || headers::encode(response.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    let send = |headers: &[u8]| send_local_response(u32::from(response.status), headers, &response.body, response.grpc_status);
    SENT.with(|sent| match sent.try_borrow_mut() {
        Ok(mut sent) => {
            let headers = match sent.take() {
                Some((last, headers)) if Arc::ptr_eq(&last, response) => headers,
                _ => encode(),
            };
            let status = send(&headers);
            *sent = Some((Arc::clone(response), headers));
            status
        }
        Err(_) => send(&encode()),
    })
}

/// Where a callback runs: on the request's own context, or at the root (a gathered call's or
/// a Redis callout's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Request,
    Root,
}

/// Sends request `ctx`'s Redis commands: gathered with other requests' when this worker is
/// busy (or at the root), else alone. On failure the caller decides without Redis.
fn send(shared: &Rc<Shared>, ctx: u32, pending: Pending, deadline_us: u64, at: At) -> Result<Sent, (Pending, String)> {
    if batch::takes(shared, at) {
        batch::add(shared, ctx, pending, deadline_us, at);
        return Ok(Sent::Root);
    }
    transport::send(shared, ctx, pending, deadline_us)
}

/// Continues request `ctx` after Redis answered (or failed): a retry goes out the same way
/// until there is a verdict, which is carried out.
pub(super) fn settle(shared: &Rc<Shared>, ctx: u32, mut step: Resumed, deadline_us: u64, at: At) -> Settled {
    loop {
        match step {
            Resumed::Done(verdict) => {
                let (flow, fields) = apply(shared, ctx, verdict);
                return Settled::Done(flow, fields);
            }
            Resumed::Retry(p) => match send(shared, ctx, p, deadline_us, at) {
                Ok(sent) => return Settled::Waiting(sent),
                Err((p, why)) => step = shared.limiter.resume(p, Err(why), &EnvoyShared, now_us()),
            },
        }
    }
}

/// What a request's Redis call came back with, at the root.
pub(super) enum Answer {
    /// Its own replies, or the call's failure (counted by the breaker).
    Replies(Result<Vec<Reply>, String>),
    /// The failure of a gathered call, already counted through another request of that call.
    FailedTogether,
}

/// Carries request `ctx` on at the root at `now` after its Redis call came back (a gathered
/// call, whose requests share `heard`, or a Higress Redis callout), as its own context would:
/// a retry is gathered again, the verdict is carried out, and its fields wait for the
/// response. A context that is gone lets go of the decision (a probe gives its place back).
pub(super) fn answered_at_root(
    shared: &Rc<Shared>,
    ctx: u32,
    (pending, deadline_us): (Pending, u64),
    answer: Answer,
    now: u64,
    heard: &mut Heard,
) {
    if abi::set_effective_context(ctx).is_err() {
        shared.limiter.abandon(&pending, &EnvoyShared);
        return;
    }
    let settled = match answer {
        Answer::Replies(replies) => {
            let step = shared.limiter.resume_gathered(pending, replies, &EnvoyShared, now, heard);
            settle(shared, ctx, step, deadline_us, At::Root)
        }
        Answer::FailedTogether => {
            let (flow, fields) = apply(shared, ctx, shared.limiter.resume_failed_together(pending, &EnvoyShared, now));
            Settled::Done(flow, fields)
        }
    };
    if let Settled::Done(flow, fields) = settled {
        state::keep_fields(ctx, fields);
        continue_if(flow);
    }
}

/// Resumes a paused request after a callback that is not a filter callback.
pub(super) fn continue_if(flow: Flow) {
    if let Flow::Continue = flow {
        let _ = abi::resume_http_request();
    }
}

pub(super) struct Http {
    shared: Option<Rc<Shared>>,
    id: u32,
    /// The decision waiting for the answer of the callout it sent alone, and its deadline
    /// (epoch µs).
    waiting: Option<(Pending, u64)>,
    /// A decision of this request went to the root (gathered, or a Redis callout): what is
    /// left of it, and its verdict's fields, are looked for there.
    at_root: bool,
    /// Rate limit fields to add to the response.
    fields: Fields,
    /// A WebSocket upgrade that message rules apply to.
    ws: Option<WsRef>,
}

impl Http {
    pub fn new(shared: Option<Rc<Shared>>, id: u32) -> Self {
        Http { shared, id, waiting: None, at_root: false, fields: Vec::new(), ws: None }
    }

    fn after(&mut self, settled: Settled) -> Flow {
        match settled {
            Settled::Done(flow, fields) => {
                self.fields = fields;
                flow
            }
            Settled::Waiting(Sent::Here(p, deadline, _)) => {
                batch::alone_sent();
                self.waiting = Some((p, deadline));
                Flow::Hold
            }
            Settled::Waiting(Sent::Root) => {
                self.at_root = true;
                Flow::Hold
            }
        }
    }
}

impl Http {
    /// A callout this request sent alone (or a WebSocket message's) is answered.
    pub(super) fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(ws) = self.ws.as_ref().filter(|ws| websocket::is_waiting(ws)) {
            websocket::on_call_response(self.id, ws, token_id, num_headers, body_size);
            return;
        }
        let (Some(shared), Some((pending, deadline))) = (self.shared.clone(), self.waiting.take()) else { return };
        batch::alone_ended();
        let replies = transport::replies(num_headers, body_size, pending.commands.len());
        let step = shared.limiter.resume(pending, replies, &EnvoyShared, now_us());
        let flow = self.after(settle(&shared, self.id, step, deadline, At::Request));
        continue_if(flow);
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // Most requests leave nothing anywhere: decided at once, no WebSocket.
        if self.waiting.is_none() && !self.at_root && self.ws.is_none() {
            return;
        }
        // A request that ended early (client gone) leaves nothing behind, and a probe it was
        // making frees its place in the breaker.
        if self.waiting.is_some() {
            batch::alone_ended();
        }
        let mut gone: Vec<(Rc<Shared>, Pending)> = Vec::new();
        if self.at_root {
            let _ = state::take_fields(self.id);
            gone = batch::forget(self.id);
            #[cfg(feature = "redis-callout")]
            if let (Some(shared), Some(p)) = (&self.shared, super::callout::forget(self.id)) {
                gone.push((shared.clone(), p));
            }
        }
        if let Some(ws) = &self.ws {
            websocket::abandon(ws);
        }
        if let (Some(shared), Some((p, _))) = (&self.shared, self.waiting.take()) {
            gone.push((shared.clone(), p));
        }
        for (shared, pending) in gone {
            shared.limiter.abandon(&pending, &EnvoyShared);
        }
    }
}

impl Http {
    pub(super) fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(now_us);
        let req = HostRequest::new(&shared.limiter);
        self.ws = websocket::at_upgrade(&shared, self.id, &req);
        let flow = match shared.limiter.start_at(&req, &EnvoyShared, now) {
            Step::Done(verdict) => {
                let (flow, fields) = apply(&shared, self.id, verdict);
                self.fields = fields;
                flow
            }
            Step::Redis(pending) => {
                let timeout_us = shared.limiter.redis().map_or(0, |r| r.timeout_ms.saturating_mul(1000));
                let deadline = now().saturating_add(timeout_us);
                let settled = match send(&shared, self.id, pending, deadline, At::Request) {
                    Ok(sent) => Settled::Waiting(sent),
                    Err((pending, why)) => {
                        let step = shared.limiter.resume(pending, Err(why), &EnvoyShared, now_us());
                        settle(&shared, self.id, step, deadline, At::Request)
                    }
                };
                self.after(settled)
            }
        };
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Hold => Action::Pause,
        }
    }

    pub(super) fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.at_root {
            self.fields.extend(state::take_fields(self.id).unwrap_or_default());
        }
        for (name, value) in &self.fields {
            let _ = abi::add_map_value(Headers::Response, name, value);
        }
        self.fields.clear();
        if let Some(ws) = &self.ws {
            websocket::at_response(ws);
        }
        Action::Continue
    }

    pub(super) fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        let Some(ws) = &self.ws else { return Action::Continue };
        match websocket::on_request_body(self.id, ws, end_of_stream) {
            websocket::Flow::Continue => Action::Continue,
            websocket::Flow::Hold => Action::Pause,
        }
    }

    pub(super) fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if let Some(ws) = &self.ws {
            websocket::on_response_body(ws, end_of_stream);
        }
        Action::Continue
    }
}
