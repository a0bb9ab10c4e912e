//! The request as the core sees it ([`RequestInfo`]): headers and properties read from the host
//! on demand, each at most once, and all headers in one host call when the config reads several.
//! Either way a repeated header answers its first value (docs/architecture.md, "Host facts:
//! headers"), but for the `cookie` lines, which are read all together.

use std::cell::{Cell, RefCell};

use smallvec::SmallVec;

use super::abi::{self, Headers};
use crate::engine::Limiter;
use crate::headers;
use crate::identity::RequestInfo;

/// A header read one by one: its name as the config spells it (short, so kept inline rather
/// than allocated) and its value (`None`: absent).
type Read = (SmallVec<[u8; 24]>, Option<Vec<u8>>);

/// The request as the core sees it: every value read from the host on demand, and each header
/// at most once (several rules often ask for the same identity header).
pub(super) struct HostRequest {
    /// Headers read one by one so far: a config reads few, so they are kept inline.
    headers: RefCell<SmallVec<[Read; 2]>>,
    /// Read every header at the next ask (the config reads several per request, or every cookie
    /// line); cleared once tried, so a failed read of them all is not repeated.
    all_at_once: Cell<bool>,
    /// Every request header, when read at once: a name not in it is absent.
    all: RefCell<Option<headers::Pairs>>,
    /// Whether the core may ask for the path twice (a WebSocket upgrade's message rules are
    /// found on a walk of their own): only then is a copy kept.
    path_twice: bool,
}

impl HostRequest {
    pub fn new(limiter: &Limiter) -> Self {
        HostRequest {
            headers: RefCell::default(),
            all_at_once: Cell::new(limiter.reads_many_headers()),
            all: RefCell::new(None),
            path_twice: limiter.has_message_rules(),
        }
    }

    /// Reads every header at the first ask, when [`Self::all_at_once`] says so.
    fn read_all_if_planned(&self) {
        if self.all_at_once.replace(false) {
            *self.all.borrow_mut() = request_header_pairs();
        }
    }

    fn cached(&self, name: &str) -> Option<Option<Vec<u8>>> {
        self.headers.borrow().iter().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| v.clone())
    }
}

impl RequestInfo for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.read_all_if_planned();
        if let Some(all) = self.all.borrow().as_ref() {
            // The first value of a repeated name, as a single read answers. Envoy keeps Host as
            // `:authority`, where a single read of `host` finds it; all the pairs list only that.
            let authority = || if name == "host" { all.first(":authority") } else { None };
            return all.first(name).or_else(authority).map(<[u8]>::to_vec);
        }
        if let Some(v) = self.cached(name) {
            return v;
        }
        let v = abi::get_map_value_bytes(Headers::Request, name).ok().flatten();
        self.headers.borrow_mut().push((SmallVec::from_slice(name.as_bytes()), v.clone()));
        v
    }
    /// From every header when they are read at once, or kept when the core may ask twice;
    /// else straight from the host: the core asks once per walk over the rules
    /// ([`RequestInfo::path`]), so a copy would be an allocation for nothing.
    fn path(&self) -> Option<Vec<u8>> {
        if self.path_twice || self.all_at_once.get() || self.all.borrow().is_some() {
            return self.header(":path");
        }
        abi::get_map_value_bytes(Headers::Request, ":path").ok().flatten()
    }
    /// From every header: a config with a cookie identity reads them all at once (a single
    /// read answers only the first line); the first line alone if that read failed.
    fn cookies(&self) -> Option<Vec<u8>> {
        self.read_all_if_planned();
        match self.all.borrow().as_ref() {
            Some(all) => all.joined("cookie", b"; "),
            None => self.header("cookie"),
        }
    }
    fn source_address(&self) -> Option<String> {
        property(b"source\0address")
    }
    fn route_name(&self) -> Option<String> {
        property(b"xds\0route_name")
    }
}

/// Every request header in one host call, as bytes: a client may send a value that is not
/// UTF-8.
fn request_header_pairs() -> Option<headers::Pairs> {
    headers::Pairs::parse(abi::get_header_map_pairs(Headers::Request).ok()?.unwrap_or_default())
}

/// A property as text, by its path as the ABI spells it (segments joined by NUL, a constant:
/// docs/architecture.md, "Host facts: properties").
fn property(path: &[u8]) -> Option<String> {
    String::from_utf8(abi::get_property(path).ok()??).ok()
}
