//! The `sluice-gateway` binary: flags, logging, signals, its allocator; everything else is in the
//! library.

use std::process::ExitCode;

use clap::Parser as _;
use sluice_gateway::{Config, Gateway};

/// Cheaper than glibc's malloc on the gateway's short-lived buffers (README, "The Redis round
/// trip": about 8% of its CPU per request); built without huge pages, its memory is glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // The Redis client warns once per call it cannot route while a Cluster node is gone (a
    // review counted 1,166 lines in seconds); the gateway counts those in its metrics and says
    // once what it does about them. RUST_LOG=info,redis=warn brings them back.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,redis=error")).init();
    no_huge_pages();
    let config = Config::parse();
    match Gateway::run(&config, shutdown_signal()).await {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes and Docker send before killing).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            // Without the handler we must not read the error as "signal received".
            log::warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => log::info!("SIGINT received"),
        () = terminate => log::info!("SIGTERM received"),
    }
}

/// Transparent huge pages off for the whole process: with them, the allocator's memory doubled
/// under slow clients (README, "The Redis round trip"). Built with `no_thp`, mimalloc does not
/// ask for them, but a kernel in `always` mode would still hand them out.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        log::warn!("cannot turn transparent huge pages off: {e}");
    }
}
