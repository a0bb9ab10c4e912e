//! The binary state encoding shared by the strategies: one tag byte naming the strategy, then
//! little-endian 64-bit fields. The tag makes state written by another strategy (after a config
//! change) undecodable, hence fresh, instead of misread.

pub(crate) const FIXED_WINDOW: u8 = 1;
pub(crate) const SLIDING_WINDOW_COUNTER: u8 = 2;
pub(crate) const SLIDING_WINDOW_LOG: u8 = 3;
pub(crate) const TOKEN_BUCKET: u8 = 4;
pub(crate) const TOKEN_BUCKET_DEBT: u8 = 5;
pub(crate) const LEAKY_BUCKET: u8 = 6;
pub(crate) const LEAKY_BUCKET_QUEUE: u8 = 7;
pub(crate) const GCRA: u8 = 8;

/// An encoded state. The fixed-size ones (a tag and at most three fields) live inline, so
/// deciding a rule allocates nothing; a sliding log's longer state spills to the heap.
pub type State = smallvec::SmallVec<[u8; 1 + 8 * 3]>;

/// Encodes `tag` followed by `fields`.
pub(crate) fn encode<const N: usize>(tag: u8, fields: [u64; N]) -> State {
    let mut out = State::with_capacity(1 + 8 * N);
    out.push(tag);
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out
}

/// Decodes exactly `N` fields after `tag`; `None` for anything else (wrong tag or length).
pub(crate) fn decode<const N: usize>(tag: u8, bytes: &[u8]) -> Option<[u64; N]> {
    let (&first, rest) = bytes.split_first()?;
    if first != tag || rest.len() != 8 * N {
        return None;
    }
    let mut out = [0u64; N];
    for (slot, chunk) in out.iter_mut().zip(rest.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *slot = u64::from_le_bytes(b);
    }
    Some(out)
}

/// Decodes a variable number of fields after `tag` (a multiple of 8 bytes).
pub(crate) fn decode_vec(tag: u8, bytes: &[u8]) -> Option<Vec<u64>> {
    let (&first, rest) = bytes.split_first()?;
    if first != tag || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect(),
    )
}

/// Encodes `tag` followed by a variable number of fields.
pub(crate) fn encode_vec(tag: u8, fields: &[u64]) -> State {
    let mut out = State::with_capacity(1 + 8 * fields.len());
    out.push(tag);
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let b = encode(7, [1, u64::MAX]);
        assert_eq!(b.len(), 17);
        assert_eq!(decode::<2>(7, &b), Some([1, u64::MAX]));
        assert_eq!(decode::<2>(6, &b), None);
        assert_eq!(decode::<3>(7, &b), None);
        assert_eq!(decode::<2>(7, &b[..16]), None);
        assert_eq!(decode::<2>(7, &[]), None);
        assert_eq!(decode_vec(3, &encode_vec(3, &[4, 5])), Some(vec![4, 5]));
        assert_eq!(decode_vec(3, &[3, 1]), None);
    }
}
