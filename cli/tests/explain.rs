//! Runs the built `sluice explain` on shipped and made-up configs and checks what it reports:
//! per-rule outcomes and reasons, identities and their hashes, the shared-data and Redis key
//! forms, the inputs it accepts (plugin config, Envoy bootstrap, Istio WasmPlugin), the static
//! analysis, and its exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).current_dir(root()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sluice explain ARGS --json`, which must succeed.
fn explain(args: &[&str]) -> Value {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sluice(&all);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rule<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["rules"].as_array().unwrap().iter().find(|r| r["rule"] == name).unwrap_or_else(|| panic!("no rule {name}"))
}

/// A request of plain header values, as the filter's identity code reads one.
struct Plain<'a>(&'a [(&'a str, &'a str)], Option<&'a str>);

impl sluice::identity::RequestInfo for Plain<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes().to_vec())
    }
    fn cookies(&self) -> Option<Vec<u8>> {
        self.header("cookie")
    }
    fn source_address(&self) -> Option<String> {
        self.1.map(str::to_string)
    }
    fn route_name(&self) -> Option<String> {
        None
    }
}

/// The hash the filter computes for these identity parts of this request (shipped configs set
/// no identity_secret: the public default key).
fn hash_hex(parts: Vec<sluice::config::IdentPart>, headers: &[(&str, &str)], ip: Option<&str>) -> String {
    use sluice::config::{ClientIpSpec, IdentFallback, Identifier};
    let hasher = sluice::identity::IdentityHasher::new(None, &ClientIpSpec::default());
    let id = Identifier { parts, fallback: IdentFallback::ClientIp };
    let ip = || ip.and_then(sluice::identity::parse_address);
    let identity = hasher.resolve(&id, ip, &Plain(headers, None), false).unwrap();
    format!("{:016x}", identity.hash)
}

fn account_and_ip_hash() -> String {
    use sluice::config::IdentPart;
    hash_hex(vec![IdentPart::Header("x-account".into()), IdentPart::ClientIp], &[("x-account", "a1")], Some("203.0.113.7"))
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn rules_that_apply_show_identity_hash_cost_and_shared_data_slots() {
    let r = explain(&["filter-config/local.yaml", "--path", "/api/x?page=2", "-H", "X-Api-Key: k1", "--ip", "192.0.2.1"]);
    assert_eq!(r["request"]["client_ip"], "192.0.2.1");
    assert_eq!(r["applies"], json!(["api", "site"]));
    let api = rule(&r, "api");
    assert_eq!(api["outcome"], "applies");
    let c = &api["counted"];
    assert_eq!(c["identity"], "header:x-api-key=k1", "header names are case-insensitive, values verbatim");
    let want = hash_hex(vec![sluice::config::IdentPart::Header("x-api-key".into())], &[("x-api-key", "k1")], None);
    assert_eq!(c["hash"], want, "the hash the filter uses");
    assert_eq!((c["cost"].as_u64(), c["backend"].as_str()), (Some(1), Some("local")));
    assert_eq!(c["limits"], json!(["20/s", "10000/h"]));
    assert_eq!(c["strategy"], "token_bucket");
    // Local rules count in the table of their identifier, shared with any rule counting the same.
    let prefix = c["shared_data_prefix"].as_str().unwrap_or_default();
    assert!(prefix.starts_with("shop:identity#") && prefix.len() == "shop:identity#".len() + 9, "{prefix}");
    assert_eq!(c["slots"].as_u64(), Some(20000));
    assert_ne!(rule(&r, "site")["counted"]["shared_data_prefix"].as_str(), Some(prefix), "another identifier, another table");
    assert!(c.get("redis_key").is_none(), "a local rule has no Redis key");
    assert_eq!(rule(&r, "site")["counted"]["identity"], "global");

    let login = rule(&r, "login");
    assert_eq!(login["outcome"], "no_match");
    assert_eq!(login["reasons"], json!(["method GET is not one of POST", "path \"/api/x\" matches none of \"/login\""]));
    let exports = rule(&r, "exports");
    assert!(
        exports["reasons"].as_array().unwrap().iter().any(|x| x == "header x-tenant-tier is absent (needs \"free\")"),
        "{exports}"
    );
}

#[test]
fn cost_from_a_header_is_clamped_like_the_filter_does() {
    let r = explain(&["filter-config/local.yaml", "--path", "/api/search", "-H", "x-search-cost: 500", "--ip", "192.0.2.1"]);
    assert_eq!(rule(&r, "search")["counted"]["cost"], 50);
    let r = explain(&["filter-config/local.yaml", "--path", "/api/search", "-H", "x-search-cost: nope", "--ip", "192.0.2.1"]);
    assert_eq!(rule(&r, "search")["counted"]["cost"], 1);
}

#[test]
fn exempt_unlimited_and_missing_identities_say_why() {
    let r = explain(&["filter-config/local.yaml", "--path", "/api/x", "--ip", "10.9.8.7"]);
    assert_eq!(rule(&r, "api")["outcome"], "exempt");
    assert_eq!(rule(&r, "api")["reasons"], json!(["client ip 10.9.8.7 is in exempt cidr 10.0.0.0/8"]));
    let r = explain(&["filter-config/local.yaml", "--path", "/api/x", "-H", "x-internal: yes", "--ip", "192.0.2.1"]);
    assert_eq!(rule(&r, "api")["reasons"], json!(["exempt header x-internal: \"yes\""]));

    // Envoy joins repeated x-forwarded-for lines; the hop the balancer appended is the last.
    let xff = |a: &str, b: &str| {
        let (a, b) = (format!("x-forwarded-for: {a}"), format!("x-forwarded-for: {b}"));
        explain(&["filter-config/local.yaml", "--path", "/api/x", "-H", &a, "-H", &b, "--ip", "10.0.0.2"])
    };
    let r = xff("10.1.2.3", "203.0.113.5");
    assert_eq!(rule(&r, "api")["outcome"], "applies", "{r}");
    assert_eq!(rule(&r, "api")["counted"]["identity"], "ip=203.0.113.5");
    assert_eq!(rule(&xff("203.0.113.5", "10.1.2.3"), "api")["outcome"], "exempt");
    let r = explain(&["filter-config/local.yaml", "-X", "put", "--path", "/upload/a", "--ip", "192.0.2.1"]);
    assert_eq!(r["request"]["method"], "put", "as sent");
    assert_eq!(rule(&r, "uploads")["outcome"], "no_identity", "methods match in any case");
    assert_eq!(rule(&r, "uploads")["reasons"], json!(["cookie session is absent and the identifier says fallback: skip"]));
    let r = explain(&["filter-config/local.yaml", "-X", "PUT", "--path", "/upload/a", "-H", "cookie: a=1; session=s9"]);
    assert_eq!(rule(&r, "uploads")["counted"]["identity"], "cookie:session=s9");
    let r = explain(&[
        "filter-config/local.yaml",
        "-X",
        "PUT",
        "--path",
        "/upload/a",
        "-H",
        "cookie: session=zz",
        "-H",
        "cookie: session=s9",
    ]);
    assert_eq!(r["conflicts"], json!(["uploads"]), "a second Cookie line is read too");

    let r = explain(&["filter-config/tenants.yaml", "--path", "/x", "-H", "x-tenant-tier: enterprise", "-H", "x-tenant: t1"]);
    assert_eq!(rule(&r, "enterprise")["outcome"], "unlimited");
    assert_eq!(r["applies"], json!([]));
    // Two values of the user: the filter denies at once, and explain says so.
    let r = explain(&["filter-config/login.yaml", "-X", "POST", "--path", "/login?user=zz1&user=alice"]);
    assert_eq!(r["conflicts"], json!(["login-per-account"]));
    let r = explain(&["filter-config/login.yaml", "-X", "POST", "--path", "/login?user=alice&user=alice"]);
    assert_eq!(r.get("conflicts"), None, "one value twice is that value");
}

#[test]
fn message_rules_show_what_they_count_and_what_over_the_limit_does() {
    let up = ["filter-config/websocket.yaml", "--path", "/ws/chat", "-H", "upgrade: websocket", "-H", "cookie: session=s1"];
    let r = explain(&[&up[..], &["--ip", "192.0.2.1"]].concat());
    assert_eq!(r["applies"], json!(["ws-upgrades", "ws-upgrades-per-session", "ws-upgrades-total"]));
    assert_eq!(r["messages"], json!(["ws-messages", "ws-bytes-per-session"]));
    // Envoy upgrades `Upgrade: WebSocket` too: the upgrade rules count it.
    let capitalised =
        ["filter-config/websocket.yaml", "--path", "/ws/chat", "-H", "Upgrade: WebSocket", "-H", "cookie: session=s1"];
    let c = explain(&[&capitalised[..], &["--ip", "192.0.2.1"]].concat());
    assert_eq!((&c["applies"], &c["messages"]), (&r["applies"], &r["messages"]));
    let m = &rule(&r, "ws-messages")["counted"];
    assert_eq!((m["per"].as_str(), m["identity"].as_str()), (Some("message"), Some("ip=192.0.2.1")));
    assert_eq!(
        m["over_limit"],
        "the message is dropped, the client gets a rate_limited text frame; a connection is closed with 1008 at its 10 messages over the limit"
    );
    let b = &rule(&r, "ws-bytes-per-session")["counted"];
    assert_eq!((b["payload_bytes"].as_bool(), b["over_limit"].as_str()), (Some(true), Some("the message is dropped")));
    // Without the upgrade header, a message rule says why it does not apply.
    let r = explain(&["filter-config/websocket.yaml", "--path", "/ws/chat", "--ip", "192.0.2.1"]);
    assert_eq!(rule(&r, "ws-messages")["outcome"], "not_upgrade");
    let text = text(&sluice(&[&["explain"], &up[..]].concat()).stdout);
    assert!(
        text.contains(
            "Once the upgrade is admitted, every message the client sends is counted by ws-messages, ws-bytes-per-session"
        ),
        "{text}"
    );
    assert!(text.contains("over the limit: the message is dropped, the client gets"), "{text}");
}

#[test]
fn redis_rules_show_their_key_and_composite_identities_their_parts() {
    let r = explain(&[
        "filter-config/redis.yaml",
        "-X",
        "POST",
        "--path",
        "/api/payments/9",
        "-H",
        "x-account: a1",
        "--ip",
        "203.0.113.7",
    ]);
    let p = &rule(&r, "payments")["counted"];
    assert_eq!(p["identity"], "header:x-account=a1 + ip=203.0.113.7");
    // The hash covers every part, as the filter forms it.
    let hash = account_and_ip_hash();
    assert_eq!(p["hash"], hash);
    assert_eq!(p["backend"], "redis");
    assert_eq!(p["redis_key"], format!("shop:{{payments:{hash}}}:<limit index>.<fingerprint>"));
    // The form is the filter's own: its key function with the same namespace, rule and hash.
    let full = sluice::redis::key("shop", "payments", u64::from_str_radix(&hash, 16).unwrap(), 0, 7);
    assert!(full.starts_with(&format!("shop:{{payments:{hash}}}:")), "{full}");
    assert!(p.get("shared_data_prefix").is_none(), "on_error deny never counts locally");
    // api falls back to local counting on Redis errors: it has a slot table too.
    assert_eq!(rule(&r, "api")["counted"]["shared_data_prefix"], "shop:api:");
}

#[test]
fn envoy_bootstraps_and_wasm_plugins_are_read_for_their_plugin_config() {
    let r = explain(&[
        "envoy/per-route.yaml",
        "-X",
        "POST",
        "--path",
        "/orders",
        "--route",
        "orders",
        "-H",
        "x-api-key: carol",
        "-H",
        "x-tenant: acme",
    ]);
    assert_eq!(r["applies"], json!(["order-writes", "orders-per-tenant"]));
    assert_eq!(
        rule(&r, "catalog-reads")["reasons"],
        json!(["method POST is not one of GET, HEAD", "route \"orders\" is not one of catalog"])
    );
    let r = explain(&["envoy/per-route.yaml", "--path", "/orders"]);
    assert_eq!(rule(&r, "orders-per-tenant")["reasons"], json!(["no route name given (--route); needs one of orders"]));

    let r = explain(&["examples/istio/wasmplugin.yaml", "--path", "/api/v1", "-H", "x-api-key: k1"]);
    assert_eq!(r["namespace"], "shop");
    assert_eq!(rule(&r, "api")["counted"]["backend"], "redis");

    // A rule naming a route the bootstrap does not have can never match.
    let boot = std::fs::read_to_string(root().join("envoy/per-route.yaml"))
        .unwrap()
        .replace("\"routes\": [\"search\"]", "\"routes\": [\"serach\"]");
    let path = temp_file("typo-route.yaml", &boot);
    let r = explain(&[path.to_str().unwrap()]);
    assert_eq!(r["findings"][0]["kind"], "never_matches", "{r}");
    assert_eq!(r["findings"][0]["rule"], "search");
    assert!(r["findings"][0]["message"].as_str().unwrap().contains("serach"), "{r}");
}

#[test]
fn static_analysis_reports_what_can_never_happen() {
    let path = temp_file(
        "findings.yaml",
        r#"
rules:
  - name: api
    match: {path: "/api/**"}
    limit: 100/min
    strategy: fixed_window
  - name: api-orders
    match: {path: "/api/orders/*", methods: [POST]}
    limit: 200/min
    strategy: fixed_window
  - name: accents
    match: {path: "/menu/crème"}
    limit: 1/s
  - name: proxy-header
    match: {headers: {proxy-connection: keep-alive}}
    limit: 1/s
  - name: everyone-exempt
    match: {path: /x}
    limit: 1/s
    exempt: {cidrs: [0.0.0.0/0, "::/0"]}
  - name: two-limits
    match: {path: /y}
    limits: [10/s, 5/s]
"#,
    );
    let r = explain(&[path.to_str().unwrap()]);
    assert!(r.get("request").is_none() && r.get("rules").is_none(), "no request given: analysis only");
    let found: Vec<(String, String, Option<String>)> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().into(), f["rule"].as_str().unwrap().into(), f["by"].as_str().map(String::from)))
        .collect();
    let f = |k: &str, r: &str, by: Option<&str>| (k.to_string(), r.to_string(), by.map(String::from));
    assert_eq!(
        found,
        vec![
            f("never_matches", "proxy-header", None),
            f("never_limits", "everyone-exempt", None),
            f("redundant_limit", "two-limits", None),
            f("shadowed", "api-orders", Some("api")),
        ]
    );
    let out = sluice(&["explain", path.to_str().unwrap()]);
    let t = text(&out.stdout);
    assert!(t.starts_with("static analysis: 4 findings\n"), "{t}");
    assert!(t.contains("  shadowed \"api-orders\": rule \"api\" applies to every request this rule does"), "{t}");
    // A glob with an accent meets the path as clients send it, escaped (paths are compared
    // decoded), in either case of hex.
    for sent in ["/menu/cr%C3%A8me", "/menu/cr%c3%a8me"] {
        let r = explain(&[path.to_str().unwrap(), "--path", sent]);
        assert_eq!(rule(&r, "accents")["outcome"], "applies", "{sent}: {r}");
    }
}

#[test]
fn every_shipped_config_is_free_of_findings() {
    let mut files = Vec::new();
    for dir in ["filter-config", "envoy", "examples/per-route", "examples/istio"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let yaml = name.ends_with(".yaml");
            if yaml && !matches!(name.as_str(), "upstream.yaml" | "gateway.yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(files.len() >= 14, "{files:?}");
    for f in files {
        let r = explain(&[&f]);
        assert_eq!(r["findings"], json!([]), "{f}");
    }
}

#[test]
fn text_output_reads_per_rule() {
    let out = sluice(&[
        "explain",
        "filter-config/redis.yaml",
        "-X",
        "POST",
        "--path",
        "/api/payments/1",
        "-H",
        "x-account: a1",
        "--ip",
        "203.0.113.7",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out.stdout);
    let hash = account_and_ip_hash();
    assert!(t.starts_with("request: POST /api/payments/1  route -  client ip 203.0.113.7\n"), "{t}");
    assert!(
        t.contains(&format!("payments   applies     identity header:x-account=a1 + ip=203.0.113.7 (hash {hash}), cost 1\n")),
        "{t}"
    );
    assert!(t.contains(&format!("redis key shop:{{payments:{hash}}}:<limit index>.<fingerprint>\n")), "{t}");
    assert!(
        t.contains("3 of 3 rules apply (api, payments, per-proxy); the request is admitted only if every one admits.\n"),
        "{t}"
    );
    assert!(t.ends_with("static analysis: no findings\n"), "{t}");
    // A shadow rule counts the request but cannot deny it: it is named apart.
    let out = sluice(&["explain", "envoy/local.yaml", "--path", "/admin/x", "--ip", "203.0.113.7"]);
    let t = text(&out.stdout);
    assert!(t.contains("1 of 8 rules apply (site); the request is admitted only if every one admits.\n"), "{t}");
    assert!(t.contains("Shadow rules count it too, without denying: admin-trial.\n"), "{t}");
}

/// A message's verdict sends no rate limit fields: explain says nothing of them for a message
/// rule, shadow or not (a shadow rule's `advertise` defaults to false).
#[test]
fn message_rules_are_not_said_to_be_kept_out_of_the_rate_limit_fields() {
    let cfg = temp_file(
        "fields.yaml",
        "rules:\n  - {name: trial, limit: 5/s, shadow: true}\n  - {name: chat, per: message, limit: 20/s}\n  - {name: chat-trial, per: message, limit: 10/s, shadow: true}\n",
    );
    let args = [cfg.to_str().unwrap(), "--path", "/ws", "-H", "upgrade: websocket", "--ip", "192.0.2.1"];
    let r = explain(&args);
    assert_eq!(r["messages"], json!(["chat", "chat-trial"]));
    assert_eq!(rule(&r, "trial")["counted"]["advertise"], false);
    for name in ["chat", "chat-trial"] {
        assert_eq!(rule(&r, name)["counted"].get("advertise"), None, "{name}: {r}");
    }
    let t = text(&sluice(&[&["explain"], &args[..]].concat()).stdout);
    let line = |name: &str| t.lines().skip_while(|l| !l.starts_with(&format!("{name} "))).nth(1).unwrap_or_default().to_string();
    assert!(line("trial").ends_with(", shadow (counts, never denies), kept out of the rate limit fields"), "{t}");
    assert!(line("chat").ends_with("backend local"), "{t}");
    assert!(line("chat-trial").ends_with("backend local, shadow (counts, never denies)"), "{t}");
    assert_eq!(t.matches("rate limit fields").count(), 1, "{t}");
}

#[test]
fn a_message_rules_repeated_identity_drops_messages_but_not_the_upgrade() {
    let cfg = temp_file("chat.yaml", "rules:\n  - name: chat\n    per: message\n    limit: 5/s\n    identifier: {query: room}\n");
    let r =
        explain(&[cfg.to_str().unwrap(), "--path", "/ws?room=a&room=b", "-H", "upgrade: websocket", "-H", "connection: upgrade"]);
    assert_eq!(r.get("conflicts"), None, "the upgrade is not denied for it");
    assert_eq!(r["message_conflicts"], json!(["chat"]));
}

#[test]
fn errors_and_usage() {
    let bad = temp_file("bad.yaml", "rules:\n  - name: a\n    limit: 5/fortnight\n");
    let out = sluice(&["explain", bad.to_str().unwrap(), "--path", "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("rules[0].limit: \"5/fortnight\""), "{}", text(&out.stderr));

    let out = sluice(&["explain", "filter-config/local.yaml", "--path", "/", "-H", "no colon"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = sluice(&["explain", "filter-config/local.yaml", "-H", "x-a: 1"]);
    assert_eq!(out.status.code(), Some(2), "request options need --path: {}", text(&out.stderr));
    let out = sluice(&["explain", "filter-config/missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sluice(&["explain", "envoy/upstream.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("this Envoy bootstrap has no Wasm filter"), "{}", text(&out.stderr));
}
