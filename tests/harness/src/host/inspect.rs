//! What a test reads and sets behind the guests' backs: shared data, metrics, logs, Redis inits,
//! and the faults that the guests' next operations meet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Host;
use crate::abi::{LogLevel, MetricType, Status};
use crate::shared::{CalloutFault, LogEntry, Process, WriteFault};
use crate::vm::{lock, Crossings};

impl Host {
    /// The value and CAS token of a shared-data key of this host's `vm_id`.
    pub fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.process).shared.get(&self.plugin.vm_id, key)
    }

    /// Writes shared data as a guest would (same CAS rules).
    pub fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Status {
        lock(&self.process).shared.set(&self.plugin.vm_id, key, value, cas)
    }

    /// Number of shared-data keys of this host's `vm_id`.
    pub fn shared_len(&self) -> usize {
        lock(&self.process).shared.len(&self.plugin.vm_id)
    }

    pub fn shared_keys(&self) -> Vec<String> {
        lock(&self.process).shared.keys(&self.plugin.vm_id)
    }

    /// Bytes of keys and values in shared data.
    pub fn shared_bytes(&self) -> usize {
        lock(&self.process).shared.bytes(&self.plugin.vm_id)
    }

    /// The next CAS stamp the process hands out; settable to test wrap-around.
    pub fn next_cas(&self) -> u32 {
        lock(&self.process).shared.next_cas()
    }

    pub fn set_next_cas(&self, next: u32) {
        lock(&self.process).shared.set_next_cas(next)
    }

    /// (reads, writes) of shared data by all guests so far.
    pub fn shared_ops(&self) -> (u64, u64) {
        let p = lock(&self.process);
        (p.shared_reads, p.shared_writes)
    }

    /// Fault injection.
    pub fn faults(&self) -> FaultInjector<'_> {
        FaultInjector { process: &self.process }
    }

    /// A metric's value by name (counters and gauges).
    pub fn metric(&self, name: &str) -> Option<i64> {
        lock(&self.process).metrics.get(name).map(|m| m.value)
    }

    /// Every metric: name → (type, value).
    pub fn metrics(&self) -> HashMap<String, (MetricType, i64)> {
        lock(&self.process).metrics.iter().map(|(k, m)| (k.clone(), (m.kind, m.value))).collect()
    }

    /// Every log line captured so far (`proxy_log`, and stdout/stderr as info/error).
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.process).logs.clone()
    }

    /// Log lines at `level` or above.
    pub fn logs_at_least(&self, level: LogLevel) -> Vec<LogEntry> {
        lock(&self.process).logs.iter().filter(|l| l.level >= level).cloned().collect()
    }

    /// Whether any line at `level` or above contains `text`.
    pub fn logged(&self, level: LogLevel, text: &str) -> bool {
        lock(&self.process).logs.iter().any(|l| l.level >= level && l.message.contains(text))
    }

    pub fn clear_logs(&self) {
        lock(&self.process).logs.clear();
    }

    /// Every worker's boundary crossings so far, summed: calls into the guest and out of it.
    pub fn crossings(&self) -> Crossings {
        (0..self.workers.len()).map(|w| self.worker_crossings(w)).fold(self.retired, |a, c| a + c)
    }

    /// The crossings of worker `w`'s current VM (zero while a step of it is suspended).
    pub(super) fn worker_crossings(&self, w: usize) -> Crossings {
        let Some(s) = self.workers.get(w).and_then(|wk| wk.store.as_ref()) else { return Crossings::default() };
        let burned = u64::MAX - s.get_fuel().unwrap_or(u64::MAX);
        Crossings { guest_fuel: burned, ..s.data().crossings }
    }

    /// `proxy_redis_init` calls of a worker: (cluster, username, password, timeout ms).
    pub fn redis_inits(&self, worker: usize) -> Vec<(String, String, String, u32)> {
        self.workers.get(worker).and_then(|w| w.store.as_ref()).map(|s| s.data().redis_inits.clone()).unwrap_or_default()
    }
}

/// Makes the next shared-data operations or callouts fail.
pub struct FaultInjector<'a> {
    process: &'a Arc<Mutex<Process>>,
}

impl FaultInjector<'_> {
    /// The next `k` shared-data writes (any worker) fail as given, changing nothing. Note that
    /// the Rust SDK's `set_shared_data` panics on any status but `Ok` and `CasMismatch`.
    pub fn fail_next_writes(&self, k: usize, fault: WriteFault) -> &Self {
        lock(self.process).faults.write_faults.extend(std::iter::repeat_n(fault, k));
        self
    }

    /// The next `k` shared-data reads fail with `status`.
    pub fn fail_next_reads(&self, k: usize, status: Status) -> &Self {
        lock(self.process).faults.read_faults.extend(std::iter::repeat_n(status, k));
        self
    }

    /// The next `k` callouts fail (reset), time out, or are rejected at dispatch.
    pub fn next_callouts(&self, k: usize, fault: CalloutFault) -> &Self {
        lock(self.process).faults.callout_faults.extend(std::iter::repeat_n(fault, k));
        self
    }

    /// The `n`-th callout of this host (counting from 1) fails as given.
    pub fn nth_callout(&self, n: u64, fault: CalloutFault) -> &Self {
        lock(self.process).faults.nth_callout.insert(n, fault);
        self
    }

    /// The next `k` "queue ready" callbacks are never delivered (the items stay queued).
    pub fn lose_queue_ready(&self, k: usize) -> &Self {
        lock(self.process).faults.lost_queue_ready += k;
        self
    }

    /// Of the next calls on a request or response body (its status, a read, a write), the
    /// first `skip` are done as asked and the one after fails with `status`, changing nothing.
    pub fn fail_body_call_after(&self, skip: usize, status: Status) -> &Self {
        let mut p = lock(self.process);
        p.faults.body_faults.extend(std::iter::repeat_n(None, skip));
        p.faults.body_faults.push_back(Some(status));
        self
    }

    /// The next `k` clock readings (any worker) fail with `InternalFailure`, writing nothing.
    pub fn fail_clock_reads(&self, k: usize) -> &Self {
        lock(self.process).faults.clock_faults += k;
        self
    }

    /// The next `k` Redis calls fail, time out, or are rejected.
    pub fn next_redis_calls(&self, k: usize, fault: CalloutFault) -> &Self {
        lock(self.process).faults.redis_faults.extend(std::iter::repeat_n(fault, k));
        self
    }
}
