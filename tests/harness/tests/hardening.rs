//! sluice.wasm under the conditions an attacker or a bad day makes: the host clock stepping back
//! an hour, sixteen workers racing on one key, Redis calls with no time left, a breaker probing
//! while requests pile up or hang up, and request values that try to lower a limit.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use sluice::strategy::NAMES as STRATEGIES;
use sluice_harness::{CalloutReply, Host, HttpResponse, Point, Request, RequestState, Schedule};

const HOUR_MS: u64 = 3_600_000;

use common::{sluice_host as host, strategy_config};

/// A rule's counter, once the filter has handed its metrics over (it does so from its tick).
/// The filter defines every rule's counters when it is configured, so a missing one is a failure,
/// not a zero.
fn metric(host: &mut Host, rule: &str, what: &str) -> i64 {
    host.advance(Duration::from_millis(200));
    let suffix = format!("{rule}.{what}");
    let found = host.metrics().into_iter().find(|(k, _)| k.ends_with(&suffix)).map(|(_, v)| v.1);
    found.unwrap_or_else(|| panic!("no metric ending in {suffix}: {:?}", host.metrics().keys().collect::<Vec<_>>()))
}

fn step_back(host: &Host, ms: u64) {
    host.clock().set_unix_ns(host.clock().now_ns() - ms * 1_000_000);
}

/// One gateway reply for one Redis rule with one limit: the pipeline's single entry.
fn redis_reply(allowed: bool) -> CalloutReply {
    let d = if allowed { "[1,4,1000,0,0,1000]" } else { "[0,0,1000,1000,0,1000]" };
    let body = format!("[{{\"result\":[{},{d}]}}]", u8::from(allowed));
    CalloutReply::Respond(HttpResponse::ok().body(body))
}

/// Two workers with one global rule of 5/min under `strategy`, every one of the 5 spent.
fn spent(strategy: &str) -> Host {
    let rule = json!({"name": "api", "limit": "5/min", "strategy": strategy_config(strategy), "identifier": "global"});
    let mut host = host(&json!({"rules": [rule]}), 2);
    let mut admitted = 0;
    while host.request("GET", "/").send().admitted() {
        admitted += 1;
        assert!(admitted <= 5, "{strategy}: more than the limit");
    }
    host
}

#[test]
fn after_the_clock_steps_back_an_hour_traffic_recovers_and_nothing_extra_is_admitted() {
    for strategy in STRATEGIES {
        let mut host = spent(strategy);
        step_back(&host, HOUR_MS);
        assert!(!host.request("GET", "/").send().admitted(), "{strategy}: the step back admitted one more");
        // Two minutes of real time later the windows have rolled (or the bucket refilled),
        // although the host's clock still reads an hour earlier than before.
        host.advance(Duration::from_secs(121));
        let r = host.request("GET", "/").send();
        assert!(r.admitted(), "{strategy}: traffic did not recover after the step back: {r:?}");
        assert!(host.traps().is_empty(), "{strategy}: {:?}", host.traps());
    }
}

/// A VM started afresh (Envoy's `FAIL_RELOAD` after a trap) while the host clock reads an hour
/// earlier than before resumes from the time the workers shared, not the host's: what it finds
/// counted is not from its future, it admits nothing extra, and its traffic recovers on time.
#[test]
fn a_vm_restarted_after_the_clock_stepped_back_resumes_from_the_shared_time() {
    // The clock is what is tested: a window and a bucket stand for every strategy (the test
    // above steps back through each).
    for strategy in ["fixed_window", "gcra"] {
        let mut host = spent(strategy);
        // The workers' ticks share the latest time they have seen.
        host.advance(Duration::from_millis(200));
        step_back(&host, HOUR_MS);
        host.restart_worker(1).unwrap_or_else(|e| panic!("{strategy}: {e}"));
        let r = host.request("GET", "/").on_worker(1).send();
        assert!(!r.admitted(), "{strategy}: the restarted VM admitted past the limit");
        // Two minutes later its window has rolled (its bucket refilled); an hour behind, it would not.
        host.advance(Duration::from_secs(121));
        let r = host.request("GET", "/").on_worker(1).send();
        assert!(r.admitted(), "{strategy}: the restarted VM did not recover: {r:?}");
        assert!(host.traps().is_empty(), "{strategy}: {:?}", host.traps());
    }
}

#[test]
fn a_queued_request_is_released_on_time_across_a_step_back() {
    let rule = json!({"name": "q", "limit": "2/s", "identifier": "global",
                      "strategy": {"type": "leaky_bucket_queue", "burst": 1, "max_delay": "1s"}});
    let mut host = host(&json!({"rules": [rule]}), 1);
    assert!(host.request("GET", "/").send().admitted());
    let queued = host.request("GET", "/").start();
    assert_eq!(host.state(queued), RequestState::Paused, "the second request waits 500 ms");
    step_back(&host, HOUR_MS);
    host.advance(Duration::from_millis(520));
    assert_eq!(host.state(queued), RequestState::Released, "released 500 ms later, not an hour later");
}

#[test]
fn the_breaker_probes_on_time_across_a_step_back() {
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "timeout_ms": 50, "breaker": {"failure_threshold": 1, "open_ms": 1000}},
        "rules": [{"name": "r", "limit": "5/min", "identifier": "global", "backend": "redis", "on_error": "deny"}],
    });
    let answers_ok = Rc::new(Cell::new(false));
    let ok = answers_ok.clone();
    let mut host = common::sluice()
        .config(config.to_string())
        .on_http_call(move |_| if ok.get() { redis_reply(true) } else { CalloutReply::Fail })
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    assert_eq!(host.request("GET", "/").send().status, 429, "Redis down: on_error deny");
    assert_eq!(host.request("GET", "/").send().status, 429);
    assert_eq!(host.callouts().len(), 1, "the breaker opened after one failure");
    step_back(&host, HOUR_MS);
    answers_ok.set(true);
    host.advance(Duration::from_millis(1100));
    assert!(host.request("GET", "/").send().admitted(), "the probe went out after open_ms and Redis admitted");
    assert_eq!(host.callouts().len(), 2);
}

#[test]
fn sixteen_workers_on_one_global_key_never_admit_an_uncounted_request() {
    const N: usize = 4000;
    const LIMIT: u64 = 1_000_000;
    let rule = json!({"name": "g", "limit": format!("{LIMIT}/hour"), "strategy": "fixed_window", "identifier": "global"});
    let (mut exhausted, mut lost_races) = (0, 0);
    for seed in 1..=3u64 {
        let mut host = host(&json!({"rules": [rule]}), 16);
        // Every request on its own worker in turn, switching worker at every shared-data call.
        let reqs: Vec<Request> = (0..N).map(|i| Request::get("/").on_worker(i % 16)).collect();
        let resps = host.run(reqs, Schedule::Seeded(seed));
        let limited = resps.iter().filter(|r| r.status == 429).count() as i64;
        let admitted = resps.iter().filter(|r| r.admitted()).count() as i64;
        assert_eq!(admitted + limited, N as i64);
        // Every admission was counted: the next request sees all of them taken.
        let next = host.request("GET", "/").send();
        let remaining = next.header("ratelimit").and_then(|f| f.split(';').find_map(|p| p.strip_prefix("r=")));
        let want = (LIMIT as i64 - admitted - 1).to_string();
        assert_eq!(remaining, Some(&*want), "seed {seed}: an admitted request was not counted: {next:?}");
        let store_errors = metric(&mut host, "g", "store_errors");
        assert_eq!(limited, store_errors, "seed {seed}: every denial here is a write that never landed");
        exhausted += store_errors;
        // Every write that did not land was a lost race (the clock's mark, written at ticks,
        // is not this rule's key: count the rule's writes only through the admissions).
        let (_, writes) = host.shared_ops();
        let counted = admitted as u64 + 1;
        assert!(writes >= counted, "seed {seed}: {writes} writes for {counted} admissions");
        lost_races += writes - counted;
        assert!(host.traps().is_empty());
    }
    eprintln!(
        "CAS exhaustion, 16 workers on one global key: {exhausted} of {} requests denied after {} attempts; \
         about {lost_races} writes lost a race and were decided again (3 seeded schedules)",
        3 * N,
        sluice::store::MAX_ATTEMPTS
    );
}

#[test]
fn a_write_that_keeps_losing_its_race_is_denied_and_counted() {
    let rule = json!({"name": "g", "limit": "1000000/hour", "strategy": "fixed_window", "identifier": "global"});
    let mut host = host(&json!({"rules": [rule]}), 4);
    // Worker 0's request loses every race: whenever it is about to write the rule's slot (in the
    // table of its identifier), another worker writes that slot first, then worker 0's write
    // goes (and fails).
    let mut armed = false;
    let schedule = Schedule::Custom(Box::new(move |ready: &[sluice_harness::Runnable]| {
        let writing =
            |r: &sluice_harness::Runnable| matches!(&r.at, Point::SharedSet { key, .. } if key.starts_with("sluice:identity#"));
        let victim = ready.iter().position(|r| r.worker == 0);
        let Some(v) = victim.filter(|&v| writing(&ready[v])) else { return victim.unwrap_or(0) };
        if armed {
            armed = false;
            return v;
        }
        if let Some(i) = ready.iter().position(|r| r.worker != 0 && writing(r)) {
            armed = true;
            return i;
        }
        ready.iter().position(|r| r.worker != 0).unwrap_or(v)
    }));
    let mut reqs = vec![Request::get("/").on_worker(0)];
    reqs.extend((0..600).map(|i| Request::get("/").on_worker(1 + i % 3)));
    let resps = host.run(reqs, schedule);
    assert_eq!(resps[0].status, 429, "an admission that cannot be counted is not made: {:?}", resps[0]);
    assert_eq!(resps[0].header("retry-after"), Some("1"));
    assert!(resps[1..].iter().all(|r| r.admitted()));
    assert_eq!(metric(&mut host, "g", "store_errors"), 1);
}

#[test]
fn no_retry_is_sent_with_less_than_a_millisecond_left() {
    // Two Redis rules: a dry pass, then the write pass, both within timeout_ms.
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "timeout_ms": 20},
        "rules": [{"name": "a", "limit": "5/min", "identifier": "global", "backend": "redis", "on_error": "deny"},
                  {"name": "b", "limit": "5/min", "identifier": "global", "backend": "redis", "on_error": "deny"}],
    });
    let both = || -> CalloutReply {
        let d = "[1,4,1000,0,0,1000]";
        CalloutReply::Respond(HttpResponse::ok().body(format!("[{{\"result\":[1,{d}]}},{{\"result\":[1,{d}]}}]")))
    };
    for (answer_after_us, second_pass) in [(19_500u64, false), (18_900, true)] {
        let mut host = common::sluice()
            .config(config.to_string())
            .on_http_call(|_| CalloutReply::Hold)
            .build()
            .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
        let id = host.request("GET", "/").start();
        assert_eq!(host.callouts().len(), 1);
        // The dry pass's answer arrives this late: the wall clock has moved on with it.
        host.clock().set_unix_ns(host.clock().now_ns() + answer_after_us * 1000);
        assert!(host.answer_callout(1, both()));
        if second_pass {
            assert_eq!(host.callouts().len(), 2, "1.1 ms left: the write pass goes out");
            assert!(host.callouts()[1].request.timeout_ms >= 1);
        } else {
            assert_eq!(host.callouts().len(), 1, "0.5 ms left: no call that the host would read as unbounded");
            assert_eq!(host.response(id).map(|r| r.status), Some(429), "on_error decided at once");
        }
    }
}

/// `redis.cluster` naming no cluster Envoy has (a typo, a renamed cluster, Istio's long
/// `outbound|…` names) makes the host refuse every callout at dispatch: each Redis rule follows
/// its `on_error` on every request, at once, counted and logged, and the VM carries on.
#[test]
fn a_redis_cluster_envoy_does_not_have_follows_on_error_on_every_request() {
    let config = json!({
        "redis": {"cluster": "sluice_gatway", "timeout_ms": 20},
        "rules": [{"name": "open", "limit": "5/min", "identifier": "global", "backend": "redis"},
                  {"name": "shut", "match": {"path": "/shut"}, "limit": "5/min", "identifier": "global", "backend": "redis", "on_error": "deny"}],
    });
    // The host has only `sluice_gateway`; any call it were asked would be answered.
    let mut host = common::sluice()
        .config(config.to_string())
        .on_http_call(|_| redis_reply(true))
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    for _ in 0..3 {
        let r = host.request("GET", "/").send();
        assert_eq!(r.status, 200, "on_error: allow admits: {r:?}");
        let r = host.request("GET", "/shut").send();
        assert_eq!(r.status, 429, "on_error: deny denies: {r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap_or_default();
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("rate limit \"shut\" could not be checked; retry in "), "{detail}");
    }
    assert!(host.callouts().is_empty(), "no call reached any cluster: {:?}", host.callouts().len());
    assert_eq!(metric(&mut host, "open", "store_errors"), 6, "both requests of each round asked for `open`");
    assert_eq!(metric(&mut host, "shut", "store_errors"), 3);
    // Each refused call is logged with the cluster's name, and is a failure to the breaker: the
    // fifth (its default threshold) opens it, and the last request is not even tried.
    let refused = host.logs().iter().filter(|l| l.message.contains("cluster \"sluice_gatway\"")).count();
    assert_eq!(refused, 5, "{:#?}", host.logs());
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

/// A callout belongs to the root in Envoy: a request whose client went away still has its
/// call answered, at the latest by its timeout, to a context that is gone. A guest that kept
/// anything per such call would grow by it per hung-up request.
#[test]
fn clients_that_hang_up_during_their_redis_call_leave_nothing_behind() {
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "timeout_ms": 20},
        "rules": [{"name": "r", "limit": "100/min", "identifier": {"header": "x-user"}, "backend": "redis"}],
    });
    let mut host = common::sluice()
        .config(config.to_string())
        .on_http_call(|_| CalloutReply::Hold)
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    let hang_up = |host: &mut Host, users: std::ops::Range<u32>| {
        for user in users {
            let id = host.request("GET", "/").header("x-user", &user.to_string()).start();
            assert!(host.reset(id), "the call is out when the client hangs up");
            let n = host.callouts().last().map(|c| c.n).expect("a call");
            assert!(host.answer_callout(n, CalloutReply::Fail), "answered after the request is gone");
        }
        host.guest_memory_bytes(0).expect("worker 0 at rest")
    };
    let warm = hang_up(&mut host, 0..2_000);
    let after = hang_up(&mut host, 2_000..40_000);
    assert_eq!(host.callouts().len(), 40_000, "every request sent its own call");
    assert_eq!(after, warm, "38,000 more hung-up calls grew the guest's memory");
    assert!(host.traps().is_empty());
}

#[test]
fn half_open_probes_are_never_exceeded_and_a_hung_up_probe_frees_its_place() {
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "timeout_ms": 5000,
                  "breaker": {"failure_threshold": 1, "open_ms": 1000, "half_open_probes": 2, "success_threshold": 3}},
        "rules": [{"name": "r", "limit": "100/min", "identifier": "global", "backend": "redis", "on_error": "allow"}],
    });
    let mut host = common::sluice()
        .config(config.to_string())
        .workers(4)
        .on_http_call(|_| CalloutReply::Hold)
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    let first = host.request("GET", "/").start();
    assert!(host.answer_callout(1, CalloutReply::Fail));
    assert_eq!(host.response(first).map(|r| r.status), Some(200), "on_error allow");
    host.advance(Duration::from_millis(1001));
    // Twenty requests at once, on four workers: two probes go out, the rest decide by on_error.
    let ids: Vec<_> = (0..20).map(|i| host.request("GET", "/").on_worker(i % 4).start()).collect();
    assert_eq!(host.callouts().len(), 3, "exactly half_open_probes calls while half-open");
    let waiting: Vec<_> = ids.iter().copied().filter(|id| host.response(*id).is_none()).collect();
    assert_eq!(waiting.len(), 2);
    // Even long after open_ms, while the two may still answer (timeout 5 s), no third.
    host.advance(Duration::from_millis(3000));
    assert_eq!(host.request("GET", "/").send().status, 200);
    assert_eq!(host.callouts().len(), 3);
    // One probe's client hangs up: its place is free again, and it counted for nothing.
    assert!(host.reset(waiting[0]));
    let next = host.request("GET", "/").start();
    assert_eq!(host.callouts().len(), 4, "the freed place goes to the next request");
    for n in [3, 4] {
        assert!(host.answer_callout(n, redis_reply(true)));
    }
    assert!(host.response(next).is_some_and(|r| r.admitted()));
    // Two successes of three: still half-open, one probe at a time per free place.
    let ids: Vec<_> = (0..6).map(|_| host.request("GET", "/").start()).collect();
    assert_eq!(host.callouts().len(), 6, "two places, two probes");
    for n in [5, 6] {
        assert!(host.answer_callout(n, redis_reply(true)));
    }
    assert!(ids.iter().all(|id| host.response(*id).is_some()));
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

#[test]
fn a_cost_header_can_never_make_a_request_free() {
    let rule = json!({"name": "c", "limit": "3/hour", "strategy": "fixed_window", "identifier": "global",
                      "cost": {"header": "x-cost", "max": 100}});
    let mut host = host(&json!({"rules": [rule]}), 2);
    let sent: Vec<u16> = ["0", "00", "+0", "-1", "0x0", "", "junk"]
        .iter()
        .map(|c| host.request("GET", "/").header("x-cost", c).send().status)
        .collect();
    assert_eq!(sent, [200, 200, 200, 429, 429, 429, 429], "each one costs the default, 1");
}
