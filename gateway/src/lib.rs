//! sluice-gateway: a stateless HTTP bridge that runs Redis commands sent as JSON in the
//! Upstash REST dialect, on a standalone Redis or a Redis Cluster.
//!
//! Stock Envoy lets a Wasm filter make HTTP callouts but not Redis calls, so the sluice filter
//! posts its script calls here. The gateway holds no limiter state and makes no decisions: it
//! translates HTTP+JSON to RESP and back. Because it speaks the Upstash dialect, the filter can
//! as well be pointed at Upstash or any compatible service.
//!
//! # Endpoints
//!
//! | request | answer |
//! |---|---|
//! | `POST /` body `["EVALSHA", sha, "1", "k", "a"]` | `{"result": …}` (200) or `{"error": "…"}` |
//! | `POST /pipeline` body `[["SCRIPT","LOAD",src], ["EVALSHA",sha,"0"]]` | `[{"result": …}, {"error": "…"}]`, one per command, in order |
//! | `GET /healthz` | 200 `{"status":"ok",…,"age_ms":…}` when Redis answered PING within `--timeout-ms`, else 503 `{"status":"unavailable","error":…}`; one probe answers for `--health-cache-ms` |
//! | `GET /metrics` | Prometheus text: requests by endpoint and status, commands by name, Redis errors by kind, in-flight gauge, latency histogram, connections (open, refused at the cap), clients too slow by phase, health probes |
//!
//! ```text
//! $ curl -s -H 'Authorization: Bearer s3cret' -d '["EVAL","return {1,KEYS[1]}","1","k"]' http://127.0.0.1:7379/
//! {"result":[1,"k"]}
//! $ curl -s -H 'Authorization: Bearer s3cret' -d '[["PING"],["EVALSHA","0000","0"]]' http://127.0.0.1:7379/pipeline
//! [{"result":"PONG"},{"error":"NOSCRIPT No matching script. Please use EVAL."}]
//! ```
//!
//! # Dialect decisions
//!
//! * **Commands**: only `EVAL`, `EVALSHA`, `SCRIPT LOAD`, `SCRIPT EXISTS` and `PING`, names in
//!   any case. Anything else is refused with 400 naming the command; in a pipeline the whole
//!   request is refused (naming the command's index) and nothing runs.
//! * **Arguments**: JSON strings are sent as their UTF-8 bytes, JSON numbers as their JSON text;
//!   any other JSON type is a 400.
//! * **Replies**: integer → number; bulk string → string; nil → `null`; array → array; status
//!   → string (`"OK"`, `"PONG"`); RESP3 types (not used: the gateway speaks RESP2) map to the
//!   nearest JSON. An error reply keeps Redis' text exactly, code first
//!   (`"NOSCRIPT No matching script. Please use EVAL."`), so a client can `SCRIPT LOAD` and
//!   retry; an error nested in an array becomes `{"error": "…"}` in place.
//! * **Bytes that are not UTF-8**: never lossy. With the request header
//!   `Upstash-Encoding: base64` (as Upstash has it) every string in the result is standard
//!   base64, except the status `"OK"`; error texts stay plain. Without that header, a reply
//!   holding non-UTF-8 bytes becomes an error telling the client to send it.
//! * **Errors the gateway makes** start with `ERR sluice-gateway:`, so they cannot be mistaken
//!   for Redis' own. Status codes on `POST /`: 400 for a refused request or a command that
//!   failed in Redis (as Upstash), 401 without the right token, 413 for a body over
//!   `--max-body-bytes`, 502 when Redis cannot be reached, 504 past `--timeout-ms`. On
//!   `POST /pipeline` per-command failures are entries in a 200 answer; 502 only when no
//!   command reached Redis; 504 when the pipeline did not finish within the timeout (some
//!   commands may have run).
//! * **Pipelines on a standalone Redis** go as one batch on the shared multiplexed connection:
//!   one round trip, run in order. **On a Cluster** commands may live on different nodes, so
//!   they are run per command through the cluster client, keeping order where it can matter:
//!   a command without keys (`SCRIPT LOAD`, `PING`, a script with no keys) runs after all
//!   earlier commands and before all later ones; between such commands, script calls on the
//!   same slot run one after another and calls on different slots run concurrently. Replies
//!   are always returned in request order. `SCRIPT LOAD` reaches every node and `PING` every
//!   primary (so /healthz is 200 only when the whole cluster answers).
//! * **Auth**: with `--token`/`SLUICE_GATEWAY_TOKEN`, `POST /` and `POST /pipeline` need
//!   `Authorization: Bearer <token>` (compared in constant time); `/healthz` and `/metrics`
//!   stay open for probes and scrapers. Upstash's `_token` query parameter is not supported.
//!   Without a token the gateway listens on loopback only: any other `--listen` address makes
//!   it refuse to start.
//! * **Transport**: HTTP/1.1 with keep-alive (Envoy's default protocol for a cluster).
//!
//! # Limits
//!
//! `--max-body-bytes` (413, checked on Content-Length and while a chunked body streams),
//! `--max-pipeline` (400), `--timeout-ms` (504; also bounds connecting to Redis), and on
//! SIGTERM/SIGINT a drain of requests in flight bounded by `--shutdown-grace-ms`.
//!
//! Against slow or greedy clients (module [`conn`]): `--max-connections` (10,000; past it a
//! connection is closed as soon as it is accepted, after a best-effort 503, and the open-file
//! limit is raised to fit), `--header-read-timeout-ms` (5 s for the request line and headers,
//! counted from the connection's opening, or from the first byte of a later request; closed
//! without an answer), `--body-read-timeout-ms` (10 s for the whole body; 408 and closed),
//! `--idle-timeout-ms` (90 s without a request, or without the client taking a byte of its
//! answer; closed: keep it above the client pool's own idle timeout), `--max-header-bytes`
//! (16 KiB; 431). A declared body length reserves at most 16 KiB before bytes arrive.
//! `/healthz` costs Redis at most one PING per `--health-cache-ms` (module [`health`]).
//!
//! # Load
//!
//! `gateway/bench/pipeline-evalsha.lua` drives `POST /pipeline` with one EVALSHA per request
//! under `wrk` (usage in the file).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_gateway::GatewayError> {
//! use clap::Parser as _;
//! let config = sluice_gateway::Config::parse_from([
//!     "sluice-gateway", "--listen", "127.0.0.1:7379", "--redis-url", "redis://127.0.0.1:6379",
//! ]);
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! sluice_gateway::Gateway::run(&config, stop).await
//! # }
//! ```

pub mod backend;
pub mod command;
pub mod config;
pub mod conn;
pub mod health;
pub mod metrics;
pub mod reply;
pub mod server;

pub use config::Config;
pub use server::{Gateway, GatewayError};
