//! The wasmtime engine, the compiled-module cache, the linker and the import check: shared by
//! every host of a test binary, so that a module is compiled and the imports linked only once.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use wasmtime::{Engine, Linker, Module};

use crate::vm::{self, VmState};
use crate::HarnessError;

fn config() -> wasmtime::Config {
    let mut c = wasmtime::Config::new();
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Every store starts with all the fuel there is, so nothing runs out: fuel counts the guest's
    // own work (about one unit per wasm instruction), the machine-independent measure of it
    // (`Crossings::guest_fuel`).
    c.consume_fuel(true);
    // For `perf record` on a test: JIT-compiled functions named in /tmp/perf-<pid>.map.
    if std::env::var_os("SLUICE_HARNESS_PERFMAP").is_some() {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    c
}

/// The process-wide wasmtime engine.
pub fn engine() -> Result<&'static Engine, HarnessError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&config()).map_err(|e| e.to_string())).as_ref().map_err(|e| HarnessError::Engine(e.clone()))
}

type ModuleKey = (PathBuf, Option<SystemTime>, u64);

/// Compiles a module once per test binary (keyed by path, modification time and size).
pub fn load_module(path: &Path) -> Result<Module, HarnessError> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, Module>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|e| HarnessError::Io { path: path.to_path_buf(), message: e.to_string() })?;
    let key = (path.to_path_buf(), meta.modified().ok(), meta.len());
    let cache = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = match cache.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| HarnessError::Io { path: path.to_path_buf(), message: e.to_string() })?;
    let module = Module::new(engine()?, &bytes).map_err(|e| HarnessError::Compile(format!("{}: {e:#}", path.display())))?;
    cache.insert(key, module.clone());
    Ok(module)
}

pub(super) fn linker() -> Result<&'static Linker<VmState>, HarnessError> {
    static LINKER: OnceLock<Result<Linker<VmState>, String>> = OnceLock::new();
    let engine = engine()?;
    LINKER
        .get_or_init(|| {
            let mut l = Linker::new(engine);
            vm::add_env(&mut l).map_err(|e| e.to_string())?;
            vm::add_wasi(&mut l).map_err(|e| e.to_string())?;
            Ok(l)
        })
        .as_ref()
        .map_err(|e| HarnessError::Engine(e.clone()))
}

/// Refuses a module whose imports the harness does not know, naming the first one. Known but
/// unemulated imports (gRPC, which the Rust SDK always links) are accepted; calling one traps
/// with its name, unless `strict` refuses them here already.
pub fn check_imports(module: &Module, strict: bool) -> Result<(), HarnessError> {
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        let known = match m {
            "env" => {
                if vm::ENV_UNEMULATED.contains(&n) {
                    if strict {
                        return Err(HarnessError::UnemulatedImport { module: m.to_string(), name: n.to_string() });
                    }
                    true
                } else {
                    vm::ENV_FUNCTIONS.contains(&n)
                }
            }
            "wasi_snapshot_preview1" | "wasi_unstable" => vm::WASI_FUNCTIONS.contains(&n),
            _ => false,
        };
        if !known || !matches!(import.ty(), wasmtime::ExternType::Func(_)) {
            return Err(HarnessError::UnknownImport { module: m.to_string(), name: n.to_string() });
        }
        if m == "wasi_unstable" {
            return Err(HarnessError::UnknownImport { module: m.to_string(), name: n.to_string() });
        }
    }
    Ok(())
}

/// Polls a future to completion on this thread. Harness futures are only ever pending at a
/// yield point, so re-polling at once is all a waker would do.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
