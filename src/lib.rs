//! hydromesh: a peer-to-peer fog mesh for smart water meters.
//!
//! Each fog node ingests its district's cumulative register readings into sled, gossips a
//! signed summary of them, and answers global questions (top consumers, totals, the exact
//! weighted average, one meter's history) from its merged view of every node's summary, with no
//! central server.
//!
//! # Layout
//! - [`node`]: [`Node::spawn`] and [`NodeHandle`]; the event loop that owns the swarm, and the
//!   ingest pipeline that acknowledges readings once durable.
//! - [`protocol`]: one module per libp2p protocol (ingest, query, sync, summary gossip) and the
//!   shared transport and codec.
//! - [`store`]: the sled-backed store, behind one type.
//! - [`mesh`]: the merged view of node summaries (a CRDT) and the global answers.
//! - [`domain`]: water rules: reading validation, consumption over windows, ranking, leak and
//!   burst alerts, tariffs, rationing.
//! - [`control`]: signed admin commands and the replicated control state.
//! - [`client`]: a client of one node, used by the CLI, tests and embedders.
//! - [`metrics`]: Prometheus metrics.
//! - [`http`]: the HTTP API, live events, dashboard and `/metrics`.
//! - [`mqtt`]: MQTT ingest (embedded broker, or an existing one).
//! - [`sim`]: simulated hydrometers.
//! - [`present`]: what the CLI, HTTP and MQTT share: the JSON answers, the ingest report and
//!   the reading parser.
//! - [`cli`]: the `hydromesh` command line, one module per subcommand.
//! - [`config`]: node configuration; [`clock`]: wall-clock milliseconds.

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod domain;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod present;
pub mod protocol;
pub mod sim;
pub mod store;

pub use config::Config;
pub use node::{Node, NodeError, NodeHandle};
