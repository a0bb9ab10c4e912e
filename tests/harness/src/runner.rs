//! Runs a WASI command module (a `cargo test --target wasm32-wasip1` binary) natively: the
//! `sluice-wasm-runner` binary is cargo's runner for that target (see `.cargo/config.toml`).
//!
//! Arguments and environment are passed through, stdout and stderr are the process's own,
//! clocks and randomness are the machine's. There is no file system: `fd_prestat_get` reports
//! no preopened directory, so every path fails to open (tests embed their data with
//! `include_str!`). Any other WASI import answers `ENOSYS`.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Store, Val};

use crate::HarnessError;

struct Ctx {
    args: Vec<String>,
    env: Vec<(String, String)>,
    start: Instant,
    rng: crate::shared::Rng,
}

#[derive(Debug)]
struct Exit(i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit({})", self.0)
    }
}

impl std::error::Error for Exit {}

const WASI: &str = "wasi_snapshot_preview1";
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

fn mem_write(caller: &mut Caller<'_, Ctx>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else { return false };
    let start = ptr as u32 as usize;
    match mem.data_mut(caller).get_mut(start..start + bytes.len()) {
        Some(d) => {
            d.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn mem_read(caller: &mut Caller<'_, Ctx>, ptr: i32, len: usize) -> Option<Vec<u8>> {
    let mem = caller.get_export("memory")?.into_memory()?;
    let start = ptr as u32 as usize;
    mem.data(caller).get(start..start + len).map(<[u8]>::to_vec)
}

/// Lays out `items` as a C array of pointers into a buffer of NUL-terminated strings.
fn write_strings(caller: &mut Caller<'_, Ctx>, items: &[String], mut array: i32, mut buf: i32) -> i32 {
    for s in items {
        let bytes: Vec<u8> = s.bytes().chain(std::iter::once(0)).collect();
        if !mem_write(caller, array, &(buf as u32).to_le_bytes()) || !mem_write(caller, buf, &bytes) {
            return FAULT;
        }
        array += 4;
        buf += bytes.len() as i32;
    }
    SUCCESS
}

fn sizes(caller: &mut Caller<'_, Ctx>, items: &[String], count: i32, size: i32) -> i32 {
    let total: usize = items.iter().map(|s| s.len() + 1).sum();
    if mem_write(caller, count, &(items.len() as u32).to_le_bytes()) && mem_write(caller, size, &(total as u32).to_le_bytes()) {
        SUCCESS
    } else {
        FAULT
    }
}

fn env_strings(c: &Ctx) -> Vec<String> {
    c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

const DEFINED: &[&str] = &[
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "clock_time_get",
    "clock_res_get",
    "fd_write",
    "fd_fdstat_get",
    "fd_prestat_get",
    "random_get",
    "sched_yield",
    "proc_exit",
];

fn add_wasi(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "args_sizes_get", |mut c: Caller<'_, Ctx>, count: i32, size: i32| {
        let args = c.data().args.clone();
        Ok(sizes(&mut c, &args, count, size))
    })?;
    linker.func_wrap(WASI, "args_get", |mut c: Caller<'_, Ctx>, array: i32, buf: i32| {
        let args = c.data().args.clone();
        Ok(write_strings(&mut c, &args, array, buf))
    })?;
    linker.func_wrap(WASI, "environ_sizes_get", |mut c: Caller<'_, Ctx>, count: i32, size: i32| {
        let env = env_strings(c.data());
        Ok(sizes(&mut c, &env, count, size))
    })?;
    linker.func_wrap(WASI, "environ_get", |mut c: Caller<'_, Ctx>, array: i32, buf: i32| {
        let env = env_strings(c.data());
        Ok(write_strings(&mut c, &env, array, buf))
    })?;
    linker.func_wrap(WASI, "clock_time_get", |mut c: Caller<'_, Ctx>, id: i32, _precision: i64, ptr: i32| {
        let t = match id {
            0 => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
            1..=3 => c.data().start.elapsed().as_nanos() as u64,
            _ => return Ok(NOTSUP),
        };
        Ok(if mem_write(&mut c, ptr, &t.to_le_bytes()) { SUCCESS } else { FAULT })
    })?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: Caller<'_, Ctx>, _id: i32, ptr: i32| {
        Ok(if mem_write(&mut c, ptr, &1u64.to_le_bytes()) { SUCCESS } else { FAULT })
    })?;
    linker.func_wrap(WASI, "fd_write", |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, written: i32| {
        let mut data = Vec::new();
        for i in 0..n {
            let Some(iov) = mem_read(&mut c, iovs + i * 8, 8) else { return Ok(FAULT) };
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
            let Some(chunk) = mem_read(&mut c, ptr, len) else { return Ok(FAULT) };
            data.extend_from_slice(&chunk);
        }
        let ok = match fd {
            1 => std::io::stdout().write_all(&data).and_then(|_| std::io::stdout().flush()).is_ok(),
            2 => std::io::stderr().write_all(&data).is_ok(),
            _ => return Ok(BADF),
        };
        if !ok {
            return Ok(BADF);
        }
        Ok(if mem_write(&mut c, written, &(data.len() as u32).to_le_bytes()) { SUCCESS } else { FAULT })
    })?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: Caller<'_, Ctx>, fd: i32, ptr: i32| {
        if !(0..=2).contains(&fd) {
            return Ok(BADF);
        }
        // A character device that may be read (stdin) or written.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&(if fd == 0 { 2u64 } else { 64u64 }).to_le_bytes());
        Ok(if mem_write(&mut c, ptr, &stat) { SUCCESS } else { FAULT })
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_c: Caller<'_, Ctx>, _fd: i32, _ptr: i32| Ok(BADF))?;
    linker.func_wrap(WASI, "random_get", |mut c: Caller<'_, Ctx>, ptr: i32, len: i32| {
        let bytes: Vec<u8> = (0..len).map(|_| c.data_mut().rng.next_u64() as u8).collect();
        Ok(if mem_write(&mut c, ptr, &bytes) { SUCCESS } else { FAULT })
    })?;
    linker.func_wrap(WASI, "sched_yield", |_c: Caller<'_, Ctx>| Ok(SUCCESS))?;
    linker.func_wrap(WASI, "proc_exit", |_c: Caller<'_, Ctx>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Exit(code)))
    })?;
    Ok(())
}

/// Runs `wasm` with `args` (args[0] is the program name) and returns its exit code. With
/// `SLUICE_RUNNER_FUEL` set, prints the fuel the guest burned (about one unit per wasm
/// instruction, the same on any machine) to stderr: how `scripts/bench/wire_cost.sh` weighs code.
pub fn run_command(wasm: &std::path::Path, args: Vec<String>) -> Result<i32, HarnessError> {
    let engine = crate::engine()?;
    let module: Module = crate::load_module(wasm)?;
    let mut linker: Linker<Ctx> = Linker::new(engine);
    add_wasi(&mut linker).map_err(|e| HarnessError::Engine(e.to_string()))?;
    // Whatever else the module imports from WASI exists but answers ENOSYS; anything else (the
    // filter's proxy-wasm imports, linked into the lib's test binary but never called by pure
    // tests) traps with its name if called.
    for import in module.imports() {
        if import.module() == WASI && DEFINED.contains(&import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else { continue };
        let results: Vec<wasmtime::ValType> = ty.results().collect();
        let (m, n) = (import.module().to_string(), import.name().to_string());
        let wasi = m == WASI;
        linker
            .func_new(import.module(), import.name(), ty, move |_c, _args, out| {
                if !wasi {
                    return Err(wasmtime::format_err!("{m}.{n} called: sluice-wasm-runner is not a proxy-wasm host"));
                }
                for (slot, t) in out.iter_mut().zip(results.iter()) {
                    *slot = match t {
                        wasmtime::ValType::I64 => Val::I64(NOSYS as i64),
                        _ => Val::I32(NOSYS),
                    };
                }
                Ok(())
            })
            .map_err(|e| HarnessError::Engine(e.to_string()))?;
    }
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7) ^ std::process::id() as u64;
    let ctx = Ctx { args, env: std::env::vars().collect(), start: Instant::now(), rng: crate::shared::Rng::new(seed) };
    let mut store = Store::new(engine, ctx);
    store.set_fuel(u64::MAX).map_err(|e| HarnessError::Engine(e.to_string()))?;
    let instance = linker.instantiate(&mut store, &module).map_err(|e| HarnessError::Instantiate(format!("{e:#}")))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| HarnessError::MissingExport(format!("_start: {e}")))?;
    let result = start.call(&mut store, ());
    if std::env::var_os("SLUICE_RUNNER_FUEL").is_some() {
        eprintln!("sluice-wasm-runner: guest fuel {}", u64::MAX - store.get_fuel().unwrap_or(u64::MAX));
    }
    match result {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => Ok(*code),
            None => {
                eprintln!("sluice-wasm-runner: the module trapped: {e:?}");
                Ok(101)
            }
        },
    }
}
