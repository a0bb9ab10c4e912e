//! Workers of one proxy whose clocks disagree, racing on a small slot table: neither the
//! long-lived user's count nor everyone's loses or gains an admission (see
//! `sluice::fuzzing::engine_workers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sluice::fuzzing::engine_workers(data) {
        panic!("{e}");
    }
});
