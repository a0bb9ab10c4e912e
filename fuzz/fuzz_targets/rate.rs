//! Rate strings (`100/min`, `2 per 5s`) and durations (`500ms`): any text either parses or is a
//! described error, and a parsed rate's canonical spelling parses back to the same rate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::rate::{parse_duration_ms, Rate, MAX_LIMIT, MAX_PERIOD_MS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Rate::parse(text) {
        Ok(rate) => {
            assert!(rate.is_unlimited() || (rate.limit >= 1 && rate.period_ms >= 1), "{text:?} -> {rate:?}");
            assert!(rate.limit <= MAX_LIMIT && rate.period_ms <= MAX_PERIOD_MS, "{text:?} -> {rate:?}");
            let canonical = rate.to_string();
            assert_eq!(Rate::parse(&canonical).ok(), Some(rate), "{text:?} -> {canonical:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_duration_ms(text) {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
