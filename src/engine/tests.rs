//! The engine's unit tests: matching, local and remote decisions, the breaker's view of a
//! request, and the verdict.

use super::*;
use crate::identity::tests::Req;
use crate::identity::RequestInfo;
use crate::redis::wire::Reply;
use crate::store::{Meddled, MemStore, SharedStore, StoreError};

fn limiter(config: serde_json::Value) -> Limiter {
    Limiter::new(crate::config::compile(&config).unwrap())
}

const T0: u64 = 1_700_000_040_000_000;

fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Admit { .. } => 200,
        Verdict::Deny { response, .. } => response.status,
    }
}

fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
    let headers = match v {
        Verdict::Admit { headers, .. } => headers,
        Verdict::Deny { response, .. } => &response.headers,
    };
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn only_matching_rules_apply() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "get-api", "match": {"path": "/api/**", "methods": ["GET"]}, "limit": "1/min"},
        {"name": "tenant", "match": {"headers": {"x-tenant": "acme"}}, "limit": "1/min"}
    ]}));
    let s = MemStore::default();
    assert_eq!(status(&l.check(&Req::new("GET", "/api/a?x=1"), &s, T0)), 200);
    assert_eq!(status(&l.check(&Req::new("GET", "/api/b"), &s, T0)), 429);
    assert_eq!(status(&l.check(&Req::new("POST", "/api/b"), &s, T0)), 200, "method does not match");
    assert_eq!(status(&l.check(&Req::new("GET", "/other"), &s, T0)), 200, "path does not match");
    let acme = Req::new("POST", "/x").header("x-tenant", "acme");
    assert_eq!(status(&l.check(&acme, &s, T0)), 200);
    assert_eq!(status(&l.check(&acme, &s, T0)), 429);
}

/// A request view that counts how often the client address is asked for.
struct CountingSource<'a>(&'a Req, std::cell::Cell<u32>);

impl RequestInfo for CountingSource<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.header(name)
    }
    fn source_address(&self) -> Option<String> {
        self.1.set(self.1.get() + 1);
        self.0.source_address()
    }
    fn route_name(&self) -> Option<String> {
        self.0.route_name()
    }
}

/// Counts header reads, by name.
struct CountingHeaders<'a>(&'a Req, std::cell::RefCell<Vec<String>>);

impl RequestInfo for CountingHeaders<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.1.borrow_mut().push(name.to_string());
        self.0.header(name)
    }
    fn source_address(&self) -> Option<String> {
        self.0.source_address()
    }
    fn route_name(&self) -> Option<String> {
        self.0.route_name()
    }
}

#[test]
fn the_path_is_asked_for_once_however_many_rules_read_it() {
    // Globs, a query identity and `:path` named as a header all read one path
    // (`RequestInfo::path`: the host's view keeps no copy of it).
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "match": {"path": "/api/**"}, "limit": "5/min", "identifier": {"parts": [{"query": "user"}]}},
        {"name": "b", "match": {"path": "/api/x", "headers": {":path": "/api/x?user=u1"}}, "limit": "5/min"},
        {"name": "c", "limit": "5/min", "identifier": {"parts": [{"header": ":path"}]}}
    ]}));
    let req = Req::new("GET", "/api/x?user=u1");
    let counting = CountingHeaders(&req, Default::default());
    assert_eq!(status(&l.check(&counting, &MemStore::default(), T0)), 200);
    assert_eq!(l.check(&counting, &MemStore::default(), T0).outcomes().len(), 3, "all three apply");
    let paths = counting.1.borrow().iter().filter(|n| *n == ":path").count();
    assert_eq!(paths, 2, "once per request: {:?}", counting.1.borrow());
}

#[test]
fn a_config_without_a_rule_leaves_that_rules_count_in_a_shared_slot() {
    // Two configs on one shared data (a connection keeps the config it was opened with; two
    // filter configs may share a namespace): the one without login must not wipe login's count.
    let with = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"},
        {"name": "login", "limit": "2/min", "match": {"path": "/login"}}]}));
    let without = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"}]}));
    let mem = MemStore::default();
    for _ in 0..2 {
        assert_eq!(status(&with.check(&Req::new("POST", "/login"), &mem, T0)), 200);
    }
    assert_eq!(status(&without.check(&Req::new("GET", "/"), &mem, T0 + 1)), 200);
    assert_eq!(status(&with.check(&Req::new("POST", "/login"), &mem, T0 + 2)), 429, "login's count survived");
}

#[test]
fn adding_or_removing_a_rule_leaves_the_other_rules_counts() {
    let config = |rules: serde_json::Value| limiter(serde_json::json!({ "rules": rules }));
    let b = serde_json::json!({"name": "b", "limit": "2/min"});
    let alone = config(serde_json::json!([b.clone()]));
    let behind = config(serde_json::json!([{"name": "a", "limit": "100/min"}, b]));
    let mem = MemStore::default();
    for _ in 0..2 {
        assert_eq!(status(&alone.check(&Req::new("GET", "/"), &mem, T0)), 200);
    }
    // a added in front of b: the table stays where it was, and so does b's count.
    assert_eq!(behind.table_prefix(1), alone.table_prefix(0));
    assert_eq!(status(&behind.check(&Req::new("GET", "/"), &mem, T0)), 429);
    // And removed again.
    assert_eq!(status(&alone.check(&Req::new("GET", "/"), &mem, T0)), 429);
}

#[test]
fn rules_with_the_same_identifier_resolve_the_identity_once() {
    let by = |name: &str| serde_json::json!({"parts": [{"header": name}], "fallback": "skip"});
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "5/min", "identifier": by("x-key")},
        {"name": "b", "limit": "9/min", "identifier": by("x-key"), "match": {"path": "/**"}},
        {"name": "c", "limit": "5/min", "identifier": by("x-key"), "shadow": true},
        {"name": "d", "limit": "5/min", "identifier": by("x-other")},
        {"name": "e", "limit": "5/min", "identifier": by("x-other")}
    ]}));
    let req = Req::new("GET", "/").header("x-key", "k1");
    let counting = CountingHeaders(&req, Default::default());
    let v = l.check(&counting, &MemStore::default(), T0);
    assert_eq!(status(&v), 200);
    // a resolves, b takes a's identity; the shadow rule c resolves its own (its text is
    // logged); d finds x-other absent (skip), and e knows it is without reading it again.
    assert_eq!(*counting.1.borrow(), [":path", "x-key", "x-key", "x-other"]);
    let identities: Vec<(usize, u64, &str)> =
        v.outcomes().iter().map(|o| (o.rule, o.identity.hash, o.identity.text.as_str())).collect();
    assert_eq!(identities.len(), 3, "d and e do not apply: {identities:?}");
    assert!(identities.iter().all(|(_, h, _)| *h == identities[0].1), "{identities:?}");
    assert_eq!(identities[2], (2, identities[0].1, "header:x-key=k1"));
}

#[test]
fn the_client_address_is_read_only_when_a_rule_needs_it() {
    let reads = |rules: serde_json::Value, req: &Req| {
        let l = limiter(serde_json::json!({ "rules": rules }));
        let counting = CountingSource(req, std::cell::Cell::new(0));
        let v = l.check(&counting, &MemStore::default(), T0);
        (status(&v), counting.1.get())
    };
    let keyed = Req::new("GET", "/").header("x-api-key", "k1");
    let by_key = serde_json::json!([{"name": "k", "limit": "5/min", "identifier": {"header": "x-api-key"}},
                                     {"name": "g", "limit": "5/min", "identifier": "global"}]);
    assert_eq!(reads(by_key.clone(), &keyed), (200, 0), "header and global identities need no address");
    // A missing header falls back to the client IP, which then is read (once).
    assert_eq!(reads(by_key, &Req::new("GET", "/")), (200, 1));
    let by_ip = serde_json::json!([{"name": "a", "limit": "5/min"}, {"name": "b", "limit": "5/min"}]);
    assert_eq!(reads(by_ip, &keyed), (200, 1), "two IP rules read it once");
    let exempt = serde_json::json!([{"name": "x", "limit": "5/min", "identifier": "global",
                                     "exempt": {"cidrs": ["10.0.0.0/8"]}}]);
    assert_eq!(reads(exempt, &keyed), (200, 1), "a CIDR exemption needs it");
}

/// A store that counts reads and writes, and can let "another worker" act just before the
/// first write to a key with a given prefix.
struct Racing<'a> {
    inner: &'a MemStore,
    reads: std::cell::Cell<u32>,
    writes: std::cell::Cell<u32>,
    before_write: std::cell::RefCell<Option<(String, Box<dyn FnOnce(&MemStore) + 'a>)>>,
}

impl<'a> Racing<'a> {
    fn new(inner: &'a MemStore) -> Self {
        Racing { inner, reads: Default::default(), writes: Default::default(), before_write: Default::default() }
    }
}

impl SharedStore for Racing<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let due = matches!(&*self.before_write.borrow(), Some((prefix, _)) if key.starts_with(prefix.as_str()));
        if due {
            if let Some((_, act)) = self.before_write.borrow_mut().take() {
                act(self.inner);
            }
        }
        self.writes.set(self.writes.get() + 1);
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_multi_rule_request_reads_and_writes_each_slot_once() {
    // Three identities: three tables, each read and written once per request.
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "5/min"}, {"name": "b", "limit": "5/min", "identifier": "global"},
        {"name": "c", "limit": "5/min", "identifier": {"header": "x-key"}}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    for _ in 0..2 {
        assert_eq!(status(&l.check(&Req::new("GET", "/").header("x-key", "k"), &store, T0)), 200);
    }
    // The first request finds every home slot unwritten; the second finds each identity there.
    assert_eq!((store.reads.get(), store.writes.get()), (6, 6));
}

#[test]
fn rules_that_count_the_same_identity_share_one_slot() {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "a", "limit": "5/min"}, {"name": "g", "limit": "3/min", "identifier": "global"},
        {"name": "b", "limit": "2/min", "strategy": "token_bucket"}, {"name": "c", "limit": "100/hour", "strategy": "gcra"}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    for _ in 0..2 {
        assert_eq!(status(&l.check(&Req::new("GET", "/"), &store, T0)), 200);
    }
    // a, b and c count the client's address in a's table; g counts in its own.
    assert_eq!((store.reads.get(), store.writes.get()), (4, 4));
    assert_eq!(l.table_prefix(2), l.table_prefix(0));
    assert_eq!(l.table_prefix(3), l.table_prefix(0));
    assert_ne!(l.table_prefix(1), l.table_prefix(0));
    assert_eq!(mem.size().0, 2, "one key per identity and table");
    // Each rule still counts on its own: b's two tokens are gone, and denying the request
    // consumes nothing from the others.
    let v = l.check(&Req::new("GET", "/"), &mem, T0);
    assert_eq!(status(&v), 429);
    let v = l.check(&Req::new("GET", "/"), &mem, T0 + 1);
    let remaining: Vec<u64> = v.outcomes().iter().map(|o| o.decisions.first().map_or(99, |d| d.remaining)).collect();
    // a and g counted only the two admitted requests: each would leave limit − 2 − 1.
    assert_eq!(remaining[..2], [2, 0]);
}

/// Wide (5/min, counting `wide_identifier`) and narrow (1/min, by client address); another
/// worker's request takes narrow's only unit after ours read narrow's slot. Ours is decided again
/// on what the other worker wrote and denied; then a third request is denied too, and what it
/// reports each rule would leave is returned.
fn raced_on_narrow(wide_identifier: serde_json::Value) -> Vec<u64> {
    let l = limiter(serde_json::json!({"rules": [
        {"name": "wide", "limit": "5/min", "strategy": "fixed_window", "identifier": wide_identifier},
        {"name": "narrow", "limit": "1/min", "strategy": "fixed_window"}
    ]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    let narrow = l.table_prefix(1).unwrap_or_default().to_string();
    let other = |m: &MemStore| assert_eq!(status(&l.check(&Req::new("GET", "/"), m, T0)), 200);
    *store.before_write.borrow_mut() = Some((narrow, Box::new(other)));
    assert_eq!(status(&l.check(&Req::new("GET", "/"), &store, T0)), 429, "decided again on what the other worker wrote");
    let v = l.check(&Req::new("GET", "/"), &mem, T0);
    assert_eq!(status(&v), 429);
    v.outcomes().iter().map(|o| o.decisions.first().map_or(99, |d| d.remaining)).collect()
}

#[test]
fn a_slot_written_between_the_decision_and_its_write_is_decided_again() {
    // Separate tables (wide counts globally). Narrow admitted exactly its limit; wide counted the
    // other request and, in this race, ours too (denied after wide had stored it: never an
    // admission past a limit): wide would leave 5 − 2 − 1 = 2, narrow nothing.
    assert_eq!(raced_on_narrow(serde_json::json!("global")), vec![2, 0]);
}

#[test]
fn a_shared_slot_written_between_the_decision_and_its_write_is_decided_again_for_all_its_rules() {
    // One table for both (both count the client address): one write for both rules, so the
    // denied request counted in neither; wide counted only the other request: 5 − 1 − 1 = 3.
    assert_eq!(raced_on_narrow(serde_json::json!("client_ip")), vec![3, 0]);
}

#[test]
fn configs_reading_several_headers_are_told_apart() {
    let many = |rules: serde_json::Value| limiter(serde_json::json!({ "rules": rules })).reads_many_headers();
    assert!(!many(serde_json::json!([{"name": "ip", "limit": "5/min"}])));
    // :path and one identity header; the same header twice counts once.
    assert!(!many(serde_json::json!([
        {"name": "a", "match": {"path": "/a/**"}, "limit": "5/min", "identifier": {"header": "x-k"}},
        {"name": "b", "limit": "5/min", "identifier": {"header": "x-k"}}
    ])));
    // :path (for the query part), a cookie and a cost header.
    assert!(many(serde_json::json!([{"name": "q", "limit": "5/min", "cost": {"header": "x-cost"},
        "identifier": {"parts": [{"query": "tenant"}, {"cookie": "session"}]}}])));
}

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
fn costs_exemptions_and_skipped_identities() {
    let l = limiter(serde_json::json!({"rules": [{
        "name": "c", "limit": "10/min", "strategy": "fixed_window",
        "cost": {"header": "x-cost", "default": 2, "max": 6},
        "identifier": {"header": "x-user", "fallback": "skip"},
        "exempt": {"cidrs": ["192.0.2.0/24"]}
    }]}));
    let s = MemStore::default();
    let u = |cost: &str| Req::new("GET", "/").header("x-user", "u").header("x-cost", cost);
    assert_eq!(status(&l.check(&u("100"), &s, T0)), 200); // clamped to 6
    assert_eq!(status(&l.check(&u("junk"), &s, T0)), 200); // default 2 → 8
    assert_eq!(status(&l.check(&u("3"), &s, T0)), 429); // 11 > 10
    assert_eq!(status(&l.check(&u("2"), &s, T0)), 200); // 10
                                                        // No x-user: the rule does not apply.
    assert!(l.check(&Req::new("GET", "/"), &s, T0).outcomes().is_empty());
    let exempt = u("1").source("192.0.2.7:4000");
    assert!(l.check(&exempt, &s, T0).outcomes().is_empty());
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
fn shared_data_per_client_is_small_and_capped() {
    let l = limiter(serde_json::json!({"local": {"max_clients": 1000}, "rules": [{"name": "api", "limit": "100/min"}]}));
    let s = MemStore::default();
    for i in 0..200u32 {
        let ip = format!("10.0.{}.{}:1", i / 256, i % 256);
        l.check(&Req::new("GET", "/").source(&ip), &s, T0);
    }
    let (keys, bytes) = s.size();
    assert_eq!(keys, 200);
    let per_client = bytes / keys;
    assert!(per_client < 96, "{per_client} bytes per client");
    for i in 0..20_000u32 {
        let ip = format!("10.{}.{}.{}:1", i / 65536, (i / 256) % 256, i % 256);
        l.check(&Req::new("GET", "/").source(&ip), &s, T0);
    }
    let (keys, bytes) = s.size();
    assert!(keys <= 1000, "{keys} keys for max_clients 1000");
    eprintln!("shared data: {} bytes per client (key + value), {keys} keys / {bytes} bytes at the cap", bytes / keys);
}

fn redis_limiter(rules: serde_json::Value) -> Limiter {
    limiter(
        serde_json::json!({"namespace": "ns", "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}}, "rules": rules}),
    )
}

/// A Redis reply for one rule: `{all, {allowed, remaining, reset, retry, delay, ttl}...}`.
fn reply(allowed: bool, remaining: i64) -> Reply {
    let d = Reply::Array([i64::from(allowed), remaining, 1000, if allowed { 0 } else { 500 }, 0, 1000].map(Reply::Int).to_vec());
    Reply::Array(vec![Reply::Int(i64::from(allowed)), d])
}

fn pending(step: Step) -> Pending {
    match step {
        Step::Redis(p) => p,
        Step::Done(v) => panic!("expected a Redis call, got {v:?}"),
    }
}

fn done(r: Resumed) -> Verdict {
    match r {
        Resumed::Done(v) => v,
        Resumed::Retry(p) => panic!("unexpected retry {p:?}"),
    }
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
    let retry = match l.resume(p, Ok(vec![Reply::Error("NOSCRIPT No matching script".into())]), &s, T0) {
        Resumed::Retry(p) => p,
        other => panic!("{other:?}"),
    };
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
    let real = match l.resume(p, Ok(vec![reply(true, 5), reply(true, 5)]), &s, T0) {
        Resumed::Retry(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(real.commands.iter().all(|c| c.last() != Some("dry")));
    assert_eq!(status(&done(l.resume(real, Ok(vec![reply(true, 4), reply(true, 4)]), &s, T0))), 200);
    // One rule: a single pass.
    let one = redis_limiter(serde_json::json!([{"name": "a", "limit": "10/min", "backend": "redis"}]));
    let p = pending(one.start(&Req::new("GET", "/"), &s, T0));
    assert_ne!(p.commands[0].last(), Some("dry"));
}

/// A store on which every conditional write loses its race, as if another worker always
/// wrote the key between our read and our write.
struct AlwaysContended<'a>(&'a MemStore);

impl SharedStore for AlwaysContended<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> Result<(), StoreError> {
        Err(StoreError::CasMismatch)
    }
}

#[test]
fn a_write_that_never_lands_denies_and_counts_as_a_store_error() {
    let l = limiter(serde_json::json!({"rules": [{"name": "g", "limit": "100/min", "identifier": "global"}]}));
    let mem = MemStore::default();
    let v = l.check(&Req::new("GET", "/"), &AlwaysContended(&mem), T0);
    assert_eq!(status(&v), 429, "an admission that cannot be counted is not made");
    let o = &v.outcomes()[0];
    assert!(o.store_error && !o.allowed);
    assert_eq!(header(&v, "retry-after"), Some("1"));
    // A Redis rule's local fallback follows the same policy.
    let l = redis_limiter(serde_json::json!([{"name": "f", "limit": "100/min", "backend": "redis", "on_error": "fallback"}]));
    let v = done(l.resume(pending(l.start(&Req::new("GET", "/"), &mem, T0)), Err("down".into()), &AlwaysContended(&mem), T0));
    assert_eq!(status(&v), 429);
}

#[test]
fn no_request_reaches_a_peek() {
    let l = limiter(serde_json::json!({"rules": [{"name": "c", "limit": "2/min", "strategy": "fixed_window",
        "identifier": "global", "cost": {"header": "x-cost", "max": 10}}]}));
    let s = MemStore::default();
    let mut admitted = 0;
    for v in ["0", "00", "+0", " 0", "-1", "0.5", "0x0"] {
        if status(&l.check(&Req::new("GET", "/").header("x-cost", v), &s, T0)) == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "each of these costs the default, 1: the limit holds");
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
    let write = match l.resume(probe, Ok(vec![reply(true, 5), reply(true, 5)]), &s, later) {
        Resumed::Retry(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "the dry pass is not a result yet");
    assert!(matches!(l.start(&Req::new("GET", "/"), &s, later), Step::Done(_)), "one probe at a time, across its passes");
    done(l.resume(write, Ok(vec![reply(true, 4), reply(true, 4)]), &s, later));
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen, "one probe, one success: not closed by two passes");
    let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
    // Its client hangs up: the place is freed, nothing counted.
    l.abandon(&probe, &s);
    assert_eq!(b.phase(&s), crate::breaker::Phase::HalfOpen);
    let probe = pending(l.start(&Req::new("GET", "/"), &s, later));
    let write = match l.resume(probe, Ok(vec![reply(true, 3), reply(true, 3)]), &s, later) {
        Resumed::Retry(p) => p,
        other => panic!("{other:?}"),
    };
    done(l.resume(write, Ok(vec![reply(true, 2), reply(true, 2)]), &s, later));
    assert_eq!(b.phase(&s), crate::breaker::Phase::Closed);
}

#[test]
fn a_call_that_failed_together_follows_on_error_and_counts_once() {
    let l = limiter(serde_json::json!({"namespace": "ns",
        "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}},
        "rules": [{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]}));
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
    let l = limiter(serde_json::json!({"namespace": "ns",
        "redis": {"cluster": "gw", "breaker": {"failure_threshold": 2, "open_ms": 1000}},
        "rules": [{"name": "d", "limit": "10/min", "backend": "redis", "on_error": "deny"}]}));
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
fn only_a_get_that_asks_for_a_websocket_opens_one_for_message_rules() {
    let l = limiter(serde_json::json!({"rules": [{"name": "msgs", "per": "message", "limit": "5/min"}]}));
    let opens = |req: &Req| {
        let upgrade = crate::websocket::is_upgrade_request(req);
        let applies = matches!(l.explain(req).as_slice(), [Applies::Yes(_)]);
        assert_eq!(upgrade, applies, "explain agrees with the host's test");
        upgrade
    };
    assert!(opens(&Req::new("GET", "/ws").header("upgrade", "websocket")));
    assert!(opens(&Req::new("GET", "/ws").header("upgrade", "h2c, WebSocket")));
    // Another method with the header is an ordinary request: its body is never read as frames.
    assert!(!opens(&Req::new("POST", "/ws").header("upgrade", "websocket")));
    assert!(!opens(&Req::new("CONNECT", "/ws").header("upgrade", "websocket")));
    assert!(!opens(&Req::new("GET", "/ws").header("upgrade", "h2c")));
    assert!(!opens(&Req::new("GET", "/ws")));
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

mod applicable {
    use proptest::prelude::*;

    use super::*;

    /// Rules that exercise every way a rule can be passed over, and identities shared between
    /// rules (resolved once on the request path).
    fn config() -> serde_json::Value {
        let skip = |name: &str| serde_json::json!({"parts": [{"header": name}], "fallback": "skip"});
        serde_json::json!({"rules": [
            {"name": "api", "match": {"path": "/api/**", "methods": ["GET"]}, "limit": "5/min", "identifier": skip("x-key")},
            {"name": "api-too", "limit": "9/min", "identifier": skip("x-key"), "cost": {"header": "x-cost", "default": 1, "max": 4}},
            {"name": "tenant", "match": {"headers": {"x-tenant": "acme"}}, "limit": "5/min", "exempt": {"headers": {"x-vip": "1"}}},
            {"name": "office", "limit": "5/min", "exempt": {"cidrs": ["10.0.0.0/24"]}},
            {"name": "off", "limit": "0/0"},
            {"name": "watch", "limit": "1/min", "identifier": skip("x-key"), "shadow": true},
            {"name": "other", "match": {"path": "/other"}, "limit": "5/min", "identifier": skip("x-other")},
            {"name": "other-too", "limit": "5/min", "identifier": skip("x-other")},
            {"name": "messages", "per": "message", "limit": "5/s"}
        ]})
    }

    fn request() -> impl Strategy<Value = Req> {
        let path = prop::sample::select(vec!["/api/x", "/api", "/other?q=1", "/"]);
        let method = prop::sample::select(vec!["GET", "POST"]);
        let source = prop::sample::select(vec!["10.0.0.9:1", "10.0.1.9:1", "[2001:db8::1]:1"]);
        let header = |name: &'static str, values: Vec<&'static str>| {
            prop::option::of(prop::sample::select(values)).prop_map(move |v| v.map(|v| (name, v)))
        };
        let headers = (
            header("x-key", vec!["k1", "k2"]),
            header("x-cost", vec!["0", "3", "99", "x"]),
            header("x-tenant", vec!["acme", "other"]),
            header("x-vip", vec!["1", "0"]),
            header("x-other", vec!["o1"]),
        );
        (method, path, source, headers).prop_map(|(method, path, source, (a, b, c, d, e))| {
            [a, b, c, d, e].into_iter().flatten().fold(Req::new(method, path).source(source), |r, (k, v)| r.header(k, v))
        })
    }

    proptest! {
        /// The request path's list of the rules that apply (no reasons, identities shared
        /// between rules resolved once) is exactly what `sluice explain` says applies.
        #[test]
        fn the_request_path_applies_what_explain_says(req in request()) {
            let l = limiter(config());
            let lean: Vec<(usize, u64, u64)> = l.applicable(&req).iter().map(|a| (a.rule, a.identity.hash, a.cost)).collect();
            let explained: Vec<(usize, u64, u64)> = l
                .explain(&req)
                .into_iter()
                .filter_map(|a| match a {
                    Applies::Yes(a) => Some((a.rule, a.identity.hash, a.cost)),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(lean, explained);
        }
    }
}

/// `n` requests of one client, 1 ms apart from `at`: their statuses.
fn statuses(l: &Limiter, store: &impl SharedStore, at: u64, n: u64) -> Vec<u16> {
    (0..n).map(|i| status(&l.check(&Req::new("GET", "/"), store, at + i * 1000))).collect()
}

#[test]
fn a_worker_alone_decides_on_its_own_last_write_without_reading_and_counts_exactly() {
    let l = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "50/min", "strategy": "sliding_window_counter"}]}));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    let s = statuses(&l, &store, T0, 60);
    assert_eq!(s.iter().filter(|s| **s == 200).count(), 50);
    assert!(s[..50].iter().all(|s| *s == 200));
    // Reads: the first request's (the home slot unwritten), the second's (which learns the
    // token of the first write), the first denial's (a copy never denies); the memo answers
    // the rest. Every write landed.
    assert_eq!((store.reads.get(), store.writes.get()), (3, 50));
}

#[test]
fn a_write_by_another_worker_in_between_makes_the_copy_miss_and_the_slot_read() {
    let config = serde_json::json!({"rules": [{"name": "api", "limit": "10/min", "identifier": "global"}]});
    let (w1, w2) = (limiter(config.clone()), limiter(config));
    let mem = MemStore::default();
    let store = Racing::new(&mem);
    assert_eq!(statuses(&w1, &store, T0, 3), [200; 3]);
    assert_eq!((store.reads.get(), store.writes.get()), (2, 3));
    assert_eq!(status(&w2.check(&Req::new("GET", "/"), &mem, T0 + 3000)), 200);
    // W1's write with its copy's token misses (it takes no token), the slot is read and the
    // request decided on what W2 wrote.
    let v = w1.check(&Req::new("GET", "/"), &store, T0 + 4000);
    assert_eq!(v.outcomes().first().and_then(|o| o.decisions.first()).map(|d| d.remaining), Some(5));
    assert_eq!((store.reads.get(), store.writes.get()), (3, 5));
    // After a miss, one decision reads (and learns the token again); the next is a hit.
    assert_eq!(statuses(&w1, &store, T0 + 5000, 2), [200; 2]);
    assert_eq!((store.reads.get(), store.writes.get()), (4, 7));
}

#[test]
fn predictions_follow_envoy_tokens_round_past_0_and_trust_no_old_copy() {
    let l = limiter(serde_json::json!({"rules": [{"name": "api", "limit": "100/min"}]}));
    let mem = MemStore::default();
    mem.set_next_cas(u32::MAX - 3);
    let store = Racing::new(&mem);
    assert_eq!(statuses(&l, &store, T0, 10), [200; 10]);
    assert_eq!((store.reads.get(), store.writes.get()), (2, 10), "no miss across the round");
    // A copy is trusted for a second only: a request later than that reads.
    assert_eq!(statuses(&l, &store, T0 + 10_000 + crate::store::own::TRUSTED_US, 1), [200]);
    assert_eq!((store.reads.get(), store.writes.get()), (3, 11));
}

#[test]
fn a_denial_shows_a_rule_decided_on_a_stale_copy_as_a_read_gives_it() {
    // `wide` counts the user, `narrow` the key; W1's copy of the user's slot goes stale when W2
    // counts the user, then `narrow` denies W1's request: the denial shows `wide` as read.
    let config = serde_json::json!({"rules": [
        {"name": "wide", "limit": "10/min", "identifier": {"header": "x-user"}},
        {"name": "narrow", "limit": "1/min", "identifier": {"header": "x-key"}}]});
    let (w1, w2) = (limiter(config.clone()), limiter(config.clone()));
    let mem = MemStore::default();
    let req = |key: &str| Req::new("GET", "/").header("x-user", "u").header("x-key", key);
    for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        assert_eq!(status(&w1.check(&req(key), &mem, T0 + i as u64 * 1000)), 200);
    }
    assert_eq!(status(&w2.check(&req("k9"), &mem, T0 + 3000)), 200);
    let at = T0 + 4000;
    let denied = w1.check(&req("k1"), &mem, at);
    assert_eq!(status(&denied), 429);
    // A denial writes nothing: a worker reading everything now sees what W1 saw.
    assert_eq!(denied, limiter(config).check(&req("k1"), &mem, at));
    // Four requests counted on the user (a stale copy would show r=6).
    assert_eq!(header(&denied, "ratelimit"), Some("\"wide\";r=5;t=120, \"narrow\";r=0;t=120"));
}

/// The users of [`an_identity_counts_in_one_slot_whatever_the_workers_clocks`]: one counted on
/// a rule of an hour, one on a rule of 100 ms, in a table of two slots (both have home slot 0:
/// the long-lived one is placed beyond the other's slot whenever it is held).
fn skew_request(user: usize) -> Req {
    let (name, path) = [("long", "/l"), ("short", "/s")][user];
    Req::new("GET", path).header("x-user", name)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Workers (each with its memo and its copies of its writes) whose clocks differ by up to
    /// the skew they may have, interleaved at every shared-data call, two users sharing a
    /// table of two slots, one of whose counts keeps expiring: the other's count never loses
    /// an admission (each reports one fewer remaining than the one before).
    #[test]
    fn an_identity_counts_in_one_slot_whatever_the_workers_clocks(
        clocks in proptest::collection::vec(0..=crate::clock::WORKER_SKEW_US, 3),
        // The long-lived user's first request after the other's, and on another worker its
        // second, before the first's `k`th shared-data call: where a placement may race.
        (first, second, k, after_us) in (0..3usize, 0..3usize, 0..4usize, 0..100_000u64),
        steps in proptest::collection::vec(
            (0..2usize, 0..3usize, 0..400_000u64,
             proptest::collection::vec(proptest::option::weighted(0.3, (0..2usize, 0..3usize)), 0..10)),
            1..80),
    ) {
        let config = serde_json::json!({"local": {"max_clients": 2}, "rules": [
            {"name": "long", "match": {"path": "/l"}, "limit": "100000/hour", "strategy": "fixed_window",
             "identifier": {"header": "x-user"}},
            {"name": "short", "match": {"path": "/s"}, "limit": "100000/100ms", "strategy": "fixed_window",
             "identifier": {"header": "x-user"}},
        ]});
        let workers = [limiter(config.clone()), limiter(config.clone()), limiter(config)];
        let store = MemStore::default();
        // What the long-lived user's admissions reported remaining, in the order they ended.
        let long = std::cell::RefCell::new(Vec::new());
        let decide = |store: &dyn SharedStore, now: u64, user: usize, worker: usize| {
            let verdict = workers[worker].check(&skew_request(user), &store, now + clocks[worker]);
            if let (0, Verdict::Admit { outcomes, .. }) = (user, &verdict) {
                long.borrow_mut().extend(outcomes.iter().flat_map(|o| o.decisions.iter().map(|d| d.remaining)));
            }
        };
        let mut now = T0;
        let race = std::iter::repeat_n(None, k).chain([Some((0, (first + 1 + second % 2) % 3))]).collect();
        let start = [(1, second, 0, Vec::new()), (0, first, after_us, race)];
        for (user, worker, after_us, plan) in start.into_iter().chain(steps) {
            now += after_us;
            // Before each of this request's calls, another worker's whole request, or none (a
            // worker runs one request at a time).
            let plan = std::cell::RefCell::new(std::collections::VecDeque::from(plan));
            let others = || {
                let next = plan.borrow_mut().pop_front().flatten();
                if let Some((user, other)) = next.filter(|(_, w)| *w != worker) {
                    decide(&store, now, user, other);
                }
            };
            decide(&Meddled { inner: &store, before: others }, now, user, worker);
        }
        let long = long.into_inner();
        let expected: Vec<u64> = (1..=long.len() as u64).map(|n| 100_000 - n).collect();
        proptest::prop_assert_eq!(long, expected);
    }
}
