//! `filter-config/schema.json` against the filter's compiler: every config in `filter-config/`
//! (and the CLI's good fixtures) must pass both; a table of configs must be judged the same by
//! both, except for the checks only the compiler can make.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(root().join("filter-config/schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).unwrap()
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::meta::validate(&s).unwrap();
}

/// Every object in the schema is closed and every property is described (an `if` or a `not`
/// is a condition on some fields of an object, closed where it is described).
#[test]
fn schema_objects_are_closed_and_described() {
    fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
        match node {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    let condition = path.ends_with("/if") || path.ends_with("/not");
                    if m.get("additionalProperties") != Some(&Value::Bool(false)) && !condition {
                        problems.push(format!("{path}: additionalProperties is not false"));
                    }
                    for (k, v) in props {
                        if v.get("description").is_none() {
                            problems.push(format!("{path}.{k}: no description"));
                        }
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{path}/{k}"), problems);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), problems);
                }
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    walk(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_shipped_config_passes_schema_and_compiler() {
    let v = validator();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("filter-config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "schema.json"))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    files.push(fixtures.join("good.yaml"));
    files.push(fixtures.join("good.json"));
    assert!(files.len() >= 4, "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("filter-config/local.yaml")));
    for f in files {
        let doc = load(&f);
        let errs = schema_errors(&v, &doc);
        assert!(errs.is_empty(), "{}: schema: {errs:#?}", f.display());
        if let Err(e) = sluice::config::compile(&doc) {
            panic!("{}: compiler:\n{e}", f.display());
        }
    }
}

fn with_rule(extra: Value) -> Value {
    let mut r = json!({"name": "api", "limit": "100/min"});
    for (k, val) in extra.as_object().unwrap() {
        if val.is_null() {
            r.as_object_mut().unwrap().remove(k);
        } else {
            r[k] = val.clone();
        }
    }
    json!({ "rules": [r] })
}

/// Configs both judges must agree on.
#[test]
fn schema_and_compiler_agree() {
    let redis = |rule: Value| {
        let mut c = with_rule(rule);
        c["redis"] = json!({"cluster": "gw"});
        c
    };
    #[rustfmt::skip]
    let cases: Vec<(Value, bool)> = vec![
        (with_rule(json!({})), true),
        (with_rule(json!({"limit": "20 per 2 mins"})), true),
        (with_rule(json!({"limit": "2 persecond"})), true),
        (with_rule(json!({"limit": "1000/500MS"})), true),
        (with_rule(json!({"limit": "0/0"})), true),
        (with_rule(json!({"limit": null, "limits": ["10/s", "1000/hour"]})), true),
        (with_rule(json!({"strategy": {"type": "leaky_bucket_queue", "max_delay": "250ms", "burst": 3}})), true),
        (with_rule(json!({"strategy": {"type": "token_bucket_debt", "max_debt": 0}})), true),
        (with_rule(json!({"strategy": "sliding_window_log"})), true),
        (with_rule(json!({"identifier": [{"header": "x-a"}, "client_ip"]})), true),
        (with_rule(json!({"identifier": {"parts": [{"cookie": "sid"}], "fallback": "skip"}})), true),
        (with_rule(json!({"identifier": {"query": "key", "fallback": "global"}})), true),
        (with_rule(json!({"cost": {"header": "x-cost", "default": 2, "min": 2, "max": 5}})), true),
        (json!({"identity_secret": "0123456789abcdef", "client_ip": {"ipv6_prefix": 56}, "rules": [{"name": "a", "limit": "1/s"}]}), true),
        (with_rule(json!({"match": {"path": ["/a/**", "/b/*.json"], "methods": ["get"], "headers": {":authority": "x"}, "routes": ["r"]}})), true),
        (with_rule(json!({"exempt": {"cidrs": ["192.0.2.7", "10.0.0.0/8"], "headers": {"x-internal": "yes"}}})), true),
        (redis(json!({"backend": "redis", "on_error": {"fallback": {"share": 0.5}}})), true),
        (redis(json!({"backend": "redis", "on_error": "deny"})), true),
        (json!({"response": {"status": 503, "body": "slow", "content_type": "text/html"}, "rules": [{"name": "a", "limit": "1/s"}]}), true),

        (json!({}), false),
        (json!({"rules": []}), false),
        (json!({"rules": [{"name": "a", "limit": "1/s"}], "extra": 1}), false),
        (with_rule(json!({"limt": "1/s"})), false),
        (with_rule(json!({"name": "has space"})), false),
        (with_rule(json!({"name": null})), false),
        (with_rule(json!({"limit": null})), false),
        (with_rule(json!({"limits": ["1/s"]})), false),
        (with_rule(json!({"limit": "100/fortnight"})), false),
        (with_rule(json!({"limit": "0/m"})), false),
        (with_rule(json!({"limit": "5/0"})), false),
        (with_rule(json!({"limit": "5/10"})), false),
        (with_rule(json!({"limit": "1.5/s"})), false),
        (with_rule(json!({"limit": 100})), false),
        (with_rule(json!({"limit": null, "limits": []})), false),
        (with_rule(json!({"limit": null, "limits": vec!["1/s"; 9]})), false),
        (with_rule(json!({"strategy": "token_buckt"})), false),
        (with_rule(json!({"strategy": {"type": "fixed_window", "burst": 2}})), false),
        (with_rule(json!({"strategy": {"type": "gcra", "burst": 0}})), false),
        (with_rule(json!({"strategy": {"burst": 2}})), false),
        (with_rule(json!({"strategy": {"type": "leaky_bucket_queue", "max_delay": "1s", "max_delay_ms": 5}})), false),
        (with_rule(json!({"strategy": {"type": "leaky_bucket_queue", "max_delay": "soon"}})), false),
        (with_rule(json!({"identifier": "ip"})), false),
        (with_rule(json!({"identifier": {"header": "a", "cookie": "b"}})), false),
        (with_rule(json!({"identifier": [{"header": "x-a", "fallback": "skip"}]})), false),
        (with_rule(json!({"identifier": {"header": "bad name"}})), false),
        (with_rule(json!({"cost": 0})), false),
        (with_rule(json!({"cost": {"header": "x-cost", "default": 0, "max": 5}})), false),
        (with_rule(json!({"cost": {"header": "x-cost", "min": 0}})), false),
        (json!({"identity_secret": "short", "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"client_ip": {"ipv6_prefix": 0}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (with_rule(json!({"match": {"methods": vec!["GET"; 17]}})), false),
        (with_rule(json!({"cost": {"default": 1}})), false),
        (with_rule(json!({"exempt": {"cidrs": []}})), false),
        (with_rule(json!({"backend": "remote"})), false),
        (with_rule(json!({"shadow": "yes"})), false),
        (with_rule(json!({"match": {"path": "api/**"}})), false),
        (with_rule(json!({"match": {"methods": []}})), false),
        (with_rule(json!({"match": {"pathz": "/x"}})), false),
        (redis(json!({"backend": "redis", "on_error": {"fallback": {"share": 1.5}}})), false),
        (redis(json!({"backend": "redis", "on_error": "retry"})), false),
        (json!({"rate_limit_headers": "draft9", "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"response": {"status": 200}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"response": {"content_type": "text/html"}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"client_ip": {"xff_trusted_hops": 17}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"local": {"max_clients": 0}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"transport": "http"}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "timeout_ms": 0}, "rules": [{"name": "a", "limit": "1/s"}]}), false),

        // The deploy files' fields: the Redis circuit breaker, route names, the Higress transport.
        (json!({"redis": {"cluster": "gw", "breaker": {"failure_threshold": 1, "open_ms": 600000, "half_open_probes": 100, "success_threshold": 100}}, "rules": [{"name": "a", "limit": "1/s"}]}), true),
        (json!({"redis": {"cluster": "outbound|7379||gw.example.internal", "transport": "redis_callout", "authority": "gw.example.internal"}, "rules": [{"name": "a", "limit": "1/s"}]}), true),
        (json!({"redis": {"cluster": "gw", "breaker": {"failure_threshold": 0}}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "breaker": {"open_ms": 600001}}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "breaker": {"half_open_probes": 101}}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "breaker": {"failures": 3}}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "breaker": 5}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw a"}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "authority": "gw|7379"}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "authority": "user@gw"}, "rules": [{"name": "a", "limit": "1/s"}]}), false),
        (json!({"redis": {"cluster": "gw", "authority": "[2001:db8::7]:7379"}, "rules": [{"name": "a", "limit": "1/s"}]}), true),
        (json!({"redis": {"cluster": "gw", "authority": "gw-1.example:80"}, "rules": [{"name": "a", "limit": "1/s"}]}), true),
        (with_rule(json!({"match": {"routes": []}})), false),
        (with_rule(json!({"match": {"routes": "catalog"}})), false),
        (with_rule(json!({"match": {"headers": {"upgrade": 1}}})), false),
        (with_rule(json!({"match": {"headers": {}}})), false),

        // A message's verdict sends no rate limit fields: advertise is for request rules.
        (with_rule(json!({"per": "message", "shadow": true})), true),
        (with_rule(json!({"per": "request", "advertise": false})), true),
        (with_rule(json!({"advertise": true})), true),
        (with_rule(json!({"per": "message", "advertise": false})), false),
        (with_rule(json!({"per": "message", "shadow": true, "advertise": true})), false),
        // over_limit and payload_bytes are about messages; a message's cost reads no header.
        (with_rule(json!({"per": "message", "over_limit": {"notify": true}, "cost": "payload_bytes"})), true),
        (with_rule(json!({"over_limit": {"notify": true}})), false),
        (with_rule(json!({"per": "request", "over_limit": {"close_after": 3}})), false),
        (with_rule(json!({"cost": "payload_bytes"})), false),
        (with_rule(json!({"per": "request", "cost": "payload_bytes"})), false),
        (with_rule(json!({"cost": {"header": "x-cost"}})), true),
        (with_rule(json!({"per": "message", "cost": {"header": "x-cost"}})), false),
        (with_rule(json!({"per": "message", "cost": 3})), true),
        // Globs: whole segments, '**' alone in one, '%' only as an escape.
        (with_rule(json!({"match": {"path": "/a//b"}})), false),
        (with_rule(json!({"match": {"path": "/a/**b"}})), false),
        (with_rule(json!({"match": {"path": "/a/50%"}})), false),
        (with_rule(json!({"match": {"path": "/a/***"}})), false),
        (with_rule(json!({"match": {"path": "/"}})), true),
        (with_rule(json!({"match": {"path": "/caf%C3%A9/*.json"}})), true),
        (with_rule(json!({"match": {"path": "/café/**/x*y*/"}})), true),
    ];
    let v = validator();
    for (doc, want) in cases {
        let by_schema = v.is_valid(&doc);
        let by_compiler = sluice::config::compile(&doc).is_ok();
        assert_eq!(by_schema, want, "schema on {doc}: {:#?}", schema_errors(&v, &doc));
        assert_eq!(by_compiler, want, "compiler on {doc}: {:?}", sluice::config::compile(&doc).err().map(|e| e.to_string()));
    }
}

/// What only the compiler can see: the schema admits these, the compiler must not.
#[test]
fn compiler_only_checks() {
    let v = validator();
    let cases = [
        json!({"rules": [{"name": "a", "limit": "1/s"}, {"name": "a", "limit": "2/s"}]}),
        json!({"rules": [{"name": "a", "limits": ["1/s", "0/0"]}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "backend": "redis"}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "on_error": "deny"}]}),
        json!({"rules": [{"name": "a", "limit": "1/367d"}]}),
        // An escape of no whole UTF-8 character: a pattern cannot tell.
        json!({"rules": [{"name": "a", "limit": "1/s", "match": {"path": "/a/%ff"}}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "match": {"methods": ["GTE"]}}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "exempt": {"cidrs": ["10.0.0.1/8"]}}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "cost": {"header": "x", "default": 9, "max": 5}}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "identifier": ["global", "client_ip"]}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "identifier": {"parts": ["client_ip"], "fallback": "skip"}}]}),
        json!({"rules": [{"name": "a", "limit": "1/s", "strategy": {"type": "leaky_bucket_queue", "max_delay": "2m"}}]}),
        json!({"response": {"headers": {"retry-after": "1"}}, "rules": [{"name": "a", "limit": "1/s"}]}),
        // No authority by itself, and the schema cannot see the default the compiler takes.
        json!({"redis": {"cluster": "gw|x"}, "rules": [{"name": "a", "limit": "1/s"}]}),
        json!({"redis": {"cluster": "gw", "authority": "gw:70000"}, "rules": [{"name": "a", "limit": "1/s"}]}),
    ];
    for doc in cases {
        assert!(v.is_valid(&doc), "schema rejects {doc}: {:#?}", schema_errors(&v, &doc));
        assert!(sluice::config::compile(&doc).is_err(), "compiler accepts {doc}");
    }
}
