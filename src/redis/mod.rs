//! Cross-proxy limits in Redis: the wire forms the filter speaks and (with the Lua scripts in
//! `scripts/`) the commands it sends.

pub mod wire;
