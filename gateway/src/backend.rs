//! Redis side: one shared connection to a standalone server or a Redis Cluster, and how
//! single commands and pipelines are run on it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Value};
use tokio::sync::OnceCell;

use crate::command::Command;
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

/// Where commands go. Cloning is cheap: both variants share one multiplexed connection.
#[derive(Clone)]
pub enum Backend {
    /// `ConnectionManager` multiplexes every request over one connection and reconnects
    /// by itself after Redis restarts.
    Standalone(ConnectionManager),
    /// The cluster connection routes by slot and follows MOVED/ASK; it is created on first use
    /// so the gateway can start (and answer /healthz with 503) while the cluster is down.
    Cluster(std::sync::Arc<ClusterBackend>),
}

pub struct ClusterBackend {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
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
        Ok(Backend::Standalone(manager))
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
        Ok(Backend::Cluster(std::sync::Arc::new(ClusterBackend { client, conn: OnceCell::new() })))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Runs one command. Callers bound the wait with their own timeout.
    pub async fn run(&self, cmd: &Command) -> Outcome {
        let packed = cmd.to_redis();
        match self {
            Backend::Standalone(manager) => {
                let mut conn = manager.clone();
                settle(conn.req_packed_command(&packed).await)
            }
            Backend::Cluster(cluster) => {
                let mut conn = cluster.connection().await?;
                settle(conn.req_packed_command(&packed).await)
            }
        }
    }

    /// Runs a pipeline; the result has one outcome per command, in request order.
    pub async fn run_pipeline(&self, cmds: &[Command]) -> Vec<Outcome> {
        match self {
            Backend::Standalone(manager) => standalone_pipeline(manager, cmds).await,
            Backend::Cluster(_) => self.cluster_pipeline(cmds).await,
        }
    }

    /// Liveness: PING (on Cluster, every primary must answer).
    pub async fn ping(&self) -> Result<(), Failure> {
        self.run(&Command::ping()).await.map(|_| ())
    }

    /// Pipelines on a cluster cannot go as one batch: commands may live on different nodes.
    /// Order still matters (a SCRIPT LOAD before the EVALSHA that needs it; two calls on one
    /// key), so: a command without keys waits for everything before it and holds back
    /// everything after it; between such commands, calls on the same slot run one after the
    /// other and calls on different slots run at the same time.
    async fn cluster_pipeline(&self, cmds: &[Command]) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = (0..cmds.len()).map(|_| None).collect();
        let mut i = 0;
        while i < cmds.len() {
            if cmds[i].slot().is_none() {
                out[i] = Some(self.run(&cmds[i]).await);
                i += 1;
                continue;
            }
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            while let Some(slot) = cmds.get(i).and_then(Command::slot) {
                by_slot.entry(slot).or_default().push(i);
                i += 1;
            }
            let groups = by_slot.into_values().map(|indices| async move {
                let mut done = Vec::with_capacity(indices.len());
                for j in indices {
                    done.push((j, self.run(&cmds[j]).await));
                }
                done
            });
            for (j, outcome) in join_all(groups).await.into_iter().flatten() {
                out[j] = Some(outcome);
            }
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

/// One batch, one round trip: Redis runs the commands in order on one connection and
/// answers each in place, errors included.
async fn standalone_pipeline(manager: &ConnectionManager, cmds: &[Command]) -> Vec<Outcome> {
    let mut pipe = redis::pipe();
    for c in cmds {
        pipe.add_command(c.to_redis());
    }
    let mut conn = manager.clone();
    match conn.req_packed_commands(&pipe, 0, cmds.len()).await {
        Ok(values) if values.len() == cmds.len() => values.into_iter().map(|v| settle(Ok(v))).collect(),
        Ok(values) => {
            let msg = format!("redis answered {} replies to {} commands", values.len(), cmds.len());
            cmds.iter().map(|_| Err(Failure::Transport(msg.clone()))).collect()
        }
        Err(e) => {
            let failure = failure(e);
            cmds.iter().map(|_| Err(failure.clone())).collect()
        }
    }
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
