//! The filter's config compiler on the bytes Envoy hands to `on_configure`: every input compiles
//! or yields described errors, and a compiled config can be shown (`sluice lint`'s JSON view).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match sluice::config::compile_json(data) {
        Ok(config) => {
            let _ = serde_json::to_string(&config);
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
