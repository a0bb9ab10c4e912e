//! The real filter (sluice.wasm) in the harness: the shared strategy case table, exactness under
//! interleaved workers, the absent-key race, time stepping back, bad configurations, and bounded
//! shared data.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use sluice::strategy::cases;
use sluice::strategy::NAMES as STRATEGIES;
use sluice_harness::{LogLevel, Origin, Request, RequestState, Schedule};

use common::{sluice_host as host, strategy_config};

const CASES: &str = include_str!("../../cases/strategies.json");

fn strategy_json(spec: &cases::StrategySpec) -> Value {
    let mut s = json!({"type": spec.kind});
    if let Some(b) = spec.burst {
        s["burst"] = json!(b);
    }
    if let Some(d) = spec.max_debt {
        s["max_debt"] = json!(d);
    }
    if let Some(d) = spec.max_delay_ms {
        s["max_delay_ms"] = json!(d);
    }
    if let Some(m) = spec.max_entries {
        s["max_entries"] = json!(m);
    }
    s
}

fn rate(limit: u64, period_ms: u64) -> String {
    format!("{limit}/{period_ms}ms")
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[test]
fn strategy_case_table_through_the_wasm_matches_native() {
    let table = cases::parse(CASES).unwrap();
    let (mut ran, mut skipped, mut failures) = (0, Vec::new(), Vec::new());
    for case in &table.cases {
        let backwards = case.steps.windows(2).any(|w| w[1].t_ms * 1000 + w[1].us < w[0].t_ms * 1000 + w[0].us);
        let peeks = case.steps.iter().any(|s| s.cost == 0);
        if case.steps.iter().any(|s| s.corrupt) || backwards || peeks {
            // The filter cannot plant undecodable state, its clock never runs backwards (tested
            // below), and no request can peek (a cost of 0 takes the default: tested below):
            // these are covered natively.
            skipped.push(case.name.clone());
            continue;
        }
        let rule = json!({
            "name": "case",
            "limit": rate(case.rate.limit, case.rate.period_ms),
            "strategy": strategy_json(&case.strategy),
            "identifier": "global",
            "cost": {"header": "x-cost", "default": 1, "max": 1_000_000},
        });
        let config = json!({"rate_limit_headers": "legacy", "rules": [rule]});
        for &offset in &case.offsets_ms {
            // The host's clock starts at the case's first step: the filter's clock never runs
            // backwards, so a clock set back after start would not be the case's time.
            let start = case.steps.first().map_or(0, |s| s.now_us(table.base_ms, offset) * 1000);
            let mut host = common::sluice()
                .config(config.to_string())
                .clock(sluice_harness::Clock::at_unix_ns(start))
                .build()
                .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
            for (i, step) in case.steps.iter().enumerate() {
                host.clock().set_unix_ns(step.now_us(table.base_ms, offset) * 1000);
                let id = host.request("GET", "/x").header("x-cost", &step.cost.to_string()).start();
                ran += 1;
                let mut fail = |what: String| failures.push(format!("{} (offset {offset}) step {i}: {what}", case.name));
                if step.allowed && step.delay_ms > 0 {
                    if host.state(id) != RequestState::Paused {
                        fail(format!("expected a queued (paused) request, got {:?}", host.state(id)));
                        break;
                    }
                    continue;
                }
                let Some(resp) = host.response(id).cloned() else {
                    fail(format!("no response ({:?})", host.state(id)));
                    break;
                };
                let want_reset = if step.allowed { ceil_secs(step.reset_ms) } else { ceil_secs(step.retry_after_ms).max(1) };
                let got = (
                    resp.admitted(),
                    resp.header("x-ratelimit-remaining").map(str::to_string),
                    resp.header("x-ratelimit-reset").map(str::to_string),
                );
                let want = (step.allowed, Some(step.remaining.to_string()), Some(want_reset.to_string()));
                if got != want {
                    fail(format!("got {got:?} want {want:?} ({} {:?})", resp.status, resp.headers));
                    break;
                }
                if !step.allowed && resp.header("retry-after") != Some(&*ceil_secs(step.retry_after_ms).max(1).to_string()) {
                    fail(format!("retry-after {:?}", resp.header("retry-after")));
                    break;
                }
            }
            assert!(host.traps().is_empty(), "{}: {:?}", case.name, host.traps());
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    assert!(ran > 150, "only {ran} steps ran (skipped: {skipped:?})");
    eprintln!("case table: {ran} steps through the wasm; skipped {skipped:?}");
}

#[test]
fn four_workers_interleaved_never_admit_more_than_the_limit() {
    const LIMIT: u64 = 50;
    for (seed, strategy) in STRATEGIES.iter().enumerate() {
        let rule = json!({"name": "api", "limit": format!("{LIMIT}/hour"), "strategy": strategy_config(strategy), "identifier": "global"});
        let mut host = host(&json!({"rules": [rule]}), 4);
        // Each request in its own random order and worker, switching worker at every
        // shared-data call; the clock stands still, so nothing refills.
        // 4 workers x 1,000 requests each.
        let reqs: Vec<Request> = (0..4000).map(|i| Request::get("/api/x").on_worker(i % 4)).collect();
        let resps = host.run(reqs, Schedule::Seeded(seed as u64 + 1));
        let admitted = resps.iter().filter(|r| r.admitted()).count() as u64;
        let queued = resps.iter().filter(|r| r.origin == Origin::Unfinished).count() as u64;
        let limited = resps.iter().filter(|r| r.status == 429).count() as u64;
        assert!(host.traps().is_empty(), "{strategy}: {:?}", host.traps());
        assert!(admitted + queued <= LIMIT, "{strategy}: admitted {admitted} + queued {queued} > {LIMIT}");
        assert_eq!(admitted + queued + limited, 4000, "{strategy}: every request decided");
        assert_eq!(admitted + queued, LIMIT, "{strategy}: the full limit is usable under contention");
        let (_, writes) = host.shared_ops();
        assert!(writes >= LIMIT, "{strategy}: {writes} writes");
    }
}

#[test]
fn forced_absent_key_race_is_harmless() {
    for strategy in STRATEGIES {
        let rule = json!({"name": "one", "limit": "1/hour", "strategy": strategy_config(strategy), "identifier": "global"});
        let mut host = host(&json!({"rules": [rule]}), 2);
        let both_before_set = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = both_before_set.clone();
        // Round robin at every shared-data call: both workers read the absent slot before
        // either writes it.
        let mut last = usize::MAX;
        let schedule = Schedule::Custom(Box::new(move |ready| {
            let parked: Vec<_> = ready.iter().filter(|r| matches!(r.at, sluice_harness::Point::SharedSet { .. })).collect();
            if parked.len() == 2 {
                seen.set(true);
            }
            let i = ready.iter().position(|r| r.worker != last).unwrap_or(0);
            last = ready[i].worker;
            i
        }));
        let resps = host.run(vec![Request::get("/").on_worker(0), Request::get("/").on_worker(1)], schedule);
        assert!(both_before_set.get(), "{strategy}: the race was not forced");
        let admitted = resps.iter().filter(|r| r.admitted()).count();
        assert_eq!(admitted, 1, "{strategy}: {resps:?}");
        assert!(host.traps().is_empty());
    }
}

#[test]
fn time_stepping_back_admits_nothing_extra() {
    for strategy in STRATEGIES {
        let rule = json!({"name": "api", "limit": "5/min", "strategy": strategy_config(strategy), "identifier": "global"});
        let mut host = host(&json!({"rules": [rule]}), 2);
        let mut admitted = 0;
        for i in 0..20 {
            if i % 4 == 3 {
                // The wall clock steps back an hour, then a day.
                let back = if i % 8 == 3 { 3_600_000 } else { 86_400_000 };
                host.clock().set_unix_ms(host.clock().now_ns() / 1_000_000 - back);
            }
            if host.request("GET", "/").send().admitted() {
                admitted += 1;
            }
        }
        assert!(admitted <= 5, "{strategy}: {admitted} admitted");
        assert!(admitted >= 1, "{strategy}: nothing admitted");
        assert!(host.traps().is_empty(), "{strategy}: {:?}", host.traps());
    }
}

#[test]
fn a_clock_reading_the_host_fails_neither_stops_nor_jumps_time() {
    let rule = json!({"name": "api", "limit": "2/min", "strategy": "fixed_window", "identifier": "global"});
    let mut host = host(&json!({"rules": [rule]}), 1);
    let statuses =
        |host: &mut sluice_harness::Host, n: usize| (0..n).map(|_| host.request("GET", "/").send().status).collect::<Vec<_>>();
    assert_eq!(statuses(&mut host, 2), [200, 200]);
    // Read as time 0, a failed reading was a step back to 1970 that the clock absorbed by
    // running on from there: every later reading was fifty years ahead, in a fresh window.
    host.faults().fail_clock_reads(1);
    assert_eq!(statuses(&mut host, 3), [429, 429, 429]);
    host.clock().set_unix_ms(host.clock().now_ns() / 1_000_000 + 60_000);
    assert_eq!(statuses(&mut host, 3), [200, 200, 429], "time runs on after the failure");
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

#[test]
fn every_bad_configuration_is_rejected_with_its_errors_logged() {
    // (config, what one error line must say: its path, the offending text, what was expected).
    let bad: &[(&str, &[&str])] = &[
        ("{not json", &["invalid configuration", "not valid JSON", "line 1 column 2"]),
        (
            r#"{"rules":[{"name":"api","limit":"100/fortnight"}]}"#,
            &["rules[0].limit", "\"100/fortnight\"", "fortnight", "expected"],
        ),
        (r#"{"rules":[{"name":"api","limit":"-5/s"}]}"#, &["rules[0].limit", "\"-5/s\"", "negative", "expected"]),
        (r#"{"rules":[{"name":"api","limit":"5/0s"}]}"#, &["rules[0].limit", "period is zero", "expected"]),
        (r#"{"rules":[{"name":"api","limit":100}]}"#, &["rules[0].limit", "100", "expected a rate string", "found a number"]),
        (r#"{"rules":[{"name":"api","limit":"10/s","strategy":"bogus"}]}"#, &["rules[0].strategy", "bogus", "expected"]),
        (r#"{"rules":[{"name":"api","limit":"10/s","colour":"red"}]}"#, &["rules[0].colour", "unknown field", "expected one of"]),
        (r#"{"colour":1,"rules":[{"name":"api","limit":"1/s"}]}"#, &["colour", "unknown field", "rules"]),
        (r#"{"rules":[{"name":"a","limit":"1/s"},{"name":"a","limit":"2/s"}]}"#, &["rules[1].name", "\"a\""]),
        (r#"{"rules":[{"limit":"1/s"}]}"#, &["rules[0]", "name"]),
        (
            r#"{"rules":[{"name":"api","match":{"path":"/api/***"},"limit":"1/s"}]}"#,
            &["rules[0].match.path", "\"/api/***\"", "whole segment"],
        ),
        (
            r#"{"rules":[{"name":"api","limit":"1/s","exempt":{"cidrs":["10.0.0.0/33"]}}]}"#,
            &["rules[0].exempt.cidrs[0]", "\"10.0.0.0/33\"", "expected e.g."],
        ),
        (
            r#"{"rules":[{"name":"api","limit":"1/s","match":{"methods":["GE T"]}}]}"#,
            &["rules[0].match.methods[0]", "\"GE T\"", "expected a method"],
        ),
        (
            r#"{"rules":[{"name":"api","limit":"1/s","identifier":{"header":""}}]}"#,
            &["rules[0].identifier.header", "invalid header name", "expected"],
        ),
        (
            r#"{"rules":[{"name":"api","limit":"1/s","cost":{"header":"x-cost","default":5,"max":2}}]}"#,
            &["rules[0].cost.default", "greater than max 2"],
        ),
        (r#"{"rules":[{"name":"r","limit":"1/s","backend":"redis"}]}"#, &["rules[0].backend", "redis"]),
        (
            r#"{"rules":[{"name":"api","limit":"10/s","strategy":{"type":"leaky_bucket_queue","max_delay":"2 fortnights"}}]}"#,
            &["rules[0].strategy.max_delay", "fortnights"],
        ),
    ];
    for (config, says) in bad {
        let err = common::sluice().config(*config).workers(2).build().err().unwrap_or_else(|| panic!("accepted: {config}"));
        assert!(matches!(err, sluice_harness::HarnessError::ConfigRejected { .. }), "{config}: {err}");
        let errors: Vec<&str> = err.logs().iter().filter(|l| l.level >= LogLevel::Error).map(|l| l.message.as_str()).collect();
        assert!(
            errors.iter().any(|m| says.iter().all(|s| m.contains(s))),
            "{config}: no error line says all of {says:?}: {errors:#?}"
        );
    }
    // Every problem of one config at once, each on its own line, then the count.
    let three = r#"{"rules":[{"name":"a","limit":"1/fortnight"},{"name":"b","limit":"1/s","colour":1},{"name":"c","limit":"1/s","strategy":"bogus"}]}"#;
    let err = common::sluice().config(three).build().err().expect("rejected");
    let errors: Vec<&str> = err.logs().iter().filter(|l| l.level >= LogLevel::Error).map(|l| l.message.as_str()).collect();
    for path in ["rules[0].limit", "rules[1].colour", "rules[2].strategy"] {
        assert!(errors.iter().any(|m| m.contains(path)), "{path} not reported: {errors:#?}");
    }
    assert!(errors.iter().any(|m| m.contains("rejected with 3 error(s)")), "{errors:#?}");
}

#[test]
fn a_hundred_thousand_clients_keep_shared_data_bounded() {
    const CAP: usize = 1000;
    let rule = json!({"name": "per-key", "limit": "10/min", "identifier": {"header": "x-api-key"}});
    let mut host = host(&json!({"local": {"max_clients": CAP}, "rules": [rule]}), 2);
    for batch in 0..100 {
        let reqs = (0..1000).map(|i| Request::get("/").header("x-api-key", &format!("client-{batch}-{i}"))).collect();
        let resps = host.run(reqs, Schedule::InOrder);
        assert!(resps.iter().all(|r| r.admitted()), "batch {batch}: a new client was limited");
        host.clock().advance(Duration::from_millis(10));
    }
    assert!(host.traps().is_empty());
    let keys = host.shared_len();
    assert!(keys <= CAP + 16, "{keys} shared-data keys for a table of {CAP}");
    assert!(host.shared_bytes() < CAP * 256, "{} bytes", host.shared_bytes());
}

#[test]
fn metrics_and_rate_limit_headers_reach_the_client() {
    let rule = json!({"name": "api", "limit": "2/min", "strategy": "fixed_window"});
    let mut host = host(&json!({"rules": [rule]}), 2);
    let r: Vec<_> = (0..3).map(|_| host.request("GET", "/api").source("10.0.0.1:5555").send()).collect();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 200, 429]);
    assert!(r[0].header("ratelimit-policy").is_some_and(|p| p.contains("\"api\";q=2;w=60")), "{:?}", r[0].headers);
    assert!(r[2].header("retry-after").is_some());
    assert_eq!(r[2].origin, Origin::Local);
    // The filter hands its counters to the host in batches, from its tick.
    host.advance(Duration::from_secs(1));
    let allowed = host.metrics().into_iter().find(|(k, _)| k.contains("api") && k.ends_with("allowed")).map(|(_, v)| v.1);
    assert_eq!(allowed, Some(2), "{:?}", host.metrics());
}

/// A rule with `advertise: false`, and a shadow rule by default, stays out of the rate limit
/// fields; a denial of the first still gets its `Retry-After` and names it in the body.
#[test]
fn rules_kept_out_of_the_rate_limit_fields_are_not_shown_to_clients() {
    let api = json!({"name": "api", "limit": "100/min", "strategy": "fixed_window"});
    let shared =
        json!({"name": "shared", "limit": "2/min", "strategy": "fixed_window", "identifier": "global", "advertise": false});
    let trial_alone = || json!({"name": "trial", "limit": "1/min", "strategy": "fixed_window", "shadow": true});
    let trial = trial_alone();
    let mut host = host(&json!({"rate_limit_headers": "both", "rules": [api, shared, trial]}), 1);
    let r: Vec<_> = (0..4).map(|_| host.request("GET", "/").source("10.0.0.1:5555").send()).collect();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200, 200, 429, 429]);
    for (i, resp) in r.iter().enumerate() {
        assert_eq!(resp.header("ratelimit-policy"), Some("\"api\";q=100;w=60"), "{i}: {:?}", resp.headers);
        assert!(resp.header("ratelimit").is_some_and(|v| v.starts_with("\"api\";r=") && !v.contains(',')), "{i}");
        assert_eq!(resp.header("x-ratelimit-limit"), Some("100"), "{i}: the legacy pick is among advertised rules");
        assert!(resp.headers.iter().all(|(_, v)| !v.contains("shared") && !v.contains("trial")), "{i}: {:?}", resp.headers);
    }
    for limited in &r[2..] {
        // shared's wait, to the end of the minute: where api's window ends too.
        assert_eq!(limited.header("retry-after"), limited.header("x-ratelimit-reset"), "{:?}", limited.headers);
        let body: Value = serde_json::from_slice(&limited.body).unwrap();
        assert_eq!(body["violated_rules"], json!(["shared"]));
    }
    // No advertised rule applies: no rate limit field at all.
    let mut alone = common::sluice_host(&json!({"rate_limit_headers": "both", "rules": [trial_alone()]}), 1);
    let r = alone.request("GET", "/").source("10.0.0.1:5555").send();
    assert_eq!(r.status, 200);
    assert!(r.headers.iter().all(|(k, _)| !k.contains("ratelimit")), "{:?}", r.headers);
}

/// A request another rule limits was counted by no rule: the stats say so, and no slot was
/// created for it.
#[test]
fn a_limited_request_counts_as_allowed_nowhere() {
    let global = json!({"name": "global", "limit": "1000/s", "identifier": "global"});
    let per_ip = json!({"name": "per-ip", "limit": "1/min", "strategy": "fixed_window"});
    let per_key = json!({"name": "per-key", "limit": "1000/s", "identifier": {"header": "x-key"}});
    let mut host = host(&json!({"rules": [global, per_ip, per_key]}), 1);
    let statuses: Vec<u16> =
        (0..10).map(|i| host.request("GET", "/").source("10.0.0.1:1").header("x-key", &format!("k{i}")).send().status).collect();
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429, 429, 429, 429, 429]);
    host.advance(Duration::from_secs(1));
    let metric = |name: &str| host.metric(&format!("sluice.rule.{name}")).unwrap_or(0);
    assert_eq!([metric("global.allowed"), metric("per-ip.allowed"), metric("per-key.allowed")], [1, 1, 1]);
    assert_eq!(metric("per-ip.limited"), 9);
    assert_eq!(host.metric("sluice.local.slots_created"), Some(3), "one slot per rule's identity, for the request let through");
}

/// Shared-data keys holding slots (every key but the clock's and the breaker's).
fn slot_keys(host: &sluice_harness::Host) -> i64 {
    host.shared_keys().iter().filter(|k| k.rsplit(':').next().is_some_and(|slot| slot.parse::<u32>().is_ok())).count() as i64
}

/// A request whose first table was written before its second, looked at again after another
/// worker wrote it, denies: the request is limited, but the slot it created in the first table
/// is there, and counted.
#[test]
fn a_slot_created_by_a_request_denied_afterwards_is_counted() {
    let wide = json!({"name": "wide", "limit": "5/min", "strategy": "fixed_window", "identifier": "global"});
    let narrow = json!({"name": "narrow", "limit": "1/min", "strategy": "fixed_window"});
    let mut host = host(&json!({"rules": [wide, narrow]}), 2);
    // Worker 0 runs until it is about to write its second table (narrow's); worker 1's request
    // then goes whole, taking narrow's only unit, and worker 0's write misses.
    let mut first_write: Option<String> = None;
    let schedule = Schedule::Custom(Box::new(move |ready| {
        let Some(ours) = ready.iter().position(|r| r.worker == 0) else { return 0 };
        if let sluice_harness::Point::SharedSet { key, .. } = &ready[ours].at {
            if first_write.get_or_insert_with(|| key.clone()) != key {
                return ready.iter().position(|r| r.worker == 1).unwrap_or(ours);
            }
        }
        ours
    }));
    let reqs = vec![Request::get("/").source("10.0.0.1:1").on_worker(0), Request::get("/").source("10.0.0.1:2").on_worker(1)];
    let statuses: Vec<u16> = host.run(reqs, schedule).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200], "the race was not forced");
    host.advance(Duration::from_secs(1));
    assert_eq!(slot_keys(&host), 2, "{:?}", host.shared_keys());
    assert_eq!(host.metric("sluice.local.slots_created"), Some(2), "wide's by the limited request, narrow's by the other");
}

/// The deny cache keeps Redis' denials in a slot table of its own: its keys count too.
#[test]
fn a_denial_the_deny_cache_keeps_counts_its_slot() {
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "timeout_ms": 100},
        "rules": [{"name": "r", "limit": "5/min", "identifier": "global", "backend": "redis"}],
    });
    let mut host = common::sluice()
        .config(config.to_string())
        .on_http_call(|_| {
            let body = r#"[{"result":[0,[0,0,1000,1000,0,1000]]}]"#;
            sluice_harness::CalloutReply::Respond(sluice_harness::HttpResponse::ok().body(body))
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    assert_eq!(host.request("GET", "/").send().status, 429);
    assert_eq!(host.request("GET", "/").send().status, 429, "answered from the deny cache");
    assert_eq!(host.callouts().len(), 1);
    host.advance(Duration::from_millis(200));
    assert_eq!(host.metric("sluice.rule.r.cached_denials"), Some(1));
    assert_eq!(slot_keys(&host), 1, "{:?}", host.shared_keys());
    assert_eq!(host.metric("sluice.local.slots_created"), Some(1));
}

/// A table of 4 slots: each identity may take any of them, so the fifth client finds all held
/// and takes the one expiring first, forgetting that client's count.
#[test]
fn a_full_table_counts_its_evictions() {
    let rule = json!({"name": "api", "limit": "1/min", "strategy": "fixed_window"});
    let mut host = host(&json!({"local": {"max_clients": 4}, "rules": [rule]}), 1);
    for client in 1..=4 {
        assert!(host.request("GET", "/").source(&format!("10.0.0.{client}:1")).send().admitted());
    }
    host.advance(Duration::from_secs(1));
    assert_eq!(host.metric("sluice.local.evictions"), Some(0), "{:?}", host.metrics());
    assert!(host.request("GET", "/").source("10.0.0.5:1").send().admitted());
    host.advance(Duration::from_secs(1));
    assert_eq!(host.metric("sluice.local.evictions"), Some(1));
    assert_eq!(host.metric("sluice.local.slots_created"), Some(4));
    // The evicted client counts afresh: a second request of its in the minute is admitted.
    let again: Vec<bool> = (1..=4).map(|c| host.request("GET", "/").source(&format!("10.0.0.{c}:1")).send().admitted()).collect();
    assert!(again.contains(&true), "{again:?}");
}

#[test]
fn clients_are_told_apart_by_address_and_rules_matched_by_route_name() {
    // The two properties the filter reads: `source.address` (the default identity) and
    // `xds.route_name` (a rule's `match.routes`).
    let by_client = json!({"name": "per-client", "limit": "1/min"});
    let on_route = json!({"name": "on-api", "limit": "2/min", "identifier": "global", "match": {"routes": ["api"]}});
    let mut host = host(&json!({"rules": [by_client, on_route]}), 1);
    let mut send = |source: &str, route: &str| host.request("GET", "/").source(source).route(route).send().status;
    assert_eq!(send("10.0.0.1:5555", "api"), 200);
    assert_eq!(send("10.0.0.1:6666", "api"), 429, "the same client, another port");
    assert_eq!(send("10.0.0.2:5555", "api"), 200, "another client; the route's second request");
    assert_eq!(send("[2001:db8::1]:443", "api"), 429, "a new client, but the route's limit is reached");
    assert_eq!(send("10.0.0.4:5555", "other"), 200, "another route: only the client's rule applies");
}

#[test]
fn an_empty_header_is_a_value_whether_headers_are_read_one_by_one_or_all_at_once() {
    // Envoy hands an empty value over as no buffer at all: it is still a header that is there,
    // as the list of every header says. A config naming three headers reads them all at once.
    let keyed = json!({"name": "keyed", "limit": "1/min", "strategy": "fixed_window", "identifier": {"header": "x-api-key"}});
    let matched = json!({"name": "flagged", "limit": "1/min", "identifier": "global",
                         "match": {"headers": {"x-flag": "", "x-other": "1", "x-third": "1"}}});
    for rules in [json!([keyed]), json!([keyed, matched])] {
        let mut host = host(&json!({"rules": rules}), 1);
        let statuses: Vec<u16> = ["10.0.0.1:1", "10.0.0.2:1"]
            .iter()
            .map(|source| host.request("GET", "/").header("x-api-key", "").source(source).send().status)
            .collect();
        assert_eq!(statuses, [200, 429], "{rules}: one empty key, counted once for both clients");
    }
}

#[test]
fn an_upgrade_rule_counts_every_spelling_envoy_upgrades() {
    // Envoy upgrades `Upgrade: WebSocket` and a list naming websocket as it does `websocket`:
    // the shipped rules on `upgrade: websocket` count them all against one budget.
    let upgrades = json!({"name": "upgrades", "limit": "2/min", "strategy": "fixed_window", "identifier": "global",
                          "match": {"headers": {"upgrade": "websocket"}}});
    let mut host = host(&json!({"rules": [upgrades]}), 1);
    let mut send = |value: &str| host.request("GET", "/ws").header("upgrade", value).send().status;
    assert_eq!(send("WebSocket"), 200);
    assert_eq!(send("h2c, WEBSOCKET"), 200);
    assert_eq!(send("websocket"), 429);
    assert_eq!(send("websockets"), 200, "another protocol: the rule does not apply");
}
