//! The Lua decision script in a real `redis-server`: the shared case table
//! (`tests/cases/strategies.json`), randomized sequences compared step by step with the native
//! strategies, the all-or-nothing multi-rule contract, expiry and argument errors.
//!
//! Needs `redis-server` on PATH (CI installs it); each test starts its own server on a free
//! loopback port and kills it when done.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice::rate::Rate;
use sluice::redis::command::Command as RedisCommand;
use sluice::redis::native;
use sluice::redis::script as lua;
use sluice::redis::state as redis_state;
use sluice::redis::wire::{self, Reply};
use sluice::strategy::{cases, decide, Decision, Strategy};

const CASES: &str = include_str!("cases/strategies.json");

// ------------------------------------------------------------------------------------------
// A redis-server of our own, and a minimal RESP client.

struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        for attempt in 0..5 {
            let port = sluice_test_ports::free_port();
            let dir = std::env::temp_dir().join(format!("sluice-lua-{}-{port}-{attempt}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--loglevel", "warning", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("\n\n*** redis-server could not be started ({e}); install it (apt-get install redis-server) ***\n")
                });
            let mut server = Redis { child, port, dir };
            // Bounded wait for the server to accept connections.
            for _ in 0..300 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: probably lost the port race; try another port
                }
                // A reset or a stranger on the port is "not yet", not a failure: the probe reads
                // its own way instead of `cmd`, which panics on a read error.
                if let Ok(mut c) = server.try_connect() {
                    let ping = wire::resp_commands(&[RedisCommand::of(&["PING"])]);
                    let mut reply = [0u8; 7];
                    if c.stream.write_all(&ping).and_then(|_| c.stream.read_exact(&mut reply)).is_ok() && &reply == b"+PONG\r\n" {
                        return server;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(server);
        }
        panic!("redis-server did not come up on a loopback port");
    }

    fn try_connect(&self) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream })
    }

    fn connect(&self) -> Conn {
        self.try_connect().expect("connect to redis-server")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection speaking RESP through the filter's own encoder and reader.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    fn cmd<S: AsRef<str>>(&mut self, args: &[S]) -> Reply {
        self.stream.write_all(&wire::resp_commands(&[RedisCommand::of(args)])).expect("write to redis");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while wire::resp_len(&buf).is_none() {
            let n = self.stream.read(&mut chunk).expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
        wire::resp_replies(&buf, 1).expect("one reply").remove(0)
    }
}

// ------------------------------------------------------------------------------------------
// Calling the script.

/// The decision script as Redis runs it: a script called by SHA, or the same text loaded as a
/// function library and called with FCALL (what sluice-gateway does on Redis 7).
struct Script {
    sha: String,
    /// The command and its first argument: `EVALSHA <sha>` or `FCALL <function>`.
    call: [String; 2],
}

/// One rule of a call: key, strategy, rate, cost.
struct Rule<'a> {
    key: &'a str,
    strategy: &'a Strategy,
    rate: Rate,
    cost: u64,
}

impl Script {
    /// Loads the test build of the script: the one with a clock override, so that cases can
    /// run at the times they name.
    fn load(conn: &mut Conn) -> Script {
        match conn.cmd(&["SCRIPT", "LOAD", lua::script_with_clock_override().as_str()]) {
            Reply::Str(sha) => Script { call: ["EVALSHA".into(), sha.clone()], sha },
            other => panic!("SCRIPT LOAD failed: {other:?}"),
        }
    }

    /// Both forms of the test build: the script, then the function library.
    fn both(conn: &mut Conn) -> [Script; 2] {
        let script = Script::load(conn);
        match conn.cmd(&["FUNCTION", "LOAD", "REPLACE", lua::library_with_clock_override().as_str()]) {
            Reply::Str(_) => {}
            other => panic!("FUNCTION LOAD failed: {other:?}"),
        }
        let library = Script { sha: script.sha.clone(), call: ["FCALL".into(), lua::function_name()] };
        [script, library]
    }

    fn raw(&self, conn: &mut Conn, rules: &[Rule], now_us: Option<u64>) -> Reply {
        let mut args: Vec<String> = vec![self.call[0].clone(), self.call[1].clone(), rules.len().to_string()];
        args.extend(rules.iter().map(|r| r.key.to_string()));
        for r in rules {
            args.extend(lua::rule_args(r.strategy, &r.rate, r.cost));
        }
        if let Some(now) = now_us {
            args.push(now.to_string());
        }
        conn.cmd(&args)
    }

    /// (all allowed, per rule (decision, ttl_ms)).
    fn call(&self, conn: &mut Conn, rules: &[Rule], now_us: Option<u64>) -> (bool, Vec<(Decision, u64)>) {
        let reply = self.raw(conn, rules, now_us);
        let Reply::Array(items) = reply else { panic!("script reply: {reply:?}") };
        assert_eq!(items.len(), rules.len() + 1, "reply {items:?}");
        let all = items[0] == Reply::Int(1);
        let per_rule = items[1..]
            .iter()
            .zip(rules)
            .map(|(item, rule)| {
                let Reply::Array(fields) = item else { panic!("rule reply: {item:?}") };
                let ints: Vec<i64> = fields
                    .iter()
                    .map(|f| match f {
                        Reply::Int(i) => *i,
                        other => panic!("field {other:?}"),
                    })
                    .collect();
                lua::decision_from_reply(rule.rate.limit, &ints).expect("six fields")
            })
            .collect();
        (all, per_rule)
    }

    fn one(&self, conn: &mut Conn, key: &str, s: &Strategy, rate: Rate, cost: u64, now_us: u64) -> (Decision, u64) {
        let (all, mut v) = self.call(conn, &[Rule { key, strategy: s, rate, cost }], Some(now_us));
        let (d, ttl) = v.remove(0);
        assert_eq!(all, d.allowed);
        (d, ttl)
    }
}

fn get(conn: &mut Conn, key: &str) -> Option<String> {
    match conn.cmd(&["GET", key]) {
        Reply::Str(b) => Some(b),
        Reply::Nil => None,
        other => panic!("GET: {other:?}"),
    }
}

fn pttl(conn: &mut Conn, key: &str) -> i64 {
    match conn.cmd(&["PTTL", key]) {
        Reply::Int(i) => i,
        other => panic!("PTTL: {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Tests.

#[test]
fn case_table_through_lua() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let table = cases::parse(CASES).expect("case table parses");
    let mut failures = Vec::new();
    let mut steps_run = 0;
    for script in Script::both(&mut conn) {
        for (ci, case) in table.cases.iter().enumerate() {
            let strategy = case.strategy.strategy().expect("known strategy");
            let rate = case.rate.rate();
            'offsets: for &offset in &case.offsets_ms {
                let key = format!("case:{}:{ci}:{offset}", script.call[0]);
                let mut native_state: Vec<u8> = Vec::new();
                for (i, step) in case.steps.iter().enumerate() {
                    if step.corrupt {
                        assert_eq!(conn.cmd(&["SET", key.as_str(), "not a state"]), Reply::Str("OK".into()));
                        native_state = vec![0xff];
                    }
                    let now_us = step.now_us(table.base_ms, offset);
                    if step.cost == 0 {
                        // A peek is the Rust side's own operation: the script refuses a cost below
                        // 1, and a peek changes nothing, so the next step is unaffected.
                        let refused =
                            script.raw(&mut conn, &[Rule { key: &key, strategy: &strategy, rate, cost: 0 }], Some(now_us));
                        assert!(matches!(&refused, Reply::Error(e) if e.contains("at least 1")), "{refused:?}");
                        continue;
                    }
                    let (got, ttl_ms) = script.one(&mut conn, &key, &strategy, rate, step.cost, now_us);
                    steps_run += 1;
                    let native = decide(&strategy, &rate, &native_state, now_us, step.cost);
                    let want = step.expected(rate.limit);
                    let mut problems = Vec::new();
                    if got != want {
                        problems.push(format!("   got {got:?}\n  want {want:?}"));
                    }
                    if ttl_ms * 1000 != native.ttl_us {
                        problems.push(format!("  ttl {ttl_ms} ms, native {} µs", native.ttl_us));
                    }
                    if native.state.is_some() {
                        let left = pttl(&mut conn, &key);
                        // Written with the simulated ttl plus 60 s of real time (clock override).
                        if left <= 0 || left > ttl_ms as i64 + 60_000 {
                            problems.push(format!("  PTTL {left} after a write with ttl {ttl_ms}"));
                        }
                    }
                    if !problems.is_empty() {
                        failures.push(format!(
                            "{} (offset {offset}) step {i} (t_ms {}, cost {}):\n{}",
                            case.name,
                            step.t_ms,
                            step.cost,
                            problems.join("\n")
                        ));
                        continue 'offsets;
                    }
                    if let Some(s) = native.state {
                        native_state = s.into_vec();
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed in Lua:\n{}", failures.len(), failures.join("\n"));
    assert!(steps_run > 400, "only {steps_run} steps ran");
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_strategy(rng: &mut Rng, kind: usize) -> Strategy {
    let burst = if rng.below(2) == 0 { None } else { Some(1 + rng.below(40)) };
    match kind {
        0 => Strategy::FixedWindow,
        1 => Strategy::SlidingWindowCounter,
        2 => Strategy::SlidingWindowLog { max_entries: 1 + rng.below(10) as u32 },
        3 => Strategy::TokenBucket { burst },
        4 => Strategy::TokenBucketDebt { burst, max_debt: rng.below(12) },
        5 => Strategy::LeakyBucket { burst },
        6 => Strategy::LeakyBucketQueue { burst, max_delay_ms: rng.pick(&[0, 1, 250, 3000]) },
        _ => Strategy::Gcra { burst },
    }
}

/// Random rules and request sequences (including clock steps back, sub-ms times, peeks and
/// costs above the capacity), decided by Lua and natively: every field must agree, and the
/// state Redis holds after each step is the native state in the scripts' text
/// (`sluice::redis::state`).
#[test]
fn random_sequences_match_native() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let (mut steps_run, mut states_compared) = (0, 0);
    for script in Script::both(&mut conn) {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let rates = [
            (1, 1000),
            (3, 1000),
            (10, 7),
            (7, 3000),
            (1000, 500),
            (100, 60_000),
            (50, 3_600_000),
            // A million a day: capacity × period = 8.64e13, the largest realistic scaled value.
            (1_000_000, 86_400_000),
        ];
        for kind in 0..8 {
            for seq in 0..30 {
                let strategy = random_strategy(&mut rng, kind);
                let (limit, period_ms) = rng.pick(&rates);
                let rate = Rate { limit, period_ms };
                let key = format!("rand:{}:{kind}:{seq}", script.call[0]);
                let mut state: Vec<u8> = Vec::new();
                let mut t_ms: u64 = 1_700_006_400_000 + rng.below(1_000_000);
                for i in 0..40 {
                    let roll = rng.below(20);
                    t_ms = match roll {
                        0 => t_ms.saturating_sub(rng.below(period_ms * 2)),
                        1..=6 => t_ms,
                        7..=14 => t_ms + rng.below((period_ms / limit.max(1)).max(2) * 3),
                        _ => t_ms + rng.below(period_ms * 2),
                    };
                    let now_us = t_ms * 1000 + rng.below(1000);
                    let top = limit.max(1) + 45;
                    let cost = match rng.below(10) {
                        0 => 1,
                        1 => top + rng.below(3),
                        _ => 1 + rng.below((top / 8).max(1)),
                    };
                    let native = decide(&strategy, &rate, &state, now_us, cost);
                    let (got, ttl_ms) = script.one(&mut conn, &key, &strategy, rate, cost, now_us);
                    steps_run += 1;
                    assert_eq!(
                        (got, ttl_ms * 1000),
                        (native.decision, native.ttl_us),
                        "{strategy:?} {rate:?} key {key} step {i}: now_us {now_us} cost {cost} (lua, native)"
                    );
                    if let Some(s) = native.state {
                        state = s.into_vec();
                    }
                    // The text Redis holds and the native state are one state in two forms.
                    let text = get(&mut conn, &key);
                    assert_eq!(
                        text.as_deref(),
                        redis_state::to_text(&state).as_deref(),
                        "{strategy:?} {rate:?} key {key} step {i}: Redis' text against the native state"
                    );
                    if let Some(text) = text {
                        assert_eq!(redis_state::from_text(text.as_bytes()), state, "{strategy:?} key {key} step {i}: {text:?}");
                        states_compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(steps_run, 2 * 8 * 30 * 40);
    assert!(states_compared > steps_run / 2, "only {states_compared} of {steps_run} steps left a state to compare");
}

#[test]
fn rules_of_one_request_are_all_or_nothing() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let script = Script::load(&mut conn);
    let now = 1_700_006_400_000_000u64;
    let window = Strategy::FixedWindow;
    let spaced = Strategy::Gcra { burst: Some(1) };
    let per_min = Rate { limit: 5, period_ms: 60_000 };
    let per_sec = Rate { limit: 1, period_ms: 1000 };
    let rules = |cost| {
        [
            Rule { key: "{u}:a", strategy: &window, rate: per_min, cost },
            Rule { key: "{u}:b", strategy: &spaced, rate: per_sec, cost },
        ]
    };

    let (all, d) = script.call(&mut conn, &rules(1), Some(now));
    assert!(all && d[0].0.allowed && d[1].0.allowed);
    assert_eq!(d[0].0.remaining, 4);
    let a_after_first = get(&mut conn, "{u}:a");
    let b_after_first = get(&mut conn, "{u}:b");
    assert!(a_after_first.is_some() && b_after_first.is_some());

    // The GCRA rule denies 100 ms later: the window rule, which alone would admit, is not charged.
    let (all, d) = script.call(&mut conn, &rules(1), Some(now + 100_000));
    assert!(!all);
    assert!(d[0].0.allowed && !d[1].0.allowed);
    assert_eq!(d[1].0.retry_after_ms, 900);
    assert_eq!(get(&mut conn, "{u}:a"), a_after_first, "a denied request consumed from another rule");
    assert_eq!(get(&mut conn, "{u}:b"), b_after_first);

    // Once the GCRA rule admits again, both are charged: the window has 3 left, not 2.
    let (all, d) = script.call(&mut conn, &rules(1), Some(now + 1_000_000));
    assert!(all);
    assert_eq!(d[0].0.remaining, 3);

    // The same key twice: the second rule sees the first one's update.
    let twice = |cost| {
        [
            Rule { key: "{u}:c", strategy: &window, rate: Rate { limit: 3, period_ms: 60_000 }, cost },
            Rule { key: "{u}:c", strategy: &window, rate: Rate { limit: 3, period_ms: 60_000 }, cost },
        ]
    };
    let (all, d) = script.call(&mut conn, &twice(1), Some(now));
    assert!(all);
    assert_eq!((d[0].0.remaining, d[1].0.remaining), (2, 1));
    let (all, d) = script.call(&mut conn, &twice(1), Some(now));
    assert!(!all, "3 of 3 would need 4");
    assert_eq!((d[0].0.remaining, d[1].0.remaining), (0, 0));
    // Nothing was written: one unit is still there.
    let (all, d) = script.call(&mut conn, &twice(1)[..1], Some(now));
    assert!(all);
    assert_eq!(d[0].0.remaining, 0);
}

#[test]
fn redis_time_and_expiry() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let script = Script::load(&mut conn);
    let hourly = Rate { limit: 5, period_ms: 3_600_000 };
    let s = Strategy::FixedWindow;
    let rules = [Rule { key: "{t}:w", strategy: &s, rate: hourly, cost: 2 }];
    let (all, d) = script.call(&mut conn, &rules, None);
    assert!(all);
    let (decision, ttl_ms) = d[0];
    assert_eq!(decision.remaining, 3);
    assert!(decision.reset_ms > 0 && decision.reset_ms <= 3_600_000);
    assert_eq!(ttl_ms, decision.reset_ms);
    // Written 1 s longer than the state lives, for a node whose clock is behind.
    let pad = native::TTL_PAD_MS as i64;
    let left_w = pttl(&mut conn, "{t}:w");
    assert!(left_w > ttl_ms as i64 && left_w <= ttl_ms as i64 + pad, "PTTL {left_w}, ttl {ttl_ms}");
    let state = get(&mut conn, "{t}:w").expect("state");
    let start: u64 = state.split(' ').nth(1).expect("window start").parse().expect("integer");
    assert_eq!(start % 3_600_000, 0, "window not aligned to the epoch: {state}");

    // A token bucket refilling in 100 ms lives 100 ms.
    let tb = Strategy::TokenBucket { burst: None };
    let fast = Rate { limit: 10, period_ms: 1000 };
    let (all, d) = script.call(&mut conn, &[Rule { key: "{t}:b", strategy: &tb, rate: fast, cost: 1 }], None);
    assert!(all);
    assert_eq!(d[0].1, 100);
    let left = pttl(&mut conn, "{t}:b");
    assert!(left > 100 && left <= 100 + pad, "PTTL {left}");

    // Denials write nothing, so the key keeps its expiry; a cost of 0 is refused outright.
    let (all, _) = script.call(&mut conn, &[Rule { key: "{t}:w", strategy: &s, rate: hourly, cost: 4 }], None);
    assert!(!all);
    let refused = script.raw(&mut conn, &[Rule { key: "{t}:w", strategy: &s, rate: hourly, cost: 0 }], None);
    assert!(matches!(refused, Reply::Error(_)), "{refused:?}");
    assert_eq!(get(&mut conn, "{t}:w").as_deref(), Some(state.as_str()));
    assert!(pttl(&mut conn, "{t}:w") <= left_w);
}

#[test]
fn bad_arguments_are_errors() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let script = Script::load(&mut conn);
    let sha = script.sha.as_str();
    let cases: &[&[&str]] = &[
        // Five arguments for one key.
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1", "0"],
        &["EVALSHA", sha, "1", "k", "fortnightly", "5", "1000", "1", "0", "0"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1.5", "0", "0"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "-5", "1000", "1", "0", "0"],
        // A cost of 0 would be a peek: admitted, never counted.
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "0", "0", "0"],
        &["EVALSHA", sha, "1", "k", "gcra", "5", "1000", "0", "0", "0", "dry"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1", "0", "0", "yesterday"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1", "0", "0", "dry", "dry"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1", "0", "0", "1", "2"],
        &["EVALSHA", sha, "1", "k", "fixed_window", "5", "1000", "1", "0", "0", "dry", "1", "2"],
    ];
    for args in cases {
        match conn.cmd(args) {
            Reply::Error(e) => assert!(e.contains("sluice"), "{e}"),
            other => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }
    assert_eq!(get(&mut conn, "k"), None);
}

#[test]
fn dry_runs_decide_but_write_nothing() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let script = Script::load(&mut conn);
    let sha = script.sha.as_str();
    let call = |conn: &mut Conn, extra: &[&str]| {
        let mut args = vec!["EVALSHA", sha, "1", "{d}:k", "fixed_window", "2", "60000", "1", "0", "0"];
        args.extend_from_slice(extra);
        match conn.cmd(&args) {
            Reply::Array(items) => matches!(items.first(), Some(Reply::Int(1))),
            other => panic!("{other:?}"),
        }
    };
    // Dry runs admit without counting, whatever their number.
    for _ in 0..5 {
        assert!(call(&mut conn, &["dry"]));
    }
    assert_eq!(get(&mut conn, "{d}:k"), None);
    assert!(call(&mut conn, &[]));
    assert!(call(&mut conn, &[]));
    // Full now: a dry run sees it too.
    assert!(!call(&mut conn, &["dry"]));
    // Two minutes on (a clock override after "dry"), the window is fresh: admitted, yet the
    // full window is what stays stored.
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() + 120_000_000;
    let stored = get(&mut conn, "{d}:k");
    assert!(call(&mut conn, &["dry", &later.to_string()]));
    assert_eq!(get(&mut conn, "{d}:k"), stored);
    assert!(!call(&mut conn, &[]));
}

#[test]
fn the_production_script_refuses_a_clock_override() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let Reply::Str(sha) = conn.cmd(&["SCRIPT", "LOAD", lua::SCRIPT]) else { panic!("SCRIPT LOAD") };
    assert!(matches!(conn.cmd(&["FUNCTION", "LOAD", "REPLACE", lua::library().as_str()]), Reply::Str(_)));
    let function = lua::function_name();
    for head in [["EVALSHA", sha.as_str()], ["FCALL", function.as_str()]] {
        let call = |conn: &mut Conn, extra: &[&str]| {
            let mut args = vec![head[0], head[1], "1", "{p}:k", "fixed_window", "2", "60000", "1", "0", "0"];
            args.extend_from_slice(extra);
            conn.cmd(&args)
        };
        assert!(matches!(call(&mut conn, &[]), Reply::Array(_)), "{head:?}");
        let future = "4102444800000000"; // 2100-01-01
        match call(&mut conn, &[future]) {
            Reply::Error(e) => assert!(e.contains("unexpected option"), "{e}"),
            other => panic!("{head:?}: a clock override was accepted: {other:?}"),
        }
        assert!(matches!(call(&mut conn, &["dry"]), Reply::Array(_)), "{head:?}");
    }
}

/// A stored state the script did not write (another strategy's, truncated, negative, not
/// decimal, beyond 2^53) is a state never seen: the decision equals a fresh key's.
#[test]
fn a_state_that_does_not_decode_is_never_seen() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let now = 1_700_006_400_123_000u64;
    let rate = Rate { limit: 5, period_ms: 10_000 };
    let strategies = [
        (Strategy::FixedWindow, "fw"),
        (Strategy::SlidingWindowCounter, "swc"),
        (Strategy::SlidingWindowLog { max_entries: 4 }, "swl"),
        (Strategy::TokenBucket { burst: None }, "tb"),
        (Strategy::TokenBucketDebt { burst: None, max_debt: 2 }, "tbd"),
        (Strategy::LeakyBucket { burst: None }, "lb"),
        (Strategy::LeakyBucketQueue { burst: None, max_delay_ms: 500 }, "lbq"),
        (Strategy::Gcra { burst: None }, "gcra"),
    ];
    for script in Script::both(&mut conn) {
        for (strategy, tag) in &strategies {
            // A state that decodes, written a moment ago, must change the decision (or the
            // comparison below would prove nothing).
            let fresh_key = format!("{}:{tag}:fresh", script.call[0]);
            let fresh = script.one(&mut conn, &fresh_key, strategy, rate, 3, now);
            let used = script.one(&mut conn, &fresh_key, strategy, rate, 3, now);
            assert_ne!(fresh, used, "{strategy:?}");
            let t = (now / 1000).to_string();
            let bad = [
                format!("{tag} {t}"),
                format!("{tag} {t} 1 2 3 4 5"),
                format!("{tag}  {t} 1"),
                format!("{tag} -{t} 1"),
                format!("{tag} 1e12 1"),
                format!("{tag} {t} 0x10"),
                format!("{tag} {t} 9007199254740993"),
                format!("{tag} 99999999999999999999999999999999 1"),
                format!("{} {t} 1", if *tag == "fw" { "tb" } else { "fw" }),
                format!("{tag} {t} 1 "),
                "nonsense".to_string(),
                String::new(),
            ];
            for (i, state) in bad.iter().enumerate() {
                let key = format!("{}:{tag}:bad{i}", script.call[0]);
                assert_eq!(conn.cmd(&["SET", key.as_str(), state.as_str()]), Reply::Str("OK".into()));
                let got = script.one(&mut conn, &key, strategy, rate, 3, now);
                assert_eq!(got, fresh, "{} {strategy:?} with state {state:?}", script.call[0]);
                // Read for a native decision, the same text is a state never seen too.
                let native = decide(strategy, &rate, &redis_state::from_text(state.as_bytes()), now, 3);
                assert_eq!((native.decision, native.ttl_us / 1000), fresh, "native, {strategy:?} with state {state:?}");
            }
        }
    }
}

/// A debt bucket's time before the epoch is never seen either, however long its refill (the
/// scripts once read it as a time, and refilled a bucket that takes years to fill only in part).
#[test]
fn a_debt_bucket_dated_before_the_epoch_is_never_seen() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let now = 1_750_000_000_000_000u64;
    let rate = Rate { limit: 1, period_ms: 366 * 86_400_000 };
    let strategy = Strategy::TokenBucketDebt { burst: Some(100), max_debt: 0 };
    for script in Script::both(&mut conn) {
        let fresh = script.one(&mut conn, &format!("{}:tbd:fresh", script.call[0]), &strategy, rate, 60, now);
        let key = format!("{}:tbd:before-epoch", script.call[0]);
        assert_eq!(conn.cmd(&["SET", key.as_str(), "tbd -1 0"]), Reply::Str("OK".into()));
        assert_eq!(script.one(&mut conn, &key, &strategy, rate, 60, now), fresh, "{}", script.call[0]);
        let native = decide(&strategy, &rate, &redis_state::from_text(b"tbd -1 0"), now, 60);
        assert_eq!((native.decision, native.ttl_us / 1000), fresh, "native");
    }
}

/// A log stored under a larger cap than the call names (a call the gateway accepts: each
/// number within its bounds) folds its oldest entries in one pass, as natively: the same
/// decision and the same log written. Folding them one at a time cost Redis the log's length
/// squared, in one script that nothing can interrupt.
#[test]
fn a_long_log_under_a_smaller_cap_folds_as_natively() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    let t0 = 1_700_006_400_000u64;
    let entries = (0..20_000u64).flat_map(|i| [(t0 + i).to_string(), "1".to_string()]);
    let text = std::iter::once("swl".to_string()).chain(entries).collect::<Vec<_>>().join(" ");
    let rate = Rate { limit: 1_000_000, period_ms: 3_600_000 };
    let now_us = (t0 + 20_000) * 1000;
    for script in Script::both(&mut conn) {
        for cap in [1u32, 3] {
            let key = format!("{}:swl:cap{cap}", script.call[0]);
            assert_eq!(conn.cmd(&["SET", key.as_str(), text.as_str()]), Reply::Str("OK".into()));
            let strategy = Strategy::SlidingWindowLog { max_entries: cap };
            let (decision, _) = script.one(&mut conn, &key, &strategy, rate, 1, now_us);
            let native = decide(&strategy, &rate, &redis_state::from_text(text.as_bytes()), now_us, 1);
            assert_eq!(decision, native.decision, "{} cap {cap}", script.call[0]);
            let written = get(&mut conn, &key).expect("the admission wrote the log");
            let want = native.state.map(|s| s.to_vec());
            assert_eq!(Some(redis_state::from_text(written.as_bytes())), want, "{} cap {cap}: {written}", script.call[0]);
        }
    }
}

/// A state longer than any the scripts write (anyone may write a key) is never seen, by the
/// scripts and natively alike, so reading one costs no more than reading the longest real one:
/// a sliding log of one entry too many, and a counter padded with zeros past the longest text.
#[test]
fn a_state_longer_than_any_written_is_never_seen() {
    use sluice::redis::state::{MAX_STATE_BYTES, MAX_STATE_NUMBERS};
    let redis = Redis::start();
    let mut conn = redis.connect();
    let t0 = 1_700_006_400_000u64;
    let now_us = (t0 + 1_000) * 1000;
    let log = |entries: usize| {
        std::iter::once("swl".to_string()).chain((0..entries).map(|_| format!("{t0} 1"))).collect::<Vec<_>>().join(" ")
    };
    let swl = Strategy::SlidingWindowLog { max_entries: (MAX_STATE_NUMBERS / 2) as u32 };
    let fw = Strategy::FixedWindow;
    let rate = Rate { limit: 1_000_000, period_ms: 3_600_000 };
    let window = t0 - t0 % rate.period_ms;
    let padded = format!("fw {}{window} 5", "0".repeat(MAX_STATE_BYTES));
    let cases = [(&swl, log(MAX_STATE_NUMBERS / 2), true), (&swl, log(MAX_STATE_NUMBERS / 2 + 1), false), (&fw, padded, false)];
    for script in Script::both(&mut conn) {
        for (i, (strategy, state, seen)) in cases.iter().enumerate() {
            let key = format!("{}:long:{i}", script.call[0]);
            let fresh = script.one(&mut conn, &format!("{key}:fresh"), strategy, rate, 1, now_us);
            assert_eq!(conn.cmd(&["SET", key.as_str(), state.as_str()]), Reply::Str("OK".into()));
            let got = script.one(&mut conn, &key, strategy, rate, 1, now_us);
            assert_eq!(got != fresh, *seen, "{} case {i}: {got:?} against a fresh {fresh:?}", script.call[0]);
            let native = decide(strategy, &rate, &redis_state::from_text(state.as_bytes()), now_us, 1);
            assert_eq!((native.decision, native.ttl_us / 1000), got, "native, case {i}");
        }
    }
}

/// One call of a batch, as the words that follow `FCALL <function> <numkeys>` when it runs
/// alone: its keys, then its arguments.
struct BatchCall {
    keys: Vec<String>,
    args: Vec<String>,
}

/// A batch of random calls at about `now_us` (each names its own time), on the keys of `pool`
/// (the last one holds a list, named one time in thirty). `odd` adds what the filter never
/// sends: one-call batches, three keys, zero limits and periods, a cost of 0.
fn random_batch(rng: &mut Rng, pool: &[&str; 5], now_us: u64, odd: bool) -> Vec<BatchCall> {
    let (fewest, most_keys) = if odd { (1, 3) } else { (2, 2) };
    (0..fewest + rng.below(7))
        .map(|_| {
            let n = 1 + rng.below(most_keys) as usize;
            let keys: Vec<String> =
                (0..n).map(|_| if rng.below(30) == 0 { pool[4] } else { pool[rng.below(4) as usize] }.to_string()).collect();
            let mut args = Vec::new();
            for _ in 0..n {
                let kind = rng.below(8) as usize;
                let strategy = random_strategy(rng, kind);
                let rate = if odd {
                    Rate { limit: rng.below(5), period_ms: rng.pick(&[0, 500, 1000, 5000]) }
                } else {
                    Rate { limit: 1 + rng.below(4), period_ms: rng.pick(&[500, 1000, 5000]) }
                };
                let cost = if odd && rng.below(40) == 0 { 0 } else { 1 + rng.below(2) };
                args.extend(lua::rule_args(&strategy, &rate, cost));
            }
            if rng.below(5) == 0 {
                args.push("dry".into());
            }
            args.push((now_us + rng.below(3_000)).to_string());
            BatchCall { keys, args }
        })
        .collect()
}

/// A batch's keys (every call's, call after call) and arguments (the counts, then every
/// call's), as `FCALL sluice_batch_<id>` takes them after its key count.
fn batch_layout(calls: &[BatchCall]) -> (Vec<String>, Vec<String>) {
    let counts: Vec<(usize, usize)> = calls.iter().map(|c| (c.keys.len(), c.args.len())).collect();
    let keys = calls.iter().flat_map(|c| c.keys.iter().cloned()).collect();
    let args =
        lua::batch_counts(&counts).map(|n| n.to_string()).chain(calls.iter().flat_map(|c| c.args.iter().cloned())).collect();
    (keys, args)
}

/// The batch function decides its calls exactly as the same calls sent one after another:
/// the same replies and the same states left in Redis, whatever keys they share, "dry" and
/// denied calls included; a call naming a key of another type fails alone. The calls run one
/// by one in database 0 and as batches in database 1.
#[test]
fn a_batch_is_its_calls_one_after_another() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    Script::both(&mut conn);
    let (one, batch) = (lua::function_name(), lua::batch_function_name());
    let pool = ["{u}:a", "{u}:b", "{u}:c", "{u}:d", "{u}:list"];
    for db in ["0", "1"] {
        conn.cmd(&["SELECT", db]);
        conn.cmd(&["LPUSH", "{u}:list", "x"]);
    }
    let mut rng = Rng(0xBA7C_4000_0000_0001);
    let mut now_us = 1_700_006_400_000_000u64;
    let (mut calls_run, mut errors, mut denials) = (0, 0, 0);
    for round in 0..120 {
        now_us += rng.below(400_000);
        let calls = random_batch(&mut rng, &pool, now_us, false);

        conn.cmd(&["SELECT", "0"]);
        let alone: Vec<Reply> = calls
            .iter()
            .map(|c| {
                let mut words = vec!["FCALL".to_string(), one.clone(), c.keys.len().to_string()];
                words.extend(c.keys.iter().chain(&c.args).cloned());
                conn.cmd(&words)
            })
            .collect();

        conn.cmd(&["SELECT", "1"]);
        let (keys, args) = batch_layout(&calls);
        let mut words = vec!["FCALL".to_string(), batch.clone(), keys.len().to_string()];
        words.extend(keys.into_iter().chain(args));
        let Reply::Array(together) = conn.cmd(&words) else { panic!("round {round}: the batch failed") };

        assert_eq!(together.len(), alone.len(), "round {round}");
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            match (a, b) {
                (Reply::Error(a), Reply::Error(b)) => {
                    assert!(a.contains("WRONGTYPE") && b.contains("WRONGTYPE"), "round {round} call {i}: {a} / {b}");
                    errors += 1;
                }
                _ => assert_eq!(a, b, "round {round} call {i}: alone, then in the batch"),
            }
            if matches!(a, Reply::Array(items) if items.first() == Some(&Reply::Int(0))) {
                denials += 1;
            }
            calls_run += 1;
        }
        for key in &pool[..4] {
            conn.cmd(&["SELECT", "0"]);
            let (state, ttl) = (get(&mut conn, key), pttl(&mut conn, key));
            conn.cmd(&["SELECT", "1"]);
            assert_eq!(get(&mut conn, key), state, "round {round}: state of {key}");
            assert!(pttl(&mut conn, key).abs_diff(ttl) < 1_000, "round {round}: lifetime of {key}");
        }
    }
    // The rounds did exercise what they are for.
    assert!(calls_run > 500 && errors > 5 && denials > 50, "{calls_run} calls, {errors} errors, {denials} denials");
}

/// Redis' keys as `sluice::redis::native` sees them: texts, and one key of another type. The
/// command's keys, as last given, check that each read names its key's place.
struct Texts(std::collections::HashMap<Vec<u8>, String>, Vec<Vec<u8>>);

impl native::Keys for Texts {
    fn get(&mut self, key: &[u8], at: usize) -> Result<Option<Vec<u8>>, String> {
        assert_eq!(self.1.get(at).map(Vec::as_slice), Some(key), "a read names its key's place");
        if key.ends_with(b":list") {
            return Err("WRONGTYPE Operation against a key holding the wrong kind of value".into());
        }
        Ok(self.0.get(key).map(|t| t.clone().into_bytes()))
    }
}

/// The Rust decision for a native module command (`sluice::redis::native`) answers random
/// batches exactly as the library's batch function does in Redis: the same replies, the same
/// states written with the same lifetimes; errors where it errs.
#[test]
fn the_native_batch_decides_as_the_library_batch() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    Script::both(&mut conn);
    let batch = lua::batch_function_name();
    let pool = ["{n}:a", "{n}:b", "{n}:c", "{n}:d", "{n}:list"];
    conn.cmd(&["LPUSH", "{n}:list", "x"]);
    let mut texts = Texts(std::collections::HashMap::new(), Vec::new());
    let mut rng = Rng(0xBA7C_4000_0000_0002);
    let mut now_us = 1_700_006_400_000_000u64;
    let (mut calls_run, mut errors, mut denials, mut writes_seen) = (0, 0, 0, 0);
    for round in 0..150 {
        now_us += rng.below(400_000);
        let calls = random_batch(&mut rng, &pool, now_us, true);

        let (keys, args) = batch_layout(&calls);
        let mut words = vec!["FCALL".to_string(), batch.clone(), keys.len().to_string()];
        words.extend(keys.iter().cloned());
        words.extend(args.iter().cloned());
        let Reply::Array(in_redis) = conn.cmd(&words) else { panic!("round {round}: the batch failed") };

        let key_words: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let arg_words: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        texts.1 = keys.iter().map(|k| k.clone().into_bytes()).collect();
        let (in_rust, writes) = native::batch(&key_words, &arg_words, &mut texts, 0).expect("a batch that adds up");

        assert_eq!(in_rust.len(), in_redis.len(), "round {round}");
        for (i, (lua_reply, rust_reply)) in in_redis.iter().zip(&in_rust).enumerate() {
            match (lua_reply, rust_reply) {
                (Reply::Error(a), Reply::Error(b)) => {
                    assert_eq!(a.contains("WRONGTYPE"), b.contains("WRONGTYPE"), "round {round} call {i}: {a} / {b}");
                    errors += 1;
                }
                _ => assert_eq!(lua_reply, rust_reply, "round {round} call {i}: Lua, then Rust"),
            }
            if matches!(lua_reply, Reply::Array(items) if items.first() == Some(&Reply::Int(0))) {
                denials += 1;
            }
            calls_run += 1;
        }
        for w in &writes {
            assert_eq!(key_words[w.at], w.key.as_slice(), "round {round}: a write names its key's place");
            let key = String::from_utf8(w.key.clone()).unwrap();
            assert_eq!(get(&mut conn, &key).as_deref(), Some(w.state.as_str()), "round {round}: state of {key}");
            let ttl = pttl(&mut conn, &key);
            assert!(
                ttl <= w.ttl_ms as i64 && ttl + 1_000 > w.ttl_ms as i64,
                "round {round}: {key} lives {ttl} ms, not {}",
                w.ttl_ms
            );
            texts.0.insert(w.key.clone(), w.state.clone());
            writes_seen += 1;
        }
        for key in &pool[..4] {
            assert_eq!(get(&mut conn, key), texts.0.get(key.as_bytes()).cloned(), "round {round}: {key}, Redis then Rust");
        }
    }
    assert!(
        calls_run > 400 && errors > 10 && denials > 50 && writes_seen > 100,
        "{calls_run} calls, {errors} errors, {denials} denials, {writes_seen} writes"
    );
}

/// One call decided natively (`native::one`) answers as `FCALL` of the library's decide
/// function, also where a new state holds a number the scripts cannot keep (2^53 or more): they
/// keep states as text, so a later limit on the same key reads it as never seen, and so must
/// the native decision.
#[test]
fn a_native_call_decides_as_the_script_even_past_exact_numbers() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    Script::both(&mut conn);
    let now_us = "1700006400000000";
    let cases: [(&str, Vec<&str>); 3] = [
        ("{x}:lb", ["leaky_bucket", "4", "4503599627370496", "2", "0", "0"].repeat(3)),
        ("{x}:tb", ["token_bucket", "4", "4503599627370496", "3", "0", "0"].repeat(3)),
        ("{x}:fw", ["fixed_window", "3", "60000", "1", "0", "0"].repeat(3)),
    ];
    for (key, mut args) in cases {
        args.push(now_us);
        let mut words = vec!["FCALL".to_string(), lua::function_name(), "3".into(), key.into(), key.into(), key.into()];
        words.extend(args.iter().map(|a| a.to_string()));
        let in_redis = conn.cmd(&words);
        let mut texts = Texts(std::collections::HashMap::new(), vec![key.as_bytes().to_vec(); 3]);
        let arg_words: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (in_rust, writes) = native::one(&[key.as_bytes(); 3], &arg_words, &mut texts, 0);
        assert_eq!(in_rust.as_ref(), Ok(&in_redis), "{key}: Rust, then Lua");
        let written: Vec<(String, String)> =
            writes.iter().map(|w| (String::from_utf8(w.key.clone()).unwrap(), w.state.clone())).collect();
        assert_eq!(written, get(&mut conn, key).map(|t| (key.to_string(), t)).into_iter().collect::<Vec<_>>(), "{key}");
    }
}

/// A batch whose counts do not add up to its keys and arguments is refused whole, and nothing
/// in it runs.
#[test]
fn a_batch_that_does_not_add_up_runs_nothing() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    assert!(matches!(conn.cmd(&["FUNCTION", "LOAD", "REPLACE", lua::library().as_str()]), Reply::Str(_)));
    let batch = lua::batch_function_name();
    let rule = ["fixed_window", "5", "60000", "1", "0", "0"];
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["1", "{p}:a", "2", "1", "6", "1", "6"],
        vec!["1", "{p}:a", "1", "1", "7"],
        vec!["2", "{p}:a", "{p}:b", "1", "1", "6"],
        vec!["1", "{p}:a", "0"],
        vec!["1", "{p}:a", "x", "1", "6"],
        vec!["1", "{p}:a", "1", "0", "6"],
    ];
    for case in &mut cases {
        case.extend(rule);
        let mut words = vec!["FCALL", batch.as_str()];
        words.extend(case.iter().copied());
        match conn.cmd(&words) {
            Reply::Error(e) => assert!(e.contains("sluice"), "{case:?}: {e}"),
            other => panic!("{case:?}: accepted: {other:?}"),
        }
        assert_eq!(get(&mut conn, "{p}:a"), None, "{case:?}");
        // The native decision refuses the same layouts, and reads nothing.
        let n: usize = case[0].parse().unwrap();
        let words: Vec<&[u8]> = case[1..].iter().map(|w| w.as_bytes()).collect();
        let mut texts = Texts(std::collections::HashMap::new(), Vec::new());
        let refused = native::batch(&words[..n], &words[n..], &mut texts, 1_700_006_400_000_000);
        assert!(refused.as_ref().is_err_and(|e| e.contains("sluice")), "{case:?}: native {refused:?}");
    }
}

/// A call names at most [`lua::MAX_KEYS`] keys and a batch at most [`lua::MAX_RUN_KEYS`], as the
/// gateway sends them: a direct caller naming thousands would hold Redis for as long. The
/// library refuses past them with the module's words, and decides up to them.
#[test]
fn calls_and_batches_past_the_gateways_bounds_are_refused_as_natively() {
    let redis = Redis::start();
    let mut conn = redis.connect();
    assert!(matches!(conn.cmd(&["FUNCTION", "LOAD", "REPLACE", lua::library().as_str()]), Reply::Str(_)));
    let (one, batch) = (lua::function_name(), lua::batch_function_name());
    let rule = ["fixed_window", "5", "60000", "1", "0", "0"];
    let keys: Vec<String> = (0..=lua::MAX_RUN_KEYS).map(|i| format!("{{b}}:{i}")).collect();
    // `n` keys, in calls of `per_call` (one call when `per_call` is 0): the words after FCALL's
    // name, and the native decision's refusal or its replies.
    let layout = |n: usize, per_call: usize| -> (Vec<String>, Result<usize, String>) {
        let calls: Vec<&[String]> = if per_call == 0 { vec![&keys[..n]] } else { keys[..n].chunks(per_call).collect() };
        let args: Vec<String> = calls.iter().flat_map(|c| c.iter().flat_map(|_| rule.map(String::from))).collect();
        let mut words = vec![(if per_call == 0 { &one } else { &batch }).clone(), n.to_string()];
        words.extend(keys[..n].iter().cloned());
        let mut counts = Vec::new();
        if per_call != 0 {
            counts.push(calls.len().to_string());
            counts.extend(calls.iter().flat_map(|c| [c.len().to_string(), (6 * c.len()).to_string()]));
        }
        let all_args: Vec<String> = counts.iter().chain(&args).cloned().collect();
        words.extend(all_args.iter().cloned());
        let k: Vec<&[u8]> = keys[..n].iter().map(|w| w.as_bytes()).collect();
        let a: Vec<&[u8]> = all_args.iter().map(|w| w.as_bytes()).collect();
        let mut texts = Texts(std::collections::HashMap::new(), keys[..n].iter().map(|k| k.as_bytes().to_vec()).collect());
        let now = 1_700_006_400_000_000;
        let native = if per_call == 0 {
            native::one(&k, &a, &mut texts, now).0.map(|_| 1)
        } else {
            native::batch(&k, &a, &mut texts, now).map(|(replies, _)| replies.len())
        };
        (words, native)
    };
    let cases = [
        (lua::MAX_KEYS, 0, None),
        (lua::MAX_KEYS + 1, 0, Some(format!("a call names {} keys; at most {}", lua::MAX_KEYS + 1, lua::MAX_KEYS))),
        (lua::MAX_RUN_KEYS, lua::MAX_KEYS, None),
        (
            lua::MAX_RUN_KEYS + 1,
            lua::MAX_KEYS,
            Some(format!("a batch names {} keys; at most {}", lua::MAX_RUN_KEYS + 1, lua::MAX_RUN_KEYS)),
        ),
        (lua::MAX_KEYS + 1, lua::MAX_KEYS + 1, Some("call 1 of the batch has no keys or bad counts".to_string())),
    ];
    for (n, per_call, refused) in cases {
        let (words, native) = layout(n, per_call);
        let mut command = vec!["FCALL"];
        command.extend(words.iter().map(String::as_str));
        let reply = conn.cmd(&command);
        match (&refused, reply) {
            (None, Reply::Array(replies)) => {
                assert_eq!(native.as_ref().ok(), Some(&if per_call == 0 { 1 } else { n.div_ceil(per_call) }), "{n}");
                assert!(!replies.is_empty(), "{n} keys");
            }
            (Some(text), Reply::Error(e)) => {
                assert!(e.contains(text.as_str()), "{n} keys in calls of {per_call}: {e}");
                assert_eq!(native.as_ref().err(), Some(&e), "{n} keys in calls of {per_call}: the module's words");
            }
            (_, other) => panic!("{n} keys in calls of {per_call}: {other:?}"),
        }
    }
}
