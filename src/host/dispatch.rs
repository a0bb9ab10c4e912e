//! The proxy-wasm callbacks: every export the host calls, turned into a call on the plugin's
//! root context ([`Root`]) or on a request's ([`Http`]), found in this worker's table of live
//! contexts. Sluice's own rather than the SDK's: the SDK's dispatcher costs the guest 130–640
//! fuel per callback (a hash map per kind of context behind a thread-local), most of what an
//! empty filter costs; a request's context here is found by its id in a direct-mapped table.
//!
//! Only the callbacks sluice acts on are exported: the host enters the VM for an export and
//! skips a missing one with the ABI's default answer, so `proxy_on_log`, `proxy_on_done` and the
//! trailers' callbacks would be a VM entry each per request for nothing (docs/architecture.md,
//! "Host facts: callbacks").
//!
//! A callout is answered to the context whose callback sent it (a request's, or the root's),
//! made the effective context first; the answer to a request that is gone is dropped
//! (docs/architecture.md, "Host facts: callouts").

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::abi::{self, Action, LogLevel};
use super::http::Http;
use super::Root;

/// Places in the table of requests' contexts. A context's place is its id modulo this; one
/// whose place is taken (more than this many requests in flight on the worker) waits in a map.
const PLACES: usize = 1024;

/// A place in the table: the context's id and the context.
type Place = Option<(u32, Box<Http>)>;

thread_local! {
    static ROOTS: RefCell<Vec<(u32, Root)>> = const { RefCell::new(Vec::new()) };
    static PLACED: RefCell<Vec<Place>> = const { RefCell::new(Vec::new()) };
    static OVERFLOW: RefCell<HashMap<u32, Box<Http>>> = RefCell::new(HashMap::new());
    /// The context whose callback runs now: a callout sent meanwhile is answered to it.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
    /// A request context the host deleted while its own callback ran (out of the table then):
    /// dropped when the callback returns instead of put back.
    static DOOMED: Cell<u32> = const { Cell::new(0) };
    /// Callouts in flight: token → the context that sent it.
    static CALLOUTS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
}

/// Makes the context whose callback runs the host's effective one again, before a callout:
/// Envoy keeps a call's answer with the root of the context effective when it was sent, and
/// reads it through the root of the context effective when it is read, which is the one filed
/// here. A callback that carried other requests on has left one of theirs effective, whose
/// root may be another config's.
pub(super) fn effective_as_active() {
    let active = ACTIVE.with(Cell::get);
    if abi::effective() != active {
        let _ = abi::set_effective_context(active);
    }
}

/// The context whose callback runs now.
pub(super) fn active() -> u32 {
    ACTIVE.with(Cell::get)
}

/// Forgets callout `token`, whose answer will never come (the host dropped it).
pub(super) fn forget_callout(token: u32) {
    CALLOUTS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.remove(&token);
        }
    });
}

/// Files callout `token`, just sent, under the context whose callback sent it.
pub(super) fn called_out(token: u32) {
    let active = ACTIVE.with(Cell::get);
    CALLOUTS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.insert(token, active);
        }
    });
}

fn place(id: u32) -> usize {
    id as usize % PLACES
}

/// Request context `id`, taken out of the table while its callback runs (a callback of another
/// request that the host makes meanwhile finds its own).
fn take(id: u32) -> Option<Box<Http>> {
    let placed = PLACED.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let slot = p.get_mut(place(id))?;
        match slot {
            Some((at, _)) if *at == id => slot.take().map(|(_, h)| h),
            _ => None,
        }
    });
    placed.or_else(|| OVERFLOW.with(|o| o.try_borrow_mut().ok()?.remove(&id)))
}

/// Puts request context `id` (back) in the table.
fn put(id: u32, http: Box<Http>) {
    let left = PLACED.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else { return Some(http) };
        if p.is_empty() {
            p.resize_with(PLACES, || None);
        }
        match p.get_mut(place(id)) {
            Some(slot @ None) => {
                *slot = Some((id, http));
                None
            }
            _ => Some(http),
        }
    });
    if let Some(http) = left {
        OVERFLOW.with(|o| {
            if let Ok(mut o) = o.try_borrow_mut() {
                o.insert(id, http);
            }
        });
    }
}

/// Runs `f` as context `id`: a callout sent meanwhile is answered to it. Also for a callback
/// this module does not dispatch (Higress' Redis callout's answer, at the root).
pub(super) fn as_active<T>(id: u32, f: impl FnOnce() -> T) -> T {
    // Every caller runs with `id` effective: the host entered for it, or it was just made so.
    abi::entered(id);
    let outer = ACTIVE.with(|a| a.replace(id));
    let out = f();
    ACTIVE.with(|a| a.set(outer));
    out
}

/// Runs `f` on request context `id`, as the active context; `None` if there is none.
fn on_http<T>(id: u32, f: impl FnOnce(&mut Http) -> T) -> Option<T> {
    let mut http = take(id)?;
    let out = as_active(id, || f(&mut http));
    if DOOMED.with(|d| d.get()) == id {
        DOOMED.with(|d| d.set(0));
        drop(http);
    } else {
        put(id, http);
    }
    Some(out)
}

/// A stream callback of request context `id`: `f`'s action, or going on if there is none.
fn stream(id: u32, f: impl FnOnce(&mut Http) -> Action) -> u32 {
    on_http(id, f).unwrap_or(Action::Continue) as u32
}

/// Runs `f` on root context `id`, as the active context.
fn on_root<T>(id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    ROOTS.with(|r| {
        let mut roots = r.try_borrow_mut().ok()?;
        let root = roots.iter_mut().find(|(at, _)| *at == id).map(|(_, root)| root)?;
        Some(as_active(id, || f(root)))
    })
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The module's start (a WASI reactor): constructors, then the logger.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the WASI reactor's constructors, run once, first, as the ABI expects of
    // `_initialize`.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
    super::logger::init(LogLevel::Info);
    // A panic aborts the VM (no code of sluice panics: lints forbid it); the host's log says why.
    std::panic::set_hook(Box::new(|panic| abi::log(LogLevel::Critical, &panic.to_string())));
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// A buffer the host fills and hands to the guest (header values, bodies, properties): the
/// guest owns it after, as a `Vec` of exactly `size` bytes ([`abi::host_bytes`]).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, root_id: u32) {
    if root_id == 0 {
        ROOTS.with(|r| {
            if let Ok(mut roots) = r.try_borrow_mut() {
                roots.push((id, Root::default()));
            }
        });
        return;
    }
    let http = ROOTS.with(|r| {
        let roots = r.try_borrow().ok()?;
        roots.iter().find(|(at, _)| *at == root_id).map(|(_, root)| root.create_http_context(id))
    });
    match http {
        Some(http) => put(id, Box::new(http)),
        // Not during a root's own callback, nor without its root, as Envoy calls.
        None => log::warn!("sluice: no root context {root_id} for request context {id}: its requests go unlimited"),
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, size: usize) -> u32 {
    u32::from(on_root(root_id, |root| root.on_configure(size)).unwrap_or(false))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    on_root(root_id, Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_queue_ready(root_id: u32, queue: u32) {
    on_root(root_id, |root| root.on_queue_ready(queue));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    stream(id, |h| h.on_http_request_headers(num_headers, end_of_stream != 0))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(id: u32, size: usize, end_of_stream: u32) -> u32 {
    stream(id, |h| h.on_http_request_body(size, end_of_stream != 0))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, num_headers: usize, end_of_stream: u32) -> u32 {
    stream(id, |h| h.on_http_response_headers(num_headers, end_of_stream != 0))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(id: u32, size: usize, end_of_stream: u32) -> u32 {
    stream(id, |h| h.on_http_response_body(size, end_of_stream != 0))
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _root_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    num_trailers: usize,
) {
    let Some(sender) = CALLOUTS.with(|c| c.try_borrow_mut().ok()?.remove(&token)) else { return };
    if abi::set_effective_context(sender).is_err() {
        return;
    }
    let answered = on_http(sender, |h| h.on_http_call_response(token, num_headers, body_size, num_trailers));
    if answered.is_none() {
        on_root(sender, |root| root.on_http_call_response(token, num_headers, body_size, num_trailers));
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    // Dropping the context is its clean-up (`Http`'s `Drop`); one whose callback runs now is
    // dropped when that returns.
    match take(id) {
        Some(http) => drop(http),
        None if ACTIVE.with(Cell::get) == id => DOOMED.with(|d| d.set(id)),
        None => {}
    }
    let root_gone = ROOTS.with(|r| {
        let mut roots = r.try_borrow_mut().ok()?;
        let i = roots.iter().position(|(at, _)| *at == id)?;
        roots.remove(i);
        Some(())
    });
    if root_gone.is_some() {
        // A callout belongs to a root (the host files it there whichever context sent it): a
        // request's still comes when its client has gone, and takes its entry out; a deleted
        // root's are cancelled, and their answers never come. Which root a gone request's call
        // was filed under is not known here, so those go too: their answers find no one either.
        let cancelled: Vec<u32> = CALLOUTS.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => c.extract_if(|_, sender| *sender == id || !lives(*sender)).map(|(token, _)| token).collect(),
            Err(_) => Vec::new(),
        });
        super::batch::root_gone(id, &cancelled);
    }
}

/// Whether context `id` is there: a root, a request in the table, or the one whose callback runs
/// (taken out of the table meanwhile). A table in use counts as holding it: an entry kept too
/// long costs bytes, one dropped too soon a request its answer.
fn lives(id: u32) -> bool {
    let placed = || {
        PLACED.with(|p| {
            p.try_borrow().map_or(true, |p| p.get(place(id)).is_some_and(|s| s.as_ref().is_some_and(|(at, _)| *at == id)))
        })
    };
    let overflow = || OVERFLOW.with(|o| o.try_borrow().map_or(true, |o| o.contains_key(&id)));
    let root = || ROOTS.with(|r| r.try_borrow().map_or(true, |r| r.iter().any(|(at, _)| *at == id)));
    ACTIVE.with(Cell::get) == id || placed() || overflow() || root()
}
