//! The gateway against a real standalone `redis-server`, through a real HTTP client.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric, Http, RedisServer, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-t0ken";

async fn gateway_for(redis: &RedisServer, extra: &[&str]) -> (TestGateway, Http) {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--token", TOKEN];
    args.extend_from_slice(extra);
    let gw = TestGateway::start(&args).await;
    let http = Http::new(&gw.base, Some(TOKEN));
    (gw, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_and_replies_map_to_json() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &[]).await;

    assert_eq!(http.post("/", json!(["PING"])).await, (200, json!({"result": "PONG"})));
    assert_eq!(http.post("/", json!(["ping", "hello"])).await, (200, json!({"result": "hello"})));
    // Integers, strings, nested arrays, nil (Lua false/nil), numbers as arguments.
    assert_eq!(
        http.post("/", json!(["EVAL", "return {tonumber(ARGV[1]) + 1, KEYS[1], {ARGV[2]}, false}", 1, "k", 41, "x"])).await,
        (200, json!({"result": [42, "k", ["x"], null]}))
    );
    assert_eq!(http.post("/", json!(["EVAL", "return nil", "0"])).await, (200, json!({"result": null})));
    assert_eq!(http.post("/", json!(["EVAL", "return redis.status_reply('FINE')", "0"])).await, (200, json!({"result": "FINE"})));
    // An error nested in a reply stays in place; a top-level one is the answer (400).
    assert_eq!(
        http.post("/", json!(["EVAL", "return {1, redis.error_reply('INNER bad')}", "0"])).await,
        (200, json!({"result": [1, {"error": "INNER bad"}]}))
    );
    assert_eq!(
        http.post("/", json!(["EVAL", "return redis.error_reply('MYERR custom text')", "0"])).await,
        (400, json!({"error": "MYERR custom text"}))
    );

    // SCRIPT LOAD → EVALSHA → SCRIPT EXISTS.
    let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let (status, loaded) = http.post("/", json!(["SCRIPT", "LOAD", script])).await;
    assert_eq!(status, 200);
    let sha = loaded["result"].as_str().expect("sha").to_string();
    assert_eq!(sha.len(), 40);
    assert_eq!(http.post("/", json!(["EVALSHA", sha, "1", "counter", "5"])).await, (200, json!({"result": 5})));
    assert_eq!(http.post("/", json!(["evalsha", sha, 1, "counter", 2])).await, (200, json!({"result": 7})));
    let missing = "0".repeat(40);
    assert_eq!(http.post("/", json!(["SCRIPT", "EXISTS", sha, missing])).await, (200, json!({"result": [1, 0]})));

    // NOSCRIPT keeps Redis' text so the client can load and retry.
    let (status, body) = http.post("/", json!(["EVALSHA", missing, "0"])).await;
    assert_eq!(status, 400);
    let text = body["error"].as_str().expect("error text");
    assert!(text.starts_with("NOSCRIPT "), "{text}");
    assert!(text.contains("No matching script"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_keep_order_and_per_command_errors() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &[]).await;
    let script = "return redis.call('INCR', KEYS[1])";
    let (_, loaded) = http.post("/", json!(["SCRIPT", "LOAD", script])).await;
    let sha = loaded["result"].as_str().expect("sha").to_string();
    let missing = "f".repeat(40);

    let (status, body) = http
        .post(
            "/pipeline",
            json!([
                ["EVALSHA", sha, "1", "a"],
                ["EVALSHA", missing, "1", "a"],
                ["EVALSHA", sha, "1", "a"],
                ["EVALSHA", sha, "1", "b"],
                ["PING"],
                ["EVAL", "return redis.error_reply('E2 second')", "0"],
                ["EVALSHA", sha, "1", "a"],
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let entries = body.as_array().expect("array");
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0], json!({"result": 1}));
    let noscript = entries[1]["error"].as_str().expect("error entry");
    assert!(noscript.starts_with("NOSCRIPT "), "{noscript}");
    assert_eq!(entries[2], json!({"result": 2}));
    assert_eq!(entries[3], json!({"result": 1}));
    assert_eq!(entries[4], json!({"result": "PONG"}));
    assert_eq!(entries[5], json!({"error": "E2 second"}));
    assert_eq!(entries[6], json!({"result": 3}));

    // The retry pattern the filter uses: load and call in one pipeline.
    let (status, body) = http.post("/pipeline", json!([["SCRIPT", "LOAD", "return 'v2'"], ["EVAL", "return 'v2'", 0]])).await;
    assert_eq!(status, 200);
    assert_eq!(body[1], json!({"result": "v2"}));
    assert_eq!(body[0]["result"].as_str().map(str::len), Some(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &[]).await;
    let raw = json!(["EVAL", "return {string.char(255, 0, 1), 'ok', redis.status_reply('OK')}", "0"]);

    let (status, body) = http.post("/", raw.clone()).await;
    assert_eq!(status, 400);
    let text = body["error"].as_str().expect("error");
    assert!(text.contains("Upstash-Encoding: base64"), "{text}");

    let (status, body) = http.post_raw("/", raw.to_string(), &[("Upstash-Encoding", "base64")]).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"result": ["/wAB", "b2s=", "OK"]}));

    // In a pipeline only the command concerned fails.
    let (status, body) = http.post("/pipeline", json!([raw, ["PING"]])).await;
    assert_eq!(status, 200);
    assert!(body[0]["error"].as_str().is_some(), "{body}");
    assert_eq!(body[1], json!({"result": "PONG"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required() {
    let redis = RedisServer::start();
    let (gw, _) = gateway_for(&redis, &[]).await;
    for token in [None, Some("wrong"), Some("s3cret-t0ke"), Some("s3cret-t0ken2")] {
        let http = Http::new(&gw.base, token);
        for path in ["/", "/pipeline"] {
            let body = if path == "/" { json!(["PING"]) } else { json!([["PING"]]) };
            let (status, body) = http.post(path, body).await;
            assert_eq!(status, 401, "{token:?} {path}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains("bearer token")));
        }
    }
    let ok = Http::new(&gw.base, Some(TOKEN));
    assert_eq!(ok.post("/", json!(["PING"])).await.0, 200);
    // Probes and scrapers need no token.
    let anonymous = Http::new(&gw.base, None);
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/metrics").await.0, 200);

    // Without a configured token, no header is needed.
    let open = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let http = Http::new(&open.base, None);
    assert_eq!(http.post("/", json!(["PING"])).await, (200, json!({"result": "PONG"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &["--max-body-bytes", "1024", "--max-pipeline", "3"]).await;

    for (cmd, name) in [
        (json!(["FLUSHALL"]), "FLUSHALL"),
        (json!(["GET", "k"]), "GET"),
        (json!(["set", "k", "v"]), "SET"),
        (json!(["SCRIPT", "FLUSH"]), "SCRIPT FLUSH"),
        (json!(["CONFIG", "GET", "*"]), "CONFIG"),
    ] {
        let (status, body) = http.post("/", cmd).await;
        assert_eq!(status, 400);
        let text = body["error"].as_str().expect("error");
        assert!(text.contains(&format!("\"{name}\"")), "{text}");
        assert!(text.contains("not allowed"), "{text}");
    }

    // One refused command refuses the whole pipeline: the allowed one did not run either.
    let incr = json!(["EVAL", "return redis.call('INCR', KEYS[1])", "1", "untouched"]);
    let (status, body) = http.post("/pipeline", json!([incr, ["SET", "untouched", "x"]])).await;
    assert_eq!(status, 400);
    let text = body["error"].as_str().expect("error");
    assert!(text.contains("pipeline command 1") && text.contains("\"SET\""), "{text}");
    assert_eq!(
        http.post("/", json!(["EVAL", "return redis.call('EXISTS', KEYS[1])", "1", "untouched"])).await,
        (200, json!({"result": 0}))
    );

    // Size and shape limits.
    let big = format!("[\"EVAL\", \"return 1\", \"0\", \"{}\"]", "x".repeat(2000));
    let (status, body) = http.post_raw("/", big.clone(), &[]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("1024 bytes")));
    assert_eq!(http.post_raw("/pipeline", big, &[]).await.0, 413);
    let (status, body) = http.post("/pipeline", json!([["PING"], ["PING"], ["PING"], ["PING"]])).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("at most 3")), "{body}");
    assert_eq!(http.post("/pipeline", json!([])).await.0, 400);
    assert_eq!(http.post_raw("/", "{not json", &[]).await.0, 400);
    assert_eq!(http.post("/", json!({"cmd": "PING"})).await.0, 400);
    assert_eq!(http.post("/", json!([])).await.0, 400);
    assert_eq!(http.post("/", json!(["PING", true])).await.0, 400);
    assert_eq!(http.post("/pipeline", json!(["PING"])).await.0, 400);

    // Unknown path and wrong method.
    assert_eq!(http.post("/nowhere", json!(["PING"])).await.0, 404);
    assert_eq!(http.get("/").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_in_time_and_recovers() {
    let mut redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &["--timeout-ms", "300"]).await;
    assert_eq!(http.post("/", json!(["PING"])).await.0, 200);
    assert_eq!(http.get("/healthz").await.0, 200);

    redis.stop();
    let bound = Duration::from_millis(300 + 1500);
    for (path, body) in [("/", json!(["PING"])), ("/pipeline", json!([["PING"]]))] {
        let started = Instant::now();
        let (status, body) = http.post(path, body).await;
        assert!(started.elapsed() < bound, "{path} took {:?}", started.elapsed());
        assert!(status == 502 || status == 504, "{path}: {status} {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.starts_with("ERR sluice-gateway:")));
    }
    let started = Instant::now();
    let (status, body) = http.get("/healthz").await;
    assert!(started.elapsed() < bound);
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "unavailable");

    // Same port again: the connection manager reconnects on its own.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if http.get("/healthz").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.post("/", json!(["PING"])).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_up_and_redis_that_never_answers() {
    // Nothing listens: refused at once.
    let closed = support::free_ports(1)[0];
    let url = format!("redis://127.0.0.1:{closed}");
    let gw = TestGateway::start(&["--redis-url", &url, "--timeout-ms", "300"]).await;
    let http = Http::new(&gw.base, None);
    let (status, _) = http.get("/healthz").await;
    assert_eq!(status, 503);
    let (status, body) = http.post("/", json!(["PING"])).await;
    assert!(status == 502 || status == 504, "{status} {body}");

    // Something accepts connections and never answers: only the timeout can end the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("redis://127.0.0.1:{silent_port}");
    let gw = TestGateway::start(&["--redis-url", &url, "--timeout-ms", "300"]).await;
    let http = Http::new(&gw.base, None);
    let bound = Duration::from_millis(300 + 1500);
    for (path, body) in [("/", json!(["PING"])), ("/pipeline", json!([["PING"], ["PING"]]))] {
        let started = Instant::now();
        let (status, body) = http.post(path, body).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < bound, "{path} took {took:?}");
        assert!(status == 504 || status == 502, "{path}: {status} {body}");
    }
    let started = Instant::now();
    assert_eq!(http.get("/healthz").await.0, 503);
    assert!(started.elapsed() < bound);

    let (_, metrics) = http.get("/metrics").await;
    let timeouts = metric(&metrics, r#"sluice_gateway_redis_errors_total{kind="timeout"}"#);
    let transport = metric(&metrics, r#"sluice_gateway_redis_errors_total{kind="transport"}"#);
    assert!(timeouts.unwrap_or(0.0) + transport.unwrap_or(0.0) >= 2.0, "{metrics}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_commands_and_errors() {
    let redis = RedisServer::start();
    let (gw, http) = gateway_for(&redis, &[]).await;
    http.post("/", json!(["PING"])).await;
    http.post("/", json!(["EVALSHA", "0".repeat(40), "0"])).await;
    http.post("/pipeline", json!([["EVAL", "return 1", "0"], ["EVAL", "return 2", "0"], ["SCRIPT", "EXISTS", "x"]])).await;
    http.post("/", json!(["GET", "x"])).await;
    Http::new(&gw.base, None).post("/", json!(["PING"])).await;

    let (status, text) = http.get("/metrics").await;
    assert_eq!(status, 200);
    let m = |series: &str| metric(&text, series);
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="400"}"#), Some(2.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="401"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/pipeline",status="200"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="PING"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="EVAL"}"#), Some(2.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="EVALSHA"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="SCRIPT EXISTS"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_redis_errors_total{kind="reply"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_request_duration_seconds_count{endpoint="/"}"#), Some(4.0));
    assert_eq!(m(r#"sluice_gateway_request_duration_seconds_bucket{endpoint="/",le="+Inf"}"#), Some(4.0));
    assert!(text.contains("# TYPE sluice_gateway_request_duration_seconds histogram"));
}

/// A request in flight when shutdown begins is answered; new connections are refused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let redis = RedisServer::start();
    let (mut gw, http) = gateway_for(&redis, &[]).await;
    let addr = gw.base.trim_start_matches("http://").to_string();

    // Send the headers and half the body, so the handler is running and waiting for the rest.
    let body = br#"["EVAL", "return 'finished'", "0"]"#;
    let (head, tail) = body.split_at(10);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let request =
        format!("POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.write_all(request.as_bytes()).await.expect("write head");
    conn.write_all(head).await.expect("write half body");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http.get("/metrics").await;
        // This scrape itself is in flight too, hence 2.
        if metric(&text, "sluice_gateway_requests_in_flight") == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "request never became in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gw.begin_shutdown();
    // The listener closes; then the pending request may complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server must still be draining: it waits for this connection. (A broken drain
    // returns within a millisecond or two; a correct one never returns before the body ends,
    // so this bounded look can only fail when the drain is broken.)
    let returned_early = tokio::time::timeout(Duration::from_millis(200), async {
        while !gw.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok();
    assert!(!returned_early, "server stopped with a request in flight");
    conn.write_all(tail).await.expect("write rest of body");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"result":"finished"}"#), "{response}");
    gw.finished().await.expect("clean shutdown");
}
