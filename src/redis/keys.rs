//! Redis key names: `<namespace>:{<rule>:<identity hash>}:<limit index>.<fingerprint>`
//! (docs/architecture.md, "Contracts: keys").
//!
//! The identity is a fixed-length hash, so request data never reaches key syntax; the `{…}`
//! hash tag keeps all limits of one rule and identity in one cluster slot, so one script call
//! decides them together. The fingerprint of the rule's strategy and limits makes a changed
//! rule start from fresh keys instead of misreading old state (the old keys expire on their
//! own).

/// The part of a key that names one rule's identity: `<namespace>:{<rule>:<identity hash>}:`.
pub fn key_prefix(namespace: &str, rule: &str, identity: u64) -> String {
    format!("{namespace}:{{{rule}:{identity:016x}}}:")
}

/// The key of one limit of one rule's identity.
pub fn key(namespace: &str, rule: &str, identity: u64, index: usize, fingerprint: u32) -> String {
    format!("{}{index}.{fingerprint:08x}", key_prefix(namespace, rule, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("shop", "api", 0xab, 1, 0xdead), "shop:{api:00000000000000ab}:1.0000dead");
        assert!(key("shop", "api", 0xab, 1, 0xdead).starts_with(&key_prefix("shop", "api", 0xab)));
    }
}
