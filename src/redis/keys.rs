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
    let mut k = String::with_capacity(namespace.len() + rule.len() + 20 + 20);
    push_prefix(&mut k, namespace, rule, identity);
    k
}

/// The key of one limit of one rule's identity.
pub fn key(namespace: &str, rule: &str, identity: u64, index: usize, fingerprint: u32) -> String {
    let mut k = String::with_capacity(namespace.len() + rule.len() + 20 + 30);
    push_key(&mut k, namespace, rule, identity, index, fingerprint);
    k
}

/// Writes [`key`] onto `k`. Piece by piece rather than with `format!`: a Redis rule writes one
/// per limit on every request it sends.
pub fn push_key(k: &mut String, namespace: &str, rule: &str, identity: u64, index: usize, fingerprint: u32) {
    push_prefix(k, namespace, rule, identity);
    k.push_str(itoa::Buffer::new().format(index));
    k.push('.');
    push_hex(k, u64::from(fingerprint), 8);
}

fn push_prefix(k: &mut String, namespace: &str, rule: &str, identity: u64) {
    k.push_str(namespace);
    k.push_str(":{");
    k.push_str(rule);
    k.push(':');
    push_hex(k, identity, 16);
    k.push_str("}:");
}

/// `value`'s low `digits` hex digits, zero-padded, lowercase.
fn push_hex(k: &mut String, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = (value >> (i * 4)) & 0xf;
        k.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("shop", "api", 0xab, 1, 0xdead), "shop:{api:00000000000000ab}:1.0000dead");
        assert!(key("shop", "api", 0xab, 1, 0xdead).starts_with(&key_prefix("shop", "api", 0xab)));
        assert_eq!(key("n", "r", u64::MAX, 12, u32::MAX), "n:{r:ffffffffffffffff}:12.ffffffff");
        assert_eq!(key("", "", 0x0123_4567_89ab_cdef, 0, 0x0a0b_0c0d), ":{:0123456789abcdef}:0.0a0b0c0d");
    }
}
