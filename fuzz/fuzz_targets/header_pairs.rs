//! The proxy-wasm header-map decoder, on any bytes the host might hand over.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = sluice::headers::Pairs::parse(data.to_vec()) {
        // Every pair the walk found is inside the bytes, and a name is found as its first pair.
        for (name, value) in pairs.to_vec() {
            let first = std::str::from_utf8(name).ok().and_then(|n| pairs.first(n));
            assert!(first.is_some() || std::str::from_utf8(name).is_err());
            assert!(value.len() <= data.len());
        }
    }
});
