//! Process-wide state every worker VM sees: shared data with Envoy's compare-and-swap rules,
//! shared queues, metrics, captured logs, and injected faults.

use std::collections::{HashMap, VecDeque};

use crate::abi::{LogLevel, MetricType, Status};

/// Envoy's shared data (proxy-wasm-cpp-host `SharedData`): one map per `vm_id`, one CAS counter
/// for the whole process.
///
/// The rules a filter must live with:
/// - every write stamps the value with the next counter value; the counter skips 0;
/// - a write with token 0 is unconditional;
/// - a write to a key that does not exist succeeds whatever the token (so two workers can both
///   "create" a key and one of the two updates is lost);
/// - a write with a non-zero token that differs from the key's current one fails with
///   `CasMismatch`;
/// - keys are never deleted.
#[derive(Debug)]
pub struct SharedData {
    maps: HashMap<String, HashMap<String, (Vec<u8>, u32)>>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData { maps: HashMap::new(), next_cas: 1 }
    }
}

impl SharedData {
    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.maps.get(vm_id)?.get(key).cloned()
    }

    pub fn set(&mut self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Status {
        let current = self.maps.get(vm_id).and_then(|m| m.get(key)).map(|(_, c)| *c);
        if let Some(current) = current {
            if cas != 0 && cas != current {
                return Status::CasMismatch;
            }
        }
        let stamp = self.take_cas();
        self.maps.entry(vm_id.to_string()).or_default().insert(key.to_string(), (value.to_vec(), stamp));
        Status::Ok
    }

    /// Number of keys under `vm_id`.
    pub fn len(&self, vm_id: &str) -> usize {
        self.maps.get(vm_id).map_or(0, |m| m.len())
    }

    pub fn is_empty(&self, vm_id: &str) -> bool {
        self.len(vm_id) == 0
    }

    /// Keys under `vm_id`, sorted.
    pub fn keys(&self, vm_id: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.maps.get(vm_id).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// Total bytes of keys and values under `vm_id`.
    pub fn bytes(&self, vm_id: &str) -> usize {
        self.maps.get(vm_id).map_or(0, |m| m.iter().map(|(k, (v, _))| k.len() + v.len()).sum())
    }

    /// The next CAS stamp the store will hand out (for tests of the counter itself).
    pub fn next_cas(&self) -> u32 {
        self.next_cas
    }

    /// Moves the process-wide counter, e.g. next to its wrap-around.
    pub fn set_next_cas(&mut self, next: u32) {
        self.next_cas = if next == 0 { 1 } else { next };
    }
}

/// What an injected shared-data fault does to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The write fails with `CasMismatch` and changes nothing.
    CasMismatch,
    /// The write fails with this status and changes nothing.
    Error(Status),
}

/// What an injected fault does to an HTTP callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutFault {
    /// `proxy_on_http_call_response` with no headers, body or trailers (Envoy's reset).
    Fail,
    /// No answer; the call's timeout fires.
    Timeout,
    /// `proxy_http_call` itself returns this status.
    Reject(Status),
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub write_faults: VecDeque<WriteFault>,
    pub read_faults: VecDeque<Status>,
    pub callout_faults: VecDeque<CalloutFault>,
    pub nth_callout: HashMap<u64, CalloutFault>,
    pub redis_faults: VecDeque<CalloutFault>,
    /// The next calls on a request or response body (its status, a read, a write), in order:
    /// a status to answer instead of doing anything, or `None` to do as asked.
    pub body_faults: VecDeque<Option<Status>>,
    /// "Queue ready" callbacks still to drop, as a host that loses them would.
    pub lost_queue_ready: usize,
    /// Clock readings still to fail (any worker).
    pub clock_faults: usize,
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub worker: usize,
    pub level: LogLevel,
    pub message: String,
    /// The context the guest was running in (0 while starting the VM).
    pub context_id: u32,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub kind: MetricType,
    pub value: i64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Queues {
    /// (vm_id, name) → queue id.
    pub by_name: HashMap<(String, String), u32>,
    /// queue id → (owner worker, owner root context, items).
    pub queues: HashMap<u32, (usize, u32, VecDeque<Vec<u8>>)>,
    pub next_id: u32,
    /// Queue ids that got an item and whose owner has not been told yet.
    pub ready: Vec<u32>,
}

/// Everything the workers share, behind one mutex (as Envoy's shared data is).
#[derive(Debug, Default)]
pub(crate) struct Process {
    pub shared: SharedData,
    pub faults: Faults,
    pub logs: Vec<LogEntry>,
    pub metrics: HashMap<String, Metric>,
    pub queues: Queues,
    pub random_state: u64,
    pub shared_reads: u64,
    pub shared_writes: u64,
    pub http_calls: u64,
}

/// Small, fast, seedable PRNG (splitmix64) for WASI randomness and the scheduler; tests must
/// be reproducible, so nothing here is cryptographic or machine-seeded.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_match_envoy() {
        let mut s = SharedData::default();
        assert_eq!(s.get("vm", "k"), None);
        // Absent key: any token is accepted.
        assert_eq!(s.set("vm", "k", b"a", 12345), Status::Ok);
        let (_, c1) = s.get("vm", "k").unwrap();
        assert_eq!(c1, 1);
        assert_eq!(s.set("vm", "k", b"b", c1 + 7), Status::CasMismatch);
        assert_eq!(s.set("vm", "k", b"b", c1), Status::Ok);
        assert_eq!(s.set("vm", "k", b"c", c1), Status::CasMismatch);
        assert_eq!(s.set("vm", "k", b"d", 0), Status::Ok);
        assert_eq!(s.get("vm", "k").unwrap(), (b"d".to_vec(), 3));
        // Maps are per vm_id; the counter is per process.
        assert_eq!(s.get("other", "k"), None);
        assert_eq!(s.set("other", "k", b"x", 0), Status::Ok);
        assert_eq!(s.get("other", "k").unwrap().1, 4);
    }

    #[test]
    fn counter_skips_zero() {
        let mut s = SharedData::default();
        s.set_next_cas(u32::MAX);
        s.set("vm", "a", b"1", 0);
        s.set("vm", "b", b"1", 0);
        assert_eq!(s.get("vm", "a").unwrap().1, u32::MAX);
        assert_eq!(s.get("vm", "b").unwrap().1, 1);
    }
}
