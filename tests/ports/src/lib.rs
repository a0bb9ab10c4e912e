//! Loopback ports for the servers the tests start (Redis nodes, their cluster buses, gateways,
//! Envoy listeners), chosen so that nothing but another test's server can take them.
//!
//! A port the kernel hands out for `bind(:0)` lies in the ephemeral range, the same range it
//! draws the source ports of outgoing connections from. Between choosing such a port and the
//! child process binding it, any client socket on the machine may take it, and the tests open
//! thousands (a Redis Cluster's buses, load loops, the gateway's pools): CI saw `redis-server`
//! exit at start for exactly that. Ports outside the range are taken only by a `bind` to them,
//! and this process never hands the same one out twice.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port offered: below are well-known and registered services' ports.
const LOWEST: u16 = 10_000;
/// Fixed ports of the shipped bootstraps and `scripts/integration.sh` (Envoy's listener at
/// 10000, a Redis Cluster's buses at 17000..17005), which may be running beside the tests.
const RESERVED: [(u16, u16); 2] = [(10_000, 10_000), (17_000, 17_005)];
/// Tries before giving up (each draws a candidate and binds it).
const TRIES: usize = 2_000;

/// Ports this process has handed out: tests run on parallel threads, and two of them drawing
/// the same free port would both start a server on it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The kernel's ephemeral range, `lo..=hi` (Linux' default when it cannot be read).
pub fn ephemeral_ports() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}

/// A loopback port that is free now, outside the ephemeral range, and not handed out before by
/// this process. A server may be stopped and started again on it.
pub fn free_port() -> u16 {
    free_base(&[0])
}

/// `n` distinct ports, each as [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// A base port `b` such that every `b + offset` is as [`free_port`] describes, for tools that
/// place their servers at fixed offsets (`scripts/redis-cluster.sh`: nodes at +0..+5, buses at
/// +10000..+10005). Panics, naming the range, if none is found.
pub fn free_base(offsets: &[u16]) -> u16 {
    let (lo, hi) = ephemeral_ports();
    let span = offsets.iter().copied().max().unwrap_or(0);
    assert!(span < u16::MAX - LOWEST, "offsets {offsets:?} span more ports than there are");
    let top = u16::MAX - span;
    let reserved = |p: u16| RESERVED.iter().any(|(a, b)| (*a..=*b).contains(&p));
    let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut draw = seed();
    // Outside the ephemeral range first; a machine whose range covers (nearly) every port gets
    // ports inside it rather than none.
    for outside_only in [true, false] {
        let usable = |p: u16| p >= LOWEST && !reserved(p) && !(outside_only && (lo..=hi).contains(&p));
        for _ in 0..TRIES {
            // A 64-bit LCG step; the high bits are the well-mixed ones.
            draw = draw.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let base = LOWEST + ((draw >> 33) % u64::from(top - LOWEST)) as u16;
            let ports: Vec<u16> = offsets.iter().map(|o| base + o).collect();
            let fits = ports.iter().all(|p| usable(*p) && !handed.contains(p));
            if fits && ports.iter().all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
                handed.extend(ports);
                return base;
            }
        }
    }
    panic!("no free loopback ports at offsets {offsets:?} (ephemeral range {lo}-{hi})");
}

/// Differs between processes started together and between calls in one process.
fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (u64::from(std::process::id()) << 32) ^ u64::from(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the machine's ephemeral range leaves at least `ports` usable ports outside it:
    /// only then are ports outside it promised ([`free_base`] falls back to ports inside).
    fn room_for(ports: usize) -> bool {
        let (lo, hi) = ephemeral_ports();
        (LOWEST..=u16::MAX).filter(|p| !(lo..=hi).contains(p)).count() > ports
    }

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_bindable() {
        let (lo, hi) = ephemeral_ports();
        // 200 ports, drawn at random: a few thousand outside the range make a miss unlikely.
        let room = room_for(5_000);
        let ports = free_ports(200);
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!(p >= LOWEST && !(room && (lo..=hi).contains(&p)), "{p} lies in {lo}-{hi} or below {LOWEST}");
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "{p} is not free");
        }
    }

    #[test]
    fn a_base_leaves_room_for_every_offset() {
        let (lo, hi) = ephemeral_ports();
        // Offsets spanning 10,005 ports must all fit outside the range: promised only where
        // about twice that lies outside it.
        let room = room_for(20_000);
        let base = free_base(&[0, 5, 10_000, 10_005]);
        for o in [0u16, 5, 10_000, 10_005] {
            let p = base + o;
            assert!(!(room && (lo..=hi).contains(&p)), "{p} lies in {lo}-{hi}");
            let handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(handed.contains(&p), "{p} was not recorded as handed out");
        }
    }
}
