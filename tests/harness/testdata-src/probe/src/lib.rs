//! A probe filter for the harness's self-tests: each request's `x-op` header picks one ABI
//! feature to exercise, and the result comes back in the response, so a test checks the host's
//! behaviour through the guest's eyes.
//!
//! Plugin configuration: `;`-separated words: `reject` (on_configure fails), `tick=<ms>`,
//! `redis` (calls proxy_redis_init for cluster `redis`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_redis_init(c: *const u8, cl: usize, u: *const u8, ul: usize, p: *const u8, pl: usize, timeout: u32) -> u32;
    fn proxy_redis_call(c: *const u8, cl: usize, q: *const u8, ql: usize, token: *mut u32) -> u32;
    #[link_name = "proxy_get_buffer_bytes"]
    fn get_buffer_raw(t: u32, start: usize, max: usize, ptr: *mut *mut u8, size: *mut usize) -> u32;
}

thread_local! {
    static PAUSED: RefCell<Vec<(u64, u32)>> = const { RefCell::new(Vec::new()) };
    static REDIS_TOKENS: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
    static RESULTS: RefCell<HashMap<u32, Vec<(String, String)>>> = RefCell::new(HashMap::new());
    static METRICS: RefCell<Option<(u32, u32)>> = const { RefCell::new(None) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: None }) });
}}

fn now_ns() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn stash(ctx: u32, name: &str, value: String) {
    RESULTS.with(|r| r.borrow_mut().entry(ctx).or_default().push((name.to_string(), value)));
}

fn reply(status: u32, body: &str, headers: Vec<(&str, &str)>) -> Action {
    let _ = hostcalls::send_http_response(status, headers, Some(body.as_bytes()));
    Action::Pause
}

struct Root {
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        log::info!("probe: vm_start with {size} bytes of vm configuration");
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        for word in config.split(';').map(str::trim).filter(|w| !w.is_empty()) {
            if word == "reject" {
                log::error!("probe: bad config: reject");
                return false;
            } else if let Some(ms) = word.strip_prefix("tick=") {
                let ms: u64 = ms.parse().unwrap_or(10);
                let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
            } else if word == "redis" {
                let c = "redis";
                let status = unsafe { proxy_redis_init(c.as_ptr(), c.len(), "".as_ptr(), 0, "".as_ptr(), 0, 50) };
                log::info!("probe: redis_init status {status}");
            }
        }
        let requests = hostcalls::define_metric(MetricType::Counter, "probe.requests").unwrap_or(0);
        let ticks = hostcalls::define_metric(MetricType::Counter, "probe.ticks").unwrap_or(0);
        METRICS.with(|m| *m.borrow_mut() = Some((requests, ticks)));
        self.queue = hostcalls::register_shared_queue("probe-q").ok();
        log::info!("probe: configured with {config:?}");
        true
    }

    fn on_tick(&mut self) {
        if let Some((_, ticks)) = METRICS.with(|m| *m.borrow()) {
            let _ = hostcalls::increment_metric(ticks, 1);
        }
        let now = now_ns();
        let due: Vec<u32> = PAUSED.with(|p| {
            let mut p = p.borrow_mut();
            let due = p.iter().filter(|(at, _)| *at <= now).map(|(_, c)| *c).collect();
            p.retain(|(at, _)| *at > now);
            due
        });
        for ctx in due {
            if hostcalls::set_effective_context(ctx).is_ok() {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            log::info!("probe: dequeued {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { id: context_id, op: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    op: String,
}

impl Http {
    fn h(&self, name: &str) -> Option<String> {
        self.get_http_request_header(name)
    }

    fn counter(&self, safe: bool) -> Action {
        let key = self.h("x-key").unwrap_or_else(|| "counter".to_string());
        for _ in 0..100 {
            let (value, cas) = match hostcalls::get_shared_data(&key) {
                Ok(v) => v,
                Err(s) => return reply(500, &format!("get: {s:?}"), vec![]),
            };
            let n = value.as_deref().and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
            let token = match (cas, safe) {
                (Some(c), _) => Some(c),
                // Creating: a token no fresh key holds makes a concurrent create fail visibly.
                (None, true) => Some(u32::MAX),
                (None, false) => None,
            };
            match hostcalls::set_shared_data(&key, Some(&n.to_le_bytes()), token) {
                Ok(()) => {
                    stash(self.id, "x-count", n.to_string());
                    return Action::Continue;
                }
                Err(Status::CasMismatch) => {
                    stash(self.id, "x-retried", "1".to_string());
                    continue;
                }
                Err(s) => return reply(500, &format!("set: {s:?}"), vec![]),
            }
        }
        reply(500, "gave up", vec![])
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if num_headers == 0 {
            let (code, msg) = match hostcalls::get_grpc_status() {
                Ok((c, m)) => (c, m.unwrap_or_default()),
                Err(_) => (0, String::new()),
            };
            reply(502, &format!("failed:{code}:{msg}"), vec![]);
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = if body_size > 0 {
            self.get_http_call_response_body(0, body_size).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        } else {
            String::new()
        };
        stash(self.id, "x-callout-status", status);
        stash(self.id, "x-callout-body", body);
        self.resume_http_request();
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root: u32, token: u32, status: u32, size: usize) {
    let Some(ctx) = REDIS_TOKENS.with(|t| t.borrow_mut().remove(&token)) else { return };
    if hostcalls::set_effective_context(ctx).is_err() {
        return;
    }
    if status != 0 {
        let _ = hostcalls::send_http_response(502, vec![], Some(format!("redis failed {status}").as_bytes()));
        return;
    }
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    let data = unsafe {
        if get_buffer_raw(9, 0, size, &mut ptr, &mut len) != 0 || ptr.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(ptr, len, len)
        }
    };
    stash(ctx, "x-redis", String::from_utf8_lossy(&data).replace("\r\n", "\\r\\n"));
    let _ = hostcalls::resume_http_request();
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        if let Some((requests, _)) = METRICS.with(|m| *m.borrow()) {
            let _ = hostcalls::increment_metric(requests, 1);
        }
        self.op = self.h("x-op").unwrap_or_default();
        stash(self.id, "x-probe-headers", format!("{num_headers}/{end_of_stream}"));
        match self.op.as_str() {
            "count" => self.counter(true),
            "count-naive" => self.counter(false),
            "get" => {
                let key = self.h("x-key").unwrap_or_default();
                match hostcalls::get_shared_data(&key) {
                    Ok((Some(v), cas)) => {
                        let cas = cas.unwrap_or(0).to_string();
                        reply(200, &String::from_utf8_lossy(&v), vec![("x-cas", &cas)])
                    }
                    Ok((None, Some(cas))) => reply(200, "", vec![("x-cas", &cas.to_string())]),
                    Ok((None, None)) => reply(404, "absent", vec![]),
                    Err(s) => reply(500, &format!("{s:?}"), vec![]),
                }
            }
            "set" => {
                let key = self.h("x-key").unwrap_or_default();
                let value = self.h("x-value").unwrap_or_default();
                let cas = self.h("x-cas").and_then(|c| c.parse().ok());
                match hostcalls::set_shared_data(&key, Some(value.as_bytes()), cas) {
                    Ok(()) => reply(200, "Ok", vec![]),
                    Err(s) => reply(409, &format!("{s:?}"), vec![]),
                }
            }
            "deny" => {
                let status = self.h("x-status").and_then(|s| s.parse().ok()).unwrap_or(429);
                reply(status, "denied", vec![("x-reason", "probe")])
            }
            "deny-continue" => {
                let _ = hostcalls::send_http_response(403, vec![], Some(b"no"));
                Action::Continue
            }
            "deny-twice" => {
                let first = hostcalls::send_http_response(401, vec![], Some(b"first"));
                let second = hostcalls::send_http_response(402, vec![], Some(b"second"));
                log::info!("probe: local replies {first:?} then {second:?}");
                Action::Pause
            }
            "pause" => {
                let delay: u64 = self.h("x-delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0);
                PAUSED.with(|p| p.borrow_mut().push((now_ns() + delay * 1_000_000, self.id)));
                Action::Pause
            }
            "callout" | "callout-bad" => {
                let cluster = if self.op == "callout-bad" {
                    "nowhere".to_string()
                } else {
                    self.h("x-cluster").unwrap_or_else(|| "backend".into())
                };
                let timeout: u64 = self.h("x-timeout-ms").and_then(|d| d.parse().ok()).unwrap_or(1000);
                let body = self.h("x-body").unwrap_or_default();
                let r = self.dispatch_http_call(
                    &cluster,
                    vec![(":method", "POST"), (":path", "/check"), (":authority", "backend"), ("x-from", "probe")],
                    Some(body.as_bytes()),
                    vec![],
                    Duration::from_millis(timeout),
                );
                match r {
                    Ok(_) => Action::Pause,
                    Err(s) => reply(500, &format!("dispatch: {s:?}"), vec![]),
                }
            }
            "redis" => {
                let words: Vec<String> = self.h("x-cmd").unwrap_or_else(|| "PING".into()).split(' ').map(String::from).collect();
                let mut q = format!("*{}\r\n", words.len());
                for w in &words {
                    q.push_str(&format!("${}\r\n{}\r\n", w.len(), w));
                }
                let c = "redis";
                let mut token = 0u32;
                let status = unsafe { proxy_redis_call(c.as_ptr(), c.len(), q.as_ptr(), q.len(), &mut token) };
                if status != 0 {
                    return reply(500, &format!("redis_call: {status}"), vec![]);
                }
                REDIS_TOKENS.with(|t| t.borrow_mut().insert(token, self.id));
                Action::Pause
            }
            "time" => reply(200, &now_ns().to_string(), vec![]),
            "prop" | "prop-int" => {
                let path = self.h("x-prop").unwrap_or_default();
                let path: Vec<&str> = path.split('.').collect();
                match hostcalls::get_property(path) {
                    Ok(Some(v)) if self.op == "prop-int" => {
                        let n = v.as_slice().try_into().map(i64::from_le_bytes).unwrap_or(-1);
                        reply(200, &n.to_string(), vec![])
                    }
                    Ok(Some(v)) => reply(200, &String::from_utf8_lossy(&v), vec![]),
                    Ok(None) => reply(404, "no property", vec![]),
                    Err(s) => reply(500, &format!("{s:?}"), vec![]),
                }
            }
            "log" => {
                let msg = self.h("x-msg").unwrap_or_default();
                match self.h("x-level").as_deref() {
                    Some("error") => log::error!("{msg}"),
                    Some("warn") => log::warn!("{msg}"),
                    Some("debug") => log::debug!("{msg}"),
                    _ => log::info!("{msg}"),
                }
                Action::Continue
            }
            "stdout" => {
                println!("probe says hi on stdout");
                eprintln!("probe says hi on stderr");
                Action::Continue
            }
            "queue" => {
                let value = self.h("x-value").unwrap_or_default();
                if let Ok(Some(q)) = hostcalls::resolve_shared_queue("", "probe-q") {
                    let _ = hostcalls::enqueue_shared_queue(q, Some(value.as_bytes()));
                }
                Action::Continue
            }
            "rewrite" => {
                self.set_http_request_header("x-added", Some("by-probe"));
                self.set_http_request_header("x-remove-me", None);
                Action::Continue
            }
            "panic" => panic!("probe panicked on purpose"),
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        stash(self.id, "x-request-body", format!("{}/{end_of_stream}", String::from_utf8_lossy(&body)));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-probe", Some("seen"));
        let stashed = RESULTS.with(|r| r.borrow_mut().remove(&self.id)).unwrap_or_default();
        for (k, v) in stashed {
            self.add_http_response_header(&k, &v);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        log::debug!("probe: on_log ctx={} status={status} op={}", self.id, self.op);
    }
}

#[allow(dead_code)]
fn unused(_: MapType) {}
