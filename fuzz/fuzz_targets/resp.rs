//! RESP replies as Higress' Redis callout hands them over: any bytes parse into the expected
//! number of replies or are refused, and parsed replies written back as RESP parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::redis::wire::{resp_replies, Reply};

/// Writes a reply as RESP. Text goes as a bulk string, which holds any bytes (a status line
/// could not hold CRLF); errors come from one line, so they go back as one.
fn write(reply: &Reply, out: &mut Vec<u8>) {
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
            items.iter().for_each(|i| write(i, out));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte is how many replies the caller expects (one per command sent).
    let Some((&n, buf)) = data.split_first() else { return };
    let expected = usize::from(n % 8);
    let Ok(replies) = resp_replies(buf, expected) else { return };
    assert_eq!(replies.len(), expected);
    let mut again = Vec::new();
    replies.iter().for_each(|r| write(r, &mut again));
    assert_eq!(resp_replies(&again, expected).as_ref(), Ok(&replies), "{:?}", String::from_utf8_lossy(&again));
});
