//! Self-tests of the harness's ABI emulation, seen through the probe filter
//! (testdata-src/probe): each request's `x-op` picks the feature under test.

mod common;

use std::time::Duration;

use sluice_harness::{
    CalloutFault, CalloutOutcome, CalloutReply, HarnessError, HttpResponse, LogLevel, Origin, RedisReply, Request, RequestState,
    Schedule, Status, WriteFault,
};

fn count(n: &str) -> u64 {
    n.parse().unwrap()
}

#[test]
fn a_request_goes_upstream_and_through_the_response_callbacks() {
    let mut host =
        common::probe().upstream(|req| HttpResponse::new(201).header("x-up", &req.path).body("from upstream")).build().unwrap();
    let resp = host.request("GET", "/x").header("X-Op", "echo").send();
    assert_eq!((resp.status, resp.origin.clone()), (201, Origin::Upstream), "{resp:?}");
    assert_eq!(resp.body_str(), "from upstream");
    assert_eq!(resp.header("x-up"), Some("/x"));
    assert_eq!(resp.header("x-probe"), Some("seen"));
    // :authority, :path, :method, :scheme, x-op, x-request-id; no body so end_of_stream.
    assert_eq!(resp.header("x-probe-headers"), Some("6/true"));
    assert!(host.traps().is_empty());
    assert!(host.logged(LogLevel::Info, "probe: configured"));
    // on_log ran before the context was deleted.
    assert!(host.logged(LogLevel::Debug, "on_log ctx=2 status=201 op=echo"), "{:?}", host.logs());
}

#[test]
fn request_body_reaches_the_filter_and_changed_headers_reach_the_upstream() {
    let mut host = common::probe()
        .upstream(|req| {
            let seen = format!("{}|{}", req.header("x-added").unwrap_or("-"), req.header("x-remove-me").unwrap_or("-"));
            HttpResponse::ok().header("x-seen", &seen)
        })
        .build()
        .unwrap();
    let resp = host.request("POST", "/b").header("x-op", "rewrite").header("x-remove-me", "1").body("hello").send();
    assert_eq!(resp.header("x-seen"), Some("by-probe|-"));
    assert_eq!(resp.header("x-request-body"), Some("hello/true"));
    assert_eq!(resp.header("x-probe-headers").map(|h| h.ends_with("/false")), Some(true));
}

#[test]
fn local_response_ends_the_request_and_passes_the_response_callbacks() {
    let mut host = common::probe().build().unwrap();
    let resp = host.request("GET", "/d").header("x-op", "deny").header("x-status", "429").send();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.origin, Origin::Local);
    assert_eq!(resp.body_str(), "denied");
    assert_eq!(resp.header("x-reason"), Some("probe"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    // Envoy runs a filter's own local reply through its encoder callbacks.
    assert_eq!(resp.header("x-probe"), Some("seen"));
    assert_eq!(host.state(resp.id), RequestState::AnsweredLocally);
}

#[test]
fn local_response_wins_over_continue_and_a_second_one_is_refused() {
    let mut host = common::probe().upstream(|_| panic!("must not reach the upstream")).build().unwrap();
    let resp = host.request("GET", "/d").header("x-op", "deny-continue").send();
    assert_eq!((resp.status, resp.origin), (403, Origin::Local));
    // Envoy refuses a second local reply with BAD_ARGUMENT, on which the Rust SDK panics: the
    // VM traps and the stream fails closed.
    let resp = host.request("GET", "/d").header("x-op", "deny-twice").send();
    assert_eq!((resp.status, resp.origin), (503, Origin::VmFailed));
    assert!(host.traps()[0].message.contains("unexpected status: 2"), "{}", host.traps()[0].message);
}

#[test]
fn cas_rules_are_envoys_seen_from_the_guest() {
    let mut host = common::probe().build().unwrap();
    let get = |host: &mut sluice_harness::Host| host.request("GET", "/").header("x-op", "get").header("x-key", "k").send();
    let set = |host: &mut sluice_harness::Host, v: &str, cas: Option<u32>| {
        let mut r = host.request("GET", "/").header("x-op", "set").header("x-key", "k").header("x-value", v);
        if let Some(c) = cas {
            r = r.header("x-cas", &c.to_string());
        }
        r.send()
    };
    assert_eq!(get(&mut host).status, 404);
    // Absent key: any token is accepted.
    assert_eq!(set(&mut host, "a", Some(987_654)).body_str(), "Ok");
    let first = get(&mut host);
    assert_eq!(first.body_str(), "a");
    let cas: u32 = first.header("x-cas").unwrap().parse().unwrap();
    assert_eq!(cas, 1, "the process-wide counter starts at 1");
    assert_eq!(set(&mut host, "b", Some(cas + 1)).body_str(), "CasMismatch");
    assert_eq!(set(&mut host, "b", Some(cas)).body_str(), "Ok");
    assert_eq!(set(&mut host, "c", Some(cas)).body_str(), "CasMismatch", "a token is good for one write");
    assert_eq!(set(&mut host, "d", None).body_str(), "Ok", "token 0 writes unconditionally");
    assert_eq!(host.shared_get("k").unwrap(), (b"d".to_vec(), 3));
}

#[test]
fn cas_counter_skips_zero_when_it_wraps() {
    let mut host = common::probe().build().unwrap();
    host.set_next_cas(u32::MAX);
    host.request("GET", "/").header("x-op", "set").header("x-key", "a").header("x-value", "1").send();
    host.request("GET", "/").header("x-op", "set").header("x-key", "b").header("x-value", "1").send();
    assert_eq!(host.shared_get("a").unwrap().1, u32::MAX);
    assert_eq!(host.shared_get("b").unwrap().1, 1);
}

#[test]
fn shared_data_is_one_store_for_all_workers() {
    let mut host = common::probe().workers(3).build().unwrap();
    for w in 0..3 {
        let r = host.request("GET", "/").header("x-op", "count").on_worker(w).send();
        assert_eq!(r.header("x-count"), Some(&*(w + 1).to_string()));
    }
    // A different vm_id is a different map.
    let other = common::probe().vm_id("other").build().unwrap();
    assert_eq!(other.shared_get("counter"), None);
}

#[test]
fn absent_key_race_loses_an_update_with_token_zero_and_not_with_a_create_token() {
    let mut host = common::probe().workers(2).build().unwrap();
    let naive = (0..2).map(|w| Request::get("/").header("x-op", "count-naive").header("x-key", "naive").on_worker(w)).collect();
    let resps = host.run(naive, Schedule::RoundRobin);
    assert!(resps.iter().all(|r| r.header("x-count") == Some("1")), "both created the key");
    assert_eq!(host.shared_get("naive").unwrap().0, 1u64.to_le_bytes(), "one increment was lost");

    let safe = (0..2).map(|w| Request::get("/").header("x-op", "count").header("x-key", "safe").on_worker(w)).collect();
    let resps = host.run(safe, Schedule::RoundRobin);
    let mut counts: Vec<u64> = resps.iter().map(|r| count(r.header("x-count").unwrap())).collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2]);
    assert_eq!(resps.iter().filter(|r| r.header("x-retried").is_some()).count(), 1);
    assert_eq!(host.shared_get("safe").unwrap().0, 2u64.to_le_bytes());
}

#[test]
fn in_order_schedule_has_no_race() {
    let mut host = common::probe().workers(2).build().unwrap();
    let naive = (0..2).map(|w| Request::get("/").header("x-op", "count-naive").on_worker(w)).collect();
    host.run(naive, Schedule::InOrder);
    assert_eq!(host.shared_get("counter").unwrap().0, 2u64.to_le_bytes());
}

#[test]
fn a_custom_schedule_sees_where_each_worker_stands() {
    let mut host = common::probe().workers(2).build().unwrap();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = seen.clone();
    let reqs = (0..2).map(|w| Request::get("/").header("x-op", "count-naive").on_worker(w)).collect();
    // Run worker 1's whole request between worker 0's get and its set.
    host.run(
        reqs,
        Schedule::Custom(Box::new(move |ready| {
            log.borrow_mut().push(ready.iter().map(|r| (r.worker, r.at.clone())).collect::<Vec<_>>());
            let w0_between = ready.iter().any(|r| r.worker == 0 && matches!(r.at, sluice_harness::Point::SharedSet { .. }));
            match ready.iter().position(|r| r.worker == 1) {
                Some(i) if w0_between => i,
                _ => 0,
            }
        })),
    );
    assert!(seen
        .borrow()
        .iter()
        .flatten()
        .any(|(_, p)| matches!(p, sluice_harness::Point::SharedGet { key } if key == "counter")));
    // Worker 1 wrote 1 between worker 0's get (absent) and set (token 0): the final value is 1.
    assert_eq!(host.shared_get("counter").unwrap().0, 1u64.to_le_bytes());
}

#[test]
fn seeded_schedules_are_reproducible() {
    let run = |seed| {
        let mut host = common::probe().workers(4).build().unwrap();
        let reqs = (0..40).map(|_| Request::get("/").header("x-op", "count-naive")).collect();
        host.run(reqs, Schedule::Seeded(seed));
        u64::from_le_bytes(host.shared_get("counter").unwrap().0.try_into().unwrap())
    };
    assert_eq!(run(7), run(7));
    assert!((1..=40).contains(&run(7)));
}

#[test]
fn write_faults_are_injected() {
    let mut host = common::probe().build().unwrap();
    host.faults().fail_next_writes(2, WriteFault::CasMismatch);
    let r = host.request("GET", "/").header("x-op", "count").send();
    assert_eq!(r.header("x-count"), Some("1"));
    assert_eq!(r.header("x-retried"), Some("1"));
    // Any other status is one the Rust SDK does not expect from a write: it panics.
    host.faults().fail_next_writes(1, WriteFault::Error(Status::InternalFailure));
    let r = host.request("GET", "/").header("x-op", "set").header("x-key", "k").header("x-value", "v").send();
    assert_eq!(r.origin, Origin::VmFailed);
    assert_eq!(host.shared_get("k"), None);
    let (reads, writes) = host.shared_ops();
    assert!(reads >= 3 && writes >= 4, "{reads} {writes}");
}

#[test]
fn pause_waits_for_the_tick_and_resume_releases() {
    let mut host = common::probe().config("tick=10").build().unwrap();
    assert_eq!(host.tick_period(0), Some(Duration::from_millis(10)));
    let id = host.request("GET", "/p").header("x-op", "pause").header("x-delay-ms", "25").start();
    assert_eq!(host.state(id), RequestState::Paused);
    host.advance(Duration::from_millis(20));
    assert_eq!(host.state(id), RequestState::Paused, "released only once the tick sees the due time");
    host.advance(Duration::from_millis(10));
    assert_eq!(host.state(id), RequestState::Released);
    let resp = host.response(id).unwrap();
    assert!(resp.admitted() && resp.was_paused);
    assert_eq!(host.metric("probe.ticks"), Some(3));
}

#[test]
fn send_waits_in_harness_time_for_a_paused_request() {
    let mut host = common::probe().config("tick=5").build().unwrap();
    let t0 = host.clock().now_ns();
    let resp = host.request("GET", "/p").header("x-op", "pause").header("x-delay-ms", "100").send();
    assert!(resp.admitted() && resp.was_paused);
    let waited = host.clock().now_ns() - t0;
    assert!((100_000_000..=105_000_000).contains(&waited), "{waited}");
}

#[test]
fn a_paused_request_without_ticks_stays_paused() {
    let mut host = common::probe().max_wait(Duration::from_secs(1)).build().unwrap();
    let resp = host.request("GET", "/p").header("x-op", "pause").send();
    assert_eq!(resp.origin, Origin::Unfinished);
    assert_eq!(host.state(resp.id), RequestState::Paused);
}

#[test]
fn coarse_clock_advance_fires_a_late_tick_once() {
    let mut host = common::probe().config("tick=10").build().unwrap();
    host.clock().advance(Duration::from_secs(60));
    host.settle();
    assert_eq!(host.metric("probe.ticks"), Some(1));
    host.advance(Duration::from_millis(100));
    assert_eq!(host.metric("probe.ticks"), Some(11));
}

#[test]
fn the_clock_is_the_harness_clock_and_may_step_back() {
    let mut host = common::probe().build().unwrap();
    host.clock().set_unix_ms(1_000_000);
    assert_eq!(host.request("GET", "/").header("x-op", "time").send().body_str(), "1000000000000");
    host.clock().set_unix_ms(999_000);
    assert_eq!(host.request("GET", "/").header("x-op", "time").send().body_str(), "999000000000");
    host.clock().advance(Duration::from_millis(1500));
    assert_eq!(host.request("GET", "/").header("x-op", "time").send().body_str(), "1000500000000");
}

#[test]
fn properties_are_per_request_and_nul_separated() {
    let mut host = common::probe().property("xds.route_name", "default-route").build().unwrap();
    let prop = |host: &mut sluice_harness::Host, p: &str, src: Option<&str>| {
        let mut r = host.request("GET", "/a/b?q=1").header("x-op", "prop").header("x-prop", p).header("user-agent", "ua");
        if let Some(s) = src {
            r = r.source(s);
        }
        r.send()
    };
    assert_eq!(prop(&mut host, "source.address", Some("10.0.0.1:5555")).body_str(), "10.0.0.1:5555");
    assert_eq!(prop(&mut host, "xds.route_name", None).body_str(), "default-route");
    assert_eq!(prop(&mut host, "request.url_path", None).body_str(), "/a/b");
    assert_eq!(prop(&mut host, "request.headers.user-agent", None).body_str(), "ua");
    assert_eq!(prop(&mut host, "plugin_root_id", None).body_str(), "sluice");
    assert_eq!(prop(&mut host, "no.such.thing", None).status, 404);
    let r = host.request("GET", "/").header("x-op", "prop").header("x-prop", "xds.route_name").route("api").send();
    assert_eq!(r.body_str(), "api");
    let r = host.request("GET", "/").header("x-op", "prop-int").header("x-prop", "source.port").source("10.1.1.1:4242").send();
    assert_eq!(r.body_str(), "4242");
}

#[test]
fn callout_reply_comes_from_the_test_handler() {
    let mut host = common::probe()
        .cluster("backend")
        .on_http_call(|call| {
            assert_eq!(call.request.header(":path"), Some("/check"));
            assert_eq!(call.request.header("x-from"), Some("probe"));
            let body = String::from_utf8_lossy(&call.request.body).to_uppercase();
            CalloutReply::Respond(HttpResponse::new(202).body(body))
        })
        .build()
        .unwrap();
    let resp = host.request("GET", "/c").header("x-op", "callout").header("x-body", "ping").send();
    assert!(resp.admitted() && resp.was_paused, "{resp:?}");
    assert_eq!(resp.header("x-callout-status"), Some("202"));
    assert_eq!(resp.header("x-callout-body"), Some("PING"));
    assert_eq!(host.callouts()[0].outcome, Some(CalloutOutcome::Responded(202)));
    assert_eq!(host.callouts()[0].request_id, Some(resp.id));
}

#[test]
fn callout_to_an_unknown_cluster_is_refused_at_dispatch() {
    let mut host = common::probe().cluster("backend").build().unwrap();
    let resp = host.request("GET", "/c").header("x-op", "callout-bad").send();
    assert_eq!(resp.body_str(), "dispatch: BadArgument");
}

#[test]
fn callout_failure_has_no_headers_and_reports_reset() {
    let mut host = common::probe().on_http_call(|_| CalloutReply::Fail).build().unwrap();
    let resp = host.request("GET", "/c").header("x-op", "callout").send();
    assert_eq!((resp.status, resp.body_str().as_str()), (502, "failed:11:reset"));
}

#[test]
fn callout_timeout_fires_on_the_harness_clock_as_a_504() {
    let mut host = common::probe().on_http_call(|_| CalloutReply::Hold).build().unwrap();
    let id = host.request("GET", "/c").header("x-op", "callout").header("x-timeout-ms", "20").start();
    host.advance(Duration::from_millis(19));
    assert_eq!(host.state(id), RequestState::Paused);
    host.advance(Duration::from_millis(1));
    let resp = host.response(id).unwrap();
    assert_eq!(resp.header("x-callout-status"), Some("504"));
    assert_eq!(resp.header("x-callout-body"), Some("upstream request timeout"));
    assert_eq!(host.callouts()[0].outcome, Some(CalloutOutcome::TimedOut));
    assert!(!host.answer_callout(1, CalloutReply::Respond(HttpResponse::ok())), "too late");
}

#[test]
fn delayed_and_held_callouts() {
    let mut host = common::probe()
        .on_http_call(|c| {
            if c.n == 1 {
                CalloutReply::RespondAfter(Duration::from_millis(5), HttpResponse::new(200))
            } else {
                CalloutReply::Hold
            }
        })
        .build()
        .unwrap();
    let a = host.request("GET", "/c").header("x-op", "callout").start();
    let b = host.request("GET", "/c").header("x-op", "callout").start();
    host.advance(Duration::from_millis(5));
    assert_eq!(host.state(a), RequestState::Released);
    assert_eq!(host.state(b), RequestState::Paused);
    assert!(host.answer_callout(2, CalloutReply::Respond(HttpResponse::new(204))));
    assert_eq!(host.response(b).unwrap().header("x-callout-status"), Some("204"));
}

#[test]
fn callout_faults_by_count_and_by_number() {
    let mut host = common::probe().on_http_call(|_| CalloutReply::Respond(HttpResponse::ok())).build().unwrap();
    host.faults().nth_callout(2, CalloutFault::Fail).next_callouts(1, CalloutFault::Reject(Status::InternalFailure));
    let send =
        |host: &mut sluice_harness::Host| host.request("GET", "/c").header("x-op", "callout").header("x-timeout-ms", "50").send();
    assert_eq!(send(&mut host).body_str(), "dispatch: InternalFailure");
    assert_eq!(send(&mut host).body_str(), "failed:11:reset");
    assert!(send(&mut host).admitted());
    host.faults().next_callouts(1, CalloutFault::Timeout);
    let t0 = host.clock().monotonic_ns();
    assert_eq!(send(&mut host).header("x-callout-status"), Some("504"));
    assert_eq!(host.clock().monotonic_ns() - t0, 50_000_000);
}

#[test]
fn redis_callout_round_trip_and_failure() {
    let mut host = common::probe()
        .config("redis")
        .on_redis_call(|call| {
            let words = call.command().unwrap();
            if words[0] == "GET" {
                RedisReply::Resp(sluice::redis::wire::resp_reply(&sluice::redis::wire::Reply::Str(words[1].clone())))
            } else {
                RedisReply::Fail(3)
            }
        })
        .build()
        .unwrap();
    assert_eq!(host.redis_inits(0), vec![("redis".to_string(), String::new(), String::new(), 50)]);
    let r = host.request("GET", "/r").header("x-op", "redis").header("x-cmd", "GET key1").send();
    assert_eq!(r.header("x-redis"), Some("$4\\r\\nkey1\\r\\n"), "{r:?}");
    let r = host.request("GET", "/r").header("x-op", "redis").header("x-cmd", "SET a b").send();
    assert_eq!(r.body_str(), "redis failed 3");
    host.faults().next_redis_calls(1, CalloutFault::Timeout);
    let r = host.request("GET", "/r").header("x-op", "redis").header("x-cmd", "GET k").send();
    assert_eq!(r.body_str(), "redis failed 1");
}

#[test]
fn redis_call_without_init_is_refused() {
    let mut host = common::probe().build().unwrap();
    let r = host.request("GET", "/r").header("x-op", "redis").send();
    assert_eq!(r.body_str(), "redis_call: 2");
}

#[test]
fn metrics_and_logs_are_readable() {
    let mut host = common::probe().workers(2).build().unwrap();
    for _ in 0..3 {
        host.request("GET", "/").header("x-op", "log").header("x-level", "warn").header("x-msg", "careful").send();
    }
    assert_eq!(host.metric("probe.requests"), Some(3), "one counter for all workers");
    let warns = host.logs_at_least(LogLevel::Warn);
    assert_eq!(warns.len(), 3);
    assert_eq!(warns.iter().map(|l| l.worker).collect::<Vec<_>>(), vec![0, 1, 0]);
    host.request("GET", "/").header("x-op", "stdout").send();
    assert!(host.logs().iter().any(|l| l.level == LogLevel::Info && l.message == "probe says hi on stdout"));
    assert!(host.logs().iter().any(|l| l.level == LogLevel::Error && l.message == "probe says hi on stderr"));
}

#[test]
fn shared_queue_reaches_the_registering_root() {
    let mut host = common::probe().workers(2).build().unwrap();
    host.request("GET", "/").header("x-op", "queue").header("x-value", "hello").on_worker(0).send();
    assert!(host.logged(LogLevel::Info, "probe: dequeued hello"));
}

#[test]
fn a_panic_traps_the_vm_which_then_fails_closed() {
    let mut host = common::probe().workers(2).build().unwrap();
    let r = host.request("GET", "/").header("x-op", "panic").on_worker(0).send();
    assert_eq!((r.status, r.origin), (503, Origin::VmFailed));
    assert_eq!(host.traps().len(), 1);
    assert!(host.traps()[0].message.contains("probe panicked on purpose"), "{}", host.traps()[0].message);
    assert_eq!(host.request("GET", "/").on_worker(0).send().status, 503);
    assert_eq!(host.request("GET", "/").on_worker(1).send().status, 200, "other workers live on");
}

/// `FAIL_RELOAD`: a trapped worker's VM started afresh serves again, beside the shared data the
/// process kept; the crossings counted so far stay counted. A busy worker is not restarted.
#[test]
fn a_trapped_worker_restarted_serves_again_with_the_shared_data_kept() {
    let mut host = common::probe().config("tick=10").workers(2).build().unwrap();
    let set = host.request("GET", "/").header("x-op", "set").header("x-key", "k").header("x-value", "kept").on_worker(1).send();
    assert_eq!(set.status, 200);
    assert_eq!(host.request("GET", "/").header("x-op", "panic").on_worker(0).send().status, 503);
    assert_eq!(host.request("GET", "/").on_worker(0).send().status, 503, "a trapped VM fails closed");
    let before = host.crossings();
    host.restart_worker(0).unwrap();
    assert!(host.crossings().vm_entries > before.vm_entries, "the new VM's start is counted on top");
    let got = host.request("GET", "/").header("x-op", "get").header("x-key", "k").on_worker(0).send();
    assert_eq!((got.status, got.body_str().as_str()), (200, "kept"));
    assert_eq!(host.traps().len(), 1, "the trap stays on record");
    let held = host.request("GET", "/").header("x-op", "pause").header("x-delay-ms", "10").on_worker(1).start();
    assert!(host.restart_worker(1).is_err(), "worker 1 holds a request");
    host.advance(Duration::from_millis(200));
    assert_eq!(host.response(held).map(|r| r.status), Some(200));
    host.restart_worker(1).unwrap();
}

#[test]
fn a_rejected_configuration_fails_the_build_with_its_logs() {
    let err = common::probe().config("reject").build().err().unwrap();
    assert!(matches!(err, HarnessError::ConfigRejected { worker: 0, .. }), "{err}");
    assert!(err.logs().iter().any(|l| l.level == LogLevel::Error && l.message == "probe: bad config: reject"));
}

#[test]
fn unknown_imports_are_refused_by_name() {
    // A module importing env.proxy_frobnicate, in the binary format (no text parser linked).
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type section: () -> ()
    let name = b"proxy_frobnicate";
    let mut import = vec![0x01, 0x03];
    import.extend_from_slice(b"env");
    import.push(name.len() as u8);
    import.extend_from_slice(name);
    import.extend_from_slice(&[0x00, 0x00]);
    wasm.push(0x02);
    wasm.push(import.len() as u8);
    wasm.extend_from_slice(&import);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("unknown-import.wasm");
    std::fs::write(&path, wasm).unwrap();
    let err = sluice_harness::Host::builder().wasm(&path).build().err().unwrap();
    assert!(
        matches!(&err, HarnessError::UnknownImport { module, name } if module == "env" && name == "proxy_frobnicate"),
        "{err}"
    );
    assert!(err.to_string().contains("env.proxy_frobnicate"));
}

#[test]
fn the_sdk_grpc_imports_are_known_but_refused_in_strict_mode() {
    let err = common::probe().strict_imports().build().err().unwrap();
    assert!(matches!(err, HarnessError::UnemulatedImport { .. }), "{err}");
}
