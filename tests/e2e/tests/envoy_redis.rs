//! Limits across proxies: two real Envoys (`--concurrency 2` each) share Redis through
//! sluice-gateway, on standalone Redis and on a 6-node Redis Cluster; Redis outages follow each
//! rule's `on_error`, within the timeout, and the circuit breaker opens and closes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::*;

use sluice::strategy::NAMES as STRATEGIES;

/// Two proxies in front of one gateway.
fn two_proxies(gateway: &Gateway, config: &Value) -> (Envoy, Envoy) {
    let start = || {
        let mut boot = bootstrap("demo.yaml");
        adapt(&mut boot, Some(config));
        add_cluster(&mut boot, "sluice_gateway", gateway.port);
        Envoy::running(&boot, 2)
    };
    (start(), start())
}

fn redis_block(timeout_ms: u64, open_ms: u64) -> Value {
    json!({"cluster": "sluice_gateway", "token": GATEWAY_TOKEN, "timeout_ms": timeout_ms,
           "breaker": {"failure_threshold": 3, "open_ms": open_ms, "success_threshold": 2}})
}

fn strategy(name: &str) -> Value {
    match name {
        "token_bucket_debt" => json!({"type": name, "max_debt": 0}),
        // The leak is fluid, so a request may wait for the part of one leak interval (0.6 s at 100/min)
        // that the burst has not used yet. A 50 ms wait admits none of those: the burst is
        // decided at once, like the others, and must admit exactly the limit.
        "leaky_bucket_queue" => json!({"type": name, "max_delay_ms": 50}),
        _ => json!(name),
    }
}

/// 400 concurrent requests for one client, split over both proxies, limit 100/min: exactly 100
/// admitted for every strategy.
fn exact_across_proxies(gateway: &Gateway, label: &str) {
    let rules: Vec<Value> = STRATEGIES
        .iter()
        .map(|s| {
            json!({"name": s, "match": {"path": format!("/{s}/**")}, "limit": "100/min",
                        "strategy": strategy(s), "identifier": {"header": "x-burst"}, "backend": "redis", "on_error": "deny"})
        })
        .collect();
    // A generous timeout: this test is about counting, and a timeout would deny (on_error).
    let config = json!({"namespace": format!("exact-{label}"), "redis": redis_block(3000, 1000), "rules": rules});
    let (a, b) = two_proxies(gateway, &config);
    let calls_before = gateway.metric("sluice_gateway_commands_total");
    let posts_before = gateway.metric("sluice_gateway_requests_total{endpoint=\"/pipeline\"");
    let mut report = Vec::new();
    for s in STRATEGIES {
        let run = exact_burst(s, 100, 60_000, 400, &[a.url(&format!("/{s}/x")), b.url(&format!("/{s}/x"))]);
        let (admitted, limited) = (run.count(200), run.count(429));
        assert_eq!(admitted + limited, 400, "{label} {s}: only 200 and 429 expected");
        let stat = |what: &str| {
            a.settled_stat(&format!("wasmcustom.sluice.rule.{s}.{what}"))
                + b.settled_stat(&format!("wasmcustom.sluice.rule.{s}.{what}"))
        };
        assert_eq!(stat("store_errors"), 0, "{label} {s}: Redis calls failed during the burst");
        // Exact with the deny cache answering part of the denials: it only ever denies.
        report.push(format!(
            "{s}: {admitted}/100 in a {} ms burst (try {}), {} denials from the cache (warm-up and burst)",
            run.elapsed_ms,
            run.tries,
            stat("cached_denials")
        ));
        assert_eq!(
            admitted, 100,
            "{label} {s}: {admitted} admitted of 400, limit 100 ({} ms burst, bound {})",
            run.elapsed_ms, run.bound
        );
    }
    eprintln!("{label}: admitted of 400 over 2 proxies: {}", report.join(", "));
    // A busy worker gathers the requests that arrive while its call is out into one callout.
    let calls = gateway.metric("sluice_gateway_commands_total") - calls_before;
    let posts = gateway.metric("sluice_gateway_requests_total{endpoint=\"/pipeline\"") - posts_before;
    eprintln!("{label}: {calls} script calls in {posts} callouts");
    assert!(posts > 0.0 && calls > posts, "{label}: no callout carried several requests ({calls} calls in {posts} callouts)");
}

#[test]
fn every_strategy_is_exact_across_two_proxies_on_standalone_redis() {
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    exact_across_proxies(&gateway, "standalone");
}

/// The same through sluice's Redis module instead of the function library.
#[test]
fn every_strategy_is_exact_across_two_proxies_through_the_redis_module() {
    let redis = Redis::start_with_module();
    let gateway = Gateway::start(&["--redis-url", &redis.url(), "--redis-calls", "module"]);
    exact_across_proxies(&gateway, "module");
    assert_eq!(gateway.metric("sluice_gateway_redis_calls_total{command=\"FCALL\"}"), 0.0);
    assert!(gateway.metric("sluice_gateway_redis_calls_total{command=\"MODULE\"}") > 0.0);
}

#[test]
fn every_strategy_is_exact_across_two_proxies_on_a_redis_cluster_through_the_module() {
    let cluster = RedisCluster::start_with_module();
    let gateway = Gateway::start(&["--cluster-nodes", &cluster.seeds, "--redis-calls", "module"]);
    exact_across_proxies(&gateway, "cluster-module");
    assert!(gateway.metric("sluice_gateway_redis_calls_total{command=\"MODULE\"}") > 0.0);
}

#[test]
fn every_strategy_is_exact_across_two_proxies_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let gateway = Gateway::start(&["--cluster-nodes", &cluster.seeds]);
    exact_across_proxies(&gateway, "cluster");
    a_request_denied_by_one_rule_consumes_nothing_from_the_others(&gateway);
}

/// Two Redis rules (two hash tags, so two cluster slots) on one path: requests the narrow one
/// denies take nothing from the wide one.
fn a_request_denied_by_one_rule_consumes_nothing_from_the_others(gateway: &Gateway) {
    let config = json!({"namespace": "multi", "redis": redis_block(3000, 1000), "rules": [
        {"name": "wide", "limit": "10/min", "strategy": "sliding_window_log", "backend": "redis"},
        {"name": "narrow", "match": {"path": "/narrow"}, "limit": "1/min", "strategy": "gcra", "backend": "redis"}
    ]});
    let (a, b) = two_proxies(gateway, &config);
    assert_eq!(get(&a.url("/narrow"), &[]).unwrap().status, 200); // wide 1, narrow 1
    for proxy in [&a, &b, &a, &b, &a] {
        assert_eq!(get(&proxy.url("/narrow"), &[]).unwrap().status, 429);
    }
    // Wide still has 9 of its 10.
    let wide = burst_over(15, &[a.url("/w"), b.url("/w")], &[]);
    assert_eq!(wide.iter().filter(|r| r.status == 200).count(), 9, "denied requests consumed from 'wide'");
}

/// Keys matching `pattern` (redis-cli prints an empty line for none).
fn keys(redis: &Redis, pattern: &str) -> usize {
    redis_cli(redis.port, &["KEYS", pattern]).lines().filter(|l| !l.trim().is_empty()).count()
}

fn timed_get(url: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = get(url, &[]).unwrap_or_else(|e| panic!("{url}: {e}"));
    (r.status, t.elapsed())
}

#[test]
fn a_redis_outage_follows_on_error_within_the_timeout_and_the_breaker_recovers() {
    let mut redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let timeout_ms = 100;
    let config = json!({"namespace": "outage", "redis": redis_block(timeout_ms, 3000), "rules": [
        {"name": "open", "match": {"path": "/allow"}, "limit": "1000/min", "backend": "redis", "on_error": "allow"},
        {"name": "closed", "match": {"path": "/deny"}, "limit": "1000/min", "backend": "redis", "on_error": "deny"},
        {"name": "fb", "match": {"path": "/fallback"}, "limit": "20/hour", "strategy": "fixed_window",
         "backend": "redis", "on_error": {"fallback": {"share": 0.5}}}
    ]});
    let (a, b) = two_proxies(&gateway, &config);
    let margin = Duration::from_millis(timeout_ms + 400);

    // Healthy: counted in Redis.
    assert_eq!(timed_get(&a.url("/allow")).0, 200);
    assert!(keys(&redis, "outage:{open:*") >= 1, "not counted in Redis");

    // Redis hangs: every answer still comes within the timeout (+ margin), per on_error.
    redis.freeze(true);
    for (path, want) in [("/allow", 200), ("/deny", 429)] {
        let (status, took) = timed_get(&b.url(path));
        assert_eq!(status, want, "{path} while Redis hangs");
        assert!(took <= margin, "{path} took {took:?} with redis.timeout_ms = {timeout_ms}");
    }
    redis.freeze(false);

    // Redis is down: allow admits, deny limits, fallback limits at its share, per proxy.
    redis.stop();
    for _ in 0..10 {
        let (status, took) = timed_get(&a.url("/allow"));
        assert_eq!(status, 200);
        assert!(took <= margin, "/allow took {took:?}");
        let (status, took) = timed_get(&a.url("/deny"));
        assert_eq!(status, 429);
        assert!(took <= margin, "/deny took {took:?}");
    }
    let fallback = burst(30, &a.url("/fallback"), &[]);
    assert_eq!(fallback.iter().filter(|r| r.status == 200).count(), 10, "fallback: half of 20 on this proxy");

    // The breaker is open now (for 3 s): requests do not reach the gateway at all. Counted by
    // the proxy as it sends them, so calls still hanging from the freeze change nothing, and
    // nothing waits here for the breaker's window to pass.
    let sent = || a.stat("cluster.sluice_gateway.upstream_rq_total");
    let before = sent();
    assert!(before > 0, "the proxy's calls to the gateway are counted");
    for _ in 0..5 {
        assert_eq!(get(&a.url("/allow"), &[]).unwrap().status, 200);
    }
    assert_eq!(sent(), before, "calls reached the gateway while the breaker was open");

    // Redis is back: after open_ms, probes close the breaker and requests are counted in Redis
    // again (polled on real time, bounded).
    redis.restart();
    let counted = wait_until(Duration::from_secs(15), || {
        let _ = get(&a.url("/allow"), &[]);
        keys(&redis, "outage:{open:*") >= 1
    });
    assert!(counted.is_some(), "requests were not counted in Redis again after it came back");
    let before = sent();
    for _ in 0..5 {
        assert_eq!(get(&a.url("/allow"), &[]).unwrap().status, 200);
    }
    assert!(sent() >= before + 3, "breaker did not close: {} calls for 5 requests", sent() - before);
    assert!(a.settled_stat("wasmcustom.sluice.rule.closed.store_errors") >= 10);
}

/// A client over its limit costs Redis one call per denial period, not one per request: the
/// denials after the first come from the deny cache, counted in the proxy's stats, and the
/// gateway sees no command for them.
#[test]
fn cached_denials_make_no_redis_call() {
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let config = json!({"namespace": "deny-cache", "redis": redis_block(3000, 1000), "rules": [
        {"name": "api", "limit": "3/hour", "strategy": "fixed_window", "identifier": {"header": "x-client"}, "backend": "redis"}
    ]});
    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, Some(&config));
    add_cluster(&mut boot, "sluice_gateway", gateway.port);
    let proxy = Envoy::running(&boot, 2);
    let url = proxy.url("/api");
    let commands = || gateway.metric("sluice_gateway_commands_total");
    // A first call for another client, so that the script is loaded before counting.
    assert_eq!(get(&url, &[("x-client", "warm-up")]).map_or(0, |r| r.status), 200);
    let before = commands();
    let statuses: Vec<u16> = (0..13).map(|_| get(&url, &[("x-client", "c1")]).map_or(0, |r| r.status)).collect();
    assert_eq!(statuses, [[200; 3].as_slice(), [429; 10].as_slice()].concat());
    let called = commands() - before;
    assert_eq!(called, 4.0, "3 admissions and 1 denial reached Redis; the other 9 denials did not");
    assert_eq!(proxy.settled_stat("wasmcustom.sluice.rule.api.cached_denials"), 9);
    // A cached denial is a full 429: Retry-After and the rate limit fields.
    let limited = get(&url, &[("x-client", "c1")]).unwrap();
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after");
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(limited.header("ratelimit-policy"), Some("\"api\";q=3;w=3600"));
    assert!(limited.header("ratelimit").is_some_and(|v| v.starts_with("\"api\";r=0;t=")), "{:?}", limited.headers);
    // Another client is unaffected.
    assert_eq!(get(&url, &[("x-client", "c2")]).map_or(0, |r| r.status), 200);
}

/// Two filter configs in one VM (two listeners here; a config update leaves the old one
/// draining beside the new): a worker's gathered calls are sent and answered at whichever root
/// runs them, and Envoy keeps each call's answer with the root of the context that was
/// effective when it was sent. Reading it from another root found no answer, and every request
/// of that call followed on_error. Under load on both listeners at once, no call may fail.
#[test]
fn gathered_calls_of_two_configs_in_one_vm_are_all_answered() {
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let config = |ns: &str| {
        json!({"namespace": ns, "redis": redis_block(2000, 1000),
               "rules": [{"name": "api", "limit": "1000000/min", "backend": "redis", "on_error": "allow"}]})
    };
    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, Some(&config("first")));
    add_cluster(&mut boot, "sluice_gateway", gateway.port);
    let second = free_port();
    let listener = listener_copy(&boot, "second", second, &config("second"));
    if let Value::Array(listeners) = &mut boot["static_resources"]["listeners"] {
        listeners.push(listener);
    }
    let envoy = Envoy::running(&boot, 1);
    let urls = [envoy.url("/a"), format!("http://127.0.0.1:{second}/b")];
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let load: Vec<_> = (0..6)
            .map(|i| {
                let url = &urls[i % 2];
                s.spawn(move || (0..150).map(|_| get(url, &[]).map_or(0, |r| r.status)).collect::<Vec<u16>>())
            })
            .collect();
        load.into_iter().flat_map(|h| h.join().expect("load thread")).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{:?}", statuses.iter().filter(|s| **s != 200).count());
    let errors = envoy.settled_stat("wasmcustom.sluice.rule.api.store_errors");
    let calls = envoy.stat("cluster.sluice_gateway.upstream_rq_total");
    assert!(calls > 0 && calls < 900, "calls were gathered: {calls} for 900 requests");
    assert_eq!(errors, 0, "{errors} decisions followed on_error ({calls} calls)");
}
