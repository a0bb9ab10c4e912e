//! Tried as an attacker would, through a real Envoy 1.40 with the real `sluice.wasm`: request
//! values that used to walk past a limit (a cost of 0, another spelling of the same client, an
//! exemption header the client sets itself) no longer do.

use serde_json::{json, Value};
use sluice_e2e::{adapt, add_cluster, bootstrap, burst, get, get_with_raw_header, Envoy};

fn envoy_with(config: Value) -> Envoy {
    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, Some(&config));
    Envoy::running(&boot, 2)
}

/// As `envoy/local.yaml` runs: behind one load balancer that appends the client's address to
/// x-forwarded-for (`client_ip.xff_trusted_hops: 1`), so Envoy does not use its peer's.
fn envoy_behind_a_load_balancer(config: Value) -> Envoy {
    let mut boot = bootstrap("demo.yaml");
    adapt(&mut boot, Some(&config));
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"] =
        json!(false);
    Envoy::running(&boot, 2)
}

#[test]
fn at_the_edge_a_client_cannot_name_its_own_address() {
    // The shipped edge bootstraps count the connection's peer: an x-forwarded-for the client
    // writes is no fresh budget, and no way into an exempt network.
    let envoy = envoy_with(json!({"rules": [
        {"name": "by-ip", "limit": "2/hour", "strategy": "fixed_window", "exempt": {"cidrs": ["10.0.0.0/8"]}}]}));
    let url = envoy.url("/ip");
    let spoofed: Vec<u16> =
        (1..=4).map(|i| get(&url, &[("x-forwarded-for", &format!("203.0.113.{i}"))]).map_or(0, |r| r.status)).collect();
    assert_eq!(spoofed, [200, 200, 429, 429]);
    assert_eq!(statuses(&url, &[&[("x-forwarded-for", "10.1.2.3")]]), [429], "not exempt by saying so");
}

fn statuses(url: &str, requests: &[&[(&str, &str)]]) -> Vec<u16> {
    requests.iter().map(|h| get(url, h).map_or(0, |r| r.status)).collect()
}

#[test]
fn a_cost_header_of_zero_costs_the_default() {
    let envoy = envoy_with(json!({"rules": [{"name": "c", "limit": "3/hour", "strategy": "fixed_window", "identifier": "global",
        "cost": {"header": "x-cost", "max": 100}}]}));
    let url = envoy.url("/c");
    // Each of these used to be a free request (a peek); now each costs the default, 1.
    let zeros: Vec<&[(&str, &str)]> =
        vec![&[("x-cost", "0")], &[("x-cost", "00")], &[("x-cost", "+0")], &[("x-cost", "0")], &[("x-cost", "-0")]];
    assert_eq!(statuses(&url, &zeros), [200, 200, 200, 429, 429]);
    let log = envoy.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn one_client_has_one_identity_however_it_is_spelled() {
    let envoy = envoy_behind_a_load_balancer(json!({
        "client_ip": {"xff_trusted_hops": 1},
        "rules": [
            {"name": "by-ip", "match": {"path": "/ip"}, "limit": "2/hour", "strategy": "fixed_window"},
            {"name": "by-user", "match": {"path": "/login"}, "limit": "2/hour", "strategy": "fixed_window", "identifier": {"query": "user"}},
            {"name": "exempt", "match": {"path": "/x"}, "limit": "1/hour", "strategy": "fixed_window", "exempt": {"cidrs": ["192.0.2.0/24"]}},
            {"name": "by-session", "match": {"path": "/s"}, "limit": "1/hour", "strategy": "fixed_window", "identifier": {"cookie": "session"}}
        ]
    }));
    let xff = |v: &'static str| -> Vec<(&'static str, &'static str)> { vec![("x-forwarded-for", v)] };
    // An IPv4 address and its IPv4-mapped IPv6 spelling are one client.
    let ip = envoy.url("/ip");
    assert_eq!(statuses(&ip, &[&xff("198.51.100.7"), &xff("::ffff:198.51.100.7"), &xff("::ffff:c633:6407")]), [200, 200, 429]);
    // An IPv6 client rotating addresses inside its /64 gets no fresh budget; the next /64 does.
    let v6 = [xff("2001:db8:1:2::1"), xff("2001:db8:1:2:aaaa::9"), xff("2001:db8:1:2:ffff:ffff:ffff:ffff")];
    assert_eq!(statuses(&ip, &[&v6[0], &v6[1], &v6[2]]), [200, 200, 429]);
    assert_eq!(statuses(&ip, &[&xff("2001:db8:1:3::1")]), [200]);
    // A query value and its percent-encoded spelling are one user (as the application reads it).
    let login = |q: &str| envoy.url(&format!("/login?{q}"));
    let got: Vec<u16> =
        ["user=alice", "user=%61lice", "user=ali%63e"].iter().map(|q| get(&login(q), &[]).map_or(0, |r| r.status)).collect();
    assert_eq!(got, [200, 200, 429]);
    // Two values of user= name no one user (applications differ in which they read): denied,
    // even with a fresh first value; one value twice is that user.
    assert_eq!(get(&login("user=bob&user=alice"), &[]).map_or(0, |r| r.status), 429);
    assert_eq!(statuses(&login("user=carol&user=%63arol"), &[&[], &[], &[]]), [200, 200, 429]);
    // A cookie and its percent-encoded spelling are one session.
    let s = envoy.url("/s");
    assert_eq!(statuses(&s, &[&[("cookie", "session=abc")], &[("cookie", "session=%61bc")]]), [200, 429]);
    // A decoy on a Cookie line of its own is a repeat too: Envoy passes both lines on over
    // HTTP/1.1, and the application joins them and may read the spent session.
    let two_lines = |decoy: &'static str| vec![("cookie", decoy), ("cookie", "session=abc")];
    assert_eq!(statuses(&s, &[&two_lines("session=decoy1"), &two_lines("session=decoy2")]), [429, 429]);
    assert_eq!(statuses(&s, &[&[("cookie", "a=1"), ("cookie", "session=fresh")], &[("cookie", "session=fresh")]]), [200, 429]);
    // Exemptions see the canonical address too.
    let x = envoy.url("/x");
    assert_eq!(statuses(&x, &[&xff("::ffff:192.0.2.9"), &xff("::ffff:192.0.2.9"), &xff("192.0.2.9")]), [200, 200, 200]);
}

/// A header read alone (one rule's `identifier: {header}`, Envoy's single-header read) that the
/// client repeats counts its first occurrence: a decoy after it buys no fresh budget, nor does
/// one before it a second chance at the spent key.
#[test]
fn a_repeated_header_counts_its_first_occurrence() {
    let envoy = envoy_with(
        json!({"rules": [{"name": "k", "limit": "1/hour", "strategy": "fixed_window", "identifier": {"header": "x-api-key"}}]}),
    );
    let url = envoy.url("/k");
    assert_eq!(
        statuses(
            &url,
            &[
                &[("x-api-key", "spent")],
                &[("x-api-key", "spent"), ("x-api-key", "decoy-1")],
                &[("x-api-key", "spent"), ("x-api-key", "decoy-2")]
            ]
        ),
        [200, 429, 429]
    );
    // The first occurrence is the client: a fresh one first is a fresh client, once.
    assert_eq!(statuses(&url, &[&[("x-api-key", "fresh"), ("x-api-key", "spent")], &[("x-api-key", "fresh")]]), [200, 429]);
}

#[test]
fn a_raw_byte_and_its_escaped_spelling_are_two_clients() {
    let envoy = envoy_with(
        json!({"rules": [{"name": "k", "limit": "1/hour", "strategy": "fixed_window", "identifier": {"header": "x-api-key"}}]}),
    );
    let url = envoy.url("/k");
    let raw = get_with_raw_header(&url, b"x-api-key: \xff").map_or(0, |r| r.status);
    let escaped = get(&url, &[("x-api-key", "\\xff")]).map_or(0, |r| r.status);
    assert_eq!((raw, escaped), (200, 200), "each its own budget of 1");
    assert_eq!(get_with_raw_header(&url, b"x-api-key: \xff").map_or(0, |r| r.status), 429);
}

#[test]
fn the_shipped_edge_proxy_does_not_let_a_client_exempt_itself() {
    let mut up = bootstrap("upstream.yaml");
    let (up_port, _) = adapt(&mut up, None);
    let _upstream = Envoy::running(&up, 1);
    let mut boot = bootstrap("local.yaml");
    adapt(&mut boot, None);
    add_cluster(&mut boot, "upstream", up_port);
    let edge = Envoy::running(&boot, 2);
    let url = edge.url("/api/orders");
    // api: token bucket with a burst of 40 per API key, exempt for x-internal: yes (which only
    // the trust boundary may set) and for 10.0.0.0/8 (the address the trusted balancer reports).
    let claims = burst(80, &url, &[("x-api-key", "k-self-exempt"), ("x-internal", "yes"), ("x-forwarded-for", "203.0.113.5")]);
    let limited = claims.iter().filter(|r| r.status == 429).count();
    assert!(limited > 0, "x-internal: yes from a client exempted it: {} of 80 admitted", claims.len() - limited);
    let inside = burst(80, &url, &[("x-api-key", "k-inside"), ("x-forwarded-for", "10.1.2.3")]);
    assert!(inside.iter().all(|r| r.status == 200), "the CIDR exemption still holds");
}
