//! A measurement, not a test (ignored; it asserts no time): how long the longest script the
//! gateway lets one run take holds Redis, through the function library and through sluice's
//! module. A run is at most one call's worth of sliding-log work (eight full logs of 4095
//! entries) and at most 64 keys, and a key may hold a full log whatever the call names. The
//! clock is given (the test builds of both), so each case is the same on every run: a call that
//! reads eight full logs whose oldest entry has just expired and writes them back full, and a
//! batch of eight fixed-window calls naming 64 full logs, sent dry (as the filter's first pass).
//! Run it against an optimized test build of the module (the test profile is unoptimized):
//! `cargo build --release -p sluice-redis-module --features testing --target-dir target/work-bound`,
//! then, from the repository, `SLUICE_REDIS_MODULE_TESTING=$PWD/target/work-bound/release/libsluice_redis.so cargo test -p
//! sluice-gateway --test work_bound -- --ignored --nocapture`.
// A measurement may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use redis::{Cmd, Connection, Value};
use sluice::config::MAX_LOG_ENTRIES;
use sluice::rate::Rate;
use sluice::redis::script::{self, batch_counts, rule_args};
use sluice::strategy::Strategy;
use support::{redis_module, RedisServer};

/// Keys of one call (its limits), and calls of one batch: the most a run may hold.
const KEYS: usize = 8;
const REPEATS: usize = 5;
const T0_US: u64 = 1_700_000_000_000_000;
const PERIOD_MS: u64 = 3_600_000;

/// `usec_per_call` of `command` in `INFO commandstats`.
fn usec_per_call(con: &mut Connection, command: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let line = info.lines().find(|l| l.starts_with(&format!("cmdstat_{}:", command.to_lowercase()))).unwrap();
    line.split(',').find_map(|f| f.strip_prefix("usec_per_call=")).unwrap().parse().unwrap()
}

/// One call's head: the module's command, or `FCALL` of the library's function.
fn head(module: bool, batch: bool) -> Cmd {
    match (module, batch) {
        (true, false) => redis::cmd(&script::module_command_name()),
        (true, true) => redis::cmd(&script::module_batch_command_name()),
        (false, false) => redis::cmd("FCALL").arg(script::function_name()).clone(),
        (false, true) => redis::cmd("FCALL").arg(script::batch_function_name()).clone(),
    }
}

/// The `i`th key of `group`; each engine measures keys of its own.
fn key(module: bool, group: usize, i: usize) -> String {
    format!("{}:{{api:{group:016x}}}:{i}", if module { "m" } else { "l" })
}

/// A call's arguments: one limit per key, then `dry`, then the clock.
fn args(strategy: &Strategy, dry: bool, now_us: u64) -> Vec<String> {
    let rate = Rate { limit: MAX_LOG_ENTRIES, period_ms: PERIOD_MS };
    let mut out: Vec<String> = (0..KEYS).flat_map(|_| rule_args(strategy, &rate, 1)).collect();
    out.extend(dry.then(|| "dry".to_string()));
    out.push(now_us.to_string());
    out
}

fn log() -> Strategy {
    Strategy::SlidingWindowLog { max_entries: u32::try_from(MAX_LOG_ENTRIES).unwrap() }
}

/// One call of the sliding log on the `KEYS` keys of `group`.
fn call(module: bool, group: usize, now_us: u64) -> Cmd {
    let mut c = head(module, false);
    c.arg(KEYS).arg((0..KEYS).map(|i| key(module, group, i)).collect::<Vec<_>>()).arg(args(&log(), false, now_us));
    c
}

/// `KEYS` dry fixed-window calls in one batch, each on the `KEYS` keys of its own group.
fn batch(module: bool, now_us: u64) -> Cmd {
    let args = args(&Strategy::FixedWindow, true, now_us);
    let mut c = head(module, true);
    c.arg(KEYS * KEYS);
    for g in 0..KEYS {
        c.arg((0..KEYS).map(|i| key(module, g, i)).collect::<Vec<_>>());
    }
    c.arg(batch_counts(&[(KEYS, args.len()); KEYS]).collect::<Vec<_>>());
    for _ in 0..KEYS {
        c.arg(&args);
    }
    c
}

fn measure(con: &mut Connection, module: bool) {
    // Every key of every group filled to a full log, one entry a millisecond from T0, through
    // the module (the library keeps the same state, and would take minutes to fill it).
    for g in 0..KEYS {
        for chunk in (0..MAX_LOG_ENTRIES).collect::<Vec<_>>().chunks(100) {
            let mut p = redis::pipe();
            for n in chunk {
                let mut c = head(true, false);
                c.arg(KEYS).arg((0..KEYS).map(|i| key(module, g, i)).collect::<Vec<_>>()).arg(args(
                    &log(),
                    false,
                    T0_US + n * 1000,
                ));
                p.add_command(c);
            }
            let _: Vec<Value> = p.query(con).unwrap();
        }
    }
    let how = if module { "module" } else { "library (FCALL)" };
    // The oldest entry has just expired: each call reads eight full logs and writes them back.
    let now_us = T0_US + PERIOD_MS * 1000 + 1;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(con).unwrap();
    for g in 0..REPEATS {
        let r: Value = call(module, g, now_us).query(con).unwrap();
        assert!(matches!(&r, Value::Array(a) if a.first() == Some(&Value::Int(1))), "admitted: {r:?}");
    }
    let name = if module { script::module_command_name() } else { "fcall".to_string() };
    println!("{how}: one call reading and writing {KEYS} full logs: {:.0} µs", usec_per_call(con, &name));
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(con).unwrap();
    for _ in 0..REPEATS {
        let r: Value = batch(module, now_us).query(con).unwrap();
        assert!(!matches!(r, Value::ServerError(_)), "{r:?}");
    }
    let name = if module { script::module_batch_command_name() } else { "fcall".to_string() };
    println!(
        "{how}: {KEYS} dry fixed_window calls naming {} full logs, one batch: {:.0} µs",
        KEYS * KEYS,
        usec_per_call(con, &name)
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn the_longest_run_holds_redis() {
    let redis = RedisServer::start_with_args(&["--loadmodule", &redis_module(true)]);
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap().get_connection().unwrap();
    let _: Value = redis::cmd("FUNCTION").arg("LOAD").arg(script::library_with_clock_override()).query(&mut con).unwrap();
    measure(&mut con, false);
    measure(&mut con, true);
}
