//! The empty filter: an HTTP context per request whose callbacks all continue at once, so the
//! benchmark can separate what Envoy's Wasm machinery costs from what sluice's own work costs.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Same callbacks as a filter that inspects request headers, minus the work.
struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {}
