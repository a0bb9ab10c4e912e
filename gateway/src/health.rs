//! The answer to `GET /healthz`: one Redis probe at a time, reused for `--health-cache-ms`.
//!
//! `/healthz` needs no token, so anyone who reaches the gateway can call it as often as they
//! like. Were every call a PING, a flood of probes would queue on the one Redis connection that
//! the rate-limit decisions share. Here a call costs Redis nothing while the last probe is
//! recent; when it is not, one call probes and the calls that arrive meanwhile take the
//! previous answer (or, when there is none yet, wait for that one probe).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::{Backend, Failure};
use crate::metrics::Metrics;

/// What one probe found.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// Redis answered PING; the round trip in milliseconds.
    Up { latency_ms: f64 },
    /// No usable answer; why.
    Down(String),
}

/// A finding and its age when it was handed out.
#[derive(Clone, Debug)]
pub struct Report {
    pub finding: Finding,
    pub age: Duration,
}

#[derive(Clone)]
struct Probe {
    finding: Finding,
    at: Instant,
}

#[derive(Default)]
struct Cache {
    last: Option<Probe>,
    /// Counts probes, so that a call which waited for one can tell that it ended.
    generation: u64,
}

pub struct Health {
    ttl: Duration,
    cache: Mutex<Cache>,
    /// Held while a probe runs: the single flight.
    flight: tokio::sync::Mutex<()>,
}

impl Health {
    pub fn new(ttl: Duration) -> Self {
        Health { ttl, cache: Mutex::new(Cache::default()), flight: tokio::sync::Mutex::new(()) }
    }

    /// The current finding: the cached one while fresh, else one new probe's.
    pub async fn check(&self, backend: &Backend, timeout: Duration, metrics: &Metrics) -> Report {
        let seen = self.generation();
        if let Some(report) = self.fresh() {
            return report;
        }
        let _flight = match self.flight.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A probe is running: its predecessor's answer is as good as any.
                if let Some(report) = self.latest() {
                    return report;
                }
                self.flight.lock().await
            }
        };
        // Whoever held the flight before us may have just probed.
        if self.generation() != seen {
            if let Some(report) = self.latest() {
                return report;
            }
        }
        metrics.health_probe();
        let started = Instant::now();
        let finding = match tokio::time::timeout(timeout, backend.ping(metrics)).await {
            Ok(Ok(())) => Finding::Up { latency_ms: started.elapsed().as_secs_f64() * 1000.0 },
            Ok(Err(Failure::Reply(text) | Failure::Transport(text))) => Finding::Down(text),
            Err(_) => Finding::Down(format!("no answer to PING within {} ms", timeout.as_millis())),
        };
        {
            let mut cache = self.cache();
            cache.generation += 1;
            cache.last = Some(Probe { finding: finding.clone(), at: Instant::now() });
        }
        Report { finding, age: Duration::ZERO }
    }

    /// A request saw Redis fail to answer: the cached finding may say "up" for a Redis that is
    /// gone, so the next `/healthz` probes again.
    pub fn invalidate(&self) {
        self.cache().last = None;
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        crate::lock(&self.cache)
    }

    fn generation(&self) -> u64 {
        self.cache().generation
    }

    fn latest(&self) -> Option<Report> {
        self.cache().last.as_ref().map(|p| Report { finding: p.finding.clone(), age: p.at.elapsed() })
    }

    fn fresh(&self) -> Option<Report> {
        self.latest().filter(|r| r.age < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_backend() -> Backend {
        // Port 1 on loopback: nothing listens there, so every probe fails at once.
        Backend::standalone("redis://127.0.0.1:1", Duration::from_millis(200), crate::config::RedisCalls::Auto).unwrap()
    }

    fn probes(m: &Metrics) -> String {
        m.render(&crate::body::Budget::new(0))
            .lines()
            .find(|l| l.starts_with("sluice_gateway_health_probes_total "))
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn reuses_a_fresh_finding_and_probes_again_when_invalidated() {
        let (health, backend, m) = (Health::new(Duration::from_secs(60)), unreachable_backend(), Metrics::default());
        let first = health.check(&backend, Duration::from_millis(500), &m).await;
        assert!(matches!(first.finding, Finding::Down(_)), "{first:?}");
        for _ in 0..20 {
            let again = health.check(&backend, Duration::from_millis(500), &m).await;
            assert_eq!(again.finding, first.finding);
        }
        assert_eq!(probes(&m), "sluice_gateway_health_probes_total 1");
        health.invalidate();
        health.check(&backend, Duration::from_millis(500), &m).await;
        assert_eq!(probes(&m), "sluice_gateway_health_probes_total 2");
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_probe() {
        let (health, backend, m) = (Health::new(Duration::ZERO), unreachable_backend(), Metrics::default());
        // Hold the flight, as a running probe would, while 50 calls arrive.
        let flight = health.flight.lock().await;
        let calls = futures_util::future::join_all((0..50).map(|_| health.check(&backend, Duration::from_millis(500), &m)));
        let release = async {
            tokio::task::yield_now().await;
            drop(flight);
        };
        let (reports, ()) = tokio::join!(calls, release);
        assert!(reports.iter().all(|r| matches!(r.finding, Finding::Down(_))));
        // The first call to get the flight probes; the 49 that waited use its finding.
        assert_eq!(probes(&m), "sluice_gateway_health_probes_total 1");
    }
}
