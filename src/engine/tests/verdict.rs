//! The verdict: what a denial consumes, every limit reported, shadow rules, rules kept out of
//! the rate limit fields, queues, and the limited response a flood shares.

use super::*;

#[test]
fn a_request_denied_by_one_rule_consumes_nothing_from_the_others() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "wide", "limit": "3/min", "strategy": "fixed_window"},
        {"name": "narrow", "match": {"path": "/n"}, "limit": "1/min", "strategy": "fixed_window"}
    ]}));
    let s = MemStore::default();
    assert_eq!(status(&l.check(&Req::new("GET", "/n"), &s, T0)), 200); // wide 1, narrow 1
    for _ in 0..5 {
        assert_eq!(status(&l.check(&Req::new("GET", "/n"), &s, T0)), 429); // narrow denies
    }
    // Wide has 2 left: the five denied requests took nothing from it.
    assert_eq!(status(&l.check(&Req::new("GET", "/w"), &s, T0)), 200);
    assert_eq!(status(&l.check(&Req::new("GET", "/w"), &s, T0)), 200);
    let v = l.check(&Req::new("GET", "/w"), &s, T0);
    assert_eq!(status(&v), 429);
    let body: serde_json::Value = match &v {
        Verdict::Deny { response, .. } => serde_json::from_slice(&response.body).unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(body["violated_rules"], serde_json::json!(["wide"]));
}

#[test]
fn every_limit_of_a_rule_must_admit_and_is_reported() {
    let l = limiter(serde_json::json!({"rules": [{"name": "r", "limits": ["2/s", "3/min"], "strategy": "fixed_window"}]}));
    let s = MemStore::default();
    let req = Req::new("GET", "/");
    let first = l.check(&req, &s, T0);
    assert_eq!(header(&first, "ratelimit-policy"), Some("\"r.0\";q=2;w=1, \"r.1\";q=3;w=60"));
    assert_eq!(status(&l.check(&req, &s, T0)), 200);
    assert_eq!(status(&l.check(&req, &s, T0)), 429, "2/s reached");
    assert_eq!(status(&l.check(&req, &s, T0 + 1_000_000)), 200);
    assert_eq!(status(&l.check(&req, &s, T0 + 2_000_000)), 429, "3/min reached");
}

#[test]
fn shadow_rules_never_block_and_report_to_clients_only_when_asked() {
    for advertise in [None, Some(true)] {
        let mut rule = serde_json::json!({"name": "s", "limit": "1/min", "shadow": true});
        if let Some(a) = advertise {
            rule["advertise"] = a.into();
        }
        let l = limiter(serde_json::json!({"rules": [rule]}));
        let s = MemStore::default();
        for _ in 0..3 {
            let v = l.check(&Req::new("GET", "/"), &s, T0);
            assert_eq!(status(&v), 200);
        }
        let v = l.check(&Req::new("GET", "/"), &s, T0);
        assert!(v.outcomes().iter().any(|o| !o.allowed));
        match advertise {
            // A trial limit clients could back off to would change traffic.
            None => assert_eq!((header(&v, "ratelimit"), header(&v, "ratelimit-policy")), (None, None)),
            Some(_) => assert!(header(&v, "ratelimit").is_some_and(|h| h.contains("r=0"))),
        }
    }
}

#[test]
fn a_rule_kept_out_of_the_fields_still_denies_and_sets_retry_after() {
    // tenant counts a shared identity: how much of it others used is not the client's to see.
    let l = limiter(serde_json::json!({"rate_limit_headers": "both", "rules": [
        {"name": "api", "limit": "100/min", "strategy": "fixed_window"},
        {"name": "tenant", "limit": "2/min", "strategy": "fixed_window", "identifier": "global", "advertise": false}
    ]}));
    let s = MemStore::default();
    let t = T0 - T0 % 60_000_000 + 15_000_000;
    let req = Req::new("GET", "/");
    let admitted = l.check(&req, &s, t);
    assert_eq!(status(&admitted), 200);
    assert_eq!(header(&admitted, "ratelimit-policy"), Some("\"api\";q=100;w=60"));
    assert_eq!(header(&admitted, "ratelimit"), Some("\"api\";r=99;t=45"));
    // tenant, with 1 left, is closer to running out: not a candidate for the legacy fields.
    assert_eq!((header(&admitted, "x-ratelimit-limit"), header(&admitted, "x-ratelimit-remaining")), (Some("100"), Some("99")));
    assert_eq!(status(&l.check(&req, &s, t)), 200);
    let limited = l.check(&req, &s, t);
    assert_eq!(status(&limited), 429);
    assert_eq!(header(&limited, "retry-after"), Some("45"), "tenant's wait");
    assert_eq!(header(&limited, "ratelimit-policy"), Some("\"api\";q=100;w=60"));
    assert!(
        header(&limited, "ratelimit").is_some_and(|h| h.starts_with("\"api\";r=") && h.ends_with(";t=45") && !h.contains(','))
    );
    assert_eq!(header(&limited, "x-ratelimit-limit"), Some("100"));
    let Verdict::Deny { response, .. } = &limited else { unreachable!() };
    assert!(response.headers.iter().all(|(_, v)| !v.contains("tenant")), "{:?}", response.headers);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["violated_rules"], serde_json::json!(["tenant"]));
    // With no advertised rule applying, no rate limit field is added at all.
    let l = limiter(serde_json::json!({"rate_limit_headers": "both", "rules": [
        {"name": "tenant", "limit": "1/min", "strategy": "fixed_window", "identifier": "global", "advertise": false}
    ]}));
    let fields = |v: &Verdict| {
        let headers = match v {
            Verdict::Admit { headers, .. } => headers.clone(),
            Verdict::Deny { response, .. } => response.headers.clone(),
        };
        headers.into_iter().filter(|(k, _)| k.contains("ratelimit") && k != "x-envoy-ratelimited").collect::<Vec<_>>()
    };
    let s = MemStore::default();
    let (first, second) = (l.check(&req, &s, t), l.check(&req, &s, t));
    assert_eq!((status(&first), status(&second)), (200, 429));
    assert_eq!((fields(&first), fields(&second)), (vec![], vec![]));
    assert_eq!(header(&second, "retry-after"), Some("45"));
}

#[test]
fn unlimited_rules_and_queued_delays() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "free", "limit": "0/0"},
        {"name": "q", "match": {"path": "/q"}, "limit": "2/s", "strategy": {"type": "leaky_bucket_queue", "max_delay": "1s"}}
    ]}));
    let s = MemStore::default();
    assert!(l.queues());
    assert!(l.check(&Req::new("GET", "/"), &s, T0).outcomes().is_empty());
    let mut delays = Vec::new();
    for _ in 0..6 {
        match l.check(&Req::new("GET", "/q"), &s, T0) {
            Verdict::Admit { delay_ms, .. } => delays.push(delay_ms),
            Verdict::Deny { .. } => delays.push(u64::MAX),
        }
    }
    assert_eq!(delays[0], 0);
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "delays grow in arrival order: {delays:?}");
    assert_eq!(*delays.last().unwrap(), u64::MAX, "beyond max_delay: rejected ({delays:?})");
}

#[test]
fn a_flood_shares_one_limited_response_while_it_shows_the_same() {
    let config = serde_json::json!({"rules": [{"name": "api", "limit": "1/10s", "strategy": "fixed_window",
        "identifier": "global"}]});
    let l = limiter(config.clone());
    let s = MemStore::default();
    let req = Req::new("GET", "/");
    // Windows are aligned to the epoch: start at one's beginning.
    let t = T0 - T0 % 10_000_000;
    assert_eq!(status(&l.check(&req, &s, t)), 200);
    let response = |now: u64| match l.check(&req, &s, now) {
        Verdict::Deny { response, .. } => response,
        v => panic!("{v:?}"),
    };
    let retry_after =
        |r: &crate::response::LocalResponse| r.headers.iter().find(|(k, _)| k == "retry-after").map(|(_, v)| v.clone());
    let first = response(t + 1_000);
    assert_eq!(retry_after(&first).as_deref(), Some("10"));
    assert!(std::sync::Arc::ptr_eq(&first, &response(t + 900_000)), "the same fields: the same response, not built again");
    // A second later Retry-After counts down: a new response, which the flood then shares.
    let later = response(t + 1_000_001);
    assert_eq!(retry_after(&later).as_deref(), Some("9"));
    assert!(std::sync::Arc::ptr_eq(&later, &response(t + 1_500_000)));
    // What is shared is what a worker that never answered before builds.
    match limiter(config).check(&req, &s, t + 1_500_000) {
        Verdict::Deny { response, .. } => assert_eq!(*response, *later),
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_shared_limited_response_follows_what_the_advertised_rules_show() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "api", "limit": "1/10s", "strategy": "fixed_window", "identifier": "global"},
        {"name": "hidden", "match": {"path": "/h"}, "limit": "1000/min", "advertise": false},
        {"name": "extra", "match": {"path": "/s"}, "limit": "1000/min"}
    ]}));
    let s = MemStore::default();
    let t = T0 - T0 % 10_000_000;
    assert_eq!(status(&l.check(&Req::new("GET", "/x"), &s, t)), 200);
    let response = |path: &str| match l.check(&Req::new("GET", path), &s, t + 1_000) {
        Verdict::Deny { response, .. } => response,
        v => panic!("{v:?}"),
    };
    let policy = |r: &crate::response::LocalResponse| {
        r.headers.iter().find(|(k, _)| k == "ratelimit-policy").map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let plain = response("/x");
    // A rule kept out of the fields, admitting, shows nothing: the same response serves.
    assert!(std::sync::Arc::ptr_eq(&plain, &response("/h")));
    // Another advertised rule is another response, and the one after it is not that one.
    let with_extra = response("/s");
    assert_eq!(policy(&with_extra), "\"api\";q=1;w=10, \"extra\";q=1000;w=60");
    assert_eq!(policy(&response("/x")), "\"api\";q=1;w=10");
}

#[test]
fn a_shared_limited_response_carries_the_wait_of_a_rule_kept_out_of_the_fields() {
    // api admits both clients alike; hidden denies each for as long as its own bucket says.
    let l = limiter(serde_json::json!({"rules": [
        {"name": "api", "limit": "1000/hour", "strategy": "fixed_window"},
        {"name": "hidden", "limit": "1/min", "strategy": "token_bucket", "identifier": {"header": "x-user"}, "advertise": false}
    ]}));
    let s = MemStore::default();
    let user = |u: &str| Req::new("GET", "/").header("x-user", u);
    assert_eq!(status(&l.check(&user("a"), &s, T0)), 200);
    assert_eq!(status(&l.check(&user("b"), &s, T0 + 20_000_000)), 200);
    let at = T0 + 30_000_000;
    let (a, b) = (l.check(&user("a"), &s, at), l.check(&user("b"), &s, at));
    assert_eq!((status(&a), status(&b)), (429, 429));
    assert_eq!(header(&a, "ratelimit"), header(&b, "ratelimit"), "what the fields show is the same");
    assert_eq!((header(&a, "retry-after"), header(&b, "retry-after")), (Some("30"), Some("50")));
}
