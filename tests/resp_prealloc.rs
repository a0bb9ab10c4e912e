//! The RESP reader reserves memory in proportion to the bytes it received, never to the element
//! counts a reply merely declares. Measured with a counting allocator, which is why this lives
//! in its own test binary: the allocator counts every allocation of the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sluice::redis::wire::{resp_replies, Reply};

struct Counting;

thread_local! {
    // Per thread, so the test harness' other threads do not disturb a measurement.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + layout.size();
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes held at once while `f` runs, beyond what was held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

/// A buffer of `total` bytes that opens with `head` and holds no further complete reply.
fn padded(head: &[u8], total: usize) -> Vec<u8> {
    let mut buf = head.to_vec();
    buf.resize(total, b'x');
    buf
}

const MIB: usize = 1 << 20;

/// What one array may reserve: one `Reply` per 3 bytes that follow its header.
fn one_array_bound(bytes: usize) -> usize {
    bytes / 3 * std::mem::size_of::<Reply>()
}

#[test]
fn a_count_larger_than_the_bytes_can_hold_reserves_nothing() {
    // One million elements declared in 1 MiB: fewer than the buffer's length (so the old check
    // let it through and reserved 32 MB), more than 1 MiB / 3 (so it cannot be a real reply).
    let buf = padded(b"*1000000\r\n", MIB);
    let (result, peak) = peak_during(|| resp_replies(&buf, 1));
    assert!(result.is_err());
    assert!(peak < 4096, "reserved {peak} bytes for a reply that cannot be complete");
}

#[test]
fn a_count_the_bytes_could_hold_reserves_at_most_one_reply_per_three_bytes() {
    let buf = padded(b"*300000\r\n", MIB);
    let (result, peak) = peak_during(|| resp_replies(&buf, 1));
    assert!(result.is_err());
    assert!(peak <= one_array_bound(MIB) + 4096, "reserved {peak} bytes for {MIB} bytes received");
}

#[test]
fn nested_counts_stay_within_a_fixed_multiple_of_the_bytes() {
    // Every level declares as much as the bytes could hold; nesting is capped (8 levels below
    // the top), so the reservations add up to at most nine single-array bounds.
    let mut head = Vec::new();
    for _ in 0..9 {
        head.extend_from_slice(b"*340000\r\n");
    }
    let buf = padded(&head, MIB);
    let (result, peak) = peak_during(|| resp_replies(&buf, 1));
    assert!(result.is_err());
    assert!(peak <= 9 * one_array_bound(MIB) + 4096, "reserved {peak} bytes for {MIB} bytes received");
}

#[test]
fn a_real_reply_still_parses() {
    let (result, _) = peak_during(|| resp_replies(b"*2\r\n:1\r\n$2\r\nok\r\n", 1));
    assert_eq!(result.unwrap(), vec![Reply::Array(vec![Reply::Int(1), Reply::Str("ok".into())])]);
}
