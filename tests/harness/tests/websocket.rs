//! The real filter (sluice.wasm) on a WebSocket connection's frames, through the body callbacks
//! as Envoy hands them over after an upgrade.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use sluice::websocket::frame;
use sluice_harness::HttpResponse;

use common::sluice;

#[test]
fn a_frame_length_with_its_top_bit_set_closes_the_connection_with_1002() {
    // RFC 6455 forbids the top bit of a 64-bit length. A server reading the length as 63 bits
    // would see an empty frame and then a text frame the filter never counted.
    let mut bad = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3, 4];
    bad.extend(frame::frame(frame::TEXT, b"", Some([1, 2, 3, 4])));
    let mut client = frame::frame(frame::TEXT, b"one", Some([5, 6, 7, 8]));
    client.extend(&bad);
    client.extend(frame::frame(frame::TEXT, b"after", Some([5, 6, 7, 8])));

    let seen = Rc::new(RefCell::new(Vec::new()));
    let upstream = Rc::clone(&seen);
    let rule = json!({"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": "100/min",
                      "strategy": "fixed_window", "identifier": "global"});
    let mut host = sluice()
        .config(json!({"rules": [rule]}).to_string())
        .upstream(move |req| {
            *upstream.borrow_mut() = req.body.clone();
            // The server answers the close it gets with its own.
            HttpResponse::new(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .body(frame::close_frame(1002, "", None))
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    let resp = host.request("GET", "/ws/chat").header("upgrade", "websocket").body(client).send();

    let mut reason = 1002u16.to_be_bytes().to_vec();
    reason.extend_from_slice(b"invalid frame length");
    let mut want = frame::frame(frame::TEXT, b"one", Some([5, 6, 7, 8]));
    let close_at = want.len();
    let to_server = seen.borrow().clone();
    assert_eq!(&to_server[..close_at], &want[..], "the message before it passes");
    // Sluice's close, masked with its own key: unmask to compare.
    let (head, payload) = to_server[close_at..].split_at(6);
    assert_eq!(&head[..2], &[0x88, 0x80 | reason.len() as u8], "then a close, and nothing else: {to_server:?}");
    let mut payload = payload.to_vec();
    frame::apply_mask(&mut payload, [head[2], head[3], head[4], head[5]], 0);
    assert_eq!(payload, reason);
    want = frame::close_frame(1002, "invalid frame length", None);
    assert_eq!((resp.status, resp.body), (101, want), "the client gets sluice's close in place of the server's");
}

/// With payload-byte costs each later frame of a message is judged on its own: it is not a new
/// message to count as admitted, but what else it does counts (here a shadow rule it takes over
/// its limit).
#[test]
fn a_later_frame_over_a_shadow_byte_limit_counts_as_shadow_limited_not_as_another_message() {
    let mut first = frame::frame(frame::TEXT, b"123456", Some([1, 2, 3, 4]));
    first[0] &= 0x7f; // no FIN: a continuation follows
    let mut client = first;
    client.extend(frame::frame(frame::CONTINUATION, b"789012", Some([1, 2, 3, 4])));
    let rule = json!({"name": "bytes", "per": "message", "match": {"path": "/ws/**"}, "limit": "10/min",
                      "cost": "payload_bytes", "shadow": true, "strategy": "fixed_window", "identifier": "global"});
    let mut host = sluice()
        .config(json!({"rules": [rule]}).to_string())
        .upstream(|_| HttpResponse::new(101).header("upgrade", "websocket").header("connection", "Upgrade"))
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    let resp = host.request("GET", "/ws/chat").header("upgrade", "websocket").body(client).send();
    assert_eq!(resp.status, 101);
    // Counts reach the host from the filter's tick.
    host.advance(Duration::from_secs(1));
    let stat = |what: &str| host.metric(&format!("sluice.rule.bytes.{what}")).unwrap_or(0);
    assert_eq!((stat("messages_admitted"), stat("messages_shadow_limited")), (1, 1), "{:?}", host.metrics());
    assert_eq!(stat("messages_dropped"), 0);
}

/// Envoy upgrades a request on `Upgrade: websocket` and `Connection: upgrade` whatever its
/// method: a backend that accepts a POST handshake gets its messages counted like a GET's. A
/// POST without `Connection: upgrade` is an ordinary request, to Envoy and to sluice: its body
/// passes as it is, never read as frames.
#[test]
fn a_post_handshake_that_envoy_upgrades_has_its_messages_counted() {
    let (mut host, seen) = upgrading_host(false);
    let messages = three_messages();
    let two =
        frame::frame(frame::TEXT, b"one", Some([1, 2, 3, 4])).len() + frame::frame(frame::TEXT, b"two", Some([1, 2, 3, 4])).len();

    let resp = host
        .request("POST", "/ws/chat")
        .header("upgrade", "websocket")
        .header("connection", "keep-alive, Upgrade")
        .body(messages.clone())
        .send();
    assert_eq!(resp.status, 101);
    let to_server = seen.borrow().clone().unwrap_or_default();
    assert_eq!(&to_server[..two], &messages[..two], "the first two messages pass");
    assert!(!to_server[two..].starts_with(&messages[two..]), "the third, over the limit, does not: {to_server:?}");
    host.advance(Duration::from_secs(1));
    let stat = |host: &sluice_harness::Host, what: &str| host.metric(&format!("sluice.rule.chat.{what}")).unwrap_or(0);
    assert_eq!(stat(&host, "messages_admitted"), 2, "{:?}", host.metrics());

    // The same bytes as an ordinary POST's body: passed whole, nothing counted.
    let resp = host.request("POST", "/ws/chat").header("upgrade", "websocket").body(messages.clone()).send();
    assert_eq!(resp.status, 101);
    assert_eq!(seen.borrow().as_deref(), Some(&messages[..]));
    host.advance(Duration::from_secs(1));
    assert_eq!(stat(&host, "messages_admitted"), 2, "{:?}", host.metrics());
}

/// Envoy refusing a WebSocket body buffer (its size, a read or a rewrite) leaves the filter
/// unable to follow the frames, so no later message could be judged. Under an enforced rule the
/// connection is reset and nothing reaches the server; under shadow rules only it passes as it
/// would without the filter. Both are counted.
#[test]
fn a_connection_whose_body_envoy_will_not_lend_is_reset_under_an_enforced_rule() {
    let messages = three_messages();
    for (shadow, call) in [(false, 0), (false, 1), (false, 2), (false, 3), (true, 0), (true, 1)] {
        let (mut host, seen) = upgrading_host(shadow);
        // The body's calls in order: its size, a read of its first window, then (the third
        // message dropped, enforced rules only) a read and a rewrite of the prefix.
        host.faults().fail_body_call_after(call, sluice_harness::Status::NotFound);
        let resp = host.request("GET", "/ws/chat").header("upgrade", "websocket").body(messages.clone()).send();
        host.advance(Duration::from_secs(1));
        let errors = host.metric("sluice.websocket.host_errors").unwrap_or(0);
        assert_eq!(errors, 1, "shadow {shadow}, call {call}: {:?}", host.metrics());
        if shadow {
            assert_eq!(resp.status, 101);
            assert_eq!(seen.borrow().as_deref(), Some(&messages[..]), "passed through whole");
        } else {
            assert_eq!(resp.origin, sluice_harness::Origin::Reset, "call {call}: {resp:?}");
            assert_eq!(*seen.borrow(), None, "call {call}: nothing reaches the server");
        }
    }
}

/// A Redis message rule whose calls fail, `on_error: deny` and `close_after: 1`: the connection
/// is closed on the first message, and the close says the rule could not be checked (Redis
/// decided nothing, so no limit was exceeded).
#[test]
fn a_message_rule_redis_cannot_decide_closes_saying_it_could_not_be_checked() {
    let rule = json!({"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": "2/min", "identifier": "global",
                      "backend": "redis", "on_error": "deny", "over_limit": {"close_after": 1}});
    let seen = Rc::new(RefCell::new(None));
    let upstream = Rc::clone(&seen);
    let mut host = sluice()
        .config(json!({"redis": {"cluster": "sluice_gateway", "timeout_ms": 20}, "rules": [rule]}).to_string())
        .on_http_call(|_| sluice_harness::CalloutReply::Fail)
        .upstream(move |req| {
            *upstream.borrow_mut() = Some(req.body.clone());
            HttpResponse::new(101).header("upgrade", "websocket").header("connection", "Upgrade")
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    let resp = host.request("GET", "/ws/chat").header("upgrade", "websocket").body(three_messages()).send();
    assert_eq!(resp.status, 101);
    // The server gets nothing but sluice's close: one short masked frame.
    let to_server = seen.borrow().clone().unwrap_or_default();
    assert!(
        to_server.len() > 6 && to_server[0] == 0x88 && usize::from(to_server[1] & 0x7f) == to_server.len() - 6,
        "{to_server:?}"
    );
    let mut payload = to_server[6..].to_vec();
    frame::apply_mask(&mut payload, [to_server[2], to_server[3], to_server[4], to_server[5]], 0);
    let mut close = 1008u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"rate limit \"chat\" could not be checked");
    assert_eq!(String::from_utf8_lossy(&payload), String::from_utf8_lossy(&close));
    assert!(host.traps().is_empty());
}

/// Three text messages, masked as a client sends them.
fn three_messages() -> Vec<u8> {
    ["one", "two", "three"].iter().flat_map(|m| frame::frame(frame::TEXT, m.as_bytes(), Some([1, 2, 3, 4]))).collect()
}

/// The filter with one message rule of two messages a minute on `/ws/**`, in front of a server
/// that upgrades every request; the second value holds what the server last received.
fn upgrading_host(shadow: bool) -> (sluice_harness::Host, Rc<RefCell<Option<Vec<u8>>>>) {
    let rule = json!({"name": "chat", "per": "message", "match": {"path": "/ws/**"}, "limit": "2/min",
                      "strategy": "fixed_window", "identifier": "global", "shadow": shadow});
    let seen = Rc::new(RefCell::new(None));
    let upstream = Rc::clone(&seen);
    let host = sluice()
        .config(json!({"rules": [rule]}).to_string())
        .upstream(move |req| {
            *upstream.borrow_mut() = Some(req.body.clone());
            HttpResponse::new(101).header("upgrade", "websocket").header("connection", "Upgrade")
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()));
    (host, seen)
}
