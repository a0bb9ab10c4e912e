//! Store slot values as Envoy's shared data may hold them (written by another worker, an older
//! filter, or a rule that changed): see `sluice::fuzzing::store_slot`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sluice::fuzzing::store_slot(data) {
        panic!("{e}");
    }
});
