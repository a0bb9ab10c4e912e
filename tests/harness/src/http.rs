//! What tests send and get back: request specs, responses, the upstream the harness plays,
//! and HTTP callouts with their replies.

use std::time::Duration;

use crate::abi::Pairs;
use crate::vm::{find, CalloutRequest};

/// Identifies a request sent through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub usize);

/// An HTTP response: what the upstream stub returns, what a callout is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Pairs,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16) -> Self {
        HttpResponse { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn ok() -> Self {
        HttpResponse::new(200)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A request to send through the filter.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub properties: Vec<(String, Vec<u8>)>,
    pub source: Option<String>,
    pub worker: Option<usize>,
    pub upstream: Option<HttpResponse>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            authority: "example.com".to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            properties: Vec::new(),
            source: None,
            worker: None,
            upstream: None,
        }
    }

    pub fn get(path: &str) -> Self {
        Request::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Request::new("POST", path)
    }

    /// Adds a header; names are lowercased as Envoy's codecs do.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }

    /// The downstream address as Envoy resolved it (`source.address`), e.g. `10.0.0.1:5555`.
    pub fn source(mut self, address: &str) -> Self {
        self.source = Some(address.to_string());
        self
    }

    /// The matched route's name (`xds.route_name`).
    pub fn route(self, name: &str) -> Self {
        self.property("xds.route_name", name)
    }

    /// Sets a property (dotted path, e.g. `request.id`) to raw bytes.
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> Self {
        self.properties.push((path.to_string(), value.into()));
        self
    }

    /// Sets an integer property, encoded as Envoy encodes integers (8 bytes, little-endian).
    pub fn property_int(self, path: &str, value: i64) -> Self {
        self.property(path, value.to_le_bytes().to_vec())
    }

    /// Runs the request on worker `i` instead of the next one in turn.
    pub fn on_worker(mut self, i: usize) -> Self {
        self.worker = Some(i);
        self
    }

    /// What the upstream answers to this request (default: the host's upstream).
    pub fn upstream(mut self, response: HttpResponse) -> Self {
        self.upstream = Some(response);
        self
    }
}

/// Who produced a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The filter let the request through and the upstream (the harness) answered.
    Upstream,
    /// The filter answered with `proxy_send_local_response`.
    Local,
    /// The VM trapped: Envoy fails the stream closed (503).
    VmFailed,
    /// The filter closed (reset) the stream.
    Reset,
    /// The request was still waiting when the harness stopped driving it.
    Unfinished,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Still being processed (a callback is queued or running).
    Running,
    /// The filter paused it and has not resumed it.
    Paused,
    /// The filter resumed it after a pause; it went (or goes) upstream.
    Released,
    /// The filter answered it with a local response.
    AnsweredLocally,
    /// Upstream answered it.
    Completed,
    /// The VM failed or the stream was reset.
    Failed,
}

/// The response the client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: RequestId,
    pub worker: usize,
    pub status: u16,
    /// Response headers without `:status`, as the filter left them.
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub origin: Origin,
    /// Whether the filter paused the request at some point.
    pub was_paused: bool,
    /// The local reply's details string, if the filter answered.
    pub details: Option<String>,
}

impl Response {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// All values of a header (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The request reached the upstream.
    pub fn admitted(&self) -> bool {
        self.origin == Origin::Upstream
    }

    pub fn is_local(&self) -> bool {
        self.origin == Origin::Local
    }
}

/// The request as it reaches the upstream (after the filter's changes).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub id: RequestId,
    pub worker: usize,
    pub method: String,
    pub path: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// How a callout is answered.
#[derive(Debug, Clone)]
pub enum CalloutReply {
    /// Answer now.
    Respond(HttpResponse),
    /// Answer after this much (harness) time, unless the call's timeout comes first.
    RespondAfter(Duration, HttpResponse),
    /// Reset: `proxy_on_http_call_response` with no headers, body or trailers, and
    /// `proxy_get_status` = (BrokenConnection, "reset"), as Envoy reports a failure.
    Fail,
    /// Never answer: the call's timeout fires and the guest gets what Envoy's async client makes
    /// of it, a `504` with body `upstream request timeout`.
    Timeout,
    /// Leave it to the test: answer later with `Host::answer_callout` (the timeout still runs).
    Hold,
}

/// A dispatched HTTP callout and what became of it.
#[derive(Debug, Clone)]
pub struct Callout {
    /// 1 for the first callout of the host, 2 for the next, …
    pub n: u64,
    pub worker: usize,
    pub token: u32,
    pub context_id: u32,
    pub request_id: Option<RequestId>,
    pub request: CalloutRequest,
    /// `None` while unanswered.
    pub outcome: Option<CalloutOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutOutcome {
    Responded(u16),
    Failed,
    TimedOut,
}

/// A Redis call made through Higress' `proxy_redis_call`.
#[derive(Debug, Clone)]
pub struct RedisCall {
    pub n: u64,
    pub worker: usize,
    pub token: u32,
    pub context_id: u32,
    pub request_id: Option<RequestId>,
    pub cluster: String,
    /// The RESP-encoded command as the guest sent it.
    pub query: Vec<u8>,
    pub outcome: Option<RedisOutcome>,
}

impl RedisCall {
    /// The command's words if the query is a RESP array of bulk strings (read by the filter's
    /// own RESP reader).
    pub fn command(&self) -> Option<Vec<String>> {
        use sluice::redis::wire::{resp_replies, Reply};
        match resp_replies(&self.query, 1).ok()?.pop()? {
            Reply::Array(items) => items.into_iter().map(|w| if let Reply::Str(s) = w { Some(s) } else { None }).collect(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOutcome {
    Replied,
    Failed(i32),
    TimedOut,
}

/// How a Redis call is answered.
#[derive(Debug, Clone)]
pub enum RedisReply {
    /// A RESP reply (status 0, buffer 9 holds these bytes).
    Resp(Vec<u8>),
    /// A failed call: this non-zero status and an empty buffer.
    Fail(i32),
    /// No answer before the timeout given to `proxy_redis_init`.
    Timeout,
    /// Answer later with `Host::answer_redis`.
    Hold,
}
