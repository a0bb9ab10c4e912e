//! A request whose method, path, query, cookies, headers and source address are arbitrary bytes,
//! checked against rules that read each of them (see `sluice::fuzzing::request`): the decoders
//! of every value a client controls never panic, never make a request free, and decide the
//! same request the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = sluice::fuzzing::request(data) {
        panic!("{e}");
    }
});
