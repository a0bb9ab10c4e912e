//! Message rules (`per: message`): the config that declares them and every mistake it can hold,
//! which rules an upgrade meets and against whom its messages count, exact counts per message in
//! shared data, and the payload-byte cost that never admits what its limits would not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::config::{compile, largest_admissible, Cost, OverLimit, Per};
use sluice::engine::{Applies, Limiter, Step, Verdict};
use sluice::identity::RequestInfo;
use sluice::rate::Rate;
use sluice::store::MemStore;
use sluice::strategy::{decide, Strategy as Algo};

struct Req {
    headers: Vec<(&'static str, &'static str)>,
    ip: &'static str,
}

impl RequestInfo for Req {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes().to_vec())
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        self.header("cookie")
    }
    fn source_address(&self) -> Option<String> {
        Some(format!("{}:5555", self.ip))
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

fn upgrade(ip: &'static str) -> Req {
    Req { headers: vec![(":method", "GET"), (":path", "/ws/chat"), ("upgrade", "websocket"), ("x-user", "u1")], ip }
}

fn errors(v: &Value) -> Vec<String> {
    match compile(v) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn chat(extra: Value) -> Value {
    let mut rule = json!({"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": "3/min"});
    if let (Value::Object(r), Value::Object(e)) = (&mut rule, extra) {
        r.extend(e);
    }
    json!({"rules": [rule]})
}

#[test]
fn a_message_rule_compiles_with_its_over_limit_and_normalizes() {
    let c = compile(&chat(json!({"cost": "payload_bytes", "over_limit": {"notify": true, "close_after": 5}}))).unwrap();
    let r = &c.rules[0];
    assert_eq!(
        (r.per, r.cost.clone(), r.over_limit),
        (Per::Message, Cost::PayloadBytes, OverLimit { notify: true, close_after: Some(5) })
    );
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["rules"][0]["per"], "message");
    assert_eq!(v["rules"][0]["cost"], "payload_bytes");
    assert_eq!(v["rules"][0]["over_limit"], json!({"notify": true, "close_after": 5}));
    let plain = compile(&chat(json!({}))).unwrap();
    assert_eq!(plain.rules[0].over_limit, OverLimit::default());
    assert_eq!(serde_json::to_value(&plain).unwrap()["rules"][0]["over_limit"], json!({"notify": false, "close_after": null}));
}

#[test]
fn every_mistake_is_named_with_its_path() {
    let cases: Vec<(Value, &str)> = vec![
        (chat(json!({"per": "messages"})), "rules[0].per: \"messages\": unknown value (did you mean \"message\"?); expected one of request, message"),
        (
            json!({"rules": [{"name": "r", "limit": "1/s", "cost": "payload_bytes"}]}),
            "rules[0].cost: \"payload_bytes\": payload_bytes is what a WebSocket message costs; expected per: message",
        ),
        (chat(json!({"cost": "payload_byte"})), "rules[0].cost: \"payload_byte\": unknown value (did you mean \"payload_bytes\"?)"),
        (chat(json!({"cost": {"header": "x-cost"}})), "rules[0].cost: {\"header\":\"x-cost\"}: a message rule's cost is per message"),
        (
            json!({"rules": [{"name": "r", "limit": "1/s", "over_limit": {"notify": true}}]}),
            "rules[0].over_limit: {\"notify\":true}: over_limit says what a message over the limit brings about; expected per: message",
        ),
        (chat(json!({"over_limit": {"close_after": 0}})), "rules[0].over_limit.close_after: 0: expected an integer from 1 to 1000000"),
        (chat(json!({"over_limit": {"notfy": true}})), "rules[0].over_limit.notfy: unknown field (did you mean \"notify\"?)"),
        (chat(json!({"over_limit": {"notify": "yes"}})), "rules[0].over_limit.notify: \"yes\": expected a boolean"),
    ];
    for (config, want) in cases {
        let errs = errors(&config);
        assert_eq!(errs.len(), 1, "{config}: {errs:#?}");
        assert!(errs[0].starts_with(want), "{config}:\n got  {}\n want {want}", errs[0]);
    }
    let callout = json!({"redis": {"cluster": "r", "transport": "redis_callout"},
        "rules": [{"name": "m", "per": "message", "limit": "1/s", "backend": "redis"}]});
    let errs = errors(&callout);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "rules[0].per: \"message\": a message rule decided in Redis needs redis.transport: http, not redis_callout"
        ),
        "{}",
        errs[0]
    );
}

fn limiter(rules: Value) -> Limiter {
    Limiter::new(compile(&json!({"rules": rules})).unwrap())
}

#[test]
fn an_upgrade_meets_message_rules_and_requests_never_do() {
    let l = limiter(json!([
        {"name": "upgrades", "match": {"path": "/ws/**"}, "limit": "10/min"},
        {"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": "3/min", "identifier": {"header": "x-user"}},
        {"name": "elsewhere", "per": "message", "match": {"path": "/other"}, "limit": "3/min"}
    ]));
    assert!(l.has_message_rules());
    let rules = l.message_rules(&upgrade("10.0.0.1"));
    assert_eq!(rules.iter().map(|a| a.rule).collect::<Vec<_>>(), vec![1]);
    assert_eq!(rules[0].identity.hash, l.message_rules(&upgrade("10.0.0.2"))[0].identity.hash, "the header, not the address");
    // The upgrade request itself is counted by the request rule only.
    let store = MemStore::default();
    let Step::Done(Verdict::Admit { outcomes, .. }) = l.start(&upgrade("10.0.0.1"), &store, 1_000_000) else { panic!() };
    assert_eq!(outcomes.iter().map(|o| o.rule).collect::<Vec<_>>(), vec![0]);
    // explain: a message rule applies to an upgrade, and says why not to a plain request.
    assert!(matches!(l.explain(&upgrade("10.0.0.1"))[1], Applies::Yes(_)));
    let plain = Req { headers: vec![(":method", "GET"), (":path", "/ws/chat")], ip: "10.0.0.1" };
    assert_eq!(l.explain(&plain)[1], Applies::NotUpgrade);
    assert!(l.message_rules(&Req { headers: vec![(":path", "/elsewhere"), ("upgrade", "websocket")], ip: "1.2.3.4" }).is_empty());
}

fn admitted(l: &Limiter, rules: &[sluice::engine::Applied], payloads: &[u64], store: &MemStore, now_us: u64) -> Vec<bool> {
    payloads
        .iter()
        .map(|p| match l.start_message(rules, *p, false, store, now_us) {
            Step::Done(v) => matches!(v, Verdict::Admit { .. }),
            Step::Redis(_) => panic!("local rules only"),
        })
        .collect()
}

#[test]
fn messages_are_counted_exactly_and_two_connections_of_one_identity_share() {
    for name in sluice::strategy::NAMES {
        // Debt is admission beyond the limit by design: none here.
        let strategy = if name == "token_bucket_debt" { json!({"type": name, "max_debt": 0}) } else { json!(name) };
        let l = limiter(json!([{"name": "chat", "per": "message", "limit": "5/min", "strategy": strategy}]));
        let store = MemStore::default();
        let (a, b) = (l.message_rules(&upgrade("10.0.0.1")), l.message_rules(&upgrade("10.0.0.1")));
        let now = 1_700_000_000_000_000;
        let first = admitted(&l, &a, &[10; 4], &store, now);
        let second = admitted(&l, &b, &[10; 4], &store, now);
        let n = first.iter().chain(&second).filter(|x| **x).count();
        assert_eq!(n, 5, "{name}: {first:?} {second:?}");
        let other = l.message_rules(&upgrade("10.0.0.9"));
        assert!(admitted(&l, &other, &[10], &store, now)[0], "{name}: another identity has its own budget");
    }
}

#[test]
fn payload_bytes_are_the_cost() {
    let config =
        json!([{"name": "bytes", "per": "message", "limit": "100/min", "cost": "payload_bytes", "strategy": "fixed_window"}]);
    let l = limiter(config.clone());
    let store = MemStore::default();
    let a = l.message_rules(&upgrade("10.0.0.1"));
    let now = 1_700_000_000_000_000;
    // 60 + 40 fill the window; 1 more does not fit; an empty message costs 1; a huge one never fits.
    assert_eq!(admitted(&l, &a, &[60, 40, 1], &store, now), vec![true, true, false]);
    // A proxy of its own (a limiter decides against one store, and remembers its denials).
    let (l, fresh) = (limiter(config), MemStore::default());
    let a = l.message_rules(&upgrade("10.0.0.1"));
    assert_eq!(admitted(&l, &a, &[u64::MAX, 0, 99], &fresh, now), vec![false, true, true]);
}

#[test]
fn a_fragmented_message_counts_once_and_its_bytes_frame_by_frame() {
    let l = limiter(json!([
        {"name": "count", "per": "message", "limit": "2/min", "strategy": "fixed_window"},
        {"name": "bytes", "per": "message", "limit": "100/min", "cost": "payload_bytes", "strategy": "fixed_window"}
    ]));
    let store = MemStore::default();
    let rules = l.message_rules(&upgrade("10.0.0.1"));
    let now = 1_700_000_000_000_000;
    let decide = |payload: u64, continuation: bool| match l.start_message(&rules, payload, continuation, &store, now) {
        Step::Done(v) => v,
        Step::Redis(_) => panic!("local rules only"),
    };
    // A message of three frames: its first frame meets both rules, each continuation only the
    // payload-byte rule, so the count rule has room for one more message afterwards.
    let first = decide(10, false);
    assert_eq!(first.outcomes().iter().map(|o| o.rule).collect::<Vec<_>>(), vec![0, 1]);
    for _ in 0..2 {
        let cont = decide(20, true);
        assert!(matches!(cont, Verdict::Admit { .. }));
        assert_eq!(cont.outcomes().iter().map(|o| o.rule).collect::<Vec<_>>(), vec![1]);
    }
    assert!(matches!(decide(10, false), Verdict::Admit { .. }), "the second message (60 bytes so far)");
    // A message's verdict carries no response: nothing of one is sent for a message.
    assert!(matches!(&first, Verdict::Admit { headers, .. } if headers.is_empty()), "{first:?}");
    let over = decide(1, false);
    assert!(matches!(&over, Verdict::Deny { response, .. } if response.body.is_empty()), "a third message: over the count");
    // 60 bytes are in (the denied message took nothing from either rule); a continuation of
    // 41 more is over the bytes, one of 40 is not.
    assert!(matches!(decide(41, true), Verdict::Deny { .. }));
    assert!(matches!(decide(40, true), Verdict::Admit { .. }));
}

fn strategy() -> impl Strategy<Value = Algo> {
    let burst = prop::option::of(1u64..50);
    prop_oneof![
        Just(Algo::FixedWindow),
        Just(Algo::SlidingWindowCounter),
        (1u32..64).prop_map(|n| Algo::SlidingWindowLog { max_entries: n }),
        burst.clone().prop_map(|b| Algo::TokenBucket { burst: b }),
        (burst.clone(), 0u64..20).prop_map(|(b, d)| Algo::TokenBucketDebt { burst: b, max_debt: d }),
        burst.clone().prop_map(|b| Algo::LeakyBucket { burst: b }),
        (burst.clone(), 0u64..5000).prop_map(|(b, d)| Algo::LeakyBucketQueue { burst: b, max_delay_ms: d }),
        burst.prop_map(|b| Algo::Gcra { burst: b }),
    ]
}

proptest! {
    /// A cost above `largest_admissible` is denied from any state, just as the clamped cost
    /// (one above it) is, and the largest admissible cost itself passes a fresh state: clamping
    /// a payload's bytes there changes no decision.
    #[test]
    fn a_cost_beyond_what_a_limit_admits_is_denied_like_its_clamp(
        s in strategy(),
        limit in 1u64..50,
        period_ms in prop_oneof![Just(1000u64), Just(60_000)],
        steps in prop::collection::vec((0u64..3000, 1u64..60), 0..10),
        over in 1u64..1_000_000,
    ) {
        let rate = Rate { limit, period_ms };
        let top = largest_admissible(&s, &rate);
        let mut now = 1_700_000_000_000_000u64;
        let mut state: Vec<u8> = Vec::new();
        prop_assert!(decide(&s, &rate, &[], now, top).decision.allowed, "{s:?} {rate:?}: {top} from fresh");
        for (dt, cost) in steps {
            now += dt * 1000;
            let o = decide(&s, &rate, &state, now, cost);
            if let Some(next) = o.state { state = next.into_vec(); }
            prop_assert!(!decide(&s, &rate, &state, now, top + over).decision.allowed);
            prop_assert!(!decide(&s, &rate, &state, now, top + 1).decision.allowed);
        }
    }
}
