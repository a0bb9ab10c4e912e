//! Path globs against the reference in `fuzz/reference/glob.rs`: the same globs are accepted,
//! and an accepted glob matches exactly the paths the reference matches. The input is the glob,
//! a newline, then the path.
#![no_main]

#[path = "../reference/glob.rs"]
mod reference;

use libfuzzer_sys::fuzz_target;
use sluice::config::Glob;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (glob, path) = text.split_once('\n').unwrap_or((text, ""));
    match Glob::parse(glob) {
        Ok(g) => {
            assert!(reference::valid(glob), "accepted {glob:?}, which the rules refuse");
            assert_eq!(g.matches(path), reference::matches(glob, path), "{glob:?} vs {path:?}");
        }
        Err(e) => {
            assert!(!reference::valid(glob), "refused {glob:?} ({e}), which the rules accept");
        }
    }
});
