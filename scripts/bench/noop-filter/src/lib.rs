//! The empty filter, and a probe of host-call costs: by default an HTTP context per request
//! whose callbacks all continue at once (what Envoy's Wasm machinery costs before any work);
//! with a configuration such as `{"shared_get": 10}` it also makes that many calls of one kind
//! per request, so the benchmark can price each kind of host call in real Envoy.
//!
//! Kinds: `time` (get_current_time), `property` (source.address), `header` (get :path),
//! `pairs` (every request header in one call), `shared_get` / `shared_set` (a 64-byte value),
//! `add_header` (one response header each, sized as sluice's fields),
//! `alloc` (a 48-byte heap allocation in the guest, for comparison).
//!
//! Two kinds price what a Redis rule adds to a request in Envoy, apart from sluice: `pause`
//! holds each request (headers answered `Pause`) until the root context's next tick (1 ms)
//! carries it on, as sluice carries on the requests a callout answered (effective context,
//! then continue); `callout` makes one HTTP callout per request to the cluster `probe_upstream`
//! and carries the request on when it answers (N is ignored: one callout).

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

const KEY: &str = "bench:probe";
const VALUE: [u8; 64] = [7u8; 64];

#[derive(Default, Clone, Copy)]
struct Calls {
    time: u32,
    property: u32,
    header: u32,
    pairs: u32,
    shared_get: u32,
    shared_set: u32,
    add_header: u32,
    alloc: u32,
    pause: u32,
    callout: u32,
}

/// Reads `name: number` pairs from any text (the JSON object the benchmark passes, or
/// `name=number,...`); unknown names are ignored.
fn parse(text: &str) -> Calls {
    let mut calls = Calls::default();
    let mut name = String::new();
    let mut last = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            continue;
        }
        if name.is_empty() {
            continue;
        }
        if let Ok(n) = name.parse::<u32>() {
            match last.as_str() {
                "time" => calls.time = n,
                "property" => calls.property = n,
                "header" => calls.header = n,
                "pairs" => calls.pairs = n,
                "shared_get" => calls.shared_get = n,
                "shared_set" => calls.shared_set = n,
                "add_header" => calls.add_header = n,
                "alloc" => calls.alloc = n,
                "pause" => calls.pause = n,
                "callout" => calls.callout = n,
                _ => {}
            }
        }
        last = std::mem::take(&mut name);
    }
    calls
}

#[derive(Default)]
struct Root {
    calls: Rc<Calls>,
    /// Requests held by `pause`, carried on at the next tick.
    paused: Rc<RefCell<Vec<u32>>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let text = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.calls = Rc::new(parse(&text));
        if self.calls.shared_get > 0 || self.calls.shared_set > 0 {
            let _ = hostcalls::set_shared_data(KEY, Some(&VALUE), None);
        }
        if self.calls.pause > 0 {
            let _ = hostcalls::set_tick_period(Duration::from_millis(1));
        }
        true
    }

    fn on_tick(&mut self) {
        for id in self.paused.borrow_mut().drain(..) {
            if hostcalls::set_effective_context(id).is_ok() {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass { calls: self.calls.clone(), id: context_id, paused: self.paused.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Same callbacks as a filter that inspects request headers, plus the configured calls.
struct Pass {
    calls: Rc<Calls>,
    id: u32,
    paused: Rc<RefCell<Vec<u32>>>,
}

impl Context for Pass {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let _ = hostcalls::resume_http_request();
    }
}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let c = *self.calls;
        for _ in 0..c.time {
            black_box(hostcalls::get_current_time().ok());
        }
        for _ in 0..c.property {
            black_box(hostcalls::get_property(vec!["source", "address"]).ok());
        }
        for _ in 0..c.header {
            black_box(hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path").ok());
        }
        for _ in 0..c.pairs {
            black_box(hostcalls::get_map(MapType::HttpRequestHeaders).ok());
        }
        for _ in 0..c.shared_get {
            black_box(hostcalls::get_shared_data(KEY).ok());
        }
        for _ in 0..c.shared_set {
            black_box(hostcalls::set_shared_data(KEY, Some(&VALUE), None).ok());
        }
        for i in 0..c.alloc {
            black_box(vec![i as u8; 48]);
        }
        if c.callout > 0 {
            let headers = vec![(":method", "GET"), (":path", "/probe"), (":authority", "probe_upstream")];
            // Through the SDK's context method, which routes the answer back to this context.
            if self.dispatch_http_call("probe_upstream", headers, None, vec![], Duration::from_secs(5)).is_ok() {
                return Action::Pause;
            }
        }
        if c.pause > 0 {
            self.paused.borrow_mut().push(self.id);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Fields the size of sluice's RateLimit and RateLimit-Policy for one rule, so the
        // response Envoy encodes is as long as sluice's.
        const FIELDS: [(&str, &str); 2] =
            [("ratelimit", "\"api\";r=999999999;t=1"), ("ratelimit-policy", "\"api\";q=1000000000;w=1")];
        for i in 0..self.calls.add_header as usize {
            let (name, value) = FIELDS[i % 2];
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        Action::Continue
    }
}
