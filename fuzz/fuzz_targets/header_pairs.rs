//! The proxy-wasm header-map decoder, on any bytes the host might hand over.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice::headers::parse_pairs(data);
});
