//! The buffer a direction's bytes sit in while the filter looks at them, and the changes made
//! to it: bytes dropped and frames inserted, kept as a list and applied in one rewrite.
//!
//! The host's buffer (Envoy's body buffer) is read in windows and rewritten only by replacing a
//! prefix, which is what Envoy's `proxy_set_buffer_bytes` allows (docs/architecture.md, "Host
//! facts: WebSocket frames").

/// A body buffer as the host lends it.
pub trait Body {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Up to `max` bytes from `start` (fewer at the end); `None` when the host refuses.
    fn read(&self, start: usize, max: usize) -> Option<Vec<u8>>;
    /// Replaces the first `n` bytes with `with` (`n` = 0 prepends); false when the host refuses.
    fn replace_prefix(&mut self, n: usize, with: &[u8]) -> bool;
}

/// A plain buffer: what the host does, for tests and tools.
impl Body for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        let start = start.min(Vec::len(self));
        Some(self[start..start.saturating_add(max).min(Vec::len(self))].to_vec())
    }
    fn replace_prefix(&mut self, n: usize, with: &[u8]) -> bool {
        let n = n.min(Vec::len(self));
        self.splice(..n, with.iter().copied());
        true
    }
}

/// How much is read from the host at once: frame headers are all the filter needs, so payloads
/// are skipped by arithmetic and never copied, and one read serves many small frames.
pub const WINDOW: usize = 4096;

/// Reads a body through one cached window.
#[derive(Debug, Default)]
pub struct Reader {
    start: usize,
    bytes: Vec<u8>,
}

impl Reader {
    /// Up to `n` bytes at `at`, from the cached window or a new one. Fewer than `n` only at the
    /// end of the body; `None` when the host refuses.
    pub fn at<'a>(&'a mut self, body: &impl Body, at: usize, n: usize) -> Option<&'a [u8]> {
        let cached = at >= self.start && at + n <= self.start + self.bytes.len();
        if !cached {
            self.bytes = body.read(at, n.max(WINDOW))?;
            self.start = at;
        }
        let from = at - self.start;
        Some(&self.bytes[from..(from + n).min(self.bytes.len())])
    }

    /// Forgets the window (the body changed).
    pub fn reset(&mut self) {
        self.bytes = Vec::new();
        self.start = 0;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    Drop { start: usize, end: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

/// Changes to a body, in position order, all before the position reached so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    list: Vec<Edit>,
    /// Bytes of kept frames moved in front of a drop ([`Edits::move_over_drop`]) since the last
    /// rewrite: copies the guest holds until then.
    moved: usize,
}

/// More edits than this are applied at once rather than kept: the list stays small whatever a
/// client interleaves.
pub const MAX_EDITS: usize = 32;

/// How many edits a rewrite waits for once `pos` bytes are behind: [`MAX_EDITS`], or one per
/// 512 bytes past that. A rewrite copies the whole prefix (the host replaces only a prefix), so
/// a fixed count made a buffer of small dropped frames cost its length squared to clean; this
/// keeps the copying linear, for a list of at most 16 bytes of edits per 512 of buffer.
pub fn edits_before_rewrite(pos: usize) -> usize {
    MAX_EDITS.max(pos / 512)
}

/// How many bytes of moved frames a rewrite waits for once `pos` bytes are behind: a window, or
/// an eighth of the prefix. Each rewrite copies the prefix, so moving a client's control frames
/// over a dropped message costs at most eight copies of what was moved, and the copies the
/// guest keeps meanwhile stay within an eighth of the buffer Envoy lent.
pub fn moved_before_rewrite(pos: usize) -> usize {
    WINDOW.max(pos / 8)
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Heap bytes held by the pending changes.
    pub fn heap_bytes(&self) -> usize {
        self.list.capacity() * std::mem::size_of::<Edit>()
            + self.list.iter().map(|e| if let Edit::Insert { bytes, .. } = e { bytes.capacity() } else { 0 }).sum::<usize>()
    }

    /// Drops `[start, end)`; adjacent drops merge.
    pub fn drop_range(&mut self, start: usize, end: usize) {
        if end <= start {
            return;
        }
        if let Some(Edit::Drop { end: last, .. }) = self.list.last_mut() {
            if *last == start {
                *last = end;
                return;
            }
        }
        self.list.push(Edit::Drop { start, end });
    }

    /// Inserts `bytes` before position `at`.
    pub fn insert(&mut self, at: usize, bytes: Vec<u8>) {
        self.list.push(Edit::Insert { at, bytes });
    }

    /// Whether the last change drops bytes up to `at` (a frame there may move over it).
    pub fn drops_up_to(&self, at: usize) -> bool {
        matches!(self.list.last(), Some(&Edit::Drop { end, .. }) if end == at)
    }

    /// Bytes of kept frames moved since the last rewrite.
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// When the last change drops bytes up to `at`: `frame` (the body's bytes from `at`, kept)
    /// goes in front of that drop instead, and the drop runs on over its place, so the server
    /// reads the same bytes in the same order while the drop stays one change. Returns false,
    /// changing nothing, otherwise.
    ///
    /// A client may put a control frame after each piece of a dropped message; kept in place,
    /// each would split the drop, and a megabyte of such pairs cost hundreds of copies of the
    /// buffer to clean.
    pub fn move_over_drop(&mut self, at: usize, frame: &[u8]) -> bool {
        let start = match self.list.last() {
            Some(&Edit::Drop { start, end }) if end == at => start,
            _ => return false,
        };
        self.list.pop();
        match self.list.last_mut() {
            Some(Edit::Insert { at: before, bytes }) if *before == start => bytes.extend_from_slice(frame),
            _ => self.list.push(Edit::Insert { at: start, bytes: frame.to_vec() }),
        }
        self.list.push(Edit::Drop { start, end: at + frame.len() });
        self.moved += frame.len();
        true
    }

    /// `prefix` (the body's first bytes) with the edits applied.
    fn apply_to(&self, prefix: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(prefix.len());
        let mut at = 0;
        for e in &self.list {
            match e {
                Edit::Drop { start, end } => {
                    let (start, end) = ((*start).min(prefix.len()), (*end).min(prefix.len()));
                    out.extend_from_slice(&prefix[at.min(start)..start]);
                    at = at.max(end);
                }
                Edit::Insert { at: pos, bytes } => {
                    let pos = (*pos).min(prefix.len());
                    out.extend_from_slice(&prefix[at.min(pos)..pos]);
                    at = at.max(pos);
                    out.extend_from_slice(bytes);
                }
            }
        }
        out.extend_from_slice(&prefix[at.min(prefix.len())..]);
        out
    }

    /// Applies the edits to the body's first `upto` bytes and forgets them; returns the new
    /// length of that prefix. `None` when the host refused a read or a write.
    pub fn apply(&mut self, body: &mut impl Body, upto: usize) -> Option<usize> {
        if self.list.is_empty() {
            return Some(upto);
        }
        let whole_drop = matches!(self.list.as_slice(), [Edit::Drop { start: 0, end }] if *end >= upto);
        let out = if whole_drop { Vec::new() } else { self.apply_to(&body.read(0, upto)?) };
        if !body.replace_prefix(upto, &out) {
            return None;
        }
        self.list.clear();
        self.moved = 0;
        // A frame can add a few edits past MAX_EDITS before they are applied, doubling the list;
        // what a connection keeps between callbacks stays within the bound all the same.
        self.list.shrink_to(MAX_EDITS);
        Some(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_and_drops_merge() {
        let mut body = b"0123456789".to_vec();
        let mut e = Edits::default();
        e.drop_range(1, 3);
        e.drop_range(3, 4);
        e.insert(6, b"ab".to_vec());
        e.drop_range(8, 9);
        assert_eq!(e.len(), 3, "adjacent drops merge");
        assert_eq!(e.apply(&mut body, 10), Some(8));
        assert_eq!(body, b"045ab679");
        assert!(e.is_empty());
    }

    #[test]
    fn only_the_prefix_is_rewritten() {
        let mut body = b"abcdef".to_vec();
        let mut e = Edits::default();
        e.drop_range(0, 2);
        assert_eq!(e.apply(&mut body, 4), Some(2));
        assert_eq!(body, b"cdef");
    }

    #[test]
    fn the_reader_serves_from_its_window() {
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut r = Reader::default();
        assert_eq!(r.at(&body, 5, 3), Some(&[5u8, 6, 7][..]));
        assert_eq!(r.at(&body, 9_998, 14), Some(&[14u8, 15][..]), "short at the end");
        assert_eq!(r.at(&body, 4_100, 2), Some(&[4u8, 5][..]));
    }
}
