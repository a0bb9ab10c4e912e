//! Shared by the harness's self-tests: builds the probe filter (testdata-src/probe) for
//! wasm32-wasip1 once per test binary, with the same cargo that runs the tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sluice_harness::{Host, HostBuilder};

pub fn probe_wasm() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata-src/probe/Cargo.toml");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run cargo to build the probe filter");
        assert!(out.status.success(), "building the probe failed:\n{}", String::from_utf8_lossy(&out.stderr));
        target.join("wasm32-wasip1/release/harness_probe.wasm")
    })
    .clone()
}

pub fn probe() -> HostBuilder {
    Host::builder().wasm(probe_wasm())
}

/// The real filter: `$SLUICE_WASM` if set, else `sluice.wasm` built now (release,
/// wasm32-wasip1) into this build's target directory, so the tests never run a stale module.
pub fn sluice_wasm() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SLUICE_WASM") {
            return PathBuf::from(p);
        }
        // CARGO_TARGET_TMPDIR is <target>/tmp.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
        build_filter(&[], &target)
    })
    .clone()
}

/// The Higress build (feature `redis-callout`), made now into its own target dir as
/// scripts/build-wasm.sh does, so it never overwrites sluice.wasm.
pub fn redis_callout_wasm() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_filter(&["--features", "redis-callout"], &repo().join("target/redis-callout"))).clone()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the filter crate (release, wasm32-wasip1) with `args` into `target`; returns the module.
fn build_filter(args: &[&str], target: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "sluice"])
        .args(args)
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo to build the filter");
    assert!(out.status.success(), "building the filter {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    target.join("wasm32-wasip1/release/sluice.wasm")
}

pub fn sluice() -> HostBuilder {
    Host::builder().wasm(sluice_wasm()).cluster("sluice_gateway")
}
