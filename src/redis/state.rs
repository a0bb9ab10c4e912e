//! The decision script's states as Redis holds them (`"fw 1700000000000 3"`: the strategy's tag
//! and decimal numbers, written by the Lua files in `src/redis/scripts/`) and the strategies'
//! own (a tag byte and 64-bit fields, `src/strategy/codec.rs`), one into the other. Anything
//! that decides on Redis' keys without the scripts (a native Redis module command) reads and
//! writes the same text through these two functions, so proxies of either kind share one key.
//!
//! A text reads exactly as the scripts read it (`parse2`, `parse` and the sliding-window
//! counter's own pattern): a state they would treat as never seen becomes the empty state,
//! which the strategies treat the same way (a time before the epoch included).

use crate::strategy::codec::{
    self, FIXED_WINDOW, GCRA, LEAKY_BUCKET, LEAKY_BUCKET_QUEUE, SLIDING_WINDOW_COUNTER, SLIDING_WINDOW_LOG, TOKEN_BUCKET,
    TOKEN_BUCKET_DEBT,
};

/// 2^53: the scripts' numbers are doubles, exact below it; a state holding more is not one of
/// theirs.
const EXACT: u64 = 1 << 53;

/// The most numbers a state holds: a sliding log's two per entry, at most
/// [`crate::config::MAX_LOG_ENTRIES`] entries (it folds its oldest over the cap before it is
/// written). The scripts' `MAX_STATE_NUMBERS`.
pub const MAX_STATE_NUMBERS: usize = 2 * crate::config::MAX_LOG_ENTRIES as usize;

/// The longest state text the scripts write: that many numbers below 2^53 (16 digits each),
/// a space before each, after the tag. A longer text (anyone may write a key) is not read: it
/// would cost memory and time out of all proportion. The scripts' `MAX_STATE_BYTES`.
pub const MAX_STATE_BYTES: usize = 4 + 17 * MAX_STATE_NUMBERS;

/// How a tag's numbers are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Two numbers, each `-?digits` (the scripts' `parse2`); a negative one (not `-0`) is
    /// refused.
    Two,
    /// Two numbers, the second of them may be negative (`tbd`'s tokens, in debt).
    TwoSigned,
    /// Three numbers, digits only (`swc`).
    Three,
    /// Any count of numbers, digits only, single spaces (`swl`).
    Many,
}

const TAGS: [(&str, u8, Shape); 8] = [
    ("fw", FIXED_WINDOW, Shape::Two),
    ("swc", SLIDING_WINDOW_COUNTER, Shape::Three),
    ("swl", SLIDING_WINDOW_LOG, Shape::Many),
    ("tb", TOKEN_BUCKET, Shape::Two),
    ("tbd", TOKEN_BUCKET_DEBT, Shape::TwoSigned),
    ("lb", LEAKY_BUCKET, Shape::Two),
    ("lbq", LEAKY_BUCKET_QUEUE, Shape::Two),
    ("gcra", GCRA, Shape::Two),
];

/// The strategies' state for a text the scripts wrote; empty (never seen) for anything they
/// would not read.
pub fn from_text(text: &[u8]) -> Vec<u8> {
    parse(text).unwrap_or_default()
}

fn parse(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() > MAX_STATE_BYTES {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let (name, numbers) = text.split_once(' ')?;
    let &(_, tag, shape) = TAGS.iter().find(|(n, _, _)| *n == name)?;
    // Read word by word: a foreign value of a few MB must cost no list of all its words.
    let mut words = numbers.split(' ');
    let mut exactly = |n: usize| -> Option<Vec<&str>> {
        let taken: Vec<&str> = words.by_ref().take(n).collect();
        (taken.len() == n && words.next().is_none()).then_some(taken)
    };
    let fields = match shape {
        Shape::Two | Shape::TwoSigned => {
            let [a, b] = exactly(2)?[..] else { return None };
            let time = signed(a)?;
            let second = signed(b)?;
            if time < 0 || (shape == Shape::Two && second < 0) || second <= -(EXACT as i64) {
                return None;
            }
            // Two's complement for a negative second field, as the strategy stores it.
            vec![time as u64, second as u64]
        }
        Shape::Three => {
            let [a, b, c] = exactly(3)?[..] else { return None };
            vec![decimal(a.as_bytes())?, decimal(b.as_bytes())?, decimal(c.as_bytes())?]
        }
        Shape::Many => {
            let numbers: Vec<u64> =
                words.by_ref().take(MAX_STATE_NUMBERS).map(|w| decimal(w.as_bytes())).collect::<Option<_>>()?;
            if words.next().is_some() {
                return None;
            }
            numbers
        }
    };
    Some(codec::encode_vec(tag, &fields).into_vec())
}

/// Decimal digits only, below 2^53: a number of a state, or of a script call's arguments
/// (`super::native`).
pub(super) fn decimal(word: &[u8]) -> Option<u64> {
    if word.is_empty() {
        return None;
    }
    // One pass (Redis runs this for every number of every decision): leading zeros skipped,
    // then at most 16 digits, which cannot overflow (2^53 has 16).
    let start = word.iter().position(|b| *b != b'0').unwrap_or(word.len());
    let digits = &word[start..];
    if digits.len() > 16 {
        return None;
    }
    let mut value = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    (value < EXACT).then_some(value)
}

/// `-?digits`, its magnitude below 2^53 (`-0` is 0).
fn signed(word: &str) -> Option<i64> {
    match word.strip_prefix('-') {
        Some(rest) => decimal(rest.as_bytes()).map(|v| -(v as i64)),
        None => decimal(word.as_bytes()).map(|v| v as i64),
    }
}

/// The text the scripts write for a strategy's state; `None` for a state that is not one of
/// the eight tags' with their count of fields.
pub fn to_text(state: &[u8]) -> Option<String> {
    let (&tag, _) = state.split_first()?;
    let &(name, _, shape) = TAGS.iter().find(|(_, t, _)| *t == tag)?;
    let fields = codec::decode_vec(tag, state)?;
    let count_ok = match shape {
        Shape::Two | Shape::TwoSigned => fields.len() == 2,
        Shape::Three => fields.len() == 3,
        Shape::Many => !fields.is_empty(),
    };
    if !count_ok {
        return None;
    }
    let mut out = String::with_capacity(name.len() + 20 * fields.len());
    out.push_str(name);
    for (i, f) in fields.iter().enumerate() {
        out.push(' ');
        if shape == Shape::TwoSigned && i == 1 {
            out.push_str(itoa::Buffer::new().format(*f as i64));
        } else {
            out.push_str(itoa::Buffer::new().format(*f));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_reads_digits_below_two_to_the_53() {
        let cases: [(&[u8], Option<u64>); 14] = [
            (b"0", Some(0)),
            (b"000", Some(0)),
            (b"7", Some(7)),
            (b"0042", Some(42)),
            (b"9007199254740991", Some(EXACT - 1)),
            (b"00000009007199254740991", Some(EXACT - 1)),
            (b"9007199254740992", None),
            (b"99999999999999999", None),
            (b"18446744073709551616", None),
            (b"", None),
            (b"-1", None),
            (b"1e3", None),
            (b" 1", None),
            (b"0x10", None),
        ];
        for (word, expected) in cases {
            assert_eq!(decimal(word), expected, "{}", String::from_utf8_lossy(word));
        }
    }

    #[test]
    fn texts_the_scripts_write_round_trip() {
        for text in [
            "fw 1700000000000 3",
            "swc 1700000000000 4 9",
            "swl 1700000000000 1 1700000000005 2",
            "tb 17 0",
            "tbd 1700000000000 -4000",
            "lb 1 2",
            "lbq 1 2",
            "gcra 1700000000001 2",
        ] {
            let state = from_text(text.as_bytes());
            assert!(!state.is_empty(), "{text}");
            assert_eq!(to_text(&state).as_deref(), Some(text));
        }
        assert_eq!(from_text(b"tbd 5 -4"), codec::encode_vec(TOKEN_BUCKET_DEBT, &[5, (-4i64) as u64]).into_vec());
        // `-0` reads as 0, as the scripts' tonumber has it.
        assert_eq!(from_text(b"fw -0 3"), from_text(b"fw 0 3"));
        assert_eq!(from_text(b"fw 007 3"), from_text(b"fw 7 3"));
    }

    #[test]
    fn what_the_scripts_would_not_read_is_never_seen() {
        let max = (EXACT - 1).to_string();
        assert!(!from_text(format!("fw {max} {max}").as_bytes()).is_empty());
        for text in [
            "",
            "fw",
            "fw 1",
            "fw 1 2 3",
            "fw  1 2",
            "fw 1 2 ",
            "fw -1 2",
            "fw 1 -2",
            "fw 1e3 2",
            "fw 0x10 2",
            "fw 9007199254740992 1",
            "tbd -1 2",
            "tbd 1 -9007199254740992",
            "swc 1 2",
            "swc 1 -2 3",
            "swl",
            "swl ",
            "swl 1  2",
            "swl 1 2 ",
            "zz 1 2",
            "FW 1 2",
            "fw 1 2\n",
            "fw 99999999999999999999999999 1",
        ] {
            assert_eq!(from_text(text.as_bytes()), Vec::<u8>::new(), "{text:?}");
        }
        assert_eq!(from_text(&[0xff, b' ', b'1']), Vec::<u8>::new());
    }

    #[test]
    fn states_of_another_shape_have_no_text() {
        assert_eq!(to_text(&[]), None);
        assert_eq!(to_text(&codec::encode_vec(FIXED_WINDOW, &[1])), None);
        assert_eq!(to_text(&codec::encode_vec(SLIDING_WINDOW_COUNTER, &[1, 2])), None);
        assert_eq!(to_text(&codec::encode_vec(SLIDING_WINDOW_LOG, &[])), None);
        assert_eq!(to_text(&[0x7f, 0, 0]), None);
    }
}
