//! The verdict: what a denial consumes, every limit reported, shadow rules, queues, and the
//! limited response a flood shares.

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
fn shadow_rules_never_block_but_report() {
    let l = limiter(serde_json::json!({"rules": [{"name": "s", "limit": "1/min", "shadow": true}]}));
    let s = MemStore::default();
    for _ in 0..3 {
        let v = l.check(&Req::new("GET", "/"), &s, T0);
        assert_eq!(status(&v), 200);
    }
    let v = l.check(&Req::new("GET", "/"), &s, T0);
    assert!(v.outcomes().iter().any(|o| !o.allowed));
    assert!(header(&v, "ratelimit").is_some_and(|h| h.contains("r=0")));
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
