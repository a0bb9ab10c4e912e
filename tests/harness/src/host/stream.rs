//! One HTTP stream's way through the filter as Envoy moves it on: pauses and resumptions, local
//! replies, the upstream's answer, and the response a test reads.

use super::steps::Step;
use super::Host;
use crate::abi::{self, Pairs};
use crate::http::{Origin, RequestId, Response, UpstreamRequest};
use crate::vm::{self, find, LocalReply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    None,
    /// Paused in the request path, after this step.
    Request(Phase),
    /// Paused in the response path, after this step.
    Response(Phase),
    /// `proxy_on_done` returned false; waiting for `proxy_done`.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Headers,
    Body,
}

impl Host {
    pub(super) fn advance_request(&mut self, w: usize, id: RequestId, step: &Step, action: i32) {
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
                // An HTTP callout belongs to the root in Envoy (the host's `http_call` files it
                // under the root of the context that sent it), so a request's goes on after the
                // request is gone and is answered. A Redis callout is dropped with its request.
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

    pub(super) fn fail_request(&mut self, id: RequestId, origin: Origin) {
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
    pub(super) fn kick(&mut self, w: usize, id: RequestId) {
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
}
