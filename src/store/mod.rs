//! The per-proxy store: Envoy's shared data seen as a compare-and-swap key-value map, the one
//! loop that retries a lost race, the bounded slot tables the local rules count in, and what a
//! worker knows of its own writes to them.
//!
//! Shared data never deletes a key, has no TTL, and accepts a write to a key that does not exist
//! whatever CAS token it carries (docs/architecture.md, "Host facts: shared data"): the slot
//! table ([`table`]) is shaped by exactly that.

#[cfg(any(test, feature = "testing"))]
mod mem;
pub mod own;
pub mod table;

#[cfg(any(test, feature = "testing"))]
pub use mem::{Meddled, MemStore};
pub use own::Own;
#[cfg(any(test, feature = "fuzzing"))]
pub use table::evictions;
pub use table::{Decided, Held, Outcomes, Prepared, Table, Updated, Written, MARK_ID, PROBES};

/// The place of `identity` (a keyed hash) under `index` (a table's or rule's) in a worker's
/// table of `places`: spread by the identity, so no client can aim at another's place.
pub fn place(index: usize, identity: u64, places: usize) -> usize {
    (identity ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize % places.max(1)
}

/// A compare-and-swap key-value map with Envoy's shared-data semantics.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's token still equals `cas` (0 = unconditionally; a missing key
    /// accepts any token).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("compare-and-swap mismatch")]
    CasMismatch,
    /// Every attempt lost its race: the decision could not be stored. Callers deny (see
    /// [`MAX_ATTEMPTS`]): an admission that is not counted would be one past the limit.
    #[error("{0} still contended after {MAX_ATTEMPTS} attempts")]
    Contended(String),
    #[error("shared data unavailable: {0}")]
    Unavailable(String),
}

/// The token used to create a key. Envoy's tokens count up from 1 across the whole process, so
/// an existing key holds this exact token only at one write in 2^32; a create that races with
/// another worker's create therefore fails with a mismatch (and is retried) instead of
/// overwriting. A missing key accepts it like any other token.
pub const CREATE_TOKEN: u32 = u32::MAX;

/// CAS retries before giving up. Contention comes from the other workers of one proxy (a few
/// to a few dozen); each retry means another worker made progress, so this bound is only hit
/// under pathological load.
pub const MAX_ATTEMPTS: u32 = 64;

/// Runs `attempt` (read, decide, write with compare-and-swap) until its write lands, at most
/// [`MAX_ATTEMPTS`] times. Looping here is not about retrying communication failures (those
/// return at once): a [`StoreError::CasMismatch`] means another worker wrote the key between our
/// read and our write, so we read what it wrote and decide again.
pub fn with_retries<T>(what: &str, mut attempt: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        match attempt() {
            Err(StoreError::CasMismatch) => continue,
            done => return done,
        }
    }
    Err(StoreError::Contended(what.to_string()))
}

impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}
