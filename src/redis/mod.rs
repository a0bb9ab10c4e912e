//! Cross-proxy limits in Redis: key names, the commands one request sends (one `EVALSHA` of
//! the decision script per rule, all in one pipeline), and the wire forms they travel in.

pub mod wire;

use crate::strategy::lua;

/// SHA-1 of the decision script, for `EVALSHA`.
pub fn script_sha() -> String {
    sha1_smol::Sha1::from(lua::SCRIPT).digest().to_string()
}

/// `<namespace>:{<rule>:<identity hash>}:<limit index>.<fingerprint>` (ARCHITECTURE §6). The
/// identity is a fixed-length hash, so request data never reaches key syntax; the `{…}` hash tag
/// keeps all limits of one rule and identity in one cluster slot, so one script call decides
/// them together. The fingerprint of the rule's strategy and limits makes a changed rule start
/// from fresh keys instead of misreading old state (the old keys expire on their own).
pub fn key(namespace: &str, rule: &str, identity: u64, index: usize, fingerprint: u32) -> String {
    format!("{namespace}:{{{rule}:{identity:016x}}}:{index}.{fingerprint:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sha() {
        assert_eq!(key("shop", "api", 0xab, 1, 0xdead), "shop:{api:00000000000000ab}:1.0000dead");
        let sha = script_sha();
        assert_eq!(sha.len(), 40);
        assert!(sha.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
