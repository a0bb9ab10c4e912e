//! A request held while sluice decides (waiting for Redis, or queued by `leaky_bucket_queue`)
//! is held whole: its body, arriving meanwhile, must not carry it on. Envoy hands a filter
//! that stopped on headers its body chunks all the same, and a body callback that answers
//! Continue resumes the request (docs/architecture.md, "Host facts: callbacks").

use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::{adapt, add_cluster, bootstrap, free_port, read_message, send_raw, wait_until, Envoy};

const LIMIT: Duration = Duration::from_secs(5);

/// Requests Envoy's router handed to the cluster `upstream`: each one is counted when the router
/// takes it, in the callback that let it through, before it is written to the upstream.
fn routed(envoy: &Envoy) -> u64 {
    // Pending (no connection yet) and attached (on a connection) are counted apart; a request
    // counted pending is counted again when it attaches, so the sum only says whether any came.
    ["cluster.upstream.upstream_rq_total", "cluster.upstream.upstream_rq_pending_total"]
        .iter()
        .map(|name| envoy.stat_if_present(name).unwrap_or_else(|| panic!("no stat {name} on the admin port")))
        .sum()
}

/// An upstream that answers 200 to every request and hands over each request line it read.
fn upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                if conn.set_read_timeout(Some(LIMIT)).is_err() {
                    return;
                }
                while let Ok(request) = read_message(&mut conn) {
                    if request.is_empty() {
                        return;
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    let _ = tx.send(text.lines().next().unwrap_or_default().to_string());
                }
            });
        }
    });
    (port, rx)
}

/// A "gateway" that takes connections and never answers: every Redis decision times out.
fn black_hole() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(16) {
            held.push(conn);
        }
    });
    port
}

#[test]
fn a_body_arriving_while_redis_decides_does_not_carry_the_request_on() {
    let (up_port, _seen) = upstream();
    let gateway = black_hole();
    let config = json!({"namespace": "held", "redis": {"cluster": "sluice_gateway", "timeout_ms": 400},
        "rules": [{"name": "api", "limit": "100/minute", "backend": "redis", "on_error": "deny"}]});
    let mut boot = bootstrap("local.yaml");
    adapt(&mut boot, Some(&config));
    add_cluster(&mut boot, "upstream", up_port);
    add_cluster(&mut boot, "sluice_gateway", gateway);
    let envoy = Envoy::running(&boot, 1);

    // Headers and body in one write: the body arrives while the decision waits for Redis.
    let answer = send_raw(envoy.port, b"POST /api/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\r\nhello")
        .expect("an answer from Envoy");
    assert_eq!(answer.status, 429, "Redis never answered and on_error is deny: {answer:?}");
    // Had the body carried it on, the router would have counted it before the denial was sent.
    assert_eq!(routed(&envoy), 0, "the request must not reach the upstream");
    assert!(!envoy.log_text().contains("panicked"));
}

/// How long the queued request waits: one request per `PERIOD` (bucket of one), so the second
/// goes on a `PERIOD` after the first was admitted. Long, so that the test sees it held even
/// when a busy machine is slow to look.
const PERIOD: Duration = Duration::from_secs(2);

#[test]
fn a_queued_request_keeps_its_body_until_its_turn() {
    let (up_port, seen) = upstream();
    let config = json!({"rules": [{"name": "api", "limit": format!("1/{}s", PERIOD.as_secs()), "identifier": "global",
        "strategy": {"type": "leaky_bucket_queue", "burst": 1, "max_delay": "5s"}}]});
    let mut boot = bootstrap("local.yaml");
    adapt(&mut boot, Some(&config));
    add_cluster(&mut boot, "upstream", up_port);
    let envoy = Envoy::running(&boot, 1);

    let post = |n: u8| {
        let port = envoy.port;
        let body = format!("POST /api/{n} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\r\nhello");
        std::thread::spawn(move || send_raw(port, body.as_bytes()))
    };
    // The first is admitted after this, so the second's turn is at least a PERIOD after it.
    let sent_first = Instant::now();
    let first = post(1).join().expect("first").expect("an answer");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(seen.recv_timeout(LIMIT).ok().as_deref(), Some("POST /api/1 HTTP/1.1"));
    let before = routed(&envoy);

    // The second is queued; its body, sent with it, must wait with it. The filter counts it
    // allowed when it decides, and hands the count to Envoy at its next tick: a request let
    // through then (on its headers or its body) would have reached the router already, in the
    // callback that decided it. So once the count shows it, the router must not have it.
    let second = post(2);
    wait_until(LIMIT, || envoy.stat("wasmcustom.sluice.rule.api.allowed") == 2).expect("the second request was never decided");
    assert_eq!(routed(&envoy), before, "the queued request went on at once");
    assert_eq!(seen.recv_timeout(LIMIT).ok().as_deref(), Some("POST /api/2 HTTP/1.1"), "the queued request never went on");
    // Its delay is rounded up to the ms, on the filter's clock: a few ms of slack.
    let waited = sent_first.elapsed();
    assert!(waited + Duration::from_millis(10) >= PERIOD, "the queued request went on after {waited:?}, before its turn");
    assert_eq!(second.join().expect("second").expect("an answer").status, 200);
}
