//! RESP replies as Higress' Redis callout hands them over: any bytes parse into the expected
//! number of replies or are refused, and parsed replies written back as RESP parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::redis::wire::{resp_replies, resp_reply};

fuzz_target!(|data: &[u8]| {
    // The first byte is how many replies the caller expects (one per command sent).
    let Some((&n, buf)) = data.split_first() else { return };
    let expected = usize::from(n % 8);
    let Ok(replies) = resp_replies(buf, expected) else { return };
    assert_eq!(replies.len(), expected);
    let again: Vec<u8> = replies.iter().flat_map(resp_reply).collect();
    assert_eq!(resp_replies(&again, expected).as_ref(), Ok(&replies), "{:?}", String::from_utf8_lossy(&again));
});
