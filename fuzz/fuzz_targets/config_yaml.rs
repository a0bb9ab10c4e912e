//! The CLI's reading of config files (`sluice lint` / `sluice explain`): YAML or guessed format,
//! plugin configs, Envoy bootstraps and Istio WasmPlugins, then the filter's compiler and the
//! CLI's analysis. The CLI is a binary crate, so its modules are compiled in from its source as
//! they are; a change there is fuzzed without touching this file.
#![no_main]

#[allow(dead_code)]
#[path = "../../cli/src/analysis.rs"]
mod analysis;
#[allow(dead_code)]
#[path = "../../cli/src/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../../cli/src/trust.rs"]
mod trust;

use libfuzzer_sys::fuzz_target;
use load::{lint_bytes, load_any, Format};

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = lint_bytes(data, Format::Yaml) {
        let _ = analysis::analyze(&config, None);
    }
    match load_any(data, Format::Guess) {
        Ok(loaded) => {
            let _ = analysis::analyze(&loaded.config, loaded.routes.as_deref());
            if let Some((remote, hops)) = loaded.address {
                let _ = trust::address_warnings(&loaded.config, remote, hops);
            }
            let _ = trust::warnings(&loaded.config);
        }
        Err(e) => {
            let _ = e.lines();
        }
    }
});
