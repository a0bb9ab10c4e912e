//! The empty filter, and a probe of host-call costs: by default an HTTP context per request
//! whose callbacks all continue at once (what Envoy's Wasm machinery costs before any work);
//! with a configuration such as `{"shared_get": 10}` it also makes that many calls of one kind
//! per request, so the benchmark can price each kind of host call in real Envoy.
//!
//! Kinds: `time` (get_current_time), `property` (source.address), `header` (get :path),
//! `shared_get` / `shared_set` (a 64-byte value), `add_header` (one response header each),
//! `alloc` (a 48-byte heap allocation in the guest, for comparison).

use std::hint::black_box;
use std::rc::Rc;

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
    shared_get: u32,
    shared_set: u32,
    add_header: u32,
    alloc: u32,
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
                "shared_get" => calls.shared_get = n,
                "shared_set" => calls.shared_set = n,
                "add_header" => calls.add_header = n,
                "alloc" => calls.alloc = n,
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
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass { calls: self.calls.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Same callbacks as a filter that inspects request headers, plus the configured calls.
struct Pass {
    calls: Rc<Calls>,
}

impl Context for Pass {}

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
        for _ in 0..c.shared_get {
            black_box(hostcalls::get_shared_data(KEY).ok());
        }
        for _ in 0..c.shared_set {
            black_box(hostcalls::set_shared_data(KEY, Some(&VALUE), None).ok());
        }
        for i in 0..c.alloc {
            black_box(vec![i as u8; 48]);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for i in 0..self.calls.add_header {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "x-bench", &i.to_string());
        }
        Action::Continue
    }
}
