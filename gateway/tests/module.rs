//! sluice's Redis module (`redis-module/`) loaded into a real `redis-server` and a real Redis
//! Cluster: it decides exactly as the function library does, on the same keys (proxies whose
//! gateways run calls either way share them); its writes reach a replica as their effects;
//! hostile calls get an error and Redis lives; the gateway runs calls through it, follows
//! slots, and falls back to the library when Redis no longer has it.
// A test may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use redis::Value;
use sluice::rate::Rate;
use sluice::redis::script::{self, batch_counts, rule_args, ARGS_PER_RULE};
use sluice::strategy::Strategy;
use support::calls::{call, dry_call, entry_verdict, hash_tag, verdict, LIMIT};
use support::{metric, metric_value, redis_cli, redis_module, Http, RedisCluster, RedisServer, TestGateway};

const TOKEN: &str = "m0dule-t0ken";
const MODULE_CALLS: &str = r#"sluice_gateway_redis_calls_total{command="MODULE"}"#;
const FCALLS: &str = r#"sluice_gateway_redis_calls_total{command="FCALL"}"#;

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap()
}

/// `cmd` with `words` as its arguments, answered as a value (an error reply is a value too).
fn query(con: &mut redis::Connection, words: &[Vec<u8>]) -> Value {
    let mut cmd = redis::cmd(std::str::from_utf8(&words[0]).unwrap());
    for w in &words[1..] {
        cmd.arg(w.as_slice());
    }
    // An error reply comes back as `Value::ServerError`, not as `Err`.
    redis::ConnectionLike::req_packed_command(con, &cmd.get_packed_command()).expect("an answer from Redis")
}

fn words(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// A small deterministic generator (xorshift): the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn strategy(rng: &mut Rng) -> Strategy {
    let burst = [None, Some(1 + rng.below(6))][rng.below(2) as usize];
    match rng.below(8) {
        0 => Strategy::FixedWindow,
        1 => Strategy::SlidingWindowCounter,
        2 => Strategy::SlidingWindowLog { max_entries: 1 + rng.below(6) as u32 },
        3 => Strategy::TokenBucket { burst },
        4 => Strategy::TokenBucketDebt { burst, max_debt: rng.below(4) },
        5 => Strategy::LeakyBucket { burst },
        6 => Strategy::LeakyBucketQueue { burst, max_delay_ms: [0, 250, 3000][rng.below(3) as usize] },
        _ => Strategy::Gcra { burst },
    }
}

/// One call's keys (named by `name`) and arguments: one to three limits (a key may be named
/// twice), maybe `dry`.
fn random_call(rng: &mut Rng, name: &dyn Fn(u64) -> String) -> (Vec<String>, Vec<String>) {
    let n = 1 + rng.below(3);
    let (mut keys, mut args) = (Vec::new(), Vec::new());
    for _ in 0..n {
        keys.push(name(rng.below(3)));
        let rate = Rate { limit: 1 + rng.below(5), period_ms: [1000, 60_000][rng.below(2) as usize] };
        args.extend(rule_args(&strategy(rng), &rate, 1 + rng.below(2)));
    }
    if rng.below(5) == 0 {
        args.push("dry".into());
    }
    (keys, args)
}

/// `FCALL sluice_batch_<id>` of calls' keys and arguments, or the module's batch command.
fn batch_words(head: &[&str], calls: &[(Vec<String>, Vec<String>)], now_us: Option<u64>) -> Vec<Vec<u8>> {
    let counts: Vec<(usize, usize)> = calls.iter().map(|(k, a)| (k.len(), a.len() + usize::from(now_us.is_some()))).collect();
    let mut out: Vec<String> = head.iter().map(|w| w.to_string()).collect();
    out.push(calls.iter().map(|(k, _)| k.len()).sum::<usize>().to_string());
    out.extend(calls.iter().flat_map(|(k, _)| k.clone()));
    out.extend(batch_counts(&counts).map(|n| n.to_string()));
    for (_, args) in calls {
        out.extend(args.clone());
        out.extend(now_us.map(|t| t.to_string()));
    }
    out.into_iter().map(String::into_bytes).collect()
}

/// What each key holds now: its text and its lifetime in ms.
fn holdings(con: &mut redis::Connection, keys: &[String]) -> Vec<(Value, i64)> {
    keys.iter()
        .map(|k| {
            let text = query(con, &words(&["GET", k]));
            let pttl: i64 = redis::cmd("PTTL").arg(k).query(con).unwrap();
            (text, pttl)
        })
        .collect()
}

/// The same text, and lifetimes within 100 ms (real time passes between the writes and the
/// reads; the simulated times are the same).
fn assert_holds_alike(held: &(Value, i64), expected: &(Value, i64), what: &str) {
    assert_eq!(held.0, expected.0, "{what}");
    assert!(
        (held.1 - expected.1).abs() <= 100 || held.1.min(expected.1) < 0 && held.1 == expected.1,
        "{what}: PTTL {} against {}",
        held.1,
        expected.1
    );
}

/// Calls and batches at simulated times, sent as `FCALL` of the library's test build on keys
/// `a:*`, as the module's commands (its test build) on keys `m:*`, and alternating between the
/// two on keys `x:*`: every reply is the same, and so is what every key holds.
#[test]
fn the_module_decides_as_the_library_on_shared_keys() {
    let module = redis_module(true);
    let redis = RedisServer::start_with_args(&["--loadmodule", &module]);
    let mut con = connect(redis.port);
    let loaded = query(&mut con, &[b"FUNCTION".to_vec(), b"LOAD".to_vec(), script::library_with_clock_override().into_bytes()]);
    assert!(matches!(loaded, Value::BulkString(_)), "{loaded:?}");
    let (fcall, fbatch) = (script::function_name(), script::batch_function_name());
    let (mcall, mbatch) = (script::module_command_name(), script::module_batch_command_name());
    // The test build checks overflow: a numkeys at usize::MAX must be an error, not a panic
    // (which would abort Redis).
    let huge = query(&mut con, &words(&[&mcall, "18446744073709551615", "k"]));
    assert!(matches!(&huge, Value::ServerError(_)), "{huge:?}");
    let mut rng = Rng(0x05ee_d0f5_u64);
    let mut now_us = 1_700_000_000_000_000u64;
    let all_keys: Vec<String> = ["a", "m", "x"].iter().flat_map(|p| (0..3).map(move |i| format!("{p}:{i}"))).collect();
    for step in 0..600 {
        now_us += rng.below(1_500_000);
        let calls: Vec<(Vec<String>, Vec<String>)> =
            (0..1 + rng.below(3)).map(|_| random_call(&mut rng, &|i| format!("{{}}:{i}"))).collect();
        let named = |prefix: &str| -> Vec<(Vec<String>, Vec<String>)> {
            calls.iter().map(|(k, a)| (k.iter().map(|k| k.replace("{}", prefix)).collect(), a.clone())).collect()
        };
        let mixed_runs_module = step % 2 == 1;
        let sent = |prefix: &str, module: bool| -> Vec<Vec<u8>> {
            let calls = named(prefix);
            if calls.len() > 1 {
                return if module {
                    batch_words(&[&mbatch], &calls, Some(now_us))
                } else {
                    batch_words(&["FCALL", &fbatch], &calls, Some(now_us))
                };
            }
            let (keys, args) = &calls[0];
            let mut out: Vec<String> = if module { vec![mcall.clone()] } else { vec!["FCALL".into(), fcall.clone()] };
            out.push(keys.len().to_string());
            out.extend(keys.clone());
            out.extend(args.clone());
            out.push(now_us.to_string());
            out.into_iter().map(String::into_bytes).collect()
        };
        let by_library = query(&mut con, &sent("a", false));
        let by_module = query(&mut con, &sent("m", true));
        let by_either = query(&mut con, &sent("x", mixed_runs_module));
        assert_eq!(by_module, by_library, "step {step}: {calls:?}");
        assert_eq!(by_either, by_library, "step {step} (mixed, module: {mixed_runs_module}): {calls:?}");
        let held = holdings(&mut con, &all_keys);
        for i in 0..3 {
            assert_holds_alike(&held[3 + i], &held[i], &format!("step {step}: m:{i} against a:{i}"));
            assert_holds_alike(&held[6 + i], &held[i], &format!("step {step}: x:{i} against a:{i}"));
        }
    }
}

/// The production module: no clock from a caller, and nothing a caller sends stops Redis or
/// writes where it should not.
#[test]
fn the_production_module_refuses_a_clock_and_outlives_hostile_calls() {
    let module = redis_module(false);
    let redis = RedisServer::start_with_args(&["--loadmodule", &module]);
    let mut con = connect(redis.port);
    let (mcall, mbatch) = (script::module_command_name(), script::module_batch_command_name());
    let rule = rule_args(&Strategy::FixedWindow, &Rate { limit: 3, period_ms: 60_000 }, 1);
    let with = |head: &[&str], tail: &[&[u8]]| -> Vec<Vec<u8>> {
        let mut w = words(head);
        w.extend(tail.iter().map(|t| t.to_vec()));
        w
    };
    let rule_words: Vec<&[u8]> = rule.iter().map(|a| a.as_bytes()).collect();
    let call = |key: &str, extra: &[&[u8]]| -> Vec<Vec<u8>> {
        let mut tail = rule_words.clone();
        tail.extend_from_slice(extra);
        with(&[&mcall, "1", key], &tail)
    };
    let error = |v: &Value| -> String {
        match v {
            Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or_default()),
            other => panic!("expected an error reply, got {other:?}"),
        }
    };
    // A time after the limits is the test build's clock; here it is refused, and nothing is
    // written.
    let refused = query(&mut con, &call("k", &[b"1700000000000000"]));
    assert!(error(&refused).contains("unexpected option 1700000000000000"), "{refused:?}");
    assert_eq!(redis_cli(redis.port, &["EXISTS", "k"]).trim(), "0");
    // `dry` decides without writing; a plain call writes the key with a lifetime.
    let dry = query(&mut con, &call("k", &[b"dry"]));
    assert!(matches!(&dry, Value::Array(a) if a[0] == Value::Int(1)), "{dry:?}");
    assert_eq!(redis_cli(redis.port, &["EXISTS", "k"]).trim(), "0");
    for expected in [1, 1, 1, 0] {
        let v = query(&mut con, &call("k", &[]));
        assert!(matches!(&v, Value::Array(a) if a[0] == Value::Int(expected)), "{v:?}");
    }
    let pttl: i64 = redis_cli(redis.port, &["PTTL", "k"]).trim().parse().unwrap();
    // A window's rest, and the second keys outlive their state by.
    assert!((1..=60_000 + sluice::redis::native::TTL_PAD_MS as i64).contains(&pttl), "{pttl}");

    redis_cli(redis.port, &["RPUSH", "list", "1"]);
    // More keys than one rule's limits in a call, or than the gateway runs at once in a batch:
    // each key may hold the longest log, and nothing stops a module command that runs long.
    let many = |n: usize| -> (Vec<String>, Vec<&[u8]>) { ((0..n).map(|i| format!("many:{i}")).collect(), rule_words.repeat(n)) };
    let (nine_keys, nine_args) = many(9);
    let mut nine = words(&[&mcall, "9"]);
    nine.extend(nine_keys.iter().map(|k| k.as_bytes().to_vec()));
    nine.extend(nine_args.iter().map(|a| a.to_vec()));
    let (keys65, _) = many(65);
    let mut batch65 = words(&[&mbatch, "65"]);
    batch65.extend(keys65.iter().map(|k| k.as_bytes().to_vec()));
    batch65.push(b"65".to_vec());
    for _ in 0..65 {
        batch65.extend([b"1".to_vec(), b"6".to_vec()]);
    }
    for _ in 0..65 {
        batch65.extend(rule_words.iter().map(|w| w.to_vec()));
    }
    let (keys9, args9) = many(9);
    let mut batch_of_nine = words(&[&mbatch, "9"]);
    batch_of_nine.extend(keys9.iter().map(|k| k.as_bytes().to_vec()));
    batch_of_nine.extend([b"1".to_vec(), b"9".to_vec(), b"54".to_vec()]);
    batch_of_nine.extend(args9.iter().map(|a| a.to_vec()));
    let hostile: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (nine, "a call names 9 keys; at most 8"),
        (batch65, "a batch names 65 keys; at most 64"),
        (batch_of_nine, "call 1 of the batch has no keys or bad counts"),
        (words(&[&mcall]), "numkeys must be a non-negative integer"),
        (with(&[&mcall, "0"], &rule_words), "got 6 for 0 keys"),
        (with(&[&mcall, "-1", "k"], &rule_words), "numkeys must be a non-negative integer"),
        (with(&[&mcall, "+1", "k"], &rule_words), "numkeys must be a non-negative integer"),
        (with(&[&mcall, "99999999999999999999", "k"], &rule_words), "numkeys must be a non-negative integer"),
        (with(&[&mcall, "18446744073709551615", "k"], &rule_words), "numkeys must be a non-negative integer"),
        (with(&[&mcall, "9", "k"], &rule_words), "numkeys is greater than"),
        (with(&[&mcall, "1", "k"], &[b"fixed_window", b"3"]), "expected 6 arguments per key"),
        (call("k", &[b"\xc4\x80\x00\r\nX"]), "unexpected option ????X"),
        (call("k", &[b"\xff\xfe"]), "unexpected option"),
        (with(&[&mcall, "1", "k"], &[b"no_such", b"3", b"1000", b"1", b"0", b"0"]), "unknown strategy no_such"),
        (with(&[&mcall, "1", "k"], &[b"fixed_window", b"1e3", b"1000", b"1", b"0", b"0"]), "must be non-negative integers"),
        (with(&[&mcall, "1", "k"], &[b"fixed_window", b"3", b"1000", b"0", b"0", b"0"]), "cost of key 1 must be at least 1"),
        (call("list", &[]), "WRONGTYPE"),
        (with(&[&mbatch, "1", "k", "0"], &rule_words), "call count and two counts"),
        (with(&[&mbatch, "1", "k", "2", "1", "6"], &rule_words), "call 2 of the batch has no keys or bad counts"),
        (with(&[&mbatch, "1", "k", "1", "1", "7"], &rule_words), "the batch names"),
    ];
    for (sent, expected) in &hostile {
        let v = query(&mut con, sent);
        assert!(error(&v).contains(expected), "{sent:?}: expected {expected:?}, got {v:?}");
    }
    // A key of NUL and invalid UTF-8 bytes is a key like any other.
    let odd_key: &[u8] = b"\x00\xff\r\n";
    let mut odd = vec![mcall.as_bytes().to_vec(), b"1".to_vec(), odd_key.to_vec()];
    odd.extend(rule_words.iter().map(|w| w.to_vec()));
    let v = query(&mut con, &odd);
    assert!(matches!(&v, Value::Array(a) if a[0] == Value::Int(1)), "{v:?}");
    let held: Value = redis::cmd("GET").arg(odd_key).query(&mut con).unwrap();
    assert!(matches!(&held, Value::BulkString(b) if b.starts_with(b"fw ")), "{held:?}");
    // Redis answered everything and holds exactly what the plain calls wrote.
    assert_eq!(redis_cli(redis.port, &["PING"]).trim(), "PONG");
    assert_eq!(redis_cli(redis.port, &["DBSIZE"]).trim(), "3");
    // Redis finds the keys of both commands, as a Cluster and ACLs do.
    let keys = redis_cli(redis.port, &["COMMAND", "GETKEYS", &mbatch, "2", "k1", "k2", "2", "1", "6", "1", "6"]);
    assert_eq!(keys.split_whitespace().collect::<Vec<_>>(), ["k1", "k2"]);
}

/// A replica without the module gets what the module wrote, as `SET … PXAT`: the command itself
/// never reaches it.
#[test]
fn the_modules_writes_reach_a_replica_as_their_effects() {
    let module = redis_module(false);
    let primary = RedisServer::start_with_args(&["--loadmodule", &module]);
    let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    support::wait_until("the replica in sync", || {
        redis_cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let mut con = connect(primary.port);
    let mbatch = script::module_batch_command_name();
    let mut rng = Rng(77);
    let calls: Vec<(Vec<String>, Vec<String>)> =
        (0..40).map(|_| random_call(&mut rng, &|i| format!("r:{i}"))).filter(|(_, a)| a.len() % ARGS_PER_RULE == 0).collect();
    for chunk in calls.chunks(4) {
        let v = query(&mut con, &batch_words(&[&mbatch], chunk, None));
        assert!(matches!(&v, Value::Array(a) if a.len() == chunk.len()), "{v:?}");
    }
    let synced: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    assert_eq!(synced, 1);
    let keys: Vec<String> = (0..3).map(|i| format!("r:{i}")).collect();
    let written = keys.iter().filter(|k| redis_cli(primary.port, &["EXISTS", k]).trim() == "1").count();
    assert!(written >= 2, "the calls wrote only {written} keys");
    for key in &keys {
        assert_eq!(redis_cli(replica.port, &["GET", key]), redis_cli(primary.port, &["GET", key]), "{key}");
        // The very expiry: the module sets the absolute time it replicates.
        let expiry = redis_cli(primary.port, &["PEXPIRETIME", key]);
        assert!(expiry.trim().parse::<i64>().unwrap() > 0, "{key}: {expiry}");
        assert_eq!(redis_cli(replica.port, &["PEXPIRETIME", key]), expiry, "{key}");
    }
    let stats = redis_cli(replica.port, &["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_set:") && !stats.contains("sluice"), "{stats}");
}

async fn gateway(args: &[&str]) -> (TestGateway, Http) {
    let mut all = vec!["--token", TOKEN];
    all.extend_from_slice(args);
    let gw = TestGateway::start(&all).await;
    let http = Http::new(&gw.base, Some(TOKEN));
    (gw, http)
}

async fn metrics(http: &Http) -> String {
    http.get("/metrics").await.1
}

/// Waits until the gateway says its calls run as `how` (`auto` finds out at start, in the
/// background; calls run as EVALSHA until then).
async fn wait_calls(http: &Http, how: &str) {
    support::wait_until_async(&format!("ran calls as {how}"), || async {
        let (_, body) = http.get("/healthz").await;
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (health["calls"].as_str() == Some(how), body)
    })
    .await
}

/// Waits until the gateway's load at start (in the background, while it already serves) has
/// loaded the function library: a call sent before finds it missing and runs twice.
async fn wait_library_loaded(http: &Http) {
    const LOADED: &str = r#"sluice_gateway_library_loads_total{trigger="start",outcome="loaded"}"#;
    support::wait_until_async("loaded the library at start", || async {
        let text = metrics(http).await;
        (metric(&text, LOADED) == Some(1.0), text)
    })
    .await
}

/// `auto` runs calls through the module where Redis has it. When Redis comes back without it,
/// the call that finds it gone is decided by the library instead, on the same keys, and the
/// client sees no error; with `--redis-calls module` it gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_prefers_the_module_and_falls_back_when_redis_loses_it() {
    let module = redis_module(false);
    let mut redis = RedisServer::start_with_args(&["--loadmodule", &module, "--save", "", "--appendonly", "yes"]);
    let url = redis.url();
    let (_gw, http) = gateway(&["--redis-url", &url, "--health-cache-ms", "0"]).await;
    let (_strict, strict) = gateway(&["--redis-url", &url, "--redis-calls", "module", "--health-cache-ms", "0"]).await;
    wait_calls(&http, "MODULE").await;
    let identity = 0x0d01;
    for expected_remaining in [4, 3] {
        let (status, body) = http.post("/", call(identity)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(verdict(&body["result"]), (true, expected_remaining));
    }
    let (status, body) = http.post("/pipeline", serde_json::json!([call(identity), call(identity)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(entry_verdict(&body[0]), (true, 2));
    assert_eq!(entry_verdict(&body[1]), (true, 1));
    let health: serde_json::Value = serde_json::from_str(&http.get("/healthz").await.1).unwrap();
    assert_eq!(
        (health["calls"].as_str(), health["module_command"].as_str()),
        (Some("MODULE"), Some(script::module_command_name().as_str()))
    );
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, MODULE_CALLS), 2.0 + 1.0, "{text}");
    assert_eq!(metric_value(&text, FCALLS), 0.0, "{text}");
    let (status, body) = strict.post("/", call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, 0)), "{body}");

    // The same data (the append-only file keeps the key), no module.
    redis.restart_replacing_args(&["--save", "", "--appendonly", "yes"]);
    for gw in [&http, &strict] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gw.get("/healthz").await.0 != 200 {
            assert!(std::time::Instant::now() < deadline, "the gateway did not reconnect");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Eight calls at once find the module gone: one finds out how calls run now (one library
    // load), and every call is decided once.
    let first = futures_util::future::join_all((1..=8).map(|i| http.post("/", call(identity + i)))).await;
    for (status, body) in &first {
        assert_eq!((*status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    }
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="loaded"}"#), 1.0, "{text}");
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(verdict(&body["result"]), (false, 0), "the library sees the module's count");
    let text = metrics(&http).await;
    assert!(metric_value(&text, FCALLS) >= 9.0, "{text}");
    let health: serde_json::Value = serde_json::from_str(&http.get("/healthz").await.1).unwrap();
    assert_eq!(health["calls"].as_str(), Some("FCALL"));
    let (status, body) = strict.post("/", call(identity)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("load sluice's module"), "{body}");
}

/// Two gateways on one Redis, one running calls through the module and one through the
/// library, under a concurrent burst on one identity for every strategy: Redis admits exactly
/// the limit, whichever way each call ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_and_library_proxies_admit_exactly_the_limit_together() {
    let module = redis_module(false);
    let redis = RedisServer::start_with_args(&["--loadmodule", &module]);
    let url = redis.url();
    let (_m, by_module) = gateway(&["--redis-url", &url, "--redis-calls", "module"]).await;
    let (_f, by_library) = gateway(&["--redis-url", &url, "--redis-calls", "fcall"]).await;
    // Each call runs once, as counted below, only once the library is there.
    wait_library_loaded(&by_library).await;
    let rates = [Rate { limit: 20, period_ms: support::calls::WINDOW_MS }];
    let strategies = [
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
        Strategy::SlidingWindowLog { max_entries: 20 },
        Strategy::TokenBucket { burst: None },
        Strategy::TokenBucketDebt { burst: None, max_debt: 0 },
        Strategy::LeakyBucket { burst: None },
        Strategy::LeakyBucketQueue { burst: None, max_delay_ms: 0 },
        Strategy::Gcra { burst: None },
    ];
    let sha = script::sha();
    for (i, strategy) in strategies.iter().enumerate() {
        let words = support::calls::Call {
            identity: 0x2000 + i as u64,
            strategy: strategy.clone(),
            rates: &rates,
            cost: 1,
            form: script::Form::Sha(&sha),
            dry: false,
        }
        .words();
        let body = serde_json::json!(words);
        let sends = (0..60).map(|j| {
            let (http, body) = (if j % 2 == 0 { &by_module } else { &by_library }, body.clone());
            async move { http.post("/", body).await }
        });
        let admitted = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .map(|(status, body)| {
                assert_eq!(status, 200, "{body}");
                verdict(&body["result"]).0
            })
            .filter(|a| *a)
            .count();
        assert_eq!(admitted, 20, "{}", strategy.name());
    }
    let (m, f) = (metrics(&by_module).await, metrics(&by_library).await);
    assert_eq!(metric_value(&m, MODULE_CALLS), 8.0 * 30.0, "{m}");
    assert_eq!(metric_value(&f, FCALLS), 8.0 * 30.0, "{f}");
}

/// On a Cluster the module answers only for its node's slots (MOVED elsewhere, CROSSSLOT for
/// keys of two slots), and a gateway routes its calls by slot: exact counts, batches included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_module_keeps_to_its_slots() {
    let module = redis_module(false);
    let cluster = RedisCluster::start_with_args(&["--loadmodule", &module]);
    let mcall = script::module_command_name();
    let rule = rule_args(&Strategy::FixedWindow, &Rate { limit: 3, period_ms: 60_000 }, 1);
    let key = format!("{{{}}}:k", hash_tag(0x77));
    let slot: u16 = redis_cli(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", &key]).trim().parse().unwrap();
    let owner = cluster.primary_for(slot);
    let other = cluster.primaries().into_iter().find(|p| *p != owner).unwrap();
    let mut args = vec![mcall.as_str(), "1", key.as_str()];
    args.extend(rule.iter().map(String::as_str));
    assert!(redis_cli(other, &args).starts_with("MOVED"), "{}", redis_cli(other, &args));
    let at_owner = redis_cli(owner, &args);
    assert_eq!(at_owner.lines().next(), Some("1"), "{at_owner}");
    let mut two = vec![mcall.as_str(), "2", key.as_str(), "elsewhere"];
    two.extend(rule.iter().map(String::as_str));
    two.extend(rule.iter().map(String::as_str));
    assert!(redis_cli(owner, &two).contains("CROSSSLOT"), "{}", redis_cli(owner, &two));

    let seeds = cluster.seed_nodes();
    let (_gw, http) = gateway(&["--cluster-nodes", &seeds]).await;
    wait_calls(&http, "MODULE").await;
    for identity in [0x10u64, 0x11, 0x12] {
        let pipeline: Vec<serde_json::Value> = (0..LIMIT + 2).map(|_| call(identity)).collect();
        let (status, body) = http.post("/pipeline", serde_json::json!(pipeline)).await;
        assert_eq!(status, 200, "{body}");
        let admitted = body.as_array().unwrap().iter().filter(|e| entry_verdict(e).0).count() as u64;
        assert_eq!(admitted, LIMIT, "{body}");
        let (status, body) = http.post("/", call(identity)).await;
        assert_eq!((status, verdict(&body["result"])), (200, (false, 0)), "{body}");
    }
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, MODULE_CALLS), 6.0, "{text}");
    assert_eq!(metric_value(&text, FCALLS), 0.0, "{text}");
    assert_eq!(metric_value(&text, "sluice_gateway_redirect_retries_total"), 0.0, "{text}");

    // A coordinated failover of the primary serving an identity midway through its limit: the
    // replica, promoted, has the module's writes (replicated as SET PXAT), so the count goes on
    // exactly where it was, through the module on the new primary.
    let identity = 0x13u64;
    let slot: u16 = redis_cli(owner, &["CLUSTER", "KEYSLOT", &support::calls::key(identity)]).trim().parse().unwrap();
    let before = cluster.primary_for(slot);
    for expected in [LIMIT - 1, LIMIT - 2] {
        let (status, body) = http.post("/", call(identity)).await;
        assert_eq!((status, verdict(&body["result"])), (200, (true, expected)), "{body}");
    }
    support::failover(cluster.replica_of(before), before).await;
    assert_ne!(cluster.primary_for(slot), before);
    let mut seen = Vec::new();
    for _ in 0..LIMIT {
        let (status, body) = http.post("/", call(identity)).await;
        assert_eq!(status, 200, "{body}");
        seen.push(verdict(&body["result"]));
    }
    let expected: Vec<(bool, u64)> = (0..LIMIT).map(|i| if i < LIMIT - 2 { (true, LIMIT - 3 - i) } else { (false, 0) }).collect();
    assert_eq!(seen, expected);
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, FCALLS), 0.0, "{text}");
}

/// A Redis with sluice's module whose user `gw` (password `gw-pass`) may run everything but
/// the module's commands.
fn redis_refusing_the_module_to_gw() -> RedisServer {
    let module = redis_module(false);
    let redis = RedisServer::start_with_args(&["--loadmodule", &module]);
    let (mcall, mbatch) = (script::module_command_name(), script::module_batch_command_name());
    let (no_call, no_batch) = (format!("-{mcall}"), format!("-{mbatch}"));
    let set = redis_cli(redis.port, &["ACL", "SETUSER", "gw", "on", ">gw-pass", "~*", "&*", "+@all", &no_call, &no_batch]);
    assert_eq!(set.trim(), "OK");
    redis
}

/// Redis 7.0 gives module commands no ACL category: a gateway user allowed everything but the
/// module's commands gets NOPERM from them. `auto` then runs calls on the library (the refused
/// call did not run, so it runs once); `--redis-calls module` says what to allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_the_module_runs_on_the_library() {
    let redis = redis_refusing_the_module_to_gw();
    let url = format!("redis://gw:gw-pass@127.0.0.1:{}", redis.port);
    let (_gw, http) = gateway(&["--redis-url", &url]).await;
    let (_strict, strict) = gateway(&["--redis-url", &url, "--redis-calls", "module"]).await;
    wait_calls(&http, "MODULE").await;
    let identity = 0x0e01;
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    let (status, body) = http.post("/pipeline", serde_json::json!([call(identity), call(identity)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((entry_verdict(&body[0]), entry_verdict(&body[1])), ((true, LIMIT - 2), (true, LIMIT - 3)));
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, MODULE_CALLS), 1.0, "{text}");
    assert_eq!(metric_value(&text, r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="loaded"}"#), 1.0, "{text}");
    wait_calls(&http, "FCALL").await;
    let (status, body) = strict.post("/", call(identity)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("NOPERM sluice-gateway"), "{body}");
}

/// The same user on a Redis out of memory, which refuses FUNCTION LOAD for now: the call refused
/// the module runs on the script meanwhile, `auto` not pinned to EVALSHA; once Redis takes the
/// library, calls run on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_the_module_runs_on_the_script_until_redis_takes_the_library() {
    const LIBRARY_FAILED: &str = r#"sluice_gateway_library_loads_total{trigger="noscript",outcome="failed"}"#;
    const SCRIPT_LOADED: &str = r#"sluice_gateway_script_loads_total{trigger="noscript",outcome="loaded"}"#;
    const EVALSHAS: &str = r#"sluice_gateway_redis_calls_total{command="EVALSHA"}"#;
    let redis = redis_refusing_the_module_to_gw();
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "1"]);
    let url = format!("redis://gw:gw-pass@127.0.0.1:{}", redis.port);
    let (_gw, http) = gateway(&["--redis-url", &url, "--health-cache-ms", "0"]).await;
    wait_calls(&http, "MODULE").await;
    // A dry call writes nothing, which Redis allows past maxmemory.
    let identity = 0x0e02;
    let (status, body) = http.post("/", dry_call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    let text = metrics(&http).await;
    let seen = [MODULE_CALLS, LIBRARY_FAILED, SCRIPT_LOADED, EVALSHAS, FCALLS].map(|series| metric_value(&text, series));
    assert_eq!(seen, [1.0, 1.0, 1.0, 1.0, 0.0], "{text}");

    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    // A probe finds out again (the module, for it is there), and the next refused call loads
    // the library.
    wait_calls(&http, "MODULE").await;
    let (status, body) = http.post("/", call(identity)).await;
    assert_eq!((status, verdict(&body["result"])), (200, (true, LIMIT - 1)), "{body}");
    wait_calls(&http, "FCALL").await;
    let text = metrics(&http).await;
    assert_eq!(metric_value(&text, FCALLS), 1.0, "{text}");
}
