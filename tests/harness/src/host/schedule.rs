//! Which worker runs next ([`Schedule`]), and running it one bit further: to its next
//! shared-data call or to the end of its callback.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use super::guest::run_call;
use super::steps::Step;
use super::{Host, StepFuture};
use crate::http::RequestId;
use crate::shared::Rng;
use crate::vm::{self, get_park, Point};
use crate::HarnessError;

/// A worker the scheduler may run next, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runnable {
    pub worker: usize,
    /// The request whose callback is running or about to run (none for ticks and root work).
    pub request: Option<RequestId>,
    pub at: Point,
}

/// A test's own scheduling decision: given the runnable workers, an index into the slice.
pub type Picker = Box<dyn FnMut(&[Runnable]) -> usize>;

/// Picks which worker runs next whenever more than one could.
pub enum Schedule {
    /// The lowest-numbered runnable worker; each worker's events in arrival order.
    InOrder,
    /// Switch worker at every opportunity (after each shared-data call), round-robin. With two
    /// workers racing on one key this forces both `get`s before either `set`.
    RoundRobin,
    /// A seeded random choice of worker at every opportunity, and of the next event on a worker.
    Seeded(u64),
    /// Workers in this order, one choice per opportunity; then `InOrder`. A listed worker that
    /// is not runnable is skipped.
    Script(Vec<usize>),
    /// The test decides: given the runnable workers, return an index into the slice.
    Custom(Picker),
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::InOrder => write!(f, "InOrder"),
            Schedule::RoundRobin => write!(f, "RoundRobin"),
            Schedule::Seeded(s) => write!(f, "Seeded({s})"),
            Schedule::Script(v) => write!(f, "Script({v:?})"),
            Schedule::Custom(_) => write!(f, "Custom"),
        }
    }
}

pub(super) enum Sched {
    InOrder,
    RoundRobin { last: usize },
    Seeded(Rng),
    Script(VecDeque<usize>),
    Custom(Picker),
}

impl From<Schedule> for Sched {
    fn from(s: Schedule) -> Self {
        match s {
            Schedule::InOrder => Sched::InOrder,
            Schedule::RoundRobin => Sched::RoundRobin { last: usize::MAX },
            Schedule::Seeded(seed) => Sched::Seeded(Rng::new(seed)),
            Schedule::Script(v) => Sched::Script(v.into()),
            Schedule::Custom(f) => Sched::Custom(f),
        }
    }
}

impl Host {
    pub(super) fn run_ready(&mut self) -> Result<(), HarnessError> {
        while self.step_once()? {}
        Ok(())
    }

    fn runnable(&self) -> Vec<Runnable> {
        let mut out = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            if w.failed.is_some() {
                continue;
            }
            if let Some((step, _)) = &w.inflight {
                out.push(Runnable { worker: i, request: step.request(), at: get_park(&w.park).unwrap_or(Point::Start) });
            } else if let Some(step) = w.queue.front() {
                out.push(Runnable { worker: i, request: step.request(), at: Point::Start });
            }
        }
        out
    }

    /// Runs one worker one bit further (to its next yield point or the end of a callback).
    /// Returns false when no worker can run.
    pub(super) fn step_once(&mut self) -> Result<bool, HarnessError> {
        let runnable = self.runnable();
        if runnable.is_empty() {
            return Ok(false);
        }
        let pick = match &mut self.sched {
            Sched::InOrder => 0,
            Sched::RoundRobin { last } => {
                let i = runnable.iter().position(|r| r.worker > *last).unwrap_or(0);
                *last = runnable[i].worker;
                i
            }
            Sched::Seeded(rng) => rng.below(runnable.len()),
            Sched::Script(order) => {
                let mut chosen = 0;
                while let Some(w) = order.pop_front() {
                    if let Some(i) = runnable.iter().position(|r| r.worker == w) {
                        chosen = i;
                        break;
                    }
                }
                chosen
            }
            Sched::Custom(f) => f(&runnable).min(runnable.len() - 1),
        };
        let w = runnable[pick].worker;
        if self.workers[w].inflight.is_none() {
            let idx = match &mut self.sched {
                Sched::Seeded(rng) => rng.below(self.workers[w].queue.len()),
                _ => 0,
            };
            let Some(step) = self.workers[w].queue.remove(idx) else { return Ok(true) };
            if !self.begin_step(w, step)? {
                return Ok(true);
            }
        }
        self.poll_worker(w)?;
        Ok(true)
    }

    fn poll_worker(&mut self, w: usize) -> Result<(), HarnessError> {
        let Some((_, fut)) = self.workers[w].inflight.as_mut() else { return Ok(()) };
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready((store, result)) = fut.as_mut().poll(&mut cx) {
            let (step, _) = self.workers[w].inflight.take().ok_or_else(|| HarnessError::Internal("lost step".into()))?;
            self.workers[w].store = Some(store);
            vm::set_park(&self.workers[w].park, None);
            match result {
                Ok(v) => self.finish_step(w, step, v),
                Err(e) => self.fail_worker(w, format!("{e:?}")),
            }
        }
        Ok(())
    }

    /// Prepares the guest-visible state for a step and starts its callback. Returns false if
    /// the step needs no callback (it was handled on the spot).
    fn begin_step(&mut self, w: usize, step: Step) -> Result<bool, HarnessError> {
        let root = self.workers[w].root;
        let mut store = self.workers[w].store.take().ok_or_else(|| HarnessError::Internal("worker store missing".into()))?;
        let call = self.prepare(w, &mut store, &step, root);
        let Some(call) = call else {
            self.workers[w].store = Some(store);
            return Ok(false);
        };
        let ex = self.workers[w].ex.clone();
        let fut: StepFuture = Box::pin(async move {
            let r = run_call(&mut store, &ex, call).await;
            (store, r)
        });
        self.workers[w].inflight = Some((step, fut));
        Ok(true)
    }
}
