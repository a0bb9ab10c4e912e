//! One worker's VM: the state its host functions see, and every `env.proxy_*` and WASI import,
//! written from the proxy-wasm ABI v0.2.1 spec with Envoy's behaviour where the spec is silent.
//!
//! Host functions never touch other workers: what needs the engine (a local reply, a resumed
//! stream, an HTTP callout) is recorded as an [`Effect`] and acted on when the callback returns,
//! as Envoy defers them until after the VM call.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use wasmtime::{Caller, Linker, Memory, TypedFunc};

use crate::abi::{self, buffer, map, stream, LogLevel, MetricType, Pairs, Status};
use crate::clock::Clock;
use crate::shared::{CalloutFault, LogEntry, Metric, Process, Rng, WriteFault};

/// Where a worker's guest code stands when the scheduler gets control back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// About to start a callback (a request step, a callout reply, a tick).
    Start,
    /// Suspended just before `proxy_get_shared_data(key)` takes effect.
    SharedGet { key: String },
    /// Suspended just before `proxy_set_shared_data(key, _, cas)` takes effect.
    SharedSet { key: String, cas: u32 },
}

/// A local reply as the guest asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub details: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub grpc_status: i32,
}

/// An HTTP callout as the guest dispatched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    pub cluster: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
    pub timeout_ms: u32,
}

impl CalloutRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

pub(crate) fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone)]
pub(crate) enum Effect {
    Continue { ctx: u32, stream: i32 },
    Close { ctx: u32 },
    LocalReply { ctx: u32, reply: LocalReply },
    HttpCall { ctx: u32, token: u32, n: u64, call: CalloutRequest },
    RedisCall { ctx: u32, token: u32, cluster: String, query: Vec<u8> },
    TickPeriod { ms: u32 },
    Done { ctx: u32 },
}

/// Per-context data the host keeps (a root context has only properties).
#[derive(Debug, Default, Clone)]
pub(crate) struct Ctx {
    pub root: bool,
    pub request_headers: Pairs,
    pub request_body: Vec<u8>,
    pub request_trailers: Pairs,
    pub response_headers: Pairs,
    pub response_body: Vec<u8>,
    pub response_trailers: Pairs,
    /// Which body buffers the guest may read now (Envoy hands them out only in body callbacks).
    pub request_body_visible: bool,
    pub response_body_visible: bool,
    pub properties: HashMap<String, Vec<u8>>,
    pub local_reply_sent: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CallResponse {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callback {
    None,
    VmStart,
    Configure,
    Other,
}

/// Static facts about the plugin, as Envoy's `PluginBase` holds them.
#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub clusters: HashSet<String>,
    pub log_level: LogLevel,
    pub env: Vec<(String, String)>,
}

/// How often a VM was entered (the host calling one of its exports) and how often it called the
/// host (one of its imports): deterministic costs of a request, unlike its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crossings {
    pub vm_entries: u64,
    pub host_calls: u64,
    /// Fuel the guest burned: about one unit per wasm instruction it ran (deterministic for one
    /// build and one input).
    pub guest_fuel: u64,
}

impl std::ops::Add for Crossings {
    type Output = Crossings;
    fn add(self, o: Crossings) -> Crossings {
        Crossings {
            vm_entries: self.vm_entries + o.vm_entries,
            host_calls: self.host_calls + o.host_calls,
            guest_fuel: self.guest_fuel + o.guest_fuel,
        }
    }
}

/// The data of one worker's wasmtime store.
pub(crate) struct VmState {
    pub worker: usize,
    pub plugin: Arc<Plugin>,
    pub process: Arc<Mutex<Process>>,
    pub clock: Clock,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    pub root_id: u32,
    pub next_context_id: u32,
    pub current: u32,
    pub effective: u32,
    pub callback: Callback,
    pub contexts: HashMap<u32, Ctx>,
    pub effects: Vec<Effect>,
    pub call_response: Option<CallResponse>,
    pub redis_response: Option<Vec<u8>>,
    pub status: (u32, String),
    pub next_token: u32,
    pub metric_ids: HashMap<u32, String>,
    pub metric_names: HashMap<(String, u8), u32>,
    pub awaiting_done: HashSet<u32>,
    pub park: Arc<Mutex<Option<Point>>>,
    pub redis_inits: Vec<(String, String, String, u32)>,
    /// Calls into the guest (every export: callbacks and the allocations the host asks of it)
    /// and calls out of it (every import), counted as wasmtime crosses the boundary.
    pub crossings: Crossings,
}

pub(crate) fn lock(p: &Mutex<Process>) -> MutexGuard<'_, Process> {
    match p.lock() {
        Ok(g) => g,
        // A panicking test thread must not hide the state from the next assertion.
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl VmState {
    pub fn new(worker: usize, plugin: Arc<Plugin>, process: Arc<Mutex<Process>>, clock: Clock) -> Self {
        VmState {
            worker,
            plugin,
            process,
            clock,
            memory: None,
            malloc: None,
            root_id: 0,
            next_context_id: 1,
            current: 0,
            effective: 0,
            callback: Callback::None,
            contexts: HashMap::new(),
            effects: Vec::new(),
            call_response: None,
            redis_response: None,
            status: (0, String::new()),
            next_token: 1,
            metric_ids: HashMap::new(),
            metric_names: HashMap::new(),
            awaiting_done: HashSet::new(),
            park: Arc::new(Mutex::new(None)),
            redis_inits: Vec::new(),
            crossings: Crossings::default(),
        }
    }

    pub fn alloc_context(&mut self, root: bool) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.contexts.insert(id, Ctx { root, ..Ctx::default() });
        id
    }

    /// The context host calls act on: the effective one if the guest set a live one.
    pub fn ctx_id(&self) -> u32 {
        if self.effective != 0 && self.contexts.contains_key(&self.effective) {
            self.effective
        } else {
            self.current
        }
    }

    fn ctx(&self) -> Option<&Ctx> {
        self.contexts.get(&self.ctx_id())
    }

    fn ctx_mut(&mut self) -> Option<&mut Ctx> {
        let id = self.ctx_id();
        self.contexts.get_mut(&id)
    }

    fn log(&self, level: LogLevel, message: String) {
        let entry = LogEntry { worker: self.worker, level, message, context_id: self.ctx_id() };
        lock(&self.process).logs.push(entry);
    }

    fn header_map(&self, kind: i32) -> Result<&Pairs, Status> {
        if kind == map::HTTP_CALL_RESPONSE_HEADERS || kind == map::HTTP_CALL_RESPONSE_TRAILERS {
            let r = self.call_response.as_ref().ok_or(Status::NotFound)?;
            return Ok(if kind == map::HTTP_CALL_RESPONSE_HEADERS { &r.headers } else { &r.trailers });
        }
        let ctx = self.ctx().ok_or(Status::BadArgument)?;
        match kind {
            map::REQUEST_HEADERS => Ok(&ctx.request_headers),
            map::REQUEST_TRAILERS => Ok(&ctx.request_trailers),
            map::RESPONSE_HEADERS => Ok(&ctx.response_headers),
            map::RESPONSE_TRAILERS => Ok(&ctx.response_trailers),
            map::GRPC_INITIAL_METADATA | map::GRPC_TRAILING_METADATA => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    fn header_map_mut(&mut self, kind: i32) -> Result<&mut Pairs, Status> {
        let ctx = self.ctx_mut().ok_or(Status::BadArgument)?;
        match kind {
            map::REQUEST_HEADERS => Ok(&mut ctx.request_headers),
            map::REQUEST_TRAILERS => Ok(&mut ctx.request_trailers),
            map::RESPONSE_HEADERS => Ok(&mut ctx.response_headers),
            map::RESPONSE_TRAILERS => Ok(&mut ctx.response_trailers),
            // Callout responses and gRPC metadata are read-only.
            _ => Err(Status::BadArgument),
        }
    }

    fn buffer(&self, kind: i32) -> Result<Vec<u8>, Status> {
        match kind {
            buffer::PLUGIN_CONFIGURATION if self.callback == Callback::Configure => Ok(self.plugin.configuration.clone()),
            buffer::VM_CONFIGURATION if self.callback == Callback::VmStart => Ok(self.plugin.vm_configuration.clone()),
            buffer::HTTP_CALL_RESPONSE_BODY => self.call_response.as_ref().map(|r| r.body.clone()).ok_or(Status::NotFound),
            buffer::REDIS_CALL_RESPONSE => self.redis_response.clone().ok_or(Status::NotFound),
            buffer::REQUEST_BODY => match self.ctx() {
                Some(c) if c.request_body_visible => Ok(c.request_body.clone()),
                _ => Err(Status::NotFound),
            },
            buffer::RESPONSE_BODY => match self.ctx() {
                Some(c) if c.response_body_visible => Ok(c.response_body.clone()),
                _ => Err(Status::NotFound),
            },
            buffer::DOWNSTREAM_DATA..=buffer::FOREIGN_FUNCTION_ARGUMENTS => Err(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    /// Envoy's properties: per-request values set by the harness, the plugin's own, then
    /// request headers under `request.headers.<name>`.
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        // Envoy names a property by its segments (NUL-separated on the wire): `source.address`
        // as one segment is not the source address (docs/architecture.md, "Host facts:
        // properties").
        if path.iter().any(|segment| segment.contains('.')) {
            return None;
        }
        let dotted = path.join(".");
        if let Some(v) = self.ctx().and_then(|c| c.properties.get(&dotted)) {
            return Some(v.clone());
        }
        match dotted.as_str() {
            "plugin_name" => return Some(self.plugin.name.as_bytes().to_vec()),
            "plugin_root_id" => return Some(self.plugin.root_id.as_bytes().to_vec()),
            "plugin_vm_id" => return Some(self.plugin.vm_id.as_bytes().to_vec()),
            _ => {}
        }
        let ctx = self.ctx().filter(|c| !c.root)?;
        match path {
            [a, b] if a == "request" && b == "headers" => Some(abi::serialize_pairs(&ctx.request_headers)),
            [a, b, name] if a == "request" && b == "headers" => find(&ctx.request_headers, name).map(|v| v.as_bytes().to_vec()),
            [a, b] if a == "response" && b == "headers" => Some(abi::serialize_pairs(&ctx.response_headers)),
            [a, b, name] if a == "response" && b == "headers" => find(&ctx.response_headers, name).map(|v| v.as_bytes().to_vec()),
            [a, b] if a == "response" && b == "code" => {
                find(&ctx.response_headers, ":status").and_then(|s| s.parse::<i64>().ok()).map(|c| c.to_le_bytes().to_vec())
            }
            _ => None,
        }
    }
}

/// A future that is pending exactly once: the point where the scheduler may run another
/// worker before this one goes on.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

async fn park(caller: &Caller<'_, VmState>, point: Point) {
    let cell = caller.data().park.clone();
    set_park(&cell, Some(point));
    YieldOnce(false).await;
    set_park(&cell, None);
}

pub(crate) fn set_park(cell: &Mutex<Option<Point>>, point: Option<Point>) {
    match cell.lock() {
        Ok(mut g) => *g = point,
        Err(p) => *p.into_inner() = point,
    }
}

pub(crate) fn get_park(cell: &Mutex<Option<Point>>) -> Option<Point> {
    match cell.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Guest memory.

fn read(caller: &Caller<'_, VmState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let mem = caller.data().memory?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    mem.data(caller).get(start..end).map(<[u8]>::to_vec)
}

fn read_str(caller: &Caller<'_, VmState>, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = caller.data().memory else { return false };
    let start = ptr as u32 as usize;
    let Some(end) = start.checked_add(bytes.len()) else { return false };
    match mem.data_mut(caller).get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, v: u64) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocated (so the SDK can own and free it) and writes
/// its address and size. Empty data is handed over as a null pointer, as Envoy does.
async fn copy_out(caller: &mut Caller<'_, VmState>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> wasmtime::Result<bool> {
    let mut addr = 0u32;
    if !bytes.is_empty() {
        let malloc = caller.data().malloc.clone().ok_or_else(|| wasmtime::format_err!("module exports no allocator"))?;
        addr = malloc.call_async(&mut *caller, bytes.len() as i32).await? as u32;
        if addr == 0 || !write(caller, addr as i32, bytes) {
            return Ok(false);
        }
    }
    Ok(write_u32(caller, ptr_ptr, addr) && write_u32(caller, size_ptr, bytes.len() as u32))
}

/// A fault injected for this call on a body buffer, if `kind` is one.
fn body_fault(caller: &Caller<'_, VmState>, kind: i32) -> Option<Status> {
    if kind != buffer::REQUEST_BODY && kind != buffer::RESPONSE_BODY {
        return None;
    }
    lock(&caller.data().process).faults.body_faults.pop_front().flatten()
}

fn st(s: Status) -> wasmtime::Result<i32> {
    Ok(s.code())
}

type BoxFut<'a, T> = Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>;

// ---------------------------------------------------------------------------------------------
// The imports.

/// Every `env` function the harness emulates. A module importing anything else is refused.
pub const ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_size",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_get_configuration",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_redis_init",
    "proxy_redis_call",
];

/// Imports the harness knows but does not emulate (the Rust SDK links them whether or not a
/// filter uses gRPC): calling one traps, naming it.
pub const ENV_UNEMULATED: &[&str] =
    &["proxy_grpc_call", "proxy_grpc_stream", "proxy_grpc_send", "proxy_grpc_cancel", "proxy_grpc_close"];

/// The WASI preview1 functions a proxy-wasm VM gets (what Envoy offers, minus the file system).
pub const WASI_FUNCTIONS: &[&str] = &[
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "clock_time_get",
    "clock_res_get",
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_filestat_get",
    "path_open",
    "path_filestat_get",
    "random_get",
    "sched_yield",
    "poll_oneoff",
    "proc_exit",
];

pub(crate) fn add_env(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", |caller: Caller<'_, VmState>, level: i32, ptr: i32, len: i32| {
        let Some(level) = LogLevel::from_code(level) else { return st(Status::BadArgument) };
        let Some(msg) = read_str(&caller, ptr, len) else { return st(Status::InvalidMemoryAccess) };
        caller.data().log(level, msg);
        st(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_get_log_level", |mut caller: Caller<'_, VmState>, ptr: i32| {
        let level = caller.data().plugin.log_level as u32;
        if write_u32(&mut caller, ptr, level) {
            st(Status::Ok)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut caller: Caller<'_, VmState>, ptr: i32| {
        {
            let mut p = lock(&caller.data().process);
            if p.faults.clock_faults > 0 {
                p.faults.clock_faults -= 1;
                return st(Status::InternalFailure);
            }
        }
        let now = caller.data().clock.now_ns();
        if write_u64(&mut caller, ptr, now) {
            st(Status::Ok)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut caller: Caller<'_, VmState>, ms: i32| {
        caller.data_mut().effects.push(Effect::TickPeriod { ms: ms as u32 });
        st(Status::Ok)
    })?;

    // Buffers.
    linker.func_wrap_async(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, VmState>, (kind, start, max, ptr_ptr, size_ptr): (i32, i32, i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                if let Some(fault) = body_fault(&caller, kind) {
                    return st(fault);
                }
                let data = match caller.data().buffer(kind) {
                    Ok(d) => d,
                    Err(s) => return st(s),
                };
                let (start, max) = (start as u32 as usize, max as u32 as usize);
                if start.checked_add(max).is_none() {
                    return st(Status::BadArgument);
                }
                let from = start.min(data.len());
                let to = start.saturating_add(max).min(data.len());
                let slice = data.get(from..to).unwrap_or(&[]).to_vec();
                if copy_out(&mut caller, &slice, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, VmState>, kind: i32, len_ptr: i32, flags_ptr: i32| {
            if let Some(fault) = body_fault(&caller, kind) {
                return st(fault);
            }
            let data = match caller.data().buffer(kind) {
                Ok(d) => d,
                Err(s) => return st(s),
            };
            if write_u32(&mut caller, len_ptr, data.len() as u32) && write_u32(&mut caller, flags_ptr, 0) {
                st(Status::Ok)
            } else {
                st(Status::InvalidMemoryAccess)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, VmState>, kind: i32, start: i32, len: i32, ptr: i32, size: i32| {
            if let Some(fault) = body_fault(&caller, kind) {
                return st(fault);
            }
            let Some(value) = read(&caller, ptr, size) else { return st(Status::InvalidMemoryAccess) };
            let vm = caller.data_mut();
            let Some(ctx) = vm.ctx_mut() else { return st(Status::NotFound) };
            let buf = match kind {
                buffer::REQUEST_BODY if ctx.request_body_visible => &mut ctx.request_body,
                buffer::RESPONSE_BODY if ctx.response_body_visible => &mut ctx.response_body,
                0..=9 => return st(Status::NotFound),
                _ => return st(Status::BadArgument),
            };
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(len as u32 as usize).min(buf.len());
            buf.splice(start..end, value);
            st(Status::Ok)
        },
    )?;

    // Header maps.
    linker.func_wrap_async(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, VmState>, (kind, ptr_ptr, size_ptr): (i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let bytes = match caller.data().header_map(kind) {
                    Ok(p) if p.is_empty() => Vec::new(),
                    Ok(p) => abi::serialize_pairs(p),
                    Err(s) => return st(s),
                };
                if copy_out(&mut caller, &bytes, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, VmState>, kind: i32, ptr: i32, size: i32| {
            let Some(bytes) = read(&caller, ptr, size) else { return st(Status::InvalidMemoryAccess) };
            let Some(pairs) = abi::deserialize_pairs(&bytes) else { return st(Status::ParseFailure) };
            match caller.data_mut().header_map_mut(kind) {
                Ok(m) => {
                    *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
                    st(Status::Ok)
                }
                Err(s) => st(s),
            }
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, VmState>, (kind, kptr, klen, ptr_ptr, size_ptr): (i32, i32, i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let Some(key) = read_str(&caller, kptr, klen) else { return st(Status::InvalidMemoryAccess) };
                let value = match caller.data().header_map(kind) {
                    Ok(p) => match find(p, &key) {
                        Some(v) => v.as_bytes().to_vec(),
                        None => return st(Status::NotFound),
                    },
                    Err(s) => return st(s),
                };
                if copy_out(&mut caller, &value, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut caller: Caller<'_, VmState>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (Some(k), Some(v)) = (read_str(&caller, kptr, klen), read_str(&caller, vptr, vlen)) else {
                return st(Status::InvalidMemoryAccess);
            };
            match caller.data_mut().header_map_mut(kind) {
                Ok(m) => {
                    m.push((k.to_ascii_lowercase(), v));
                    st(Status::Ok)
                }
                Err(s) => st(s),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: Caller<'_, VmState>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (Some(k), Some(v)) = (read_str(&caller, kptr, klen), read_str(&caller, vptr, vlen)) else {
                return st(Status::InvalidMemoryAccess);
            };
            match caller.data_mut().header_map_mut(kind) {
                Ok(m) => {
                    let k = k.to_ascii_lowercase();
                    match m.iter().position(|(name, _)| *name == k) {
                        Some(i) => {
                            m[i].1 = v;
                            let mut seen = false;
                            m.retain(|(name, _)| {
                                if *name != k {
                                    return true;
                                }
                                let keep = !seen;
                                seen = true;
                                keep
                            });
                        }
                        None => m.push((k, v)),
                    }
                    st(Status::Ok)
                }
                Err(s) => st(s),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, VmState>, kind: i32, kptr: i32, klen: i32| {
            let Some(k) = read_str(&caller, kptr, klen) else { return st(Status::InvalidMemoryAccess) };
            match caller.data_mut().header_map_mut(kind) {
                Ok(m) => {
                    m.retain(|(name, _)| !name.eq_ignore_ascii_case(&k));
                    st(Status::Ok)
                }
                Err(s) => st(s),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_get_header_map_size", |mut caller: Caller<'_, VmState>, kind: i32, ptr: i32| {
        let size = match caller.data().header_map(kind) {
            Ok(p) => abi::serialize_pairs(p).len() as u32,
            Err(s) => return st(s),
        };
        if write_u32(&mut caller, ptr, size) {
            st(Status::Ok)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    })?;

    // Properties.
    linker.func_wrap_async(
        "env",
        "proxy_get_property",
        |mut caller: Caller<'_, VmState>, (pptr, plen, ptr_ptr, size_ptr): (i32, i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let Some(path) = read(&caller, pptr, plen) else { return st(Status::InvalidMemoryAccess) };
                let path = abi::property_path(&path);
                let Some(value) = caller.data().property(&path) else { return st(Status::NotFound) };
                if copy_out(&mut caller, &value, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, VmState>, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            let (Some(path), Some(value)) = (read(&caller, pptr, plen), read(&caller, vptr, vlen)) else {
                return st(Status::InvalidMemoryAccess);
            };
            let path = abi::property_path(&path).join(".");
            match caller.data_mut().ctx_mut() {
                Some(ctx) => {
                    ctx.properties.insert(path, value);
                    st(Status::Ok)
                }
                None => st(Status::NotFound),
            }
        },
    )?;

    // Shared data: both calls are scheduling points (see `Point`).
    linker.func_wrap_async(
        "env",
        "proxy_get_shared_data",
        |mut caller: Caller<'_, VmState>,
         (kptr, klen, ptr_ptr, size_ptr, cas_ptr): (i32, i32, i32, i32, i32)|
         -> BoxFut<'_, i32> {
            Box::new(async move {
                let Some(key) = read_str(&caller, kptr, klen) else { return st(Status::InvalidMemoryAccess) };
                park(&caller, Point::SharedGet { key: key.clone() }).await;
                let found = {
                    let vm = caller.data();
                    let mut p = lock(&vm.process);
                    p.shared_reads += 1;
                    if let Some(fault) = p.faults.read_faults.pop_front() {
                        return st(fault);
                    }
                    p.shared.get(&vm.plugin.vm_id, &key)
                };
                let Some((value, cas)) = found else { return st(Status::NotFound) };
                if !copy_out(&mut caller, &value, ptr_ptr, size_ptr).await? || !write_u32(&mut caller, cas_ptr, cas) {
                    return st(Status::InvalidMemoryAccess);
                }
                st(Status::Ok)
            })
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_set_shared_data",
        |caller: Caller<'_, VmState>, (kptr, klen, vptr, vlen, cas): (i32, i32, i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let (Some(key), Some(value)) = (read_str(&caller, kptr, klen), read(&caller, vptr, vlen)) else {
                    return st(Status::InvalidMemoryAccess);
                };
                park(&caller, Point::SharedSet { key: key.clone(), cas: cas as u32 }).await;
                let vm = caller.data();
                let mut p = lock(&vm.process);
                p.shared_writes += 1;
                match p.faults.write_faults.pop_front() {
                    Some(WriteFault::CasMismatch) => return st(Status::CasMismatch),
                    Some(WriteFault::Error(s)) => return st(s),
                    None => {}
                }
                st(p.shared.set(&vm.plugin.vm_id, &key, &value, cas as u32))
            })
        },
    )?;

    // Shared queues.
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, VmState>, nptr: i32, nlen: i32, id_ptr: i32| {
            let Some(name) = read_str(&caller, nptr, nlen) else { return st(Status::InvalidMemoryAccess) };
            let (vm_id, worker, root) = {
                let vm = caller.data();
                (vm.plugin.vm_id.clone(), vm.worker, vm.root_id)
            };
            let id = {
                let process = caller.data().process.clone();
                let mut p = lock(&process);
                let q = &mut p.queues;
                match q.by_name.get(&(vm_id.clone(), name.clone())) {
                    Some(id) => {
                        let id = *id;
                        // Re-registering moves the "queue ready" callbacks to this worker, as in Envoy.
                        if let Some(entry) = q.queues.get_mut(&id) {
                            entry.0 = worker;
                            entry.1 = root;
                        }
                        id
                    }
                    None => {
                        q.next_id += 1;
                        let id = q.next_id;
                        q.by_name.insert((vm_id, name), id);
                        q.queues.insert(id, (worker, root, Default::default()));
                        id
                    }
                }
            };
            if write_u32(&mut caller, id_ptr, id) {
                st(Status::Ok)
            } else {
                st(Status::InvalidMemoryAccess)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, VmState>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, id_ptr: i32| {
            let (Some(vm_id), Some(name)) = (read_str(&caller, vptr, vlen), read_str(&caller, nptr, nlen)) else {
                return st(Status::InvalidMemoryAccess);
            };
            let vm_id = if vm_id.is_empty() { caller.data().plugin.vm_id.clone() } else { vm_id };
            let id = lock(&caller.data().process).queues.by_name.get(&(vm_id, name)).copied();
            match id {
                Some(id) if write_u32(&mut caller, id_ptr, id) => st(Status::Ok),
                Some(_) => st(Status::InvalidMemoryAccess),
                None => st(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", |caller: Caller<'_, VmState>, id: i32, ptr: i32, len: i32| {
        let Some(value) = read(&caller, ptr, len) else { return st(Status::InvalidMemoryAccess) };
        let mut p = lock(&caller.data().process);
        let id = id as u32;
        match p.queues.queues.get_mut(&id) {
            Some(q) => {
                q.2.push_back(value);
                p.queues.ready.push(id);
                st(Status::Ok)
            }
            None => st(Status::NotFound),
        }
    })?;
    linker.func_wrap_async(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, VmState>, (id, ptr_ptr, size_ptr): (i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let item = {
                    let mut p = lock(&caller.data().process);
                    match p.queues.queues.get_mut(&(id as u32)) {
                        None => return st(Status::NotFound),
                        Some(q) => q.2.pop_front(),
                    }
                };
                let Some(item) = item else { return st(Status::Empty) };
                if copy_out(&mut caller, &item, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;

    // Streams.
    fn continue_stream(caller: &mut Caller<'_, VmState>, kind: i32) -> wasmtime::Result<i32> {
        if !(0..=3).contains(&kind) {
            return st(Status::BadArgument);
        }
        let vm = caller.data_mut();
        let ctx = vm.ctx_id();
        match vm.contexts.get(&ctx) {
            Some(c) if !c.root => {}
            _ => return st(Status::NotFound),
        }
        if kind == stream::DOWNSTREAM || kind == stream::UPSTREAM {
            return st(Status::Unimplemented);
        }
        vm.effects.push(Effect::Continue { ctx, stream: kind });
        st(Status::Ok)
    }
    linker.func_wrap("env", "proxy_continue_stream", |mut caller: Caller<'_, VmState>, kind: i32| {
        continue_stream(&mut caller, kind)
    })?;
    linker.func_wrap("env", "proxy_continue_request", |mut caller: Caller<'_, VmState>| {
        continue_stream(&mut caller, stream::HTTP_REQUEST)
    })?;
    linker.func_wrap("env", "proxy_continue_response", |mut caller: Caller<'_, VmState>| {
        continue_stream(&mut caller, stream::HTTP_RESPONSE)
    })?;
    linker.func_wrap("env", "proxy_close_stream", |mut caller: Caller<'_, VmState>, kind: i32| {
        if !(0..=3).contains(&kind) {
            return st(Status::BadArgument);
        }
        let vm = caller.data_mut();
        let ctx = vm.ctx_id();
        vm.effects.push(Effect::Close { ctx });
        st(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_clear_route_cache", |_caller: Caller<'_, VmState>| st(Status::Ok))?;
    linker.func_wrap_async(
        "env",
        "proxy_get_configuration",
        |mut caller: Caller<'_, VmState>, (ptr_ptr, size_ptr): (i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let config = caller.data().plugin.configuration.clone();
                if copy_out(&mut caller, &config, ptr_ptr, size_ptr).await? {
                    st(Status::Ok)
                } else {
                    st(Status::InvalidMemoryAccess)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, VmState>,
         code: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc: i32| {
            let (Some(details), Some(body), Some(headers)) =
                (read_str(&caller, dptr, dlen), read(&caller, bptr, blen), read(&caller, hptr, hlen))
            else {
                return st(Status::InvalidMemoryAccess);
            };
            let Some(headers) = abi::deserialize_pairs(&headers) else { return st(Status::ParseFailure) };
            let vm = caller.data_mut();
            let ctx = vm.ctx_id();
            match vm.contexts.get_mut(&ctx) {
                Some(c) if !c.root => {
                    // Envoy answers a stream once; a second local reply is refused.
                    if c.local_reply_sent {
                        return st(Status::BadArgument);
                    }
                    c.local_reply_sent = true;
                }
                _ => return st(Status::NotFound),
            }
            let headers = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            let reply = LocalReply { status: code as u16, details, headers, body, grpc_status: grpc };
            vm.effects.push(Effect::LocalReply { ctx, reply });
            st(Status::Ok)
        },
    )?;

    // HTTP callouts.
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, VmState>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout: i32,
         token_ptr: i32| {
            let (Some(cluster), Some(headers), Some(body), Some(trailers)) =
                (read_str(&caller, uptr, ulen), read(&caller, hptr, hlen), read(&caller, bptr, blen), read(&caller, tptr, tlen))
            else {
                return st(Status::InvalidMemoryAccess);
            };
            let (Some(headers), Some(trailers)) = (abi::deserialize_pairs(&headers), abi::deserialize_pairs(&trailers)) else {
                return st(Status::ParseFailure);
            };
            if !write_u32(&mut caller, token_ptr, 0) {
                return st(Status::InvalidMemoryAccess);
            }
            let vm = caller.data_mut();
            if !vm.plugin.clusters.is_empty() && !vm.plugin.clusters.contains(&cluster) {
                return st(Status::BadArgument);
            }
            if [":method", ":path", ":authority"].iter().any(|h| find(&headers, h).is_none()) {
                return st(Status::BadArgument);
            }
            let n = {
                let mut p = lock(&vm.process);
                p.http_calls += 1;
                let n = p.http_calls;
                let fault = p.faults.nth_callout.get(&n).copied().or_else(|| match p.faults.callout_faults.front() {
                    Some(CalloutFault::Reject(_)) => p.faults.callout_faults.pop_front(),
                    _ => None,
                });
                if let Some(CalloutFault::Reject(s)) = fault {
                    p.faults.nth_callout.remove(&n);
                    return st(s);
                }
                n
            };
            let token = vm.next_token;
            vm.next_token += 1;
            let ctx = vm.ctx_id();
            let call = CalloutRequest { cluster, headers, body, trailers, timeout_ms: timeout as u32 };
            vm.effects.push(Effect::HttpCall { ctx, token, n, call });
            if write_u32(&mut caller, token_ptr, token) {
                st(Status::Ok)
            } else {
                st(Status::InvalidMemoryAccess)
            }
        },
    )?;
    linker.func_wrap_async(
        "env",
        "proxy_get_status",
        |mut caller: Caller<'_, VmState>, (code_ptr, ptr_ptr, size_ptr): (i32, i32, i32)| -> BoxFut<'_, i32> {
            Box::new(async move {
                let (code, msg) = caller.data().status.clone();
                if !write_u32(&mut caller, code_ptr, code) || !copy_out(&mut caller, msg.as_bytes(), ptr_ptr, size_ptr).await? {
                    return st(Status::InvalidMemoryAccess);
                }
                st(Status::Ok)
            })
        },
    )?;

    // Contexts.
    linker.func_wrap("env", "proxy_set_effective_context", |mut caller: Caller<'_, VmState>, id: i32| {
        let vm = caller.data_mut();
        if vm.contexts.contains_key(&(id as u32)) {
            vm.effective = id as u32;
            st(Status::Ok)
        } else {
            st(Status::BadArgument)
        }
    })?;
    linker.func_wrap("env", "proxy_done", |mut caller: Caller<'_, VmState>| {
        let vm = caller.data_mut();
        let ctx = vm.ctx_id();
        if vm.awaiting_done.remove(&ctx) {
            vm.effects.push(Effect::Done { ctx });
            st(Status::Ok)
        } else {
            st(Status::NotFound)
        }
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_caller: Caller<'_, VmState>, _n: i32, _nl: i32, _a: i32, _al: i32, _r: i32, _rl: i32| {
            // No foreign functions are registered, as in a plain Envoy without extensions.
            st(Status::NotFound)
        },
    )?;

    // Metrics: one value per name for the whole process (Envoy's stats are process-wide).
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, VmState>, kind: i32, nptr: i32, nlen: i32, id_ptr: i32| {
            let Some(kind) = MetricType::from_code(kind) else { return st(Status::BadArgument) };
            let Some(name) = read_str(&caller, nptr, nlen) else { return st(Status::InvalidMemoryAccess) };
            let vm = caller.data_mut();
            let key = (name.clone(), kind as u8);
            let id = match vm.metric_names.get(&key) {
                Some(id) => *id,
                None => {
                    let id = ((vm.metric_ids.len() as u32 + 1) << 2) | kind as u32;
                    vm.metric_ids.insert(id, name.clone());
                    vm.metric_names.insert(key, id);
                    lock(&vm.process).metrics.entry(name).or_insert(Metric { kind, value: 0, samples: Vec::new() });
                    id
                }
            };
            if write_u32(&mut caller, id_ptr, id) {
                st(Status::Ok)
            } else {
                st(Status::InvalidMemoryAccess)
            }
        },
    )?;
    linker.func_wrap("env", "proxy_increment_metric", |caller: Caller<'_, VmState>, id: i32, delta: i64| {
        let vm = caller.data();
        let Some(name) = vm.metric_ids.get(&(id as u32)) else { return st(Status::NotFound) };
        let mut p = lock(&vm.process);
        let Some(m) = p.metrics.get_mut(name) else { return st(Status::NotFound) };
        match m.kind {
            MetricType::Counter if delta < 0 => st(Status::BadArgument),
            MetricType::Histogram => st(Status::BadArgument),
            _ => {
                m.value = m.value.saturating_add(delta);
                st(Status::Ok)
            }
        }
    })?;
    linker.func_wrap("env", "proxy_record_metric", |caller: Caller<'_, VmState>, id: i32, value: i64| {
        let vm = caller.data();
        let Some(name) = vm.metric_ids.get(&(id as u32)) else { return st(Status::NotFound) };
        let mut p = lock(&vm.process);
        let Some(m) = p.metrics.get_mut(name) else { return st(Status::NotFound) };
        if m.kind == MetricType::Histogram {
            m.samples.push(value as u64);
        }
        m.value = value;
        st(Status::Ok)
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut caller: Caller<'_, VmState>, id: i32, ptr: i32| {
        let value = {
            let vm = caller.data();
            let Some(name) = vm.metric_ids.get(&(id as u32)) else { return st(Status::NotFound) };
            let p = lock(&vm.process);
            match p.metrics.get(name) {
                Some(m) if m.kind != MetricType::Histogram => m.value as u64,
                Some(_) => return st(Status::BadArgument),
                None => return st(Status::NotFound),
            }
        };
        if write_u64(&mut caller, ptr, value) {
            st(Status::Ok)
        } else {
            st(Status::InvalidMemoryAccess)
        }
    })?;

    // Higress' Redis callout.
    linker.func_wrap(
        "env",
        "proxy_redis_init",
        |mut caller: Caller<'_, VmState>, cptr: i32, clen: i32, uptr: i32, ulen: i32, pptr: i32, plen: i32, timeout: i32| {
            let (Some(cluster), Some(user), Some(pass)) =
                (read_str(&caller, cptr, clen), read_str(&caller, uptr, ulen), read_str(&caller, pptr, plen))
            else {
                return st(Status::InvalidMemoryAccess);
            };
            let vm = caller.data_mut();
            if !vm.plugin.clusters.is_empty() && !vm.plugin.clusters.contains(&cluster) {
                return st(Status::BadArgument);
            }
            vm.redis_inits.push((cluster, user, pass, timeout as u32));
            st(Status::Ok)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_redis_call",
        |mut caller: Caller<'_, VmState>, cptr: i32, clen: i32, qptr: i32, qlen: i32, token_ptr: i32| {
            let (Some(cluster), Some(query)) = (read_str(&caller, cptr, clen), read(&caller, qptr, qlen)) else {
                return st(Status::InvalidMemoryAccess);
            };
            let vm = caller.data_mut();
            if !vm.redis_inits.iter().any(|(c, ..)| *c == cluster) {
                return st(Status::BadArgument);
            }
            if let Some(CalloutFault::Reject(s)) = {
                let mut p = lock(&vm.process);
                match p.faults.redis_faults.front() {
                    Some(CalloutFault::Reject(_)) => p.faults.redis_faults.pop_front(),
                    _ => None,
                }
            } {
                return st(s);
            }
            let token = vm.next_token;
            vm.next_token += 1;
            let ctx = vm.ctx_id();
            vm.effects.push(Effect::RedisCall { ctx, token, cluster, query });
            if write_u32(&mut caller, token_ptr, token) {
                st(Status::Ok)
            } else {
                st(Status::InvalidMemoryAccess)
            }
        },
    )?;

    for name in ENV_UNEMULATED {
        let ty = unemulated_type(linker.engine(), name);
        linker.func_new("env", name, ty, move |_caller, _args, _results| {
            Err(wasmtime::format_err!("env.{name} is not emulated by the harness (no gRPC)"))
        })?;
    }
    Ok(())
}

fn unemulated_type(engine: &wasmtime::Engine, name: &str) -> wasmtime::FuncType {
    use wasmtime::ValType::I32;
    let n = match name {
        "proxy_grpc_call" => 12,
        "proxy_grpc_stream" => 9,
        "proxy_grpc_send" => 4,
        _ => 1,
    };
    wasmtime::FuncType::new(engine, std::iter::repeat_n(I32, n), [I32])
}

// ---------------------------------------------------------------------------------------------
// WASI preview1, as a proxy host offers it: stdout/stderr go to the log (info/error), the clocks
// are the harness clock, randomness is seeded, there is no file system.

mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOENT: i32 = 44;
    pub const NOSYS: i32 = 52;
    pub const NOTSUP: i32 = 58;
    pub const SPIPE: i32 = 70;
}

const WASI: &str = "wasi_snapshot_preview1";

pub(crate) fn add_wasi(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "args_sizes_get", |mut caller: Caller<'_, VmState>, argc: i32, size: i32| {
        Ok(if write_u32(&mut caller, argc, 0) && write_u32(&mut caller, size, 0) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "args_get", |_caller: Caller<'_, VmState>, _argv: i32, _buf: i32| Ok(errno::SUCCESS))?;
    linker.func_wrap(WASI, "environ_sizes_get", |mut caller: Caller<'_, VmState>, count: i32, size: i32| {
        let env = caller.data().plugin.env.clone();
        let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        Ok(if write_u32(&mut caller, count, env.len() as u32) && write_u32(&mut caller, size, bytes as u32) {
            errno::SUCCESS
        } else {
            errno::FAULT
        })
    })?;
    linker.func_wrap(WASI, "environ_get", |mut caller: Caller<'_, VmState>, mut array: i32, mut buf: i32| {
        let env = caller.data().plugin.env.clone();
        for (k, v) in env {
            let entry = format!("{k}={v}\0");
            if !write_u32(&mut caller, array, buf as u32) || !write(&mut caller, buf, entry.as_bytes()) {
                return Ok(errno::FAULT);
            }
            array += 4;
            buf += entry.len() as i32;
        }
        Ok(errno::SUCCESS)
    })?;
    linker.func_wrap(WASI, "clock_time_get", |mut caller: Caller<'_, VmState>, id: i32, _precision: i64, ptr: i32| {
        let clock = &caller.data().clock;
        let t = match id {
            0 => clock.now_ns(),
            1 => clock.monotonic_ns(),
            _ => return Ok(errno::NOTSUP),
        };
        Ok(if write_u64(&mut caller, ptr, t) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "clock_res_get", |mut caller: Caller<'_, VmState>, id: i32, ptr: i32| {
        if id != 0 && id != 1 {
            return Ok(errno::NOTSUP);
        }
        Ok(if write_u64(&mut caller, ptr, 1) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "fd_write", |mut caller: Caller<'_, VmState>, fd: i32, iovs: i32, n: i32, written: i32| {
        let level = match fd {
            1 => LogLevel::Info,
            2 => LogLevel::Error,
            _ => return Ok(errno::BADF),
        };
        let mut text = Vec::new();
        for i in 0..n {
            let Some(iov) = read(&caller, iovs + i * 8, 8) else { return Ok(errno::FAULT) };
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            let Some(chunk) = read(&caller, ptr, len) else { return Ok(errno::FAULT) };
            text.extend_from_slice(&chunk);
        }
        let total = text.len();
        if text.last() == Some(&b'\n') {
            text.pop();
        }
        if !text.is_empty() {
            caller.data().log(level, String::from_utf8_lossy(&text).into_owned());
        }
        Ok(if write_u32(&mut caller, written, total as u32) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "fd_read", |_c: Caller<'_, VmState>, _fd: i32, _iovs: i32, _n: i32, _read: i32| Ok(errno::NOSYS))?;
    linker.func_wrap(WASI, "fd_close", |_c: Caller<'_, VmState>, _fd: i32| Ok(errno::BADF))?;
    linker
        .func_wrap(WASI, "fd_seek", |_c: Caller<'_, VmState>, _fd: i32, _off: i64, _whence: i32, _ptr: i32| Ok(errno::SPIPE))?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut caller: Caller<'_, VmState>, fd: i32, ptr: i32| {
        if fd != 1 && fd != 2 {
            return Ok(errno::BADF);
        }
        // filetype: character device (2); rights: fd_write (1 << 6).
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        Ok(if write(&mut caller, ptr, &stat) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "fd_fdstat_set_flags", |_c: Caller<'_, VmState>, _fd: i32, _flags: i32| Ok(errno::NOSYS))?;
    linker.func_wrap(WASI, "fd_prestat_get", |_c: Caller<'_, VmState>, _fd: i32, _ptr: i32| Ok(errno::BADF))?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_c: Caller<'_, VmState>, _fd: i32, _p: i32, _l: i32| Ok(errno::NOSYS))?;
    linker.func_wrap(WASI, "fd_filestat_get", |_c: Caller<'_, VmState>, _fd: i32, _p: i32| Ok(errno::BADF))?;
    linker.func_wrap(
        WASI,
        "path_open",
        |_c: Caller<'_, VmState>, _fd: i32, _df: i32, _p: i32, _pl: i32, _of: i32, _rb: i64, _ri: i64, _ff: i32, _ret: i32| {
            Ok(errno::NOENT)
        },
    )?;
    linker.func_wrap(WASI, "path_filestat_get", |_c: Caller<'_, VmState>, _fd: i32, _f: i32, _p: i32, _pl: i32, _b: i32| {
        Ok(errno::NOTSUP)
    })?;
    linker.func_wrap(WASI, "random_get", |mut caller: Caller<'_, VmState>, ptr: i32, len: i32| {
        if !(0..=1 << 20).contains(&len) {
            return Ok(errno::INVAL);
        }
        let bytes = {
            let mut p = lock(&caller.data().process);
            let mut rng = Rng::new(p.random_state);
            p.random_state = rng.next_u64();
            (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
        };
        Ok(if write(&mut caller, ptr, &bytes) { errno::SUCCESS } else { errno::FAULT })
    })?;
    linker.func_wrap(WASI, "sched_yield", |_c: Caller<'_, VmState>| Ok(errno::SUCCESS))?;
    linker.func_wrap(WASI, "poll_oneoff", |_c: Caller<'_, VmState>, _i: i32, _o: i32, _n: i32, _r: i32| Ok(errno::NOSYS))?;
    linker.func_wrap(WASI, "proc_exit", |_c: Caller<'_, VmState>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::format_err!("proc_exit({code}) called: a proxy-wasm VM must never exit"))
    })?;
    Ok(())
}
