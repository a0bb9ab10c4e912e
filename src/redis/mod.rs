//! Redis, in one place: key names, the decision script and its calling convention (building a
//! rule's command, reading its reply), and the two wire forms the commands travel in (RESP over
//! Higress' Redis callout, the Upstash REST dialect over an HTTP callout). The engine hands it
//! strategy-level values and gets decisions back; the host only moves the bytes.

pub mod command;
pub mod keys;
pub mod native;
pub mod script;
pub mod state;
pub mod wire;

pub use keys::{key, key_prefix};
