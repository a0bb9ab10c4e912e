//! Redis side: one shared connection to a standalone server or a Redis Cluster, how calls and
//! pipelines are run on it, and how sluice's decision script gets into Redis.
//!
//! **How calls run** (`--redis-calls`): as the native command of sluice's Redis module where
//! every primary has it loaded (`redis-module/`; the operator loads it, the gateway cannot),
//! else as `FCALL` of sluice's function library where Redis has functions (Redis 7 and later;
//! on a Cluster, every primary), else as `EVALSHA` of its script. `auto` (the default) finds
//! out with the first probe that reaches Redis: `COMMAND INFO` of the module's command on
//! every primary, then `FUNCTION LOAD`: answered means `FCALL` from then on; an unknown command
//! (before Redis 7), or another refusal that asking again cannot change, means `EVALSHA` (see
//! `refused_for_good`). Until then (Redis down at start, or not able to take the library
//! yet: loading its data, busy, out of memory), calls run as `EVALSHA`, which every Redis runs,
//! and the next health probe or NOSCRIPT asks again. A module call answered
//! "unknown command" (a restart without the module, a failover to a node without it) did not
//! run: `auto` finds out again and runs it the way found, so all three share Redis' keys. One
//! answered `NOPERM` (the gateway's Redis user may not run it) did not run either: `auto` then
//! runs calls on the library without asking about the module again.
//!
//! **A pipeline is one batch** where calls run as `FCALL` or as the module's (`--batch-calls`,
//! on by default): its calls, on a Cluster those of one slot, go as one `FCALL` of the
//! library's batch function (or one call of the module's batch command),
//! decided in order as if one after another. A batch that finds the library missing is handled
//! as one call: it did not run, so it runs again after the load; missing again, its calls run
//! one by one as below.
//!
//! **The gateway loads what it calls**, so a client never has to send the script's text: at
//! start (best effort, Redis may be down; on a Cluster on every primary), and whenever a call
//! finds it missing: `NOSCRIPT`, or `ERR Function not found` (a restarted Redis, a `SCRIPT
//! FLUSH` or `FUNCTION FLUSH`, a failover to a node that never had it: Redis passes functions
//! on to replicas, scripts not). Then it loads it where that call went and runs the call once
//! more; a call that found its script or function missing did not run, so running it again
//! cannot count a request twice. Neither error reaches the client. Concurrent calls that find
//! it missing on one target share one load. On a Cluster "where that call went" is the slot's
//! primary in the client's slot map, which can lag behind the redirect the call followed (see
//! [`Backend::run`]): a call that finds it missing again then runs as `EVAL` of the gateway's
//! own script, which goes wherever Redis sends the call.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{IntoConnectionInfo, RedisError, Value};
use tokio::sync::OnceCell;

use crate::command::{batch_call, library, library_name, module_command, sha, work_runs, Command, RunAs};
use crate::config::RedisCalls;
use crate::lock;
use crate::metrics::{LoadTrigger, Metrics};
use crate::reply::server_error_text;

/// Why a command has no reply value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Redis answered with an error reply; its text, code first.
    Reply(String),
    /// No answer from Redis: connection refused or lost, node unreachable, protocol error.
    Transport(String),
}

pub type Outcome = Result<Value, Failure>;

/// A Redis address as it may be logged: without the credentials it can carry, in its user
/// part (`redis://user:pass@host`) or in its query (`redis+unix:///sock?pass=...`).
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (url, ""),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***@{}{query}", &url[..scheme_end], &url[at + 1..]),
        _ => format!("{url}{query}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid Redis address {url:?}: {source}")]
    Url { url: String, source: RedisError },
    #[error("--cluster-nodes names no node")]
    NoClusterNodes,
    #[error("cannot set up the Redis Cluster client: {0}")]
    Cluster(RedisError),
}

/// Where commands go. Cloning is cheap: clones share one multiplexed connection, one record
/// of loads and one choice of how calls run.
#[derive(Clone)]
pub struct Backend {
    conn: Conn,
    loads: Arc<Loads>,
    calls: Arc<Calls>,
    /// Bounds each load, so that its outcome is always counted.
    timeout: Duration,
    /// `--batch-calls`: with FCALL, a pipeline's calls (on a Cluster, one slot's) go as one
    /// FCALL of the batch function.
    batch: bool,
}

/// How calls run: `--redis-calls`, and for `auto` what the first load that reached Redis
/// found.
struct Calls {
    mode: RedisCalls,
    found: AtomicU8,
}

/// How much longer than a request's own deadline the Cluster client waits for an answer: the
/// caller gives up first, and the client resends a command whose answer timed out only while
/// its caller still waits (one that may have run would otherwise run again, unasked for).
const CALLER_FIRST: Duration = Duration::from_millis(100);

/// TCP to Redis: a peer that vanished without a word (a host powered off, a partition) is
/// found out in seconds, not after the kernel's retransmissions (some 15 minutes):
/// unacknowledged data fails the socket after `USER_TIMEOUT`, an idle connection is probed
/// after `KEEPALIVE_IDLE`. The client then reconnects, and on a Cluster learns the topology
/// again. Nagle stays on: with it, commands written while others are out go in fewer
/// segments (turning it off cost the gateway 7% more CPU per request, every pair of a
/// same-run A/B higher).
fn tcp_settings() -> TcpSettings {
    const USER_TIMEOUT: Duration = Duration::from_secs(3);
    const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(Duration::from_secs(1)).with_retries(3);
    TcpSettings::default().set_keepalive(keepalive).set_user_timeout(USER_TIMEOUT)
}

const NOT_YET: u8 = 0;
const FOUND_FUNCTIONS: u8 = 1;
const FOUND_NO_FUNCTIONS: u8 = 2;
const FOUND_MODULE: u8 = 3;

impl Calls {
    fn new(mode: RedisCalls) -> Self {
        Calls { mode, found: AtomicU8::new(NOT_YET) }
    }

    fn run_as(&self) -> RunAs {
        match self.mode {
            RedisCalls::Evalsha => RunAs::EvalSha,
            RedisCalls::Fcall => RunAs::Fcall,
            RedisCalls::Module => RunAs::Module,
            RedisCalls::Auto => match self.found.load(Ordering::Acquire) {
                FOUND_FUNCTIONS => RunAs::Fcall,
                FOUND_MODULE => RunAs::Module,
                _ => RunAs::EvalSha,
            },
        }
    }

    /// `auto`, and no load has reached Redis yet.
    fn undecided(&self) -> bool {
        self.mode == RedisCalls::Auto && self.found.load(Ordering::Acquire) == NOT_YET
    }

    /// `auto` found the module, which no longer holds (gone, or refused): undecided again.
    /// Only the module: a concurrent finding out may have just found something else.
    fn forget_module(&self) {
        let _ = self.found.compare_exchange(FOUND_MODULE, NOT_YET, Ordering::AcqRel, Ordering::Acquire);
    }

    fn found(&self, run_as: RunAs) {
        let found = match run_as {
            RunAs::Module => FOUND_MODULE,
            RunAs::Fcall => FOUND_FUNCTIONS,
            RunAs::EvalSha => FOUND_NO_FUNCTIONS,
        };
        self.found.store(found, Ordering::Release);
    }
}

/// Why a call did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// Redis lacks what the call names: `NOSCRIPT` for `EVALSHA`, `Function not found` for
    /// `FCALL`.
    Missing(RunAs),
    /// `FCALL` is an unknown command: the server has no functions (replaced by an older one).
    NoFunctions,
    /// The module's command is an unknown command: the node has no sluice module (of this
    /// version).
    NoModule,
    /// The module's command is refused to the gateway's Redis user (`NOPERM`: Redis 7.0 gives
    /// module commands no ACL category, so a user allowed `@scripting` or `FCALL` is not
    /// allowed them).
    ModuleRefused,
}

#[derive(Clone)]
enum Conn {
    /// `ConnectionManager` multiplexes every request over one connection and reconnects
    /// by itself after Redis restarts.
    Standalone(ConnectionManager),
    /// The cluster connection routes by slot and follows MOVED/ASK; it is created on first use
    /// so the gateway can start (and answer /healthz with 503) while the cluster is down.
    Cluster(Arc<ClusterBackend>),
}

pub struct ClusterBackend {
    client: ClusterClient,
    /// The connection calls go on: made on first use, and replaced by one made afresh when
    /// calls keep running out of time ([`ClusterBackend::stalled`]).
    conn: Arc<std::sync::Mutex<Arc<OnceCell<ClusterConnection>>>>,
    stalls: std::sync::Mutex<Stalls>,
    /// Connections made afresh after stalls.
    remade: AtomicU64,
}

/// Requests that ran out of the gateway's timeout lately.
struct Stalls {
    count: u32,
    /// When the first of `count` stalled.
    since: Instant,
    /// When the connection was last made afresh (or the backend built).
    remade_at: Instant,
}

/// A connection is made afresh after this many requests ran out of `--timeout-ms` within
/// [`STALL_WINDOW`], at most once per [`REMAKE_EVERY`] (a client that gives up first, as the
/// filter does at its own shorter timeout, is not counted: that says nothing of Redis). The cluster client learns a new topology from an error
/// (MOVED, a refused or closed connection), and a hung primary gives none: it neither answers
/// nor closes, so calls for its slots went on waiting on it after its replica had taken over,
/// and a slot-map refresh begun meanwhile could wait on it for good, every slot's calls behind
/// it. A fresh connection asks the nodes that answer. Sporadic timeouts on a loaded machine
/// rarely come eight within seconds, and a remake costs a connection per node, once.
const REMAKE_AFTER: u32 = 8;
const STALL_WINDOW: Duration = Duration::from_secs(5);
const REMAKE_EVERY: Duration = Duration::from_secs(2);

/// Where a reload goes: the standalone server (`None`), or the primary serving a Cluster slot.
type Target = Option<u16>;

/// Reloads, one at a time: when Redis loses the script or library, every call in flight finds
/// it missing at once, and one load (some 19 KB) serves them all.
#[derive(Default)]
struct Loads {
    /// Counts loads that succeeded; a call notes it before it is sent.
    generation: AtomicU64,
    /// Per target and what was loaded, the generation its last successful reload made. A call
    /// whose target was reloaded after the call was sent only needs to run again.
    last: tokio::sync::Mutex<HashMap<(Target, RunAs), u64>>,
}

impl Backend {
    /// Builds the client without connecting: a Redis that is down at start is reported by
    /// requests and /healthz, not by a crash loop.
    pub fn standalone(url: &str, timeout: Duration, calls: RedisCalls) -> Result<Self, BackendError> {
        let bad_url = |source| BackendError::Url { url: redact(url), source };
        let info = url.into_connection_info().map_err(bad_url)?.set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info).map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // As on a Cluster, the caller gives up first: a Redis that stops answering is a
            // timeout (504), not the client's own error racing the deadline (502).
            .set_response_timeout(Some(timeout + CALLER_FIRST))
            // Requests carry their own deadline; long reconnect loops would only hide that
            // Redis is gone, so retry little and let the next request try again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|source| BackendError::Url { url: redact(url), source })?;
        Ok(Backend {
            conn: Conn::Standalone(manager),
            loads: Arc::default(),
            calls: Arc::new(Calls::new(calls)),
            timeout,
            batch: true,
        })
    }

    pub fn cluster(nodes: &[String], timeout: Duration, calls: RedisCalls) -> Result<Self, BackendError> {
        if nodes.is_empty() {
            return Err(BackendError::NoClusterNodes);
        }
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout + CALLER_FIRST)
            .tcp_settings(tcp_settings())
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
            .build()
            .map_err(BackendError::Cluster)?;
        let now = Instant::now();
        let cluster = Arc::new(ClusterBackend {
            client,
            conn: Arc::default(),
            stalls: std::sync::Mutex::new(Stalls { count: 0, since: now, remade_at: now }),
            remade: AtomicU64::new(0),
        });
        Ok(Backend {
            conn: Conn::Cluster(cluster),
            loads: Arc::default(),
            calls: Arc::new(Calls::new(calls)),
            timeout,
            batch: true,
        })
    }

    /// `--batch-calls` (on unless told otherwise).
    pub fn batching(self, batch: bool) -> Self {
        Backend { batch, ..self }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// How calls run now.
    pub fn runs_as(&self) -> RunAs {
        self.calls.run_as()
    }

    /// Loads what calls run (with `auto`, finding out which) into Redis, on a Cluster into
    /// every primary. (Redis does not pass a loaded script on to replicas, and the client holds
    /// no connection to them: a replica gets the script when, promoted, it first answers
    /// NOSCRIPT.) Counted in the metrics. Each load is bounded by the timeout (so this takes
    /// at most twice that); callers treat a failure as a warning.
    pub async fn load_at_start(&self, metrics: &Metrics) -> Result<RunAs, Failure> {
        match self.calls.mode {
            RedisCalls::Auto => self.detect(LoadTrigger::Start, metrics).await,
            RedisCalls::Module => match self.module_everywhere().await? {
                true => Ok(RunAs::Module),
                false => Err(no_module()),
            },
            mode => {
                let run_as = if mode == RedisCalls::Fcall { RunAs::Fcall } else { RunAs::EvalSha };
                let loaded = self.load(run_as, every_primary()).await;
                metrics.load(run_as, LoadTrigger::Start, loaded.is_ok());
                loaded.map(|()| run_as)
            }
        }
    }

    /// `auto`: asks every primary for the module's command. All have it: calls run as the
    /// module's. Else tries the library on every primary. Loaded: calls run as `FCALL`.
    /// Refused for good (no functions before Redis 7, or a server that will not take it; see
    /// [`refused_for_good`]): calls run as `EVALSHA`, and the script is loaded instead. No
    /// answer, or an error reply that may not hold for long (`LOADING`, `BUSY`, `OOM`...):
    /// still undecided, the failure returned.
    async fn detect(&self, trigger: LoadTrigger, metrics: &Metrics) -> Result<RunAs, Failure> {
        match self.module_everywhere().await {
            Ok(true) => {
                self.calls.found(RunAs::Module);
                return Ok(RunAs::Module);
            }
            Ok(false) => {}
            // No answer: the library's load below finds the same and is counted as failed.
            Err(Failure::Transport(_)) => {}
            // A server that will not say (COMMAND refused by an ACL): try the library.
            Err(Failure::Reply(text)) => log::warn!("cannot ask Redis for sluice's module ({text})"),
        }
        self.detect_library(trigger, metrics).await
    }

    /// The library part of [`Backend::detect`]: `FCALL` where it loads, `EVALSHA` where Redis
    /// refuses it for good. Not able to take it now: undecided again (a module found before,
    /// now gone or refused, no longer holds), so that calls run as `EVALSHA` meanwhile.
    async fn detect_library(&self, trigger: LoadTrigger, metrics: &Metrics) -> Result<RunAs, Failure> {
        match self.load(RunAs::Fcall, every_primary()).await {
            Ok(()) => {
                metrics.load(RunAs::Fcall, trigger, true);
                self.calls.found(RunAs::Fcall);
                Ok(RunAs::Fcall)
            }
            Err(Failure::Reply(text)) if !refused_for_good(&text) => {
                metrics.load(RunAs::Fcall, trigger, false);
                log::warn!("Redis cannot take sluice's function library now ({text}): calls run as EVALSHA until it can");
                self.calls.forget_module();
                Err(Failure::Reply(text))
            }
            Err(Failure::Reply(text)) => {
                if is_unknown_command(&text) {
                    log::info!("Redis has no functions (before Redis 7): calls run as EVALSHA");
                } else {
                    metrics.load(RunAs::Fcall, trigger, false);
                    log::warn!("Redis refused sluice's function library ({text}): calls run as EVALSHA");
                }
                self.calls.found(RunAs::EvalSha);
                let loaded = self.load(RunAs::EvalSha, every_primary()).await;
                metrics.load(RunAs::EvalSha, trigger, loaded.is_ok());
                loaded.map(|()| RunAs::EvalSha)
            }
            Err(transport) => {
                metrics.load(RunAs::Fcall, trigger, false);
                Err(transport)
            }
        }
    }

    /// Whether every primary knows the module's command (`COMMAND INFO` answers it, not nil).
    /// Bounded by the timeout.
    async fn module_everywhere(&self) -> Result<bool, Failure> {
        let mut cmd = redis::cmd("COMMAND");
        cmd.arg("INFO").arg(module_command());
        let every = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::CombineArrays)));
        match self.bounded(self.routed(cmd, every)).await? {
            Value::Array(infos) => Ok(!infos.is_empty() && infos.iter().all(|info| *info != Value::Nil)),
            other => Err(Failure::Reply(format!("ERR sluice-gateway: COMMAND INFO answered {other:?}"))),
        }
    }

    /// `work`, bounded by the timeout: past it, a transport failure.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => Err(Failure::Transport(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// The gateway's own command, where `routing` says on a Cluster (the standalone server
    /// otherwise).
    async fn routed(&self, cmd: redis::Cmd, routing: RoutingInfo) -> Outcome {
        match &self.conn {
            Conn::Standalone(manager) => settle(manager.clone().req_packed_command(&cmd).await),
            Conn::Cluster(cluster) => settle(cluster.connection().await?.route_command(cmd, routing).await),
        }
    }

    /// A request ran out of the gateway's timeout (on a Cluster, a sign that a node hangs:
    /// [`ClusterBackend::stalled`]).
    pub fn timed_out(&self) {
        if let Conn::Cluster(cluster) = &self.conn {
            cluster.stalled();
        }
    }

    /// Cluster connections made afresh because calls kept running out of time (`None` for a
    /// standalone Redis).
    pub fn cluster_remakes(&self) -> Option<u64> {
        match &self.conn {
            Conn::Standalone(_) => None,
            Conn::Cluster(cluster) => Some(cluster.remade.load(Ordering::Relaxed)),
        }
    }

    /// Runs one call, reloading the script or library once if Redis lost it. Callers bound the
    /// wait with their own timeout.
    ///
    /// On a Cluster the load goes to the primary the client's slot map names for the call's
    /// slot, which need not be the node that answered: right after a failover the client
    /// follows MOVED to the new primary while its map, read from a node that has not heard
    /// yet, still names the old one (and during a migration ASK sends the call on, leaving the
    /// map as it is). The call, run again, then finds it missing again. It still did not run,
    /// so it runs once more as `EVAL` of the gateway's own script: routed and redirected like
    /// the call, it runs where Redis sends it, and leaves the script cached there.
    pub async fn run(&self, cmd: &Command, metrics: &Metrics) -> Outcome {
        let seen = self.loads.generation.load(Ordering::Acquire);
        let run_as = self.calls.run_as();
        let target = if self.is_cluster() { cmd.slot() } else { None };
        let first = self.send(&cmd.to_redis(run_as), run_as, target, metrics).await;
        let Some(missing) = lost(&first, run_as) else {
            return first;
        };
        let run_as = self.recover(missing, target, seen, metrics).await?;
        let again = self.send(&cmd.to_redis(run_as), run_as, target, metrics).await;
        if target.is_none() || lost(&again, run_as).is_none() {
            return after_reload(again, run_as);
        }
        metrics.eval_call();
        self.following(&cmd.to_eval(), None, metrics).await
    }

    /// Runs a pipeline; the result has one outcome per command, in request order.
    pub async fn run_pipeline(&self, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        match &self.conn {
            Conn::Standalone(manager) => {
                let mut out = Vec::with_capacity(cmds.len());
                for run in work_runs(cmds) {
                    let part = &cmds[run];
                    if self.batches(part.len()) {
                        if let Some(done) = self.try_batch(&part.iter().collect::<Vec<_>>(), None, metrics).await {
                            out.extend(done);
                            continue;
                        }
                    }
                    out.extend(self.standalone_pipeline(manager, part, metrics).await);
                }
                out
            }
            Conn::Cluster(_) => self.cluster_pipeline(cmds, metrics).await,
        }
    }

    /// Whether `calls` calls (on a Cluster, of one slot) go as one batch: batching on, two or
    /// more calls, and calls running as FCALL or as the module's.
    fn batches(&self, calls: usize) -> bool {
        self.batch && calls >= 2 && self.calls.run_as().batches()
    }

    /// Runs `cmds` (on a Cluster all of slot `target`) as one FCALL of the batch function, or
    /// one call of the module's batch command. `None` when the batch did not run and its calls
    /// must run one by one: what it called was found missing and, after a reload (or finding
    /// out anew), missing again (so nothing is counted twice), calls now run as EVALSHA, or
    /// Redis answered TRYAGAIN (a migrating slot whose keys the batch names on both sides).
    async fn try_batch(&self, cmds: &[&Command], target: Target, metrics: &Metrics) -> Option<Vec<Outcome>> {
        let seen = self.loads.generation.load(Ordering::Acquire);
        let run_as = self.calls.run_as();
        // Calls may have turned to EVALSHA since the caller asked.
        if !run_as.batches() {
            return None;
        }
        metrics.batch(cmds.len() as u64);
        let mut outcome = self.send(&batch_call(cmds, run_as), run_as, target, metrics).await;
        if let Some(missing) = lost(&outcome, run_as) {
            match self.recover(missing, target, seen, metrics).await {
                Ok(again) if again.batches() => {
                    metrics.batch(cmds.len() as u64);
                    outcome = self.send(&batch_call(cmds, again), again, target, metrics).await;
                    if lost(&outcome, again).is_some() {
                        return None;
                    }
                }
                Ok(_) => return None,
                Err(failure) => return Some(vec![Err(failure); cmds.len()]),
            }
        }
        // TRYAGAIN: the slot is migrating and the batch's keys are not all on one side of it.
        // Nothing ran; alone, each call follows its own redirect.
        if matches!(&outcome, Err(Failure::Reply(text)) if text.starts_with("TRYAGAIN")) {
            return None;
        }
        Some(split(outcome, cmds.len()))
    }

    /// Liveness: PING (on Cluster, every primary must answer). The gateway's own command,
    /// never a client's. With `auto` still undecided (no load reached Redis yet), an answered
    /// PING is the moment to find out how calls should run.
    pub async fn ping(&self, metrics: &Metrics) -> Result<(), Failure> {
        self.request(&redis::cmd("PING"), None).await?;
        if self.calls.undecided() {
            // Best effort: a failure is counted and logged, and the next probe tries again.
            let _ = self.detect(LoadTrigger::Start, metrics).await;
        }
        Ok(())
    }

    /// Sends one call. On a Cluster whose slot is migrating, calls of that slot sent at once
    /// were seen to come back with the ASK redirect itself as their answer: the client lost
    /// it. Redis ran nothing for such a call, so it goes again, a few times at most (callers
    /// bound the wait with their own timeout).
    /// The module's commands are unknown to the cluster client, which would route them by
    /// their first argument: they go to the primary of their keys' slot (`target`) instead.
    async fn send(&self, cmd: &redis::Cmd, run_as: RunAs, target: Target, metrics: &Metrics) -> Outcome {
        metrics.redis_calls(run_as, 1);
        let slot = if run_as == RunAs::Module { target } else { None };
        self.following(cmd, slot, metrics).await
    }

    /// [`Backend::request`], sent again while its answer is a lost redirect (see `send`), or
    /// while the node that has the call's slot says the cluster cannot serve it (see
    /// [`cluster_down`]).
    async fn following(&self, cmd: &redis::Cmd, slot: Target, metrics: &Metrics) -> Outcome {
        let give_up = tokio::time::Instant::now() + self.timeout / 2;
        let (mut redirects, mut resends) = (0, 0);
        loop {
            let outcome = self.request(cmd, slot).await;
            if redirected(&outcome) && redirects < REDIRECT_RETRIES {
                redirects += 1;
                metrics.redirect_retry();
                continue;
            }
            let Some(&pause) = CLUSTER_DOWN_PAUSES.get(resends).filter(|_| cluster_down(&outcome)) else {
                return outcome;
            };
            let pause = jittered(pause);
            if tokio::time::Instant::now() + pause >= give_up {
                return outcome;
            }
            resends += 1;
            metrics.cluster_down_retry();
            tokio::time::sleep(pause).await;
        }
    }

    /// On a Cluster, to the primary of `slot` when given (redirects still followed), else where
    /// the client routes the command by its keys.
    async fn request(&self, cmd: &redis::Cmd, slot: Target) -> Outcome {
        match &self.conn {
            Conn::Standalone(manager) => {
                let mut conn = manager.clone();
                settle(conn.req_packed_command(cmd).await)
            }
            Conn::Cluster(cluster) => match slot {
                Some(slot) => self.routed(cmd.clone(), slot_primary(slot)).await,
                None => settle(cluster.connection().await?.req_packed_command(cmd).await),
            },
        }
    }

    /// `SCRIPT LOAD` or `FUNCTION LOAD REPLACE`, where `routing` says on a Cluster; checks that
    /// Redis names what it loaded as the gateway calls it. Bounded by the timeout.
    async fn load(&self, what: RunAs, routing: RoutingInfo) -> Result<(), Failure> {
        self.bounded(self.load_unbounded(what, routing)).await
    }

    async fn load_unbounded(&self, what: RunAs, routing: RoutingInfo) -> Result<(), Failure> {
        let (cmd, expected) = match what {
            RunAs::EvalSha => (redis::cmd("SCRIPT").arg("LOAD").arg(sluice::redis::script::SCRIPT).clone(), sha()),
            RunAs::Fcall => (redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(library()).clone(), library_name()),
            // Only Redis' operator can load a module; whether it is there is asked instead.
            RunAs::Module => return Err(no_module()),
        };
        let value = self.routed(cmd, routing).await?;
        let named = match &value {
            Value::BulkString(b) => b.eq_ignore_ascii_case(expected.as_bytes()),
            Value::SimpleString(s) => s.eq_ignore_ascii_case(expected),
            _ => false,
        };
        if named {
            Ok(())
        } else {
            let what = if what == RunAs::Fcall { "FUNCTION LOAD" } else { "SCRIPT LOAD" };
            Err(Failure::Reply(format!("ERR sluice-gateway: {what} answered {value:?}, not {expected}")))
        }
    }

    /// After a call did not run (`lost`) on `target`: loads what it needs there, unless another
    /// call did so after this one was sent (`seen`), and says how to run it again. With `auto`
    /// still undecided, a NOSCRIPT is when Redis is first seen up: the library is tried first.
    /// Where finding out leaves `auto` undecided (Redis cannot take the library now), the call
    /// runs on the script meanwhile.
    async fn recover(&self, lost: Lost, target: Target, seen: u64, metrics: &Metrics) -> Result<RunAs, Failure> {
        let mut last = self.loads.last.lock().await;
        let how = match lost {
            // Another call found it gone (or refused) first, after this one was sent, and found
            // out how calls run now.
            Lost::NoModule | Lost::ModuleRefused
                if self.calls.mode == RedisCalls::Auto
                    && (self.calls.run_as() != RunAs::Module
                        || last.get(&(target, RunAs::Module)).is_some_and(|&done| done > seen)) =>
            {
                return Ok(self.calls.run_as());
            }
            Lost::NoModule if self.calls.mode == RedisCalls::Auto => {
                log::warn!("Redis no longer knows sluice's module command {}: finding out how calls run", module_command());
                let found = self.detect(LoadTrigger::NoScript, metrics).await;
                self.found_out(found, &mut last, target, Some(RunAs::Module))?
            }
            // The module is there, but not for this user: the library, without asking again.
            Lost::ModuleRefused if self.calls.mode == RedisCalls::Auto => {
                log::warn!("Redis refuses sluice's module command {} to this user (NOPERM): calls run on the library", module_command());
                let found = self.detect_library(LoadTrigger::NoScript, metrics).await;
                self.found_out(found, &mut last, target, Some(RunAs::Module))?
            }
            // (A module call is never lost as `Missing`: Redis cannot lack a module's script.)
            Lost::NoModule | Lost::Missing(RunAs::Module) => return Err(no_module()),
            Lost::ModuleRefused => {
                return Err(Failure::Reply(format!(
                    "NOPERM sluice-gateway: Redis refuses {} to the gateway's user; allow it (and sluice.batch.*) in its ACL, or run the gateway with --redis-calls auto",
                    module_command()
                )))
            }
            // (Unless another call, still undecided, loaded the script after this one was sent.)
            Lost::Missing(RunAs::EvalSha)
                if self.calls.undecided() && last.get(&(target, RunAs::EvalSha)).is_none_or(|&done| done <= seen) =>
            {
                let found = self.detect(LoadTrigger::NoScript, metrics).await;
                self.found_out(found, &mut last, target, None)?
            }
            // Another call found functions meanwhile, and loaded the library everywhere.
            Lost::Missing(RunAs::EvalSha) if self.calls.run_as() == RunAs::Fcall => return Ok(RunAs::Fcall),
            Lost::Missing(RunAs::EvalSha) => ControlFlow::Continue((RunAs::EvalSha, LoadTrigger::NoScript)),
            Lost::Missing(RunAs::Fcall) => ControlFlow::Continue((RunAs::Fcall, LoadTrigger::NotFound)),
            Lost::NoFunctions if self.calls.mode == RedisCalls::Auto => {
                if self.calls.run_as() == RunAs::Fcall {
                    log::warn!("Redis no longer knows FCALL (an older server?): calls run as EVALSHA");
                    self.calls.found(RunAs::EvalSha);
                }
                ControlFlow::Continue((RunAs::EvalSha, LoadTrigger::NoScript))
            }
            Lost::NoFunctions => return Err(Failure::Reply(
                "ERR sluice-gateway: Redis has no functions (before Redis 7); run the gateway with --redis-calls auto or evalsha"
                    .into(),
            )),
        };
        let (run_as, trigger) = match how {
            ControlFlow::Break(run_as) => return Ok(run_as),
            ControlFlow::Continue(load) => load,
        };
        if last.get(&(target, run_as)).is_some_and(|&done| done > seen) {
            return Ok(run_as);
        }
        let routing = match target {
            // The node serving the slot is the one that answered.
            Some(slot) => slot_primary(slot),
            None => every_primary(),
        };
        let loaded = self.load(run_as, routing).await;
        metrics.load(run_as, trigger, loaded.is_ok());
        let what = if run_as == RunAs::Fcall { "function library" } else { "script" };
        match loaded {
            Ok(()) => {
                self.note(&mut last, target, [run_as]);
                Ok(run_as)
            }
            Err(Failure::Transport(text)) => Err(Failure::Transport(text)),
            Err(Failure::Reply(text)) => {
                log::warn!("cannot load sluice's {what} after a call found it missing: {text}");
                Err(Failure::Reply(format!("ERR sluice-gateway: cannot load sluice's {what}: {text}")))
            }
        }
    }

    /// What a lost call does once the gateway has found out again how calls run (`found`): run
    /// that way (`Break`), noted for `target` with what was `lost`, so calls sent before take
    /// the answer. If finding out failed with an error reply that left `auto` undecided (Redis
    /// cannot take the library now), it runs on the script meanwhile (`Continue`), loaded like
    /// any other NOSCRIPT's; no answer fails it.
    fn found_out(
        &self,
        found: Result<RunAs, Failure>,
        last: &mut HashMap<(Target, RunAs), u64>,
        target: Target,
        lost: Option<RunAs>,
    ) -> Result<ControlFlow<RunAs, (RunAs, LoadTrigger)>, Failure> {
        match found {
            Ok(run_as) => {
                self.note(last, target, lost.into_iter().chain([run_as]));
                Ok(ControlFlow::Break(run_as))
            }
            Err(Failure::Reply(_)) if self.calls.undecided() => {
                Ok(ControlFlow::Continue((RunAs::EvalSha, LoadTrigger::NoScript)))
            }
            Err(failure) => Err(failure),
        }
    }

    /// Notes what calls on `target` found out (`found`: how they run now, and what they lost),
    /// under one new generation, so that calls sent before this take that answer instead of
    /// finding out again.
    fn note(&self, last: &mut HashMap<(Target, RunAs), u64>, target: Target, found: impl IntoIterator<Item = RunAs>) {
        let generation = self.loads.generation.fetch_add(1, Ordering::AcqRel) + 1;
        for run_as in found {
            last.insert((target, run_as), generation);
        }
    }

    /// One batch, one round trip: Redis runs the calls in order on one connection and answers
    /// each in place, errors included. Calls that found the script or library missing did not
    /// run; they go again, in their order, in a second batch after the reload (so after the
    /// calls that followed them in the first; a script lost half-way through one batch is that
    /// rare).
    async fn standalone_pipeline(&self, manager: &ConnectionManager, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        let seen = self.loads.generation.load(Ordering::Acquire);
        let run_as = self.calls.run_as();
        let mut out = batch(manager, cmds.iter(), run_as, metrics).await;
        let mut lost_kind = None;
        let lost: Vec<usize> = (0..out.len())
            .filter(|&i| match lost(&out[i], run_as) {
                Some(kind) => {
                    lost_kind.get_or_insert(kind);
                    true
                }
                None => false,
            })
            .collect();
        let Some(kind) = lost_kind else {
            return out;
        };
        let again = match self.recover(kind, None, seen, metrics).await {
            Ok(run_as) => batch(manager, lost.iter().filter_map(|&i| cmds.get(i)), run_as, metrics)
                .await
                .into_iter()
                .map(|o| after_reload(o, run_as))
                .collect(),
            Err(failure) => vec![Err(failure); lost.len()],
        };
        for (i, outcome) in lost.into_iter().zip(again) {
            out[i] = outcome;
        }
        out
    }

    /// Pipelines on a cluster cannot go as one batch: calls may live on different nodes. The
    /// calls of one slot go as one batch (or, when they cannot, one by one); every slot's at
    /// once, since each call is atomic on its own, so calls on different slots need no order
    /// among themselves, and waiting a round trip per call of a busy identity (a filter gathers
    /// many into one pipeline) would make the last wait many. They are first polled in their
    /// order, so calls to one node still reach its connection in request order.
    async fn cluster_pipeline(&self, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        let mut slots: Vec<(Option<u16>, Vec<usize>)> = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let slot = cmd.slot();
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => slots.push((slot, vec![i])),
            }
        }
        let groups = slots.iter().map(|(slot, members)| async move {
            let group: Vec<&Command> = members.iter().filter_map(|&i| cmds.get(i)).collect();
            if !self.batches(group.len()) {
                return join_all(group.iter().map(|cmd| self.run(cmd, metrics))).await;
            }
            let mut out = Vec::with_capacity(group.len());
            for run in work_runs(&group) {
                let part = &group[run];
                if self.batches(part.len()) {
                    if let Some(done) = self.try_batch(part, *slot, metrics).await {
                        out.extend(done);
                        continue;
                    }
                }
                // The slot's node lacked the library even after a load: it is being migrated
                // or has just failed over. One at a time, in order: concurrent calls redirected
                // with ASK on one connection were seen to lose their redirect (an ASK error came
                // back).
                for cmd in part {
                    out.push(self.run(cmd, metrics).await);
                }
            }
            out
        });
        let mut out: Vec<Outcome> = vec![Err(Failure::Transport("not run".into())); cmds.len()];
        for ((_, members), outcomes) in slots.iter().zip(join_all(groups).await) {
            for (&i, outcome) in members.iter().zip(outcomes) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = outcome;
                }
            }
        }
        out
    }
}

impl ClusterBackend {
    async fn connection(&self) -> Result<ClusterConnection, Failure> {
        let cell = Arc::clone(&lock(&self.conn));
        // A failed attempt leaves the cell empty, so the next request tries again.
        cell.get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
            .map_err(|e| Failure::Transport(format!("cannot reach the Redis Cluster: {e}")))
    }

    /// A request ran out of the gateway's timeout: after [`REMAKE_AFTER`] of them, a connection
    /// is made afresh, by a task of its own (made by a request, it would be dropped with the
    /// request at its deadline, while a hung node may take longer to give up on), and replaces
    /// the old one once it is up. Calls go on over the old one meanwhile: they would otherwise
    /// all wait for the new one, which connects to every seed node, a hung one too.
    fn stalled(&self) {
        let now = Instant::now();
        {
            let mut s = lock(&self.stalls);
            if now.duration_since(s.since) > STALL_WINDOW {
                (s.count, s.since) = (0, now);
            }
            s.count += 1;
            if s.count < REMAKE_AFTER || now.duration_since(s.remade_at) < REMAKE_EVERY {
                return;
            }
            (s.count, s.since, s.remade_at) = (0, now, now);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        log::warn!("Redis Cluster calls keep running out of time: connecting afresh to learn its topology");
        let (client, slot) = (self.client.clone(), Arc::clone(&self.conn));
        self.remade.fetch_add(1, Ordering::Relaxed);
        runtime.spawn(async move {
            match client.get_async_connection().await {
                Ok(fresh) => *lock(&slot) = Arc::new(OnceCell::new_with(Some(fresh))),
                Err(e) => log::warn!("cannot connect afresh to the Redis Cluster: {e}"),
            }
        });
    }
}

async fn batch<'a>(
    manager: &ConnectionManager,
    cmds: impl Iterator<Item = &'a Command>,
    run_as: RunAs,
    metrics: &Metrics,
) -> Vec<Outcome> {
    let mut pipe = redis::pipe();
    let mut n = 0;
    for c in cmds {
        pipe.add_command(c.to_redis(run_as));
        n += 1;
    }
    metrics.redis_calls(run_as, n as u64);
    let mut conn = manager.clone();
    match conn.req_packed_commands(&pipe, 0, n).await {
        Ok(values) if values.len() == n => values.into_iter().map(|v| settle(Ok(v))).collect(),
        Ok(values) => {
            let msg = format!("redis answered {} replies to {n} commands", values.len());
            vec![Err(Failure::Transport(msg)); n]
        }
        Err(e) => vec![Err(failure(e)); n],
    }
}

/// A batch's reply, one outcome per call: its array of replies, each an answer or an error of
/// that call alone; anything else (the batch's own error, no answer) is every call's.
fn split(outcome: Outcome, calls: usize) -> Vec<Outcome> {
    match outcome {
        Ok(Value::Array(replies)) if replies.len() == calls => replies.into_iter().map(|v| settle(Ok(v))).collect(),
        Ok(other) => {
            let msg = format!("ERR sluice-gateway: a batch of {calls} calls answered {other:?}");
            vec![Err(Failure::Reply(msg.chars().take(200).collect())); calls]
        }
        Err(failure) => vec![Err(failure); calls],
    }
}

/// The primary serving `slot`.
fn slot_primary(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)))
}

/// `--redis-calls module`, and a primary lacks the module.
fn no_module() -> Failure {
    Failure::Reply(format!(
        "ERR sluice-gateway: Redis does not know {} (load sluice's module, libsluice_redis.so of this version, into every primary, or run the gateway with --redis-calls auto)",
        module_command()
    ))
}

/// Every primary, each of which must succeed. A primary that fails does not keep the others
/// from getting the command: all are sent before any answer is awaited.
fn every_primary() -> RoutingInfo {
    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)))
}

/// Why a call that ran as `run_as` did not run, if it did not.
fn lost(outcome: &Outcome, run_as: RunAs) -> Option<Lost> {
    let Err(Failure::Reply(text)) = outcome else {
        return None;
    };
    match run_as {
        RunAs::EvalSha if text.starts_with("NOSCRIPT") => Some(Lost::Missing(RunAs::EvalSha)),
        RunAs::Fcall if text.starts_with("ERR Function not found") => Some(Lost::Missing(RunAs::Fcall)),
        RunAs::Fcall if is_unknown_command(text) => Some(Lost::NoFunctions),
        RunAs::Module if is_unknown_command(text) => Some(Lost::NoModule),
        RunAs::Module if text.starts_with("NOPERM") => Some(Lost::ModuleRefused),
        _ => None,
    }
}

/// How many times a call answered with a lost redirect goes again (see `Backend::send`).
const REDIRECT_RETRIES: usize = 3;

/// Whether Redis answered a redirect (the call ran nowhere) that the client did not follow.
fn redirected(outcome: &Outcome) -> bool {
    matches!(outcome, Err(Failure::Reply(text)) if text.starts_with("ASK ") || text.starts_with("MOVED "))
}

/// The waits before a call answered `CLUSTERDOWN` goes again, each shortened by up to half at
/// random ([`jittered`]), so that calls refused together do not come back together. Three
/// sends more at most: each is itself sent up to three times by the cluster client, so a call
/// costs Redis at most twelve cheap refusals.
const CLUSTER_DOWN_PAUSES: [Duration; 3] = [Duration::from_millis(20), Duration::from_millis(40), Duration::from_millis(80)];

/// `pause` shortened by up to half at random. Each `RandomState` hashes with other keys (drawn
/// once per thread, then stepped), which is all the randomness a spread of retries needs.
fn jittered(pause: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    let draw = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let half = pause / 2;
    half + Duration::from_micros(draw % u64::try_from(half.as_micros()).unwrap_or(u64::MAX).saturating_add(1))
}

/// Whether Redis answered `CLUSTERDOWN`: the node that got the call holds no owner for its slot
/// (`Hash slot not served`) or finds the cluster failed. Redis checks that before it runs a
/// command (a script's own calls report it as `ERR`, never as this code), so the call ran
/// nowhere and may go again. During a coordinated failover a node was seen to answer it for
/// longer than the cluster client's own two short waits; a call sent again then still gets a
/// decision. The gateway gives up after [`CLUSTER_DOWN_PAUSES`], or sooner at half its timeout,
/// so that a cluster that stays down is answered with Redis' reason, not a timeout, and the
/// filter follows `on_error` in time.
fn cluster_down(outcome: &Outcome) -> bool {
    matches!(outcome, Err(Failure::Reply(text)) if text.starts_with("CLUSTERDOWN"))
}

fn is_unknown_command(text: &str) -> bool {
    text.starts_with("ERR unknown command")
}

/// Whether Redis' error reply to `FUNCTION LOAD` of sluice's library (`text`, code first) will
/// not change however often it is asked, so that `auto` runs calls as `EVALSHA` from then on:
///
/// - `ERR`, Redis' code for a command it will not run as given: `FUNCTION` unknown (no functions,
///   before Redis 7), or this library refused (it does not compile there, a function of the same
///   name is in another library, no Lua engine; or an answer the gateway cannot read). The
///   library is the gateway's own, so asking again gets the same answer. Except `ERR max number
///   of clients reached`: a full server, which takes the next connection once one closes.
/// - `NOPERM`: the gateway's Redis user may not load functions. Only an operator changes that,
///   and the same user may well run the script.
///
/// Every other code names a state that passes or that an operator clears while the gateway
/// runs: `LOADING` (Redis reads its data, and answers `COMMAND INFO` meanwhile), `BUSY` (a
/// script runs long), `OOM` (`FUNCTION LOAD` is refused past `maxmemory`), `MISCONF`,
/// `NOREPLICAS`, `READONLY` and `MASTERDOWN` (a replica, or one cut off from its primary, as
/// during a failover), `CLUSTERDOWN`, `TRYAGAIN`, `NOAUTH` and `WRONGPASS`; so does any code not
/// known here. Those leave `auto` undecided, to ask again.
fn refused_for_good(text: &str) -> bool {
    match text.split(' ').next() {
        Some("ERR") => !text.starts_with("ERR max number of clients reached"),
        Some("NOPERM") => true,
        _ => false,
    }
}

/// The second try's outcome. Missing again means Redis dropped it between the load and the
/// call; the client must not read a NOSCRIPT as its cue to send the script's text.
fn after_reload(outcome: Outcome, run_as: RunAs) -> Outcome {
    if lost(&outcome, run_as).is_some() {
        let what = match run_as {
            RunAs::Fcall => "function library",
            RunAs::EvalSha => "script",
            RunAs::Module => "module",
        };
        return Err(Failure::Reply(format!("ERR sluice-gateway: Redis lost sluice's {what} again right after it was loaded")));
    }
    outcome
}

fn settle(result: Result<Value, RedisError>) -> Outcome {
    match result {
        Ok(Value::ServerError(e)) => Err(Failure::Reply(server_error_text(&e))),
        Ok(v) => Ok(v),
        Err(e) => Err(failure(e)),
    }
}

/// Error replies may also arrive as `Err` (the cluster client inspects them for MOVED/ASK);
/// they still are Redis' own answer and keep their text.
fn failure(e: RedisError) -> Failure {
    if let Some(errors) = e.clone().into_server_errors() {
        if let Some((_, server)) = errors.first() {
            return Failure::Reply(server_error_text(server));
        }
    }
    Failure::Transport(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    const LIBRARY_REPLIES: &[(&str, bool)] = &[
        // No functions: before Redis 7, or FUNCTION renamed away.
        ("ERR unknown command 'FUNCTION', with args beginning with: 'LOAD' 'REPLACE' ", true),
        ("ERR Error compiling function: user_function:1: '=' expected near 'x'", true),
        ("ERR Function sluice already exists", true),
        ("ERR sluice-gateway: FUNCTION LOAD answered Int(1), not sluice_x", true),
        ("NOPERM User gw has no permissions to run the 'function|load' command", true),
        ("LOADING Redis is loading the dataset in memory", false),
        ("BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.", false),
        ("OOM command not allowed when used memory > 'maxmemory'.", false),
        ("CLUSTERDOWN The cluster is down", false),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", false),
        ("TRYAGAIN Multiple keys request during rehashing of slot", false),
        ("READONLY You can't write against a read only replica.", false),
        ("NOREPLICAS Not enough good replicas to write.", false),
        ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", false),
        ("NOAUTH Authentication required.", false),
        ("ERR max number of clients reached", false),
        // A code not known here: asked again.
        ("SOMEDAY not now", false),
        ("ERRATIC not the ERR code", false),
    ];

    #[test]
    fn only_replies_that_cannot_change_pin_evalsha() {
        for &(text, for_good) in LIBRARY_REPLIES {
            assert_eq!(refused_for_good(text), for_good, "{text}");
        }
    }
}
