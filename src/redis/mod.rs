//! Redis, in one place: key names ([`keys`]), the decision script and its calling convention
//! (building a rule's command, reading its reply: [`script`]), a command's words in one buffer
//! ([`command`]), the two wire forms the commands travel in (RESP over Higress' Redis callout,
//! the Upstash REST dialect over an HTTP callout: [`wire`]), the scripts' text states as the
//! strategies' own ([`state`]) and the scripts' calls decided in Rust for the Redis module
//! ([`native`]). The engine hands it strategy-level values and gets decisions back; the host
//! only moves the bytes.

pub mod command;
pub mod keys;
pub mod native;
pub mod script;
pub mod state;
pub mod wire;

pub use keys::{key, key_prefix};
