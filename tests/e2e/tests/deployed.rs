//! The deployed Redis topology, as shipped: envoy/redis.yaml (its own plugin config, which is
//! filter-config/redis.yaml) in front of envoy/upstream.yaml, sharing counters through
//! sluice-gateway and a 6-node Redis Cluster.
//!
//! With `SLUICE_E2E_TARGET` (comma-separated base URLs of Envoy listeners) and
//! `SLUICE_E2E_ADMIN` (their admin URLs, same order) it tests a topology that is already
//! running: what `scripts/integration.sh` starts natively or with docker compose. Without them
//! it starts the same topology itself on free loopback ports, with two Envoys, so the shared
//! counts can only come from Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sluice_e2e::{adapt, bootstrap, free_port, get, repo, request, Envoy, RedisCluster, Response};

/// The plugin config inside envoy/redis.yaml.
fn shipped_plugin_config() -> Value {
    let boot = bootstrap("redis.yaml");
    let mut found = Vec::new();
    walk(&boot, &mut |v| {
        if v["@type"] == "type.googleapis.com/google.protobuf.StringValue" {
            if let Some(text) = v["value"].as_str() {
                found.push(serde_json::from_str::<Value>(text).expect("plugin config is JSON"));
            }
        }
    });
    assert_eq!(found.len(), 1, "envoy/redis.yaml has one sluice plugin config");
    found.remove(0)
}

fn walk(v: &Value, f: &mut dyn FnMut(&Value)) {
    f(v);
    match v {
        Value::Object(m) => m.values().for_each(|c| walk(c, f)),
        Value::Array(a) => a.iter().for_each(|c| walk(c, f)),
        _ => {}
    }
}

fn set_cluster_port(boot: &mut Value, name: &str, port: u16) {
    let clusters = boot["static_resources"]["clusters"].as_array_mut().expect("clusters");
    let cluster = clusters.iter_mut().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"));
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] =
        port.into();
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the checks talk to; owns the processes when it started them.
struct Topology {
    targets: Vec<String>,
    admins: Vec<String>,
    _envoys: Vec<Envoy>,
    _gateway: Option<Process>,
    _cluster: Option<RedisCluster>,
}

fn urls(var: &str) -> Option<Vec<String>> {
    let v = std::env::var(var).ok()?;
    let list: Vec<String> = v.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect();
    (!list.is_empty()).then_some(list)
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn topology() -> Topology {
    if let Some(targets) = urls("SLUICE_E2E_TARGET") {
        let admins = urls("SLUICE_E2E_ADMIN").expect("SLUICE_E2E_ADMIN must list the admin URL of every target");
        assert_eq!(admins.len(), targets.len(), "one admin URL per target");
        eprintln!("testing the running topology at {targets:?}");
        return Topology { targets, admins, _envoys: Vec::new(), _gateway: None, _cluster: None };
    }
    let token = shipped_plugin_config()["redis"]["token"].as_str().expect("redis.token").to_string();
    let gateway_bin: PathBuf = repo().join("target/release/sluice-gateway");
    assert!(gateway_bin.exists(), "{} is missing: run `cargo build --release -p sluice-gateway` first", gateway_bin.display());

    let cluster = RedisCluster::start();
    let gw_port = free_port();
    let gateway = Process(
        Command::new(&gateway_bin)
            .args(["--listen", &format!("127.0.0.1:{gw_port}"), "--cluster-nodes", &cluster.seeds])
            .env("SLUICE_GATEWAY_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice-gateway"),
    );
    let healthz = format!("http://127.0.0.1:{gw_port}/healthz");
    assert!(wait(Duration::from_secs(20), || get(&healthz, &[]).is_ok_and(|r| r.status == 200)), "gateway never healthy");

    let mut up = bootstrap("upstream.yaml");
    let (up_port, _) = adapt(&mut up, None);
    let mut envoys = vec![Envoy::running(&up, 1)];
    let mut targets = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..2 {
        let mut boot = bootstrap("redis.yaml");
        adapt(&mut boot, None);
        set_cluster_port(&mut boot, "sluice_gateway", gw_port);
        set_cluster_port(&mut boot, "upstream", up_port);
        let e = Envoy::running(&boot, 2);
        targets.push(format!("http://127.0.0.1:{}", e.port));
        admins.push(format!("http://127.0.0.1:{}", e.admin));
        envoys.push(e);
    }
    Topology { targets, admins, _envoys: envoys, _gateway: Some(gateway), _cluster: Some(cluster) }
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn stat(admin: &str, name: &str) -> u64 {
    get(&format!("{admin}/stats?filter={name}"), &[])
        .map(|r| r.body.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok()).unwrap_or(0))
        .unwrap_or(0)
}

/// `n` POSTs at once, round-robin over `targets`.
fn post_burst(n: usize, targets: &[String], path: &str, headers: &[(String, String)]) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{}{path}", targets[i % targets.len()]);
            let headers = headers.to_vec();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                barrier.wait();
                request("POST", &url, &h)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("thread").expect("request")).collect()
}

#[test]
fn the_shipped_redis_topology_limits_across_proxies() {
    let t = topology();
    let config = shipped_plugin_config();

    // Admitted requests reach the upstream application through the filter, with the rate
    // limit fields of the local per-proxy rule.
    for target in &t.targets {
        let r = get(&format!("{target}/hello"), &[]).expect("GET /hello");
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.header("x-upstream"), Some("sluice-demo-upstream"), "{target} did not reach the upstream: {r:?}");
        assert!(r.header("ratelimit-policy").is_some_and(|p| p.contains("\"per-proxy\"")), "{:?}", r.headers);
    }

    // payments: 10/min (GCRA: 10 at once, then one every 6 s) per account, in Redis. The burst
    // is spread over every proxy, so exactly 10 admitted means one shared count.
    let payments = config["rules"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "payments")).expect("payments rule");
    assert_eq!((payments["limit"].as_str(), payments["backend"].as_str()), (Some("10/min"), Some("redis")));
    // Warm up: each proxy's first Redis calls open connections to the gateway, and the
    // gateway's to each Redis node; a cold call can outlast redis.timeout_ms (25 ms), and
    // payments fails closed (on_error: deny). The count below is about warm proxies.
    for target in &t.targets {
        let warm = unique("warm");
        let ok = wait(Duration::from_secs(20), || {
            request("POST", &format!("{target}/api/payments/warm"), &[("x-account", warm.as_str())])
                .is_ok_and(|r| r.status == 200)
        });
        assert!(ok, "{target}: payments never admitted a request (is Redis reachable through the gateway?)");
    }
    // As many at once as the burst below: Envoy opens one connection to the gateway per
    // concurrent callout, and a new one in the measured burst can cost it the 25 ms.
    for _ in 0..2 {
        let _ = post_burst(16, &t.targets, "/api/payments/warm", &[("x-account".into(), unique("warm"))]);
    }

    let stats =
        |what: &str| -> u64 { t.admins.iter().map(|a| stat(a, &format!("wasmcustom.sluice.rule.payments.{what}"))).sum() };
    // Stats reach the admin endpoint a moment after the responses: let the warm-up's settle.
    let mut last = (u64::MAX, u64::MAX);
    wait(Duration::from_secs(5), || {
        let now = (stats("allowed"), stats("limited"));
        let same = now == last;
        last = now;
        if !same {
            std::thread::sleep(Duration::from_millis(300));
        }
        same
    });
    let (allowed_before, limited_before, errors_before) = (stats("allowed"), stats("limited"), stats("store_errors"));
    let account = unique("acct");
    let start = Instant::now();
    let responses = post_burst(16, &t.targets, "/api/payments/1", &[("x-account".into(), account.clone())]);
    let elapsed = start.elapsed();
    let admitted = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        admitted + limited.len(),
        16,
        "only 200 and 429 expected: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &limited {
        let body: Value = serde_json::from_str(&r.body).expect("problem+json body");
        assert_eq!(body["violated_rules"], serde_json::json!(["payments"]), "{body}");
        assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)), "{:?}", r.headers);
    }
    // The proxies count every decision (stats reach the admin endpoint shortly after).
    let settled = wait(Duration::from_secs(5), || stats("allowed") - allowed_before + stats("limited") - limited_before >= 16);
    let store_errors = stats("store_errors") - errors_before;
    let (allowed, refused) = (stats("allowed") - allowed_before, stats("limited") - limited_before);
    let report = format!(
        "{admitted} of 16 admitted across {} proxies in {elapsed:?}; stats: allowed {allowed}, limited {refused}, store errors {store_errors} (settled: {settled})",
        t.targets.len()
    );
    eprintln!("payments: {report}");
    assert!(settled && allowed == admitted as u64 && refused >= limited.len() as u64, "{report}");
    // Never more than the limit; one more is allowed for every 6 s the burst took (it takes
    // well under a second).
    let slack = (elapsed.as_secs() / 6) as usize;
    assert!(admitted <= 10 + slack, "over the limit: {report}");
    // Exactly the limit unless Redis calls failed (a call that timed out at the filter may still
    // have counted in Redis, and payments refuses on errors): then fewer is right, not more, but
    // Redis denied only once 10 had counted, each either admitted or one of the errors.
    assert!(admitted + store_errors as usize >= 10, "under the limit, not for store errors: {report}");

    // Another account has its own budget. If Redis calls failed above, a proxy's breaker may
    // be open (payments then refuses, on_error: deny) until a probe succeeds there: wait for
    // every proxy's (open_ms 5 s, then two successful probes).
    if store_errors > 0 {
        for target in &t.targets {
            let healthy = wait(Duration::from_secs(15), || {
                let probe = unique("probe");
                request("POST", &format!("{target}/api/payments/1"), &[("x-account", probe.as_str())])
                    .is_ok_and(|r| r.status == 200)
            });
            assert!(healthy, "{target}: payments never recovered after {store_errors} store errors");
        }
    }
    let other = post_burst(4, &t.targets, "/api/payments/1", &[("x-account".into(), unique("other"))]);
    assert!(other.iter().all(|r| r.status == 200), "{:?}", other.iter().map(|r| r.status).collect::<Vec<_>>());
}
