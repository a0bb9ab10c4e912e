//! Redis rules: the calls sent, replies and failures (`on_error`, the breaker), gathered calls
//! and the deny cache.

use super::*;

pub(super) fn redis_limiter(rules: serde_json::Value) -> Limiter {
    limiter(
        serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}}, "rules": rules}),
    )
}

/// A Redis reply for one rule: `{all, {allowed, remaining, reset, retry, delay, ttl}...}`.
fn reply(allowed: bool, remaining: i64) -> Reply {
    let d = Reply::Array([i64::from(allowed), remaining, 1000, if allowed { 0 } else { 500 }, 0, 1000].map(Reply::Int).to_vec());
    Reply::Array(vec![Reply::Int(i64::from(allowed)), d])
}

pub(super) fn pending(step: Step) -> Pending {
    match step {
        Step::Redis(p) => p,
        Step::Done(v) => panic!("expected a Redis call, got {v:?}"),
    }
}

pub(super) fn done(r: Resumed) -> Verdict {
    match r {
        Resumed::Done(v) => v,
        Resumed::Retry(p) => panic!("unexpected retry {p:?}"),
    }
}

/// The next pass of a decision that Redis' replies did not end.
fn retried(r: Resumed) -> Pending {
    match r {
        Resumed::Retry(p) => p,
        other => panic!("expected another pass, got {other:?}"),
    }
}

/// Redis rules behind a breaker that opens after two failures, denying on error.
fn deny_limiter() -> Limiter {
    limiter(serde_json::json!({"namespace": "ns",
        "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}},
        "rules": [{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]}))
}

#[test]
fn redis_rules_send_one_evalsha_per_rule_with_hashed_keys() {
    let l = redis_limiter(
        serde_json::json!([{"name": "api", "limits": ["5/s", "100/min"], "backend": "redis", "identifier": {"header": "x-k"}}]),
    );
    let s = MemStore::default();
    let p = pending(l.start(&Req::new("GET", "/").header("x-k", "a b{c}"), &s, T0));
    assert_eq!(p.commands.len(), 1);
    let cmd = p.commands[0].to_vec();
    assert_eq!(cmd[0], "EVALSHA");
    assert_eq!(cmd[1], crate::redis::script::sha());
    assert_eq!(cmd[2], "2");
    for key in &cmd[3..5] {
        assert!(key.starts_with("ns:{api:") && !key.contains(' ') && key.matches('{').count() == 1, "{key}");
    }
    assert_eq!(cmd.len(), 3 + 2 + 2 * crate::redis::script::ARGS_PER_RULE);
    // NOSCRIPT: once more with the script itself.
    let retry = retried(l.resume(p, Ok(vec![Reply::Error("NOSCRIPT No matching script".into())]), &s, T0));
    assert_eq!(retry.commands[0].get(0), Some("EVAL"));
    assert_eq!(retry.commands[0].get(1), Some(crate::redis::script::SCRIPT));
    // A second NOSCRIPT is a failure, not a loop.
    let v = done(l.resume(retry, Ok(vec![Reply::Error("NOSCRIPT again".into())]), &s, T0));
    assert!(v.outcomes()[0].store_error);
}

#[test]
fn redis_denial_consumes_nothing_locally_and_local_denial_skips_redis() {
    let l = redis_limiter(serde_json::json!([
        {"name": "remote", "limit": "10/min", "backend": "redis"},
        {"name": "local", "limit": "1/min", "strategy": "fixed_window"}
    ]));
    let s = MemStore::default();
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let v = done(l.resume(p, Ok(vec![reply(false, 0)]), &s, T0));
    assert_eq!(status(&v), 429);
    // The local rule still has its one request (asked once the denial's 500 ms are over).
    let later = T0 + 500_000;
    let p = pending(l.start(&Req::new("GET", "/"), &s, later));
    let v = done(l.resume(p, Ok(vec![reply(true, 9)]), &s, later));
    assert_eq!(status(&v), 200);
    assert_eq!(header(&v, "ratelimit"), Some("\"remote\";r=9;t=1, \"local\";r=0;t=60"));
    // Now the local rule denies before any Redis call.
    assert!(matches!(l.start(&Req::new("GET", "/"), &s, later), Step::Done(Verdict::Deny { .. })));
}

#[test]
fn redis_failures_follow_on_error_and_open_the_breaker() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "match": {"path": "/allow"}, "limit": "10/min", "backend": "redis", "on_error": "allow"},
        {"name": "d", "match": {"path": "/deny"}, "limit": "10/min", "backend": "redis", "on_error": "deny"},
        {"name": "f", "match": {"path": "/fb"}, "limit": "4/min", "strategy": "fixed_window", "backend": "redis",
         "on_error": {"fallback": {"share": 0.5}}}
    ]));
    let s = MemStore::default();
    let fail =
        |path: &str, now: u64| done(l.resume(pending(l.start(&Req::new("GET", path), &s, now)), Err("down".into()), &s, now));
    assert_eq!(status(&fail("/allow", T0)), 200);
    let denied = fail("/deny", T0);
    assert_eq!(status(&denied), 429);
    assert!(header(&denied, "retry-after").is_some());
    // Two failures: the breaker is open, so no Redis call is even attempted.
    for (path, want) in [("/allow", 200), ("/deny", 429), ("/fb", 200), ("/fb", 200), ("/fb", 429)] {
        match l.start(&Req::new("GET", path), &s, T0 + 1) {
            Step::Done(v) => assert_eq!(status(&v), want, "{path}"),
            Step::Redis(_) => panic!("called Redis with the breaker open"),
        }
    }
    // After open_ms a probe goes out; its success (and a second) closes the breaker.
    let later = T0 + 1_000_002;
    for _ in 0..2 {
        let p = pending(l.start(&Req::new("GET", "/allow"), &s, later));
        assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 5)]), &s, later))), 200);
    }
    assert!(matches!(l.start(&Req::new("GET", "/allow"), &s, later), Step::Redis(_)));
}

/// A request `on_error: deny` turns away is told to come back when Redis may decide again: a
/// second after one failed call, and while the breaker is open, when it will probe (told a
/// second, an obedient client was turned away again and again).
#[test]
fn an_on_error_denial_asks_for_the_breakers_wait() {
    let l = limiter(serde_json::json!({"namespace": "ns",
        "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 7500}},
        "rules": [{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"},
                  {"name": "h", "match": {"path": "/hidden"}, "limit": "10/min", "backend": "redis", "on_error": "deny", "advertise": false}]}));
    let s = MemStore::default();
    let fail = |now: u64| done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, now)), Err("down".into()), &s, now));
    let first = fail(T0);
    assert_eq!((status(&first), header(&first, "retry-after").as_deref()), (429, Some("1")), "one failure: a second");
    // The second failure opens the breaker once its request is answered (a call is told to the
    // breaker after all its requests); from then on, the wait is the breaker's, rounded up.
    assert_eq!(header(&fail(T0), "retry-after").as_deref(), Some("1"));
    // A worker whose clock is behind the one that opened it is told no more than open_ms.
    for (now, want) in [(T0 - 900_000, "8"), (T0 + 1, "8"), (T0 + 2_000_000, "6"), (T0 + 7_000_000, "1"), (T0 + 7_499_000, "1")] {
        for path in ["/", "/hidden"] {
            let counted = Racing::new(&s);
            match l.start(&Req::new("GET", path), &counted, now) {
                Step::Done(v) => assert_eq!(header(&v, "retry-after").as_deref(), Some(want), "{path} at {now}"),
                Step::Redis(_) => panic!("called Redis with the breaker open"),
            }
            // An outage's denials are a flood: each reads its rules' deny cache entries and the
            // breaker's state, once for both the breaker's permit and its wait.
            let rules = if path == "/" { 1 } else { 2 };
            assert_eq!((counted.reads.get(), counted.writes.get()), (rules + 1, 0), "shared data of a denial, {path} at {now}");
        }
    }
    // The client is not told a limit was exceeded: Redis never decided.
    let Step::Done(Verdict::Deny { response, .. }) = l.start(&Req::new("GET", "/hidden"), &s, T0 + 1) else {
        panic!("expected a denial with the breaker open")
    };
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["detail"], "rate limits d, h could not be checked; retry in 8 s");
    assert_eq!(body["violated_rules"], serde_json::json!(["d", "h"]));
}

/// A worker sends its last 429 again only when it would show the same: a rule kept out of the
/// fields that Redis denied, and then could not decide, asks for the same wait under the same
/// name, but was exceeded only the first time.
#[test]
fn an_unchecked_denial_is_not_the_last_exceeded_one_again() {
    let l = limiter(serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw", "deny_cache": false},
        "rules": [{"name": "h", "limit": "10/min", "backend": "redis", "on_error": "deny", "advertise": false}]}));
    let s = MemStore::default();
    let detail = |v: &Verdict| match v {
        Verdict::Deny { response, .. } => serde_json::from_slice::<serde_json::Value>(&response.body).unwrap()["detail"].clone(),
        Verdict::Admit { .. } => panic!("admitted"),
    };
    let denied = done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![reply(false, 0)]), &s, T0));
    assert_eq!((header(&denied, "retry-after"), detail(&denied)), (Some("1"), "rate limit \"h\" exceeded; retry in 1 s".into()));
    let failed = done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("down".into()), &s, T0));
    assert_eq!(
        (header(&failed, "retry-after"), detail(&failed)),
        (Some("1"), "rate limit \"h\" could not be checked; retry in 1 s".into())
    );
}

/// Two configs of one namespace in a VM (two listeners) that reach different gateways: one
/// failing opens its own breaker, not the other's.
#[test]
fn each_redis_has_its_own_breaker() {
    let config = |cluster: &str| {
        limiter(serde_json::json!({"namespace": "ns", "redis": {"cluster": cluster, "breaker": {"failure_threshold": 1}},
            "rules": [{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]}))
    };
    let (down, up) = (config("gw-a"), config("gw-b"));
    // A rule named `breaker` keeps its slots at `ns:breaker:<n>`: a cluster named with digits
    // must not make the breaker's key one of them.
    assert_eq!(config("6379").breaker().map(|b| b.key.to_string()).as_deref(), Some("ns:breaker#6379"));
    let s = MemStore::default();
    let _ = done(down.resume(pending(down.start(&Req::new("GET", "/"), &s, T0)), Err("down".into()), &s, T0));
    assert!(matches!(down.start(&Req::new("GET", "/"), &s, T0 + 1), Step::Done(_)), "its breaker is open");
    assert!(matches!(up.start(&Req::new("GET", "/"), &s, T0 + 1), Step::Redis(_)), "the other gateway is still asked");
}

#[test]
fn malformed_redis_replies_are_failures() {
    let l = redis_limiter(serde_json::json!([{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]));
    for bad in [
        vec![],
        vec![Reply::Int(1)],
        vec![Reply::Array(vec![Reply::Int(1)])],
        vec![Reply::Array(vec![Reply::Int(1), Reply::Str("x".into())])],
    ] {
        let s = MemStore::default(); // a fresh breaker each time
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        let v = done(l.resume(p, Ok(bad.clone()), &s, T0));
        assert_eq!(status(&v), 429, "{bad:?}");
        // on_error's denial, not one read from the reply (which the deny cache would keep).
        assert!(v.outcomes().iter().all(|o| o.store_error), "{bad:?}: {v:?}");
    }
}

#[test]
fn several_redis_rules_are_checked_dry_first_so_a_denial_consumes_nothing() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "limit": "10/min", "backend": "redis"},
        {"name": "b", "limit": "10/min", "backend": "redis"}
    ]));
    let s = MemStore::default();
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    assert!(p.commands.iter().all(|c| c.last() == Some("dry")));
    // One denies: answered without a second pass, so nothing was written anywhere.
    let v = done(l.resume(p.clone(), Ok(vec![reply(true, 5), reply(false, 0)]), &s, T0));
    assert_eq!(status(&v), 429);
    // Both admit: the same commands for real, then the verdict.
    let real = retried(l.resume(p, Ok(vec![reply(true, 5), reply(true, 5)]), &s, T0));
    assert!(real.commands.iter().all(|c| c.last() != Some("dry")));
    assert_eq!(status(&done(l.resume(real, Ok(vec![reply(true, 4), reply(true, 4)]), &s, T0))), 200);
    // One rule: a single pass.
    let one = redis_limiter(serde_json::json!([{"name": "a", "limit": "10/min", "backend": "redis"}]));
    let p = pending(one.start(&Req::new("GET", "/"), &s, T0));
    assert_ne!(p.commands[0].last(), Some("dry"));
}

#[test]
fn a_probe_is_one_success_however_many_passes_it_takes() {
    // Two Redis rules: a dry pass, then the write pass. success_threshold 2 needs two probes.
    let l = limiter(serde_json::json!({"namespace": "ns",
        "redis": {"cluster": "gw", "breaker": {"failure_threshold": 1, "open_ms": 1000, "success_threshold": 2}},
        "rules": [{"name": "a", "limit": "10/min", "backend": "redis"}, {"name": "b", "limit": "10/min", "backend": "redis"}]}));
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("down".into()), &s, T0));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open);
    let later = T0 + 1_000_001;
    let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
    let write = retried(l.resume(probe, Ok(vec![reply(true, 5), reply(true, 5)]), &s, later));
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "the dry pass is not a result yet");
    assert!(matches!(l.start(&Req::new("GET", "/"), &s, later), Step::Done(_)), "one probe at a time, across its passes");
    done(l.resume(write, Ok(vec![reply(true, 4), reply(true, 4)]), &s, later));
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "one probe, one success: not closed by two passes");
    let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
    // Its client hangs up: the place is freed, nothing counted.
    l.abandon(&probe, &s);
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen);
    let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
    let write = retried(l.resume(probe, Ok(vec![reply(true, 3), reply(true, 3)]), &s, later));
    done(l.resume(write, Ok(vec![reply(true, 2), reply(true, 2)]), &s, later));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
}

#[test]
fn a_call_that_failed_together_follows_on_error_and_counts_once() {
    let l = deny_limiter();
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    // Four requests in one failed call: the first counts the failure, the others follow on_error.
    let calls: Vec<Pending> = (0..4).map(|_| pending(l.start(&Req::new("GET", "/"), &s, T0))).collect();
    let mut calls = calls.into_iter();
    assert_eq!(status(&done(l.resume(calls.next().unwrap(), Err("reset".into()), &s, T0))), 429);
    for p in calls {
        assert_eq!(status(&l.resume_failed_together(p, &s, T0)), 429);
    }
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed, "one failure of two");
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open);
}

#[test]
fn a_gathered_call_that_answered_tells_the_breaker_once() {
    let l = deny_limiter();
    let mem = MemStore::default();
    let s = Racing::new(&mem);
    let b = l.breaker().unwrap();
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
    // Four requests in one call that answered: the first one's success is the call's, and the
    // others do not read the breaker again.
    let calls: Vec<Pending> = (0..4).map(|_| pending(l.start(&Req::new("GET", "/"), &s, T0))).collect();
    let (reads, heard) = (s.reads.get(), &mut Heard::default());
    for p in calls.iter().cloned() {
        assert_eq!(status(&done(l.resume_gathered(p, Ok(vec![reply(true, 5)]), &s, T0, heard))), 200);
    }
    assert_eq!(s.reads.get() - reads, 0, "the breaker is told after the call's requests");
    l.tell(heard, &s, T0);
    assert_eq!(s.reads.get() - reads, 1, "one read of the breaker for the call");
    // The success was heard: the failure before it no longer counts towards opening.
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
    // Carried on as separate calls, each success reads it.
    let reads = s.reads.get();
    for p in calls {
        done(l.resume(p, Ok(vec![reply(true, 5)]), &s, T0));
    }
    assert_eq!(s.reads.get() - reads, 4);
}

#[test]
fn a_delay_from_redis_never_exceeds_the_rules_max_delay() {
    let l = redis_limiter(serde_json::json!([
        {"name": "q", "limit": "10/s", "backend": "redis", "strategy": {"type": "leaky_bucket_queue", "max_delay": "200ms"}},
    ]));
    let s = MemStore::default();
    let long = Reply::Array(vec![Reply::Int(1), Reply::Array([1, 5, 1000, 0, 86_400_000, 1000].map(Reply::Int).to_vec())]);
    match done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![long.clone()]), &s, T0)) {
        Verdict::Admit { delay_ms, .. } => assert_eq!(delay_ms, 200),
        v => panic!("{v:?}"),
    }
    // A strategy that never queues is never held, whatever the reply says.
    let l = redis_limiter(serde_json::json!([{"name": "t", "limit": "10/s", "backend": "redis", "strategy": "token_bucket"}]));
    match done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![long]), &s, T0)) {
        Verdict::Admit { delay_ms, .. } => assert_eq!(delay_ms, 0),
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_redis_denial_answers_the_same_identity_until_its_retry_after_without_a_call() {
    let l = redis_limiter(serde_json::json!([
        {"name": "remote", "limits": ["10/min", "100/hour"], "backend": "redis", "identifier": {"header": "x-k"},
         "cost": {"header": "x-cost", "max": 10}},
        {"name": "local", "limit": "100/min", "strategy": "fixed_window"}
    ]));
    let s = MemStore::default();
    let req = |k: &str, cost: &str| Req::new("GET", "/").header("x-k", k).header("x-cost", cost);
    let d = |allowed: bool, retry: i64| Reply::Array([i64::from(allowed), 0, 1000, retry, 0, 1000].map(Reply::Int).to_vec());
    // Redis denies k1 at cost 2: the first limit for 800 ms, the second admits.
    let p = pending(l.start(&req("k1", "2"), &s, T0));
    let denied = Reply::Array(vec![Reply::Int(0), d(false, 800), d(true, 0)]);
    let v = done(l.resume(p, Ok(vec![denied]), &s, T0 + 3_000));
    assert_eq!(status(&v), 429);
    let local_before = l.check(&Req::new("GET", "/x"), &s, T0).outcomes().last().map(|o| o.decisions[0].remaining);
    // Within the 800 ms (counted from when the call was sent), cost 2 or more: no call.
    // It ends a millisecond early: a retry-after is rounded up.
    for (cost, at) in [("2", T0 + 100_000), ("5", T0 + 798_999)] {
        match l.start(&req("k1", cost), &s, at) {
            Step::Done(v) => {
                assert_eq!(status(&v), 429);
                let o = v.outcomes().iter().find(|o| o.rule == 0).unwrap();
                assert!(o.from_cache && !o.allowed);
                let wait = o.decisions[0].retry_after_ms;
                assert!(wait >= 1 && wait <= 800 - (at - T0) / 1000, "retry-after counts down: {wait}");
                assert_eq!(header(&v, "retry-after"), Some("1"));
            }
            Step::Redis(_) => panic!("cost {cost} at {at}: asked Redis although it denied"),
        }
    }
    // A cheaper request, another identity, or the denial over: Redis decides.
    assert!(matches!(l.start(&req("k1", "1"), &s, T0 + 100_000), Step::Redis(_)));
    assert!(matches!(l.start(&req("k2", "2"), &s, T0 + 100_000), Step::Redis(_)));
    assert!(matches!(l.start(&req("k1", "2"), &s, T0 + 799_000), Step::Redis(_)));
    // Cached denials consumed nothing locally.
    let local_after = l.check(&Req::new("GET", "/x"), &s, T0).outcomes().last().map(|o| o.decisions[0].remaining);
    assert_eq!(local_after, local_before.map(|r| r - 1), "only the two probes of the local rule counted");
}

#[test]
fn with_the_deny_cache_off_every_request_asks_redis() {
    let l = limiter(serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw", "deny_cache": false},
        "rules": [{"name": "remote", "limit": "10/min", "backend": "redis"}]}));
    let s = MemStore::default();
    let v = done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Ok(vec![reply(false, 0)]), &s, T0));
    assert_eq!(status(&v), 429);
    assert!(matches!(l.start(&Req::new("GET", "/"), &s, T0 + 1_000), Step::Redis(_)), "denial not remembered");
}

#[test]
fn a_worker_answers_a_redis_denial_from_its_copy_without_reading_shared_data() {
    let config = serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw"}, "rules": [{"name": "remote",
        "limits": ["10/min", "100/hour"], "strategy": {"type": "leaky_bucket_queue", "max_delay": "200ms"},
        "backend": "redis", "identifier": {"header": "x-k"}, "cost": {"header": "x-cost", "max": 10}}]});
    let (a, b, fresh) = (limiter(config.clone()), limiter(config.clone()), limiter(config));
    let mem = MemStore::default();
    let s = Racing::new(&mem);
    let req = |cost: &str| Req::new("GET", "/").header("x-k", "k1").header("x-cost", cost);
    let denied = Reply::Array([0, 0, 1000, 800, 0, 1000].map(Reply::Int).to_vec());
    // The other limit would have queued the request: a delay no read gives back.
    let queued = Reply::Array([1, 50, 60_000, 0, 120, 60_000].map(Reply::Int).to_vec());
    // Worker a asks Redis at cost 2 and is denied for 800 ms.
    let reply = Reply::Array(vec![Reply::Int(0), denied, queued]);
    let v = done(a.resume(pending(a.start(&req("2"), &s, T0)), Ok(vec![reply]), &s, T0 + 3_000));
    assert_eq!(status(&v), 429);
    let cached = |l: &Limiter, cost: &str, at: u64| match l.start(&req(cost), &s, at) {
        Step::Done(v) => Some(v),
        Step::Redis(_) => None,
    };
    // a answers from the denial it wrote; b from the one it read once; both as a fresh read does.
    let reads = s.reads.get();
    let from_a = cached(&a, "2", T0 + 100_000).expect("denied from a's copy");
    assert_eq!(s.reads.get(), reads, "a read nothing");
    let from_b = cached(&b, "2", T0 + 100_000).expect("denied from shared data");
    assert_eq!(s.reads.get(), reads + 1, "b read the entry once");
    // a's own denial ends a millisecond early (a retry-after is rounded up); one b read ends
    // WORKER_SKEW_US earlier still, as a's clock may be that far ahead of b's.
    for at in [T0 + 200_000, T0 + 698_999] {
        assert!(cached(&b, "2", at).is_some() && cached(&a, "9", at).is_some());
    }
    assert!(cached(&a, "2", T0 + 798_999).is_some());
    assert_eq!(s.reads.get(), reads + 1, "then answered from its copy");
    assert!(cached(&b, "2", T0 + 699_000).is_none());
    let read = cached(&fresh, "2", T0 + 100_000).expect("denied from shared data");
    assert_eq!((status(&from_a), header(&from_a, "retry-after")), (429, Some("1")));
    assert_eq!(from_a.outcomes(), read.outcomes(), "a copy decides as the entry it holds");
    assert_eq!(from_b.outcomes(), read.outcomes());
    // A cheaper request than the denial's, or one past its time, asks Redis: the copy never
    // denies what Redis might admit.
    assert!(cached(&a, "1", T0 + 100_000).is_none());
    assert!(cached(&a, "2", T0 + 799_000).is_none());
}

#[test]
fn a_noscript_in_the_pass_that_writes_sends_again_only_what_did_not_run() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "limit": "10/min", "backend": "redis"},
        {"name": "b", "limit": "10/min", "backend": "redis"}
    ]));
    let s = MemStore::default();
    let noscript = || Reply::Error("NOSCRIPT No matching script".into());
    let dry = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let real = retried(l.resume(dry, Ok(vec![reply(true, 5), reply(true, 5)]), &s, T0));
    assert_eq!(real.commands.len(), 2);
    // a's call ran (and counted); b's node had lost the script: only b's goes again.
    let again = retried(l.resume(real.clone(), Ok(vec![reply(true, 4), noscript()]), &s, T0));
    assert_eq!(again.commands.len(), 1, "only b's command goes again");
    let words = again.commands[0].to_vec();
    assert_eq!(words[0], "EVAL");
    assert!(words.iter().any(|w| w.starts_with("ns:{b:")), "{words:?}");
    let v = done(l.resume(again, Ok(vec![reply(true, 3)]), &s, T0));
    assert_eq!(status(&v), 200);
    let remaining: Vec<u64> = v.outcomes().iter().map(|o| o.decisions[0].remaining).collect();
    assert_eq!(remaining, [4, 3], "a's reply from its one run, b's from the second");
    // When nothing ran, everything goes again.
    let again = retried(l.resume(real, Ok(vec![noscript(), noscript()]), &s, T0));
    assert_eq!(again.commands.len(), 2);
    assert_eq!(status(&done(l.resume(again, Ok(vec![reply(true, 4), reply(true, 4)]), &s, T0))), 200);
}

#[test]
fn a_fallback_holds_its_share_of_a_burst_and_a_debt() {
    // A quarter each for four proxies: a burst or a debt kept whole would let each admit it all.
    for (strategy, want) in [
        (serde_json::json!({"type": "token_bucket", "burst": 100}), 25),
        (serde_json::json!({"type": "token_bucket_debt", "max_debt": 40}), 25 + 10),
        (serde_json::json!({"type": "gcra", "burst": 3}), 1),
    ] {
        let l = redis_limiter(serde_json::json!([{"name": "f", "limit": "100/min", "backend": "redis",
            "strategy": strategy, "on_error": {"fallback": {"share": 0.25}}}]));
        let s = MemStore::default();
        let admitted = (0..200).map(|_| l.check(&Req::new("GET", "/"), &s, T0)).filter(|v| status(v) == 200).count();
        assert_eq!(admitted, want, "{strategy}");
    }
}

/// A config update that changes a fallback's share changes the capacity it decides on: its
/// count starts afresh, as any changed limit's does, instead of reading the old share's state
/// against the new capacity (and a worker's memo of the old one's denials going stale).
#[test]
fn a_fallback_of_another_share_counts_apart() {
    let config = |share: f64| {
        limiter(serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw"},
            "rules": [{"name": "f", "limit": "100/min", "strategy": "fixed_window", "backend": "redis",
                       "on_error": {"fallback": {"share": share}}}]}))
    };
    let (quarter, half) = (config(0.25), config(0.5));
    let s = MemStore::default();
    let down = |l: &Limiter| l.check(&Req::new("GET", "/"), &s, T0);
    assert_eq!((0..30).filter(|_| status(&down(&quarter)) == 200).count(), 25);
    let first = down(&half);
    assert_eq!(
        header(&first, "ratelimit").map(|r| r.starts_with("\"f\";r=49;")),
        Some(true),
        "{:?}",
        header(&first, "ratelimit")
    );
    assert_eq!(status(&down(&quarter)), 429, "the quarter's own count is still spent");
}

#[test]
fn a_fallback_reports_its_share_as_the_quota() {
    let l = limiter(serde_json::json!({"namespace": "ns", "rate_limit_headers": "both", "redis": {"cluster": "gw"},
        "rules": [{"name": "f", "limit": "100/min", "strategy": "fixed_window", "backend": "redis",
                   "on_error": {"fallback": {"share": 0.25}}}]}));
    let s = MemStore::default();
    let v = l.check(&Req::new("GET", "/"), &s, T0);
    assert_eq!(status(&v), 200);
    // Decided on 25 of the 100: the fields say so, and the remaining counts down from 25.
    assert_eq!(header(&v, "ratelimit-policy"), Some("\"f\";q=25;w=60"));
    assert_eq!(header(&v, "ratelimit").map(|r| r.starts_with("\"f\";r=24;")), Some(true), "{:?}", header(&v, "ratelimit"));
    assert_eq!(header(&v, "x-ratelimit-limit"), Some("25"));
    // Redis answering again: the rule's own quota.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0 + 1));
    let v = done(l.resume(p, Ok(vec![reply(true, 98)]), &s, T0 + 1));
    assert_eq!(header(&v, "ratelimit-policy"), Some("\"f\";q=100;w=60"));
}

#[test]
fn a_request_denied_while_redis_is_down_consumes_no_fallback_share() {
    // u1's fallback admits it twice an hour; a gate (a second Redis rule with its own fallback,
    // spent after one request, or on_error: deny; or a local rule spent after one request)
    // denies every request that carries the closed gate.
    let gate = |more: serde_json::Value| {
        let mut rule = serde_json::json!({"name": "gate", "match": {"headers": {"x-gate": "closed"}}, "limit": "1/hour",
            "identifier": "global"});
        rule.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        rule
    };
    for (gate, first, left) in [
        (gate(serde_json::json!({"backend": "redis", "on_error": {"fallback": {"share": 1}}})), 200, 1),
        (gate(serde_json::json!({"backend": "redis", "on_error": "deny"})), 429, 2),
        (gate(serde_json::json!({"strategy": "fixed_window"})), 200, 1),
    ] {
        let l = redis_limiter(serde_json::json!([
            {"name": "per-user", "limit": "4/hour", "strategy": "fixed_window", "identifier": {"header": "x-user"},
             "backend": "redis", "on_error": {"fallback": {"share": 0.5}}},
            {"name": "shadowed", "limit": "1/hour", "strategy": "fixed_window", "identifier": {"header": "x-user"},
             "backend": "redis", "shadow": true, "on_error": {"fallback": {"share": 1}}},
            gate.clone(),
        ]));
        let s = MemStore::default();
        let send = |gate: &str, now: u64| l.check(&Req::new("GET", "/").header("x-user", "u1").header("x-gate", gate), &s, now);
        assert_eq!(status(&send("closed", T0)), first, "{gate}: the gate's first request");
        for i in 1..=5 {
            assert_eq!(status(&send("closed", T0 + i)), 429, "{gate}: the gate denies");
        }
        // However often it was denied, u1 has its share less what was admitted.
        for i in 0..left {
            assert_eq!(status(&send("open", T0 + 10 + i)), 200, "{gate}: admission {i} of the share left");
        }
        assert_eq!(status(&send("open", T0 + 20)), 429, "{gate}: the share is spent");
    }
}

/// A share is rounded down (never more than the share across proxies), at least 1: a quarter
/// of 10/hour is 2 a proxy, and its responses say so.
#[test]
fn a_fallback_share_rounds_down() {
    let l = redis_limiter(serde_json::json!([{"name": "f", "limit": "10/hour", "strategy": "fixed_window",
        "backend": "redis", "on_error": {"fallback": {"share": 0.25}}}]));
    let s = MemStore::default();
    let send = |now: u64| l.check(&Req::new("GET", "/"), &s, now);
    let first = send(T0);
    assert_eq!((status(&first), header(&first, "ratelimit-policy")), (200, Some("\"f\";q=2;w=3600")));
    assert_eq!(status(&send(T0 + 1)), 200);
    assert_eq!(status(&send(T0 + 2)), 429, "a quarter of 10 is 2, not 3");
}

#[test]
fn a_fallback_denial_never_reuses_a_redis_denial_s_response() {
    // A worker sends its last limited response again when it shows the same numbers; a
    // fallback's shows its share as the quota, so the two differ though every number agrees.
    let l = limiter(serde_json::json!({"namespace": "ns", "rate_limit_headers": "both", "redis": {"cluster": "gw"},
        "rules": [{"name": "f", "limit": "4/min", "strategy": "fixed_window", "identifier": {"header": "x-user"},
                   "backend": "redis", "on_error": {"fallback": {"share": 0.25}}}]}));
    let s = MemStore::default();
    let now = T0 + 59_500_000; // half a second before the window ends: both wait 1 s
    let send = |user: &str, answer: Result<Vec<Reply>, String>| {
        let p = pending(l.start(&Req::new("GET", "/").header("x-user", user), &s, now));
        done(l.resume(p, answer, &s, now))
    };
    assert_eq!(status(&send("u2", Err("down".into()))), 200, "the fallback's one of u2");
    let redis = send("u1", Ok(vec![reply(false, 0)]));
    assert_eq!((status(&redis), header(&redis, "ratelimit-policy")), (429, Some("\"f\";q=4;w=60")));
    let fallback = send("u2", Err("down".into()));
    assert_eq!(status(&fallback), 429);
    assert_eq!(header(&fallback, "ratelimit"), header(&redis, "ratelimit"), "the same numbers");
    assert_eq!(header(&fallback, "ratelimit-policy"), Some("\"f\";q=1;w=60"));
    assert_eq!(header(&fallback, "x-ratelimit-limit"), Some("1"));
}

#[test]
fn a_gathered_call_is_one_failure_whatever_the_order_of_its_requests() {
    // One failure heard already: a call in which any request's rule went unanswered is the
    // second, and opens the breaker, whether its answered requests came first or last.
    for order in [[true, false], [false, true]] {
        let l = deny_limiter();
        let s = MemStore::default();
        let b = l.breaker().unwrap();
        done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
        let heard = &mut Heard::default();
        for answered in order {
            let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
            let r = if answered { reply(true, 5) } else { Reply::Error("CLUSTERDOWN the cluster is down".into()) };
            let want = if answered { 200 } else { 429 };
            assert_eq!(status(&done(l.resume_gathered(p, Ok(vec![r]), &s, T0, heard))), want);
        }
        l.tell(heard, &s, T0);
        assert_eq!(b.phase(&s), crate::breaker::Phase::Open, "{order:?}");
    }
}

#[test]
fn one_rules_error_reply_leaves_the_others_answers_standing() {
    // An enforced rule and the shadow rule that trials a stricter one: one pass, since the
    // shadow rule adds no round trip to the limit in force.
    let l = redis_limiter(serde_json::json!([
        {"name": "per-ip", "limit": "10/min", "backend": "redis", "on_error": "deny"},
        {"name": "trial", "limit": "5/min", "backend": "redis", "shadow": true}
    ]));
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    let down = || Reply::Error("CLUSTERDOWN the cluster is down".into());
    for _ in 0..3 {
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        assert!(p.commands.iter().all(|c| c.last() != Some("dry")), "no dry pass for one enforced rule");
        // The trial rule's node is down: the enforced rule's admission stands, and a shadow
        // rule's failure tells the breaker nothing of the limits in force.
        assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 5), down()]), &s, T0))), 200);
    }
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
    // The enforced rule's denial stands too (and is remembered), not its on_error.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let v = done(l.resume(p, Ok(vec![reply(false, 0), down()]), &s, T0));
    assert_eq!(status(&v), 429);
    assert!(!v.outcomes().iter().any(|o| o.store_error && o.rule == 0), "{v:?}");
    assert!(matches!(l.start(&Req::new("GET", "/"), &s, T0 + 1), Step::Done(_)), "the denial is cached");
}

#[test]
fn a_rule_without_an_answer_in_the_dry_pass_follows_on_error_and_is_not_written() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "limit": "10/min", "backend": "redis", "on_error": "allow"},
        {"name": "b", "limit": "10/min", "backend": "redis", "on_error": "deny"}
    ]));
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    let down = || Reply::Error("CLUSTERDOWN the cluster is down".into());
    // b unanswered: its on_error denies at once, and nothing was written anywhere.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 5), down()]), &s, T0))), 429);
    // a unanswered: it admits by its on_error, and only b is written.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let write = retried(l.resume(p, Ok(vec![down(), reply(true, 5)]), &s, T0));
    assert_eq!(write.commands.len(), 1);
    assert!(write.commands[0].words().any(|w| w.contains("{b:")) && write.commands[0].last() != Some("dry"));
    let v = done(l.resume(write, Ok(vec![reply(true, 4)]), &s, T0));
    assert_eq!(status(&v), 200);
    let errors: Vec<usize> = v.outcomes().iter().filter(|o| o.store_error).map(|o| o.rule).collect();
    assert_eq!(errors, [0], "{v:?}");
    // Each was a call in which a rule in force went unanswered: two failures open the breaker.
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open);
}

#[test]
fn a_failure_found_in_the_dry_pass_is_told_with_that_pass_once() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "limit": "10/min", "backend": "redis", "on_error": "allow"},
        {"name": "b", "limit": "10/min", "backend": "redis"}
    ]));
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    let down = || Reply::Error("CLUSTERDOWN the cluster is down".into());
    // Two requests whose dry passes went in one call: a's node is down for both. One call, one
    // failure, told with it: a client that leaves before the write takes nothing away.
    let mut heard = Heard::default();
    let mut writes = (0..2).map(|_| {
        let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
        retried(l.resume_gathered(p, Ok(vec![down(), reply(true, 5)]), &s, T0, &mut heard))
    });
    let (first, second) = (writes.next().unwrap(), writes.next().unwrap());
    l.tell(&heard, &s, T0);
    // Told already: a failed call carrying them is told through another of its requests.
    assert!(!l.tells_breaker(&first) && !l.tells_breaker(&second));
    let untold = pending(l.start(&Req::new("GET", "/"), &s, T0));
    assert!(l.tells_breaker(&untold));
    // Their write passes go in one call, which fails: both were told already, so it adds nothing.
    let mut heard = Heard::default();
    done(l.resume_gathered(first, Err("reset".into()), &s, T0, &mut heard));
    l.tell(&heard, &s, T0);
    l.abandon(&second, &s);
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed, "each request told once: one failure of two");
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open, "the dry pass's failure was told");
    // A client that leaves before the write: its dry pass's failure stands.
    let s = MemStore::default();
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    l.abandon(&retried(l.resume(p, Ok(vec![down(), reply(true, 5)]), &s, T0)), &s);
    done(l.resume(pending(l.start(&Req::new("GET", "/"), &s, T0)), Err("reset".into()), &s, T0));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open, "two failures");
}

#[test]
fn a_fallback_that_fell_in_the_dry_pass_is_checked_before_the_others_are_written() {
    let l = redis_limiter(serde_json::json!([
        {"name": "a", "limit": "2/min", "strategy": "fixed_window", "backend": "redis", "on_error": {"fallback": {"share": 0.5}}},
        {"name": "b", "limit": "10/min", "backend": "redis"}
    ]));
    let s = MemStore::default();
    let down = || Reply::Error("CLUSTERDOWN the cluster is down".into());
    // a's node is down: a decides on its share (1 of 2), b in Redis.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let write = retried(l.resume(p, Ok(vec![down(), reply(true, 5)]), &s, T0));
    assert_eq!(status(&done(l.resume(write, Ok(vec![reply(true, 4)]), &s, T0))), 200);
    // Its share is spent: denied after the dry pass, without writing b.
    let p = pending(l.start(&Req::new("GET", "/"), &s, T0));
    let v = done(l.resume(p, Ok(vec![down(), reply(true, 4)]), &s, T0));
    assert_eq!(status(&v), 429);
    assert!(v.outcomes().iter().any(|o| o.rule == 0 && o.store_error && !o.allowed), "{v:?}");
}

#[test]
fn a_shadow_rule_whose_reply_fails_alone_tells_the_breaker_nothing() {
    let l = redis_limiter(serde_json::json!([
        {"name": "enforced", "match": {"path": "/e"}, "limit": "10/min", "backend": "redis", "on_error": "deny"},
        {"name": "trial", "match": {"path": "/t"}, "limit": "5/min", "backend": "redis", "shadow": true}
    ]));
    let s = MemStore::default();
    let down = || vec![Reply::Error("CLUSTERDOWN the cluster is down".into())];
    let trial = |ok: bool| {
        let p = pending(l.start(&Req::new("GET", "/t"), &s, T0));
        let v = done(l.resume(p, if ok { Ok(vec![reply(true, 4)]) } else { Ok(down()) }, &s, T0));
        assert_eq!(status(&v), 200);
    };
    for _ in 0..3 {
        trial(false);
    }
    assert_eq!(l.breaker().unwrap().phase(&s), crate::breaker::Phase::Closed, "no failure");
    // Nor a success: the enforced rule's failures still add up between trial calls.
    let enforced = || done(l.resume(pending(l.start(&Req::new("GET", "/e"), &s, T0)), Ok(down()), &s, T0));
    assert_eq!(status(&enforced()), 429);
    trial(false);
    trial(true);
    assert_eq!(status(&enforced()), 429);
    assert_eq!(l.breaker().unwrap().phase(&s), crate::breaker::Phase::Open, "two failures in force in a row");
}

#[test]
fn shadow_calls_leave_a_half_open_breaker_s_probe_to_a_rule_in_force() {
    let l = redis_limiter(serde_json::json!([
        {"name": "enforced", "match": {"path": "/e"}, "limit": "10/min", "backend": "redis", "on_error": "deny"},
        {"name": "trial", "match": {"path": "/t"}, "limit": "5/min", "backend": "redis", "shadow": true}
    ]));
    let s = MemStore::default();
    let b = l.breaker().unwrap();
    for _ in 0..b.spec.failure_threshold {
        b.record(&s, crate::breaker::Permit::Call, false, T0);
    }
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open);
    let later = T0 + b.spec.open_ms * 1000;
    // Open, then past open_ms: a shadow-only request is not sent, and takes no probe place.
    for at in [T0, later] {
        let Step::Done(v) = l.start(&Req::new("GET", "/t"), &s, at) else { panic!("sent while open") };
        assert_eq!((status(&v), v.outcomes()[0].store_error), (200, true), "{v:?}");
    }
    assert_eq!(b.phase(&s), crate::breaker::Phase::Open, "no probe was granted");
    // Requests in force probe, and their successes close the breaker for both.
    for _ in 0..b.spec.success_threshold.max(1) {
        let p = pending(l.start(&Req::new("GET", "/e"), &s, later));
        assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "it was granted a probe");
        assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 9)]), &s, later))), 200);
    }
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
    pending(l.start(&Req::new("GET", "/t"), &s, later));
}

#[test]
fn a_denial_one_redis_gave_answers_only_configs_that_reach_that_redis() {
    let on = |cluster: &str| {
        limiter(serde_json::json!({"namespace": "ns", "redis": {"cluster": cluster},
            "rules": [{"name": "api", "limit": "10/min", "backend": "redis", "identifier": {"header": "x-k"}}]}))
    };
    let (eu, eu_again, us) = (on("gw_eu"), on("gw_eu"), on("gw_us"));
    let s = MemStore::default();
    let req = Req::new("GET", "/").header("x-k", "k1");
    let p = pending(eu.start(&req, &s, T0));
    assert_eq!(status(&done(eu.resume(p, Ok(vec![reply(false, 0)]), &s, T0))), 429);
    // Another config of the same Redis (a second listener) answers from the cache; one that
    // reaches another Redis asks it.
    assert!(matches!(eu_again.start(&req, &s, T0 + 1_000), Step::Done(ref v) if status(v) == 429));
    assert!(matches!(us.start(&req, &s, T0 + 1_000), Step::Redis(_)), "answered from another Redis' denial");
}

/// A user's local limit inside a tenant's Redis limit: a burst of the user's requests in
/// flight at once (one connection, one worker) is checked with what those ahead of it hold,
/// so the ones the user's limit will deny never reach Redis and take nothing of the tenant's.
#[test]
fn requests_in_flight_hold_their_cost_for_the_checks_of_those_behind_them() {
    // Without the deny cache, which would answer the tenant's denial below by itself.
    let l = limiter(serde_json::json!({"redis": {"cluster": "gw", "deny_cache": false}, "rules": [
        {"name": "user", "limit": "2/min", "strategy": "fixed_window", "identifier": {"header": "x-user"}},
        {"name": "tenant", "limit": "100/min", "backend": "redis", "identifier": {"header": "x-tenant"}}
    ]}));
    let s = MemStore::default();
    let req = || Req::new("GET", "/").header("x-user", "u").header("x-tenant", "t");
    let first = pending(l.start(&req(), &s, T0));
    let second = pending(l.start(&req(), &s, T0));
    // Two in flight hold the user's 2: the third is denied here, before Redis counts it.
    match l.start(&req(), &s, T0) {
        Step::Done(v) => assert_eq!((status(&v), v.outcomes()[0].rule), (429, 0), "{v:?}"),
        Step::Redis(_) => panic!("sent to Redis past the user's limit"),
    }
    // Redis denies the first (the tenant's limit): its hold ends, and one more may go.
    assert_eq!(status(&done(l.resume(first, Ok(vec![reply(false, 0)]), &s, T0))), 429);
    let third = pending(l.start(&req(), &s, T0));
    assert!(matches!(l.start(&req(), &s, T0), Step::Done(_)), "two in flight again");
    for p in [second, third] {
        assert_eq!(status(&done(l.resume(p, Ok(vec![reply(true, 90)]), &s, T0))), 200);
    }
    // Nothing held now: the user's two are counted, and its next is denied by its count.
    assert_eq!(l.in_flight.held(0, l.check(&req(), &s, T0).outcomes()[0].identity.hash, 0), 0);
    assert!(matches!(l.start(&req(), &s, T0), Step::Done(ref v) if status(v) == 429));
    // A request whose client left gives its hold back too.
    let other = || Req::new("GET", "/").header("x-user", "w").header("x-tenant", "t");
    let (a, b) = (pending(l.start(&other(), &s, T0)), pending(l.start(&other(), &s, T0)));
    assert!(matches!(l.start(&other(), &s, T0), Step::Done(_)));
    l.abandon(&a, &s);
    assert!(matches!(l.start(&other(), &s, T0), Step::Redis(_)));
    l.abandon(&b, &s);
}

/// A user's Redis limit of 3/min inside a tenant's of 100/min, and a request of user `u`.
fn user_in_tenant() -> (Limiter, impl Fn() -> Req) {
    let l = redis_limiter(serde_json::json!([
        {"name": "user", "limit": "3/min", "backend": "redis", "identifier": {"header": "x-user"}},
        {"name": "tenant", "limit": "100/min", "backend": "redis", "identifier": {"header": "x-tenant"}}
    ]));
    (l, || Req::new("GET", "/").header("x-user", "u").header("x-tenant", "t"))
}

/// The cost each dry command of `p` asks: the fourth of the rule's six arguments, then `dry`.
fn asked(p: &Pending) -> Vec<u64> {
    p.commands
        .iter()
        .map(|c| {
            assert_eq!(c.get(c.len() - 1), Some("dry"), "{:?}", c.words().collect::<Vec<_>>());
            c.get(c.len() - 4).and_then(|w| w.parse().ok()).unwrap_or(0)
        })
        .collect()
}

/// Two Redis rules: the dry pass of a request asks each with its cost and what the requests
/// ahead of it in flight hold, at most one past what the rule could ever admit.
#[test]
fn a_dry_pass_asks_with_what_the_requests_ahead_hold() {
    let (l, req) = user_in_tenant();
    let s = MemStore::default();
    let held: Vec<Pending> = (0..5).map(|_| pending(l.start(&req(), &s, T0))).collect();
    let costs: Vec<Vec<u64>> = held.iter().map(asked).collect();
    assert_eq!(costs, [[1, 1], [2, 2], [3, 3], [4, 4], [4, 5]], "the user's rule admits at most 3");
    // Another user of the tenant holds nothing of the first user's limit.
    assert_eq!(asked(&pending(l.start(&Req::new("GET", "/").header("x-user", "v").header("x-tenant", "t"), &s, T0))), [1, 6]);
}

/// Once a request's pass that writes is out, Redis counts it: it holds only its local rules'
/// cost from then on, or the requests behind it would count it twice (a client under its limit
/// denied).
#[test]
fn a_request_whose_writes_are_out_holds_nothing_in_redis() {
    let (l, req) = user_in_tenant();
    let s = MemStore::default();
    let a = pending(l.start(&req(), &s, T0));
    assert_eq!(asked(&pending(l.start(&req(), &s, T0))), [2, 2], "a's dry pass is ahead");
    // a's dry pass admits: its pass that writes goes out, and what it held in Redis ends there.
    let a = retried(l.resume(a, Ok(vec![reply(true, 2), reply(true, 99)]), &s, T0));
    let c = pending(l.start(&req(), &s, T0));
    assert_eq!(asked(&c), [2, 2], "only the second request's hold is ahead of the third");
    l.abandon(&a, &s);
}

/// A dry pass denied counting what requests ahead hold is not Redis' own denial: the client is
/// told to come back within a second (the asked cost's wait may be a whole period), and the
/// deny cache keeps nothing of it.
#[test]
fn a_denial_for_what_others_hold_is_short_and_not_cached() {
    let l = redis_limiter(serde_json::json!([
        {"name": "user", "limit": "2/min", "strategy": "fixed_window", "backend": "redis", "identifier": {"header": "x-user"}},
        {"name": "tenant", "limit": "100/min", "backend": "redis", "identifier": {"header": "x-tenant"}}
    ]));
    let s = MemStore::default();
    let req = || Req::new("GET", "/").header("x-user", "u").header("x-tenant", "t");
    let held: Vec<Pending> = (0..2).map(|_| pending(l.start(&req(), &s, T0))).collect();
    let third = pending(l.start(&req(), &s, T0));
    // Redis answers the third's dry pass as a cost of 3 asks: above the limit, a whole window.
    let over = Reply::Array(vec![Reply::Int(0), Reply::Array([0, 2, 60_000, 60_000, 0, 0].map(Reply::Int).to_vec())]);
    let v = done(l.resume(third, Ok(vec![over, reply(true, 97)]), &s, T0));
    assert_eq!(status(&v), 429);
    assert_eq!(header(&v, "retry-after"), Some("1"), "{v:?}");
    assert!(matches!(l.start(&req(), &s, T0 + 1_000), Step::Redis(_)), "a held denial was cached");
    for p in held {
        l.abandon(&p, &s);
    }
}

/// What a dry pass asks with what others hold stays within what the gateway takes: every
/// number of the rule's limits exact in Lua (a call past it is refused, with every call sent
/// with it).
#[test]
fn a_held_ask_stays_within_luas_exact_numbers() {
    let l = redis_limiter(serde_json::json!([
        {"name": "user", "limit": "5/min", "backend": "redis", "identifier": {"header": "x-user"}},
        {"name": "tenant", "limit": "3400000/30d", "strategy": "token_bucket", "backend": "redis",
         "identifier": {"header": "x-tenant"}, "cost": {"header": "x-tokens", "max": 1000}}
    ]));
    let s = MemStore::default();
    let req = |user: &str| Req::new("GET", "/").header("x-user", user).header("x-tenant", "t").header("x-tokens", "1000");
    let ahead: Vec<Pending> = (0..100).map(|i| pending(l.start(&req(&format!("u{i}")), &s, T0))).collect();
    let p = pending(l.start(&req("last"), &s, T0));
    let cost = asked(&p)[1];
    let rate = crate::rate::Rate { limit: 3_400_000, period_ms: 30 * 86_400_000 };
    let strategy = crate::strategy::Strategy::TokenBucket { burst: None };
    assert!(cost > 1000 && cost < 101_000, "asked {cost}");
    assert!(crate::config::lua_largest(&strategy, &rate, cost) <= crate::config::LUA_EXACT, "asked {cost}");
    assert!(crate::config::lua_largest(&strategy, &rate, cost + 1) > crate::config::LUA_EXACT, "asked {cost}: the largest exact");
    for p in ahead {
        l.abandon(&p, &s);
    }
}
