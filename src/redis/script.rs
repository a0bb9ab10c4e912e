//! The decision script and its calling convention: the script text (assembled from
//! `src/redis/scripts/*.lua`), the command that calls it for one rule of a request, and the
//! reading of its reply into decisions.
//!
//! One call decides every limit of one rule of one request, all-or-nothing: `KEYS[i]` is limit
//! i's state key and [`rule_args`] gives its six `ARGV` entries; the reply is
//! `{all_allowed, {allowed, remaining, reset_ms, retry_after_ms, delay_ms, ttl_ms}...}` (see the
//! top of `decide.lua`). The scripts mirror the Rust strategies exactly, and the shared case
//! table is run through both (`tests/lua_cases.rs`).

use super::keys::key;
use super::wire::Reply;
use crate::rate::Rate;
use crate::strategy::{Decision, Strategy};

/// The whole script, for `SCRIPT LOAD` / `EVAL`. A new strategy's Lua file joins this list.
pub const SCRIPT: &str = concat!(
    include_str!("scripts/common.lua"),
    include_str!("scripts/fixed_window.lua"),
    include_str!("scripts/sliding_window_counter.lua"),
    include_str!("scripts/sliding_window_log.lua"),
    include_str!("scripts/token_bucket.lua"),
    include_str!("scripts/token_bucket_debt.lua"),
    include_str!("scripts/leaky_bucket.lua"),
    include_str!("scripts/leaky_bucket_queue.lua"),
    include_str!("scripts/gcra.lua"),
    include_str!("scripts/decide.lua"),
);

/// SHA-1 of [`SCRIPT`], for `EVALSHA`.
pub fn sha() -> String {
    sha1_smol::Sha1::from(SCRIPT).digest().to_string()
}

/// `ARGV` entries per key.
pub const ARGS_PER_RULE: usize = 6;

/// The `ARGV` entries of one limit: strategy name, limit, period_ms, cost, p1, p2.
pub fn rule_args(strategy: &Strategy, rate: &Rate, cost: u64) -> [String; ARGS_PER_RULE] {
    let [p1, p2] = strategy.lua_params();
    [
        strategy.name().to_string(),
        rate.limit.to_string(),
        rate.period_ms.to_string(),
        cost.to_string(),
        p1.to_string(),
        p2.to_string(),
    ]
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
pub fn command(call: &RuleCall<'_>, form: Form<'_>, dry: bool) -> Vec<String> {
    let n = call.rates.len();
    let mut cmd = Vec::with_capacity(4 + n * (1 + ARGS_PER_RULE));
    match form {
        Form::Sha(sha) => cmd.extend(["EVALSHA".to_string(), sha.to_string()]),
        Form::Eval => cmd.extend(["EVAL".to_string(), SCRIPT.to_string()]),
    }
    cmd.push(n.to_string());
    cmd.extend((0..n).map(|i| key(call.namespace, call.rule, call.identity, i, call.fingerprint)));
    for rate in call.rates {
        cmd.extend(rule_args(call.strategy, rate, call.cost));
    }
    if dry {
        cmd.push("dry".to_string());
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
            let fields: Option<Vec<i64>> = match item {
                Reply::Array(f) => f.iter().map(Reply::as_int).collect(),
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
        let cmd = command(&call(&s, &rates), Form::Sha("abc"), false);
        assert_eq!(
            &cmd[..5],
            ["EVALSHA", "abc", "2", "ns:{api:00000000000000ab}:0.0000dead", "ns:{api:00000000000000ab}:1.0000dead"]
        );
        assert_eq!(&cmd[5..11], ["gcra", "5", "1000", "2", "3", "0"]);
        assert_eq!(cmd.len(), 3 + 2 + 2 * ARGS_PER_RULE);
        let dry = command(&call(&s, &rates), Form::Eval, true);
        assert_eq!((dry[0].as_str(), dry[1].as_str(), dry.last().map(String::as_str)), ("EVAL", SCRIPT, Some("dry")));
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
}
