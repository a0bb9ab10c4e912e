//! The proxy-wasm ABI (0.2.1) as sluice speaks it: the host functions the filter calls, each
//! with a safe wrapper that answers a status instead of trapping, and the ABI's numbers.
//! Nothing here decides anything; `dispatch` holds the other half (the callbacks).

use std::time::Duration;

/// A host call's status (the ABI's numbers); anything but `Ok` is an `Err` of the wrappers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status(pub u32);

pub(super) const OK: u32 = 0;
pub(super) const NOT_FOUND: Status = Status(1);
pub(super) const EMPTY: Status = Status(7);
pub(super) const CAS_MISMATCH: Status = Status(8);

/// Header maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Headers {
    Request = 0,
    Response = 2,
    /// An HTTP callout's answer.
    CallResponse = 6,
}

/// Buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub(super) enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// What a stream callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Action {
    Continue = 0,
    Pause = 1,
}

/// Counter, the one metric type sluice defines.
const COUNTER: u32 = 0;
/// `proxy_continue_stream`'s stream type of the request.
const HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(map: u32, key: *const u8, key_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_add_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(key: *const u8, key_size: usize, data: *mut *mut u8, size: *mut usize, cas: *mut u32) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(queue: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(queue: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    if code == OK {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// The bytes a host call hands back through its two out-parameters: `Ok(None)` for no buffer.
pub(super) fn host_bytes(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    status(call(&mut data, &mut len))?;
    if data.is_null() {
        return Ok(None);
    }
    // SAFETY: the host wrote a buffer of `len` initialized bytes that it allocated through
    // proxy_on_memory_allocate (`dispatch`: Rust's global allocator, align 1, capacity `len`),
    // which we now own.
    Ok(Some(unsafe { Vec::from_raw_parts(data, len, len) }))
}

pub(super) fn log(level: LogLevel, message: &str) {
    // SAFETY: the message is valid for its length for the call.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

pub(super) fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// A buffer's bytes from `start`, at most `max`; `None` when there is no such buffer.
pub(super) fn get_buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: both out-pointers are valid for the call.
    match host_bytes(|data, len| unsafe { proxy_get_buffer_bytes(kind as u32, start, max, data, len) }) {
        Err(NOT_FOUND) => Ok(None),
        other => other,
    }
}

/// The first value of header `key` in `map`: `None` when it is not there.
pub(super) fn get_map_value_bytes(map: Headers, key: &str) -> Result<Option<Vec<u8>>, Status> {
    match host_bytes(|data, len| {
        // SAFETY: the key is valid for its length and both out-pointers for the call.
        unsafe { proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), data, len) }
    }) {
        Err(NOT_FOUND) => Ok(None),
        // Found, and empty: the host hands an empty value over as no buffer.
        Ok(None) => Ok(Some(Vec::new())),
        other => other,
    }
}

/// Every pair of a header map, in the encoding `crate::headers::Pairs` reads.
pub(super) fn get_header_map_pairs(map: Headers) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: both out-pointers are valid for the call.
    host_bytes(|data, len| unsafe { proxy_get_header_map_pairs(map as u32, data, len) })
}

/// A property, by its path as the ABI spells it: segments joined by NUL (docs/architecture.md,
/// "Host facts: properties").
pub(super) fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    match host_bytes(|data, len| {
        // SAFETY: the path is valid for its length and both out-pointers for the call.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), data, len) }
    }) {
        Err(NOT_FOUND) => Ok(None),
        other => other,
    }
}

/// The host's wall clock, nanoseconds since the epoch.
pub(super) fn now_ns() -> Result<u64, Status> {
    let mut ns: u64 = 0;
    // SAFETY: the out-pointer is valid for the call.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns)
}

pub(super) fn add_map_value(map: Headers, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: key and value are valid for their lengths for the call.
    status(unsafe { proxy_add_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token; `None` when the key is absent.
pub(super) fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut cas: u32 = 0;
    let value = host_bytes(|data, len| {
        // SAFETY: the key is valid for its length and every out-pointer for the call.
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), data, len, &mut cas) }
    });
    match value {
        Ok(value) => Ok(value.map(|v| (v, cas))),
        Err(NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` under `key` if its token is still `cas` (0: unconditionally).
pub(super) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: key and value are valid for their lengths for the call.
    status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

pub(super) fn register_shared_queue(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the name is valid for its length and the out-pointer for the call.
    status(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub(super) fn enqueue_shared_queue(queue: u32, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the value is valid for its length for the call.
    status(unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) })
}

/// The next item of `queue`, `None` when it is empty.
pub(super) fn dequeue_shared_queue(queue: u32) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: both out-pointers are valid for the call.
    match host_bytes(|data, len| unsafe { proxy_dequeue_shared_queue(queue, data, len) }) {
        Err(EMPTY) => Ok(None),
        other => other,
    }
}

pub(super) fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the name is valid for its length and the out-pointer for the call.
    status(unsafe { proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub(super) fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, offset) })
}

thread_local! {
    /// The context the host's calls act on now, as far as this module knows: the one the host
    /// entered the module for, or the last one made effective since.
    static EFFECTIVE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Makes `context` the one the next host calls act on (a request carried on from elsewhere).
pub(super) fn set_effective_context(context: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    let set = status(unsafe { proxy_set_effective_context(context) });
    if set.is_ok() {
        EFFECTIVE.with(|e| e.set(context));
    }
    set
}

/// The host entered the module for `context`, which is effective now.
pub(super) fn entered(context: u32) {
    EFFECTIVE.with(|e| e.set(context));
}

/// The context the host's calls act on now (see [`EFFECTIVE`]).
pub(super) fn effective() -> u32 {
    EFFECTIVE.with(std::cell::Cell::get)
}

/// Lets the effective context's request go on.
pub(super) fn resume_http_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Sends an HTTP callout to `cluster`; its answer comes to the context whose callback made it
/// (`dispatch`).
pub(super) fn dispatch_http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> Result<u32, Status> {
    let headers = crate::headers::encode(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    let trailers = crate::headers::encode(std::iter::empty());
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0;
    // SAFETY: every buffer is valid for its length and the out-pointer for the call.
    status(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    super::dispatch::called_out(token);
    Ok(token)
}
