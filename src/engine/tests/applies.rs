//! Which rules apply to a request, and what the request path reads from the host to know.

use super::*;

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
    assert_eq!(status(&l.check(&Req::new("get", "/api/b"), &s, T0)), 429, "a method in lower case is that method");
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
    fn cookies(&self) -> Option<Vec<u8>> {
        self.0.cookies()
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
    fn cookies(&self) -> Option<Vec<u8>> {
        self.0.cookies()
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
    // A cookie alone: every cookie line is read, so every header is, at the first ask.
    assert!(many(serde_json::json!([{"name": "s", "limit": "5/min", "identifier": {"cookie": "session"}}])));
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
fn a_request_envoy_would_upgrade_to_a_websocket_opens_one_for_message_rules() {
    let l = limiter(serde_json::json!({"rules": [{"name": "msgs", "per": "message", "limit": "5/min"}]}));
    let opens = |req: &Req| {
        let upgrade = crate::websocket::is_upgrade_request(req);
        let applies = matches!(l.explain(req).as_slice(), [Applies::Yes(_)]);
        assert_eq!(upgrade, applies, "explain agrees with the host's test");
        upgrade
    };
    assert!(opens(&Req::new("GET", "/ws").header("upgrade", "websocket")));
    assert!(opens(&Req::new("GET", "/ws").header("upgrade", "h2c, WebSocket")));
    // Another method with `Connection: upgrade` is upgraded by Envoy all the same: a backend
    // that accepts it must not carry uncounted messages.
    assert!(opens(&Req::new("POST", "/ws").header("upgrade", "websocket").header("connection", "Upgrade")));
    assert!(opens(&Req::new("PUT", "/ws").header("upgrade", "websocket").header("connection", "keep-alive, upgrade")));
    // Without it, an ordinary request (to Envoy too): its body is never read as frames.
    assert!(!opens(&Req::new("POST", "/ws").header("upgrade", "websocket")));
    assert!(!opens(&Req::new("POST", "/ws").header("upgrade", "websocket").header("connection", "keep-alive")));
    assert!(!opens(&Req::new("CONNECT", "/ws").header("upgrade", "websocket")));
    assert!(!opens(&Req::new("POST", "/ws").header("upgrade", "h2c").header("connection", "upgrade")));
    assert!(!opens(&Req::new("GET", "/ws").header("upgrade", "h2c")));
    assert!(!opens(&Req::new("GET", "/ws")));
}

#[test]
fn an_upgrade_match_holds_for_its_protocol_among_others_and_in_any_case() {
    // Envoy upgrades `Upgrade: WebSocket` (its upgrade_configs compare without case) and a
    // list naming websocket: a rule on `upgrade: websocket` limits them too. Other headers
    // stay exact.
    let l = limiter(serde_json::json!({"rules": [
        {"name": "upgrades", "match": {"headers": {"upgrade": "websocket"}}, "limit": "1/min", "identifier": "global"},
        {"name": "h2-upgrades", "match": {"headers": {":protocol": "websocket"}}, "limit": "1/min", "identifier": "global"},
        {"name": "tenant", "match": {"headers": {"x-tenant": "acme"}}, "limit": "1/min", "identifier": "global"}
    ]}));
    let applies = |req: &Req| {
        let explained: Vec<usize> =
            l.explain(req).iter().enumerate().filter(|(_, a)| matches!(a, Applies::Yes(_))).map(|(i, _)| i).collect();
        let lean: Vec<usize> = l.applicable(req).iter().map(|a| a.rule).collect();
        assert_eq!(explained, lean, "explain agrees with the request path");
        lean
    };
    let with = |name: &str, value: &str| Req::new("GET", "/ws").header(name, value);
    assert_eq!(applies(&with("upgrade", "websocket")), [0]);
    assert_eq!(applies(&with("upgrade", "WebSocket")), [0]);
    assert_eq!(applies(&with("upgrade", "websocket, foo")), [0]);
    assert_eq!(applies(&with("upgrade", "h2c ,WEBSOCKET ")), [0]);
    assert_eq!(applies(&with(":protocol", "WebSocket")), [1]);
    assert_eq!(applies(&with("upgrade", "websockets")), Vec::<usize>::new());
    assert_eq!(applies(&with("upgrade", "websocket2, foo")), Vec::<usize>::new());
    assert_eq!(applies(&with("x-tenant", "ACME")), Vec::<usize>::new(), "other headers match exactly");
    assert_eq!(applies(&with("x-tenant", "acme, b")), Vec::<usize>::new());
    assert_eq!(
        l.explain(&with("upgrade", "websockets"))[0],
        Applies::NoMatch(vec![Mismatch::Header {
            name: "upgrade".into(),
            want: "websocket".into(),
            got: Some("websockets".into())
        }])
    );
    let s = MemStore::default();
    assert_eq!(status(&l.check(&with("upgrade", "websocket"), &s, T0)), 200);
    assert_eq!(status(&l.check(&with("upgrade", "WebSocket"), &s, T0)), 429, "one budget, whatever the case");
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
