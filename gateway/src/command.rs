//! Request side of the dialect: turns a JSON command (or a pipeline of them) into calls of
//! sluice's decision script, and refuses anything else before a byte reaches Redis.
//!
//! The gateway runs one script, [`sluice::redis::script::SCRIPT`], taken from the source the
//! filter is built from. A command is accepted only when [`sluice::redis::script::check`] finds
//! it to be that script's call exactly as the filter makes it: `EVALSHA <its SHA>` (or `EVAL
//! <its exact text>`), one rule's keys, six arguments per key, optionally `dry`. Whichever form
//! came in, it runs as `FCALL` of the gateway's own function library (Redis 7 and later) or
//! `EVALSHA` of the gateway's own SHA, so no script text a client sends is ever handed to
//! Redis.
//!
//! This module needs nothing else from the gateway: `fuzz/` compiles it in by path.

use std::sync::LazyLock;

use serde_json::Value as Json;
use sluice::redis::script::{self, Refusal};

static SHA: LazyLock<String> = LazyLock::new(script::sha);
static FUNCTION: LazyLock<String> = LazyLock::new(script::function_name);
static LIBRARY: LazyLock<String> = LazyLock::new(script::library);

/// SHA-1 of the decision script: what the gateway loads and calls, and what an `EVALSHA` must
/// name to be accepted.
pub fn sha() -> &'static str {
    &SHA
}

/// The decision script as a Redis 7 function library, for `FUNCTION LOAD`.
pub fn library() -> &'static str {
    &LIBRARY
}

/// The function [`library`] registers, for `FCALL`.
pub fn function() -> &'static str {
    &FUNCTION
}

/// The library's name, as `FUNCTION LOAD` answers it (its first line names it).
pub fn library_name() -> &'static str {
    library().lines().next().and_then(|l| l.strip_prefix("#!lua name=")).unwrap_or_default()
}

/// How an accepted call runs on Redis. Same keys, same arguments, same reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunAs {
    /// `EVALSHA <sha>`: the script, cached by `SCRIPT LOAD`.
    EvalSha,
    /// `FCALL <function>`: the library, loaded by `FUNCTION LOAD` (Redis 7 and later). Redis
    /// defines the strategies once, when it loads the library, not on every call.
    Fcall,
}

impl RunAs {
    pub const ALL: [RunAs; 2] = [RunAs::EvalSha, RunAs::Fcall];

    /// The command's name as Redis spells it (also the `command` label in metrics).
    pub fn name(self) -> &'static str {
        match self {
            RunAs::EvalSha => "EVALSHA",
            RunAs::Fcall => "FCALL",
        }
    }
}

/// How the client named the script. Both run alike (see [`RunAs`]); the difference is only counted
/// (`sluice_gateway_commands_total{command}`), since a filter sends `EVAL` only after it saw a
/// NOSCRIPT, which this gateway never lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    EvalSha,
    Eval,
}

impl CommandKind {
    pub const ALL: [CommandKind; 2] = [CommandKind::EvalSha, CommandKind::Eval];

    /// The command's name as Redis spells it (also the `command` label in metrics).
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::EvalSha => "EVALSHA",
            CommandKind::Eval => "EVAL",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Every `reason` a refused request is counted under (`sluice_gateway_refused_total`): the
/// body's own faults, then [`Refusal::kind`]'s.
pub const REASONS: [&str; 7] = ["json", "shape", "pipeline", "command", "script", "keys", "arguments"];

/// Why a request body was refused before anything reached Redis (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("a command must be a JSON array such as [\"EVALSHA\", sha, numkeys, key..., arg...]; found {0}")]
    NotArray(&'static str),
    #[error("empty command: the array needs at least the command name")]
    Empty,
    #[error("argument {index} must be a string or a number; found {found}")]
    BadArgument { index: usize, found: &'static str },
    #[error("{0}")]
    Refused(Refusal),
    #[error("a pipeline must be a JSON array of commands; found {0}")]
    NotPipeline(&'static str),
    #[error("empty pipeline: send at least one command")]
    EmptyPipeline,
    #[error("pipeline has {len} commands; this gateway accepts at most {max}")]
    PipelineTooLong { len: usize, max: usize },
    #[error("pipeline command {index}: {source}")]
    InPipeline { index: usize, source: Box<RequestError> },
}

impl RequestError {
    /// One of [`REASONS`], for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Json(_) => "json",
            RequestError::NotArray(_) | RequestError::Empty | RequestError::BadArgument { .. } | RequestError::NotPipeline(_) => {
                "shape"
            }
            RequestError::EmptyPipeline | RequestError::PipelineTooLong { .. } => "pipeline",
            RequestError::Refused(r) => r.kind(),
            RequestError::InPipeline { source, .. } => source.reason(),
        }
    }
}

/// One accepted call of the decision script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    kind: CommandKind,
    /// The words after the command name, as the client sent them: the script's SHA or text,
    /// numkeys, the keys, the arguments. Kept whole so that the call can be written back.
    args: Vec<Vec<u8>>,
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        self.kind
    }

    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// The call as Redis runs it: `EVALSHA` of the gateway's SHA or `FCALL` of its function,
    /// then the client's numkeys, keys and arguments (checked to be sluice's). The name is in
    /// capitals so that the cluster client recognises it for routing by key.
    pub fn to_redis(&self, form: RunAs) -> redis::Cmd {
        let mut cmd = redis::cmd(form.name());
        cmd.arg(match form {
            RunAs::EvalSha => sha(),
            RunAs::Fcall => function(),
        });
        for a in self.args.iter().skip(1) {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    /// The cluster slot of the call's keys: they share one hash tag, hence one slot. Always
    /// `Some` for a parsed command, which has at least one key.
    pub fn slot(&self) -> Option<u16> {
        self.args.get(2).map(|k| key_slot(k))
    }
}

/// Parses `POST /` bodies: one JSON array.
pub fn parse_command(body: &[u8]) -> Result<Command, RequestError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    command_from_json(&json)
}

/// Parses `POST /pipeline` bodies: a JSON array of arrays, at most `max` of them.
/// Any refused command rejects the whole pipeline, so nothing runs half-way.
pub fn parse_pipeline(body: &[u8], max: usize) -> Result<Vec<Command>, RequestError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
    let Json::Array(items) = json else {
        return Err(RequestError::NotPipeline(json_type(&json)));
    };
    if items.is_empty() {
        return Err(RequestError::EmptyPipeline);
    }
    if items.len() > max {
        return Err(RequestError::PipelineTooLong { len: items.len(), max });
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| command_from_json(item).map_err(|e| RequestError::InPipeline { index, source: Box::new(e) }))
        .collect()
}

fn command_from_json(json: &Json) -> Result<Command, RequestError> {
    let Json::Array(items) = json else {
        return Err(RequestError::NotArray(json_type(json)));
    };
    let words = items.iter().enumerate().map(|(index, item)| argument(index, item)).collect::<Result<Vec<_>, _>>()?;
    let Some(name) = words.first() else {
        return Err(RequestError::Empty);
    };
    let kind = if name.eq_ignore_ascii_case(b"EVAL") { CommandKind::Eval } else { CommandKind::EvalSha };
    let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
    script::check(&refs, sha()).map_err(RequestError::Refused)?;
    Ok(Command { kind, args: words.into_iter().skip(1).collect() })
}

/// JSON strings are sent as their UTF-8 bytes; numbers as their JSON text, which is what
/// Upstash clients expect when they post `["EVALSHA", sha, 1, key, "fixed_window", 10, ...]`.
fn argument(index: usize, json: &Json) -> Result<Vec<u8>, RequestError> {
    match json {
        Json::String(s) => Ok(s.as_bytes().to_vec()),
        Json::Number(n) => Ok(n.to_string().into_bytes()),
        other => Err(RequestError::BadArgument { index, found: json_type(other) }),
    }
}

fn json_type(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Redis Cluster's key → slot map: CRC16 (XMODEM variant) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16_xmodem(hashed) & 0x3FFF
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    if close == 0 {
        None
    } else {
        Some(&rest[..close])
    }
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice::rate::Rate;
    use sluice::redis::script::{command, Form, RuleCall, SCRIPT};
    use sluice::strategy::Strategy;

    const RATES: [Rate; 2] = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];

    /// What the filter sends for one rule with two limits.
    fn call(form: Form<'_>, dry: bool) -> Vec<String> {
        let strategy = Strategy::Gcra { burst: Some(3) };
        let call = RuleCall {
            namespace: "shop",
            rule: "api",
            identity: 0xab,
            fingerprint: 0xdead,
            strategy: &strategy,
            rates: &RATES,
            cost: 1,
        };
        command(&call, form, dry)
    }

    fn body(words: &[String]) -> Vec<u8> {
        json!(words).to_string().into_bytes()
    }

    #[test]
    fn the_filters_calls_are_accepted_and_run_as_evalsha() {
        for (form, dry, kind) in [
            (Form::Sha(sha()), false, CommandKind::EvalSha),
            (Form::Sha(sha()), true, CommandKind::EvalSha),
            (Form::Eval, false, CommandKind::Eval),
        ] {
            let words = call(form, dry);
            let c = parse_command(&body(&words)).unwrap();
            assert_eq!(c.kind(), kind);
            assert_eq!(c.args().len(), words.len() - 1);
            let packed = c.to_redis(RunAs::EvalSha).get_packed_command();
            let text = String::from_utf8_lossy(&packed);
            assert!(text.contains(&format!("$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n2\r\n", sha())), "{text}");
            assert!(!text.contains(SCRIPT), "the script text is never passed on");
            assert!(text.ends_with(if dry { "$3\r\ndry\r\n" } else { "$1\r\n0\r\n" }), "{text}");
            let fcall = c.to_redis(RunAs::Fcall).get_packed_command();
            let fcall_text = String::from_utf8_lossy(&fcall);
            let head = format!("$5\r\nFCALL\r\n${}\r\n{}\r\n", function().len(), function());
            assert!(fcall_text.contains(&head), "{fcall_text}");
            // Same numkeys, keys and arguments.
            assert_eq!(fcall_text.split_once(&head).map(|(_, rest)| rest), text.split_once(sha()).map(|(_, rest)| &rest[2..]));
            assert_eq!(c.slot(), Some(key_slot(b"api:00000000000000ab")));
        }
    }

    #[test]
    fn the_library_is_named_as_redis_will_answer() {
        assert!(library_name().starts_with("sluice_") && library_name().len() > 7, "{}", library_name());
        assert!(library().contains(&format!("'{}'", function())), "the library registers the function FCALL names");
    }

    #[test]
    fn numbers_may_come_as_json_numbers() {
        let words = call(Form::Sha(sha()), false);
        let mut json: Vec<Json> = words.iter().map(|w| json!(w)).collect();
        json[2] = json!(2);
        json[6] = json!(5);
        let c = parse_command(json!(json).to_string().as_bytes()).unwrap();
        assert_eq!(c.args()[1], b"2");
        assert_eq!(c.args()[5], b"5");
        json[6] = json!(5.0);
        let err = parse_command(json!(json).to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "arguments", "{err}");
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let good = call(Form::Sha(sha()), false);
        let with = |i: usize, v: &str| {
            let mut c = good.clone();
            c[i] = v.to_string();
            c
        };
        let s = |v: &[&str]| v.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        for (words, reason) in [
            (s(&["FLUSHALL"]), "command"),
            (s(&["PING"]), "command"),
            (s(&["SCRIPT", "LOAD", SCRIPT]), "command"),
            (s(&["EVAL", "redis.call('SET','pwned','1')", "0"]), "script"),
            (with(1, &"0".repeat(40)), "script"),
            (with(3, "shop:{api:00000000000000ab}:0.0000dead:x"), "keys"),
            (with(4, "shop:{api:00000000000000cd}:1.0000dead"), "keys"),
            (with(5, "no_such_strategy"), "arguments"),
            (with(8, "0"), "arguments"),
            (good.iter().cloned().chain(["1700000000000000".to_string()]).collect(), "arguments"),
        ] {
            let err = parse_command(&body(&words)).unwrap_err();
            assert_eq!(err.reason(), reason, "{words:?}: {err}");
            assert!(matches!(err, RequestError::Refused(_)), "{err:?}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(matches!(parse_command(b"not json"), Err(RequestError::Json(_))));
        assert_eq!(parse_command(br#"{"a":1}"#), Err(RequestError::NotArray("an object")));
        assert_eq!(parse_command(b"[]"), Err(RequestError::Empty));
        assert_eq!(parse_command(br#"["EVALSHA", null]"#), Err(RequestError::BadArgument { index: 1, found: "null" }));
        assert_eq!(parse_command(br#"["EVAL", ["x"]]"#), Err(RequestError::BadArgument { index: 1, found: "an array" }));
        for (body, reason) in [(&b"not json"[..], "json"), (b"{}", "shape"), (b"[]", "shape"), (br#"["EVAL", true]"#, "shape")] {
            assert_eq!(parse_command(body).unwrap_err().reason(), reason);
        }
    }

    #[test]
    fn pipeline_rules() {
        let good = call(Form::Sha(sha()), false);
        let two = json!([good, call(Form::Sha(sha()), true)]).to_string();
        assert_eq!(parse_pipeline(two.as_bytes(), 2).unwrap().len(), 2);
        assert_eq!(parse_pipeline(b"[]", 2), Err(RequestError::EmptyPipeline));
        let three = json!([good, good, good]).to_string();
        assert_eq!(parse_pipeline(three.as_bytes(), 2), Err(RequestError::PipelineTooLong { len: 3, max: 2 }));
        let err = parse_pipeline(json!([good, ["GET", "k"]]).to_string().as_bytes(), 8).unwrap_err();
        assert!(matches!(&err, RequestError::InPipeline { index: 1, source } if matches!(**source, RequestError::Refused(_))));
        assert_eq!(err.reason(), "command");
        assert!(err.to_string().starts_with("pipeline command 1: only EVALSHA"), "{err}");
        assert_eq!(
            parse_pipeline(br#"["EVALSHA"]"#, 8),
            Err(RequestError::InPipeline { index: 0, source: Box::new(RequestError::NotArray("a string")) })
        );
        for (body, reason) in [(&b"[]"[..], "pipeline"), (b"{}", "shape"), (b"[1", "json")] {
            assert_eq!(parse_pipeline(body, 2).unwrap_err().reason(), reason);
        }
    }

    #[test]
    fn every_reason_is_listed() {
        for r in [
            RequestError::Refused(Refusal::Command(String::new())),
            RequestError::Refused(Refusal::Script { expected: String::new() }),
            RequestError::Refused(Refusal::Keys(String::new())),
            RequestError::Refused(Refusal::Arguments(String::new())),
            RequestError::Json(String::new()),
            RequestError::Empty,
            RequestError::EmptyPipeline,
        ] {
            assert!(REASONS.contains(&r.reason()), "{r:?}");
        }
    }

    #[test]
    fn slots_follow_redis_cluster_spec() {
        // Reference values: CRC16/XMODEM check value and `CLUSTER KEYSLOT` answers.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }
}
