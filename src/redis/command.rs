//! One Redis command as the filter builds it: its words written into one buffer, with where each
//! ends. A rule's call has ten words or more; one `String` each had been about a third of the
//! allocations a Redis rule makes per request in the guest.

use std::ops::Range;

use serde::ser::{Serialize, SerializeSeq, Serializer};
use smallvec::SmallVec;

/// A command's words, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    text: String,
    /// Where each word ends in `text`; a call of one limit fits inline.
    ends: SmallVec<[usize; 12]>,
}

impl Command {
    /// An empty command with room for `bytes` of words.
    pub fn with_capacity(bytes: usize) -> Self {
        Command { text: String::with_capacity(bytes), ends: SmallVec::new() }
    }

    /// A command of `words`.
    pub fn of<S: AsRef<str>>(words: &[S]) -> Self {
        let mut c = Command::with_capacity(words.iter().map(|w| w.as_ref().len()).sum());
        words.iter().for_each(|w| c.push(w.as_ref()));
        c
    }

    /// Adds `word`.
    pub fn push(&mut self, word: &str) {
        self.text.push_str(word);
        self.end_word();
    }

    /// Adds a word of the decimal digits of `n`.
    pub fn push_number(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n));
    }

    /// Adds a word written by `write` straight into the command's buffer.
    pub fn push_with(&mut self, write: impl FnOnce(&mut String)) {
        write(&mut self.text);
        self.end_word();
    }

    fn end_word(&mut self) {
        self.ends.push(self.text.len());
    }

    /// How many words.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Word `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? };
        self.text.get(start..end)
    }

    /// The words, in order.
    pub fn words(&self) -> impl Iterator<Item = &str> + '_ {
        // Every end is where a pushed `&str` ended: a char boundary, so `get` always finds it.
        self.spans().map(|span| self.text.get(span).unwrap_or_default())
    }

    /// The words' bytes, in order (RESP carries bytes, and needs no char boundary found).
    pub fn word_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans().map(|span| self.text.as_bytes().get(span).unwrap_or_default())
    }

    /// Where each word lies in `text`, in order.
    fn spans(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let span = start..end;
            start = end;
            span
        })
    }

    /// The last word.
    pub fn last(&self) -> Option<&str> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The words' bytes, all together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The words as strings of their own (tests, and tools that keep commands).
    pub fn to_vec(&self) -> Vec<String> {
        self.words().map(str::to_string).collect()
    }
}

/// A JSON array of the words, as the Upstash dialect carries a command.
impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for w in self.words() {
            seq.serialize_element(w)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_in_one_buffer() {
        let mut c = Command::with_capacity(4);
        assert!(c.is_empty() && c.last().is_none() && c.get(0).is_none());
        c.push("EVALSHA");
        c.push("");
        c.push_number(1234);
        c.push_with(|t| t.push_str("k:{x}"));
        assert_eq!(c.len(), 4);
        assert_eq!(c.to_vec(), ["EVALSHA", "", "1234", "k:{x}"]);
        assert_eq!((c.get(1), c.get(3), c.get(4), c.last()), (Some(""), Some("k:{x}"), None, Some("k:{x}")));
        assert_eq!(c.text_len(), "EVALSHA1234k:{x}".len());
        assert_eq!(Command::of(&["a", "bc"]).to_vec(), ["a", "bc"]);
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"["EVALSHA","","1234","k:{x}"]"#);
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        assert_eq!(Command::of(&many).to_vec(), many, "more words than fit inline");
    }
}
