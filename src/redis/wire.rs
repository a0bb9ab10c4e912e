//! The two wire forms of Redis commands the filter speaks: the Upstash REST dialect (JSON, over
//! an HTTP callout to sluice-gateway or a compatible service) and RESP (over Higress' Redis
//! callout). Both decode into one [`Reply`] type.

use serde::Serialize;

use super::command::Command;

/// A Redis reply, as far as the filter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Str(String),
    Array(Vec<Reply>),
    /// An error reply for one command (e.g. `NOSCRIPT …`).
    Error(String),
}

impl Reply {
    pub fn is_noscript(&self) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with("NOSCRIPT"))
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("reply is not valid JSON: {0}")]
    Json(String),
    #[error("unexpected reply shape: {0}")]
    Shape(String),
    #[error("service error: {0}")]
    Service(String),
    #[error("truncated or malformed RESP")]
    Resp,
}

/// An HTTP request in the Upstash dialect, as the host dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Pseudo-headers first, then `content-type` and (with a token) `authorization`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The most commands a busy worker gathers into one `/pipeline` call: the requests it gathers
/// are split at this size. Not the most one call carries: a request that meets more Redis rules
/// than this (a config may have 128) sends all their commands in a call of its own, so
/// sluice-gateway refuses a `--max-pipeline` below the most rules a config may have (a smaller
/// one would answer that request's every call with 400, and it would fall to `on_error`).
pub const GATHERED_COMMANDS: usize = 64;

/// `POST /pipeline` of `commands` to `authority`, with `Authorization: Bearer <token>` when one
/// is given. `commands` may be one request's or several gathered requests' in a row.
pub fn upstash_request<C: Serialize>(commands: &[C], authority: &str, token: Option<&str>) -> HttpRequest {
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", "/pipeline".to_string()),
        (":authority", authority.to_string()),
        ("content-type", "application/json".to_string()),
    ];
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    HttpRequest { headers, body: upstash_pipeline(commands) }
}

/// `POST /pipeline` body: a JSON array of command arrays, written straight from the commands
/// (no tree of JSON values in between).
pub fn upstash_pipeline<C: Serialize>(commands: &[C]) -> Vec<u8> {
    // Writing strings and arrays into a Vec cannot fail.
    serde_json::to_vec(commands).unwrap_or_default()
}

fn from_json(v: &serde_json::Value) -> Reply {
    match v {
        serde_json::Value::Null => Reply::Nil,
        serde_json::Value::Bool(b) => Reply::Int(i64::from(*b)),
        serde_json::Value::Number(n) => n.as_i64().map(Reply::Int).unwrap_or_else(|| Reply::Str(n.to_string())),
        serde_json::Value::String(s) => Reply::Str(s.clone()),
        serde_json::Value::Array(items) => Reply::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(_) => Reply::Str(v.to_string()),
    }
}

/// Parses a `/pipeline` reply: an array of `{"result": …}` / `{"error": "…"}`, one per command.
/// A whole-request error (`{"error": "…"}`, e.g. a bad token) is a [`WireError::Service`].
pub fn upstash_replies(body: &[u8], expected: usize) -> Result<Vec<Reply>, WireError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let items = match v {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(map) => {
            let msg = map.get("error").and_then(|e| e.as_str()).unwrap_or("unexpected object").to_string();
            return Err(WireError::Service(msg));
        }
        other => return Err(WireError::Shape(other.to_string().chars().take(80).collect())),
    };
    if items.len() != expected {
        return Err(WireError::Shape(format!("{} replies for {expected} commands", items.len())));
    }
    items
        .iter()
        .map(|item| match (item.get("error"), item.get("result")) {
            (Some(e), _) => Ok(Reply::Error(e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string()))),
            (None, Some(r)) => Ok(from_json(r)),
            (None, None) => Err(WireError::Shape("reply item has neither result nor error".into())),
        })
        .collect()
}

/// RESP encoding of several commands, sent as one buffer (a pipeline).
pub fn resp_commands(commands: &[Command]) -> Vec<u8> {
    // Sized once (a length header is at most 24 bytes); `format!` per word had been two thirds
    // of a call's encode-and-parse work in the guest (`scripts/bench/wire_cost.sh`).
    let size: usize = commands.iter().map(|c| c.text_len() + (c.len() + 1) * 24).sum();
    let mut out = Vec::with_capacity(size);
    for c in commands {
        resp_header(&mut out, b'*', c.len());
        for a in c.word_bytes() {
            resp_header(&mut out, b'$', a.len());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// `*<n>\r\n` or `$<n>\r\n`.
fn resp_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn resp_line(buf: &[u8], at: usize) -> Result<(&[u8], usize), WireError> {
    let rest = buf.get(at..).ok_or(WireError::Resp)?;
    let end = rest.windows(2).position(|w| w == b"\r\n").ok_or(WireError::Resp)?;
    Ok((&rest[..end], at + end + 2))
}

fn resp_int(b: &[u8]) -> Result<i64, WireError> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or(WireError::Resp)
}

/// Nesting deeper than this is not something the filter's scripts return.
const MAX_DEPTH: usize = 8;

/// The fewest bytes one RESP reply can take: a type byte and CRLF (`+\r\n`).
const MIN_ELEMENT_BYTES: usize = 3;

fn resp_one(buf: &[u8], at: usize, depth: usize) -> Result<(Reply, usize), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::Resp);
    }
    let kind = *buf.get(at).ok_or(WireError::Resp)?;
    let (line, next) = resp_line(buf, at + 1)?;
    let text = || String::from_utf8_lossy(line).into_owned();
    match kind {
        b'+' => Ok((Reply::Str(text()), next)),
        b'-' => Ok((Reply::Error(text()), next)),
        b':' => Ok((Reply::Int(resp_int(line)?), next)),
        b'$' => {
            let len = resp_int(line)?;
            if len < 0 {
                return Ok((Reply::Nil, next));
            }
            // `try_from`, not `as`: on wasm32 a cast would wrap a declared 2^32 + 2 to 2.
            let len = usize::try_from(len).map_err(|_| WireError::Resp)?;
            let end = next.checked_add(len).ok_or(WireError::Resp)?;
            let data = buf.get(next..end).ok_or(WireError::Resp)?;
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(WireError::Resp);
            }
            Ok((Reply::Str(String::from_utf8_lossy(data).into_owned()), end + 2))
        }
        b'*' => {
            let len = resp_int(line)?;
            if len < 0 {
                return Ok((Reply::Nil, next));
            }
            // A declared count is only a claim: the smallest element (`+\r\n`) takes
            // MIN_ELEMENT_BYTES, so a count the remaining bytes cannot hold is refused before
            // anything is reserved, and the reservation (~32 bytes per element) stays within a
            // fixed multiple of the bytes actually received.
            let room = buf.len().saturating_sub(next) / MIN_ELEMENT_BYTES;
            let len = usize::try_from(len).map_err(|_| WireError::Resp)?;
            if len > room {
                return Err(WireError::Resp);
            }
            let mut items = Vec::with_capacity(len);
            let mut at = next;
            for _ in 0..len {
                let (item, n) = resp_one(buf, at, depth + 1)?;
                items.push(item);
                at = n;
            }
            Ok((Reply::Array(items), at))
        }
        _ => Err(WireError::Resp),
    }
}

/// A reply as RESP, as a server sends it. Text goes as a bulk string, which holds any bytes (a
/// status line could not hold CRLF); an error is one line.
pub fn resp_reply(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    write_reply(reply, &mut out);
    out
}

fn write_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
        Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Reply::Str(s) => {
            out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Error(e) => out.extend_from_slice(format!("-{e}\r\n").as_bytes()),
        Reply::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            items.iter().for_each(|i| write_reply(i, out));
        }
    }
}

/// The length of the first whole RESP value in `buf`, or `None` while it is incomplete (or is
/// not RESP): how a reader of a stream knows a reply has arrived.
pub fn resp_len(buf: &[u8]) -> Option<usize> {
    resp_one(buf, 0, 0).ok().map(|(_, end)| end)
}

/// Parses `expected` RESP replies from one buffer.
pub fn resp_replies(buf: &[u8], expected: usize) -> Result<Vec<Reply>, WireError> {
    let mut at = 0;
    let mut out = Vec::with_capacity(expected);
    for _ in 0..expected {
        let (r, n) = resp_one(buf, at, 0)?;
        out.push(r);
        at = n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstash_round_trip() {
        let one: Vec<String> = ["EVALSHA", "abc", "1", "k\"1\n"].map(String::from).to_vec();
        let body = upstash_pipeline(&[&one]);
        assert_eq!(String::from_utf8(body).unwrap(), r#"[["EVALSHA","abc","1","k\"1\n"]]"#);
        // Gathered requests' commands in a row make one pipeline, each command as it would go alone.
        let two: Vec<String> = ["FCALL", "f", "0"].map(String::from).to_vec();
        let body: serde_json::Value = serde_json::from_slice(&upstash_pipeline(&[&one, &two])).unwrap();
        assert_eq!(body, serde_json::json!([one, two]));
        let replies = upstash_replies(br#"[{"result":[1,"x",null]},{"error":"NOSCRIPT No matching script"}]"#, 2).unwrap();
        assert_eq!(replies[0], Reply::Array(vec![Reply::Int(1), Reply::Str("x".into()), Reply::Nil]));
        assert!(replies[1].is_noscript());
        assert_eq!(upstash_replies(br#"{"error":"Unauthorized"}"#, 1), Err(WireError::Service("Unauthorized".into())));
        assert!(matches!(upstash_replies(b"[]", 1), Err(WireError::Shape(_))));
        assert!(matches!(upstash_replies(b"<html>", 1), Err(WireError::Json(_))));
    }

    /// Every JSON value a result may hold: what is not a Redis reply keeps its text, and a reply
    /// of the wrong shape is a shape error, not a JSON one.
    #[test]
    fn upstash_results_of_every_json_kind() {
        let body = br#"[{"result":[true,false,-7,18446744073709551615,1.5,{"a":[1]},"\u00e9",[[]]]},
                        {"error":{"code":1},"result":1},{"result":null,"other":[1,{"x":2}]}]"#;
        let replies = upstash_replies(body, 3).unwrap();
        let want = vec![
            Reply::Int(1),
            Reply::Int(0),
            Reply::Int(-7),
            Reply::Str("18446744073709551615".into()),
            Reply::Str("1.5".into()),
            Reply::Str(r#"{"a":[1]}"#.into()),
            Reply::Str("\u{e9}".into()),
            Reply::Array(vec![Reply::Array(vec![])]),
        ];
        assert_eq!(replies, vec![Reply::Array(want), Reply::Error(r#"{"code":1}"#.into()), Reply::Nil]);
        assert_eq!(upstash_replies(br#"{"error":7}"#, 1), Err(WireError::Service("unexpected object".into())));
        assert_eq!(upstash_replies(br#"{"other":7}"#, 1), Err(WireError::Service("unexpected object".into())));
        for shape in [&br#"5"#[..], br#""x""#, br#"[{"other":1}]"#, br#"[[1]]"#, br#"[1]"#] {
            assert!(matches!(upstash_replies(shape, 1), Err(WireError::Shape(_))), "{}", String::from_utf8_lossy(shape));
        }
        for broken in [&br#"[{"result":1}"#[..], br#"[{"result":1},]"#, b""] {
            assert!(matches!(upstash_replies(broken, 1), Err(WireError::Json(_))), "{}", String::from_utf8_lossy(broken));
        }
    }

    #[test]
    fn resp_round_trip_and_garbage() {
        assert_eq!(resp_commands(&[Command::of(&["PING"])]), b"*1\r\n$4\r\nPING\r\n");
        let ten = Command::of(&["a", "", "xxxxxxxxxxxx", "d", "e", "f", "g", "h", "i", "j"]);
        assert_eq!(
            resp_commands(&[Command::of(&["GET", "k"]), ten]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*10\r\n$1\r\na\r\n$0\r\n\r\n$12\r\nxxxxxxxxxxxx\r\n\
              $1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n$1\r\ng\r\n$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n"
        );
        assert_eq!(resp_commands(&[]), b"");
        assert_eq!(resp_commands(&[Command::default()]), b"*0\r\n");
        let long = "y".repeat(1234);
        assert_eq!(resp_commands(&[Command::of(&[&long])]), format!("*1\r\n$1234\r\n{long}\r\n").into_bytes());
        let buf = b"*3\r\n:1\r\n$2\r\nok\r\n$-1\r\n-NOSCRIPT x\r\n+OK\r\n";
        let r = resp_replies(buf, 3).unwrap();
        assert_eq!(r[0], Reply::Array(vec![Reply::Int(1), Reply::Str("ok".into()), Reply::Nil]));
        assert!(r[1].is_noscript());
        assert_eq!(r[2], Reply::Str("OK".into()));
        for bad in [&b"*2\r\n:1\r\n"[..], b"$5\r\nab\r\n", b"*99999999999\r\n", b"?x\r\n", b":x\r\n", b""] {
            assert!(resp_replies(bad, 1).is_err(), "{bad:?}");
        }
    }

    /// Counts past `u32::MAX` must not wrap on wasm32, where `usize` is 32 bits: 2^32 + 2 is
    /// not 2, and 2^32 + 1 elements are not 1.
    #[test]
    fn resp_counts_do_not_wrap_on_32_bit_targets() {
        assert!(resp_replies(b"$4294967298\r\nab\r\n", 1).is_err());
        assert!(resp_replies(b"*4294967297\r\n:1\r\n", 1).is_err());
    }

    /// An array count the remaining bytes cannot hold is refused, even when the whole buffer
    /// is longer than the count (each element takes at least three bytes).
    #[test]
    fn resp_array_count_is_checked_against_the_bytes_left() {
        assert_eq!(resp_replies(b"*2\r\n+\r\n+\r\n", 1).unwrap(), vec![Reply::Array(vec![Reply::Str(String::new()); 2])]);
        let mut buf = b"*20\r\n".to_vec();
        buf.extend_from_slice(&[b'x'; 40]);
        assert_eq!(resp_replies(&buf, 1), Err(WireError::Resp));
    }

    #[test]
    fn commands_and_replies_round_trip_and_are_measured() {
        let q = resp_commands(&[Command::of(&["EVALSHA", "abc", "1", "k"])]);
        let words = ["EVALSHA", "abc", "1", "k"].map(|w| Reply::Str(w.into())).to_vec();
        assert_eq!(resp_replies(&q, 1), Ok(vec![Reply::Array(words)]));
        assert_eq!(resp_len(&q), Some(q.len()));
        assert_eq!(resp_len(&q[..q.len() - 1]), None, "incomplete");
        let r = resp_reply(&Reply::Array(vec![
            Reply::Int(1),
            Reply::Str("x".into()),
            Reply::Nil,
            Reply::Array(vec![Reply::Str("OK".into())]),
        ]));
        let mut two = r.clone();
        two.extend_from_slice(&resp_reply(&Reply::Error("ERR x".into())));
        assert_eq!(resp_len(&two), Some(r.len()), "the first of two");
        assert_eq!(resp_replies(&two, 2).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn an_upstash_request_is_a_pipeline_post_with_the_token() {
        let req = upstash_request(&[vec!["PING".to_string()]], "gw", Some("t0k"));
        let get = |k: &str| req.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!((get(":method"), get(":path"), get(":authority")), (Some("POST"), Some("/pipeline"), Some("gw")));
        assert_eq!(get("authorization"), Some("Bearer t0k"));
        assert_eq!(req.body, br#"[["PING"]]"#);
        assert_eq!(
            upstash_request::<Vec<String>>(&[], "gw", None).headers.iter().filter(|(n, _)| *n == "authorization").count(),
            0
        );
    }
}
