//! Shared by the harness's self-tests: builds the probe filter (testdata-src/probe) for
//! wasm32-wasip1 once per test binary, with the same cargo that runs the tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// The real filter with `config` on `workers` workers; panics with the filter's logs if the
/// config is rejected.
pub fn sluice_host(config: &serde_json::Value, workers: usize) -> Host {
    sluice().config(config.to_string()).workers(workers).build().unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()))
}

/// A strategy as the tests about the limit itself configure it: token_bucket_debt without
/// debt, so every strategy's bound is exactly the limit (debt is tested by the case table).
pub fn strategy_config(name: &str) -> serde_json::Value {
    if name == "token_bucket_debt" {
        serde_json::json!({"type": name, "max_debt": 0})
    } else {
        serde_json::json!(name)
    }
}

/// A throwaway `redis-server` (scripts/setup.sh installs it) on a free loopback port.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
}

impl Redis {
    pub fn start() -> Redis {
        let port = sluice_test_ports::free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = Redis { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.command("PING\r\n") != "+PONG\r\n" {
            assert!(Instant::now() < deadline, "redis-server on {port} did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Sends one inline command and returns the first reply line (empty when unreachable).
    pub fn command(&self, inline: &str) -> String {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(inline.as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VM entries, host calls and guest fuel per request between two readings of a host's
/// crossings, `requests` apart: the deterministic costs tests hold.
pub fn per_request(before: sluice_harness::Crossings, after: sluice_harness::Crossings, requests: u64) -> (f64, f64, f64) {
    let per = |a: u64, b: u64| (a - b) as f64 / requests as f64;
    (per(after.vm_entries, before.vm_entries), per(after.host_calls, before.host_calls), per(after.guest_fuel, before.guest_fuel))
}
