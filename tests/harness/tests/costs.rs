//! The filter's deterministic costs per request, held at or below the figures reached: how often
//! the host enters the VM (callbacks, and the allocations it asks of the guest to hand it
//! values) and how often the VM calls the host. Time is measured by the benchmark
//! (`scripts/bench.sh`); these counts do not depend on the machine, so a regression fails here.
//!
//! The configurations are the benchmark's (`scripts/bench/throughput.py`): (c) one local rule
//! never reached, (d) ten rules with header identities, (e) every request limited, (x) one
//! rule that matches nothing.

mod common;

use serde_json::{json, Value};
use sluice_harness::{Crossings, Host, Request};

const NEVER: &str = "1000000000/s";
const MEASURED: u64 = 50;
// Guest fuel per request reached, with a little to spare (fuel moves with the compiler's code
// generation).
// (c) 13,890 and (d) 81,343 before a request's slot could carry marks (`store/table.rs`), 14,186
// and 82,337 since: (c) moves larger prepared decisions, (d) probes through a vector. 14,521
// and 84,431 before each Redis rule's reply stood on its own (`engine/remote.rs`), 14,550 and
// 84,516 since: no local request runs that code; the rest is code generation. 14,585 and 84,579
// since a write that evicts a live count is counted (`local.evictions`): its flag travels with
// each group's outcomes, and metrics test an outcome's rare flags at once. 14,689 and 82,464
// since every slot of a request may be decided on the worker's copy (`engine/local.rs`): (c)
// keeps its prepared decisions in a loop, (d) reads no slot (less host-call glue).
const CEILING_C: f64 = 14_700.0;
const CEILING_D: f64 = 82_500.0;
// (e) 6,230 before the worker's copies of its writes, 6,478 since (6,505 with marks): the 429
// path runs none of their code, but moves the larger decisions prepared (about 15 ns at the
// guest's pace). 6,539 before `x-envoy-ratelimited`, 6,692 with it and per-rule Redis replies,
// 6,701 with `local.evictions`, 6,538 since every slot may be decided on a copy (code layout).
const CEILING_E: f64 = 6_560.0;
const CEILING_X: f64 = 2_520.0;

fn configs() -> Vec<(&'static str, Value)> {
    let cycle = ["sliding_window_counter", "token_bucket", "gcra", "fixed_window"];
    let ten: Vec<Value> = (0..10)
        .map(|i| {
            json!({"name": format!("r{i}"), "match": {"path": if i % 2 == 1 { "/**" } else { "/bench/**" }}, "limit": NEVER,
                   "strategy": cycle[i % 4], "identifier": {"header": format!("x-key-{}", i % 3)}})
        })
        .collect();
    vec![
        ("c", json!({"rules": [{"name": "api", "limit": NEVER, "strategy": "sliding_window_counter"}]})),
        ("d", json!({ "rules": ten })),
        ("e", json!({"rules": [{"name": "api", "limit": "1/hour", "strategy": "fixed_window", "identifier": "global"}]})),
        ("x", json!({"rules": [{"name": "api", "match": {"path": "/elsewhere/**"}, "limit": NEVER}]})),
    ]
}

fn request() -> Request {
    Request::get("/bench/x").header("x-key-0", "k0").header("x-key-1", "k1").header("x-key-2", "k2")
}

/// Crossings per request over `MEASURED` requests, after a few that warm the VM up: VM entries,
/// host calls and guest fuel.
fn per_request(host: &mut Host, expect: u16) -> (f64, f64, f64) {
    for _ in 0..3 {
        host.try_send(request()).unwrap_or_else(|e| panic!("{e}"));
    }
    let before = host.crossings();
    for _ in 0..MEASURED {
        let r = host.try_send(request()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, expect);
    }
    let after = host.crossings();
    let per = |a: u64, b: u64| (a - b) as f64 / MEASURED as f64;
    (per(after.vm_entries, before.vm_entries), per(after.host_calls, before.host_calls), per(after.guest_fuel, before.guest_fuel))
}

#[test]
fn vm_entries_host_calls_and_guest_work_per_request_do_not_grow() {
    // (config, expected status, most VM entries, most host calls, most guest fuel per request).
    // Fuel is about one unit per wasm instruction the guest runs: its own work, measured the same
    // on any machine (`SLUICE_WASM=other.wasm` measures another build).
    let ceilings: &[(&str, u16, f64, f64, f64)] = &[
        // A slot the worker wrote last is decided on its copy, not read (`store::own`); (d)'s
        // three are, each in turn.
        ("c", 200, 6.0, 5.0, CEILING_C),
        ("d", 200, 6.0, 7.0, CEILING_D),
        // A 429 reads nothing: the worker remembers the denial (`engine::memo`).
        ("e", 429, 5.0, 2.0, CEILING_E),
        ("x", 200, 6.0, 1.0, CEILING_X),
    ];
    let mut report = Vec::new();
    for (name, config) in configs() {
        let (_, status, max_entries, max_calls, max_fuel) = ceilings.iter().find(|c| c.0 == name).copied().unwrap_or_default();
        let mut host = common::sluice_host(&config, 1);
        let (entries, calls, fuel) = per_request(&mut host, status);
        report.push(format!("({name}) {entries} VM entries, {calls} host calls, {fuel:.0} fuel"));
        assert!(entries <= max_entries, "({name}) {entries} VM entries per request, at most {max_entries} reached before");
        assert!(calls <= max_calls, "({name}) {calls} host calls per request, at most {max_calls} reached before");
        assert!(fuel <= max_fuel, "({name}) {fuel} guest fuel per request, at most {max_fuel} reached before");
        assert!(host.traps().is_empty());
    }
    eprintln!("per request: {}", report.join("; "));
}

#[test]
fn a_flood_over_two_workers_reads_shared_data_once_per_worker_until_the_retry_after() {
    let config = json!({"rules": [{"name": "api", "limit": "3/s", "strategy": "token_bucket", "identifier": "global"}]});
    let mut host = common::sluice_host(&config, 2);
    for _ in 0..3 {
        assert_eq!(host.try_send(request()).unwrap_or_else(|e| panic!("{e}")).status, 200);
    }
    let before = host.crossings();
    for i in 0..20 {
        let r = host.try_send(request().on_worker(i % 2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.header("retry-after")), (429, Some("1")), "request {i}");
    }
    // The clock and the 429 each time, plus one read of the slot by each worker.
    assert_eq!(host.crossings().host_calls - before.host_calls, 20 * 2 + 2);
    // A token is back after a third of a second: both workers read and one admits.
    host.advance(std::time::Duration::from_millis(334));
    let statuses: Vec<u16> =
        (0..2).map(|w| host.try_send(request().on_worker(w)).unwrap_or_else(|e| panic!("{e}")).status).collect();
    assert_eq!(statuses, [200, 429]);
    assert!(host.traps().is_empty());
}

#[test]
fn crossings_are_counted_both_ways() {
    let mut host = common::sluice_host(&configs()[0].1, 1);
    let before = host.crossings();
    host.try_send(request()).unwrap_or_else(|e| panic!("{e}"));
    let after = host.crossings();
    assert!(after.vm_entries > before.vm_entries && after.host_calls > before.host_calls, "{before:?} -> {after:?}");
    assert!(after.guest_fuel > before.guest_fuel, "{before:?} -> {after:?}");
    assert_ne!(after, Crossings::default());
}

/// Crossings of one request (after a few that warm the VM up), with a 512-byte body or none.
fn one_request(config: &Value, body: bool) -> (u64, u64) {
    let mut host = common::sluice_host(config, 1);
    let req = || {
        let r = Request::new("POST", "/bench/x").header("x-key-0", "k0");
        if body {
            r.body(vec![b'x'; 512])
        } else {
            r
        }
    };
    for _ in 0..3 {
        host.try_send(req()).unwrap_or_else(|e| panic!("{e}"));
    }
    let before = host.crossings();
    let r = host.try_send(req()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert!(host.traps().is_empty());
    let after = host.crossings();
    (after.vm_entries - before.vm_entries, after.host_calls - before.host_calls)
}

#[test]
fn a_body_costs_requests_that_are_not_upgrades_its_callback_and_no_host_call() {
    // The host enters the body callback of any request with a body (sluice exports it: message
    // rules need it); sluice follows frames only after an upgrade that met a message
    // rule, so otherwise the callback returns at once: one VM entry, no host call, with or
    // without message rules in the config.
    let plain = json!({"rules": [{"name": "api", "limit": NEVER}]});
    let with_messages = json!({"rules": [{"name": "api", "limit": NEVER},
        {"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": NEVER}]});
    let mut without_body = Vec::new();
    for (name, config) in [("plain", plain), ("with a message rule", with_messages)] {
        let (entries, calls) = one_request(&config, false);
        let (body_entries, body_calls) = one_request(&config, true);
        eprintln!("{name}: {entries} VM entries, {calls} host calls; with a body: {body_entries}, {body_calls}");
        assert_eq!((body_entries, body_calls), (entries + 1, calls), "{name}: the body callback only");
        without_body.push((entries, calls));
    }
    // A message rule in the config costs a request that is no upgrade one host call: the read
    // of its `upgrade` header. What only message rules match on (here the path) is not read.
    let [(plain_entries, plain_calls), (msg_entries, msg_calls)] = without_body[..] else { unreachable!() };
    assert_eq!((msg_entries, msg_calls), (plain_entries, plain_calls + 1));
}
