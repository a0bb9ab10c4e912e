//! The decision script and its calling convention: the script text (assembled from
//! `src/redis/scripts/*.lua`), the command that calls it for one rule of a request, and the
//! reading of its reply into decisions.
//!
//! One call decides every limit of one rule of one request, all-or-nothing: `KEYS[i]` is limit
//! i's state key and [`rule_args`] gives its six `ARGV` entries; the reply is
//! `{all_allowed, {allowed, remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms}...}` (see the
//! top of `decide.lua`). The function library also has a batch function, several calls in one
//! (what sluice-gateway sends Redis); [`batch_counts`] gives the counts it starts with. The scripts mirror
//! the Rust strategies exactly, and the shared case table is run through both
//! (`tests/lua_cases.rs`).

use super::command::Command;
use super::keys::push_key;
use super::wire::Reply;
use crate::config::{lua_largest, LUA_EXACT, MAX_COST, MAX_DELAY_MS, MAX_LOG_ENTRIES};
use crate::rate::{Rate, MAX_LIMIT, MAX_PERIOD_MS};
use crate::strategy::{Decision, Param, Strategy, CATALOGUE};

/// The definitions the decision needs: the shared helpers and every strategy. A new strategy's
/// Lua file joins this list.
macro_rules! definitions {
    () => {
        concat!(
            include_str!("scripts/common.lua"),
            include_str!("scripts/fixed_window.lua"),
            include_str!("scripts/sliding_window_counter.lua"),
            include_str!("scripts/sliding_window_log.lua"),
            include_str!("scripts/token_bucket.lua"),
            include_str!("scripts/token_bucket_debt.lua"),
            include_str!("scripts/leaky_bucket.lua"),
            include_str!("scripts/leaky_bucket_queue.lua"),
            include_str!("scripts/gcra.lua"),
        )
    };
}

const DECIDE: &str = include_str!("scripts/decide.lua");
/// The library's batch function: only sluice-gateway sends batches, so the script (which the
/// filter sends as `EVAL` after a NOSCRIPT) goes without it.
const BATCH: &str = include_str!("scripts/batch.lua");
#[cfg(any(test, feature = "testing"))]
const CLOCK_OVERRIDE_OFF: &str = "local clock_override_allowed = false";

/// The whole script, for `SCRIPT LOAD` / `EVAL`: one call per run.
pub const SCRIPT: &str = concat!(definitions!(), include_str!("scripts/decide.lua"), "return one(KEYS, ARGV)\n");

/// SHA-1 of [`SCRIPT`], for `EVALSHA`.
pub fn sha() -> String {
    sha1_smol::Sha1::from(SCRIPT).digest().to_string()
}

/// The script with a clock override (a trailing epoch-µs argument), for tests that simulate
/// time in a real Redis. Production Redis never runs it: the gateway loads and accepts only
/// [`SCRIPT`], which refuses the override.
#[cfg(any(test, feature = "testing"))]
pub fn script_with_clock_override() -> String {
    SCRIPT.replacen(CLOCK_OVERRIDE_OFF, "local clock_override_allowed = true", 1)
}

/// The function [`library`] registers for one call: named after the library's own hash, so
/// proxies of two sluice versions can share one Redis.
pub fn function_name() -> String {
    format!("sluice_decide_{}", library_id())
}

/// The function [`library`] registers for a batch of calls (see [`batch_counts`]).
pub fn batch_function_name() -> String {
    format!("sluice_batch_{}", library_id())
}

/// The native module command (`redis-module/`) that decides one call as [`function_name`]
/// does: `sluice.decide.<id> numkeys key… arg…`, the library's id, so that a gateway calls only
/// a module that decides exactly as the library it would otherwise load.
pub fn module_command_name() -> String {
    format!("sluice.decide.{}", library_id())
}

/// The native module command that decides a batch as [`batch_function_name`] does.
pub fn module_batch_command_name() -> String {
    format!("sluice.batch.{}", library_id())
}

/// The first 16 hex digits of the SHA-1 of the production library's text (named with no id):
/// it changes with any of that text.
fn library_id() -> String {
    let text = library_body(DECIDE, "");
    sha1_smol::Sha1::from(&text).digest().to_string().chars().take(16).collect()
}

/// The decision script as a Redis 7 function library, for `FUNCTION LOAD`: the same text as
/// [`SCRIPT`], but Redis defines the strategies once, when it loads the library, instead of on
/// every call (about a quarter of a decision's Redis CPU). `FCALL` of [`function_name`] takes
/// the same keys and arguments as `EVALSHA`; [`batch_function_name`] takes several calls.
pub fn library() -> String {
    library_of(DECIDE)
}

/// [`library`] with the test build's clock override.
#[cfg(any(test, feature = "testing"))]
pub fn library_with_clock_override() -> String {
    library_of(&DECIDE.replacen(CLOCK_OVERRIDE_OFF, "local clock_override_allowed = true", 1))
}

fn library_of(decide: &str) -> String {
    let id = library_id();
    format!("#!lua name=sluice_{id}\n{}", library_body(decide, &id))
}

fn library_body(decide: &str, id: &str) -> String {
    format!(
        "{}\n{decide}\n{BATCH}\nredis.register_function('sluice_decide_{id}', one)\nredis.register_function('sluice_batch_{id}', batch)\n",
        definitions!()
    )
}

/// The `ARGV` a batch starts with, for calls with `(keys, arguments)` counts `calls`: the call
/// count, then each call's two counts. Its `KEYS` are the calls' keys and the rest of its
/// `ARGV` their arguments, call after call (see the top of `decide.lua`).
pub fn batch_counts(calls: &[(usize, usize)]) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(calls.len()).chain(calls.iter().flat_map(|&(keys, args)| [keys, args]))
}

/// Why a command is not a call of the decision script as the filter makes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("only EVALSHA (or EVAL) of sluice's decision script runs here; found {0}")]
    Command(String),
    #[error("not sluice's decision script (expected SHA {expected})")]
    Script { expected: String },
    #[error("keys: {0}")]
    Keys(String),
    #[error("arguments: {0}")]
    Arguments(String),
}

impl Refusal {
    /// A short name for counting refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Command(_) => "command",
            Refusal::Script { .. } => "script",
            Refusal::Keys(_) => "keys",
            Refusal::Arguments(_) => "arguments",
        }
    }
}

/// A command that calls the decision script the way the filter does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation<'a> {
    /// The state keys, one per limit, all of one rule and identity.
    pub keys: Vec<&'a [u8]>,
    /// Six per key, then `dry` when asked.
    pub args: Vec<&'a [u8]>,
}

impl Invocation<'_> {
    /// The most sliding-log entries this call reads and rewrites: a log's decision parses and
    /// writes the whole log, so its time in Redis grows with its length, where every other
    /// strategy's is a few numbers. The log a key holds may be as long as any call made it,
    /// whatever this call's `max_entries`, so each key of a log counts [`MAX_LOG_ENTRIES`]. At
    /// most [`MAX_LOG_WORK`].
    pub fn log_work(&self) -> u64 {
        let log = self.args.first().is_some_and(|s| *s == SLIDING_WINDOW_LOG.as_bytes());
        if log {
            self.keys.len() as u64 * MAX_LOG_ENTRIES
        } else {
            0
        }
    }
}

/// The most sliding-log entries one script run may read and rewrite: one call of a rule with
/// the most limits, each keeping the most entries. Calls run together (a batch) are split so
/// that no run exceeds it, where one request could hold Redis for the seconds after which it
/// answers every other client BUSY.
pub const MAX_LOG_WORK: u64 = MAX_KEYS as u64 * MAX_LOG_ENTRIES;

/// The most keys one script run may read: a key may hold the longest log whatever the strategy
/// of the call that names it, and reading one costs its length. As many as the filter gathers
/// into one callout for rules of one limit ([`super::wire::GATHERED_COMMANDS`]).
pub const MAX_RUN_KEYS: usize = super::wire::GATHERED_COMMANDS;

const SLIDING_WINDOW_LOG: &str = "sliding_window_log";

/// Checks that `words` (the command name, then its arguments) call [`SCRIPT`] by its SHA
/// `sha` (or as `EVAL` with its exact text) with sluice's key shape and argument layout, and
/// nothing else: no other script, command or key, no clock override, numbers Lua holds exactly.
/// What a service that runs sluice's script for others (sluice-gateway) may accept.
pub fn check<'a>(words: &[&'a [u8]], sha: &str) -> Result<Invocation<'a>, Refusal> {
    let name = words.first().map(|w| w.to_ascii_uppercase()).unwrap_or_default();
    let script = words.get(1).copied().unwrap_or_default();
    match name.as_slice() {
        b"EVALSHA" if script.eq_ignore_ascii_case(sha.as_bytes()) => {}
        b"EVAL" if script == SCRIPT.as_bytes() => {}
        b"EVALSHA" | b"EVAL" => return Err(Refusal::Script { expected: sha.to_string() }),
        _ => return Err(Refusal::Command(String::from_utf8_lossy(&name).chars().take(40).collect())),
    }
    let n = words.get(2).and_then(|w| number(w)).ok_or_else(|| Refusal::Keys("numkeys is not a number".into()))?;
    let n = usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_KEYS).contains(n))
        .ok_or_else(|| Refusal::Keys(format!("{n} keys; expected 1 to {MAX_KEYS} (one per limit of one rule)")))?;
    let keys: Vec<&[u8]> = words.get(3..3 + n).ok_or_else(|| Refusal::Keys(format!("fewer than {n} keys")))?.to_vec();
    check_keys(&keys)?;
    let args: Vec<&[u8]> = words[3 + n..].to_vec();
    check_args(&args, n)?;
    Ok(Invocation { keys, args })
}

/// The most limits one rule has (`rules[].limits`), hence keys per call.
pub const MAX_KEYS: usize = 8;

/// A plain decimal integer that a Lua number holds exactly.
fn number(w: &[u8]) -> Option<u64> {
    // Decimal as `to_string` writes it: no sign, no leading zero, at most 13 digits (1e12).
    if w.is_empty() || w.len() > 13 || (w.len() > 1 && w[0] == b'0') || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(w).ok()?.parse::<u64>().ok()
}

/// The largest value the config compiler lets reach a strategy parameter.
fn param_max(p: Param) -> u64 {
    match p {
        Param::Burst | Param::MaxDebt => MAX_LIMIT,
        Param::MaxDelayMs => MAX_DELAY_MS,
        Param::MaxEntries => MAX_LOG_ENTRIES,
    }
}

/// Keys as [`super::keys::key`] forms them: one rule and identity (one hash tag), the limits in
/// order, one fingerprint.
fn check_keys(keys: &[&[u8]]) -> Result<(), Refusal> {
    let name_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let hex = |w: &[u8], len: usize| w.len() == len && w.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let mut first: Option<(&[u8], &[u8])> = None;
    for (i, key) in keys.iter().enumerate() {
        let bad = || Refusal::Keys(format!("key {i} is not <namespace>:{{<rule>:<hash>}}:<index>.<fingerprint>"));
        let open = key.windows(2).position(|w| w == b":{").ok_or_else(bad)?;
        let close = key.windows(2).position(|w| w == b"}:").ok_or_else(bad)?;
        let (ns, tag, tail) = (&key[..open], key.get(open + 2..close).ok_or_else(bad)?, &key[close + 2..]);
        let colon = tag.iter().rposition(|b| *b == b':').ok_or_else(bad)?;
        let (rule, hash) = (&tag[..colon], &tag[colon + 1..]);
        let dot = tail.iter().position(|b| *b == b'.').ok_or_else(bad)?;
        let (index, fingerprint) = (&tail[..dot], &tail[dot + 1..]);
        let names_ok = (1..=64).contains(&ns.len())
            && ns.iter().all(name_char)
            && (1..=64).contains(&rule.len())
            && rule.iter().all(name_char);
        if !names_ok || !hex(hash, 16) || !hex(fingerprint, 8) || index != i.to_string().as_bytes() {
            return Err(bad());
        }
        let this = (&key[..close + 2], fingerprint);
        match first {
            None => first = Some(this),
            Some(f) if f == this => {}
            Some(_) => return Err(Refusal::Keys("the keys are not one rule's, identity's and fingerprint's".into())),
        }
    }
    Ok(())
}

/// The largest cost the filter sends. A request costs at most [`MAX_COST`]; a message's
/// payload-byte cost is held at one past its rule's capacity (`Rule::message_cost`), and a
/// capacity is at most a burst and a debt of [`MAX_LIMIT`] each. The bound on what the script
/// computes from it is the check on 2^53 below.
pub const MAX_CALL_COST: u64 = 2 * MAX_LIMIT + 1;
const _: () = assert!(MAX_CALL_COST >= MAX_COST);

/// Six arguments per key as [`rule_args`] forms them, then at most `dry`.
fn check_args(args: &[&[u8]], n: usize) -> Result<(), Refusal> {
    let bad = |what: String| Err(Refusal::Arguments(what));
    let dry = args.len() == ARGS_PER_RULE * n + 1 && args.last() == Some(&&b"dry"[..]);
    if args.len() != ARGS_PER_RULE * n && !dry {
        return bad(format!("{} arguments for {n} keys; expected {} (and optionally \"dry\")", args.len(), ARGS_PER_RULE * n));
    }
    for (k, group) in args.chunks(ARGS_PER_RULE).take(n).enumerate() {
        let [strategy, limit, period, cost, p1, p2] = group else { return bad(format!("limit {k}: too few")) };
        // One rule's limits: one strategy with one set of parameters, one cost for all.
        let first = &args[..ARGS_PER_RULE];
        if k > 0 && [strategy, cost, p1, p2] != [&first[0], &first[3], &first[4], &first[5]] {
            return bad(format!("limit {k}: strategy, cost and parameters differ from limit 0's (one rule's limits share them)"));
        }
        let Some(entry) = CATALOGUE.iter().find(|e| e.name.as_bytes() == *strategy) else {
            return bad(format!("limit {k}: unknown strategy"));
        };
        // The bounds the config compiler enforces: a call outside them is not one the filter
        // makes, and could write state that lives for centuries or grows without end.
        let within = |w: &[u8], lo: u64, hi: u64| number(w).is_some_and(|v| (lo..=hi).contains(&v));
        if !(within(limit, 1, MAX_LIMIT) && within(period, 1, MAX_PERIOD_MS) && within(cost, 1, MAX_CALL_COST)) {
            return bad(format!(
                "limit {k}: limit must be 1..={MAX_LIMIT}, period 1..={MAX_PERIOD_MS} ms and cost 1..={MAX_CALL_COST}"
            ));
        }
        for (i, (w, param)) in [p1, p2].into_iter().zip(entry.lua).enumerate() {
            let ok = match param {
                None => *w == b"0",
                Some(p) => within(w, 0, param_max(p)),
            };
            if !ok {
                let expected = param.map_or("0".to_string(), |p| format!("{} in 0..={}", p.key(), param_max(p)));
                return bad(format!("limit {k}: p{} of {} must be {expected}", i + 1, entry.name));
            }
        }
        // And the compiler's bound on the numbers the script computes: past 2^53 a Lua number
        // is no longer exact, and the script and the Redis module would decide apart.
        let [limit, period, cost, p1, p2] = [limit, period, cost, p1, p2].map(|w| number(w).unwrap_or(0));
        let strategy = Strategy::from_lua_params(entry.name, [p1, p2]);
        if strategy.is_none_or(|s| lua_largest(&s, &Rate { limit, period_ms: period }, cost) > LUA_EXACT) {
            return bad(format!("limit {k}: its numbers reach past 2^53, where Lua's are no longer exact"));
        }
    }
    Ok(())
}

/// `ARGV` entries per key.
pub const ARGS_PER_RULE: usize = 6;

/// The `ARGV` entries of one limit: strategy name, limit, period_ms, cost, p1, p2.
pub fn rule_args(strategy: &Strategy, rate: &Rate, cost: u64) -> [String; ARGS_PER_RULE] {
    let [limit, period_ms, cost, p1, p2] = rule_numbers(strategy, rate, cost).map(|n| itoa::Buffer::new().format(n).to_owned());
    [strategy.name().to_string(), limit, period_ms, cost, p1, p2]
}

/// [`rule_args`] after the strategy's name.
fn rule_numbers(strategy: &Strategy, rate: &Rate, cost: u64) -> [u64; ARGS_PER_RULE - 1] {
    let [p1, p2] = strategy.lua_params();
    [rate.limit, rate.period_ms, cost, p1, p2]
}

/// What the script needs to decide one rule for one request.
#[derive(Debug, Clone, Copy)]
pub struct RuleCall<'a> {
    pub namespace: &'a str,
    pub rule: &'a str,
    /// The identity's hash (the key's only request-derived part).
    pub identity: u64,
    /// The rule's fingerprint: a changed rule starts from fresh keys.
    pub fingerprint: u32,
    pub strategy: &'a Strategy,
    /// The limits in force, one key each.
    pub rates: &'a [Rate],
    /// At least 1: the script refuses a peek.
    pub cost: u64,
}

/// How the command names the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form<'a> {
    /// `EVALSHA <sha>`: the script is cached in Redis.
    Sha(&'a str),
    /// `EVAL <script>`, after a NOSCRIPT: caches it for every later `EVALSHA`.
    Eval,
}

/// The command deciding `call`; with `dry`, deciding without writing (the first pass over
/// several rules that live in different cluster slots).
pub fn command(call: &RuleCall<'_>, form: Form<'_>, dry: bool) -> Command {
    let n = call.rates.len();
    let named = match form {
        Form::Sha(sha) => sha.len(),
        Form::Eval => SCRIPT.len(),
    };
    // The script's name or text, then per limit a key (its parts and 37 more bytes) and six
    // arguments (a strategy's name and five numbers, 120 bytes at most).
    let per_limit = call.namespace.len() + call.rule.len() + 37 + 120;
    let mut cmd = Command::with_capacity(named + 16 + n * per_limit);
    match form {
        Form::Sha(sha) => {
            cmd.push("EVALSHA");
            cmd.push(sha);
        }
        Form::Eval => {
            cmd.push("EVAL");
            cmd.push(SCRIPT);
        }
    }
    cmd.push_number(n as u64);
    for i in 0..n {
        cmd.push_with(|k| push_key(k, call.namespace, call.rule, call.identity, i, call.fingerprint));
    }
    for rate in call.rates {
        cmd.push(call.strategy.name());
        rule_numbers(call.strategy, rate, call.cost).into_iter().for_each(|a| cmd.push_number(a));
    }
    if dry {
        cmd.push("dry");
    }
    cmd
}

/// One rule's answer: whether the script admitted it as a whole, and a decision per limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReply {
    pub allowed: bool,
    pub decisions: Vec<Decision>,
}

/// Reads the reply to [`command`] for limits `rates`. A `delay_ms` is never longer than
/// `max_delay_ms`: what the rule allows, not what the reply says (a broken or hostile endpoint
/// must not park requests for ever). An error reply or any other shape is a failure.
pub fn read(reply: &Reply, rates: &[Rate], max_delay_ms: u64) -> Result<RuleReply, String> {
    let items = match reply {
        Reply::Array(items) => items,
        Reply::Error(e) => return Err(format!("redis: {e}")),
        other => return Err(format!("unexpected reply {other:?}")),
    };
    let all = items.first().and_then(Reply::as_int).ok_or("reply without verdict")?;
    if items.len() != rates.len() + 1 {
        return Err(format!("{} decisions for {} limits", items.len().saturating_sub(1), rates.len()));
    }
    let decisions = rates
        .iter()
        .zip(&items[1..])
        .map(|(rate, item)| {
            let fields = match item {
                Reply::Array(f) => ints(f),
                _ => None,
            };
            fields
                .and_then(|f| decision_from_reply(rate.limit, &f))
                .map(|(d, _ttl)| Decision { delay_ms: d.delay_ms.min(max_delay_ms), ..d })
                .ok_or_else(|| format!("malformed decision {item:?}"))
        })
        .collect::<Result<Vec<Decision>, String>>()?;
    Ok(RuleReply { allowed: all == 1 && decisions.iter().all(|d| d.allowed), decisions })
}

/// A limit's six fields as integers, without collecting them anywhere else first.
fn ints(fields: &[Reply]) -> Option<[i64; 6]> {
    let mut out = [0; 6];
    if fields.len() != out.len() {
        return None;
    }
    for (o, f) in out.iter_mut().zip(fields) {
        *o = f.as_int()?;
    }
    Some(out)
}

/// One limit's part of the reply (`{allowed, remaining, reset_ms, retry_after_ms, delay_ms,
/// ttl_ms}`) as a [`Decision`] for a rate whose limit is `limit`, plus the state's ttl in ms.
/// `None` unless it has exactly six non-negative fields.
pub fn decision_from_reply(limit: u64, fields: &[i64]) -> Option<(Decision, u64)> {
    let [allowed, remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms] = fields else {
        return None;
    };
    let u = |v: &i64| u64::try_from(*v).ok();
    let decision = Decision {
        allowed: *allowed == 1,
        limit,
        remaining: u(remaining)?,
        reset_ms: u(reset_ms)?,
        retry_after_ms: u(retry_after_ms)?,
        delay_ms: u(delay_ms)?,
    };
    Some((decision, u(ttl_ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(strategy: &'a Strategy, rates: &'a [Rate]) -> RuleCall<'a> {
        RuleCall { namespace: "ns", rule: "api", identity: 0xab, fingerprint: 0xdead, strategy, rates, cost: 2 }
    }

    #[test]
    fn a_command_carries_one_key_and_six_arguments_per_limit() {
        let s = Strategy::Gcra { burst: Some(3) };
        let rates = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];
        let cmd = command(&call(&s, &rates), Form::Sha("abc"), false).to_vec();
        assert_eq!(
            &cmd[..5],
            ["EVALSHA", "abc", "2", "ns:{api:00000000000000ab}:0.0000dead", "ns:{api:00000000000000ab}:1.0000dead"]
        );
        assert_eq!(&cmd[5..11], ["gcra", "5", "1000", "2", "3", "0"]);
        assert_eq!(cmd.len(), 3 + 2 + 2 * ARGS_PER_RULE);
        let dry = command(&call(&s, &rates), Form::Eval, true);
        assert_eq!((dry.get(0), dry.get(1), dry.last()), (Some("EVAL"), Some(SCRIPT), Some("dry")));
    }

    #[test]
    fn replies_are_read_strictly() {
        let rates = [Rate { limit: 5, period_ms: 1000 }];
        let d = |f: [i64; 6]| Reply::Array(f.map(Reply::Int).to_vec());
        let ok = Reply::Array(vec![Reply::Int(1), d([1, 4, 1000, 0, 9_999, 1000])]);
        let r = read(&ok, &rates, 200).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.allowed);
        assert_eq!((r.decisions[0].remaining, r.decisions[0].delay_ms), (4, 200), "delay clamped to the rule's");
        for bad in [
            Reply::Int(1),
            Reply::Error("NOSCRIPT x".into()),
            Reply::Array(vec![Reply::Int(1)]),
            Reply::Array(vec![Reply::Int(1), Reply::Str("x".into())]),
            Reply::Array(vec![Reply::Int(1), d([1, -4, 1000, 0, 0, 1000])]),
        ] {
            assert!(read(&bad, &rates, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sha_is_the_scripts() {
        let s = sha();
        assert_eq!(s.len(), 40);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }

    fn words(cmd: &[String]) -> Vec<&[u8]> {
        cmd.iter().map(|w| w.as_bytes()).collect()
    }

    #[test]
    fn what_the_filter_sends_is_accepted() {
        let s = Strategy::LeakyBucketQueue { burst: Some(3), max_delay_ms: 250 };
        let rates = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];
        let sha = sha();
        for (form, dry) in [(Form::Sha(&sha), false), (Form::Sha(&sha), true), (Form::Eval, false)] {
            let cmd = command(&call(&s, &rates), form, dry).to_vec();
            let inv = check(&words(&cmd), &sha).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(inv.keys.len(), 2);
            assert_eq!(inv.args.len(), 12 + usize::from(dry));
        }
        // Every strategy, at the largest values the config compiler lets through.
        let at_max = [
            Strategy::FixedWindow,
            Strategy::SlidingWindowCounter,
            Strategy::SlidingWindowLog { max_entries: MAX_LOG_ENTRIES as u32 },
            Strategy::TokenBucket { burst: Some(MAX_LIMIT) },
            Strategy::TokenBucketDebt { burst: Some(MAX_LIMIT), max_debt: MAX_LIMIT },
            Strategy::LeakyBucket { burst: None },
            Strategy::LeakyBucketQueue { burst: Some(MAX_LIMIT), max_delay_ms: MAX_DELAY_MS },
            Strategy::Gcra { burst: Some(1) },
        ];
        assert_eq!(at_max.len(), CATALOGUE.len());
        // Accepted exactly when the compiler would accept such a Redis rule: while the numbers
        // the script computes stay exact in Lua (at the largest rate, only the counters' do).
        let mut refused = 0;
        for s in &at_max {
            for rate in [Rate { limit: MAX_LIMIT, period_ms: MAX_PERIOD_MS }, Rate { limit: 1_000, period_ms: 1_000 }] {
                let rates = [rate];
                let call = RuleCall { cost: MAX_COST, ..call(s, &rates) };
                let cmd = command(&call, Form::Sha(&sha), false).to_vec();
                let got = check(&words(&cmd), &sha);
                match (got, lua_largest(s, &rate, MAX_COST) <= LUA_EXACT) {
                    (Ok(_), true) => {}
                    (Err(e), false) if e.kind() == "arguments" => refused += 1,
                    (got, exact) => panic!("{s:?} at {rate:?}: {:?}, exact in Lua: {exact}", got.map(|_| ())),
                }
            }
        }
        assert_eq!(refused, 6, "the six strategies whose numbers grow with the period");
    }

    #[test]
    fn a_large_message_s_cost_is_accepted() {
        // A message rule counts payload bytes: a frame far above a request's cost bound is a
        // call the filter makes, and refusing it would fail the call into on_error (allow).
        let config = serde_json::json!({"redis": {"cluster": "gw", "transport": "http"}, "rules": [
            {"name": "bytes", "per": "message", "limit": "100000000/min", "cost": "payload_bytes", "backend": "redis"}]});
        let config = crate::config::compile(&config).unwrap_or_else(|e| panic!("{e:?}"));
        let rule = &config.rules[0];
        let cost = rule.message_cost(2_000_000);
        assert!(cost > MAX_COST, "the frame's cost is its payload: {cost}");
        let sha = sha();
        for cost in [cost, rule.message_cost(u64::MAX)] {
            let call = RuleCall { cost, ..call(&rule.strategy, rule.limits.rates()) };
            let cmd = command(&call, Form::Sha(&sha), false).to_vec();
            check(&words(&cmd), &sha).unwrap_or_else(|e| panic!("cost {cost}: {e}"));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let sha = sha();
        let good = command(&call(&Strategy::FixedWindow, &[Rate { limit: 5, period_ms: 1000 }]), Form::Sha(&sha), false).to_vec();
        let with = |i: usize, v: &str| {
            let mut c = good.clone();
            c[i] = v.to_string();
            c
        };
        let plus = |extra: &str| {
            let mut c = good.clone();
            c.push(extra.to_string());
            c
        };
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec!["FLUSHALL".into()], "command"),
            (vec!["SCRIPT".into(), "LOAD".into(), "return 1".into()], "command"),
            (vec!["EVAL".into(), "redis.call('SET','pwned','1')".into(), "0".into()], "script"),
            (with(1, &"0".repeat(40)), "script"),
            (with(2, "0"), "keys"),
            (with(2, "9"), "keys"),
            (with(3, "ns:{api:00000000000000ab}:0.0000dead:x"), "keys"),
            (with(3, "other-key"), "keys"),
            (with(3, "ns:{api:00000000000000AB}:0.0000dead"), "keys"),
            (with(3, "ns:{api:00000000000000ab}:1.0000dead"), "keys"),
            (with(4, "no_such_strategy"), "arguments"),
            (with(7, "0"), "arguments"),
            (with(5, "-5"), "arguments"),
            (with(6, "99999999999999999999"), "arguments"),
            (with(5, "05"), "arguments"),
            (with(5, "1000000000001"), "arguments"),
            (with(6, &(366 * 86_400_000u64 + 1).to_string()), "arguments"),
            (with(7, &(MAX_CALL_COST + 1).to_string()), "arguments"),
            // fixed_window takes no parameters: p1 and p2 are 0.
            (with(8, "1"), "arguments"),
            (with(9, "7"), "arguments"),
            (plus("1700000000000000"), "arguments"),
            (plus("dry").into_iter().chain(["dry".to_string()]).collect(), "arguments"),
        ];
        for (cmd, kind) in cases {
            match check(&words(&cmd), &sha) {
                Err(e) => assert_eq!(e.kind(), kind, "{cmd:?}: {e}"),
                Ok(_) => panic!("accepted {cmd:?}"),
            }
        }
    }

    /// Numbers each within its own bound whose product passes 2^53, where the script's
    /// arithmetic stops being exact: refused, and just under it accepted. A sliding window
    /// counter's state reaches 2 x (limit + cost) x period.
    #[test]
    fn numbers_that_together_pass_2_pow_53_are_refused() {
        let sha = sha();
        let call_of = |limit: &str| {
            let mut c =
                command(&call(&Strategy::SlidingWindowCounter, &[Rate { limit: 5, period_ms: 1000 }]), Form::Sha(&sha), false)
                    .to_vec();
            (c[5], c[6]) = (limit.to_string(), "5000000000".to_string());
            c
        };
        check(&words(&call_of("900000")), &sha).unwrap_or_else(|e| panic!("2 x 900001 x 5e9 is under 2^53: {e}"));
        match check(&words(&call_of("1000000")), &sha) {
            Err(e) => assert!(e.kind() == "arguments" && e.to_string().contains("2^53"), "{e}"),
            Ok(_) => panic!("2 x 1000001 x 5e9 passes 2^53 and was accepted"),
        }
    }

    #[test]
    fn one_rules_limits_share_strategy_cost_and_parameters() {
        let sha = sha();
        let rates = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];
        let log = Strategy::SlidingWindowLog { max_entries: 100 };
        let good = command(&call(&log, &rates), Form::Sha(&sha), false).to_vec();
        let checked = check(&words(&good), &sha).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked.log_work(), 2 * MAX_LOG_ENTRIES, "two logs, each as long as any call may have made it");
        // Limit 1's strategy, cost, p1 or p2 unlike limit 0's: not a call the filter makes.
        let (second, name, cost, p1, p2) = (3 + rates.len() + ARGS_PER_RULE, 0, 3, 4, 5);
        for (at, v) in [(name, "fixed_window"), (cost, "3"), (p1, "99"), (p2, "1")] {
            let mut c = good.clone();
            c[second + at] = v.to_string();
            match check(&words(&c), &sha) {
                Err(e) => assert_eq!(e.kind(), "arguments", "{e}"),
                Ok(_) => panic!("accepted {c:?}"),
            }
        }
        // Another strategy reads a few numbers: no log work.
        let fixed = command(&call(&Strategy::FixedWindow, &rates), Form::Sha(&sha), false).to_vec();
        assert_eq!(check(&words(&fixed), &sha).map(|c| c.log_work()).ok(), Some(0));
        let most = Strategy::SlidingWindowLog { max_entries: MAX_LOG_ENTRIES as u32 };
        let most = command(&call(&most, &[Rate { limit: 5, period_ms: 1000 }; 8]), Form::Sha(&sha), false).to_vec();
        assert_eq!(check(&words(&most), &sha).map(|c| c.log_work()).ok(), Some(MAX_LOG_WORK));
    }

    #[test]
    fn the_scripts_read_no_longer_states_than_the_native_reader() {
        use crate::redis::state::{MAX_STATE_BYTES, MAX_STATE_NUMBERS};
        assert!(SCRIPT.contains(&format!("local MAX_STATE_BYTES = {MAX_STATE_BYTES}\n")));
        assert!(SCRIPT.contains(&format!("local MAX_STATE_NUMBERS = {MAX_STATE_NUMBERS}\n")));
    }

    #[test]
    fn only_the_test_build_has_a_clock_override() {
        assert!(SCRIPT.contains("local clock_override_allowed = false"));
        assert!(script_with_clock_override().contains("local clock_override_allowed = true"));
    }
}
