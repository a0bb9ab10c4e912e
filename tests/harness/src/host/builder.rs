//! [`HostBuilder`]: the module, its configuration and handlers; and starting every worker's VM
//! and root context, as Envoy does on each worker thread before it serves a request.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{CallHook, Module, Store};

use super::engine::{block_on, check_imports, engine, linker, load_module};
use super::guest::{run_call, typed, Exports, GuestCall};
use super::schedule::Sched;
use super::time::Timer;
use super::{CalloutFn, Host, RedisFn, UpstreamFn, Worker};
use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::http::{Callout, CalloutReply, HttpResponse, RedisCall, RedisReply, UpstreamRequest};
use crate::shared::Process;
use crate::vm::{Crossings, Plugin, VmState};
use crate::HarnessError;

/// Builds a [`Host`]: the module, its plugin configuration, the number of workers, handlers.
pub struct HostBuilder {
    wasm: Option<PathBuf>,
    plugin: Plugin,
    workers: usize,
    clock: Clock,
    seed: u64,
    strict: bool,
    properties: Vec<(String, Vec<u8>)>,
    upstream: Option<UpstreamFn>,
    callouts: Option<CalloutFn>,
    redis: Option<RedisFn>,
    max_wait: Duration,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            wasm: None,
            plugin: Plugin {
                name: "sluice".to_string(),
                root_id: "sluice".to_string(),
                vm_id: "sluice".to_string(),
                configuration: Vec::new(),
                vm_configuration: Vec::new(),
                clusters: Default::default(),
                log_level: LogLevel::Info,
                env: Vec::new(),
            },
            workers: 1,
            clock: Clock::default(),
            seed: 1,
            strict: false,
            properties: Vec::new(),
            upstream: None,
            callouts: None,
            redis: None,
            max_wait: Duration::from_secs(600),
        }
    }
}

impl HostBuilder {
    /// The `.wasm` file to load.
    pub fn wasm(mut self, path: impl AsRef<Path>) -> Self {
        self.wasm = Some(path.as_ref().to_path_buf());
        self
    }

    /// The plugin configuration (`proxy_on_configure`), e.g. the filter's JSON.
    pub fn config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.plugin.configuration = bytes.into();
        self
    }

    /// The VM configuration (`proxy_on_vm_start`).
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.plugin.vm_configuration = bytes.into();
        self
    }

    /// Number of workers: one VM each, all sharing one shared-data store (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    pub fn vm_id(mut self, id: &str) -> Self {
        self.plugin.vm_id = id.to_string();
        self
    }

    pub fn root_id(mut self, id: &str) -> Self {
        self.plugin.root_id = id.to_string();
        self
    }

    pub fn plugin_name(mut self, name: &str) -> Self {
        self.plugin.name = name.to_string();
        self
    }

    /// Declares an upstream cluster. Once any is declared, callouts to others fail with
    /// `BAD_ARGUMENT` as in Envoy; with none declared every cluster is accepted.
    pub fn cluster(mut self, name: &str) -> Self {
        self.plugin.clusters.insert(name.to_string());
        self
    }

    /// Shares a clock (e.g. with another host); by default each host has its own.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Seeds WASI randomness.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The level `proxy_get_log_level` reports (default info, as Envoy's).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.plugin.log_level = level;
        self
    }

    /// An environment variable the VM sees (none by default).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.plugin.env.push((key.to_string(), value.to_string()));
        self
    }

    /// A property every request has unless it sets its own (dotted path).
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> Self {
        self.properties.push((path.to_string(), value.into()));
        self
    }

    /// Refuses modules that import gRPC calls (which the harness does not emulate) at build
    /// time, instead of trapping when one is called.
    pub fn strict_imports(mut self) -> Self {
        self.strict = true;
        self
    }

    /// What the upstream answers (default: 200 with body `upstream`).
    pub fn upstream(mut self, f: impl FnMut(&UpstreamRequest) -> HttpResponse + 'static) -> Self {
        self.upstream = Some(Box::new(f));
        self
    }

    /// Answers HTTP callouts (default: every callout times out).
    pub fn on_http_call(mut self, f: impl FnMut(&Callout) -> CalloutReply + 'static) -> Self {
        self.callouts = Some(Box::new(f));
        self
    }

    /// Answers Redis calls (default: every call times out).
    pub fn on_redis_call(mut self, f: impl FnMut(&RedisCall) -> RedisReply + 'static) -> Self {
        self.redis = Some(Box::new(f));
        self
    }

    /// How much harness time `send` and `run` let pass while requests wait (default 10 min).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Loads the module, starts every worker's VM and configures its root context, as Envoy
    /// does on each worker thread. A rejected configuration is an error carrying the logs.
    pub fn build(self) -> Result<Host, HarnessError> {
        let path = self.wasm.clone().ok_or(HarnessError::NoModule)?;
        let module = load_module(&path)?;
        check_imports(&module, self.strict)?;
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !module.exports().any(|e| abi.contains(&e.name())) {
            return Err(HarnessError::MissingExport("proxy_abi_version_0_2_1 (or _0_2_0)".to_string()));
        }
        if !module.exports().any(|e| e.name() == "proxy_on_memory_allocate" || e.name() == "malloc") {
            return Err(HarnessError::MissingExport("proxy_on_memory_allocate (or malloc)".to_string()));
        }
        let process = Arc::new(Mutex::new(Process { random_state: self.seed, ..Process::default() }));
        let plugin = Arc::new(self.plugin);
        let mut workers = Vec::with_capacity(self.workers);
        for w in 0..self.workers {
            workers.push(new_worker(&module, w, &plugin, &process, &self.clock)?);
        }
        let mut host = Host {
            module,
            retired: Crossings::default(),
            workers,
            process,
            clock: self.clock,
            plugin,
            properties: self.properties,
            requests: Vec::new(),
            by_ctx: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            callouts: Vec::new(),
            pending_calls: HashMap::new(),
            delayed: HashMap::new(),
            redis_calls: Vec::new(),
            pending_redis: HashMap::new(),
            upstream: self.upstream.unwrap_or_else(|| Box::new(|_| HttpResponse::ok().body("upstream"))),
            on_callout: self.callouts.unwrap_or_else(|| Box::new(|_| CalloutReply::Timeout)),
            on_redis: self.redis.unwrap_or_else(|| Box::new(|_| RedisReply::Timeout)),
            sched: Sched::InOrder,
            next_worker: 0,
            traps: Vec::new(),
            max_wait: self.max_wait,
        };
        for w in 0..host.workers.len() {
            host.start_root(w)?;
        }
        Ok(host)
    }
}

impl Host {
    /// Starts worker `w`'s VM afresh, as Envoy does after a trap under `FAIL_RELOAD`: a new
    /// instance of the module, started and configured, beside the process's shared data as it
    /// is. The worker must have nothing outstanding (every request it served complete, no call
    /// of its own waiting), unless it trapped: a VM's streams and calls end with it.
    pub fn restart_worker(&mut self, w: usize) -> Result<(), HarnessError> {
        let trapped = self.workers.get(w).is_some_and(|wk| wk.failed.is_some());
        let busy = self.requests.iter().any(|r| r.worker == w && !r.complete)
            || self.pending_calls.keys().chain(self.pending_redis.keys()).any(|(cw, _)| *cw == w);
        let Some(old) = self.workers.get(w).filter(|wk| trapped || (!busy && wk.queue.is_empty() && wk.inflight.is_none()))
        else {
            return Err(HarnessError::Internal(format!("worker {w} has requests or calls outstanding")));
        };
        // The old VM's ticks must not wake the new one, nor its calls' timers and held replies
        // reach the new one's calls (tokens start again at 1).
        let gen = old.tick_gen + 1;
        self.retired = self.retired + self.worker_crossings(w);
        self.delayed.retain(|(cw, _), _| *cw != w);
        self.timers.retain(|t| match t.0 .2 {
            Timer::CallTimeout { worker, .. } | Timer::CallReplyDue { worker, .. } | Timer::RedisTimeout { worker, .. } => {
                worker != w
            }
            Timer::Tick { .. } => true,
        });
        let worker = new_worker(&self.module, w, &self.plugin, &self.process, &self.clock)?;
        self.workers[w] = Worker { tick_gen: gen, ..worker };
        self.by_ctx.retain(|(cw, _), _| *cw != w);
        let started = self.start_root(w);
        if let Err(e) = &started {
            self.fail_worker(w, e.to_string());
        }
        started
    }

    fn start_root(&mut self, w: usize) -> Result<(), HarnessError> {
        let root = self.workers[w].root;
        let vm_size = self.plugin.vm_configuration.len() as u32;
        let size = self.plugin.configuration.len() as u32;
        self.call_now(w, GuestCall::ContextCreate { ctx: root, parent: 0 })?;
        if self.call_now(w, GuestCall::VmStart { root, size: vm_size })? == 0 {
            return Err(HarnessError::VmStartRejected { worker: w, logs: self.logs() });
        }
        if self.call_now(w, GuestCall::Configure { root, size })? == 0 {
            return Err(HarnessError::ConfigRejected { worker: w, logs: self.logs() });
        }
        Ok(())
    }

    /// Runs a root callback to completion right away (used while starting).
    fn call_now(&mut self, w: usize, call: GuestCall) -> Result<i32, HarnessError> {
        let worker = &mut self.workers[w];
        let store = worker.store.as_mut().ok_or_else(|| HarnessError::Internal("worker busy".into()))?;
        let ex = worker.ex.clone();
        let r = block_on(run_call(store, &ex, call));
        match r {
            Ok(v) => {
                self.after_step(w, None, v);
                Ok(v)
            }
            Err(e) => {
                let message = format!("{e:?}");
                self.fail_worker(w, message.clone());
                Err(HarnessError::Trap { worker: w, message })
            }
        }
    }
}

/// Worker `w`'s VM: the module instantiated in a store of its own, its start functions run and
/// its root context made (not yet started: [`Host::start_root`]).
fn new_worker(
    module: &Module,
    w: usize,
    plugin: &Arc<Plugin>,
    process: &Arc<Mutex<Process>>,
    clock: &Clock,
) -> Result<Worker, HarnessError> {
    let (engine, linker) = (engine()?, linker()?);
    let mut store = Store::new(engine, VmState::new(w, plugin.clone(), process.clone(), clock.clone()));
    store.set_fuel(u64::MAX).map_err(|e| HarnessError::Engine(e.to_string()))?;
    store.call_hook(|mut s, hook| {
        let c = &mut s.data_mut().crossings;
        match hook {
            CallHook::CallingWasm => c.vm_entries += 1,
            CallHook::CallingHost => c.host_calls += 1,
            CallHook::ReturningFromWasm | CallHook::ReturningFromHost => {}
        }
        Ok(())
    });
    let instance =
        block_on(linker.instantiate_async(&mut store, module)).map_err(|e| HarnessError::Instantiate(format!("{e:#}")))?;
    let memory = instance.get_memory(&mut store, "memory");
    let malloc = match typed::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate")? {
        Some(f) => Some(f),
        None => typed::<i32, i32>(&mut store, &instance, "malloc")?,
    };
    store.data_mut().memory = memory;
    store.data_mut().malloc = malloc;
    let ex = Exports::resolve(&mut store, &instance)?;
    // WASI reactor: `_initialize` (then `main` if present); a command: `_start`.
    let init = if let Some(f) = typed::<(), ()>(&mut store, &instance, "_initialize")? {
        let r = block_on(f.call_async(&mut store, ()));
        match (r, typed::<(i32, i32), i32>(&mut store, &instance, "main")?) {
            (Ok(()), Some(main)) => block_on(main.call_async(&mut store, (0, 0))).map(|_| ()),
            (r, _) => r,
        }
    } else if let Some(f) = typed::<(), ()>(&mut store, &instance, "_start")? {
        block_on(f.call_async(&mut store, ()))
    } else {
        Ok(())
    };
    init.map_err(|e| HarnessError::Trap { worker: w, message: format!("during start: {e:?}") })?;
    let root = store.data_mut().alloc_context(true);
    store.data_mut().root_id = root;
    let park = store.data().park.clone();
    Ok(Worker {
        store: Some(store),
        ex,
        root,
        queue: VecDeque::new(),
        inflight: None,
        failed: None,
        tick_ms: 0,
        tick_gen: 0,
        tick_queued: false,
        park,
    })
}
