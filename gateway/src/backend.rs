//! Redis side: one shared connection to a standalone server or a Redis Cluster, how calls and
//! pipelines are run on it, and how the decision script gets into Redis.
//!
//! The gateway loads the script itself, so a client never has to send its text: at start
//! (best effort, Redis may be down; on a Cluster on every primary), and whenever a call meets
//! `NOSCRIPT` (a restarted Redis, a `SCRIPT FLUSH`, a failover to a node that never had it).
//! Then it loads the script where that call went and runs the call once more; a call that got
//! `NOSCRIPT` did not run, so running it again cannot count a request twice. NOSCRIPT itself
//! never reaches the client.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisError, Value};
use tokio::sync::OnceCell;

use crate::command::{sha, Command};
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

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid Redis address {url:?}: {source}")]
    Url { url: String, source: RedisError },
    #[error("--cluster-nodes names no node")]
    NoClusterNodes,
    #[error("cannot set up the Redis Cluster client: {0}")]
    Cluster(RedisError),
}

/// Where commands go. Cloning is cheap: clones share one multiplexed connection and one
/// record of script loads.
#[derive(Clone)]
pub struct Backend {
    conn: Conn,
    loads: Arc<Loads>,
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
    conn: OnceCell<ClusterConnection>,
}

/// Where a reload after NOSCRIPT goes: the standalone server (`None`), or the primary serving
/// a Cluster slot.
type Target = Option<u16>;

/// Reloads after NOSCRIPT, one at a time: when Redis loses the script, every call in flight
/// meets NOSCRIPT at once, and one `SCRIPT LOAD` (some 19 KB) serves them all.
#[derive(Default)]
struct Loads {
    /// Counts loads that succeeded; a call notes it before it is sent.
    generation: AtomicU64,
    /// Per target, the generation its last successful reload made. A call whose target was
    /// reloaded after the call was sent only needs to run again.
    last: tokio::sync::Mutex<HashMap<Target, u64>>,
}

impl Backend {
    /// Builds the client without connecting: a Redis that is down at start is reported by
    /// requests and /healthz, not by a crash loop.
    pub fn standalone(url: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client = redis::Client::open(url).map_err(|source| BackendError::Url { url: url.to_string(), source })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Requests carry their own deadline; long reconnect loops would only hide that
            // Redis is gone, so retry little and let the next request try again.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|source| BackendError::Url { url: url.to_string(), source })?;
        Ok(Backend { conn: Conn::Standalone(manager), loads: Arc::default() })
    }

    pub fn cluster(nodes: &[String], timeout: Duration) -> Result<Self, BackendError> {
        if nodes.is_empty() {
            return Err(BackendError::NoClusterNodes);
        }
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
            .build()
            .map_err(BackendError::Cluster)?;
        let cluster = Arc::new(ClusterBackend { client, conn: OnceCell::new() });
        Ok(Backend { conn: Conn::Cluster(cluster), loads: Arc::default() })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Loads the script into Redis, on a Cluster into every primary. (Redis does not pass a
    /// loaded script on to replicas, and the client holds no connection to them: a replica
    /// gets the script when, promoted, it first answers NOSCRIPT.) Callers bound the wait and
    /// treat a failure as a warning.
    pub async fn load_script(&self) -> Result<(), Failure> {
        self.load(every_primary()).await
    }

    /// Runs one call, reloading the script once if Redis lost it. Callers bound the wait with
    /// their own timeout.
    pub async fn run(&self, cmd: &Command, metrics: &Metrics) -> Outcome {
        let seen = self.loads.generation.load(Ordering::Acquire);
        let packed = cmd.to_redis();
        let first = self.send(&packed).await;
        if !is_noscript(&first) {
            return first;
        }
        let target = if self.is_cluster() { cmd.slot() } else { None };
        self.reload(target, seen, metrics).await?;
        after_reload(self.send(&packed).await)
    }

    /// Runs a pipeline; the result has one outcome per command, in request order.
    pub async fn run_pipeline(&self, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        match &self.conn {
            Conn::Standalone(manager) => self.standalone_pipeline(manager, cmds, metrics).await,
            Conn::Cluster(_) => self.cluster_pipeline(cmds, metrics).await,
        }
    }

    /// Liveness: PING (on Cluster, every primary must answer). The gateway's own command,
    /// never a client's.
    pub async fn ping(&self) -> Result<(), Failure> {
        self.send(&redis::cmd("PING")).await.map(|_| ())
    }

    async fn send(&self, cmd: &redis::Cmd) -> Outcome {
        match &self.conn {
            Conn::Standalone(manager) => {
                let mut conn = manager.clone();
                settle(conn.req_packed_command(cmd).await)
            }
            Conn::Cluster(cluster) => {
                let mut conn = cluster.connection().await?;
                settle(conn.req_packed_command(cmd).await)
            }
        }
    }

    /// `SCRIPT LOAD`, where `routing` says on a Cluster; checks that Redis names the script by
    /// the SHA the gateway calls it by.
    async fn load(&self, routing: RoutingInfo) -> Result<(), Failure> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(sluice::redis::script::SCRIPT);
        let value = match &self.conn {
            Conn::Standalone(manager) => {
                let mut conn = manager.clone();
                settle(conn.req_packed_command(&cmd).await)?
            }
            Conn::Cluster(cluster) => {
                let mut conn = cluster.connection().await?;
                settle(conn.route_command(cmd, routing).await)?
            }
        };
        match value {
            Value::BulkString(b) if b.eq_ignore_ascii_case(sha().as_bytes()) => Ok(()),
            Value::SimpleString(s) if s.eq_ignore_ascii_case(sha()) => Ok(()),
            other => {
                Err(Failure::Reply(format!("ERR sluice-gateway: SCRIPT LOAD answered {other:?}, not the script's SHA {}", sha())))
            }
        }
    }

    /// After a NOSCRIPT on `target`: loads the script there, unless another call did so after
    /// this one was sent (`seen`), which is then simply run again.
    async fn reload(&self, target: Target, seen: u64, metrics: &Metrics) -> Result<(), Failure> {
        let mut last = self.loads.last.lock().await;
        if last.get(&target).is_some_and(|&done| done > seen) {
            return Ok(());
        }
        let routing = match target {
            // The node serving the slot is the one that answered NOSCRIPT.
            Some(slot) => RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))),
            None => every_primary(),
        };
        let loaded = self.load(routing).await;
        metrics.script_load(LoadTrigger::NoScript, loaded.is_ok());
        match loaded {
            Ok(()) => {
                let generation = self.loads.generation.fetch_add(1, Ordering::AcqRel) + 1;
                last.insert(target, generation);
                Ok(())
            }
            Err(Failure::Transport(text)) => Err(Failure::Transport(text)),
            Err(Failure::Reply(text)) => {
                log::warn!("cannot load sluice's script after NOSCRIPT: {text}");
                Err(Failure::Reply(format!("ERR sluice-gateway: cannot load sluice's script: {text}")))
            }
        }
    }

    /// One batch, one round trip: Redis runs the calls in order on one connection and answers
    /// each in place, errors included. Calls that met NOSCRIPT did not run; they go again,
    /// in their order, in a second batch after the reload (so after the calls that followed
    /// them in the first; a script lost half-way through one batch is that rare).
    async fn standalone_pipeline(&self, manager: &ConnectionManager, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        let seen = self.loads.generation.load(Ordering::Acquire);
        let mut out = batch(manager, cmds.iter()).await;
        let lost: Vec<usize> = (0..out.len()).filter(|&i| is_noscript(&out[i])).collect();
        if lost.is_empty() {
            return out;
        }
        let again = match self.reload(None, seen, metrics).await {
            Ok(()) => batch(manager, lost.iter().filter_map(|&i| cmds.get(i))).await.into_iter().map(after_reload).collect(),
            Err(failure) => vec![Err(failure); lost.len()],
        };
        for (i, outcome) in lost.into_iter().zip(again) {
            out[i] = outcome;
        }
        out
    }

    /// Pipelines on a cluster cannot go as one batch: calls may live on different nodes. Calls
    /// on one slot (for the filter: one rule and identity) run one after the other, in order;
    /// calls on different slots touch different keys, so they run at the same time.
    async fn cluster_pipeline(&self, cmds: &[Command], metrics: &Metrics) -> Vec<Outcome> {
        let mut by_slot: BTreeMap<Option<u16>, Vec<usize>> = BTreeMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            by_slot.entry(cmd.slot()).or_default().push(i);
        }
        let groups = by_slot.into_values().map(|indices| async move {
            let mut done = Vec::with_capacity(indices.len());
            for j in indices {
                if let Some(cmd) = cmds.get(j) {
                    done.push((j, self.run(cmd, metrics).await));
                }
            }
            done
        });
        let mut out: Vec<Option<Outcome>> = (0..cmds.len()).map(|_| None).collect();
        for (j, outcome) in join_all(groups).await.into_iter().flatten() {
            out[j] = Some(outcome);
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err(Failure::Transport("internal: command was not run".into())))).collect()
    }
}

impl ClusterBackend {
    async fn connection(&self) -> Result<ClusterConnection, Failure> {
        // A failed attempt leaves the cell empty, so the next request tries again.
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
            .map_err(|e| Failure::Transport(format!("cannot reach the Redis Cluster: {e}")))
    }
}

async fn batch<'a>(manager: &ConnectionManager, cmds: impl Iterator<Item = &'a Command>) -> Vec<Outcome> {
    let mut pipe = redis::pipe();
    let mut n = 0;
    for c in cmds {
        pipe.add_command(c.to_redis());
        n += 1;
    }
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

/// Every primary, each of which must succeed. A primary that fails does not keep the others
/// from getting the command: all are sent before any answer is awaited.
fn every_primary() -> RoutingInfo {
    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)))
}

fn is_noscript(outcome: &Outcome) -> bool {
    matches!(outcome, Err(Failure::Reply(text)) if text.starts_with("NOSCRIPT"))
}

/// The second try's outcome. NOSCRIPT again means Redis dropped the script between the load
/// and the call; the client must not read that as its cue to send the script's text.
fn after_reload(outcome: Outcome) -> Outcome {
    if is_noscript(&outcome) {
        return Err(Failure::Reply("ERR sluice-gateway: Redis lost sluice's script again right after it was loaded".into()));
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
