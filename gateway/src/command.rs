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

use std::io::Write as _;
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sluice::redis::script::{self, Refusal};

static SHA: LazyLock<String> = LazyLock::new(script::sha);
static FUNCTION: LazyLock<String> = LazyLock::new(script::function_name);
static BATCH_FUNCTION: LazyLock<String> = LazyLock::new(script::batch_function_name);
static LIBRARY: LazyLock<String> = LazyLock::new(script::library);
static MODULE_COMMAND: LazyLock<String> = LazyLock::new(script::module_command_name);
static MODULE_BATCH_COMMAND: LazyLock<String> = LazyLock::new(script::module_batch_command_name);

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

/// The native module's command for one call (`redis-module/`, loaded by Redis' operator).
pub fn module_command() -> &'static str {
    &MODULE_COMMAND
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
    /// `sluice.decide.<id>`: the native module (`redis-module/`), which Redis' operator loads
    /// (the gateway cannot); the library's decision without Lua, on the same keys.
    Module,
}

impl RunAs {
    pub const ALL: [RunAs; 3] = [RunAs::EvalSha, RunAs::Fcall, RunAs::Module];

    /// The `command` label in metrics; for the script and the library also the command's name
    /// as Redis spells it.
    pub fn name(self) -> &'static str {
        match self {
            RunAs::EvalSha => "EVALSHA",
            RunAs::Fcall => "FCALL",
            RunAs::Module => "MODULE",
        }
    }

    /// Whether calls running so can go as one batch command.
    pub fn batches(self) -> bool {
        matches!(self, RunAs::Fcall | RunAs::Module)
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
    /// How many of the words after numkeys are keys; the rest are arguments.
    keys: usize,
    /// The words as the client sent them, back to back: the command name, the script's SHA or
    /// text, numkeys, the keys, the arguments. One buffer for all of them, written straight from
    /// the JSON text, so a call costs the same few allocations however many words it has.
    bytes: Vec<u8>,
    /// Where each word ends in `bytes`.
    ends: Vec<usize>,
    /// Its sliding-log entries ([`script::Invocation::log_work`]): how long it holds Redis.
    log_work: u64,
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        self.kind
    }

    pub fn log_work(&self) -> u64 {
        self.log_work
    }

    /// Word `i` (0 is the command name).
    fn word(&self, i: usize) -> Option<&[u8]> {
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? };
        self.bytes.get(start..*self.ends.get(i)?)
    }

    /// The words after the command name, as the client sent them: the script's SHA or text,
    /// numkeys, the keys, the arguments.
    pub fn args(&self) -> Vec<&[u8]> {
        (1..self.ends.len()).filter_map(|i| self.word(i)).collect()
    }

    /// The call as Redis runs it: `EVALSHA` of the gateway's SHA, `FCALL` of its function or
    /// the module's command, then the client's numkeys, keys and arguments (checked to be
    /// sluice's), written once into a buffer of the right size. The names are in capitals so
    /// that the cluster client recognises them for routing by key; it does not know the
    /// module's command, which is routed by [`Command::slot`].
    pub fn to_redis(&self, form: RunAs) -> redis::Cmd {
        match form {
            RunAs::EvalSha => self.written(&[form.name(), sha()]),
            RunAs::Fcall => self.written(&[form.name(), function()]),
            RunAs::Module => self.written(&[module_command()]),
        }
    }

    /// The call as `EVAL` of the gateway's own script text ([`script::SCRIPT`], never a
    /// client's), with the client's numkeys, keys and arguments: the same decision as
    /// [`Command::to_redis`], for a node that lacks the script and the library. Routed by its
    /// keys like the call, it runs wherever Redis sends it, and leaves the script cached there.
    pub fn to_eval(&self) -> redis::Cmd {
        self.written(&["EVAL", script::SCRIPT])
    }

    /// `head` (the command's name, and what it runs), then numkeys, the keys and arguments.
    fn written(&self, head: &[&str]) -> redis::Cmd {
        let rest = self.bytes.len().saturating_sub(self.ends.get(1).copied().unwrap_or_default());
        let head_len: usize = head.iter().map(|w| w.len()).sum();
        let mut cmd = redis::Cmd::with_capacity(head.len() + self.ends.len().saturating_sub(2), head_len + rest);
        for word in head {
            cmd.arg(*word);
        }
        for i in 2..self.ends.len() {
            if let Some(w) = self.word(i) {
                cmd.arg(w);
            }
        }
        cmd
    }

    /// The call's keys: the words after the name, the target and the key count.
    fn call_keys(&self) -> impl Iterator<Item = &[u8]> {
        (3..3 + self.keys).filter_map(|i| self.word(i))
    }

    /// The call's arguments: the words after its keys.
    fn call_args(&self) -> impl Iterator<Item = &[u8]> {
        (3 + self.keys..self.ends.len()).filter_map(|i| self.word(i))
    }

    /// How many arguments follow the keys.
    fn arg_count(&self) -> usize {
        self.ends.len().saturating_sub(3 + self.keys)
    }

    /// The cluster slot of the call's keys: they share one hash tag, hence one slot. Always
    /// `Some` for a parsed command, which has at least one key.
    pub fn slot(&self) -> Option<u16> {
        self.word(3).map(key_slot)
    }
}

/// One `FCALL` of the library's batch function (or the module's batch command, as `form`
/// says) that decides `cmds` in their order, each all-or-nothing on its own, exactly as if
/// each ran as its own call one after another, and answers an array of their replies. On a
/// Cluster all their keys must be in one slot.
pub fn batch_call(cmds: &[&Command], form: RunAs) -> redis::Cmd {
    let counts: Vec<(usize, usize)> = cmds.iter().map(|c| (c.keys, c.arg_count())).collect();
    let keys: usize = counts.iter().map(|(k, _)| k).sum();
    let words = 3 + keys + 1 + 2 * cmds.len() + counts.iter().map(|(_, a)| a).sum::<usize>();
    let bytes: usize = cmds.iter().map(|c| c.bytes.len()).sum();
    let mut call = redis::Cmd::with_capacity(words, BATCH_FUNCTION.len() + bytes + 8 * words);
    match form {
        RunAs::Module => call.arg(MODULE_BATCH_COMMAND.as_str()),
        _ => call.arg(RunAs::Fcall.name()).arg(BATCH_FUNCTION.as_str()),
    };
    call.arg(keys);
    for c in cmds {
        for key in c.call_keys() {
            call.arg(key);
        }
    }
    for n in script::batch_counts(&counts) {
        call.arg(n);
    }
    for c in cmds {
        for arg in c.call_args() {
            call.arg(arg);
        }
    }
    call
}

/// Parses `POST /` bodies: one JSON array.
pub fn parse_command(body: &[u8]) -> Result<Command, RequestError> {
    match parse_whole(body, CommandSeed)? {
        Parsed::Words(words) => command_from_words(words),
        Parsed::Not(found) => Err(RequestError::NotArray(found)),
    }
}

/// Parses `POST /pipeline` bodies: a JSON array of arrays, at most `max` of them.
/// Any refused command rejects the whole pipeline, so nothing runs half-way.
pub fn parse_pipeline(body: &[u8], max: usize) -> Result<Vec<Command>, RequestError> {
    let (items, len) = match parse_whole(body, PipelineSeed { max })? {
        Pipeline::Items { items, len } => (items, len),
        Pipeline::Not(found) => return Err(RequestError::NotPipeline(found)),
    };
    if len == 0 {
        return Err(RequestError::EmptyPipeline);
    }
    if len > max {
        return Err(RequestError::PipelineTooLong { len, max });
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let parsed = match item {
                Parsed::Words(words) => command_from_words(words),
                Parsed::Not(found) => Err(RequestError::NotArray(found)),
            };
            parsed.map_err(|e| RequestError::InPipeline { index, source: Box::new(e) })
        })
        .collect()
}

/// The whole body as one JSON value, read by `seed` straight from the text (no tree of
/// values): anything after it, or any syntax error, refuses the body as not JSON.
fn parse_whole<'de, S: DeserializeSeed<'de>>(body: &'de [u8], seed: S) -> Result<S::Value, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = seed.deserialize(&mut de).map_err(|e| RequestError::Json(e.to_string()))?;
    de.end().map_err(|e| RequestError::Json(e.to_string()))?;
    Ok(value)
}

fn command_from_words(words: Words) -> Result<Command, RequestError> {
    if let Some((index, found)) = words.bad {
        return Err(RequestError::BadArgument { index, found });
    }
    if words.ends.is_empty() {
        return Err(RequestError::Empty);
    }
    let mut cmd = Command { kind: CommandKind::EvalSha, keys: 0, bytes: words.bytes, ends: words.ends, log_work: 0 };
    let all: Vec<&[u8]> = (0..cmd.ends.len()).filter_map(|i| cmd.word(i)).collect();
    let call = script::check(&all, sha()).map_err(RequestError::Refused)?;
    let (keys, log_work) = (call.keys.len(), call.log_work());
    let eval = all.first().is_some_and(|name| name.eq_ignore_ascii_case(b"EVAL"));
    cmd.keys = keys;
    cmd.log_work = log_work;
    if eval {
        cmd.kind = CommandKind::Eval;
    }
    Ok(cmd)
}

/// `cmds` cut into consecutive runs, each run as one script in Redis, whose sliding-log work
/// together stays within [`script::MAX_LOG_WORK`] (one call alone always does) and whose keys
/// number at most [`script::MAX_RUN_KEYS`]: a key may hold the longest log whatever a call's
/// strategy, and reading it costs its length (the module parses it, Lua copies it). A pipeline
/// then holds Redis for a run at a time, with other clients served in between, instead of for
/// one script long enough to make Redis answer everyone else BUSY.
pub fn work_runs<C: std::borrow::Borrow<Command>>(cmds: &[C]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut work, mut keys) = (0, 0u64, 0usize);
    for (i, cmd) in cmds.iter().enumerate() {
        let (w, k) = (cmd.borrow().log_work(), cmd.borrow().keys);
        if i > start && (work.saturating_add(w) > script::MAX_LOG_WORK || keys.saturating_add(k) > script::MAX_RUN_KEYS) {
            runs.push(start..i);
            (start, work, keys) = (i, 0, 0);
        }
        work = work.saturating_add(w);
        keys = keys.saturating_add(k);
    }
    if start < cmds.len() {
        runs.push(start..cmds.len());
    }
    runs
}

/// A command's words as they are read, back to back (see [`Command`]).
#[derive(Default)]
struct Words {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// The first word that is neither a string nor a number: its index and JSON type.
    bad: Option<(usize, &'static str)>,
}

impl Words {
    fn end_word(&mut self) {
        self.ends.push(self.bytes.len());
    }

    fn not_a_word(&mut self, found: &'static str) {
        self.bad.get_or_insert((self.ends.len(), found));
        self.end_word();
    }
}

/// What stood where a command was expected.
enum Parsed {
    Words(Words),
    /// Not an array: its JSON type.
    Not(&'static str),
}

enum Pipeline {
    /// The first `max` commands, and how many there were.
    Items {
        items: Vec<Parsed>,
        len: usize,
    },
    Not(&'static str),
}

/// Reads past a JSON array or object without keeping it.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Visits a JSON value that is not the array wanted: says what it is. (Its arrays and objects
/// are read past, so that the rest of the body is still checked to be JSON.)
macro_rules! not_wanted {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out("a string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out("null"))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map)?;
            Ok($out("an object"))
        }
    };
}

/// A command: an array of words.
struct CommandSeed;

impl<'de> DeserializeSeed<'de> for CommandSeed {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Parsed, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CommandSeed {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a command")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let mut words = Words::default();
        while seq.next_element_seed(WordSeed(&mut words))?.is_some() {}
        Ok(Parsed::Words(words))
    }

    not_wanted!(Parsed::Not);
}

/// One word, appended to the command's buffer: a string as its UTF-8 bytes, a number as its
/// JSON text, which is what Upstash clients expect when they post `["EVALSHA", sha, 1, key,
/// "fixed_window", 10, ...]`.
struct WordSeed<'w>(&'w mut Words);

impl<'de> DeserializeSeed<'de> for WordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for WordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.bytes.extend_from_slice(v.as_bytes());
        self.0.end_word();
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let _ = write!(self.0.bytes, "{v}");
        self.0.end_word();
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        let _ = write!(self.0.bytes, "{v}");
        self.0.end_word();
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // As serde_json writes the number (JSON has no inf or NaN to meet here).
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                let _ = write!(self.0.bytes, "{n}");
            }
            None => {
                let _ = write!(self.0.bytes, "{v}");
            }
        }
        self.0.end_word();
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.not_a_word("a boolean");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.not_a_word("null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        skip_seq(seq)?;
        self.0.not_a_word("an array");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        skip_map(map)?;
        self.0.not_a_word("an object");
        Ok(())
    }
}

/// A pipeline: an array of commands, of which the first `max` are kept (the rest only counted).
struct PipelineSeed {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for PipelineSeed {
    type Value = Pipeline;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Pipeline, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PipelineSeed {
    type Value = Pipeline;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a pipeline")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pipeline, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(self.max));
        let mut len = 0;
        while len < self.max {
            match seq.next_element_seed(CommandSeed)? {
                Some(item) => items.push(item),
                None => return Ok(Pipeline::Items { items, len }),
            }
            len += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            len += 1;
        }
        Ok(Pipeline::Items { items, len })
    }

    not_wanted!(Pipeline::Not);
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
    use serde_json::{json, Value as Json};
    use sluice::rate::Rate;
    use sluice::redis::script::{command, Form, RuleCall, SCRIPT};
    use sluice::strategy::Strategy;

    const RATES: [Rate; 2] = [Rate { limit: 5, period_ms: 1000 }, Rate { limit: 100, period_ms: 60_000 }];

    /// Rule `api` of namespace `shop`, one identity, cost 1.
    fn rule_call<'a>(strategy: &'a Strategy, rates: &'a [Rate]) -> RuleCall<'a> {
        RuleCall { namespace: "shop", rule: "api", identity: 0xab, fingerprint: 0xdead, strategy, rates, cost: 1 }
    }

    /// What the filter sends for one rule with two limits.
    fn call(form: Form<'_>, dry: bool) -> Vec<String> {
        command(&rule_call(&Strategy::Gcra { burst: Some(3) }, &RATES), form, dry).to_vec()
    }

    fn body(words: &[String]) -> Vec<u8> {
        json!(words).to_string().into_bytes()
    }

    #[test]
    fn a_pipeline_runs_in_scripts_of_bounded_log_work() {
        let log = |entries: u32, limits: usize| {
            let strategy = Strategy::SlidingWindowLog { max_entries: entries };
            json!(command(&rule_call(&strategy, &vec![Rate { limit: 5, period_ms: 1000 }; limits]), Form::Sha(sha()), false)
                .to_vec())
        };
        let most = script::MAX_LOG_WORK / 8;
        let other = json!(call(Form::Sha(sha()), false));
        let pipeline =
            json!([log(most as u32, 8), other, log(10, 1), log(most as u32, 8), log(most as u32, 4), log(most as u32, 4), other]);
        let cmds = parse_pipeline(pipeline.to_string().as_bytes(), 64).unwrap();
        assert_eq!(
            cmds.iter().map(Command::log_work).collect::<Vec<_>>(),
            [script::MAX_LOG_WORK, 0, most, script::MAX_LOG_WORK, 4 * most, 4 * most, 0]
        );
        // A maximal call with the cheap ones after it, as long as they fit; a log of 10 entries
        // (its key may hold one as long as any: a whole log's work) and one more maximal call
        // alone each; the two halves together, with the cheap one after them.
        assert_eq!(work_runs(&cmds), [0..2, 2..3, 3..4, 4..7]);
        assert_eq!((work_runs(&cmds[1..2]).len(), work_runs(&cmds[1..2]).first()), (1, Some(&(0..1))));
        // Calls of other strategies read any key's log too: at most MAX_RUN_KEYS keys a run.
        let cheap: Vec<Json> = (0..70).map(|_| other.clone()).collect();
        let cmds = parse_pipeline(json!(cheap).to_string().as_bytes(), 128).unwrap();
        let per_run = script::MAX_RUN_KEYS / RATES.len();
        assert_eq!(work_runs(&cmds), [0..per_run, per_run..2 * per_run, 2 * per_run..70]);
        assert!(work_runs::<Command>(&[]).is_empty());
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
            // EVAL of the gateway's own script (whatever form came in), same numkeys, keys and arguments.
            let eval = c.to_eval().get_packed_command();
            let eval_text = String::from_utf8_lossy(&eval);
            let eval_head = format!("$4\r\nEVAL\r\n${}\r\n{SCRIPT}\r\n", SCRIPT.len());
            assert!(eval_text.contains(&eval_head), "EVAL of SCRIPT");
            assert_eq!(
                eval_text.split_once(&eval_head).map(|(_, rest)| rest),
                fcall_text.split_once(&head).map(|(_, rest)| rest)
            );
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

    /// How the gateway read bodies before it read them straight from the text: through a tree
    /// of JSON values. The reader must agree with it on every body.
    fn through_a_tree(body: &[u8]) -> Result<(CommandKind, Vec<Vec<u8>>), RequestError> {
        let json: Json = serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
        let Json::Array(items) = json else {
            return Err(RequestError::NotArray(match json {
                Json::Null => "null",
                Json::Bool(_) => "a boolean",
                Json::Number(_) => "a number",
                Json::String(_) => "a string",
                _ => "an object",
            }));
        };
        let mut words = Vec::new();
        for (index, item) in items.iter().enumerate() {
            words.push(match item {
                Json::String(s) => s.as_bytes().to_vec(),
                Json::Number(n) => n.to_string().into_bytes(),
                Json::Null => return Err(RequestError::BadArgument { index, found: "null" }),
                Json::Bool(_) => return Err(RequestError::BadArgument { index, found: "a boolean" }),
                Json::Array(_) => return Err(RequestError::BadArgument { index, found: "an array" }),
                Json::Object(_) => return Err(RequestError::BadArgument { index, found: "an object" }),
            });
        }
        let Some(name) = words.first() else {
            return Err(RequestError::Empty);
        };
        let kind = if name.eq_ignore_ascii_case(b"EVAL") { CommandKind::Eval } else { CommandKind::EvalSha };
        let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
        script::check(&refs, sha()).map_err(RequestError::Refused)?;
        Ok((kind, words.into_iter().skip(1).collect()))
    }

    #[test]
    fn read_straight_from_the_text_as_through_a_tree() {
        let good = body(&call(Form::Sha(sha()), false));
        let good = String::from_utf8(good).unwrap();
        let numbers = good.replacen("\"2\"", "2", 1).replacen("\"1\",\"0\",\"0\"]", "1,0,0]", 1);
        let escaped = good.replacen("api:", "\\u0061pi:", 1).replacen("gcra", "gcr\\u0061", 1);
        assert!(parse_command(numbers.as_bytes()).is_ok() && numbers != good, "{numbers}");
        assert!(parse_command(escaped.as_bytes()).is_ok() && escaped != good, "{escaped}");
        let mut bodies: Vec<String> =
            vec![good.clone(), numbers, escaped, body(&call(Form::Eval, true)).into_iter().map(char::from).collect()];
        for (from, to) in [
            ("\"2\"", "2.0"),
            ("\"2\"", "-2"),
            ("\"2\"", "2e0"),
            ("\"2\"", "18446744073709551616"),
            ("\"2\"", "null"),
            ("\"2\"", "true"),
            ("\"2\"", "[\"2\"]"),
            ("\"2\"", "{\"a\":[1,{}]}"),
            ("\"2\"", "\"2\",null,true"),
            ("\"gcra\"", "\"\\ud800\""),
            ("[", "[[],"),
            ("]", "] "),
            ("]", "]x"),
            ("]", "],"),
            ("[", "{\"a\":"),
            ("[", " ["),
        ] {
            bodies.push(good.replacen(from, to, 1));
        }
        for b in ["", "[]", "[\"EVAL\"]", "null", "true", "1", "\"x\"", "{}", "[[[[]]]]", "[\"PING\"]", "[1,2"] {
            bodies.push(b.to_string());
        }
        for b in &bodies {
            let read =
                parse_command(b.as_bytes()).map(|c| (c.kind(), c.args().into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>()));
            let tree = through_a_tree(b.as_bytes());
            match (&read, &tree) {
                // Syntax errors name the same place, whichever way the text is read.
                (Err(RequestError::Json(a)), Err(RequestError::Json(b))) => assert_eq!(a, b),
                _ => assert_eq!(read, tree, "{b}"),
            }
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
