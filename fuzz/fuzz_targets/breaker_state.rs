//! Circuit-breaker state as the shared data may hold it: see `sluice::fuzzing::breaker_state`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sluice::fuzzing::breaker_state(data) {
        panic!("{e}");
    }
});
