//! WebSocket message limits through a real Envoy: the `websockets` library from PyPI on both
//! sides (tests/e2e/ws: an echo server, and a client driving the library's own protocol over a
//! socket so the test decides how bytes are cut), envoy/websocket.yaml with its plugin config
//! replaced, and Redis with sluice-gateway for the rule shared by two proxies.
//!
//! Each scenario has its own rule, path and identity, so that one Envoy serves them all. Limits
//! are per hour with exact strategies: no window edge or refill happens while a test runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use sluice_e2e::*;

fn script(name: &str) -> String {
    repo().join("tests/e2e/ws").join(name).display().to_string()
}

/// The echo application: python3 tests/e2e/ws/echo_server.py, stopped on drop.
struct Echo {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Echo {
    fn start(deflate: bool) -> Echo {
        let dir = TempDir::new("ws-echo");
        let log = dir.0.join("echo.jsonl");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(script("echo_server.py")).arg(port.to_string()).arg(&log);
        if !deflate {
            cmd.arg("--no-deflate");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (scripts/setup.sh installs websockets from PyPI)");
        let stdin = child.stdin.take();
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut line).expect("echo server output");
        assert_eq!(line.trim(), "ready", "echo server did not start (is websockets installed? scripts/setup.sh)");
        Echo { child, stdin, port, log, _dir: dir }
    }

    /// What the server logged: every message it received and every connection's end.
    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The messages the server received on `path`, as their text (binary as hex).
    fn received(&self, path: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "message" && e["path"] == path)
            .map(|e| e["data"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The close frames the server received from its clients on `path`: (code, reason). The
    /// server logs a connection's close after it has answered it, so possibly after the client
    /// is done: looked for until one is there (at most 5 s).
    fn closes(&self, path: &str) -> Vec<(Option<u64>, Option<String>)> {
        let found = || -> Vec<(Option<u64>, Option<String>)> {
            self.events()
                .iter()
                .filter(|e| e["event"] == "closed" && e["path"] == path)
                .map(|e| (e["code"].as_u64(), e["reason"].as_str().map(str::to_string)))
                .collect()
        };
        let _ = wait_until(std::time::Duration::from_secs(5), || !found().is_empty());
        found()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/e2e/ws/client.py with `script` and returns what it saw.
fn client(script_json: &Value) -> Value {
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(script("client.py"))
        .arg(script_json.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    assert!(out.status.success(), "client failed for {script_json}");
    eprintln!("client {} took {} ms", script_json["url"], started.elapsed().as_millis());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn texts(n: usize, prefix: &str) -> Vec<Value> {
    (1..=n).map(|i| json!({"text": format!("{prefix}{i}")})).collect()
}

/// The texts a client received that are not sluice's notices, and the notices.
fn split_received(r: &Value) -> (Vec<String>, Vec<Value>) {
    let mut echoes = Vec::new();
    let mut notices = Vec::new();
    for m in r["received"].as_array().into_iter().flatten() {
        let data = m["data"].as_str().unwrap_or_default();
        match serde_json::from_str::<Value>(data) {
            Ok(v) if v["type"] == "rate_limited" => notices.push(v),
            _ => echoes.push(data.to_string()),
        }
    }
    (echoes, notices)
}

fn envoy_for(config: &Value, upstream: u16, extra: impl FnOnce(&mut Value)) -> Envoy {
    let mut boot = bootstrap("websocket.yaml");
    adapt(&mut boot, Some(config));
    add_cluster(&mut boot, "upstream", upstream);
    extra(&mut boot);
    Envoy::running(&boot, 2)
}

fn url(envoy: &Envoy, path: &str) -> String {
    format!("ws://127.0.0.1:{}{path}", envoy.port)
}

fn rule(name: &str, limit: &str, extra: Value) -> Value {
    let mut r = json!({"name": name, "per": "message", "match": {"path": format!("/ws/{name}")}, "limit": limit,
                       "strategy": "sliding_window_log"});
    if let (Value::Object(r), Value::Object(e)) = (&mut r, extra) {
        r.extend(e);
    }
    r
}

#[test]
fn message_limits_through_envoy() {
    let echo = Echo::start(true);
    let config = json!({"namespace": "ws-e2e", "rules": [
        rule("count", "5/h", json!({})),
        rule("deflate", "4/h", json!({})),
        rule("fragments", "3/h", json!({})),
        rule("split", "4/h", json!({})),
        rule("notify", "2/h", json!({"over_limit": {"notify": true}})),
        rule("close", "2/h", json!({"over_limit": {"close_after": 2}})),
        rule("shared", "5/h", json!({"identifier": {"header": "x-user"}})),
        rule("bytes", "100/h", json!({"cost": "payload_bytes"})),
        rule("zbytes", "100/h", json!({"cost": "payload_bytes"})),
        {"name": "upgrades", "match": {"path": "/ws/**"}, "limit": "1000/h"}
    ]});
    let envoy = envoy_for(&config, echo.port, |_| {});
    let stat = |rule: &str, what: &str| envoy.settled_stat(&format!("wasmcustom.sluice.rule.{rule}.{what}"));

    // Exact counts: 12 sent, 5 reach the server and come back, the rest never leave Envoy.
    let r = client(&json!({"url": url(&envoy, "/ws/count"), "messages": texts(12, "m"), "expect": 5}));
    assert_eq!(r["status"], 101);
    let (echoes, notices) = split_received(&r);
    assert_eq!(echoes, vec!["m1", "m2", "m3", "m4", "m5"]);
    assert!(notices.is_empty(), "no notify: {notices:?}");
    assert_eq!(echo.received("/ws/count"), vec!["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(echo.closes("/ws/count"), vec![(Some(1000), Some("done".to_string()))], "the client's own close still passes");
    assert_eq!((stat("count", "messages_admitted"), stat("count", "messages_dropped")), (5, 7));

    // permessage-deflate: the 101 is amended so the client compresses each message on its own,
    // and the server still reads every message after the ones removed.
    let long = |i: usize| format!("{}{i}", "compressible text ".repeat(20));
    let msgs: Vec<Value> = (1..=9).map(|i| json!({"text": long(i)})).collect();
    let r = client(&json!({"url": url(&envoy, "/ws/deflate"), "deflate": true, "messages": msgs, "expect": 4}));
    let ext = r["extensions"].as_str().unwrap_or_default();
    assert!(ext.contains("permessage-deflate") && ext.contains("client_no_context_takeover"), "{ext}");
    let want: Vec<String> = (1..=4).map(long).collect();
    assert_eq!(split_received(&r).0, want);
    assert_eq!(echo.received("/ws/deflate"), want);

    // Fragmented messages, pings between the fragments: each message counts once, whole.
    let frag = |i: usize| json!({"fragments": [format!("f{i}a"), format!("f{i}b"), format!("f{i}c")], "pings": true});
    let r = client(&json!({"url": url(&envoy, "/ws/fragments"), "messages": (1..=7).map(frag).collect::<Vec<_>>(), "expect": 3}));
    assert_eq!(split_received(&r).0, vec!["f1af1bf1c", "f2af2bf2c", "f3af3bf3c"]);
    assert_eq!(echo.received("/ws/fragments"), vec!["f1af1bf1c", "f2af2bf2c", "f3af3bf3c"]);

    // Every frame written a byte at a time (headers split across chunks), compressed and
    // fragmented too.
    let mut msgs = texts(3, "s");
    msgs.insert(1, json!({"fragments": ["x", "y", "z"], "pings": true}));
    msgs.extend(texts(3, "t"));
    let r = client(
        &json!({"url": url(&envoy, "/ws/split"), "messages": msgs, "split": 1, "deflate": true, "timeout": 20, "expect": 4}),
    );
    assert_eq!(split_received(&r).0, vec!["s1", "xyz", "s2", "s3"]);
    assert_eq!(echo.received("/ws/split"), vec!["s1", "xyz", "s2", "s3"]);

    // Drop and notify: the client hears why, the server never sees the dropped messages.
    let r = client(&json!({"url": url(&envoy, "/ws/notify"), "messages": texts(5, "n"), "expect": 3}));
    let (echoes, notices) = split_received(&r);
    assert_eq!(echoes, vec!["n1", "n2"]);
    assert!((1..=3).contains(&notices.len()), "one notice per drop, fewer while one is on its way: {notices:?}");
    for n in &notices {
        assert_eq!(n["rule"], "notify");
        assert!(n["retry_after"].as_u64().unwrap_or(0) >= 1 && n["retry_after_ms"].as_u64().unwrap_or(0) >= 1, "{n}");
    }
    assert_eq!(echo.received("/ws/notify"), vec!["n1", "n2"]);
    assert_eq!(echo.closes("/ws/notify"), vec![(Some(1000), Some("done".to_string()))]);

    // Close after 2 violations: both sides get a close with 1008 naming the rule.
    let r = client(&json!({"url": url(&envoy, "/ws/close"), "messages": texts(6, "c"), "expect": 2}));
    assert_eq!(split_received(&r).0, vec!["c1", "c2"]);
    assert_eq!(r["close"], json!({"code": 1008, "reason": "rate limit \"close\" exceeded"}));
    assert_eq!(echo.received("/ws/close"), vec!["c1", "c2"]);
    assert_eq!(echo.closes("/ws/close"), vec![(Some(1008), Some("rate limit \"close\" exceeded".to_string()))]);
    assert_eq!(stat("close", "connections_closed"), 1);
    assert_eq!(stat("close", "messages_dropped"), 2, "the first drop and the message that closed");

    // Two connections of one identity share one budget.
    let handles: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let s = json!({"url": url(&envoy, "/ws/shared"), "headers": {"x-user": "u1"}, "messages": texts(4, tag)});
            std::thread::spawn(move || client(&s))
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| split_received(&h.join().unwrap()).0.len()).sum();
    assert_eq!(total, 5);
    assert_eq!(echo.received("/ws/shared").len(), 5);
    let other =
        client(&json!({"url": url(&envoy, "/ws/shared"), "headers": {"x-user": "u2"}, "messages": texts(1, "o"), "expect": 1}));
    assert_eq!(split_received(&other).0, vec!["o1"], "another identity has its own budget");

    // Payload bytes: 40 + 40 fit in 100, the third 40 does not; a fragmented message whose
    // second fragment goes over closes the connection (a message cannot be cut).
    let b40 = |c: char| json!({"text": c.to_string().repeat(40)});
    let r = client(&json!({"url": url(&envoy, "/ws/bytes"), "messages": [b40('a'), b40('b'), b40('c')], "expect": 2}));
    assert_eq!(split_received(&r).0.len(), 2);
    let r = client(&json!({"url": url(&envoy, "/ws/bytes"), "messages": [{"fragments": ["d".repeat(10), "e".repeat(30)]}]}));
    assert_eq!(r["close"]["code"], 1008, "{r}");
    assert_eq!(echo.received("/ws/bytes").len(), 2);

    // Compressed messages cost the bytes on the wire, never inflated: three messages of 400
    // bytes that deflate to a few bytes each fit in 100, and the same text uncompressed does not.
    let a400 = json!({"text": "a".repeat(400)});
    let r = client(&json!({"url": url(&envoy, "/ws/zbytes"), "deflate": true, "messages": [a400, a400, a400], "expect": 3}));
    assert_eq!(split_received(&r).0.len(), 3, "{r}");
    let r = client(&json!({"url": url(&envoy, "/ws/zbytes"), "messages": [a400]}));
    assert!(split_received(&r).0.is_empty(), "{r}");
    assert_eq!(echo.received("/ws/zbytes").len(), 3);
    assert_eq!((stat("zbytes", "messages_admitted"), stat("zbytes", "messages_dropped")), (3, 1));
    eprintln!("message_limits_through_envoy: {} events at the server", echo.events().len());
}

#[test]
fn a_redis_message_rule_is_shared_by_two_proxies() {
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let echo = Echo::start(false);
    let config = json!({"namespace": "ws-redis", "redis": {"cluster": "sluice_gateway", "token": GATEWAY_TOKEN, "timeout_ms": 2000},
        "rules": [rule("chat", "6/h", json!({"backend": "redis", "on_error": "deny", "identifier": {"header": "x-user"},
                                              "over_limit": {"notify": true}}))]});
    let with_gateway = |boot: &mut Value| add_cluster(boot, "sluice_gateway", gateway.port);
    let (a, b) = (envoy_for(&config, echo.port, with_gateway), envoy_for(&config, echo.port, with_gateway));
    // Two clients of one identity, one per proxy, at once; one of them writes its frames in
    // 3-byte pieces, so messages wait for Redis with more bytes arriving behind them.
    let scripts = [
        json!({"url": url(&a, "/ws/chat"), "headers": {"x-user": "shared"}, "messages": texts(5, "a")}),
        json!({"url": url(&b, "/ws/chat"), "headers": {"x-user": "shared"}, "messages": texts(5, "b"), "split": 3}),
    ];
    let handles: Vec<_> = scripts.into_iter().map(|s| std::thread::spawn(move || client(&s))).collect();
    let results: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let echoed: usize = results.iter().map(|r| split_received(r).0.len()).sum();
    let notices: usize = results.iter().map(|r| split_received(r).1.len()).sum();
    assert_eq!(echoed, 6, "{results:?}");
    assert!(notices >= 1, "the clients over the limit are told: {results:?}");
    assert_eq!(echo.received("/ws/chat").len(), 6);
    let stat = |e: &Envoy, what: &str| e.settled_stat(&format!("wasmcustom.sluice.rule.chat.{what}"));
    assert_eq!(stat(&a, "messages_admitted") + stat(&b, "messages_admitted"), 6);
    assert_eq!(stat(&a, "messages_dropped") + stat(&b, "messages_dropped"), 4);
    assert_eq!(stat(&a, "store_errors") + stat(&b, "store_errors"), 0);
    // A third connection later, on either proxy: still over the shared limit.
    let r = client(&json!({"url": url(&a, "/ws/chat"), "headers": {"x-user": "shared"}, "messages": texts(1, "late")}));
    assert!(split_received(&r).0.is_empty());
}

/// A client frame with the zero masking key (a valid key: the payload reads as it is).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_client_flooding_while_its_message_waits_for_redis_is_cut_off_by_envoy() {
    use std::io::{Read, Write};
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let echo = Echo::start(false);
    let config = json!({"namespace": "ws-flood", "redis": {"cluster": "sluice_gateway", "token": GATEWAY_TOKEN, "timeout_ms": 10000},
        "rules": [rule("flood", "1000/h", json!({"backend": "redis", "on_error": "allow"}))]});
    let envoy = envoy_for(&config, echo.port, |boot| add_cluster(boot, "sluice_gateway", gateway.port));
    // Redis answers nothing: the first message waits, and the client's direction is held.
    redis.freeze(true);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    conn.set_write_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let upgrade = format!(
        "GET /ws/flood HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        envoy.port
    );
    conn.write_all(upgrade.as_bytes()).expect("upgrade");
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).expect("the 101");
    assert_eq!(&head, b"HTTP/1.1 101");
    // Then far more than Envoy buffers for a stream (per_connection_buffer_limit_bytes, 1 MiB by
    // default): Envoy resets the stream instead of buffering without end. Bounded: 16 MiB at most.
    let frame = masked_text(&[b'x'; 1000]);
    let mut sent = 0usize;
    let cut = (0..16 * 1024).find(|_| {
        let failed = conn.write_all(&frame).is_err();
        sent += frame.len();
        failed
    });
    redis.freeze(false);
    assert!(cut.is_some(), "{sent} bytes were taken while a message waited for Redis");
    eprintln!("cut off after about {} KiB", sent / 1024);
    assert!(envoy.stat("http.ingress.downstream_rq_too_large") >= 1);
    assert!(echo.received("/ws/flood").is_empty(), "nothing reached the server unjudged");
}

/// A message held by a queueing rule is released by the root's tick, and the messages after it
/// are then decided in Redis from the root: their answers come back there, and must still
/// reach the connection (they did not: the stream stalled, its close never passed).
#[test]
fn messages_released_by_the_tick_are_still_decided_in_redis() {
    let redis = Redis::start();
    let gateway = Gateway::start(&["--redis-url", &redis.url()]);
    let echo = Echo::start(false);
    let config = json!({"namespace": "ws-paced", "redis": {"cluster": "sluice_gateway", "token": GATEWAY_TOKEN, "timeout_ms": 2000},
    "rules": [
        rule("paced", "100/h", json!({"backend": "redis", "on_error": "deny"})),
        {"name": "pace", "per": "message", "match": {"path": "/ws/paced"}, "limit": "4/s",
         "strategy": {"type": "leaky_bucket_queue", "burst": 1, "max_delay": "5s"}}
    ]});
    let with_gateway = |boot: &mut Value| add_cluster(boot, "sluice_gateway", gateway.port);
    let envoy = envoy_for(&config, echo.port, with_gateway);
    // Quiet for a second before the close: the queue spaces the messages 250 ms apart.
    let r = client(&json!({"url": url(&envoy, "/ws/paced"), "messages": texts(4, "m"), "quiet_ms": 1000, "timeout": 10}));
    assert_eq!(split_received(&r).0, vec!["m1", "m2", "m3", "m4"], "{r}");
    assert_eq!(r["close"], json!({"code": 1000, "reason": "done"}), "the close passed: {r}");
    assert_eq!(echo.received("/ws/paced"), vec!["m1", "m2", "m3", "m4"]);
}

/// Two filter configs in one VM (two listeners here; a config update leaves the old one with
/// the connections opened under it): each root's tick may release any held connection of the
/// worker, and a connection must be judged by the config it was opened under. Judged by the
/// other, its rule numbers named rules that config lacks, and the VM trapped.
#[test]
fn a_connection_is_judged_by_its_own_config_whichever_root_ticks() {
    let echo = Echo::start(false);
    let unmatched = |name: &str| json!({"name": name, "match": {"path": "/nowhere"}, "limit": "1/h"});
    let config = json!({"namespace": "ws-own", "rules": [unmatched("a"), unmatched("b"),
        {"name": "pace", "per": "message", "match": {"path": "/ws/own"}, "limit": "50/s",
         "strategy": {"type": "leaky_bucket_queue", "burst": 1, "max_delay": "5s"}}]});
    let other = json!({"namespace": "ws-other", "rules": [
        {"name": "other", "per": "message", "limit": "1000/s", "strategy": {"type": "leaky_bucket_queue", "max_delay": "1s"}}]});
    let (second, own) = (free_port(), std::cell::Cell::new(0));
    let envoy = envoy_for(&config, echo.port, |boot| {
        let mut listener = boot["static_resources"]["listeners"][0].clone();
        own.set(listener["address"]["socket_address"]["port_value"].as_u64().unwrap_or(0));
        listener["name"] = "second".into();
        listener["address"]["socket_address"]["port_value"] = second.into();
        let filter = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        filter["stat_prefix"] = "second".into();
        filter["http_filters"][0]["typed_config"]["config"]["configuration"]["value"] = other.to_string().into();
        // The other config's listener first: its root is made first, so on each worker its
        // tick, of the same period, comes first and finds the held connection.
        if let Value::Array(listeners) = &mut boot["static_resources"]["listeners"] {
            listeners.insert(0, listener);
        }
    });
    // Connections one after another, each with messages paced 20 ms apart: each hold is
    // released by whichever root ticks first, which moves as the two roots' ticks drift.
    let url = format!("ws://127.0.0.1:{}/ws/own", own.get());
    for c in 0..6 {
        let prefix = format!("c{c}m");
        let r = client(&json!({"url": url, "messages": texts(6, &prefix), "quiet_ms": 300, "timeout": 10}));
        let sent: Vec<String> = (1..=6).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(split_received(&r).0, sent, "connection {c}: {r}");
        assert_eq!(r["close"], json!({"code": 1000, "reason": "done"}), "connection {c}: the close passed: {r}");
    }
    assert_eq!(echo.received("/ws/own").len(), 36);
    let log = envoy.log_text();
    assert!(!log.contains("panicked") && !log.contains("Function: proxy_on_tick failed"), "the VM trapped:\n{log}");
}

/// A queued message holds the client's stream until its time. When the client's next bytes
/// arrive after that time but before the root's tick, the stream goes on from their callback,
/// and the tick must then leave it alone: it found the connection still registered as held,
/// rewrote a buffer the stream no longer held, and gave the connection up as broken, passing
/// every later message unjudged. Bytes a few milliseconds apart (one per write) meet that
/// window at almost every hold.
#[test]
fn a_stream_released_by_its_own_bytes_is_left_alone_by_the_tick() {
    let echo = Echo::start(false);
    let config = json!({"namespace": "ws-trickle", "rules": [
        {"name": "trickle", "per": "message", "match": {"path": "/ws/trickle"}, "limit": "50/s",
         "strategy": {"type": "leaky_bucket_queue", "burst": 1, "max_delay": "5s"}}]});
    let envoy = envoy_for(&config, echo.port, |_| {});
    let r = client(&json!({"url": url(&envoy, "/ws/trickle"), "messages": texts(12, "t"), "split": 1,
                           "quiet_ms": 500, "timeout": 20}));
    let sent: Vec<String> = (1..=12).map(|i| format!("t{i}")).collect();
    assert_eq!(split_received(&r).0, sent, "{r}");
    assert_eq!(r["close"], json!({"code": 1000, "reason": "done"}), "{r}");
    assert_eq!(echo.received("/ws/trickle"), sent);
    let log = envoy.log_text();
    assert!(!log.contains("passing the connection through"), "sluice gave the connection up:\n{log}");
}

/// Envoy upgrades on `Upgrade: websocket` and `Connection: upgrade` whatever the method: a POST
/// handshake that a backend accepts (here a bare socket answering 101 to anything) reaches it,
/// and its messages are counted as a GET's are. Before, sluice read only a GET as an upgrade,
/// and every message of such a connection passed uncounted.
#[test]
fn a_post_handshake_envoy_upgrades_has_its_messages_counted() {
    use sluice::websocket::frame;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    /// Reads up to the blank line that ends a message head: the head, and the bytes past it.
    fn read_head(conn: &mut TcpStream, what: &str) -> (String, Vec<u8>) {
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = got.split_off(at + 4);
                return (String::from_utf8_lossy(&got).into_owned(), rest);
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => panic!("no {what}: {}", String::from_utf8_lossy(&got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    // Answers the first connection's handshake with 101 and keeps what follows it.
    let backend = std::thread::spawn(move || -> (String, Vec<u8>) {
        let until = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("Envoy never connected: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let (request, mut got) = read_head(&mut conn, "request head");
        let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        conn.write_all(answer.as_bytes()).expect("answer");
        // What follows, until Envoy closes the connection (or a quiet 5 s).
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        (request, got)
    });

    let config = json!({"namespace": "ws-post", "rules": [rule("post", "2/h", json!({"identifier": "global"}))]});
    let envoy = envoy_for(&config, port, |_| {});
    let mut client = TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect to Envoy");
    client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let handshake = "POST /ws/post HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    client.write_all(handshake.as_bytes()).expect("handshake");
    let (head, _) = read_head(&mut client, "answer to the handshake");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mask = Some([9, 8, 7, 6]);
    let sent: Vec<Vec<u8>> = ["one", "two", "three"].iter().map(|m| frame::frame(frame::TEXT, m.as_bytes(), mask)).collect();
    client.write_all(&sent.concat()).expect("messages");
    // Once the first two have reached the backend, the client hangs up and Envoy closes it.
    let admitted = "wasmcustom.sluice.rule.post.messages_admitted";
    let counted = wait_until(Duration::from_secs(10), || envoy.stat_if_present(admitted) == Some(2));
    assert!(counted.is_some(), "two messages counted: {:?}", envoy.stat_if_present(admitted));
    assert_eq!(envoy.settled_stat(admitted), 2);
    drop(client);
    let (request, to_backend) = backend.join().expect("backend");
    assert!(request.starts_with("POST /ws/post "), "{request}");
    assert!(to_backend.starts_with(&sent[..2].concat()), "the first two messages pass: {to_backend:?}");
    assert!(!to_backend.windows(sent[2].len()).any(|w| w == sent[2]), "the third, over the limit, does not");
}
