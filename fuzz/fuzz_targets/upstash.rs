//! Upstash `/pipeline` replies as sluice-gateway or Upstash send them: any body parses into the
//! expected number of replies or is refused, and parsed replies written back parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sluice::redis::wire::{upstash_replies, Reply};

fn result(reply: &Reply) -> Value {
    match reply {
        Reply::Nil => Value::Null,
        Reply::Int(n) => json!(n),
        Reply::Str(s) => json!(s),
        Reply::Array(items) => Value::Array(items.iter().map(result).collect()),
        // The dialect has errors per command only; the parser never nests one.
        Reply::Error(e) => panic!("nested error {e:?}"),
    }
}

fn item(reply: &Reply) -> Value {
    match reply {
        Reply::Error(e) => json!({ "error": e }),
        other => json!({ "result": result(other) }),
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte is how many replies the caller expects (one per command sent).
    let Some((&n, body)) = data.split_first() else { return };
    let expected = usize::from(n % 8);
    let Ok(replies) = upstash_replies(body, expected) else { return };
    assert_eq!(replies.len(), expected);
    let again = serde_json::to_vec(&Value::Array(replies.iter().map(item).collect())).unwrap_or_default();
    assert_eq!(upstash_replies(&again, expected).as_ref(), Ok(&replies), "{:?}", String::from_utf8_lossy(&again));
});
