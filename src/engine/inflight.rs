//! What this worker's requests waiting on Redis will take if they are admitted. A request
//! checked against several rules (a dry pass over its Redis rules, or a read of its local ones
//! before Redis decides) sees nothing of the requests still in flight: none has counted yet.
//! A burst on one connection (HTTP/2: one worker) then passed every check at once, and the
//! rules that admitted it counted requests another rule denied a moment later: a user at 10/s
//! of a tenant's 1000/min spent the tenant's minute with a thousand requests, ten of them
//! served. Checked with what the requests ahead of it hold, a request another rule will deny
//! is turned away before anything counts it.
//!
//! Never admits more: a hold only makes a check stricter. A request turned away for what others
//! held, which another rule then denied, was denied too early: the cost of exactness under
//! concurrency on one worker (across workers and proxies the race stays, as documented).
//! Bounded: holds end with their request's verdict, or by themselves at a deadline no request
//! outlives, and there are at most [`MAX_HOLDS`].

use std::cell::RefCell;
use std::collections::VecDeque;

/// Requests holding at once; past it a request holds nothing (checked as before).
const MAX_HOLDS: usize = 4096;

/// A request's hold: its number, 0 for none. Sixteen bits: a `Pending` of every request
/// carries it, and a larger one is copied at a cost on each move (a wider ticket cost the Redis
/// path some 550 fuel a request). Numbers wrap; the holds alive at once span less than half
/// their range ([`SPAN`]), so their order is that of their distance from the oldest.
pub type Ticket = u16;

/// The widest span of tickets alive at once: an older hold ends early. Its request may still
/// release its number later, by then maybe another's (after 65,535 more): that hold then ends
/// early too, which only makes checks as loose as they were without holds.
const SPAN: u16 = 1 << 15;

/// What one request holds: (rule, identity hash, cost).
type Costs = Vec<(usize, u64, u64)>;

#[derive(Debug, Clone, Default)]
pub struct InFlight {
    inner: RefCell<Holds>,
}

/// An [`InFlight`] made at its first hold. A limiter of local rules alone never makes one, and
/// keeps its size: the local path's work depends on the heap the limiter left (an unused
/// field of this size moved a request no rule applied to by a hundred units of fuel).
#[derive(Debug, Clone, Default)]
pub struct Lazy(std::cell::OnceCell<Box<InFlight>>);

impl Lazy {
    pub fn held(&self, rule: usize, hash: u64, except: Ticket) -> u64 {
        self.0.get().map_or(0, |f| f.held(rule, hash, except))
    }

    pub fn hold(&self, costs: Costs, now_us: u64, until_us: u64) -> Ticket {
        self.0.get_or_init(Box::default).hold(costs, now_us, until_us)
    }

    pub fn release(&self, ticket: Ticket) {
        if let Some(f) = self.0.get() {
            f.release(ticket);
        }
    }

    pub fn keep(&self, ticket: Ticket, keep: impl Fn(usize) -> bool) {
        if let Some(f) = self.0.get() {
            f.keep(ticket, keep);
        }
    }
}

/// Sorted vectors rather than hash maps: a worker has tens of requests in flight, and the maps
/// cost the module 4 KB more.
#[derive(Debug, Clone, Default)]
struct Holds {
    last: Ticket,
    /// The cost held per (rule, identity hash), sorted by it.
    totals: Vec<((usize, u64), u64)>,
    /// Each request's holds and when they end by themselves (epoch µs), in the order they were
    /// made, which is that of their deadlines (one worker's clock never runs back, and a
    /// limiter's timeout is one) and of their tickets counted from the oldest.
    tickets: VecDeque<(Ticket, u64, Costs)>,
}

impl InFlight {
    /// What requests in flight hold of `rule` for the identity `hash`, but `except`'s.
    pub fn held(&self, rule: usize, hash: u64, except: Ticket) -> u64 {
        let holds = self.inner.borrow();
        if holds.tickets.is_empty() {
            return 0;
        }
        let total = holds.totals.binary_search_by_key(&(rule, hash), |(k, _)| *k).map_or(0, |i| holds.totals[i].1);
        let own = holds
            .find(except)
            .map_or(0, |i| holds.tickets[i].2.iter().filter(|(r, h, _)| (*r, *h) == (rule, hash)).map(|(_, _, c)| *c).sum());
        total.saturating_sub(own)
    }

    /// Holds `costs` (rule, identity hash, cost) for a request until [`InFlight::release`] or
    /// `until_us`, whichever comes first; 0 when it cannot hold.
    pub fn hold(&self, costs: Costs, now_us: u64, until_us: u64) -> Ticket {
        let mut holds = self.inner.borrow_mut();
        // Holds whose verdict never came (it cannot happen by the host's contract, but a hold
        // must not outlive its request either way) end at their deadline.
        while holds.tickets.front().is_some_and(|(_, until, _)| *until <= now_us) {
            if let Some((_, _, costs)) = holds.tickets.pop_front() {
                holds.forget(&costs);
            }
        }
        if costs.is_empty() || holds.tickets.len() >= MAX_HOLDS {
            return 0;
        }
        let ticket = match holds.last.wrapping_add(1) {
            0 => 1,
            t => t,
        };
        while holds.tickets.front().is_some_and(|(oldest, _, _)| ticket.wrapping_sub(*oldest) >= SPAN) {
            if let Some((_, _, costs)) = holds.tickets.pop_front() {
                holds.forget(&costs);
            }
        }
        for &(rule, hash, cost) in &costs {
            match holds.totals.binary_search_by_key(&(rule, hash), |(k, _)| *k) {
                Ok(i) => holds.totals[i].1 = holds.totals[i].1.saturating_add(cost),
                Err(i) => holds.totals.insert(i, ((rule, hash), cost)),
            }
        }
        holds.last = ticket;
        holds.tickets.push_back((ticket, until_us, costs));
        ticket
    }

    /// The request of `ticket` holds only what `keep` says of each rule from now on.
    pub fn keep(&self, ticket: Ticket, keep: impl Fn(usize) -> bool) {
        let mut holds = self.inner.borrow_mut();
        let Some(i) = holds.find(ticket) else { return };
        let (kept, dropped): (Costs, Costs) = std::mem::take(&mut holds.tickets[i].2).into_iter().partition(|c| keep(c.0));
        holds.tickets[i].2 = kept;
        holds.forget(&dropped);
    }

    /// The request of `ticket` has its verdict (or is gone): its holds end.
    pub fn release(&self, ticket: Ticket) {
        let mut holds = self.inner.borrow_mut();
        if let Some((_, _, costs)) = holds.find(ticket).and_then(|i| holds.tickets.remove(i)) {
            holds.forget(&costs);
        }
    }
}

impl Holds {
    fn find(&self, ticket: Ticket) -> Option<usize> {
        let oldest = self.tickets.front()?.0;
        let key = |t: Ticket| t.wrapping_sub(oldest);
        (ticket != 0).then(|| self.tickets.binary_search_by_key(&key(ticket), |(t, _, _)| key(*t)).ok()).flatten()
    }

    fn forget(&mut self, costs: &[(usize, u64, u64)]) {
        for &(rule, hash, cost) in costs {
            if let Ok(i) = self.totals.binary_search_by_key(&(rule, hash), |(k, _)| *k) {
                self.totals[i].1 = self.totals[i].1.saturating_sub(cost);
                if self.totals[i].1 == 0 {
                    self.totals.remove(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_add_up_per_rule_and_identity_and_end_with_their_request_or_deadline() {
        let f = InFlight::default();
        assert_eq!(f.held(0, 7, 0), 0);
        let a = f.hold(vec![(0, 7, 2), (1, 9, 2)], 0, 1_000);
        let b = f.hold(vec![(0, 7, 3)], 0, 2_000);
        assert_eq!((f.held(0, 7, 0), f.held(1, 9, 0), f.held(0, 9, 0)), (5, 2, 0));
        assert_eq!(f.held(0, 7, a), 3, "a request's own hold is not ahead of it");
        f.release(a);
        assert_eq!((f.held(0, 7, 0), f.held(1, 9, 0)), (3, 0));
        f.release(a);
        assert_eq!(f.held(0, 7, 0), 3, "released once");
        // Past its deadline, b's hold ends at the next hold.
        assert_eq!(f.held(0, 7, 0), 3);
        f.hold(vec![(5, 1, 1)], 2_000, 4_000);
        assert_eq!(f.held(0, 7, 0), 0, "{b} outlived its deadline");
        assert_eq!(f.hold(Vec::new(), 3_000, 4_000), 0);
    }

    #[test]
    fn at_most_max_holds_are_kept() {
        let f = InFlight::default();
        let tickets: Vec<Ticket> = (0..MAX_HOLDS as u64 + 10).map(|i| f.hold(vec![(0, i, 1)], 0, u64::MAX)).collect();
        assert_eq!(tickets.iter().filter(|t| **t == 0).count(), 10);
        assert_eq!(f.inner.borrow().tickets.len(), MAX_HOLDS);
    }

    #[test]
    fn tickets_wrap_and_an_old_hold_ends_before_its_span_is_passed() {
        let f = InFlight::default();
        let old = f.hold(vec![(0, 1, 1)], 0, u64::MAX);
        // Two hundred thousand requests come and go while the first still waits: numbers wrap
        // past 0 (never given) and each is found to be released.
        for i in 0..200_000u64 {
            let t = f.hold(vec![(1, i, 1)], 0, u64::MAX);
            assert_ne!(t, 0);
            f.release(t);
            assert_eq!(f.held(1, i, 0), 0, "ticket {t} not released");
            if i == 1_000 {
                assert_eq!(f.held(0, 1, 0), 1, "the first still holds");
            }
        }
        // Half the numbers later, the first hold ended rather than be taken for a newer one.
        assert_eq!(f.held(0, 1, 0), 0);
        f.release(old);
        assert!(f.inner.borrow().totals.is_empty());
    }
}
