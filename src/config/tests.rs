//! Compiler tests: bad configs (path + message), several errors at once, good configs and the
//! normalized output.

use serde_json::{json, Value};

use super::*;
use crate::rate::Rate;
use crate::strategy::Strategy;

const MIN: u64 = 60_000;

fn rule(extra: Value) -> Value {
    let mut r = json!({"name": "api", "limit": "100/min"});
    if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
        for (k, v) in extra {
            if v.is_null() {
                r.remove(&k);
            } else {
                r.insert(k, v);
            }
        }
    }
    r
}

fn with_rules(rules: Vec<Value>) -> Value {
    json!({ "rules": rules })
}

fn errors(v: &Value) -> Vec<(String, String)> {
    match compile(v) {
        Ok(c) => panic!("expected errors, compiled: {c:?}"),
        Err(e) => e.iter().map(|e| (e.path.clone(), e.to_string())).collect(),
    }
}

/// Exactly one error, at `path`, whose text contains `needle`.
#[track_caller]
fn assert_one(v: Value, path: &str, needle: &str) {
    let errs = errors(&v);
    assert_eq!(errs.len(), 1, "want one error at {path}, got {errs:#?}");
    let (p, msg) = &errs[0];
    assert_eq!(p, path, "{msg}");
    assert!(msg.contains(needle), "error {msg:?} lacks {needle:?}");
    if !path.is_empty() {
        assert!(msg.starts_with(&format!("{path}: ")), "{msg}");
    }
}

#[test]
fn bad_unit_reads_exactly_as_documented() {
    let v = with_rules(vec![rule(json!({})), rule(json!({"name": "b"})), rule(json!({"name": "c", "limit": "100/fortnight"}))]);
    let e = compile(&v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rules[2].limit: \"100/fortnight\": unknown unit \"fortnight\"; expected one of ms, s, m, h, d (or their long forms)"
    );
}

#[test]
fn no_configuration() {
    for bytes in [&b""[..], b"   \n\t", b"\xEF\xBB\xBF"] {
        let e = compile_json(bytes).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e.errors[0].problem, Problem::NoConfiguration);
        assert!(e.to_string().starts_with("no configuration"));
    }
    assert_one(Value::Null, "", "no configuration");
}

#[test]
fn invalid_json_is_one_error_with_position() {
    let e = compile_json(b"{\"rules\": [").unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn a_key_written_twice_is_refused_not_overwritten() {
    let e = compile_json(
        br#"{"rules": [{"name": "login", "limit": "5/min", "match": {"path": "/login"}, "match": {"path": "/**"}}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "rules[0].match: \"match\": duplicate key; each key may appear once in an object");
    assert_eq!(e.errors[0].problem, Problem::DuplicateKey);
}

#[test]
fn a_key_written_twice_is_reported_at_its_path_beside_every_other_error() {
    // The first `limit` is the one judged (the second, valid, is only the repeat); the repeat
    // in the second rule's match gets that rule's index; a header name is quoted as elsewhere.
    let text = br#"{
        "namespace": "shop", "namespace": "other",
        "response": {"headers": {"x y": "1", "x y": "2"}},
        "rules": [
            {"name": "api", "limit": "100/fortnight", "limit": "100/min"},
            {"name": "login", "limit": "5/min", "match": {"path": "/login", "methods": ["GET"], "methods": ["POST"]}, "strategy": "bucket"}
        ]
    }"#;
    let e = compile_json(text).unwrap_err();
    let got: Vec<String> = e.iter().map(ToString::to_string).collect();
    let duplicate = "duplicate key; each key may appear once in an object";
    assert_eq!(
        got[..4],
        [
            format!("namespace: \"namespace\": {duplicate}"),
            format!("response.headers[\"x y\"]: \"x y\": {duplicate}"),
            format!("rules[0].limit: \"limit\": {duplicate}"),
            format!("rules[1].match.methods: \"methods\": {duplicate}"),
        ],
        "{e}"
    );
    let rest: Vec<&str> = e.iter().skip(4).map(|e| e.path.as_str()).collect();
    assert_eq!(rest, ["response.headers[\"x y\"]", "rules[0].limit", "rules[1].strategy"], "{e}");
    assert!(got[5].contains("\"100/fortnight\": unknown unit"), "{e}");
    // Repeats alone, in a config that is otherwise valid, are still refused.
    let e = compile_json(br#"{"rules": [{"name": "a", "limit": "1/s", "name": "a"}]}"#).unwrap_err();
    assert_eq!(e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["rules[0].name"]);
}

#[test]
fn a_rule_may_not_take_the_name_another_rules_limit_is_reported_by() {
    let config = with_rules(vec![
        json!({"name": "api", "limits": ["10/s", "100/min"]}),
        rule(json!({"name": "api.1", "limit": "5/s"})),
        rule(json!({"name": "api.2", "limit": "5/s"})),
    ]);
    assert_one(config, "rules[1].name", "the rate limit fields call limit 1 of rules[0] by this name");
}

#[test]
fn top_level_must_be_an_object() {
    assert_one(json!([1, 2]), "", "expected an object at the top level, found a list");
}

#[test]
fn rules_missing_empty_or_wrong_type() {
    assert_one(json!({}), "rules", "missing required field");
    assert_one(json!({"rules": []}), "rules", "empty rules");
    assert_one(json!({"rules": {"name": "x"}}), "rules", "expected a list of rules, found an object");
}

#[test]
fn unknown_fields_suggest_the_close_one() {
    assert_one(
        json!({"namespce": "x", "rules": [rule(json!({}))]}),
        "namespce",
        "unknown field (did you mean \"namespace\"?); expected one of namespace, rate_limit_headers",
    );
    assert_one(with_rules(vec![rule(json!({"stratgy": "gcra"}))]), "rules[0].stratgy", "did you mean \"strategy\"?");
    let errs = errors(&with_rules(vec![rule(json!({"zzzzzzz": 1}))]));
    assert!(!errs[0].1.contains("did you mean"), "{errs:?}");
    assert_one(with_rules(vec![rule(json!({"x y": 1}))]), "rules[0][\"x y\"]", "unknown field");
}

#[test]
fn rule_names() {
    assert_one(with_rules(vec![rule(json!({"name": null}))]), "rules[0].name", "missing required field");
    assert_one(with_rules(vec![rule(json!({"name": "my rule"}))]), "rules[0].name", "\"my rule\": invalid rule name");
    assert_one(with_rules(vec![rule(json!({"name": "a".repeat(65)}))]), "rules[0].name", "1 to 64 characters");
    assert_one(
        with_rules(vec![rule(json!({})), rule(json!({"name": "b"})), rule(json!({}))]),
        "rules[2].name",
        "\"api\": duplicate rule name; rules[0] already uses it",
    );
}

#[test]
fn limit_fields() {
    assert_one(with_rules(vec![rule(json!({"limits": ["1/s"]}))]), "rules[0].limits", "both set");
    assert_one(with_rules(vec![rule(json!({"limit": null}))]), "rules[0]", "missing \"limit\" (or \"limits\")");
    assert_one(
        with_rules(vec![rule(json!({"limit": 100}))]),
        "rules[0].limit",
        "100: expected a rate string such as \"100/min\", found a number",
    );
    assert_one(with_rules(vec![rule(json!({"limit": "0/m"}))]), "rules[0].limit", "use \"0/0\" for unlimited");
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": ["10/s", "0/0"]}))]),
        "rules[0].limits[1]",
        "\"0/0\": \"0/0\" (unlimited) cannot be combined",
    );
    let nine: Vec<&str> = vec!["1/s"; 9];
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": nine}))]),
        "rules[0].limits",
        "too many entries (9); expected at most 8",
    );
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": []}))]),
        "rules[0].limits",
        "empty limits; expected at least one rate",
    );
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": "10/s"}))]),
        "rules[0].limits",
        "or use \"limit\" for one rate",
    );
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": ["10/s", "5/x"]}))]),
        "rules[0].limits[1]",
        "unknown unit \"x\"",
    );
}

#[test]
fn strategy_errors() {
    let s = |v: Value| with_rules(vec![rule(json!({ "strategy": v }))]);
    assert_one(s(json!("token_buckt")), "rules[0].strategy", "\"token_buckt\": unknown value (did you mean \"token_bucket\"?)");
    assert_one(
        s(json!({"type": "gcra", "max_debt": 3})),
        "rules[0].strategy.max_debt",
        "\"max_debt\" is not a parameter of strategy gcra; expected one of burst",
    );
    assert_one(s(json!({"type": "fixed_window", "burst": 3})), "rules[0].strategy.burst", "this strategy takes no parameters");
    assert_one(s(json!({"type": "token_bucket", "burst": 0})), "rules[0].strategy.burst", "0: expected an integer from 1 to");
    assert_one(s(json!({"type": "token_bucket", "burst": 1.5})), "rules[0].strategy.burst", "found a fractional number");
    // Whole numbers written as floats are integers, as JSON Schema counts them.
    let burst = |v: Value| match compile(
        &json!({"rules": [{"name": "r", "limit": "5/s", "strategy": {"type": "token_bucket", "burst": v}}]}),
    ) {
        Ok(c) => Ok(c.rules[0].strategy.clone()),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(burst(json!(2e3)), Ok(Strategy::TokenBucket { burst: Some(2000) }));
    assert_eq!(burst(json!(7.0)), Ok(Strategy::TokenBucket { burst: Some(7) }));
    assert_one(s(json!({"type": "token_bucket", "burst": 1e20})), "rules[0].strategy.burst", "expected an integer from 1 to");
    assert_one(s(json!({"type": "token_bucket", "burst": -3.0})), "rules[0].strategy.burst", "expected an integer from 1 to");
    assert_one(s(json!({"type": "token_bucket", "brust": 5})), "rules[0].strategy.brust", "did you mean \"burst\"?");
    assert_one(s(json!({"burst": 5})), "rules[0].strategy.type", "missing required field");
    assert_one(s(json!(7)), "rules[0].strategy", "expected a strategy name or an object with \"type\"");
    assert_one(
        s(json!({"type": "leaky_bucket_queue", "max_delay": "2 fortnights"})),
        "rules[0].strategy.max_delay",
        "\"2 fortnights\": unknown unit \"fortnights\"",
    );
    assert_one(
        s(json!({"type": "leaky_bucket_queue", "max_delay": "1s", "max_delay_ms": 5})),
        "rules[0].strategy.max_delay_ms",
        "both set",
    );
    assert_one(
        s(json!({"type": "leaky_bucket_queue", "max_delay": "5m"})),
        "rules[0].strategy.max_delay",
        "longer than 60000 ms",
    );
    assert_one(s(json!({"type": "sliding_window_log", "max_entries": 4096})), "rules[0].strategy.max_entries", "from 1 to 4095");
    assert_one(
        s(json!({"type": "token_bucket_debt", "max_debt": -1})),
        "rules[0].strategy.max_debt",
        "-1: expected an integer from 0 to",
    );
}

#[test]
fn identifier_errors() {
    let id = |v: Value| with_rules(vec![rule(json!({ "identifier": v }))]);
    assert_one(id(json!("ip")), "rules[0].identifier", "\"ip\": unknown value; expected one of client_ip, global");
    assert_one(id(json!(["global", "client_ip"])), "rules[0].identifier[0]", "cannot be combined");
    assert_one(id(json!([{"header": "x-a", "fallback": "skip"}])), "rules[0].identifier[0].fallback", "put it next to \"parts\"");
    assert_one(id(json!({"header": "bad name"})), "rules[0].identifier.header", "\"bad name\": invalid header name");
    assert_one(id(json!({"header": "a", "cookie": "b"})), "rules[0].identifier", "exactly one of header, query, cookie");
    assert_one(id(json!({"fallback": "skip"})), "rules[0].identifier", "exactly one of header, query, cookie");
    assert_one(id(json!({"parts": ["client_ip"], "fallback": "skip"})), "rules[0].identifier.fallback", "has no effect");
    assert_one(
        id(json!({"header": "x-a", "fallback": "never"})),
        "rules[0].identifier.fallback",
        "expected one of client_ip, global, skip",
    );
    assert_one(id(json!([{"header": "x-a"}, {"header": "X-A"}])), "rules[0].identifier[1]", "duplicate identifier part");
    assert_one(id(json!([])), "rules[0].identifier", "empty identifier");
    assert_one(id(json!({"parts": [{"hedaer": "x"}]})), "rules[0].identifier.parts[0].hedaer", "did you mean \"header\"?");
    assert_one(id(json!({"cookie": "a b"})), "rules[0].identifier.cookie", "invalid cookie name");
    assert_one(id(json!({"query": ""})), "rules[0].identifier.query", "invalid query parameter name");
    assert_one(id(json!(true)), "rules[0].identifier", "found a boolean");
    // A bad fallback is named beside bad parts, not after they are fixed.
    let errs = errors(&id(json!({"parts": [], "fallback": "sikp"})));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["rules[0].identifier.parts", "rules[0].identifier.fallback"], "{errs:#?}");
}

#[test]
fn cost_errors() {
    let c = |v: Value| with_rules(vec![rule(json!({ "cost": v }))]);
    assert_one(c(json!(0)), "rules[0].cost", "0: expected an integer from 1 to 1000000");
    assert_one(c(json!(1_000_001)), "rules[0].cost", "from 1 to 1000000");
    assert_one(
        c(json!({"header": "x-cost", "default": 50, "max": 10})),
        "rules[0].cost.default",
        "default 50 is greater than max 10",
    );
    assert_one(c(json!({"default": 2})), "rules[0].cost.header", "missing required field");
    // Left out, default and max follow a min above theirs.
    let cost =
        |v: Value| compile(&with_rules(vec![rule(json!({ "limit": "100000/min", "cost": v }))])).map(|c| c.rules[0].cost.clone());
    assert_eq!(
        cost(json!({"header": "x-cost", "min": 5})).map_err(|e| e.to_string()),
        Ok(Cost::Header { name: "x-cost".into(), default: 5, min: 5, max: 1000 })
    );
    assert_eq!(
        cost(json!({"header": "x-cost", "min": 5000})).map_err(|e| e.to_string()),
        Ok(Cost::Header { name: "x-cost".into(), default: 5000, min: 5000, max: 5000 })
    );
    assert_one(c(json!("1")), "rules[0].cost", "expected a positive integer or an object");
}

/// A config of a great many errors lists the first hundred and counts the rest.
#[test]
fn errors_past_a_hundred_are_counted_not_listed() {
    let mut v = with_rules(vec![rule(json!({}))]);
    for i in 0..150 {
        v[format!("extra{i}")] = json!(1);
    }
    let errs = errors(&v);
    assert_eq!(errs.len(), 101, "{errs:#?}");
    assert_eq!(errs[100], (String::new(), "and 50 more problems, not listed; fix these and run again".to_string()));
    v["rules"] = json!([]);
    assert_eq!(errors(&v).last().map(|e| e.1.as_str()), Some("and 51 more problems, not listed; fix these and run again"));
}

#[test]
fn exempt_errors() {
    let e = |v: Value| with_rules(vec![rule(json!({ "exempt": v }))]);
    assert_one(
        e(json!({"cidrs": ["10.0.0.1/8"]})),
        "rules[0].exempt.cidrs[0]",
        "host bits are set; did you mean \"10.0.0.0/8\"?",
    );
    assert_one(e(json!({"cidrs": ["10.0.0.0/8", "nope"]})), "rules[0].exempt.cidrs[1]", "\"nope\": invalid CIDR or IP address");
    assert_one(e(json!({"cidrs": ["10.0.0.0/33"]})), "rules[0].exempt.cidrs[0]", "prefix length must be a number from 0 to 32");
    assert_one(e(json!({"cidrs": ["::/129"]})), "rules[0].exempt.cidrs[0]", "from 0 to 128");
    assert_one(e(json!({"cidrs": ["10.0.0.0/+8"]})), "rules[0].exempt.cidrs[0]", "from 0 to 32");
    // 010 is 8 to a reader of octal: refused with a prefix as without one.
    for octal in ["010.0.0.0/8", "010.000.000.001/32", "010.0.0.1"] {
        assert_one(e(json!({"cidrs": [octal]})), "rules[0].exempt.cidrs[0]", "leading zero");
    }
    // Every problem of an exemption is named at once.
    let errs = errors(&e(json!({"cidrs": [], "headers": {"bad name": "1"}})));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["rules[0].exempt.cidrs", "rules[0].exempt.headers[\"bad name\"]"], "{errs:#?}");
    assert_one(e(json!({"cidrs": []})), "rules[0].exempt.cidrs", "empty cidrs");
    assert_one(e(json!({"headers": {"x-internal": true}})), "rules[0].exempt.headers.x-internal", "quote numbers and booleans");
    assert_one(e(json!({"headers": {"x-internal": "a\nb"}})), "rules[0].exempt.headers.x-internal", "invalid header value");
}

#[test]
fn an_ipv4_mapped_exemption_is_its_ipv4_network() {
    // Client addresses are compared as IPv4 when mapped: a mapped CIDR kept as IPv6 never matched.
    let cidrs = ["::ffff:192.0.2.0/120", "::ffff:10.0.0.1", "::ffff:0:0/96", "2001:db8::/32", "::/0"];
    let c = compile(&with_rules(vec![rule(json!({"exempt": {"cidrs": cidrs}}))])).unwrap();
    let got: Vec<String> = c.rules[0].exempt.cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["192.0.2.0/24", "10.0.0.1/32", "0.0.0.0/0", "2001:db8::/32", "::/0"]);
    let only_mapped = compile(&with_rules(vec![rule(json!({"exempt": {"cidrs": ["::ffff:192.0.2.0/120"]}}))])).unwrap();
    let l = crate::engine::Limiter::new(only_mapped);
    let exempt = |ip: &str| {
        let req = crate::identity::tests::Req::new("GET", "/").source(ip);
        l.check(&req, &crate::store::MemStore::default(), 1).outcomes().is_empty()
    };
    assert!(exempt("192.0.2.7:1") && exempt("[::ffff:192.0.2.7]:1") && !exempt("198.51.100.1:1"));
}

#[test]
fn backend_and_on_error() {
    assert_one(
        with_rules(vec![rule(json!({"backend": "redis"}))]),
        "rules[0].backend",
        "\"redis\": backend redis needs a top-level \"redis\" block",
    );
    assert_one(with_rules(vec![rule(json!({"backend": "remote"}))]), "rules[0].backend", "expected one of local, redis");
    let redis = |r: Value| json!({"redis": {"cluster": "gw"}, "rules": [r]});
    assert_one(
        redis(rule(json!({"backend": "redis", "on_error": {"fallback": {"share": 1.5}}}))),
        "rules[0].on_error.fallback.share",
        "1.5: expected a number greater than 0 and at most 1",
    );
    assert_one(
        redis(rule(json!({"backend": "redis", "on_error": {"fallback": {"share": 0}}}))),
        "rules[0].on_error.fallback.share",
        "greater than 0",
    );
    assert_one(
        redis(rule(json!({"backend": "redis", "on_error": "retry"}))),
        "rules[0].on_error",
        "expected one of allow, deny, fallback",
    );
    assert_one(redis(rule(json!({"on_error": "deny"}))), "rules[0].on_error", "only applies to backend: redis");
    assert_one(with_rules(vec![rule(json!({"shadow": "yes"}))]), "rules[0].shadow", "expected a boolean");
}

#[test]
fn a_rule_is_advertised_unless_it_is_a_shadow_rule_or_says_otherwise() {
    let advertise = |extra: Value| compile(&with_rules(vec![rule(extra)])).unwrap().rules[0].advertise;
    assert!(advertise(json!({})));
    assert!(!advertise(json!({"shadow": true})), "a trial limit is not shown to clients by default");
    assert!(advertise(json!({"shadow": false})));
    assert!(advertise(json!({"shadow": true, "advertise": true})), "an explicit value wins");
    assert!(!advertise(json!({"advertise": false})));
    assert!(!advertise(json!({"shadow": false, "advertise": false})));
    assert_one(with_rules(vec![rule(json!({"advertise": "no"}))]), "rules[0].advertise", "expected a boolean");
    assert_one(with_rules(vec![rule(json!({"shadow": true, "advertise": 0}))]), "rules[0].advertise", "expected a boolean");
}

#[test]
fn advertise_is_refused_on_a_message_rule_which_sends_no_rate_limit_fields() {
    for value in [json!(true), json!(false), json!("no")] {
        let chat = rule(json!({"name": "chat", "per": "message", "shadow": true, "advertise": value}));
        let errs = errors(&with_rules(vec![rule(json!({})), chat]));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].0, "rules[1].advertise");
        assert_eq!(
            errs[0].1,
            format!("rules[1].advertise: {value}: advertise says whether a rule shows in the rate limit fields, which a message's verdict does not send; expected per: request on the rule, or remove it")
        );
    }
    // Beside the rule's other errors, and only when the rule counts messages.
    let errs = errors(&with_rules(vec![rule(json!({"per": "message", "advertise": true, "limit": "5/fortnight"}))]));
    assert_eq!(errs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["rules[0].limit", "rules[0].advertise"], "{errs:#?}");
    // Also when another error leaves the rule's kind undecided (a message rule reads no header).
    let errs = errors(&with_rules(vec![rule(json!({"per": "message", "advertise": true, "cost": {"header": "x-cost"}}))]));
    assert_eq!(errs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["rules[0].cost", "rules[0].advertise"], "{errs:#?}");
    assert!(compile(&with_rules(vec![rule(json!({"per": "message", "shadow": true}))])).is_ok());
    assert!(compile(&with_rules(vec![rule(json!({"per": "request", "advertise": false}))])).is_ok());
}

#[test]
fn match_errors() {
    let m = |v: Value| with_rules(vec![rule(json!({ "match": v }))]);
    assert_one(m(json!({"path": "api/**"})), "rules[0].match.path", "\"api/**\": path glob must start with \"/\"");
    assert_one(m(json!({"path": ["/a", "/b/***"]})), "rules[0].match.path[1]", "must be a whole segment");
    assert_one(m(json!({"path": "/a//b"})), "rules[0].match.path", "empty segment");
    assert_one(
        m(json!({"methods": ["GET", "GTE"]})),
        "rules[0].match.methods[1]",
        "\"GTE\": method looks misspelled; did you mean GET?",
    );
    assert_one(m(json!({"methods": []})), "rules[0].match.methods", "empty methods");
    assert_one(m(json!({"methods": "GET"})), "rules[0].match.methods", "expected a list");
    assert_one(m(json!({"methods": ["GET /"]})), "rules[0].match.methods[0]", "invalid HTTP method");
    assert_one(m(json!({"headers": {"X-A": "1", "x-a": "2"}})), "rules[0].match.headers.x-a", "duplicate header name");
    assert_one(m(json!({"routes": [""]})), "rules[0].match.routes[0]", "empty route name");
    assert_one(m(json!({"paths": "/x"})), "rules[0].match.paths", "did you mean \"path\"?");
    assert_one(m(json!("/api/**")), "rules[0].match", "expected an object, found a string");
}

#[test]
fn top_level_field_errors() {
    let r = vec![rule(json!({}))];
    let top = |k: &str, v: Value| {
        let mut t = json!({ "rules": r.clone() });
        t[k] = v;
        t
    };
    assert_one(top("namespace", json!("has space")), "namespace", "invalid namespace");
    assert_one(
        top("rate_limit_headers", json!("draft9")),
        "rate_limit_headers",
        "(did you mean \"draft10\"?); expected one of draft10, legacy, both, none",
    );
    assert_one(top("response", json!({"status": 200})), "response.status", "200: expected an integer from 400 to 599");
    assert_one(top("response", json!({"grpc_status": 0})), "response.grpc_status", "0: expected an integer from 1 to 16");
    assert_one(top("response", json!({"grpc_status": 17})), "response.grpc_status", "17: expected an integer from 1 to 16");
    assert_one(top("response", json!({"headers": {"Retry-After": "1"}})), "response.headers.Retry-After", "set by sluice itself");
    // Envoy keeps a local reply's own grpc-status: 0 would tell a gRPC client it succeeded.
    assert_one(top("response", json!({"headers": {"grpc-status": "0"}})), "response.headers.grpc-status", "response.grpc_status");
    assert_one(
        top("response", json!({"headers": {"x-envoy-ratelimited": "no"}})),
        "response.headers.x-envoy-ratelimited",
        "retries",
    );
    assert_one(
        top("response", json!({"headers": {"content-type": "x"}})),
        "response.headers.content-type",
        "response.content_type",
    );
    assert_one(top("response", json!({"headers": {":status": "1"}})), "response.headers[\":status\"]", "invalid header name");
    assert_one(top("response", json!({"headers": {}})), "response.headers", "empty header map");
    assert_one(top("response", json!({"content_type": "text/html"})), "response.content_type", "without a body");
    assert_one(top("response", json!({"body": 5})), "response.body", "expected a string");
    assert_one(top("client_ip", json!({"xff_trusted_hops": 17})), "client_ip.xff_trusted_hops", "from 0 to 16");
    assert_one(top("local", json!({"max_clients": 0})), "local.max_clients", "from 1 to 10000000");
    assert_one(top("redis", json!({"transport": "http"})), "redis.cluster", "missing required field");
    assert_one(top("redis", json!({"cluster": ""})), "redis.cluster", "empty cluster name");
    assert_one(top("redis", json!({"cluster": "gw", "timeout_ms": 0})), "redis.timeout_ms", "from 1 to 60000");
    assert_one(
        top("redis", json!({"cluster": "gw", "transport": "grpc"})),
        "redis.transport",
        "expected one of http, redis_callout",
    );
    assert_one(top("redis", json!({"cluster": "gw", "token": "a\nb"})), "redis.token", "invalid token");
}

/// The configuration reference's numeric bounds below (others have cases of their own above):
/// the edge accepted, one past it refused at its path with the range named. A widened or
/// narrowed range fails here.
#[test]
fn every_numeric_bound_holds_at_its_edges() {
    let top = |key: &str, v: Value| {
        let mut t = with_rules(vec![rule(json!({}))]);
        t[key] = v;
        t
    };
    let breaker = |v: Value| top("redis", json!({"cluster": "gw", "breaker": v}));
    let one = |extra: Value| with_rules(vec![rule(extra)]);
    let burst = |b: u64| one(json!({"limit": "1000000000000/h", "strategy": {"type": "token_bucket", "burst": b}}));
    let queue = |ms: u64| one(json!({"strategy": {"type": "leaky_bucket_queue", "max_delay_ms": ms}}));
    let cost = |c: Value| one(json!({"limit": "1000000/s", "cost": c}));
    let close = |n: u64| one(json!({"per": "message", "over_limit": {"close_after": n}}));
    // (a config at the edge, the same one past it, the path of the error, a word of it)
    let cases: Vec<(Value, Value, &str, &str)> = vec![
        (top("response", json!({"status": 599})), top("response", json!({"status": 600})), "response.status", "599"),
        (
            top("local", json!({"max_clients": 10_000_000})),
            top("local", json!({"max_clients": 10_000_001})),
            "local.max_clients",
            "10000000",
        ),
        (
            top("redis", json!({"cluster": "gw", "timeout_ms": 60_000})),
            top("redis", json!({"cluster": "gw", "timeout_ms": 60_001})),
            "redis.timeout_ms",
            "60000",
        ),
        (
            breaker(json!({"failure_threshold": 1000})),
            breaker(json!({"failure_threshold": 1001})),
            "redis.breaker.failure_threshold",
            "1000",
        ),
        (
            breaker(json!({"half_open_probes": 1})),
            breaker(json!({"half_open_probes": 0})),
            "redis.breaker.half_open_probes",
            "from 1",
        ),
        (
            breaker(json!({"success_threshold": 100})),
            breaker(json!({"success_threshold": 101})),
            "redis.breaker.success_threshold",
            "100",
        ),
        (
            breaker(json!({"success_threshold": 1})),
            breaker(json!({"success_threshold": 0})),
            "redis.breaker.success_threshold",
            "from 1",
        ),
        (burst(1_000_000_000_000), burst(1_000_000_000_001), "rules[0].strategy.burst", "1000000000000"),
        (queue(60_000), queue(60_001), "rules[0].strategy.max_delay_ms", "60000"),
        (cost(json!(1_000_000)), cost(json!(1_000_001)), "rules[0].cost", "1000000"),
        (
            cost(json!({"header": "x-cost", "max": 1_000_000})),
            cost(json!({"header": "x-cost", "max": 1_000_001})),
            "rules[0].cost.max",
            "1000000",
        ),
        (
            cost(json!({"header": "x-cost", "default": 1_000_000, "max": 1_000_000})),
            cost(json!({"header": "x-cost", "default": 1_000_001, "max": 1_000_000})),
            "rules[0].cost.default",
            "1000000",
        ),
        (close(1_000_000), close(1_000_001), "rules[0].over_limit.close_after", "1000000"),
        (breaker(json!({"open_ms": 600_000})), breaker(json!({"open_ms": 600_001})), "redis.breaker.open_ms", "600000"),
        (
            breaker(json!({"half_open_probes": 100})),
            breaker(json!({"half_open_probes": 101})),
            "redis.breaker.half_open_probes",
            "100",
        ),
        (top("response", json!({"grpc_status": 16})), top("response", json!({"grpc_status": 17})), "response.grpc_status", "16"),
        (
            top("response", json!({"grpc_status": 1})),
            top("response", json!({"grpc_status": 0})),
            "response.grpc_status",
            "from 1",
        ),
        (
            top("client_ip", json!({"xff_trusted_hops": 16})),
            top("client_ip", json!({"xff_trusted_hops": 17})),
            "client_ip.xff_trusted_hops",
            "16",
        ),
        (
            top("client_ip", json!({"ipv6_prefix": 128})),
            top("client_ip", json!({"ipv6_prefix": 129})),
            "client_ip.ipv6_prefix",
            "128",
        ),
        (
            top("client_ip", json!({"ipv6_prefix": 1})),
            top("client_ip", json!({"ipv6_prefix": 0})),
            "client_ip.ipv6_prefix",
            "from 1",
        ),
        (
            one(json!({"strategy": {"type": "sliding_window_log", "max_entries": 4095}})),
            one(json!({"strategy": {"type": "sliding_window_log", "max_entries": 4096}})),
            "rules[0].strategy.max_entries",
            "4095",
        ),
        (
            cost(json!({"header": "x-cost", "min": 1_000_000, "max": 1_000_000})),
            cost(json!({"header": "x-cost", "min": 1_000_001, "max": 1_000_000})),
            "rules[0].cost.min",
            "1000000",
        ),
        (
            top("identity_secret", json!("s".repeat(256))),
            top("identity_secret", json!("s".repeat(257))),
            "identity_secret",
            "256",
        ),
    ];
    for (edge, past, path, word) in cases {
        if let Err(e) = compile(&edge) {
            panic!("{path}: the edge was refused: {e:?}");
        }
        assert_one(past, path, word);
    }
}

#[test]
fn the_redis_authority_is_a_uri_authority_taken_from_the_cluster_when_absent() {
    let authority =
        |redis: Value| compile(&json!({"redis": redis, "rules": [rule(json!({}))]})).map(|c| c.redis.and_then(|r| r.authority));
    // Istio's name for a cluster holds `|`, which an h2 server refuses in `:authority`.
    let istio = "outbound|7379||sluice-gateway.sluice.svc.cluster.local";
    assert_eq!(authority(json!({"cluster": istio})), Ok(Some("sluice-gateway.sluice.svc.cluster.local".into())));
    assert_eq!(authority(json!({"cluster": "sluice_gateway"})), Ok(Some("sluice_gateway".into())));
    assert_eq!(authority(json!({"cluster": istio, "authority": "gw.local:7379"})), Ok(Some("gw.local:7379".into())));
    for good in ["10.0.0.7:80", "[2001:db8::7]:7379", "[::1]", "gw-1.example", "a%2Db"] {
        assert_eq!(authority(json!({"cluster": "gw", "authority": good})), Ok(Some(good.into())));
    }
    // A Redis callout sends none, whatever its cluster is called.
    assert_eq!(authority(json!({"cluster": "outbound|6379||redis", "transport": "redis_callout"})), Ok(None));
    assert_eq!(authority(json!({"cluster": "a/b", "transport": "redis_callout"})), Ok(None));

    let top = |redis: Value| json!({"redis": redis, "rules": [rule(json!({}))]});
    for bad in ["gw|7379", "gw/x", "user@gw", "gw:", "gw:http", "gw:70000", "[::1", "[gw]", "::1"] {
        assert_one(
            top(json!({"cluster": "gw", "authority": bad})),
            "redis.authority",
            &format!("{bad:?}: invalid authority; expected host[:port]"),
        );
    }
    assert_one(top(json!({"cluster": "gw", "authority": "gw local"})), "redis.authority", "no spaces or control characters");
    // A cluster name that is no authority, and no Istio name either, needs one set.
    assert_one(top(json!({"cluster": "gw|x"})), "redis.authority", "\"gw|x\": invalid authority; expected host[:port]");
    assert_one(top(json!({"cluster": "inbound|7379||"})), "redis.authority", "set redis.authority");
}

/// A config with many independent mistakes reports every one of them, in one pass.
#[test]
fn all_errors_are_reported_at_once() {
    let v = json!({
        "namespace": "bad ns",
        "rate_limit_headers": "draft9",
        "response": {"status": 99},
        "rules": [
            {"name": "ok", "limit": "10/s"},
            {"name": "a", "limit": "100/fortnight", "strategy": "gcra"},
            {"name": "ok", "limit": "5/m", "identifier": "ip"},
            {"limits": ["1/s", "0/0"], "cost": 0, "backend": "redis"},
            {"name": "d", "limit": "1/s", "match": {"path": "nope", "methods": ["GTE"]}, "exempt": {"cidrs": ["10.0.0.1/8"]}, "extra": 1}
        ]
    });
    let got: Vec<String> = errors(&v).into_iter().map(|(p, _)| p).collect();
    let mut want = vec![
        "namespace",
        "rate_limit_headers",
        "response.status",
        "rules[1].limit",
        "rules[2].name",
        "rules[2].identifier",
        "rules[3].name",
        "rules[3].limits[1]",
        "rules[3].cost",
        "rules[3].backend",
        "rules[4].extra",
        "rules[4].match.path",
        "rules[4].match.methods[0]",
        "rules[4].exempt.cidrs[0]",
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    want.sort();
    assert_eq!(got_sorted, want);
    let text = compile(&v).unwrap_err().to_string();
    assert_eq!(text.lines().count(), want.len(), "one error per line:\n{text}");
}

#[test]
fn good_config_compiles_to_the_expected_structure() {
    let v = json!({
        "namespace": "shop",
        "rate_limit_headers": "both",
        "response": {"status": 503, "headers": {"X-Reason": "throttled"}, "body": "slow down", "grpc_status": 14},
        "client_ip": {"xff_trusted_hops": 2},
        "local": {"max_clients": 500},
        "redis": {"cluster": "sluice_gateway", "token": "s3cret", "timeout_ms": 25},
        "rules": [
            {
                "name": "api",
                "match": {"path": ["/api/**", "/v*/items"], "methods": ["get", "POST", "GET", "PROPFIND"], "headers": {"X-Tenant": "acme"}, "routes": ["r1"]},
                "limits": ["10/s", "1000/hour"],
                "strategy": {"type": "token_bucket", "burst": 150},
                "identifier": {"header": "X-Api-Key", "fallback": "skip"},
                "cost": {"header": "x-cost", "max": 100},
                "exempt": {"cidrs": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.0.0.0/8"], "headers": {"x-internal": "yes"}},
                "backend": "redis",
                "on_error": {"fallback": {"share": 0.5}},
                "shadow": true
            },
            {
                "name": "login",
                "limit": "5 per 2 mins",
                "strategy": "gcra",
                "identifier": {"parts": [{"query": "user"}, "client_ip", {"cookie": "sid"}], "fallback": "global"}
            },
            {"name": "open", "limit": "0/0"}
        ]
    });
    let c = compile(&v).unwrap();
    assert_eq!(c.namespace, "shop");
    assert_eq!(c.rate_limit_headers, HeaderMode::Both);
    assert_eq!(
        c.response,
        ResponseSpec {
            status: 503,
            headers: vec![("x-reason".into(), "throttled".into())],
            body: Some("slow down".into()),
            content_type: Some("text/plain".into()),
            grpc_status: 14,
        }
    );
    assert_eq!(c.client_ip.xff_trusted_hops, 2);
    assert_eq!(c.local.max_clients, 500);
    assert_eq!(
        c.redis,
        Some(RedisSpec {
            cluster: "sluice_gateway".into(),
            transport: Transport::Http,
            token: Some("s3cret".into()),
            authority: Some("sluice_gateway".into()),
            timeout_ms: 25,
            breaker: Default::default(),
            deny_cache: true
        })
    );
    let api = &c.rules[0];
    assert_eq!(api.matcher.paths.iter().map(|g| g.source.as_str()).collect::<Vec<_>>(), ["/api/**", "/v*/items"]);
    assert_eq!(api.matcher.methods, ["GET", "POST", "PROPFIND"]);
    assert_eq!(api.matcher.headers, [("x-tenant".to_string(), "acme".to_string())]);
    assert_eq!(api.matcher.routes, ["r1"]);
    assert_eq!(api.limits.rates(), [Rate { limit: 10, period_ms: 1000 }, Rate { limit: 1000, period_ms: 60 * MIN }]);
    assert_eq!(api.strategy, Strategy::TokenBucket { burst: Some(150) });
    assert_eq!(api.identifier, Identifier { parts: vec![IdentPart::Header("x-api-key".into())], fallback: IdentFallback::Skip });
    assert_eq!(api.cost, Cost::Header { name: "x-cost".into(), default: 1, min: 1, max: 100 });
    let cidrs: Vec<String> = api.exempt.cidrs.iter().map(|n| n.to_string()).collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    assert_eq!(api.exempt.headers, [("x-internal".to_string(), "yes".to_string())]);
    assert_eq!(api.backend, Backend::Redis);
    assert_eq!(api.on_error, OnError::Fallback { share: 0.5 });
    assert!(api.shadow);

    let login = &c.rules[1];
    assert_eq!(login.limits.rates(), [Rate { limit: 5, period_ms: 2 * MIN }]);
    assert_eq!(login.strategy, Strategy::Gcra { burst: None });
    assert_eq!(
        login.identifier,
        Identifier {
            parts: vec![IdentPart::Query("user".into()), IdentPart::ClientIp, IdentPart::Cookie("sid".into())],
            fallback: IdentFallback::Global,
        }
    );
    assert_eq!(c.rules[2].limits, crate::rate::Limits::Unlimited);
}

#[test]
fn strategy_defaults_are_deterministic() {
    let s = |strategy: Value, limits: Value| {
        let c = compile(&with_rules(vec![rule(json!({"limit": null, "limits": limits, "strategy": strategy}))])).unwrap();
        c.rules[0].strategy.clone()
    };
    assert_eq!(s(json!("sliding_window_log"), json!(["100/min"])), Strategy::SlidingWindowLog { max_entries: 100 });
    assert_eq!(s(json!("sliding_window_log"), json!(["10/s", "5000/h"])), Strategy::SlidingWindowLog { max_entries: 1024 });
    assert_eq!(s(json!("sliding_window_log"), json!(["0/0"])), Strategy::SlidingWindowLog { max_entries: 1 });
    assert_eq!(s(json!("token_bucket_debt"), json!(["10/s", "5000/h"])), Strategy::TokenBucketDebt { burst: None, max_debt: 10 });
    assert_eq!(
        s(json!({"type": "token_bucket_debt", "burst": 20, "max_debt": 0}), json!(["10/s"])),
        Strategy::TokenBucketDebt { burst: Some(20), max_debt: 0 }
    );
    assert_eq!(s(json!("leaky_bucket_queue"), json!(["10/s"])), Strategy::LeakyBucketQueue { burst: None, max_delay_ms: 1000 });
    assert_eq!(
        s(json!({"type": "leaky_bucket_queue", "max_delay": "250ms", "burst": 3}), json!(["10/s"])),
        Strategy::LeakyBucketQueue { burst: Some(3), max_delay_ms: 250 }
    );
    assert_eq!(
        s(json!({"type": "leaky_bucket_queue", "max_delay_ms": 0}), json!(["10/s"])),
        Strategy::LeakyBucketQueue { burst: None, max_delay_ms: 0 }
    );
    assert_eq!(s(json!({"type": "fixed_window"}), json!(["10/s"])), Strategy::FixedWindow);
    assert_eq!(s(json!("leaky_bucket"), json!(["10/s"])), Strategy::LeakyBucket { burst: None });
    assert_eq!(s(Value::Null, json!(["10/s"])), Strategy::SlidingWindowCounter);
}

#[test]
fn nulls_are_absent_and_explicit_defaults_equal_omitted_ones() {
    let minimal = compile(&json!({"rules": [{"name": "api", "limit": "100/min"}]})).unwrap();
    let explicit = compile(&json!({
        "namespace": "sluice",
        "rate_limit_headers": "draft10",
        "response": {"status": 429},
        "client_ip": {"xff_trusted_hops": 0, "ipv6_prefix": 64},
        "local": {"max_clients": 10000},
        "redis": null,
        "identity_secret": null,
        "rules": [{
            "name": "api", "limit": "100/min", "match": {}, "strategy": "sliding_window_counter",
            "identifier": "client_ip", "cost": 1, "exempt": {}, "backend": "local", "shadow": false,
            "advertise": true, "on_error": null
        }]
    }))
    .unwrap();
    assert_eq!(minimal, explicit);
}

#[test]
fn normalized_output_of_defaults() {
    let c = compile(&json!({"rules": [{"name": "api", "limit": "100/min"}]})).unwrap();
    let got = serde_json::to_value(&c).unwrap();
    let want = json!({
        "namespace": "sluice",
        "rate_limit_headers": "draft10",
        "response": {"status": 429, "headers": {}, "body": null, "content_type": null, "grpc_status": 8},
        "client_ip": {"xff_trusted_hops": 0, "ipv6_prefix": 64},
        "local": {"max_clients": 10000},
        "redis": null,
        "identity_secret": null,
        "rules": [{
            "name": "api",
            "match": {"path": [], "methods": [], "headers": {}, "routes": []},
            "limits": [{"limit": 100, "period_ms": 60000}],
            "strategy": {"type": "sliding_window_counter"},
            "identifier": {"parts": ["client_ip"], "fallback": "client_ip"},
            "cost": 1,
            "exempt": {"cidrs": [], "headers": {}},
            "backend": "local",
            "on_error": "allow",
            "shadow": false,
            "advertise": true,
            "per": "request",
            "over_limit": null
        }]
    });
    assert_eq!(got, want);
    // A message rule sends no rate limit fields: it has no advertise, as a request rule has no
    // over_limit.
    let c = compile(&json!({"rules": [{"name": "chat", "limit": "5/s", "per": "message"}]})).unwrap();
    let rule = &serde_json::to_value(&c).unwrap()["rules"][0];
    assert_eq!((&rule["advertise"], &rule["over_limit"]["notify"]), (&Value::Null, &json!(false)), "{rule}");
}

#[test]
fn normalized_output_of_params_and_secrets() {
    let c = compile(&json!({
        "redis": {"cluster": "gw", "token": "s3cret", "transport": "redis_callout"},
        "identity_secret": "a-long-identity-s3cret",
        "rules": [{
            "name": "q", "limit": "2/5s", "backend": "redis", "on_error": "fallback",
            "strategy": {"type": "leaky_bucket_queue", "max_delay": "2s"},
            "identifier": [{"header": "X-User"}, {"query": "k"}],
            "cost": {"header": "x-cost"},
            "exempt": {"cidrs": ["::1"]},
            "match": {"path": "/api/"}
        }]
    }))
    .unwrap();
    let got = serde_json::to_value(&c).unwrap();
    assert_eq!(
        got["redis"],
        json!({"cluster": "gw", "transport": "redis_callout", "token": "<redacted>", "authority": null, "timeout_ms": 20,
        "breaker": {"failure_threshold": 5, "open_ms": 5000, "half_open_probes": 1, "success_threshold": 2},
        "deny_cache": true})
    );
    let r = &got["rules"][0];
    assert_eq!(r["strategy"], json!({"type": "leaky_bucket_queue", "burst": null, "max_delay_ms": 2000}));
    assert_eq!(r["limits"], json!([{"limit": 2, "period_ms": 5000}]));
    assert_eq!(r["identifier"], json!({"parts": [{"header": "x-user"}, {"query": "k"}], "fallback": "client_ip"}));
    assert_eq!(r["cost"], json!({"header": "x-cost", "default": 1, "min": 1, "max": 1000}));
    assert_eq!(got["identity_secret"], "<redacted>");
    assert_eq!(r["exempt"]["cidrs"], json!(["::1/128"]));
    assert_eq!(r["match"]["path"], json!(["/api/"]));
    assert_eq!(r["on_error"], json!({"fallback": {"share": 1.0}}));
    assert!(!got.to_string().contains("s3cret"));
}

#[test]
fn compiled_globs_match() {
    let c = compile(&with_rules(vec![rule(json!({"match": {"path": "/api/**"}}))])).unwrap();
    let g = &c.rules[0].matcher.paths[0];
    assert!(g.matches("/api") && g.matches("/api/") && g.matches("/api/x/y") && !g.matches("/apix"));
    // Nothing from the first `?` or `#` is matched, after any character.
    assert!(g.matches("/api/é?x=/other") && g.matches("/api#/x") && !g.matches("/ap?i/x") && !g.matches("/é#/api"));
    let exact = compile(&with_rules(vec![rule(json!({"match": {"path": "/a/*/c"}}))])).unwrap();
    let g = &exact.rules[0].matcher.paths[0];
    assert!(g.matches("/a/b/c?d/e") && !g.matches("/a/b?/c") && g.matches("/a/ü/c#x"));
}

#[test]
fn compile_json_accepts_envoy_bytes() {
    let c = compile_json(br#"  {"rules":[{"name":"a","limit":"5/m"}]}  "#).unwrap();
    assert_eq!(c.rules[0].limits.rates(), [Rate { limit: 5, period_ms: MIN }]);
}

#[test]
fn long_offending_text_is_truncated() {
    let long = format!("{}/s", "9".repeat(300));
    let errs = errors(&with_rules(vec![rule(json!({ "limit": long }))]));
    assert!(errs[0].1.len() < 300, "{}", errs[0].1);
    assert!(errs[0].1.contains('…'));
}

#[test]
fn did_you_mean_distance() {
    assert_eq!(compile::distance("limt", "limit"), 1);
    assert_eq!(compile::distance("GTE", "GET"), 1);
    assert_eq!(compile::distance("PUSH", "PUT"), 2);
}

#[test]
fn breaker_settings_are_bounded() {
    let err = compile(
        &json!({"redis": {"cluster": "gw", "breaker": {"open_ms": 0, "probes": 2}}, "rules": [{"name": "a", "limit": "1/s"}]}),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("redis.breaker.open_ms"), "{err}");
    assert!(err.contains("redis.breaker.probes"), "{err}");
    let c = compile(&json!({"redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 100}}, "rules": [{"name": "a", "limit": "1/s"}]})).unwrap();
    let b = c.redis.unwrap().breaker;
    assert_eq!((b.failure_threshold, b.open_ms, b.half_open_probes, b.success_threshold), (2, 100, 1, 2));
}

#[test]
fn a_cost_can_never_be_zero() {
    let cost = |c: Value| errors(&with_rules(vec![rule(json!({ "cost": c }))]));
    assert_eq!(cost(json!(0))[0].0, "rules[0].cost");
    assert!(cost(json!({"header": "x-cost", "default": 0}))[0]
        .1
        .contains("rules[0].cost.default: 0: expected an integer from 1"));
    assert!(cost(json!({"header": "x-cost", "min": 0}))[0].1.contains("rules[0].cost.min: 0: expected an integer from 1"));
    assert_one(
        with_rules(vec![rule(json!({"cost": {"header": "x-cost", "min": 5, "max": 2}}))]),
        "rules[0].cost.min",
        "min 5 is greater than max 2",
    );
    assert_one(
        with_rules(vec![rule(json!({"cost": {"header": "x-cost", "min": 5, "default": 2}}))]),
        "rules[0].cost.default",
        "below min 5",
    );
    let c = compile(&with_rules(vec![rule(json!({"cost": {"header": "x-cost", "default": 3, "min": 2, "max": 10}}))])).unwrap();
    let of = |v: &str| c.rules[0].cost.of(Some(v.as_bytes()));
    // Absent, not a plain decimal integer, or below min: the default.
    assert_eq!(c.rules[0].cost.of(None), 3);
    for v in ["0", "00", "+0", " 0", "1", "-4", "0x5", "5.0", "", "٣"] {
        assert_eq!(of(v), 3, "{v:?}");
    }
    assert_eq!(of("2"), 2);
    assert_eq!(of("007"), 7);
    assert_eq!(of("11"), 10, "clamped to max");
    assert_eq!(of("99999999999999999999999999"), 10, "an overflow is above max");
}

#[test]
fn sizes_are_bounded_where_they_are_accepted() {
    let many = |n: usize, f: &dyn Fn(usize) -> Value| Value::Array((0..n).map(f).collect());
    let rules = many(129, &|i| json!({"name": format!("r{i}"), "limit": "1/s"}));
    assert_one(json!({ "rules": rules }), "rules", "too many entries (129); expected at most 128");
    let paths = many(65, &|i| json!(format!("/p{i}")));
    assert_one(with_rules(vec![rule(json!({"match": {"path": paths}}))]), "rules[0].match.path", "at most 64");
    let cidrs = many(257, &|i| json!(format!("10.{}.{}.0/24", i / 256, i % 256)));
    assert_one(with_rules(vec![rule(json!({"exempt": {"cidrs": cidrs}}))]), "rules[0].exempt.cidrs", "at most 256");
    let routes = many(65, &|i| json!(format!("r{i}")));
    assert_one(with_rules(vec![rule(json!({"match": {"routes": routes}}))]), "rules[0].match.routes", "at most 64");
    let methods = many(17, &|i| json!(format!("M{i}X")));
    assert_one(with_rules(vec![rule(json!({"match": {"methods": methods}}))]), "rules[0].match.methods", "at most 16");
    let headers: serde_json::Map<String, Value> = (0..33).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    assert_one(with_rules(vec![rule(json!({"match": {"headers": headers}}))]), "rules[0].match.headers", "at most 32");
}

#[test]
fn a_sliding_log_keeps_what_one_value_holds_and_one_redis_call_rewrites_quickly() {
    let log = |n: u64, extra: Value| {
        let mut r = rule(json!({"limit": "10000/min", "strategy": {"type": "sliding_window_log", "max_entries": n}}));
        if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
            r.extend(extra);
        }
        json!({"redis": {"cluster": "gw"}, "rules": [r]})
    };
    for extra in [json!({}), json!({"backend": "redis"}), json!({"backend": "redis", "on_error": "fallback"})] {
        assert_one(log(4096, extra.clone()), "rules[0].strategy.max_entries", "4096: expected an integer from 1 to 4095");
        assert!(compile(&log(4095, extra)).is_ok());
    }
}

#[test]
fn redis_rules_keep_their_numbers_exact_in_lua() {
    let redis = |r: Value| json!({"redis": {"cluster": "gw"}, "rules": [r]});
    // 10^12 a day with the default cost max: 2 x (10^12 + 1000) x 8.64e7 is far above 2^53.
    let errs = errors(&redis(rule(json!({"limit": "1000000000000/day", "backend": "redis"}))));
    assert_eq!(errs[0].0, "rules[0].limit");
    assert!(errs[0].1.contains("\"1000000000000/day\"") && errs[0].1.contains("2^53"), "{}", errs[0].1);
    let errs = errors(&redis(rule(
        json!({"limit": null, "limits": ["10/s", "100000000000/hour"], "strategy": "token_bucket", "backend": "redis"}),
    )));
    assert_eq!(errs.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["rules[0].limits[1]"]);
    // The same rule decided locally is exact (the Rust side works in 128 bits).
    assert!(compile(&with_rules(vec![rule(json!({"limit": "1000000000000/day"}))])).is_ok());
    assert!(compile(&redis(rule(json!({"limit": "1000000/day", "backend": "redis"})))).is_ok());
    // Named beside another error of the rule, not after it is fixed.
    let errs = errors(&redis(rule(json!({"name": "bad name", "limit": "1000000000000/day", "backend": "redis"}))));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["rules[0].name", "rules[0].limit"], "{errs:#?}");
}

/// A fixed cost (or a header cost's least) no limit admits at once would deny every request
/// forever: refused.
#[test]
fn a_fixed_cost_above_a_limits_capacity_is_refused() {
    assert_one(
        with_rules(vec![rule(json!({"limit": null, "limits": ["100/min", "10/s"], "cost": 20}))]),
        "rules[0].cost",
        "20: a cost of 20 is more than the limit 10/s admits at once (10): no request would ever be admitted",
    );
    // A bucket's burst is its capacity; a header cost may exceed it (lint warns).
    assert!(compile(&with_rules(vec![rule(
        json!({"limit": "10/s", "strategy": {"type": "token_bucket", "burst": 30}, "cost": 20})
    )]))
    .is_ok());
    assert!(compile(&with_rules(vec![rule(json!({"limit": "10/s", "cost": {"header": "x-cost", "max": 1000}}))])).is_ok());
    // A bucket that may go into debt admits its burst and its debt at once (max_debt defaults to
    // the limit): 20 of 10/s, not 21.
    let debt = |cost: u64| with_rules(vec![rule(json!({"limit": "10/s", "strategy": "token_bucket_debt", "cost": cost}))]);
    assert!(compile(&debt(20)).is_ok());
    assert_one(debt(21), "rules[0].cost", "21: a cost of 21 is more than the limit 10/s admits at once (20)");
    // A header cost's least is paid by every request (and by default by one without the header).
    assert_one(
        with_rules(vec![rule(json!({"limit": "10/s", "cost": {"header": "x-cost", "min": 20}}))]),
        "rules[0].cost.min",
        "20: a cost of 20 is more than the limit 10/s admits at once (10)",
    );
}

#[test]
fn local_buckets_keep_their_level_in_64_bits() {
    // 5 x 10^10 a month: the level (units x period_ms) reaches 1.3e20, past what a local
    // bucket's state holds; the same rate counted by a window keeps counts, which fit.
    let bucket = |strategy: &str| rule(json!({"limit": "50000000000/30d", "strategy": strategy}));
    for strategy in ["token_bucket", "token_bucket_debt", "leaky_bucket", "leaky_bucket_queue", "gcra"] {
        let errs = errors(&with_rules(vec![bucket(strategy)]));
        assert_eq!(errs.len(), 1, "{strategy}: {errs:?}");
        assert_eq!(errs[0].0, "rules[0].limit", "{strategy}");
        assert!(errs[0].1.contains("\"50000000000/30d\"") && errs[0].1.contains("2^63"), "{}", errs[0].1);
    }
    for strategy in ["fixed_window", "sliding_window_counter"] {
        assert!(compile(&with_rules(vec![bucket(strategy)])).is_ok(), "{strategy}");
    }
    // A debt counts towards the level.
    let debt = json!({"limit": "3000000000/30d", "strategy": {"type": "token_bucket_debt", "max_debt": 1000000000}});
    assert_eq!(errors(&with_rules(vec![rule(debt)]))[0].0, "rules[0].limit");
    assert!(compile(&with_rules(vec![rule(json!({"limit": "3000000000/30d", "strategy": "token_bucket"}))])).is_ok());
}

#[test]
fn a_name_taken_by_a_limit_names_the_rule_by_its_place_in_the_file() {
    let errs = errors(&with_rules(vec![
        rule(json!({"name": "broken", "limit": "5/fortnight"})),
        rule(json!({"name": "a", "limit": null, "limits": ["1/s", "10/min"]})),
        rule(json!({"name": "a.0"})),
    ]));
    let taken = errs.iter().find(|e| e.0 == "rules[2].name").unwrap_or_else(|| panic!("{errs:?}"));
    assert!(taken.1.contains("limit 0 of rules[1]"), "{}", taken.1);
    assert!(errs.iter().any(|e| e.0 == "rules[0].limit"), "every error at once: {errs:?}");
}

#[test]
fn secrets_are_never_echoed_in_errors() {
    // Errors reach Envoy's log: a wrong token or secret is named by its path, never shown.
    let gw = |token: Value| json!({"redis": {"cluster": "gw", "token": token}, "rules": [rule(json!({}))]});
    for (config, path, secret) in [
        (gw(json!("Bearer s3cr3t")), "redis.token", "s3cr3t"),
        (gw(json!("s3cr3t\n")), "redis.token", "s3cr3t"),
        (gw(json!(987654321)), "redis.token", "987654321"),
        (json!({"identity_secret": 1234567890123456u64, "rules": [rule(json!({}))]}), "identity_secret", "1234567890123456"),
    ] {
        let errs = errors(&config);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, path);
        assert!(!errs[0].1.contains(secret), "{}", errs[0].1);
    }
}

#[test]
fn client_ip_and_identity_secret() {
    let c = compile(&json!({"client_ip": {"ipv6_prefix": 48}, "rules": [rule(json!({}))]})).unwrap();
    assert_eq!(c.client_ip.ipv6_prefix, 48);
    assert_one(json!({"client_ip": {"ipv6_prefix": 0}, "rules": [rule(json!({}))]}), "client_ip.ipv6_prefix", "from 1 to 128");
    assert_one(json!({"client_ip": {"ipv6_prefix": 129}, "rules": [rule(json!({}))]}), "client_ip.ipv6_prefix", "from 1 to 128");
    let short = errors(&json!({"identity_secret": "short", "rules": [rule(json!({}))]}));
    assert_eq!(short[0].0, "identity_secret");
    assert!(short[0].1.contains("16 to 256 printable"), "{}", short[0].1);
    assert!(!short[0].1.contains("short"), "a secret is never echoed: {}", short[0].1);
    let c = compile(&json!({"identity_secret": "0123456789abcdef", "rules": [rule(json!({}))]})).unwrap();
    assert_eq!(c.identity_secret.as_deref(), Some("0123456789abcdef"));
}
