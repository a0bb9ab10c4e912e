//! sluice-gateway's request parser (`POST /` and `POST /pipeline` bodies): any body is a command,
//! a pipeline or a described refusal; an accepted command is on the allow-list, survives being
//! written back as JSON, and has a cluster slot in range. The module is compiled in from the
//! gateway's source as it is (see Cargo.toml for why not through its library).
#![no_main]

#[allow(dead_code)]
#[path = "../../gateway/src/command.rs"]
mod command;

use command::{key_slot, parse_command, parse_pipeline, Command};
use libfuzzer_sys::fuzz_target;

const MAX_PIPELINE: usize = 16;

/// The command as a `POST /` body again. Arguments came from JSON strings or numbers, so they
/// are UTF-8 and go back as strings.
fn to_json(cmd: &Command) -> Option<Vec<u8>> {
    let mut words: Vec<serde_json::Value> = cmd.kind().name().split(' ').map(|w| w.into()).collect();
    for arg in cmd.args() {
        words.push(std::str::from_utf8(arg).ok()?.into());
    }
    serde_json::to_vec(&words).ok()
}

fn check(cmd: &Command) {
    let _ = cmd.to_redis(command::RunAs::EvalSha);
    let _ = cmd.to_redis(command::RunAs::Fcall);
    let _ = cmd.to_redis(command::RunAs::Module);
    assert!(cmd.slot().is_none_or(|s| s < 16384));
    for arg in cmd.args() {
        assert!(key_slot(arg) < 16384);
    }
    let body = to_json(cmd).unwrap_or_else(|| panic!("argument of {cmd:?} is not UTF-8"));
    match parse_command(&body) {
        Ok(again) => {
            assert_eq!(again.kind(), cmd.kind());
            assert_eq!(again.args(), cmd.args());
        }
        Err(e) => panic!("{cmd:?} written back as {:?} is refused: {e}", String::from_utf8_lossy(&body)),
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_command(data) {
        Ok(cmd) => check(&cmd),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_pipeline(data, MAX_PIPELINE) {
        Ok(cmds) => {
            assert!(!cmds.is_empty() && cmds.len() <= MAX_PIPELINE);
            cmds.iter().for_each(check);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
