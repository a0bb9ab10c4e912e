//! Removing a filter config at run time: one Envoy worker, listeners delivered by file-based LDS,
//! two sluice configs in its one Wasm VM. When the listener whose root owns the worker's
//! gathering wake-ups is removed, requests on the listener left must still be sent and answered
//! within `redis.timeout_ms`, never follow `on_error`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::*;

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// A timeout shorter than the tick (100 ms): a gathered request held until the next tick has
/// run out of it and follows `on_error`, counted in `store_errors`; long enough that a loaded
/// machine's round trip to the gateway does not.
fn config(namespace: &str) -> Value {
    json!({"namespace": namespace,
           "redis": {"cluster": "sluice_gateway", "token": GATEWAY_TOKEN, "timeout_ms": 80,
                     "breaker": {"failure_threshold": 3, "open_ms": 1000, "success_threshold": 2}},
           "rules": [{"name": "api", "limit": "1000000/min", "backend": "redis", "on_error": "allow"}]})
}

/// Writes `listeners` as the LDS file in `dir`: a new file in the same directory renamed over
/// lds.yaml, the move Envoy watches for, so it never reads a file half written.
fn deliver(dir: &Path, version: u32, listeners: &[&Value]) {
    let resources: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut l = (*l).clone();
            l["@type"] = LISTENER.into();
            l
        })
        .collect();
    let next = dir.join("lds.next.yaml");
    let body = json!({"version_info": version.to_string(), "resources": resources});
    std::fs::write(&next, body.to_string()).expect("write LDS file");
    std::fs::rename(&next, dir.join("lds.yaml")).expect("move LDS file into place");
}

/// Waits (bounded) until `what` holds of Envoy's state, or fails naming it.
fn wait_for(envoy: &Envoy, what: &str, mut f: impl FnMut(&Envoy) -> bool) {
    wait_until(Duration::from_secs(15), || f(envoy))
        .unwrap_or_else(|| panic!("{what}: not within 15 s; log:\n{}", envoy.log_text()));
}

fn status(url: &str) -> u16 {
    get(url, &[]).map_or(0, |r| r.status)
}

/// Before the fix, the worker's wake-ups went to the root configured last (listener B's); once
/// B was removed and drained, Envoy dropped them, and requests gathered on A waited for A's
/// next tick, past their timeout, and followed `on_error`. Now they send their own calls until
/// A's root takes the wake-ups over at its next tick, and none may fail.
#[test]
fn removing_the_config_that_owns_the_wake_ups_fails_no_gathered_request() {
    let started = Instant::now();
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);

    // Listener A from the demo bootstrap, B its copy with a config of its own in the same VM
    // (same vm_config). Both leave the bootstrap for the LDS file; the clusters stay static.
    let mut boot = bootstrap("demo.yaml");
    let (port_a, _) = adapt(&mut boot, Some(&config("first")));
    add_cluster(&mut boot, "sluice_gateway", gateway.port);
    let a = boot["static_resources"]["listeners"][0].clone();
    let port_b = free_port();
    let b = listener_copy(&boot, "second", port_b, &config("second"));
    if let Value::Object(resources) = &mut boot["static_resources"] {
        resources.remove("listeners");
    }
    let lds = TempDir::new("lds");
    let lds_file = lds.0.join("lds.yaml").display().to_string();
    // Envoy names itself to every config source, a file included.
    boot["node"] = json!({"id": "sluice-e2e", "cluster": "sluice-e2e"});
    boot["dynamic_resources"] = json!({"lds_config": {
        "path_config_source": {"path": lds_file, "watched_directory": {"path": lds.0.display().to_string()}},
        "resource_api_version": "V3"}});
    let (url_a, url_b) = (format!("http://127.0.0.1:{port_a}/a"), format!("http://127.0.0.1:{port_b}/b"));

    // (a) A alone. One worker, so one VM holds both configs; a removed listener's connections
    // are drained for 1 s, not the default 600 s, before its config (its root) is destroyed.
    deliver(&lds.0, 1, &[&a]);
    let envoy = Envoy::running_with(&boot, 1, &["--drain-time-s", "1"]);
    wait_for(&envoy, "listener A active", |e| e.stat("listener_manager.total_listeners_active") == 1);
    assert_eq!(status(&url_a), 200, "listener A does not answer");

    // (b) B added: its root is configured last on the worker, so the wake-ups go to it.
    deliver(&lds.0, 2, &[&a, &b]);
    wait_for(&envoy, "listener B active", |e| e.stat("listener_manager.total_listeners_active") == 2 && status(&url_b) == 200);
    for _ in 0..5 {
        assert_eq!(status(&url_b), 200, "listener B does not answer");
    }

    // (c) B removed. Its listener is destroyed with its filter config once drained (the
    // draining gauge back to 0 after the removal was counted), and the worker deletes B's root
    // in its next turn: the sequential requests to A after it make sure that turn has passed.
    // Each is alone on an idle worker, so each sends its own call and none gathers.
    deliver(&lds.0, 3, &[&a]);
    wait_for(&envoy, "listener B removed and drained", |e| {
        e.stat("listener_manager.listener_removed") == 1
            && e.stat("listener_manager.total_listeners_draining") == 0
            && e.stat("listener_manager.total_listeners_active") == 1
            && get(&url_b, &[]).is_err()
    });
    for _ in 0..5 {
        assert_eq!(status(&url_a), 200, "listener A does not answer after B's removal");
    }
    assert_eq!(envoy.settled_stat("wasmcustom.sluice.rule.api.store_errors"), 0, "Redis calls failed before the load");

    // (d) Concurrent load on A: requests arrive while the worker has a call out, and gather.
    let calls_before = envoy.stat("cluster.sluice_gateway.upstream_rq_total");
    let load_started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let load: Vec<_> = (0..6)
            .map(|_| {
                let url = &url_a;
                s.spawn(move || (0..150).map(|_| status(url)).collect::<Vec<u16>>())
            })
            .collect();
        load.into_iter().flat_map(|h| h.join().expect("load thread")).collect()
    });
    let load_ms = load_started.elapsed().as_millis();
    let requests = statuses.len() as u64;
    let errors = envoy.settled_stat("wasmcustom.sluice.rule.api.store_errors");
    let calls = envoy.stat("cluster.sluice_gateway.upstream_rq_total") - calls_before;
    eprintln!(
        "config_removal: {requests} requests on A in {load_ms} ms after B's removal: {calls} calls to the gateway, \
         {errors} store_errors; {} s in all",
        started.elapsed().as_secs_f32()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{} of {requests} not 200", statuses.iter().filter(|s| **s != 200).count());
    assert_eq!(errors, 0, "{errors} decisions followed on_error ({calls} calls for {requests} requests)");
    assert!(calls > 0 && calls < requests, "calls were gathered: {calls} for {requests} requests");
}
