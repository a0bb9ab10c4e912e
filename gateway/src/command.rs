//! Request side of the dialect: turns a JSON command (or a pipeline of them) into validated
//! Redis commands, and enforces the allow-list of commands the filter needs.

use serde_json::Value as Json;

/// The only commands the gateway runs. The filter needs scripts and a liveness probe; anything
/// else (GET, FLUSHALL, CONFIG, …) would turn the gateway into an open Redis proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Eval,
    EvalSha,
    ScriptLoad,
    ScriptExists,
    Ping,
}

impl CommandKind {
    pub const ALL: [CommandKind; 5] =
        [CommandKind::Eval, CommandKind::EvalSha, CommandKind::ScriptLoad, CommandKind::ScriptExists, CommandKind::Ping];

    /// The command's name as Redis spells it (also the `command` label in metrics).
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Eval => "EVAL",
            CommandKind::EvalSha => "EVALSHA",
            CommandKind::ScriptLoad => "SCRIPT LOAD",
            CommandKind::ScriptExists => "SCRIPT EXISTS",
            CommandKind::Ping => "PING",
        }
    }

    pub fn index(self) -> usize {
        match self {
            CommandKind::Eval => 0,
            CommandKind::EvalSha => 1,
            CommandKind::ScriptLoad => 2,
            CommandKind::ScriptExists => 3,
            CommandKind::Ping => 4,
        }
    }
}

pub const ALLOWED_LIST: &str = "EVAL, EVALSHA, SCRIPT LOAD, SCRIPT EXISTS, PING";

/// Why a request body was refused before anything reached Redis (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("a command must be a JSON array such as [\"PING\"]; found {0}")]
    NotArray(&'static str),
    #[error("empty command: the array needs at least the command name")]
    Empty,
    #[error("argument {index} must be a string or a number; found {found}")]
    BadArgument { index: usize, found: &'static str },
    #[error("command {name:?} is not allowed by sluice-gateway (allowed: {ALLOWED_LIST})")]
    NotAllowed { name: String },
    #[error("a pipeline must be a JSON array of commands; found {0}")]
    NotPipeline(&'static str),
    #[error("empty pipeline: send at least one command")]
    EmptyPipeline,
    #[error("pipeline has {len} commands; this gateway accepts at most {max}")]
    PipelineTooLong { len: usize, max: usize },
    #[error("pipeline command {index}: {source}")]
    InPipeline { index: usize, source: Box<RequestError> },
}

/// One allowed command with its arguments as bytes, ready to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    kind: CommandKind,
    /// Arguments after the command name (after the subcommand for SCRIPT …).
    args: Vec<Vec<u8>>,
}

impl Command {
    /// `PING` with no argument: the health probe.
    pub fn ping() -> Self {
        Command { kind: CommandKind::Ping, args: Vec::new() }
    }

    pub fn kind(&self) -> CommandKind {
        self.kind
    }

    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// The command as the `redis` crate sends it. The name is spelled in capitals so the
    /// cluster client recognises it for routing (it matches names byte for byte).
    pub fn to_redis(&self) -> redis::Cmd {
        let mut cmd = match self.kind {
            CommandKind::Eval => redis::cmd("EVAL"),
            CommandKind::EvalSha => redis::cmd("EVALSHA"),
            CommandKind::ScriptLoad => {
                let mut c = redis::cmd("SCRIPT");
                c.arg("LOAD");
                c
            }
            CommandKind::ScriptExists => {
                let mut c = redis::cmd("SCRIPT");
                c.arg("EXISTS");
                c
            }
            CommandKind::Ping => redis::cmd("PING"),
        };
        for a in &self.args {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    /// The cluster slot of a script call's first key, or `None` for a command without keys
    /// (those go to any node or to all of them, so they cannot be grouped by slot).
    /// Redis refuses a script whose keys span slots, so the first key stands for all of them.
    pub fn slot(&self) -> Option<u16> {
        match self.kind {
            CommandKind::Eval | CommandKind::EvalSha => {
                let numkeys: u64 = std::str::from_utf8(self.args.get(1)?).ok()?.parse().ok()?;
                if numkeys == 0 {
                    return None;
                }
                self.args.get(2).map(|k| key_slot(k))
            }
            _ => None,
        }
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
    let mut words = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        words.push(argument(index, item)?);
    }
    let mut words = words.into_iter();
    let Some(name) = words.next() else {
        return Err(RequestError::Empty);
    };
    let upper = name.to_ascii_uppercase();
    let kind = match upper.as_slice() {
        b"EVAL" => CommandKind::Eval,
        b"EVALSHA" => CommandKind::EvalSha,
        b"PING" => CommandKind::Ping,
        b"SCRIPT" => {
            let sub = words.next().map(|s| s.to_ascii_uppercase());
            match sub.as_deref() {
                Some(b"LOAD") => CommandKind::ScriptLoad,
                Some(b"EXISTS") => CommandKind::ScriptExists,
                other => {
                    let mut name = "SCRIPT".to_string();
                    if let Some(s) = other {
                        name.push(' ');
                        name.push_str(&String::from_utf8_lossy(s));
                    }
                    return Err(RequestError::NotAllowed { name });
                }
            }
        }
        _ => return Err(RequestError::NotAllowed { name: String::from_utf8_lossy(&upper).into_owned() }),
    };
    Ok(Command { kind, args: words.collect() })
}

/// JSON strings are sent as their UTF-8 bytes; numbers as their JSON text, which is what
/// Upstash clients expect when they post `["EVALSHA", sha, 1, key, 10]`.
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

    #[test]
    fn parses_evalsha_with_number_arguments() {
        let c = parse_command(br#"["evalsha", "abc", 2, "k1", "k2", 1.5, "x"]"#).unwrap();
        assert_eq!(c.kind(), CommandKind::EvalSha);
        let args: Vec<&[u8]> = c.args().iter().map(|a| a.as_slice()).collect();
        assert_eq!(args, vec![&b"abc"[..], b"2", b"k1", b"k2", b"1.5", b"x"]);
    }

    #[test]
    fn script_subcommands_are_checked() {
        assert_eq!(parse_command(br#"["Script", "load", "return 1"]"#).unwrap().kind(), CommandKind::ScriptLoad);
        assert_eq!(parse_command(br#"["SCRIPT", "EXISTS", "a", "b"]"#).unwrap().kind(), CommandKind::ScriptExists);
        assert_eq!(parse_command(br#"["SCRIPT", "FLUSH"]"#), Err(RequestError::NotAllowed { name: "SCRIPT FLUSH".into() }));
        assert_eq!(parse_command(br#"["SCRIPT"]"#), Err(RequestError::NotAllowed { name: "SCRIPT".into() }));
    }

    #[test]
    fn other_commands_are_refused_by_name() {
        for (body, name) in
            [(&br#"["FLUSHALL"]"#[..], "FLUSHALL"), (br#"["get", "k"]"#, "GET"), (br#"["CONFIG", "SET", "x", "y"]"#, "CONFIG")]
        {
            let err = parse_command(body).unwrap_err();
            assert_eq!(err, RequestError::NotAllowed { name: name.into() });
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(matches!(parse_command(b"not json"), Err(RequestError::Json(_))));
        assert_eq!(parse_command(br#"{"a":1}"#), Err(RequestError::NotArray("an object")));
        assert_eq!(parse_command(b"[]"), Err(RequestError::Empty));
        assert_eq!(parse_command(br#"["PING", null]"#), Err(RequestError::BadArgument { index: 1, found: "null" }));
        assert_eq!(parse_command(br#"["EVAL", ["x"]]"#), Err(RequestError::BadArgument { index: 1, found: "an array" }));
    }

    #[test]
    fn pipeline_rules() {
        let p = parse_pipeline(br#"[["PING"], ["EVAL", "return 1", "0"]]"#, 2).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(parse_pipeline(b"[]", 2), Err(RequestError::EmptyPipeline));
        assert_eq!(
            parse_pipeline(br#"[["PING"], ["PING"], ["PING"]]"#, 2),
            Err(RequestError::PipelineTooLong { len: 3, max: 2 })
        );
        let err = parse_pipeline(br#"[["PING"], ["GET", "k"]]"#, 8).unwrap_err();
        assert_eq!(err, RequestError::InPipeline { index: 1, source: Box::new(RequestError::NotAllowed { name: "GET".into() }) });
        assert!(err.to_string().starts_with("pipeline command 1: command \"GET\""), "{err}");
        assert_eq!(
            parse_pipeline(br#"["PING"]"#, 8),
            Err(RequestError::InPipeline { index: 0, source: Box::new(RequestError::NotArray("a string")) })
        );
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

    #[test]
    fn slot_of_script_calls() {
        let with_keys = parse_command(br#"["EVALSHA", "s", "2", "{t}:a", "{t}:b"]"#).unwrap();
        assert_eq!(with_keys.slot(), Some(key_slot(b"t")));
        let no_keys = parse_command(br#"["EVAL", "return 1", 0]"#).unwrap();
        assert_eq!(no_keys.slot(), None);
        let bad_numkeys = parse_command(br#"["EVAL", "return 1", "x", "k"]"#).unwrap();
        assert_eq!(bad_numkeys.slot(), None);
        assert_eq!(parse_command(br#"["PING"]"#).unwrap().slot(), None);
    }
}
