//! The engine's unit tests, by what they hold: which rules apply, local decisions, Redis rules,
//! and the verdict; with the helpers they share.

use super::*;
use crate::identity::tests::Req;
use crate::identity::RequestInfo;
use crate::redis::wire::Reply;
use crate::store::{MemStore, SharedStore, StoreError};

mod applies;
mod local;
mod remote;
mod verdict;

fn limiter(config: serde_json::Value) -> Limiter {
    Limiter::new(crate::config::compile(&config).unwrap())
}

const T0: u64 = 1_700_000_040_000_000;

fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Admit { .. } => 200,
        Verdict::Deny { response, .. } => response.status,
    }
}

fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
    let headers = match v {
        Verdict::Admit { headers, .. } => headers,
        Verdict::Deny { response, .. } => &response.headers,
    };
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A store that counts reads and writes, and can let "another worker" act just before the
/// first write to a key with a given prefix.
struct Racing<'a> {
    inner: &'a MemStore,
    reads: std::cell::Cell<u32>,
    writes: std::cell::Cell<u32>,
    before_write: std::cell::RefCell<Option<(String, Box<dyn FnOnce(&MemStore) + 'a>)>>,
}

impl<'a> Racing<'a> {
    fn new(inner: &'a MemStore) -> Self {
        Racing { inner, reads: Default::default(), writes: Default::default(), before_write: Default::default() }
    }
}

impl SharedStore for Racing<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let due = matches!(&*self.before_write.borrow(), Some((prefix, _)) if key.starts_with(prefix.as_str()));
        if due {
            if let Some((_, act)) = self.before_write.borrow_mut().take() {
                act(self.inner);
            }
        }
        self.writes.set(self.writes.get() + 1);
        self.inner.set(key, value, cas)
    }
}
