//! An in-memory stand-in for Envoy's shared data, for tests and tools (feature `testing`).

use super::{SharedStore, StoreError};

/// An in-memory [`SharedStore`] that behaves exactly like Envoy's shared data: one token
/// counter for the whole map, starting at 1, skipping 0, advanced by each write that lands;
/// token 0 writes unconditionally; a missing key accepts any token.
#[derive(Debug)]
pub struct MemStore {
    inner: std::cell::RefCell<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    map: std::collections::HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore { inner: std::cell::RefCell::new(MemInner { map: Default::default(), next_cas: 1 }) }
    }
}

impl MemStore {
    /// Number of keys and the bytes of keys plus values (what Envoy's map holds, less overhead).
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.borrow();
        let bytes = inner.map.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
        (inner.map.len(), bytes)
    }

    /// Sets the next token handed out (to test the wrap-around).
    pub fn set_next_cas(&self, cas: u32) {
        self.inner.borrow_mut().next_cas = cas.max(1);
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.inner.borrow().map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.borrow_mut();
        if inner.map.get(key).is_some_and(|(_, held)| cas != 0 && cas != *held) {
            // A write that misses takes no token.
            return Err(StoreError::CasMismatch);
        }
        let token = inner.next_cas;
        inner.next_cas = match token.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        inner.map.insert(key.to_string(), (value.to_vec(), token));
        Ok(())
    }
}

/// A [`MemStore`] that runs `before` ahead of each of its calls: another worker's whole
/// requests, say, between two of one request's calls.
pub struct Meddled<'a, F: Fn()> {
    pub inner: &'a MemStore,
    pub before: F,
}

impl<F: Fn()> SharedStore for Meddled<'_, F> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (self.before)();
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        (self.before)();
        self.inner.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_follows_envoy_cas_rules() {
        let s = MemStore::default();
        s.set("k", b"a", 12345).unwrap(); // absent key: any token
        let (_, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(s.set("k", b"b", cas + 1), Err(StoreError::CasMismatch));
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().1, cas + 1, "the miss took no token");
        s.set("k", b"c", 0).unwrap(); // token 0: unconditional
        s.set_next_cas(u32::MAX);
        s.set("k", b"d", 0).unwrap();
        let (_, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(cas, u32::MAX);
        s.set("k", b"e", 0).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().1, 1, "the token skips 0");
    }
}
