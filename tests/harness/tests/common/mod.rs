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
