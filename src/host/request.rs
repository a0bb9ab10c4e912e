//! The request as the core sees it ([`RequestInfo`]): headers and properties read from the host
//! on demand, each at most once, and all headers in one host call when the config reads several.
//! Either way a repeated header answers its first value (docs/architecture.md, "Host facts:
//! headers").

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use crate::engine::Limiter;
use crate::headers;
use crate::identity::RequestInfo;

/// The request as the core sees it: every value read from the host on demand, and each header
/// at most once (several rules often ask for the same identity header).
pub(super) struct HostRequest {
    /// Values read one by one so far (`None`: absent).
    headers: RefCell<Vec<(String, Option<Vec<u8>>)>>,
    /// Read every header at the next ask (the config reads several per request); cleared once
    /// tried, so a failed read of them all is not repeated.
    all_at_once: Cell<bool>,
    /// Every request header, when read at once: a name not in it is absent.
    all: RefCell<Option<headers::Pairs>>,
}

impl HostRequest {
    pub fn new(limiter: &Limiter) -> Self {
        HostRequest { headers: RefCell::default(), all_at_once: Cell::new(limiter.reads_many_headers()), all: RefCell::new(None) }
    }

    fn cached(&self, name: &str) -> Option<Option<Vec<u8>>> {
        self.headers.borrow().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

impl RequestInfo for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        if self.all_at_once.replace(false) {
            *self.all.borrow_mut() = request_header_pairs();
        }
        if let Some(all) = self.all.borrow().as_ref() {
            // The first value of a repeated name, as a single read answers.
            return all.first(name).map(<[u8]>::to_vec);
        }
        if let Some(v) = self.cached(name) {
            return v;
        }
        let v = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten();
        self.headers.borrow_mut().push((name.to_string(), v.clone()));
        v
    }
    fn source_address(&self) -> Option<String> {
        property(&["source", "address"])
    }
    fn route_name(&self) -> Option<String> {
        property(&["xds", "route_name"])
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
}

/// Every request header in one host call. Not the SDK's `get_map`: that one panics on a value
/// that is not UTF-8, which a client can send (and copies every header).
fn request_header_pairs() -> Option<headers::Pairs> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's proxy_on_memory_allocate
    // (Rust's global allocator, align 1), which we then own.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut len) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return headers::Pairs::parse(Vec::new());
    }
    // SAFETY: see above: `data` holds `len` initialized bytes with capacity `len`.
    let bytes = unsafe { Vec::from_raw_parts(data, len, len) };
    headers::Pairs::parse(bytes)
}

fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}
