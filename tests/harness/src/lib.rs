//! sluice-harness: a proxy-wasm host on wasmtime that loads a filter `.wasm` and drives it as
//! Envoy does: several workers (one VM each) sharing one process's shared data, the HTTP
//! request lifecycle, timers on a settable clock, HTTP and Redis callouts, fault injection,
//! a worker's VM started afresh (`Host::restart_worker`, as `FAIL_RELOAD` does), and a
//! scheduler that interleaves workers at every shared-data call.
//!
//! ```no_run
//! use sluice_harness::Host;
//! let mut host = Host::builder()
//!     .wasm("target/wasm32-wasip1/release/sluice.wasm")
//!     .config(r#"{"rules":[{"name":"api","limit":"2/s"}]}"#)
//!     .workers(2)
//!     .build()?;
//! let resp = host.request("GET", "/api/x").header("x-api-key", "k").source("10.0.0.1:5555").send();
//! assert_eq!(resp.status, 200);
//! # Ok::<(), sluice_harness::HarnessError>(())
//! ```

pub mod abi;
pub mod clock;
pub mod forward;
mod host;
pub mod http;
pub mod runner;
mod shared;
mod vm;

pub use abi::{LogLevel, MetricType, Status};
pub use clock::Clock;
pub use host::{
    check_imports, engine, load_module, FaultInjector, Host, HostBuilder, Picker, RequestBuilder, Runnable, Schedule, Trap,
};
pub use http::{
    Callout, CalloutOutcome, CalloutReply, HttpResponse, Origin, RedisCall, RedisOutcome, RedisReply, Request, RequestId,
    RequestState, Response, UpstreamRequest,
};
pub use shared::{CalloutFault, LogEntry, SharedData, WriteFault};
pub use vm::{CalloutRequest, Crossings, LocalReply, Point, ENV_FUNCTIONS, ENV_UNEMULATED, WASI_FUNCTIONS};

use std::path::PathBuf;

/// Why the harness could not load or run a module.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("no module given: call .wasm(path)")]
    NoModule,
    #[error("cannot read {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("wasmtime engine: {0}")]
    Engine(String),
    #[error("cannot compile {0}")]
    Compile(String),
    #[error("the module imports {module}.{name}, which the harness does not know")]
    UnknownImport { module: String, name: String },
    #[error("the module imports {module}.{name}, which the harness does not emulate (strict_imports refuses them)")]
    UnemulatedImport { module: String, name: String },
    #[error("the module does not export {0}")]
    MissingExport(String),
    #[error("export {name} has the wrong type: {message}")]
    BadExport { name: String, message: String },
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    #[error("worker {worker} trapped: {message}")]
    Trap { worker: usize, message: String },
    #[error("worker {worker}: proxy_on_vm_start returned false")]
    VmStartRejected { worker: usize, logs: Vec<LogEntry> },
    #[error("worker {worker}: proxy_on_configure returned false (the configuration is rejected)")]
    ConfigRejected { worker: usize, logs: Vec<LogEntry> },
    #[error("harness bug: {0}")]
    Internal(String),
}

impl HarnessError {
    /// The logs captured up to a rejected start or configuration.
    pub fn logs(&self) -> &[LogEntry] {
        match self {
            HarnessError::VmStartRejected { logs, .. } | HarnessError::ConfigRejected { logs, .. } => logs,
            _ => &[],
        }
    }
}
