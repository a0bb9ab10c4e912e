//! sluice.wasm's Redis path in the harness, with its HTTP callouts forwarded to a real
//! sluice-gateway in front of a real redis-server: the harness picks which callout fails and
//! how, which real Envoy cannot. Needs `target/release/sluice-gateway` (scripts/test.sh builds
//! it before the tests).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Redis;
use serde_json::json;
use sluice_harness::{forward, CalloutFault, Host, Response};

const TOKEN: &str = "harness-secret";

/// The gateway process; killed on drop.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `GET /healthz` on `addr` answers 200 (the gateway is up and reaches Redis).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 256];
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").is_ok()
        && s.read(&mut buf).map(|n| buf[..n].starts_with(b"HTTP/1.1 200")).unwrap_or(false)
}

/// sluice-gateway (the release binary) on a free loopback port, in front of a redis-server.
fn gateway_and_redis() -> (SocketAddr, Gateway, Redis) {
    let redis = Redis::start();
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/sluice-gateway");
    assert!(bin.exists(), "{} is missing: run `cargo build --release -p sluice-gateway` first", bin.display());
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap();
    let gateway = Gateway(
        Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--redis-url", &format!("redis://{}", redis.addr)])
            .args(["--token", TOKEN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice-gateway"),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(addr) {
        assert!(Instant::now() < deadline, "sluice-gateway did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (addr, gateway, redis)
}

fn remaining(resp: &Response) -> Option<u64> {
    resp.header("ratelimit")?.split(';').find_map(|p| p.strip_prefix("r="))?.parse().ok()
}

#[test]
fn the_callout_the_harness_breaks_follows_on_error_and_the_others_count_in_redis() {
    let (addr, _gateway, _redis) = gateway_and_redis();
    let config = json!({
        "redis": {"cluster": "sluice_gateway", "token": TOKEN, "timeout_ms": 100,
                  "breaker": {"failure_threshold": 3, "open_ms": 1000, "success_threshold": 1}},
        "rules": [{"name": "api", "limit": "5/hour", "identifier": "global", "backend": "redis", "on_error": "deny"}],
    });
    // Two proxies on one gateway: only Redis can make their counts add up.
    let build = || -> Host {
        common::sluice()
            .config(config.to_string())
            .workers(2)
            .on_http_call(forward::http_to(addr))
            .build()
            .unwrap_or_else(|e| panic!("{e}: {:?}", e.logs()))
    };
    let (mut a, mut b) = (build(), build());
    let r = a.request("GET", "/").send();
    assert!(r.admitted(), "{r:?}");
    assert_eq!(remaining(&r), Some(4));
    assert_eq!(remaining(&b.request("GET", "/").send()), Some(3), "the other proxy sees the same count");

    // The third callout times out, the fourth is reset: on_error deny limits both, and neither
    // reached Redis.
    a.faults().next_callouts(1, CalloutFault::Timeout);
    assert_eq!(a.request("GET", "/").send().status, 429);
    a.faults().next_callouts(1, CalloutFault::Fail);
    assert_eq!(a.request("GET", "/").send().status, 429);
    let logs: Vec<String> = a.logs().iter().map(|l| l.message.clone()).collect();
    assert!(logs.iter().any(|m| m.contains("api") && m.contains("redis")), "the failure is logged: {logs:#?}");

    // Healthy again (the breaker needs 3 failures in a row to open): the count goes on from 2.
    let r = a.request("GET", "/").send();
    assert!(r.admitted(), "{r:?}");
    assert_eq!(remaining(&r), Some(2));
    assert!(b.request("GET", "/").send().admitted());
    assert!(a.request("GET", "/").send().admitted());
    assert_eq!(b.request("GET", "/").send().status, 429, "5 admitted in all");
    assert!(a.traps().is_empty() && b.traps().is_empty());
    assert_eq!(
        a.callouts().len(),
        5,
        "one callout per request on proxy a: the gateway loads the script, so no NOSCRIPT round trip"
    );
}
