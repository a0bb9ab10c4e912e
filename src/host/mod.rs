//! Host glue: the only code that names `proxy_wasm`. It turns Envoy callbacks into calls on the
//! pure core ([`crate::engine::Limiter`]) and the core's verdicts into host calls.
//!
//! Every host call here goes through `hostcalls` and its `Result`: the SDK's trait helpers
//! panic on a host error, and a panic traps the VM.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::clock::{self, Clock};
use crate::config::Transport;
use crate::engine::{Limiter, Pending, Resumed, Step, Verdict};
use crate::headers;
use crate::identity::RequestInfo;
use crate::redis::wire;
use crate::store::{SharedStore, StoreError};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// How often queued requests are looked at, when a rule queues. Releases are at most this late.
const QUEUE_TICK: Duration = Duration::from_millis(5);
/// How often counted metrics reach Envoy otherwise. Batching saves a host call per request;
/// Envoy's stats lag by at most this much.
const FLUSH_TICK: Duration = Duration::from_millis(100);

thread_local! {
    /// This worker's clock: host time is wall-clock and may step backwards.
    static CLOCK: Cell<Clock> = Cell::new(Clock::default());
    /// Requests paused by `leaky_bucket_queue`, by release time, then arrival (FIFO among equals).
    static QUEUE: RefCell<BinaryHeap<Reverse<(u64, u64, u32)>>> = const { RefCell::new(BinaryHeap::new()) };
    static QUEUE_SEQ: Cell<u64> = const { Cell::new(0) };
    /// Metric increments not yet handed to Envoy: (metric id, count).
    static UNFLUSHED: RefCell<Vec<(u32, i64)>> = const { RefCell::new(Vec::new()) };
}

fn add_to_metric(id: u32) {
    UNFLUSHED.with(|u| {
        let mut u = u.borrow_mut();
        match u.iter_mut().find(|(i, _)| *i == id) {
            Some((_, n)) => *n += 1,
            None => u.push((id, 1)),
        }
    });
}

fn flush_metrics() {
    UNFLUSHED.with(|u| {
        for (id, n) in u.borrow_mut().iter_mut() {
            if *n > 0 && hostcalls::increment_metric(*id, *n).is_ok() {
                *n = 0;
            }
        }
    });
}

fn host_us() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The time in epoch microseconds: never earlier than a time already returned on this worker,
/// and running on after the host's clock steps back (see [`crate::clock`]).
fn now_us() -> u64 {
    let host = host_us();
    CLOCK.with(|c| {
        let mut clock = c.get();
        let t = clock.now(host);
        c.set(clock);
        t
    })
}

/// Brings this worker's clock up to the proxy's high-water mark in shared data, and raises the
/// mark to it: workers then agree within one tick, and a new VM resumes where the last left.
/// Best effort: a lost race only means another worker wrote a mark at least as late.
fn sync_clock(key: &str) {
    let (mark, cas) = match hostcalls::get_shared_data(key) {
        Ok((Some(v), Some(cas))) => (clock::decode_mark(&v).unwrap_or(0), cas),
        _ => (0, crate::store::CREATE_TOKEN),
    };
    let host = host_us();
    let now = CLOCK.with(|c| {
        let mut clock = c.get();
        let t = clock.catch_up(host, mark);
        c.set(clock);
        t
    });
    if now > mark {
        let _ = hostcalls::set_shared_data(key, Some(&clock::encode_mark(now)), Some(cas));
    }
}

/// Envoy shared data of this VM.
struct EnvoyShared;

impl SharedStore for EnvoyShared {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok(_) | Err(Status::NotFound) => Ok(None),
            Err(status) => Err(StoreError::Unavailable(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Unavailable(format!("set_shared_data: {status:?}"))),
        }
    }
}

/// Counters per rule, visible in Envoy's stats as `wasmcustom.sluice.rule.<name>.<what>`.
#[derive(Default)]
struct Metrics {
    /// (allowed, limited, shadow_limited, store_errors) per rule; `None` when the host has no
    /// metrics.
    per_rule: Vec<Option<[u32; 4]>>,
    /// Shared-data slots created, all rules: the store's key count (each key is a few dozen
    /// bytes; the cap is rules × `local.max_clients`).
    slots_created: Option<u32>,
}

impl Metrics {
    fn define(limiter: &Limiter) -> Self {
        let per_rule = limiter
            .config
            .rules
            .iter()
            .map(|rule| {
                let def =
                    |what: &str| hostcalls::define_metric(MetricType::Counter, &format!("sluice.rule.{}.{what}", rule.name)).ok();
                Some([def("allowed")?, def("limited")?, def("shadow_limited")?, def("store_errors")?])
            })
            .collect();
        let slots_created = hostcalls::define_metric(MetricType::Counter, "sluice.local.slots_created").ok();
        Metrics { per_rule, slots_created }
    }

    fn count(&self, limiter: &Limiter, verdict: &Verdict) {
        for o in verdict.outcomes() {
            let Some(Some(ids)) = self.per_rule.get(o.rule) else { continue };
            let shadow = limiter.config.rules.get(o.rule).is_some_and(|r| r.shadow);
            let id = match (o.allowed, shadow) {
                (true, _) => ids[0],
                (false, false) => ids[1],
                (false, true) => ids[2],
            };
            add_to_metric(id);
            if o.store_error {
                add_to_metric(ids[3]);
            }
            if let (true, Some(id)) = (o.created_slot, self.slots_created) {
                add_to_metric(id);
            }
        }
    }
}

struct Shared {
    limiter: Limiter,
    metrics: Metrics,
    /// Shared-data key of the clock's high-water mark.
    clock_key: String,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) => b,
            Ok(None) => Vec::new(),
            Err(status) => {
                log::error!("sluice: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match crate::config::compile_json(&bytes) {
            Ok(config) => {
                if !cfg!(feature = "redis-callout")
                    && config.redis.as_ref().is_some_and(|r| r.transport == Transport::RedisCallout)
                {
                    log::error!(
                        "sluice: invalid configuration: redis.transport: \"redis_callout\": this build reaches Redis \
                         through HTTP callouts; expected \"http\" (Redis callouts need Higress and the \
                         sluice-redis-callout.wasm build)"
                    );
                    return false;
                }
                let limiter = Limiter::new(config);
                let tick = if limiter.queues() { QUEUE_TICK } else { FLUSH_TICK };
                if hostcalls::set_tick_period(tick).is_err() {
                    log::error!("sluice: cannot set the tick period (queued requests, metrics)");
                    return false;
                }
                #[cfg(feature = "redis-callout")]
                if let Some(r) = limiter.config.redis.as_ref().filter(|r| r.transport == Transport::RedisCallout) {
                    if let Err(e) = callout::init(&r.cluster, r.token.as_deref(), r.timeout_ms) {
                        log::error!("sluice: invalid configuration: redis.cluster: {:?}: {e}", r.cluster);
                        return false;
                    }
                }
                let metrics = Metrics::define(&limiter);
                log::info!("sluice: configured {} rule(s)", limiter.config.rules.len());
                let clock_key = format!("{}:clock", limiter.config.namespace);
                sync_clock(&clock_key);
                let shared = Rc::new(Shared { limiter, metrics, clock_key });
                SHARED.with(|s| *s.borrow_mut() = Some(shared.clone()));
                self.shared = Some(shared);
                true
            }
            Err(errors) => {
                // One log line per problem, then a summary Envoy shows when it rejects the config.
                for e in errors.iter() {
                    log::error!("sluice: invalid configuration: {e}");
                }
                log::error!("sluice: configuration rejected with {} error(s)", errors.len());
                false
            }
        }
    }

    fn on_tick(&mut self) {
        flush_metrics();
        if let Some(shared) = &self.shared {
            sync_clock(&shared.clock_key);
        }
        let now = now_us();
        loop {
            let due = QUEUE.with(|q| {
                let mut q = q.borrow_mut();
                match q.peek() {
                    Some(Reverse((at, _, _))) if *at <= now => q.pop().map(|Reverse((_, _, ctx))| ctx),
                    _ => None,
                }
            });
            let Some(ctx) = due else { break };
            // The request may be gone (client hung up): then there is nothing to resume.
            if hostcalls::set_effective_context(ctx).is_ok() {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { shared: self.shared.clone(), context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request as the core sees it: every value read from the host on demand, and each header
/// at most once (several rules often ask for the same identity header).
struct HostRequest {
    /// Values read so far (`None`: absent).
    headers: RefCell<Vec<(String, Option<Vec<u8>>)>>,
    /// Read every header at the next ask (the config reads several per request); cleared once
    /// tried, so a failed read of them all is not repeated.
    all_at_once: Cell<bool>,
    /// `headers` holds every request header: a name not in it is absent.
    complete: Cell<bool>,
}

impl HostRequest {
    fn new(limiter: &Limiter) -> Self {
        HostRequest {
            headers: RefCell::default(),
            all_at_once: Cell::new(limiter.reads_many_headers()),
            complete: Cell::new(false),
        }
    }

    fn cached(&self, name: &str) -> Option<Option<Vec<u8>>> {
        self.headers.borrow().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

impl RequestInfo for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        if self.all_at_once.replace(false) {
            if let Some(all) = request_header_pairs() {
                // In order, so a repeated name answers with its first value, as a single read does.
                *self.headers.borrow_mut() = all.into_iter().map(|(k, v)| (k, Some(v))).collect();
                self.complete.set(true);
            }
        }
        if let Some(v) = self.cached(name) {
            return v;
        }
        if self.complete.get() {
            return None;
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
/// that is not UTF-8, which a client can send.
fn request_header_pairs() -> Option<Vec<(String, Vec<u8>)>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's proxy_on_memory_allocate
    // (Rust's global allocator, align 1), which we then own.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut len) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: see above: `data` holds `len` initialized bytes with capacity `len`.
    let bytes = unsafe { Vec::from_raw_parts(data, len, len) };
    headers::parse_pairs(&bytes)
}

fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// A request's context id, and the config it started with.
struct Http {
    shared: Option<Rc<Shared>>,
    context_id: u32,
}

/// Header fields, in order.
type Fields = Vec<(String, String)>;

thread_local! {
    /// The worker's current config, for callbacks that arrive at the root (Higress' Redis
    /// callout answers there).
    static SHARED: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
    /// Per request context: rate limit fields to add to the response.
    static RESPONSE_HEADERS: RefCell<Vec<(u32, Fields)>> = const { RefCell::new(Vec::new()) };
    /// Per request context: the decision waiting for Redis, and its deadline (epoch µs).
    static PENDING: RefCell<Vec<(u32, Pending, u64)>> = const { RefCell::new(Vec::new()) };
}

fn take_pending(ctx: u32) -> Option<(Pending, u64)> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|(c, ..)| *c == ctx)?;
        let (_, pending, deadline) = p.swap_remove(i);
        Some((pending, deadline))
    })
}

fn take_response_headers(ctx: u32) -> Vec<(String, String)> {
    RESPONSE_HEADERS.with(|h| {
        let mut h = h.borrow_mut();
        match h.iter().position(|(c, _)| *c == ctx) {
            Some(i) => h.swap_remove(i).1,
            None => Vec::new(),
        }
    })
}

/// What the stream does after a verdict.
enum Flow {
    Continue,
    /// Answered locally, waiting for Redis, or queued for release by the tick.
    Hold,
}

/// Carries out a verdict for request `ctx`.
fn apply(shared: &Shared, ctx: u32, verdict: Verdict) -> Flow {
    shared.metrics.count(&shared.limiter, &verdict);
    match verdict {
        Verdict::Admit { headers, delay_ms, .. } => {
            if !headers.is_empty() {
                RESPONSE_HEADERS.with(|h| h.borrow_mut().push((ctx, headers)));
            }
            if delay_ms == 0 {
                return Flow::Continue;
            }
            let release = now_us().saturating_add(delay_ms.saturating_mul(1000));
            let seq = QUEUE_SEQ.with(|s| {
                let n = s.get();
                s.set(n + 1);
                n
            });
            QUEUE.with(|q| q.borrow_mut().push(Reverse((release, seq, ctx))));
            Flow::Hold
        }
        Verdict::Deny { response, .. } => {
            let headers: Vec<(&str, &str)> = response.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if let Err(status) = hostcalls::send_http_response(u32::from(response.status), headers, Some(&response.body)) {
                log::warn!("sluice: cannot send the limited response: {status:?}");
                return Flow::Continue;
            }
            Flow::Hold
        }
    }
}

/// Sends `pending`'s commands to Redis for request `ctx`, giving them only the time left before
/// `deadline_us`. On failure the caller decides without Redis.
fn dispatch(shared: &Shared, ctx: u32, pending: Pending, deadline_us: u64) -> Result<(), (Pending, String)> {
    let Some(spec) = shared.limiter.config.redis.as_ref() else {
        return Err((pending, "no redis block".into()));
    };
    let Some(timeout_ms) = clock::call_timeout_ms(now_us(), deadline_us) else {
        return Err((pending, format!("less than 1 ms left of redis.timeout_ms = {}", spec.timeout_ms)));
    };
    #[cfg(feature = "redis-callout")]
    if spec.transport == Transport::RedisCallout {
        return match callout::call_all(&spec.cluster, &pending.commands, ctx) {
            Ok(()) => {
                PENDING.with(|p| p.borrow_mut().push((ctx, pending, deadline_us)));
                Ok(())
            }
            Err(why) => Err((pending, why)),
        };
    }
    let body = wire::upstash_pipeline(&pending.commands);
    let authority = spec.authority.as_deref().unwrap_or(&spec.cluster);
    let bearer = spec.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers =
        vec![(":method", "POST"), (":path", "/pipeline"), (":authority", authority), ("content-type", "application/json")];
    if let Some(b) = bearer.as_deref() {
        headers.push(("authorization", b));
    }
    let timeout = Duration::from_millis(timeout_ms);
    match hostcalls::dispatch_http_call(&spec.cluster, headers, Some(&body), Vec::new(), timeout) {
        Ok(_token) => {
            PENDING.with(|p| p.borrow_mut().push((ctx, pending, deadline_us)));
            Ok(())
        }
        Err(status) => Err((pending, format!("dispatch_http_call to cluster {:?}: {status:?}", spec.cluster))),
    }
}

/// Continues request `ctx` after Redis answered (or failed): a verdict, or one more call.
fn resume(shared: &Shared, ctx: u32, pending: Pending, deadline_us: u64, replies: Result<Vec<wire::Reply>, String>) -> Flow {
    let mut step = shared.limiter.resume(pending, replies, &EnvoyShared, now_us());
    loop {
        match step {
            Resumed::Done(verdict) => return apply(shared, ctx, verdict),
            Resumed::Retry(p) => match dispatch(shared, ctx, p, deadline_us) {
                Ok(()) => return Flow::Hold,
                Err((p, why)) => step = shared.limiter.resume(p, Err(why), &EnvoyShared, now_us()),
            },
        }
    }
}

/// Resumes a paused request after `resume` (from a callback, not a filter callback).
fn continue_if(flow: Flow) {
    if let Flow::Continue = flow {
        let _ = hostcalls::resume_http_request();
    }
}

/// Reads an HTTP callout's reply: the pipeline's replies, or why there are none.
fn callout_replies(num_headers: usize, body_size: usize, expected: usize) -> Result<Vec<wire::Reply>, String> {
    if num_headers == 0 {
        // Envoy's way of saying the call failed: timeout, reset, or no healthy host.
        return Err("no response from the Redis endpoint (timeout or connection failure)".into());
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status").ok().flatten().unwrap_or_default();
    // A body of size 0 must not be read: the SDK fails on that status.
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
    };
    if status != b"200" {
        let status = String::from_utf8_lossy(&status);
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(format!("Redis endpoint answered HTTP {status}: {text}"));
    }
    wire::upstash_replies(&body, expected).map_err(|e| e.to_string())
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let (Some(shared), Some((pending, deadline))) = (self.shared.clone(), take_pending(self.context_id)) else { return };
        let replies = callout_replies(num_headers, body_size, pending.commands.len());
        continue_if(resume(&shared, self.context_id, pending, deadline, replies));
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A request that ended early (client gone) leaves nothing behind, and a probe it was
        // making frees its place in the breaker.
        if let (Some(shared), Some((pending, _))) = (&self.shared, take_pending(self.context_id)) {
            shared.limiter.abandon(&pending, &EnvoyShared);
        }
        let _ = take_response_headers(self.context_id);
        #[cfg(feature = "redis-callout")]
        callout::forget(self.context_id);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let now = now_us();
        let ctx = self.context_id;
        let flow = match shared.limiter.start(&HostRequest::new(&shared.limiter), &EnvoyShared, now) {
            Step::Done(verdict) => apply(&shared, ctx, verdict),
            Step::Redis(pending) => {
                let timeout_us = shared.limiter.config.redis.as_ref().map_or(0, |r| r.timeout_ms.saturating_mul(1000));
                let deadline = now.saturating_add(timeout_us);
                match dispatch(&shared, ctx, pending, deadline) {
                    Ok(()) => Flow::Hold,
                    Err((pending, why)) => resume(&shared, ctx, pending, deadline, Err(why)),
                }
            }
        };
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Hold => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in take_response_headers(self.context_id) {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, &name, &value);
        }
        Action::Continue
    }
}

/// Higress' Redis callout: answers arrive at the root context with the call's token.
#[cfg(feature = "redis-callout")]
mod callout {
    use super::*;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_redis_init(
            cluster: *const u8,
            cluster_size: usize,
            username: *const u8,
            username_size: usize,
            password: *const u8,
            password_size: usize,
            timeout_ms: u32,
        ) -> u32;
        fn proxy_redis_call(cluster: *const u8, cluster_size: usize, query: *const u8, query_size: usize, token: *mut u32)
            -> u32;
        fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    }

    /// Buffer type of a Redis call's response (Higress).
    const REDIS_CALL_RESPONSE: u32 = 9;

    /// One request's Redis calls in flight: a reply slot per command, filled as answers arrive.
    struct InFlight {
        ctx: u32,
        /// Call token per command, in command order.
        tokens: Vec<u32>,
        replies: Vec<Option<wire::Reply>>,
    }

    thread_local! {
        static IN_FLIGHT: RefCell<Vec<InFlight>> = const { RefCell::new(Vec::new()) };
    }

    /// Connects the worker to the Redis cluster (`redis.token` is the password).
    pub fn init(cluster: &str, password: Option<&str>, timeout_ms: u64) -> Result<(), String> {
        let password = password.unwrap_or("");
        // SAFETY: every pointer and length describes a live byte slice for the call's duration.
        let status = unsafe {
            proxy_redis_init(
                cluster.as_ptr(),
                cluster.len(),
                "".as_ptr(),
                0,
                password.as_ptr(),
                password.len(),
                u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(format!("proxy_redis_init({cluster:?}) returned status {status}"))
        }
    }

    fn call(cluster: &str, query: &[u8]) -> Result<u32, String> {
        let mut token = 0u32;
        // SAFETY: as above; `token` outlives the call.
        let status = unsafe { proxy_redis_call(cluster.as_ptr(), cluster.len(), query.as_ptr(), query.len(), &mut token) };
        if status != 0 {
            return Err(format!("proxy_redis_call({cluster:?}) returned status {status}"));
        }
        Ok(token)
    }

    /// Sends each command as its own call: a Redis callout carries one command and is answered
    /// with one reply, so a request's rules go out side by side and are resumed when the last
    /// answer is in. Calls already sent when a later one cannot be are forgotten: their answers
    /// find no request and are dropped.
    pub fn call_all(cluster: &str, commands: &[Vec<String>], ctx: u32) -> Result<(), String> {
        forget(ctx);
        let mut tokens = Vec::with_capacity(commands.len());
        for c in commands {
            tokens.push(call(cluster, &wire::resp_commands(std::slice::from_ref(c)))?);
        }
        let replies = vec![None; tokens.len()];
        IN_FLIGHT.with(|f| f.borrow_mut().push(InFlight { ctx, tokens, replies }));
        Ok(())
    }

    /// Drops what request `ctx` still waits for.
    pub fn forget(ctx: u32) {
        IN_FLIGHT.with(|f| f.borrow_mut().retain(|i| i.ctx != ctx));
    }

    fn response(size: usize) -> Option<Vec<u8>> {
        if size == 0 {
            return None;
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: the host writes a buffer it allocated through the SDK's
        // proxy_on_memory_allocate (Rust's global allocator, align 1), which we then own.
        let status = unsafe { proxy_get_buffer_bytes(REDIS_CALL_RESPONSE, 0, size, &mut data, &mut len) };
        if status != 0 || data.is_null() {
            return None;
        }
        // SAFETY: see above: `data` holds `len` initialized bytes with capacity `len`.
        Some(unsafe { Vec::from_raw_parts(data, len, len) })
    }

    /// Files one answer. Returns the request and its replies once all are in, or the failure.
    fn file(token: u32, status: u32, size: usize) -> Option<(u32, Result<Vec<wire::Reply>, String>)> {
        IN_FLIGHT.with(|f| {
            let mut f = f.borrow_mut();
            // The request waiting for this token, and which of its commands it answers.
            let (i, k) = f.iter().enumerate().find_map(|(i, e)| e.tokens.iter().position(|t| *t == token).map(|k| (i, k)))?;
            let reply = if status != 0 {
                Err(format!("Redis callout failed with status {status}"))
            } else {
                match response(size) {
                    Some(bytes) => match wire::resp_replies(&bytes, 1) {
                        Ok(mut r) => r.pop().ok_or_else(|| "no reply".to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("empty Redis callout response".into()),
                }
            };
            match reply {
                Err(why) => Some((f.swap_remove(i).ctx, Err(why))),
                Ok(r) => {
                    f[i].replies[k] = Some(r);
                    if f[i].replies.iter().any(Option::is_none) {
                        return None;
                    }
                    let done = f.swap_remove(i);
                    Some((done.ctx, Ok(done.replies.into_iter().flatten().collect())))
                }
            }
        })
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_redis_call_response(_root_context_id: u32, token: u32, status: u32, size: usize) {
        let Some((ctx, replies)) = file(token, status, size) else { return };
        let Some(shared) = SHARED.with(|s| s.borrow().clone()) else { return };
        if hostcalls::set_effective_context(ctx).is_err() {
            let _ = take_pending(ctx);
            return;
        }
        let Some((pending, deadline)) = take_pending(ctx) else { return };
        continue_if(resume(&shared, ctx, pending, deadline, replies));
    }
}
