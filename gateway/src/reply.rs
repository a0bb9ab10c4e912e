//! Reply side of the dialect: maps Redis replies (RESP values) to JSON, faithfully or not at all.

use base64::Engine as _;
use redis::Value;
use serde_json::{Map, Number, Value as Json};

/// How strings in replies are written, chosen per request by the `Upstash-Encoding` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Strings as JSON strings. A reply holding bytes that are not UTF-8 cannot be written
    /// without loss, so it becomes an error that says which header to send instead.
    Utf8,
    /// `Upstash-Encoding: base64`: every string is standard base64 (with padding), except the
    /// status reply `OK`, as Upstash does. Error texts are never encoded.
    Base64,
}

impl Encoding {
    pub fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"base64") => Encoding::Base64,
            _ => Encoding::Utf8,
        }
    }
}

/// The text a client sees for an error reply: exactly what Redis sent, code first
/// (`NOSCRIPT No matching script. Please use EVAL.`), so a client can match on the code.
pub fn server_error_text(err: &redis::ServerError) -> String {
    match err.details() {
        Some(detail) => format!("{} {}", err.code(), detail),
        None => err.code().to_string(),
    }
}

pub const NOT_UTF8: &str =
    "ERR sluice-gateway: the reply holds bytes that are not UTF-8; send the header `Upstash-Encoding: base64` to receive them";

/// Why a reply could not become a `result`.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// Redis answered with an error reply (top level): its text.
    Redis(String),
    /// The reply holds non-UTF-8 bytes and the client did not ask for base64.
    NotUtf8,
    /// A reply type this gateway has no JSON form for.
    Unsupported(String),
}

impl ReplyError {
    /// The text of the `error` field for a reply that cannot be a `result`.
    pub fn text(&self) -> String {
        match self {
            ReplyError::Redis(text) => text.clone(),
            ReplyError::NotUtf8 => NOT_UTF8.to_string(),
            ReplyError::Unsupported(what) => {
                format!("ERR sluice-gateway: no JSON form for the reply {what}")
            }
        }
    }
}

/// Converts a reply. A top-level error reply becomes `Err`; an error nested in an array (a
/// script returning `{1, redis.error_reply("X")}`) becomes `{"error": "…"}` in place.
pub fn to_json(value: Value, enc: Encoding) -> Result<Json, ReplyError> {
    match value {
        Value::ServerError(e) => Err(ReplyError::Redis(server_error_text(&e))),
        other => nested(other, enc),
    }
}

fn nested(value: Value, enc: Encoding) -> Result<Json, ReplyError> {
    Ok(match value {
        Value::Nil => Json::Null,
        Value::Int(i) => Json::Number(i.into()),
        Value::BulkString(bytes) => bytes_to_json(bytes, enc)?,
        Value::SimpleString(s) => text_to_json(s, enc),
        Value::Okay => Json::String("OK".into()),
        Value::Array(items) | Value::Set(items) => array(items, enc)?,
        Value::Push { data, .. } => array(data, enc)?,
        // RESP3 only (the gateway speaks RESP2): flattened as RESP2 would send it.
        Value::Map(pairs) => {
            let mut out = Vec::with_capacity(pairs.len() * 2);
            for (k, v) in pairs {
                out.push(nested(k, enc)?);
                out.push(nested(v, enc)?);
            }
            Json::Array(out)
        }
        Value::Attribute { data, .. } => nested(*data, enc)?,
        Value::Double(d) => match Number::from_f64(d) {
            Some(n) => Json::Number(n),
            // JSON has no inf/nan: keep them as the text Redis would print.
            None => text_to_json(format_non_finite(d), enc),
        },
        Value::Boolean(b) => Json::Bool(b),
        Value::VerbatimString { text, .. } => text_to_json(text, enc),
        // Digits only (the crate is built without `num-bigint`), so lossy decoding loses nothing.
        Value::BigNumber(digits) => text_to_json(String::from_utf8_lossy(&digits).into_owned(), enc),
        Value::ServerError(e) => {
            let mut m = Map::new();
            m.insert("error".into(), Json::String(server_error_text(&e)));
            Json::Object(m)
        }
        // A reply type added by a later version of the crate: refuse rather than guess.
        other => return Err(ReplyError::Unsupported(format!("{other:?}"))),
    })
}

fn array(items: Vec<Value>, enc: Encoding) -> Result<Json, ReplyError> {
    items.into_iter().map(|v| nested(v, enc)).collect::<Result<Vec<_>, _>>().map(Json::Array)
}

fn bytes_to_json(bytes: Vec<u8>, enc: Encoding) -> Result<Json, ReplyError> {
    match enc {
        Encoding::Base64 => Ok(Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))),
        Encoding::Utf8 => String::from_utf8(bytes).map(Json::String).map_err(|_| ReplyError::NotUtf8),
    }
}

fn text_to_json(text: String, enc: Encoding) -> Json {
    match enc {
        Encoding::Base64 if text != "OK" => Json::String(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
        _ => Json::String(text),
    }
}

fn format_non_finite(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server_error(text: &str) -> Value {
        // Parse a real RESP error line so the test uses the crate's own error representation.
        redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(to_json(Value::Int(-7), Encoding::Utf8), Ok(json!(-7)));
        assert_eq!(to_json(Value::Nil, Encoding::Utf8), Ok(Json::Null));
        assert_eq!(to_json(Value::BulkString(b"hi".to_vec()), Encoding::Utf8), Ok(json!("hi")));
        assert_eq!(to_json(Value::SimpleString("PONG".into()), Encoding::Utf8), Ok(json!("PONG")));
        assert_eq!(to_json(Value::Okay, Encoding::Utf8), Ok(json!("OK")));
        assert_eq!(to_json(Value::Double(1.5), Encoding::Utf8), Ok(json!(1.5)));
        assert_eq!(to_json(Value::Double(f64::INFINITY), Encoding::Utf8), Ok(json!("inf")));
    }

    #[test]
    fn error_replies_keep_their_text() {
        let v = server_error("NOSCRIPT No matching script. Please use EVAL.");
        assert_eq!(to_json(v, Encoding::Utf8), Err(ReplyError::Redis("NOSCRIPT No matching script. Please use EVAL.".into())));
        let v = server_error("MYERR custom text");
        assert_eq!(to_json(v, Encoding::Base64), Err(ReplyError::Redis("MYERR custom text".into())));
    }

    #[test]
    fn nested_values() {
        let v = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"two".to_vec()),
            Value::Array(vec![Value::Nil]),
            server_error("ERR inner"),
        ]);
        assert_eq!(to_json(v, Encoding::Utf8), Ok(json!([1, "two", [null], {"error": "ERR inner"}])));
    }

    #[test]
    fn non_utf8_needs_base64() {
        let raw = Value::Array(vec![Value::BulkString(vec![0xff, 0x00, 0x01])]);
        assert_eq!(to_json(raw.clone(), Encoding::Utf8), Err(ReplyError::NotUtf8));
        assert_eq!(to_json(raw, Encoding::Base64), Ok(json!(["/wAB"])));
    }

    #[test]
    fn base64_spares_ok_only() {
        assert_eq!(to_json(Value::Okay, Encoding::Base64), Ok(json!("OK")));
        assert_eq!(to_json(Value::SimpleString("OK".into()), Encoding::Base64), Ok(json!("OK")));
        assert_eq!(to_json(Value::SimpleString("PONG".into()), Encoding::Base64), Ok(json!("UE9ORw==")));
        assert_eq!(to_json(Value::Int(3), Encoding::Base64), Ok(json!(3)));
    }

    #[test]
    fn encoding_header() {
        assert_eq!(Encoding::from_header(Some(b"base64")), Encoding::Base64);
        assert_eq!(Encoding::from_header(Some(b" Base64 ")), Encoding::Base64);
        assert_eq!(Encoding::from_header(Some(b"utf8")), Encoding::Utf8);
        assert_eq!(Encoding::from_header(None), Encoding::Utf8);
    }
}
