//! The real `sluice.wasm` in a real Envoy 1.40 (`--concurrency 2`), local backend: exact counts
//! under concurrency for every strategy, identities, exemptions, shadow rules, the limited
//! response, and config rejection.

use serde_json::{json, Value};
use sluice_e2e::{adapt, bootstrap, burst, exact_burst, get, get_with_raw_header, Envoy, Started};

use sluice::strategy::NAMES as STRATEGIES;

fn envoy_with(config: Value) -> Envoy {
    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, Some(&config));
    Envoy::running(&boot, 2)
}

fn strategy(name: &str) -> Value {
    match name {
        // No debt: the test is about the limit itself.
        "token_bucket_debt" => json!({"type": name, "max_debt": 0}),
        // The leak is fluid, so a request may wait for the part of one leak interval (1.2 s at 50/min)
        // that the burst has not used yet. A 50 ms wait admits none of those: the burst is
        // decided at once, like the others, and must admit exactly the limit.
        "leaky_bucket_queue" => json!({"type": name, "max_delay_ms": 50}),
        _ => json!(name),
    }
}

#[test]
fn every_strategy_admits_exactly_the_limit_under_a_concurrent_burst() {
    let rules: Vec<Value> = STRATEGIES
        .iter()
        .map(|s| {
            json!({"name": s, "match": {"path": format!("/{s}/**")}, "limit": "50/min", "strategy": strategy(s),
                        "identifier": {"header": "x-burst"}})
        })
        .collect();
    let envoy = envoy_with(json!({"namespace": "exact", "rules": rules}));
    let mut report = Vec::new();
    for s in STRATEGIES {
        let b = exact_burst(s, 50, 60_000, 200, &[envoy.url(&format!("/{s}/x"))]);
        let (admitted, limited) = (b.count(200), b.count(429));
        report.push(format!("{s}: {admitted}/50 in a {} ms burst (try {})", b.elapsed_ms, b.tries));
        assert_eq!(admitted + limited, 200, "{s}: only 200 and 429 expected");
        assert_eq!(admitted, 50, "{s}: {admitted} admitted of 200, limit 50 ({} ms burst, bound {})", b.elapsed_ms, b.bound);
    }
    // Exactness only means something if both workers decided requests.
    let per_worker = envoy.connections_per_worker();
    eprintln!("accuracy: {}; connections per worker: {per_worker:?}", report.join(", "));
    assert!(per_worker.len() == 2 && per_worker.iter().all(|n| *n > 0), "connections per worker: {per_worker:?}");
}

#[test]
fn header_identities_are_counted_apart_and_fall_back_to_the_client_ip() {
    let envoy = envoy_with(json!({"rules": [{
        "name": "per-key", "limit": "3/hour", "strategy": "fixed_window", "identifier": {"header": "x-api-key"}
    }]}));
    let url = envoy.url("/k");
    let a = burst(10, &url, &[("x-api-key", "alice")]);
    let b = burst(10, &url, &[("x-api-key", "bob")]);
    let anon = burst(10, &url, &[]);
    for (who, rs) in [("alice", a), ("bob", b), ("no key (client ip)", anon)] {
        assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 3, "{who}");
    }
}

#[test]
fn header_values_that_are_not_utf8_are_identities_like_any_other() {
    // HTTP allows any byte above 0x7f in a field value ("obs-text"), and Envoy passes it on.
    let per_key =
        json!({"name": "per-key", "limit": "2/hour", "strategy": "fixed_window", "identifier": {"header": "x-api-key"}});
    // A config that reads three headers makes the filter read all of them in one host call.
    let three = json!({"name": "other", "match": {"headers": {"x-tenant": "t"}}, "limit": "9/min",
                       "cost": {"header": "x-cost"}});
    for rules in [json!([per_key]), json!([per_key, three])] {
        let envoy = envoy_with(json!({ "rules": rules }));
        let url = envoy.url("/u");
        let statuses = |value: &[u8]| -> Vec<u16> {
            let line = [b"x-api-key: ".as_slice(), value].concat();
            (0..3).map(|_| get_with_raw_header(&url, &line).map_or(0, |r| r.status)).collect()
        };
        // Two values that are not UTF-8 (and would be one value after a lossy conversion), and
        // a plain one: each is its own identity, limited at 2, and none breaks the filter.
        assert_eq!(statuses(b"\xff\xfe"), [200, 200, 429], "{rules}");
        assert_eq!(statuses(b"\xfe\xff"), [200, 200, 429], "{rules}");
        assert_eq!(statuses(b"caf\xc3\xa9"), [200, 200, 429], "{rules}");
        let log = envoy.log_text();
        assert!(!log.contains("panicked"), "the filter panicked:\n{log}");
    }
}

#[test]
fn a_config_reading_several_headers_sees_each_as_if_read_alone() {
    // Four header names (one match, one identity, one cost, one exemption): read all at once.
    let envoy = envoy_with(json!({"rules": [{
        "name": "tenant", "match": {"headers": {"x-tenant": "acme"}}, "limit": "5/hour", "strategy": "fixed_window",
        "identifier": {"header": "x-user"}, "cost": {"header": "x-cost", "default": 1, "max": 5},
        "exempt": {"headers": {"x-internal": "yes"}}
    }]}));
    let url = envoy.url("/t");
    let admitted = |headers: &[(&str, &str)], n: usize| burst(n, &url, headers).iter().filter(|r| r.status == 200).count();
    assert_eq!(admitted(&[("x-tenant", "acme"), ("x-user", "u1"), ("x-cost", "2")], 5), 2, "cost 2 of 5");
    assert_eq!(admitted(&[("x-tenant", "acme"), ("x-user", "u2")], 8), 5, "another user, default cost");
    assert_eq!(admitted(&[("x-tenant", "other"), ("x-user", "u2")], 8), 8, "no match");
    assert_eq!(admitted(&[("x-tenant", "acme"), ("x-user", "u2"), ("x-internal", "yes")], 8), 8, "exempt");
    // Envoy joins nothing: of two x-user fields the first counts, as a single read would see.
    let first = burst(3, &url, &[("x-tenant", "acme"), ("x-user", "u3"), ("x-user", "u9")]);
    assert_eq!(first.iter().filter(|r| r.status == 200).count(), 3);
    assert_eq!(admitted(&[("x-tenant", "acme"), ("x-user", "u3")], 5), 2, "u3 had used 3 of 5");
}

#[test]
fn exempt_clients_are_never_limited() {
    let envoy = envoy_with(json!({"rules": [{
        "name": "api", "limit": "2/hour",
        "exempt": {"headers": {"x-internal": "yes"}, "cidrs": ["192.0.2.0/24"]}
    }]}));
    let url = envoy.url("/a");
    let internal = burst(20, &url, &[("x-internal", "yes")]);
    assert!(internal.iter().all(|r| r.status == 200));
    let others = burst(20, &url, &[]);
    assert_eq!(others.iter().filter(|r| r.status == 200).count(), 2);

    // 127.0.0.1 inside an exempt range: the client IP comes from Envoy's source.address.
    let envoy = envoy_with(json!({"rules": [{"name": "api", "limit": "2/min", "exempt": {"cidrs": ["127.0.0.0/8"]}}]}));
    assert!(burst(20, &envoy.url("/a"), &[]).iter().all(|r| r.status == 200));
}

#[test]
fn shadow_rules_count_and_report_but_never_block() {
    // A trial limit is kept out of the rate limit fields unless it asks to be shown.
    let envoy = envoy_with(json!({"rules": [{"name": "trial", "limit": "5/min", "shadow": true},
        {"name": "shown", "match": {"path": "/shown"}, "limit": "5/min", "shadow": true, "advertise": true}]}));
    let rs = burst(30, &envoy.url("/s"), &[]);
    assert!(rs.iter().all(|r| r.status == 200), "a shadow rule blocked a request");
    let last = get(&envoy.url("/s"), &[]).unwrap();
    assert_eq!(last.status, 200);
    assert_eq!((last.header("ratelimit"), last.header("ratelimit-policy")), (None, None), "{:?}", last.headers);
    assert!(envoy.settled_stat("wasmcustom.sluice.rule.trial.shadow_limited") >= 25);
    let rs = burst(6, &envoy.url("/shown"), &[]);
    assert!(rs.iter().all(|r| r.status == 200), "a shadow rule blocked a request");
    let last = get(&envoy.url("/shown"), &[]).unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("ratelimit").map(|v| v.starts_with("\"shown\";r=0;")), Some(true), "{:?}", last.headers);
}

#[test]
fn limited_response_carries_retry_after_rate_limit_fields_and_a_problem_body() {
    // An hour's window: a fixed window that rolled over between the requests would admit again.
    let envoy = envoy_with(json!({"rules": [{"name": "api", "limit": "2/hour", "strategy": "fixed_window"}],
        "response": {"headers": {"x-reason": "throttled"}}}));
    let url = envoy.url("/p");
    let ok = get(&url, &[]).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("ratelimit-policy"), Some("\"api\";q=2;w=3600"));
    assert!(ok.header("ratelimit").is_some_and(|v| v.starts_with("\"api\";r=1;t=")), "{:?}", ok.headers);
    get(&url, &[]).unwrap();
    let limited = get(&url, &[]).unwrap();
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after");
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.header("ratelimit-policy"), Some("\"api\";q=2;w=3600"));
    assert_eq!(limited.header("ratelimit"), Some(format!("\"api\";r=0;t={retry}").as_str()));
    assert_eq!(limited.header("x-reason"), Some("throttled"));
    assert_eq!(limited.header("x-envoy-ratelimited"), Some("true"), "Envoy's routers retry no response with it");
    assert_eq!(limited.header("content-type"), Some("application/problem+json"));
    let body: Value = serde_json::from_str(&limited.body).expect("problem+json body");
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["violated_rules"], json!(["api"]));
    // A gRPC call gets a gRPC error Envoy makes of the same response: RESOURCE_EXHAUSTED, which
    // a gRPC client or a mesh does not retry (UNAVAILABLE, Envoy's own mapping of 429, they do).
    let grpc = get(&url, &[("content-type", "application/grpc")]).unwrap();
    assert_eq!((grpc.status, grpc.header("grpc-status")), (200, Some("8")), "{:?}", grpc.headers);
    assert_eq!(grpc.header("content-type"), Some("application/grpc"));
    assert!(grpc.header("retry-after").is_some() && grpc.header("ratelimit").is_some(), "{:?}", grpc.headers);
    assert!(grpc.header("grpc-message").is_some_and(|m| m.contains("violated_rules")), "{:?}", grpc.headers);
}

#[test]
fn a_bad_config_is_rejected_by_envoy_with_every_error_named() {
    let mut boot = bootstrap("demo.yaml");
    let bad = json!({"rules": [
        {"name": "a", "limit": "100/fortnight"},
        {"name": "b", "limit": "5/s", "strategy": "best_effort", "colour": "blue"}
    ]});
    adapt(&mut boot, Some(&bad));
    match Envoy::start(&boot, 2) {
        Started::Running(e) => panic!("envoy accepted a bad config:\n{}", e.log_text()),
        Started::Exited { log, .. } => {
            for needle in ["rules[0].limit", "fortnight", "rules[1].strategy", "best_effort", "rules[1].colour"] {
                assert!(log.contains(needle), "envoy's log does not name {needle:?}:\n{log}");
            }
        }
    }
}

#[test]
fn host_is_the_authority_however_headers_are_read() {
    // Envoy keeps Host as :authority. A read of `host` alone finds it; a config reading three or
    // more header names reads them all at once, where only `:authority` is listed.
    let rule = |name: &str, methods: bool| {
        let mut r = json!({"name": name, "match": {"path": "/h/**", "headers": {"host": "api.example.com"}},
                           "limit": "2/hour", "strategy": "fixed_window", "identifier": "global"});
        if methods {
            r["match"]["methods"] = json!(["GET"]);
        }
        r
    };
    for (name, methods) in [("alone", false), ("at-once", true)] {
        let envoy = envoy_with(json!({"rules": [rule(name, methods)]}));
        let url = envoy.url("/h/x");
        let statuses: Vec<u16> = (0..3).map(|_| get(&url, &[("host", "api.example.com")]).map_or(0, |r| r.status)).collect();
        assert_eq!(statuses, [200, 200, 429], "{name}: the rule matched the Host header");
        assert_eq!(get(&url, &[("host", "other.example.com")]).map_or(0, |r| r.status), 200, "{name}: another host");
    }
}
