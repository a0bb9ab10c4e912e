//! The Higress build (`sluice-redis-callout.wasm`, feature `redis-callout`) in the harness,
//! talking RESP over `proxy_redis_call` to a real `redis-server` on loopback: every strategy
//! exact across two proxies sharing one Redis, a multi-rule request (one call per rule) denied
//! by one rule consuming nothing from the other, NOSCRIPT recovery, `on_error` when Redis is
//! gone, and the deterministic costs of a request. Stock Envoy cannot load this module (it lacks
//! the Redis imports), so this is where the build's Redis path runs against a real server.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::Redis;
use serde_json::{json, Value};
use sluice::strategy::NAMES as STRATEGIES;
use sluice_harness::{forward, Host, Origin, RedisCall, RedisReply, Request, Response, Schedule};

fn plugin(namespace: &str, rules: Value) -> Value {
    json!({
        "namespace": namespace,
        "redis": {"cluster": "redis", "transport": "redis_callout", "timeout_ms": 200},
        "rules": rules,
    })
}

/// One proxy (`workers` Envoy workers) whose Redis calls go to `redis`.
fn proxy(config: &Value, workers: usize, redis: &Redis) -> Host {
    proxy_calling(config, workers, forward::redis_to(redis.addr))
}

/// One proxy whose Redis calls `on_call` answers.
fn proxy_calling(config: &Value, workers: usize, on_call: impl FnMut(&RedisCall) -> RedisReply + 'static) -> Host {
    Host::builder()
        .wasm(common::redis_callout_wasm())
        .cluster("redis")
        .config(config.to_string())
        .workers(workers)
        .on_redis_call(on_call)
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()))
}

fn strategy(name: &str) -> Value {
    match name {
        "token_bucket_debt" => json!({"type": name, "max_debt": 0}),
        "leaky_bucket_queue" => json!({"type": name, "max_delay_ms": 1000}),
        _ => json!(name),
    }
}

fn unix_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 3600).unwrap_or(0)
}

/// `r` of a rule in the RateLimit field (`"name";r=R;t=T`, several rules comma-separated).
fn remaining(resp: &Response, rule: &str) -> Option<u64> {
    let field = resp.header("ratelimit")?;
    let item = field.split(',').map(str::trim).find(|i| i.starts_with(&format!("\"{rule}\";")))?;
    item.split(';').find_map(|p| p.strip_prefix("r="))?.parse().ok()
}

#[test]
fn every_strategy_is_exact_across_two_proxies_sharing_one_redis() {
    const LIMIT: usize = 100;
    let redis = Redis::start();
    for (n, name) in STRATEGIES.iter().enumerate() {
        // Redis' clock decides (TIME). A limit per hour leaks or refills one request every 36 s,
        // far longer than the run; a run that crosses an hour boundary (fixed windows start
        // afresh there) is run again under a new namespace.
        let mut attempt = 0;
        let (admitted, queued, limited) = loop {
            let config = plugin(
                &format!("s{n}a{attempt}"),
                json!([{
                    "name": "api", "limit": format!("{LIMIT}/hour"), "strategy": strategy(name),
                    "identifier": "global", "backend": "redis", "on_error": "deny",
                }]),
            );
            let (mut a, mut b) = (proxy(&config, 2, &redis), proxy(&config, 2, &redis));
            let hour = unix_hour();
            let mut resps = Vec::new();
            // 400 requests: 200 per proxy, 100 per worker, in seeded interleavings, the two
            // proxies taking turns every 20 requests.
            for round in 0..10u64 {
                for (host, seed) in [(&mut a, round * 2 + 1), (&mut b, round * 2 + 2)] {
                    let reqs: Vec<Request> = (0..20).map(|i| Request::get("/api/x").on_worker(i % 2)).collect();
                    resps.extend(host.run(reqs, Schedule::Seeded(seed + n as u64 * 100)));
                }
            }
            assert!(a.traps().is_empty() && b.traps().is_empty(), "{name}: {:?} {:?}", a.traps(), b.traps());
            if unix_hour() != hour && attempt == 0 {
                attempt += 1;
                continue;
            }
            let count = |f: &dyn Fn(&Response) -> bool| resps.iter().filter(|r| f(r)).count();
            break (count(&|r| r.admitted()), count(&|r| r.origin == Origin::Unfinished), count(&|r| r.status == 429));
        };
        assert_eq!(admitted + queued + limited, 400, "{name}: every request decided");
        assert_eq!(admitted + queued, LIMIT, "{name}: admitted {admitted} + queued {queued} across both proxies");
    }
}

#[test]
fn a_request_one_rule_denies_consumes_nothing_from_the_other() {
    let redis = Redis::start();
    let config = plugin(
        "multi",
        json!([
            {"name": "site", "limit": "5/hour", "identifier": "global", "backend": "redis", "on_error": "deny"},
            {"name": "user", "limit": "2/hour", "identifier": {"header": "x-user"}, "backend": "redis", "on_error": "deny"},
        ]),
    );
    let mut host = proxy(&config, 2, &redis);
    let send = |host: &mut Host, user: &str| host.request("GET", "/").header("x-user", user).send();
    assert!(send(&mut host, "ann").admitted());
    let r = send(&mut host, "ann");
    assert!(r.admitted());
    assert_eq!(remaining(&r, "site"), Some(3), "{r:?}");
    let denied = send(&mut host, "ann");
    assert_eq!(denied.status, 429, "{denied:?}");
    // The denied request took nothing from "site": another user still finds 3 left, then 2.
    let r = send(&mut host, "bob");
    assert!(r.admitted(), "{r:?}");
    assert_eq!(remaining(&r, "site"), Some(2), "{r:?}");
    // Each rule went to Redis as its own call (one command per Redis callout).
    let calls: Vec<Vec<String>> = host.redis_calls().iter().filter_map(|c| c.command()).collect();
    assert!(calls.len() >= 8, "{calls:?}");
    assert!(calls.iter().all(|w| w.len() > 3 && (w[0] == "EVALSHA" || w[0] == "EVAL") && w[2] == "1"), "{calls:?}");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

#[test]
fn a_callout_that_fails_for_one_rule_leaves_the_others_answers_standing() {
    let redis = Redis::start();
    let config = plugin(
        "part",
        json!([
            {"name": "flaky", "limit": "5/hour", "identifier": "global", "backend": "redis", "on_error": "allow"},
            {"name": "steady", "limit": "5/hour", "identifier": "global", "backend": "redis", "on_error": "deny"},
        ]),
    );
    // Every call for "flaky" fails in transport (its node unreachable); "steady"'s reach Redis.
    let mut to_redis = forward::redis_to(redis.addr);
    let mut host = proxy_calling(&config, 1, move |call: &RedisCall| {
        if call.query.windows(b"flaky".len()).any(|w| w == b"flaky") {
            RedisReply::Fail(1)
        } else {
            to_redis(call)
        }
    });
    // "steady" decides in Redis, "flaky" by its on_error; before, one failed command failed the
    // request, and "steady"'s on_error denied it.
    for left in [4, 3] {
        let r = host.request("GET", "/").send();
        assert!(r.admitted(), "{r:?}");
        assert_eq!(remaining(&r, "steady"), Some(left), "counted in Redis: {r:?}");
    }
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

#[test]
fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = Redis::start();
    let config = plugin(
        "noscript",
        json!([
            {"name": "api", "limit": "3/hour", "identifier": "global", "backend": "redis", "on_error": "deny"},
        ]),
    );
    let mut host = proxy(&config, 1, &redis);
    assert!(host.request("GET", "/").send().admitted());
    assert_eq!(redis.command("SCRIPT FLUSH\r\n"), "+OK\r\n");
    let r = host.request("GET", "/").send();
    assert!(r.admitted(), "{r:?}");
    assert_eq!(remaining(&r, "api"), Some(1), "counted in Redis after the reload: {r:?}");
    assert_eq!(host.request("GET", "/").send().status, 200);
    assert_eq!(host.request("GET", "/").send().status, 429);
}

#[test]
fn without_redis_each_rule_follows_its_on_error() {
    let redis = Redis::start();
    let config = plugin(
        "down",
        json!([
            {"name": "open", "match": {"path": "/open/**"}, "limit": "1/hour", "identifier": "global", "backend": "redis", "on_error": "allow"},
            {"name": "closed", "match": {"path": "/closed/**"}, "limit": "1/hour", "identifier": "global", "backend": "redis", "on_error": "deny"},
            {"name": "local", "match": {"path": "/fallback/**"}, "limit": "4/hour", "identifier": "global", "backend": "redis",
             "on_error": {"fallback": {"share": 0.5}}},
        ]),
    );
    let mut host = proxy(&config, 1, &redis);
    assert!(host.request("GET", "/open/x").send().admitted());
    drop(redis); // Redis is gone: every call now fails.
    for _ in 0..3 {
        assert!(host.request("GET", "/open/x").send().admitted(), "allow admits past the (unreachable) limit");
        assert_eq!(host.request("GET", "/closed/x").send().status, 429, "deny limits");
    }
    let fallback: Vec<u16> = (0..4).map(|_| host.request("GET", "/fallback/x").send().status).collect();
    assert_eq!(fallback, vec![200, 200, 429, 429], "fallback decides locally at half the limit");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

/// This build's Redis path per request, held at or below the figures reached (as
/// `gateway_callout.rs` holds the HTTP path's): a request alone on one worker, its rule's call
/// encoded as RESP, sent, answered by a real Redis and parsed. Guest fuel counts the encode and
/// parse among the rest of the filter's work, so a costlier RESP writer or reader fails here.
#[test]
fn a_redis_callout_request_costs_no_more_vm_entries_host_calls_or_guest_work() {
    let redis = Redis::start();
    let config =
        plugin("costs", json!([{"name": "api", "limit": "1000000000/hour", "identifier": "global", "backend": "redis"}]));
    let mut host = proxy(&config, 1, &redis);
    // The first requests load the script (NOSCRIPT, then EVAL) and warm the worker.
    host.run((0..3).map(|_| Request::get("/api/x")).collect(), Schedule::InOrder);
    let before = host.crossings();
    let responses = host.run((0..5).map(|_| Request::get("/api/x")).collect(), Schedule::InOrder);
    let after = host.crossings();
    assert!(responses.iter().all(Response::admitted), "{responses:?}");
    let (entries, calls, fuel) = common::per_request(before, after, 5);
    eprintln!("per request: {entries:.2} VM entries, {calls:.2} host calls, {fuel:.0} fuel");
    assert!(entries <= 9.0, "{entries} VM entries per request, at most 9 reached before");
    assert!(calls <= 12.0, "{calls} host calls per request, at most 12 reached before");
    // 42,888 while each RESP word was written with `format!`; 34,060 while each word of a
    // command was a `String` of its own; 25,682 before each rule's reply stood on its own and
    // the breaker was told after the call (25,850 since).
    assert!(fuel <= 25_900.0, "{fuel} guest fuel per request, at most 25,900 reached before");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}
