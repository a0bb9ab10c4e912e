//! Clients that misbehave on purpose, over real sockets: slow headers, bodies that never come
//! or cannot be read, connections left idle or not reading their answers, more connections than the cap, a flood
//! of /healthz, and 2,000 slow connections at once against the built binary; on h2c, more
//! streams than allowed, a huge header block, a stream that never sends its body.
//!
//! Deadlines are asserted with generous slack in one direction only (not before the configured
//! time; well within a bound that only a broken gateway reaches); speed is never asserted.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::rate::{Rate, MAX_LIMIT, MAX_PERIOD_MS};
use sluice::redis::script::Form;
use sluice::strategy::Strategy;
use support::calls::{call, sha, verdict, Call};
use support::raw::{self, BOUND};
use support::{free_ports, h2, metric_value as value, redis_cli, Http, Reaped, RedisServer, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "h0stile-t0ken";

/// A decision as the filter asks for one: the normal request.
fn decision() -> String {
    call(1).to_string()
}

/// A pipeline of `n` dry calls (nothing is written) with the most limits a rule has and the
/// largest numbers the filter sends: an answer of some 360 bytes per call.
fn big_answer(n: usize) -> String {
    let rates = [Rate { limit: MAX_LIMIT, period_ms: MAX_PERIOD_MS }; 8];
    let sha = sha();
    let one =
        Call { identity: 7, strategy: Strategy::FixedWindow, rates: &rates, cost: 1, form: Form::Sha(&sha), dry: true }.words();
    json!(vec![one; n]).to_string()
}

async fn gateway(redis: &RedisServer, extra: &[&str]) -> (TestGateway, String) {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--token", TOKEN];
    args.extend_from_slice(extra);
    let gw = TestGateway::start(&args).await;
    let addr = raw::addr(&gw.base);
    (gw, addr)
}

/// Asserts a connection was closed by a deadline: not before `configured` (less a little for
/// millisecond rounding), and long before the test's own bound.
fn closed_by_deadline(what: &str, took: Duration, configured: Duration) {
    assert!(
        took + Duration::from_millis(20) >= configured,
        "{what}: closed after {took:?}, before the configured {configured:?}"
    );
    assert!(took < BOUND, "{what}: still open after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_dropped_on_time_and_idle_keep_alive_is_not() {
    let redis = RedisServer::start();
    let header_timeout = Duration::from_millis(400);
    let (_gw, addr) = gateway(&redis, &["--header-read-timeout-ms", "400"]).await;

    // A well-behaved keep-alive connection, idle from here on.
    let mut keep = raw::connect(&addr).await;
    keep.write_all(raw::post("/", Some(TOKEN), &decision()).as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut keep).await.unwrap().0, 200);

    let started = Instant::now();
    // Connects and never sends a byte.
    let mut silent = raw::connect(&addr).await;
    // Sends half a request head and stops.
    let mut partial = raw::connect(&addr).await;
    partial.write_all(b"POST / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ").await.unwrap();
    // Sends a header byte every 50 ms, forever (bounded here to 600 bytes = 30 s).
    let trickle = tokio::spawn({
        let addr = addr.clone();
        async move {
            let started = Instant::now();
            let (mut read, mut write) = raw::connect(&addr).await.into_split();
            write.write_all(b"POST / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ").await.unwrap();
            let closed = async {
                let mut buf = [0u8; 64];
                while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
            };
            let drip = async {
                for _ in 0..600 {
                    if write.write_all(b"a").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                () = closed => {}
                () = drip => panic!("a trickled header kept its connection open for 30 s"),
            }
            started.elapsed()
        }
    });

    let got = raw::until_closed(&mut silent).await;
    assert!(got.is_empty(), "no answer is owed to a request that never came: {got:?}");
    closed_by_deadline("silent connection", started.elapsed(), header_timeout);
    raw::until_closed(&mut partial).await;
    closed_by_deadline("half a head", started.elapsed(), header_timeout);
    closed_by_deadline("trickled head", trickle.await.unwrap(), header_timeout);

    // The keep-alive connection has now been idle longer than the header deadline; that
    // deadline is for requests in progress, so it is still open and usable.
    keep.write_all(raw::post("/", Some(TOKEN), &decision()).as_bytes()).await.unwrap();
    let (status, body) = raw::read_response(&mut keep).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(verdict(&answer["result"]), (true, 3));

    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="header"}"#), 3.0);
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="idle"}"#), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_answers_not_taken_are_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let idle = Duration::from_millis(400);
    // Room for the big answer below, and time for Redis to make it.
    let big = ["--max-pipeline", "100000", "--max-body-bytes", "67108864", "--timeout-ms", "60000"];
    let (_gw, addr) = gateway(&redis, &[&["--idle-timeout-ms", "400"][..], &big].concat()).await;

    let mut conn = raw::connect(&addr).await;
    // Timed from before the request: the idle timer starts when the answer is sent, which the
    // test cannot see, and a clock started after reading it could run short.
    let started = Instant::now();
    conn.write_all(raw::post("/", Some(TOKEN), &decision()).as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut conn).await.unwrap().0, 200);
    assert!(raw::until_closed(&mut conn).await.is_empty());
    closed_by_deadline("idle keep-alive connection", started.elapsed(), idle);

    // A client that asks for a 6 MB answer and never reads it: once the socket buffers are
    // full (4 MiB at most on the sending side, by default) the answer stops moving, and the
    // gateway gives the connection up rather than hold it.
    drop(conn);
    let mut stalled = raw::connect(&addr).await;
    let body = big_answer(18_000);
    stalled.write_all(raw::post("/pipeline", Some(TOKEN), &body).as_bytes()).await.unwrap();
    let deadline = Instant::now() + BOUND;
    loop {
        let m = raw::scrape(&addr).await;
        let idle_closed = value(&m, r#"sluice_gateway_client_timeouts_total{phase="idle"}"#);
        // Open: only this scrape.
        if idle_closed == 2.0 && value(&m, "sluice_gateway_connections_open") == 1.0 {
            assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), 1.0);
            assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/pipeline",status="200"}"#), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "the stalled answer was never given up:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the buffers held is all the client gets: the answer was cut, not merely idle after.
    let got = raw::until_closed(&mut stalled).await;
    let text = String::from_utf8_lossy(&got);
    let (head, answer) = text.split_once("\r\n\r\n").expect("an answer's head");
    let declared: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    assert!(declared > 6_000_000, "{declared}: {}", &text[..text.len().min(600)]);
    assert!(answer.len() < declared, "the whole answer was delivered: the buffers were never full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_that_never_arrives_is_dropped_on_time() {
    let redis = RedisServer::start();
    let body_timeout = Duration::from_millis(500);
    let (_gw, addr) = gateway(&redis, &["--body-read-timeout-ms", "500"]).await;

    // 1 MiB declared (exactly --max-body-bytes, so not refused for size), none sent.
    let started = Instant::now();
    let mut conn = raw::connect(&addr).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 1048576\r\n");
    conn.write_all(raw::head("POST", "/pipeline", &auth).as_bytes()).await.unwrap();
    let answer = String::from_utf8(raw::until_closed(&mut conn).await).unwrap();
    closed_by_deadline("body never sent", started.elapsed(), body_timeout);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.ends_with(r#"{"error":"ERR sluice-gateway: request body not received within 500 ms"}"#), "{answer}");

    // A body trickled a byte every 50 ms: the deadline is for the whole body, not per byte.
    let started = Instant::now();
    let (mut read, mut write) = raw::connect(&addr).await.into_split();
    let auth = format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n");
    write.write_all(raw::head("POST", "/", &auth).as_bytes()).await.unwrap();
    let drip = async {
        for _ in 0..600 {
            if write.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut answer = Vec::new();
    tokio::select! {
        _ = read.read_to_end(&mut answer) => {}
        () = drip => panic!("a trickled body kept its request open for 30 s"),
    }
    closed_by_deadline("trickled body", started.elapsed(), body_timeout);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408 "));

    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="body"}"#), 2.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/pipeline",status="408"}"#), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/",status="408"}"#), 1.0);
    // Nothing is left waiting for the bodies (only this scrape is in flight).
    assert_eq!(value(&m, "sluice_gateway_requests_in_flight"), 1.0);
}

/// Scrapes until `series` satisfies `ready` (bounded).
async fn metric_until(addr: &str, series: &str, ready: impl Fn(f64) -> bool) {
    let ready = &ready;
    support::wait_until_async(&format!("{series} as awaited"), || async move {
        let v = value(&raw::scrape(addr).await, series);
        (ready(v), format!("it stayed at {v}"))
    })
    .await;
}

/// Bodies each within --max-body-bytes, but together over --max-body-bytes-in-flight: the one
/// that would pass the budget is answered 503 at once (not held until its deadline), over
/// HTTP/1.1 and on an h2c stream alike; a body holds its share while its call runs, and the
/// budget comes back as requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_share_one_budget() {
    let redis = RedisServer::start();
    let flags = [
        ["--max-body-bytes", "2048"],
        ["--max-body-bytes-in-flight", "4500"],
        ["--body-read-timeout-ms", "600000"],
        // Redis is held for a while below.
        ["--timeout-ms", "30000"],
    ]
    .concat();
    let (_gw, addr) = gateway(&redis, &flags).await;
    const HELD: &str = "sluice_gateway_body_bytes_held";
    const REFUSED: &str = "this request would pass the 4500 bytes that requests in flight may hold (--max-body-bytes-in-flight)";
    // A real call padded to 2,000 bytes (in front, so that only the whole body is the call), of
    // which 1,500 are sent now and the rest later. Each such request holds its headers (some
    // 160 bytes) and 1,500 to 2,000 bytes of buffer.
    let body = format!("{:>2000}", decision());
    let head = raw::head("POST", "/", &format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 2000\r\n"));
    // Each header field is charged its name, its value and 32 bytes (as HTTP/2 counts them).
    let fields =
        [("host", "gateway".to_string()), ("authorization", format!("Bearer {TOKEN}")), ("content-length", "2000".into())];
    let head_bytes = fields.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>() as f64;
    let mut held = Vec::new();
    for i in 1..=2 {
        let mut conn = raw::connect(&addr).await;
        conn.write_all(format!("{head}{}", &body[..1500]).as_bytes()).await.unwrap();
        held.push(conn);
        // Once its buffer holds all 1,500 bytes, the claim grows no more.
        metric_until(&addr, HELD, |v| v >= (head_bytes + 1500.0) * f64::from(i)).await;
    }
    let both = value(&raw::scrape(&addr).await, HELD);
    assert!((3000.0..=4500.0).contains(&both), "{both}");

    // A third would pass 4,500 bytes: refused now, with the reason, and it holds nothing.
    let mut third = raw::connect(&addr).await;
    third.write_all(format!("{head}{}", &body[..1500]).as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&raw::until_closed(&mut third).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains(REFUSED), "{answer}");
    // The same on an h2c stream, which ends alone: the connection serves the next one.
    let (mut h2c, _) = h2::connect(&addr).await;
    let fields = h2::block_of(&h2::post_fields("/", TOKEN, Some(2000)));
    let partial = [h2::header_frames(1, &fields, false, true), h2::frame(h2::DATA, 0, 1, &body.as_bytes()[..1500])].concat();
    h2c.write_all(&partial).await.unwrap();
    let got = h2::outcomes(&mut h2c, &[1]).await;
    assert_eq!(got[0].status, Some(503), "{got:?}");
    assert!(got[0].body.contains(REFUSED), "{got:?}");
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, "sluice_gateway_body_budget_refusals_total"), 2.0);
    assert_eq!(value(&m, "sluice_gateway_body_bytes_max"), 4500.0);
    assert_eq!(value(&m, HELD), both);

    // The first body ends while Redis holds writes: its call waits, holding its share.
    redis_cli(redis.port, &["CLIENT", "PAUSE", "30000", "WRITE"]);
    let mut first = held.remove(0);
    first.write_all(&body.as_bytes()[1500..]).await.unwrap();
    metric_until(&addr, r#"sluice_gateway_commands_total{command="EVALSHA"}"#, |v| v >= 1.0).await;
    let during = value(&raw::scrape(&addr).await, HELD);
    assert!(during >= both, "a body let go of its share before its call ended: {during} of {both}");
    redis_cli(redis.port, &["CLIENT", "UNPAUSE"]);
    let (status, answer) = raw::read_response(&mut first).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    metric_until(&addr, HELD, |v| v <= during - 1500.0).await;

    // Now another such request fits beside the second, and is served, on h2c too.
    let whole = [h2::header_frames(3, &fields, false, true), h2::frame(h2::DATA, h2::END_STREAM, 3, body.as_bytes())].concat();
    h2c.write_all(&whole).await.unwrap();
    let got = h2::outcomes(&mut h2c, &[3]).await;
    assert_eq!(got[0].status, Some(200), "{got:?}");
}

/// Answers a client does not take (it grants its h2c streams no flow-control window, so not a
/// byte of them can be sent) are held within --max-body-bytes-in-flight: past it a stream's
/// answer is a short 503, and what they held comes back when the connection goes. They were
/// held outside it, a hundred a connection, until the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_client_will_not_take_are_held_within_the_budget() {
    let redis = RedisServer::start();
    let (_gw, addr) = gateway(&redis, &["--max-body-bytes", "4096", "--max-body-bytes-in-flight", "65536"]).await;
    const HELD: &str = "sluice_gateway_body_bytes_held";
    let token = format!("Bearer {TOKEN}");
    // /metrics: some 10 KB an answer.
    let fields =
        [(":method", "GET"), (":scheme", "http"), (":path", "/metrics"), (":authority", "gateway"), ("authorization", &token)];
    let streams: Vec<u32> = (0..30).map(|i| 1 + 2 * i).collect();
    // No window at all, or one byte (hyper then hands h2 a piece of the answer, which h2 keeps
    // until it is sent: given whole, the answer had left the budget).
    for window in [0, 1] {
        let (mut conn, _) = h2::connect_with(&addr, &[(h2::SETTINGS_INITIAL_WINDOW_SIZE, window)]).await;
        for &s in &streams {
            conn.write_all(&h2::header_frames(s, &h2::block(&fields), true, true)).await.unwrap();
        }
        let statuses = h2::statuses(&mut conn, &streams).await;
        let count = |status| statuses.iter().filter(|s| **s == Some(status)).count();
        let (held, refused) = (count(200), count(503));
        assert!(held >= 2 && refused >= 10 && held + refused == streams.len(), "window {window}: {statuses:?}");
        // An HTTP/1.1 scrape is the connection's one answer out: answered, and not charged.
        let m = raw::scrape(&addr).await;
        let holding = value(&m, HELD);
        assert!(holding > 5_000.0 && holding <= 65_536.0, "window {window}: {holding}");
        assert!(value(&m, "sluice_gateway_body_budget_refusals_total") >= refused as f64, "{m}");
        drop(conn);
        metric_until(&addr, HELD, |v| v == 0.0).await;
    }
}

/// A body of the largest size accepted streams through the connection's bounded read buffer
/// whole, over HTTP/1.1 and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_the_largest_size_is_read_whole() {
    let redis = RedisServer::start();
    let (_gw, addr) = gateway(&redis, &[]).await;
    let call = decision();
    // Padded in front: only the whole body is the call.
    let body = format!("{}{call}", " ".repeat((1 << 20) - call.len()));
    let mut conn = raw::connect(&addr).await;
    conn.write_all(raw::post("/", Some(TOKEN), &body).as_bytes()).await.unwrap();
    let (status, answer) = raw::read_response(&mut conn).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let (mut h2c, _) = h2::connect(&addr).await;
    let fields = h2::block_of(&h2::post_fields("/", TOKEN, Some(body.len())));
    h2c.write_all(&h2::header_frames(1, &fields, false, true)).await.unwrap();
    // In frames of the default largest size, within the default windows (1 MiB).
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() { h2::END_STREAM } else { 0 };
        h2c.write_all(&h2::frame(h2::DATA, flags, 1, piece)).await.unwrap();
    }
    let got = h2::outcomes(&mut h2c, &[1]).await;
    assert_eq!(got[0].status, Some(200), "{got:?}");
    assert_eq!(value(&raw::scrape(&addr).await, "sluice_gateway_body_budget_refusals_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused() {
    let redis = RedisServer::start();
    let (_gw, addr) = gateway(&redis, &["--max-header-bytes", "2048"]).await;
    let mut conn = raw::connect(&addr).await;
    // Over the limit, yet small enough to be read whole: a close with bytes left unread would
    // reset the connection and could lose the answer.
    let padding = format!("X-Pad: {}\r\n", "p".repeat(3000));
    // Sent without its end, so only the size can stop it.
    conn.write_all(raw::head("GET", "/healthz", &padding).trim_end().as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&raw::until_closed(&mut conn).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, "sluice_gateway_malformed_requests_total"), 1.0);

    // A head just within a larger limit is read whole: the connection's read buffer fits it.
    let (_gw, addr) = gateway(&redis, &["--max-header-bytes", "131072"]).await;
    let padding = format!("X-Pad: {}\r\n", "p".repeat(128_000));
    let answer = raw::once(&addr, &raw::head("GET", "/healthz", &padding)).await;
    assert_eq!(answer.map(|(status, _)| status), Some(200));
}

/// A body that cannot be read (a chunked encoding broken at its first size line) is answered 400
/// and counted among the refusals, under its own reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_body_is_refused_and_counted() {
    let redis = RedisServer::start();
    let (_gw, addr) = gateway(&redis, &[]).await;
    let mut conn = raw::connect(&addr).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n");
    conn.write_all(format!("{}zz\r\n", raw::head("POST", "/", &auth)).as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&raw::until_closed(&mut conn).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("cannot read request body"), "{answer}");
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_refused_total{reason="body"}"#), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/",status="400"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_counted_and_the_gateway_recovers() {
    let redis = RedisServer::start();
    let (_gw, addr) = gateway(&redis, &["--max-connections", "4", "--header-read-timeout-ms", "600000"]).await;

    // Four connections that send nothing hold the four slots (nothing else connects before
    // them, so they are the first four accepted).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw::connect(&addr).await);
    }
    // The fifth is closed at once, with a 503 when the client reads it before the close.
    let mut fifth = raw::connect(&addr).await;
    let answer = String::from_utf8_lossy(&raw::until_closed(&mut fifth).await).into_owned();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503 "), "{answer}");
    if !answer.is_empty() {
        assert!(answer.contains("too many connections"), "{answer}");
    }
    // A real request meets the same fate.
    let request = raw::post("/", Some(TOKEN), &decision());
    if let Some((status, body)) = raw::once(&addr, &request).await {
        assert_eq!(status, 503, "{body}");
    }

    // One slot frees up: the gateway serves again.
    drop(held.pop());
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some((200, _)) = raw::once(&addr, &request).await {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection that got the 200 may not have given its slot back yet.
    let m = loop {
        match raw::once(&addr, &raw::head("GET", "/metrics", "")).await {
            Some((200, m)) => break m,
            _ => assert!(Instant::now() < deadline, "no slot for a scrape"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(value(&m, "sluice_gateway_connections_refused_total") >= 2.0, "{m}");
    assert_eq!(value(&m, "sluice_gateway_connections_max"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_floods_cost_redis_one_ping_and_failures_show_at_once() {
    let mut redis = RedisServer::start();
    let (gw, addr) = gateway(&redis, &["--health-cache-ms", "60000", "--timeout-ms", "500"]).await;
    let http = Http::new(&gw.base, Some(TOKEN));

    // 16 clients × 100 probes, with decisions going on at the same time.
    let flood = (0..16).map(|_| {
        let http = Http::new(&gw.base, None);
        async move {
            for _ in 0..100 {
                assert_eq!(http.get("/healthz").await.0, 200);
            }
        }
    });
    let decisions = async {
        for _ in 0..50 {
            assert_eq!(http.post("/", call(1)).await.0, 200);
        }
    };
    tokio::join!(futures_util::future::join_all(flood), decisions);
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, "sluice_gateway_health_probes_total"), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/healthz",status="200"}"#), 1600.0);

    // A request that finds Redis gone ends the cached "ok" at once.
    redis.stop();
    let (status, _) = http.post("/", call(1)).await;
    assert!(status == 502 || status == 504, "{status}");
    let (status, body) = http.get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(http.get("/healthz").await.0, 503);
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, "sluice_gateway_health_probes_total"), 2.0);
}

/// The issue's load case, against the built binary so that its memory is its own: 2,000 slow
/// connections held open (silent ones, half heads, and 1 MiB bodies declared and never sent),
/// while normal requests are still served and the resident memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_connections_leave_normal_requests_served_and_memory_bounded() {
    const SLOW: usize = 2_000;
    // Memory bound asserted: generous (a debug build); the measured figure is printed.
    const RSS_BOUND_KIB: u64 = 256 * 1024;
    // Both ends of each connection are sockets of this process only on the client side; the
    // gateway child raises its own limit.
    support::ensure_open_files(SLOW as u64 + 1_024);

    let redis = RedisServer::start();
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
            .args(["--listen", &addr, "--redis-url", &redis.url()])
            // Long deadlines, so that all 2,000 stay open for the whole test: the case where the
            // gateway holds the most.
            .args(["--header-read-timeout-ms", "600000", "--body-read-timeout-ms", "600000"])
            .env("SLUICE_GATEWAY_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway binary"),
    );
    let pid = child.id();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(child.try_wait().unwrap().is_none(), "gateway exited");
        assert!(started.elapsed() < BOUND, "gateway never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request = raw::post("/", Some(TOKEN), &decision());
    assert_eq!(raw::once(&addr, &request).await.unwrap().0, 200);
    let rss_before = support::rss_kib(pid);

    let mut slow = Vec::with_capacity(SLOW);
    let declared = format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 1048576\r\n");
    for i in 0..SLOW {
        let mut conn = raw::connect(&addr).await;
        match i % 3 {
            0 => {}
            1 => conn.write_all(b"POST /pipeline HTTP/1.1\r\nHost: gateway\r\nX-Slow: ").await.unwrap(),
            _ => conn.write_all(raw::head("POST", "/pipeline", &declared).as_bytes()).await.unwrap(),
        }
        slow.push(conn);
    }
    let waiting_bodies = SLOW / 3;
    // All of them are in: open (plus this scrape), and those with bodies are in their handlers.
    let deadline = Instant::now() + BOUND;
    loop {
        let m = raw::scrape(&addr).await;
        let open = value(&m, "sluice_gateway_connections_open");
        let in_flight = value(&m, "sluice_gateway_requests_in_flight");
        if open >= (SLOW + 1) as f64 && in_flight >= (waiting_bodies + 1) as f64 {
            assert_eq!(value(&m, "sluice_gateway_connections_refused_total"), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "slow connections not all open:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Normal requests are served meanwhile: on one keep-alive connection, and on new ones.
    let mut keep = raw::connect(&addr).await;
    for _ in 0..100 {
        keep.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(raw::read_response(&mut keep).await.unwrap().0, 200);
    }
    for _ in 0..20 {
        assert_eq!(raw::once(&addr, &request).await.unwrap().0, 200);
    }
    assert_eq!(raw::once(&addr, &raw::head("GET", "/healthz", "")).await.unwrap().0, 200);
    let rss_held = support::rss_kib(pid);
    eprintln!("gateway RSS: {rss_before} KiB before, {rss_held} KiB with {SLOW} slow connections open");
    assert!(rss_held < RSS_BOUND_KIB, "gateway RSS {rss_held} KiB with {SLOW} slow connections");
    let m = raw::scrape(&addr).await;
    // The slow ones, the keep-alive one, this scrape (and maybe a closing one-shot).
    assert!(value(&m, "sluice_gateway_connections_open") >= (SLOW + 2) as f64, "{m}");
    assert_eq!(value(&m, "sluice_gateway_connections_refused_total"), 0.0);

    // They go; the gateway lets go of them.
    drop(slow);
    let deadline = Instant::now() + BOUND;
    loop {
        let m = raw::scrape(&addr).await;
        // Left: the keep-alive connection and this scrape.
        if value(&m, "sluice_gateway_connections_open") <= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "slow connections never released:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keep.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut keep).await.unwrap().0, 200);

    let _ = child.kill();
    let _ = child.wait();
}

/// h2c: more streams than `--max-concurrent-streams` are refused, streams whose bodies never
/// come are answered 408 on time (each on its own, the connection stays), and the connection
/// then serves a whole request and, left idle, is closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_are_bounded_and_bodies_that_never_come_are_dropped_on_time() {
    let redis = RedisServer::start();
    let body_timeout = Duration::from_millis(500);
    let flags = ["--max-concurrent-streams", "4", "--body-read-timeout-ms", "500", "--idle-timeout-ms", "1000"];
    let (_gw, addr) = gateway(&redis, &flags).await;

    let (mut conn, settings) = h2::connect(&addr).await;
    assert_eq!(settings.setting(h2::SETTINGS_MAX_CONCURRENT_STREAMS), Some(4), "{settings:?}");
    assert_eq!(settings.setting(h2::SETTINGS_MAX_HEADER_LIST_SIZE), Some(16 * 1024), "{settings:?}");

    // Six requests that declare a body and never send it: four fit, two are refused.
    let started = Instant::now();
    let held: Vec<u32> = (0..6).map(|i| 1 + 2 * i).collect();
    let fields = h2::post_fields("/pipeline", TOKEN, Some(100));
    let mut opening = Vec::new();
    for &id in &held {
        opening.extend(h2::header_frames(id, &h2::block_of(&fields), false, true));
    }
    conn.write_all(&opening).await.unwrap();
    let got = h2::outcomes(&mut conn, &held).await;
    let refused: Vec<&h2::Outcome> = got.iter().filter(|o| o.reset == Some(h2::REFUSED_STREAM) && o.status.is_none()).collect();
    let timed_out: Vec<&h2::Outcome> = got.iter().filter(|o| o.status == Some(408)).collect();
    assert_eq!((refused.len(), timed_out.len()), (2, 4), "{got:#?}");
    for o in timed_out {
        assert!(o.body.contains("request body not received within 500 ms"), "{o:?}");
    }
    closed_by_deadline("h2c bodies never sent", started.elapsed(), body_timeout);

    // The connection itself is fine: a whole request is served.
    let body = decision();
    let fields = h2::post_fields("/", TOKEN, Some(body.len()));
    let whole =
        [h2::header_frames(13, &h2::block_of(&fields), false, true), h2::frame(h2::DATA, h2::END_STREAM, 13, body.as_bytes())]
            .concat();
    let asked = Instant::now();
    conn.write_all(&whole).await.unwrap();
    let got = h2::outcomes(&mut conn, &[13]).await;
    assert_eq!(got[0].status, Some(200), "{got:?}");
    let answer: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(verdict(&answer["result"]), (true, 4));

    // Left idle, it is closed after the idle timeout, like an HTTP/1.1 one (timed from before
    // its last request: the idle timer starts at the answer, unseen here).
    h2::until_closed(&mut conn).await;
    closed_by_deadline("idle h2c connection", asked.elapsed(), Duration::from_millis(1000));

    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="body"}"#), 4.0);
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="idle"}"#), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/pipeline",status="408"}"#), 4.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_connections_protocol_total{protocol="h2c"}"#), 1.0);
    // Nothing is left waiting for the bodies (only this scrape is in flight).
    assert_eq!(value(&m, "sluice_gateway_requests_in_flight"), 1.0);
}

/// h2c: a header block over `--max-header-bytes` is answered 431 on its stream and the
/// connection serves on; one far over it (h2's abuse limit) ends the connection with
/// ENHANCE_YOUR_CALM; a connection that never finishes its first header block (or sends only
/// the preface) is closed at the head deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_huge_and_unfinished_header_blocks_are_refused() {
    let redis = RedisServer::start();
    let header_timeout = Duration::from_millis(400);
    let (_gw, addr) = gateway(&redis, &["--max-header-bytes", "2048", "--header-read-timeout-ms", "400"]).await;
    let body = decision();
    let request = |id: u32, pad: usize| {
        let mut fields = h2::post_fields("/", TOKEN, Some(body.len()));
        if pad > 0 {
            fields.push(("x-pad".to_string(), "p".repeat(pad)));
        }
        [h2::header_frames(id, &h2::block_of(&fields), false, true), h2::frame(h2::DATA, h2::END_STREAM, id, body.as_bytes())]
            .concat()
    };

    let (mut conn, settings) = h2::connect(&addr).await;
    assert_eq!(settings.setting(h2::SETTINGS_MAX_HEADER_LIST_SIZE), Some(2048), "{settings:?}");
    conn.write_all(&request(1, 3000)).await.unwrap();
    let got = h2::outcomes(&mut conn, &[1]).await;
    assert_eq!(got[0].status, Some(431), "{got:?}");
    conn.write_all(&request(3, 0)).await.unwrap();
    let got = h2::outcomes(&mut conn, &[3]).await;
    assert_eq!(got[0].status, Some(200), "{got:?}");

    // 64 KiB of one header, in a HEADERS and three CONTINUATIONs: the connection goes.
    conn.write_all(&request(5, 64 * 1024)).await.unwrap();
    let goaway = loop {
        let f = h2::read_frame(&mut conn).await.expect("a GOAWAY before the close");
        assert!(!(f.kind == h2::HEADERS && f.stream == 5), "the huge block was answered: {f:?}");
        if f.kind == h2::GOAWAY {
            break f;
        }
    };
    assert_eq!(goaway.error_code(), h2::ENHANCE_YOUR_CALM, "{goaway:?}");
    h2::until_closed(&mut conn).await;

    // The first request's header block begun and never finished; and a preface alone.
    let started = Instant::now();
    let (mut unfinished, _) = h2::connect(&addr).await;
    let fields = h2::post_fields("/", TOKEN, None);
    unfinished.write_all(&h2::header_frames(1, &h2::block_of(&fields), true, false)).await.unwrap();
    let (mut silent, _) = h2::connect(&addr).await;
    h2::until_closed(&mut unfinished).await;
    closed_by_deadline("unfinished h2c header block", started.elapsed(), header_timeout);
    h2::until_closed(&mut silent).await;
    closed_by_deadline("h2c preface alone", started.elapsed(), header_timeout);

    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="header"}"#), 2.0);
    assert_eq!(value(&m, r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), 1.0);
    assert_eq!(value(&m, r#"sluice_gateway_connections_protocol_total{protocol="h2c"}"#), 3.0);
    // The HTTP/2 library answers an oversized block itself: no counter sees it (the metric's
    // HELP says so).
    assert_eq!(value(&m, "sluice_gateway_malformed_requests_total"), 0.0);
}

/// h2c: a connection that only pings after its last request is idle: the server's PING
/// acknowledgements are not answers a client is taking, so they do not put its close off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_that_only_pings_is_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let idle = Duration::from_millis(1000);
    let (_gw, addr) = gateway(&redis, &["--idle-timeout-ms", "1000"]).await;
    let (mut conn, _) = h2::connect(&addr).await;
    // One request, answered: a health check, with the token, as a proxy's connection (one
    // without it is closed after its answer).
    let bearer = format!("Bearer {TOKEN}");
    let fields =
        [(":method", "GET"), (":scheme", "http"), (":path", "/healthz"), (":authority", "gateway"), ("authorization", &bearer)];
    // Timed from before the request: the idle timer starts at its answer, unseen here.
    let started = Instant::now();
    conn.write_all(&h2::header_frames(1, &h2::block(&fields), true, true)).await.unwrap();
    assert_eq!(h2::outcomes(&mut conn, &[1]).await[0].status, Some(200));
    let mut buf = [0u8; 4096];
    // Then a ping every 200 ms (bounded by the test's bound), until the close.
    let closed = loop {
        assert!(started.elapsed() < BOUND, "still open after {:?} of pings", started.elapsed());
        if conn.write_all(&h2::frame(h2::PING, 0, 0, &[7; 8])).await.is_err() {
            break started.elapsed();
        }
        let read = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        });
        if read.await.unwrap_or(false) {
            break started.elapsed();
        }
    };
    closed_by_deadline("h2c connection that only pings", closed, idle);
    let m = raw::scrape(&addr).await;
    assert_eq!(value(&m, r#"sluice_gateway_client_timeouts_total{phase="idle"}"#), 1.0);
}

/// Returns once a header deadline begun now has passed: a connection opened now and silent is
/// closed by it (the gateway's clock, not a sleep, says when).
async fn header_deadline_passed(addr: &str) {
    let mut silent = raw::connect(addr).await;
    assert!(raw::until_closed(&mut silent).await.is_empty(), "a silent connection is closed without an answer");
}

/// A connection none of whose requests showed the token cannot hold a place under the cap: it
/// is closed after its answers, on HTTP/1.1 (`Connection: close`) and on h2c (`GOAWAY`), long
/// before the idle deadline. Otherwise anyone who reaches the port could fill the cap with a
/// cheap request per connection every idle period, and the proxies' connections would be
/// refused. A request with the token makes a connection a proxy's: it stays open between
/// requests past the header deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_token_are_closed_after_their_answers() {
    let redis = RedisServer::start();
    // An idle deadline no test reaches; a header deadline the trusted connection outlives.
    let (_gw, addr) = gateway(&redis, &["--idle-timeout-ms", "600000", "--header-read-timeout-ms", "300"]).await;

    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for (what, request) in [
        ("a health probe", raw::head("GET", "/healthz", "")),
        ("a scrape", raw::head("GET", "/metrics", "")),
        ("a call without the token", raw::post("/", None, &decision())),
        ("a call with a wrong token", raw::post("/", Some("not-the-token"), &decision())),
        // The token shown on the wrong endpoint still proves the client: this one stays open.
        ("an unknown path with the token", raw::head("GET", "/nowhere", &auth)),
    ] {
        let mut conn = raw::connect(&addr).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        let trusted = request.contains(TOKEN);
        if trusted {
            assert_eq!(raw::read_response(&mut conn).await.unwrap().0, 404);
            header_deadline_passed(&addr).await;
            conn.write_all(raw::post("/", Some(TOKEN), &decision()).as_bytes()).await.unwrap();
            let (status, body) = raw::read_response(&mut conn).await.unwrap();
            assert_eq!(status, 200, "{what}: the connection stayed open past the header deadline: {body}");
            continue;
        }
        let got = raw::until_closed(&mut conn).await;
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 "), "{what}: answered before the close: {text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{what}: {text}");
    }

    // h2c: a probe's connection gets one of its streams answered (answers not taken are held
    // in memory), the others an empty 503, and goes away; one that showed the token has every
    // stream answered, is still open after a header deadline has passed, and serves another request.
    let scrape = [(":method", "GET"), (":scheme", "http"), (":path", "/metrics"), (":authority", "gateway")];
    let bearer = format!("Bearer {TOKEN}");
    for token in [None, Some(bearer.as_str())] {
        let (mut conn, _) = h2::connect(&addr).await;
        let mut fields = scrape.to_vec();
        fields.extend(token.map(|t| ("authorization", t)));
        let block = h2::block(&fields);
        let streams = [1, 3, 5];
        let opened: Vec<u8> = streams.iter().flat_map(|&s| h2::header_frames(s, &block, true, true)).collect();
        conn.write_all(&opened).await.unwrap();
        let statuses: Vec<Option<u16>> = h2::outcomes(&mut conn, &streams).await.iter().map(|o| o.status).collect();
        if token.is_none() {
            assert_eq!(statuses, [Some(200), Some(503), Some(503)]);
            h2::until_closed(&mut conn).await;
            continue;
        }
        assert_eq!(statuses, [Some(200); 3]);
        header_deadline_passed(&addr).await;
        conn.write_all(&h2::header_frames(7, &block, true, true)).await.unwrap();
        assert_eq!(h2::outcomes(&mut conn, &[7]).await[0].status, Some(200), "the trusted h2c connection stayed open");
    }
    // The trusted connections, dropped by the test, close too: none is left but the scrape's.
    let deadline = Instant::now() + BOUND;
    loop {
        let m = raw::scrape(&addr).await;
        if value(&m, "sluice_gateway_connections_open") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "connections left open:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
