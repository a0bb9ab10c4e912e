//! The gateway against a real standalone `redis-server`, through a real HTTP client, with calls
//! of sluice's script built by the filter's own code.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::rate::Rate;
use sluice::redis::script::{script_with_clock_override, Form, SCRIPT};
use sluice::strategy::Strategy;
use support::calls::{self, call, dry_call, entry_verdict, eval_call, key, sha, verdict, Call, LIMIT};
use support::{h2, metric, metric_value, redis_cli, Http, RedisServer, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-t0ken";
const START_LOADED: &str = r#"sluice_gateway_script_loads_total{trigger="start",outcome="loaded"}"#;
const NOSCRIPT_LOADED: &str = r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="loaded"}"#;
const LIBRARY_START_LOADED: &str = r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#;
const LIBRARY_START_FAILED: &str = r#"sluice_gateway_library_loads_total{trigger="start",outcome="failed"}"#;
const LIBRARY_NOSCRIPT_LOADED: &str = r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="loaded"}"#;
const NOT_FOUND_LOADED: &str = r#"sluice_gateway_library_loads_total{trigger="not_found",outcome="loaded"}"#;
const FCALLS: &str = r#"sluice_gateway_redis_calls_total{command="FCALL"}"#;
const EVALSHAS: &str = r#"sluice_gateway_redis_calls_total{command="EVALSHA"}"#;

async fn gateway_for(redis: &RedisServer, extra: &[&str]) -> (TestGateway, Http) {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--token", TOKEN];
    args.extend_from_slice(extra);
    let gw = TestGateway::start(&args).await;
    let http = Http::new(&gw.base, Some(TOKEN));
    (gw, http)
}

/// How many times Redis ran `command` (INFO commandstats), 0 when never.
fn redis_calls(port: u16, command: &str) -> u64 {
    let stats = redis_cli(port, &["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn dbsize(port: u16) -> String {
    redis_cli(port, &["DBSIZE"]).trim().to_string()
}

fn script_exists(port: u16) -> String {
    redis_cli(port, &["SCRIPT", "EXISTS", &sha()]).trim().to_string()
}

/// Whether Redis holds sluice's function library.
fn library_loaded(port: u16) -> bool {
    redis_cli(port, &["FUNCTION", "LIST"]).contains(sluice_gateway::command::library_name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_calls_run_and_replies_map_to_json() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &[]).await;
    http.wait_metric(LIBRARY_START_LOADED, 1.0).await;

    // Five requests of one identity are admitted, counting down; the sixth is denied.
    for n in 1..=LIMIT {
        let (status, body) = http.post("/", call(1)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(verdict(&body["result"]), (true, LIMIT - n));
    }
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (false, 0));
    assert_eq!(redis_cli(redis.port, &["EXISTS", &key(1)]).trim(), "1");

    // A dry call decides without writing.
    let (_, body) = http.post("/", dry_call(2)).await;
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 1));
    assert_eq!(redis_cli(redis.port, &["EXISTS", &key(2)]).trim(), "0");

    // The script's text (what a filter sends after a NOSCRIPT) is accepted, and run as the
    // others: on Redis 7, FCALL of the library the gateway loaded.
    let (status, body) = http.post("/", eval_call(2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 1));
    assert_eq!(redis_calls(redis.port, "eval"), 0, "the gateway never sends script text");
    assert_eq!(redis_calls(redis.port, "evalsha"), 0);
    assert_eq!(redis_calls(redis.port, "fcall"), 8);

    // Numbers may come as JSON numbers; base64 leaves integers alone.
    let mut words = call(3);
    words[2] = json!(1);
    words[5] = json!(LIMIT);
    let (status, body) = http.post_raw("/", words.to_string(), &[("Upstash-Encoding", "base64")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 1));

    // A call Redis fails (the key holds another type): Redis' own text, 400, as Upstash answers.
    redis_cli(redis.port, &["LPUSH", &key(4), "x"]);
    let (status, body) = http.post("/", call(4)).await;
    assert_eq!(status, 400);
    let text = body["error"].as_str().expect("error text");
    assert!(text.contains("WRONGTYPE"), "{text}");
}

/// Every shape but sluice's own call is refused before Redis sees it: 400 naming what is wrong,
/// nothing written, counted by reason. Each refusal is tried alone and in a pipeline after a
/// good call, which then does not run either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_shape_is_refused_nothing_runs_and_it_is_counted() {
    let redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &[]).await;
    http.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    let watched = ["fcall", "evalsha", "eval", "flushall", "set", "ping", "script|load", "script|exists", "function|load"];
    let before: Vec<u64> = watched.iter().map(|c| redis_calls(redis.port, c)).collect();

    let sha = sha();
    let good = calls::words(1, &sha);
    let with = |i: usize, v: &str| {
        let mut w = good.clone();
        w[i] = v.to_string();
        json!(w)
    };
    let plus = |extra: &[&str]| json!(good.iter().map(String::as_str).chain(extra.iter().copied()).collect::<Vec<_>>());
    let two_limits = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];
    let mut two_identities =
        Call { identity: 1, strategy: Strategy::FixedWindow, rates: &two_limits, cost: 1, form: Form::Sha(&sha), dry: false }
            .words();
    two_identities[4] = sluice::redis::key(calls::NAMESPACE, calls::RULE, 2, 1, calls::FINGERPRINT);
    let clock = script_with_clock_override();
    let mut test_script = good.clone();
    test_script[0] = "EVAL".into();
    test_script[1] = clock.clone();

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("other script text", json!(["EVAL", "redis.call('SET','pwned','1')", "0"]), "script", "not sluice's decision script"),
        ("a script that spins", json!(["EVAL", "while true do end", "0"]), "script", "not sluice's decision script"),
        ("the script with a byte more", json!(["EVAL", format!("{SCRIPT} "), "1", key(1)]), "script", "decision script"),
        ("the test build's script (clock override)", json!(test_script), "script", "decision script"),
        ("an unknown SHA", with(1, &"e".repeat(40)), "script", &sha),
        ("SCRIPT LOAD", json!(["SCRIPT", "LOAD", "return 1"]), "command", "found SCRIPT"),
        ("SCRIPT EXISTS", json!(["SCRIPT", "EXISTS", sha]), "command", "found SCRIPT"),
        ("FLUSHALL", json!(["FLUSHALL"]), "command", "found FLUSHALL"),
        ("PING", json!(["PING"]), "command", "found PING"),
        ("SET", json!(["set", "pwned", "1"]), "command", "found SET"),
        ("a key of another shape", with(3, "pwned"), "keys", "key 0 is not"),
        ("a key with a hash tag of its own", with(3, "x:{pwned}:0.00000000"), "keys", "key 0 is not"),
        ("keys of two identities", json!(two_identities), "keys", "not one rule's"),
        ("no key", with(2, "0"), "keys", "0 keys"),
        ("an argument short", json!(good[..good.len() - 1]), "arguments", "5 arguments for 1 keys"),
        ("an unknown strategy", with(4, "delete_everything"), "arguments", "unknown strategy"),
        ("cost 0", with(7, "0"), "arguments", "cost"),
        ("a negative limit", with(5, "-5"), "arguments", "limit"),
        ("a clock override", plus(&["1700000000000000"]), "arguments", "(and optionally \"dry\")"),
        ("dry and a clock override", plus(&["dry", "1700000000000000"]), "arguments", "(and optionally \"dry\")"),
    ];
    let mut expected = std::collections::BTreeMap::<&str, f64>::new();
    for (what, cmd, reason, says) in &cases {
        let (status, body) = http.post("/", cmd.clone()).await;
        assert_eq!(status, 400, "{what}: {body}");
        let text = body["error"].as_str().unwrap_or_default();
        assert!(text.starts_with("ERR sluice-gateway: "), "{what}: {text}");
        assert!(text.contains(says), "{what}: {text:?} lacks {says:?}");

        let (status, body) = http.post("/pipeline", json!([call(1), cmd])).await;
        assert_eq!(status, 400, "{what} in a pipeline: {body}");
        let text = body["error"].as_str().unwrap_or_default();
        assert!(text.starts_with("ERR sluice-gateway: pipeline command 1: "), "{what}: {text}");
        *expected.entry(reason).or_default() += 2.0;
    }
    assert_eq!(dbsize(redis.port), "0", "a refused request wrote something");
    assert_eq!(redis_cli(redis.port, &["EXISTS", "pwned"]).trim(), "0");
    for (command, before) in watched.iter().zip(before) {
        assert_eq!(redis_calls(redis.port, command), before, "{command} reached Redis");
    }

    // The body's own faults are refused and counted too.
    for (body, reason) in [
        (r#"{not json"#.to_string(), "json"),
        (json!({"cmd": "EVALSHA"}).to_string(), "shape"),
        (json!([]).to_string(), "shape"),
        (json!(["EVALSHA", true]).to_string(), "shape"),
    ] {
        assert_eq!(http.post_raw("/", body, &[]).await.0, 400);
        *expected.entry(reason).or_default() += 1.0;
    }
    assert_eq!(http.post("/pipeline", json!([])).await.0, 400);
    assert_eq!(http.post("/pipeline", json!(call(1))).await.0, 400, "a command is not a pipeline");
    *expected.entry("pipeline").or_default() += 1.0;
    *expected.entry("shape").or_default() += 1.0;

    let (_, text) = http.get("/metrics").await;
    for (reason, n) in expected {
        assert_eq!(metric_value(&text, &format!("sluice_gateway_refused_total{{reason=\"{reason}\"}}")), n, "{reason}");
    }
    assert_eq!(metric(&text, r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), None);
    assert_eq!(dbsize(redis.port), "0");
}

/// The gateway loads the script itself: at start, and again whenever Redis lost it. A client
/// sending only EVALSHA never sees NOSCRIPT, so the filter never has to send the text.
/// (`--redis-calls evalsha`, as on a Redis without functions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_redis_gets_the_script_from_the_gateway() {
    let mut redis = RedisServer::start();
    assert_eq!(script_exists(redis.port), "0");
    let (_gw, http) = gateway_for(&redis, &["--health-cache-ms", "0", "--redis-calls", "evalsha"]).await;
    http.wait_metric(START_LOADED, 1.0).await;
    assert_eq!(script_exists(redis.port), "1", "loaded at start");

    // Flushed: the pipeline's calls meet NOSCRIPT, the gateway loads the script once and runs
    // them again, in order.
    redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
    assert_eq!(script_exists(redis.port), "0");
    let (status, body) = http.post("/pipeline", json!([call(1), call(2), call(1)])).await;
    assert_eq!(status, 200, "{body}");
    let e = body.as_array().expect("array");
    assert_eq!(
        [entry_verdict(&e[0]), entry_verdict(&e[1]), entry_verdict(&e[2])],
        [(true, LIMIT - 1), (true, LIMIT - 1), (true, LIMIT - 2)]
    );
    assert_eq!(script_exists(redis.port), "1");
    http.wait_metric(NOSCRIPT_LOADED, 1.0).await;

    // Flushed again, one call on `POST /`.
    redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 3));
    http.wait_metric(NOSCRIPT_LOADED, 2.0).await;

    // A restarted Redis has neither the script nor the counts.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get("/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(script_exists(redis.port), "0");
    let (status, body) = http.post("/pipeline", json!([call(1)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(entry_verdict(&body[0]), (true, LIMIT - 1));
    assert_eq!(script_exists(redis.port), "1");
    let text = http.wait_metric(NOSCRIPT_LOADED, 3.0).await;
    assert_eq!(redis_calls(redis.port, "eval"), 0);
    assert_eq!(redis_calls(redis.port, "fcall"), 0);
    assert!(!library_loaded(redis.port));
    assert_eq!(metric_value(&text, r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="failed"}"#), 0.0);
}

/// On Redis 7 the gateway loads sluice's function library and runs every call as FCALL: at
/// start, and again when a call finds the function gone (FUNCTION FLUSH, a restart), once for
/// all the calls that found it gone, which then run once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_redis_gets_the_library_from_the_gateway() {
    let mut redis = RedisServer::start();
    assert!(!library_loaded(redis.port));
    let (_gw, http) = gateway_for(&redis, &["--health-cache-ms", "0"]).await;
    http.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    assert!(library_loaded(redis.port), "loaded at start");
    let (_, health) = http.get("/healthz").await;
    assert!(health.contains(r#""calls":"FCALL""#), "{health}");
    assert!(health.contains(&format!(r#""function":"{}""#, sluice_gateway::command::function())), "{health}");

    // Flushed mid-run: the pipeline's calls find the function gone, one load serves them
    // all, and each runs once, in order.
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    redis_cli(redis.port, &["FUNCTION", "FLUSH"]);
    assert!(!library_loaded(redis.port));
    let (status, body) = http.post("/pipeline", json!([call(1), call(2), call(1)])).await;
    assert_eq!(status, 200, "{body}");
    let e = body.as_array().expect("array");
    assert_eq!(
        [entry_verdict(&e[0]), entry_verdict(&e[1]), entry_verdict(&e[2])],
        [(true, LIMIT - 2), (true, LIMIT - 1), (true, LIMIT - 3)]
    );
    assert!(library_loaded(redis.port));
    http.wait_metric(NOT_FOUND_LOADED, 1.0).await;

    // Flushed again, and many calls at once find it gone: still one load.
    redis_cli(redis.port, &["FUNCTION", "FLUSH"]);
    let many = (10..30).map(|id| {
        let http = &http;
        async move { http.post("/", call(id)).await }
    });
    for (status, body) in futures_util::future::join_all(many).await {
        assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    }
    let text = http.wait_metric(NOT_FOUND_LOADED, 2.0).await;
    assert_eq!(metric_value(&text, NOT_FOUND_LOADED), 2.0, "one load for all of them");

    // SCRIPT FLUSH drops scripts, not functions: calls go on as FCALL, nothing is loaded.
    redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 4)), "{body}");
    let (_, text) = http.get("/metrics").await;
    assert_eq!(metric_value(&text, NOT_FOUND_LOADED), 2.0);
    assert_eq!(metric_value(&text, NOSCRIPT_LOADED), 0.0);

    // A restarted Redis has neither the library nor the counts.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get("/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http.post("/pipeline", json!([call(1)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(entry_verdict(&body[0]), (true, LIMIT - 1));
    let text = http.wait_metric(NOT_FOUND_LOADED, 3.0).await;
    assert_eq!(metric_value(&text, r#"sluice_gateway_library_loads_total{trigger="not_found",outcome="failed"}"#), 0.0);
    // Neither the script nor EVALSHA was ever needed.
    assert_eq!(script_exists(redis.port), "0");
    assert_eq!(metric_value(&text, EVALSHAS), 0.0);
    assert_eq!(metric_value(&text, START_LOADED), 0.0);
}

/// `redis-server` arguments that take functions away, as on a Redis before 7.
const NO_FUNCTIONS: [&str; 6] = ["--rename-command", "FUNCTION", "", "--rename-command", "FCALL", ""];

/// A Redis without functions (before Redis 7; here a Redis 7 with FUNCTION and FCALL renamed
/// away): `auto` finds out with its load at start and runs every call as EVALSHA, the script
/// loaded again after a SCRIPT FLUSH; `fcall` refuses to guess and says why its calls fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_functions_calls_fall_back_to_evalsha() {
    let redis = RedisServer::start_with_args(&NO_FUNCTIONS);
    let (_gw, http) = gateway_for(&redis, &[]).await;
    let text = http.wait_metric(START_LOADED, 1.0).await;
    assert_eq!(metric_value(&text, LIBRARY_START_FAILED), 0.0, "no functions is not a failure");
    assert_eq!(script_exists(redis.port), "1");
    let (status, health) = http.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains(r#""calls":"EVALSHA""#), "{health}");

    let (status, body) = http.post("/pipeline", json!([call(1), call(1)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1])], [(true, LIMIT - 1), (true, LIMIT - 2)]);
    redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 3)), "{body}");
    let text = http.wait_metric(NOSCRIPT_LOADED, 1.0).await;
    assert_eq!((metric_value(&text, EVALSHAS), metric_value(&text, FCALLS)), (4.0, 0.0), "{text}");
    assert_eq!(redis_calls(redis.port, "evalsha"), 4, "three calls, one of them twice (NOSCRIPT, then again)");
    assert_eq!(redis_calls(redis.port, "eval"), 0);

    // `--redis-calls fcall` on the same Redis: the load fails, and so does every call, saying why.
    let (_strict, strict) = gateway_for(&redis, &["--redis-calls", "fcall"]).await;
    strict.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    let (status, body) = strict.post("/", call(2)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no functions")), "{body}");
    assert_eq!(redis_cli(redis.port, &["EXISTS", &key(2)]).trim(), "0");
}

/// A gateway running FCALL whose Redis is replaced by one without functions: the first call
/// that meets the unknown command loads the script and runs again as EVALSHA, once, and every
/// call after it runs as EVALSHA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_loses_functions_gets_evalsha() {
    let mut redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &["--health-cache-ms", "0"]).await;
    http.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");

    redis.restart_with_args(&NO_FUNCTIONS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get("/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http.post("/pipeline", json!([call(1), call(1)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!([entry_verdict(&body[0]), entry_verdict(&body[1])], [(true, LIMIT - 1), (true, LIMIT - 2)]);
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 3)), "{body}");
    let (_, health) = http.get("/healthz").await;
    assert!(health.contains(r#""calls":"EVALSHA""#), "{health}");
    let text = http.wait_metric(NOSCRIPT_LOADED, 1.0).await;
    // FCALL: the call before the restart, and the pipeline's batch, which did not run; its
    // two calls then ran one by one as EVALSHA.
    assert_eq!((metric_value(&text, FCALLS), metric_value(&text, EVALSHAS)), (2.0, 3.0), "{text}");
    assert_eq!(redis_calls(redis.port, "evalsha"), 3);
}

/// Redis down when the gateway starts: the load at start fails (and says so). With `auto`,
/// calls run as EVALSHA until a load reaches Redis: the first call that meets NOSCRIPT tries
/// the library first (and then runs as FCALL), and so does a health probe that finds Redis up.
/// With `evalsha`, the script is loaded by the first call that finds Redis up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_gets_what_it_calls_when_it_comes_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let quick = ["--timeout-ms", "500", "--health-cache-ms", "0"];
    let (_by_call, by_call) = gateway_for(&redis, &quick).await;
    let (_by_probe, by_probe) = gateway_for(&redis, &quick).await;
    let (_script, script) = gateway_for(&redis, &[&quick[..], &["--redis-calls", "evalsha"]].concat()).await;
    by_call.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    by_probe.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    script.wait_metric(r#"sluice_gateway_script_loads_total{trigger="start",outcome="failed"}"#, 1.0).await;
    redis.restart();

    // No health probe: the first call that reaches Redis meets NOSCRIPT. (Calls that find the
    // connection not yet back reach nothing.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = by_call.post("/pipeline", json!([call(1)])).await;
        if status != 502 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(entry_verdict(&body[0]), (true, LIMIT - 1));
    let text = by_call.wait_metric(LIBRARY_NOSCRIPT_LOADED, 1.0).await;
    assert_eq!(metric_value(&text, FCALLS), 1.0);
    assert_eq!(metric_value(&text, NOSCRIPT_LOADED), 0.0, "the script was not needed");

    // A health probe finds Redis up and loads the library.
    let deadline = Instant::now() + Duration::from_secs(10);
    while by_probe.get("/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the gateway never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    by_probe.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    let (status, body) = by_probe.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 2)), "{body}");
    let (_, text) = by_probe.get("/metrics").await;
    assert_eq!((metric_value(&text, EVALSHAS), metric_value(&text, FCALLS)), (0.0, 1.0));

    // evalsha: the script, loaded by the first call, never the library.
    redis_cli(redis.port, &["FUNCTION", "FLUSH"]);
    while script.get("/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the gateway never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = script.post("/pipeline", json!([call(1)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(entry_verdict(&body[0]), (true, LIMIT - 3));
    script.wait_metric(NOSCRIPT_LOADED, 1.0).await;
    assert!(!library_loaded(redis.port));
}

/// A Redis that cannot take the library now (here out of memory, which refuses FUNCTION LOAD;
/// as well loading its data, busy, a replica) does not pin EVALSHA: `auto` stays undecided,
/// calls run on the script meanwhile, and once Redis takes the library the next health probe,
/// or the next call that meets NOSCRIPT, moves calls to FCALL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_cannot_take_the_library_yet_is_asked_again() {
    const LIBRARY_NOSCRIPT_FAILED: &str = r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="failed"}"#;
    let redis = RedisServer::start();
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "1"]);
    let quick = ["--health-cache-ms", "0"];
    let (_by_call, by_call) = gateway_for(&redis, &quick).await;
    let (_by_probe, by_probe) = gateway_for(&redis, &quick).await;
    by_call.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    let text = by_probe.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    assert_eq!(metric_value(&text, START_LOADED), 0.0, "EVALSHA not chosen, so the script not loaded: {text}");
    assert_eq!(script_exists(redis.port), "0");

    // Still out of memory: a probe asks again (and is refused again); calls run as EVALSHA.
    let (status, health) = by_probe.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains(r#""calls":"EVALSHA""#), "{health}");
    by_probe.wait_metric(LIBRARY_START_FAILED, 2.0).await;
    // A call meets NOSCRIPT: the library is refused again, so it runs on the script (a dry
    // call writes nothing, which Redis allows past maxmemory).
    let (status, body) = by_call.post("/", dry_call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    let text = by_call.wait_metric(NOSCRIPT_LOADED, 1.0).await;
    assert_eq!(metric_value(&text, LIBRARY_NOSCRIPT_FAILED), 1.0, "{text}");
    assert!(!library_loaded(redis.port));

    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    // The script is there: calls go on as EVALSHA until something asks again.
    let (status, body) = by_call.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    // A health probe finds Redis taking the library.
    let (_, health) = by_probe.get("/healthz").await;
    assert!(health.contains(r#""calls":"FCALL""#), "{health}");
    by_probe.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    let (status, body) = by_probe.post("/", call(2)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    let (_, text) = by_probe.get("/metrics").await;
    assert_eq!((metric_value(&text, EVALSHAS), metric_value(&text, FCALLS)), (0.0, 1.0), "{text}");
    // A NOSCRIPT finds out too.
    redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
    let (status, body) = by_call.post("/", call(1)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 2)), "{body}");
    let text = by_call.wait_metric(LIBRARY_NOSCRIPT_LOADED, 1.0).await;
    // EVALSHA: the dry call twice (NOSCRIPT, then on the loaded script), the first write once,
    // the second once (NOSCRIPT); then that one ran as FCALL.
    assert_eq!((metric_value(&text, EVALSHAS), metric_value(&text, FCALLS)), (4.0, 1.0), "{text}");
    assert_eq!(script_exists(redis.port), "0", "not loaded again: FCALL needs none");
}

/// A pipeline's calls run in order with an answer each, errors in place, whether they go to
/// Redis as one FCALL of the batch function (the default) or one FCALL each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_keep_order_and_per_command_errors() {
    for (batch, fcalls, batches) in [("true", 1.0, 1.0), ("false", 8.0, 0.0)] {
        let redis = RedisServer::start();
        let (_gw, http) = gateway_for(&redis, &["--batch-calls", batch]).await;
        http.wait_metric(LIBRARY_START_LOADED, 1.0).await;
        redis_cli(redis.port, &["LPUSH", &key(3), "x"]);

        let (status, body) = http
            .post("/pipeline", json!([call(1), call(1), call(2), call(3), call(1), dry_call(1), eval_call(2), call(1)]))
            .await;
        assert_eq!(status, 200, "{body}");
        let e = body.as_array().expect("array");
        assert_eq!(e.len(), 8);
        assert_eq!(entry_verdict(&e[0]), (true, 4));
        assert_eq!(entry_verdict(&e[1]), (true, 3));
        assert_eq!(entry_verdict(&e[2]), (true, 4));
        let wrongtype = e[3]["error"].as_str().expect("an error in place");
        assert!(wrongtype.contains("WRONGTYPE"), "{wrongtype}");
        assert_eq!(entry_verdict(&e[4]), (true, 2));
        assert_eq!(entry_verdict(&e[5]), (true, 1), "dry: decided, not written");
        assert_eq!(entry_verdict(&e[6]), (true, 3));
        assert_eq!(entry_verdict(&e[7]), (true, 1));

        let (_, text) = http.get("/metrics").await;
        assert_eq!(metric_value(&text, FCALLS), fcalls, "--batch-calls {batch}");
        assert_eq!(metric_value(&text, "sluice_gateway_redis_batches_total"), batches);
        assert_eq!(metric_value(&text, "sluice_gateway_batched_calls_total"), batches * 8.0);
        assert_eq!(redis_calls(redis.port, "fcall") as f64, fcalls);
    }
}

/// h2c (HTTP/2 with prior knowledge, as Envoy speaks to an `http2_protocol_options`
/// cluster) on the same port as HTTP/1.1: calls sent at once as streams of one connection get
/// the same answers, each counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_served_on_the_same_port() {
    let redis = RedisServer::start();
    let (gw, http1) = gateway_for(&redis, &[]).await;
    let (mut conn, _) = h2::connect(&raw_addr(&gw.base)).await;
    let request = |id: u32, path: &str, token: &str, body: &Value| {
        let body = body.to_string();
        let fields = h2::post_fields(path, token, Some(body.len()));
        [h2::header_frames(id, &h2::block_of(&fields), false, true), h2::frame(h2::DATA, h2::END_STREAM, id, body.as_bytes())]
            .concat()
    };

    // As many calls per identity as its limit, all at once.
    let streams: Vec<u32> = (0..2 * LIMIT as u32).map(|i| 1 + 2 * i).collect();
    let all: Vec<u8> = streams
        .iter()
        .enumerate()
        .flat_map(|(i, &id)| request(id, "/pipeline", TOKEN, &json!([call(1 + i as u64 % 2), dry_call(1 + i as u64 % 2)])))
        .collect();
    conn.write_all(&all).await.unwrap();
    for o in h2::outcomes(&mut conn, &streams).await {
        assert_eq!(o.status, Some(200), "{o:?}");
        let body: Value = serde_json::from_str(&o.body).unwrap();
        assert!(entry_verdict(&body[0]).0, "{body}");
    }
    // Each admitted call counted once, whichever protocol asks next.
    let (status, body) = http1.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (false, 0));
    let next = streams.last().copied().unwrap_or(1) + 2;
    conn.write_all(&request(next, "/", TOKEN, &dry_call(2))).await.unwrap();
    let o = &h2::outcomes(&mut conn, &[next]).await[0];
    assert_eq!(o.status, Some(200), "{o:?}");
    let body: Value = serde_json::from_str(&o.body).unwrap();
    assert_eq!(verdict(&body["result"]), (false, 0));
    // Refusals and auth are the same on h2c.
    conn.write_all(&[request(next + 2, "/", TOKEN, &json!(["FLUSHALL"])), request(next + 4, "/", "wrong", &call(3))].concat())
        .await
        .unwrap();
    let got = h2::outcomes(&mut conn, &[next + 2, next + 4]).await;
    assert_eq!([got[0].status, got[1].status], [Some(400), Some(401)], "{got:?}");

    let (_, text) = http1.get("/metrics").await;
    assert_eq!(metric_value(&text, r#"sluice_gateway_connections_protocol_total{protocol="h2c"}"#), 1.0, "{text}");
    assert_eq!(metric_value(&text, r#"sluice_gateway_requests_total{endpoint="/pipeline",status="200"}"#), (2 * LIMIT) as f64);
}

fn raw_addr(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required() {
    let redis = RedisServer::start();
    let (gw, _) = gateway_for(&redis, &[]).await;
    for token in [None, Some("wrong"), Some("s3cret-t0ke"), Some("s3cret-t0ken2")] {
        let http = Http::new(&gw.base, token);
        for path in ["/", "/pipeline"] {
            let body = if path == "/" { call(1) } else { json!([call(1)]) };
            let (status, body) = http.post(path, body).await;
            assert_eq!(status, 401, "{token:?} {path}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains("bearer token")));
        }
    }
    assert_eq!(dbsize(redis.port), "0");
    let ok = Http::new(&gw.base, Some(TOKEN));
    assert_eq!(ok.post("/", call(1)).await.0, 200);
    // Probes and scrapers need no token.
    let anonymous = Http::new(&gw.base, None);
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/metrics").await.0, 200);

    // Without a configured token, no header is needed.
    let open = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let http = Http::new(&open.base, None);
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_and_wrong_paths() {
    let redis = RedisServer::start();
    // 128 is the least --max-pipeline allowed: the most rules one request may send.
    let (_gw, http) = gateway_for(&redis, &["--max-body-bytes", "32768", "--max-pipeline", "128"]).await;

    let big = json!((1..=400).map(call).collect::<Vec<_>>()).to_string();
    assert!(big.len() > 32768);
    let (status, body) = http.post_raw("/pipeline", big, &[]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("32768 bytes")));
    let long = json!((1..=129).map(call).collect::<Vec<_>>());
    assert!(long.to_string().len() < 32768);
    let (status, body) = http.post("/pipeline", long).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("at most 128")), "{body}");
    assert_eq!(dbsize(redis.port), "0");

    assert_eq!(http.post("/nowhere", call(1)).await.0, 404);
    assert_eq!(http.get("/").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_in_time_and_recovers() {
    let mut redis = RedisServer::start();
    let (_gw, http) = gateway_for(&redis, &["--timeout-ms", "300"]).await;
    assert_eq!(http.post("/", call(1)).await.0, 200);
    assert_eq!(http.get("/healthz").await.0, 200);

    // Connected, then silent (a stopped process): the gateway's deadline ends the wait, a 504.
    redis.hang(true);
    for (path, body) in [("/", call(2)), ("/pipeline", json!([call(2)]))] {
        let (status, body) = http.post(path, body).await;
        assert_eq!(status, 504, "{path}: {body}");
    }
    redis.hang(false);

    redis.stop();
    let bound = Duration::from_millis(300 + 1500);
    for (path, body) in [("/", call(1)), ("/pipeline", json!([call(1)]))] {
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
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "unavailable");

    // Same port again: the connection manager reconnects on its own, and the script comes back.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if http.get("/healthz").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = http.post("/", call(1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (true, LIMIT - 1));
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
    let (status, body) = http.post("/", call(1)).await;
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
    for (path, body) in [("/", call(1)), ("/pipeline", json!([call(1), call(2)]))] {
        let started = Instant::now();
        let (status, body) = http.post(path, body).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < bound, "{path} took {took:?}");
        assert_eq!(status, 504, "{path}: {body}");
    }
    let started = Instant::now();
    assert_eq!(http.get("/healthz").await.0, 503);
    assert!(started.elapsed() < bound);

    let metrics = http.wait_metric(LIBRARY_START_FAILED, 1.0).await;
    let timeouts = metric(&metrics, r#"sluice_gateway_redis_errors_total{kind="timeout"}"#);
    let transport = metric(&metrics, r#"sluice_gateway_redis_errors_total{kind="transport"}"#);
    assert!(timeouts.unwrap_or(0.0) + transport.unwrap_or(0.0) >= 2.0, "{metrics}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_commands_and_errors() {
    let redis = RedisServer::start();
    let (gw, http) = gateway_for(&redis, &[]).await;
    http.wait_metric(LIBRARY_START_LOADED, 1.0).await;
    redis_cli(redis.port, &["LPUSH", &key(9), "x"]);
    http.post("/", call(1)).await;
    http.post("/", call(9)).await;
    http.post("/pipeline", json!([eval_call(1), call(2), dry_call(3)])).await;
    http.post("/", json!(["GET", "x"])).await;
    Http::new(&gw.base, None).post("/", call(1)).await;

    let (status, text) = http.get("/metrics").await;
    assert_eq!(status, 200);
    let m = |series: &str| metric(&text, series);
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="200"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="400"}"#), Some(2.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/",status="401"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_requests_total{endpoint="/pipeline",status="200"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="EVALSHA"}"#), Some(4.0));
    assert_eq!(m(r#"sluice_gateway_commands_total{command="EVAL"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_refused_total{reason="command"}"#), Some(1.0));
    assert_eq!(m(r#"sluice_gateway_redis_errors_total{kind="reply"}"#), Some(1.0));
    assert_eq!(m(LIBRARY_START_LOADED), Some(1.0));
    assert_eq!(m(NOT_FOUND_LOADED), Some(0.0));
    assert_eq!(m(START_LOADED), Some(0.0), "Redis 7: the library, not the script");
    // Two calls alone, and the pipeline's three in one batch.
    assert_eq!(m(FCALLS), Some(3.0));
    assert_eq!(m("sluice_gateway_redis_batches_total"), Some(1.0));
    assert_eq!(m("sluice_gateway_batched_calls_total"), Some(3.0));
    assert_eq!(m(EVALSHAS), Some(0.0));
    assert_eq!(m(r#"sluice_gateway_request_duration_seconds_count{endpoint="/"}"#), Some(4.0));
    assert_eq!(m(r#"sluice_gateway_request_duration_seconds_bucket{endpoint="/",le="+Inf"}"#), Some(4.0));
    assert!(text.contains("# TYPE sluice_gateway_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE sluice_gateway_refused_total counter"));
    assert!(text.contains("# TYPE sluice_gateway_script_loads_total counter"));
    assert!(text.contains("# TYPE sluice_gateway_library_loads_total counter"));
    let (_, health) = http.get("/healthz").await;
    assert!(health.contains(&format!("\"script\":\"{}\"", sha())), "{health}");
}

/// A request in flight when shutdown begins is answered; new connections are refused after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let redis = RedisServer::start();
    let (mut gw, http) = gateway_for(&redis, &[]).await;
    let addr = gw.base.trim_start_matches("http://").to_string();

    // Send the headers and half the body, so the handler is running and waiting for the rest.
    let body = call(1).to_string();
    let (head, tail) = body.as_bytes().split_at(10);
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
    let answer: Value = serde_json::from_str(response.rsplit("\r\n\r\n").next().unwrap_or_default()).expect("a JSON answer");
    assert_eq!(verdict(&answer["result"]), (true, LIMIT - 1));
    gw.finished().await.expect("clean shutdown");
}
