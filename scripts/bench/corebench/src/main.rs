//! Runs `Limiter::check` natively on the plugin configurations the benchmark gives Envoy, and
//! reports per request: time, heap allocations, and every operation that the host glue
//! (`src/host/mod.rs`) turns into one proxy-wasm host call: header reads (the glue caches each
//! header per request, so only a request's first read of a name counts, and for a config that
//! reads several it fetches all at the first read; `:method` and `:path` are headers), property
//! reads, shared-data reads and writes; plus the calls the glue makes
//! around the core (the clock once, one `add_map_value` per response header or one
//! `send_http_response`; metrics are batched per tick, so none per request). Also measures
//! shared-data bytes per slot on the in-memory store that mirrors Envoy's map.
//!
//! Input (argument 1: a file, or the JSON itself): a JSON object `{name: {"config": {...}, "path": "...", "headers": {...},
//! "distinct_header": "x-client" | null, "requests": N}}`. Output: JSON on stdout.
//! `--wire FORM N K` weighs the Redis wire forms instead (`wire.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde_json::{json, Value};
use sluice::engine::{Limiter, Verdict};
use sluice::identity::RequestInfo;
use sluice::store::{MemStore, SharedStore, StoreError};

mod wire;

/// Counts allocations so the per-request figure is measured, not guessed.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Default)]
struct Calls {
    method: Cell<u64>,
    path: Cell<u64>,
    header: Cell<u64>,
    source_address: Cell<u64>,
    route_name: Cell<u64>,
    shared_get: Cell<u64>,
    shared_set: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// A request as the host glue sees it: each method is one host call in Envoy.
struct Req<'a> {
    method: String,
    path: String,
    headers: RefCell<BTreeMap<String, String>>,
    source: String,
    calls: &'a Calls,
    /// Header names already read during the current request (the glue's per-request cache).
    seen: RefCell<Vec<String>>,
    /// The glue reads every header in one call at the first read (`Limiter::reads_many_headers`).
    all_at_once: bool,
}

impl Req<'_> {
    /// Counts a header read as a host call only the first time in a request, as the glue does
    /// (only the very first read, when it reads all headers at once).
    fn read(&self, name: &str, counter: &Cell<u64>) {
        let mut seen = self.seen.borrow_mut();
        if self.all_at_once {
            if seen.is_empty() {
                bump(counter);
            }
            seen.push(name.to_string());
        } else if !seen.iter().any(|n| n == name) {
            seen.push(name.to_string());
            bump(counter);
        }
    }
}

impl RequestInfo for Req<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":method" => {
                self.read(":method", &self.calls.method);
                Some(self.method.clone().into_bytes())
            }
            ":path" => {
                self.read(":path", &self.calls.path);
                Some(self.path.clone().into_bytes())
            }
            _ => {
                self.read(name, &self.calls.header);
                self.headers.borrow().get(name).map(|v| v.clone().into_bytes())
            }
        }
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        self.header("cookie")
    }
    fn source_address(&self) -> Option<String> {
        bump(&self.calls.source_address);
        Some(self.source.clone())
    }
    fn route_name(&self) -> Option<String> {
        bump(&self.calls.route_name);
        Some("api".into())
    }
}

/// Envoy's shared data as the in-memory store that follows its rules, counting calls.
struct Store<'a> {
    inner: MemStore,
    calls: &'a Calls,
}

impl SharedStore for Store<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        bump(&self.calls.shared_get);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        bump(&self.calls.shared_set);
        self.inner.set(key, value, cas)
    }
}

fn run(spec: &Value) -> Result<Value, String> {
    let config = sluice::config::compile(&spec["config"]).map_err(|e| format!("config: {e:?}"))?;
    let limiter = Limiter::new(config);
    let n = spec["requests"].as_u64().unwrap_or(200_000);
    let distinct = spec["distinct_header"].as_str().map(str::to_string);
    let mut headers = BTreeMap::new();
    if let Some(map) = spec["headers"].as_object() {
        for (k, v) in map {
            headers.insert(k.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_string());
        }
    }
    let calls = Calls::default();
    let store = Store { inner: MemStore::default(), calls: &calls };
    let req = Req {
        method: "GET".into(),
        path: spec["path"].as_str().unwrap_or("/bench/x").to_string(),
        headers: RefCell::new(headers),
        source: "127.0.0.1:40000".into(),
        calls: &calls,
        seen: RefCell::new(Vec::new()),
        all_at_once: limiter.reads_many_headers(),
    };
    // Fixed epoch time advancing 10 µs per request, as a busy proxy's clock would.
    let t0: u64 = 1_800_000_000_000_000;
    let warm = (n / 10).max(1);
    let mut now = t0;
    let step = |i: u64, now: u64| -> Verdict {
        req.seen.borrow_mut().clear();
        if let Some(h) = &distinct {
            req.headers.borrow_mut().insert(h.clone(), format!("client-{i}"));
        }
        limiter.check(&req, &store, now)
    };
    for i in 0..warm {
        now += 10;
        std::hint::black_box(step(i, now));
    }
    let before = [
        &calls.method,
        &calls.path,
        &calls.header,
        &calls.source_address,
        &calls.route_name,
        &calls.shared_get,
        &calls.shared_set,
    ]
    .map(Cell::get);
    let (a0, b0) = (ALLOCS.load(Relaxed), ALLOC_BYTES.load(Relaxed));
    let (mut admitted, mut denied, mut headers_out, mut outcomes, mut created) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // (outcomes and created slots are reported for context: metrics cost no host call per request)
    let start = Instant::now();
    for i in warm..warm + n {
        now += 10;
        let v = step(i, now);
        outcomes += v.outcomes().len() as u64;
        created += v.outcomes().iter().filter(|o| o.created_slot).count() as u64;
        match &v {
            Verdict::Admit { headers, .. } => {
                admitted += 1;
                headers_out += headers.len() as u64;
            }
            Verdict::Deny { .. } => denied += 1,
        }
        std::hint::black_box(v);
    }
    let elapsed = start.elapsed();
    let (a1, b1) = (ALLOCS.load(Relaxed), ALLOC_BYTES.load(Relaxed));
    let after = [
        &calls.method,
        &calls.path,
        &calls.header,
        &calls.source_address,
        &calls.route_name,
        &calls.shared_get,
        &calls.shared_set,
    ]
    .map(Cell::get);
    let per = |x: u64| x as f64 / n as f64;
    let names = ["method", "path", "header", "source_address", "route_name", "shared_get", "shared_set"];
    let mut core_calls = serde_json::Map::new();
    let mut core_total = 0.0;
    for (i, name) in names.iter().enumerate() {
        let v = per(after[i] - before[i]);
        core_total += v;
        core_calls.insert((*name).into(), json!(v));
    }
    // Calls the glue makes around the core for every request (see src/host/mod.rs):
    // get_current_time once; add_map_value per response header when admitted,
    // send_http_response when denied. Metrics are batched and flushed by the tick.
    let glue = 1.0 + per(headers_out) + per(denied);
    let (keys, bytes) = store.inner.size();
    Ok(json!({
        "requests": n,
        "ns_per_request": elapsed.as_nanos() as f64 / n as f64,
        "allocations_per_request": per(a1 - a0),
        "allocated_bytes_per_request": per(b1 - b0),
        "admitted": admitted,
        "denied": denied,
        "core_host_calls": core_calls,
        "core_host_calls_total": core_total,
        "glue_host_calls": glue,
        "host_calls_total": core_total + glue,
        "response_headers_per_admit": if admitted > 0 { headers_out as f64 / admitted as f64 } else { 0.0 },
        "rule_outcomes_per_request": per(outcomes),
        "slots_created": created,
        "shared_keys": keys,
        "shared_bytes": bytes,
        "shared_bytes_per_key": if keys > 0 { bytes as f64 / keys as f64 } else { 0.0 },
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, form, n, k] = args.as_slice() {
        if flag == "--wire" {
            let parsed = n.parse().ok().zip(k.parse().ok()).ok_or(format!("N and K must be numbers, not {n:?} and {k:?}"));
            match parsed.and_then(|(n, k)| wire::run(form, n, k)) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("sluice-corebench --wire: {e}");
                    std::process::exit(2);
                }
            }
            return;
        }
    }
    let Some(path) = args.get(1).cloned() else {
        eprintln!("usage: sluice-corebench SPEC.json | sluice-corebench --wire upstash|resp|none N K");
        std::process::exit(2);
    };
    // Inline JSON is accepted too: compiled to wasm32-wasip1, this runs in a host with no files.
    let read = if path.trim_start().starts_with('{') { Ok(path.clone()) } else { std::fs::read_to_string(&path) };
    let text = match read {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let specs: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let mut out = serde_json::Map::new();
    for (name, spec) in specs.as_object().into_iter().flatten() {
        let r = run(spec).unwrap_or_else(|e| json!({"error": e}));
        out.insert(name.clone(), r);
    }
    println!("{}", Value::Object(out));
}
