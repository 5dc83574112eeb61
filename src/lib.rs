//! hydromesh: a peer-to-peer fog mesh for smart water meters.
//!
//! Each fog node ingests its district's cumulative register readings into sled, gossips a
//! signed summary of them, and answers global questions (top consumers, totals, the exact
//! weighted average, one meter's history) from its merged view of every node's summary, with no
//! central server.
//!
//! # Layout
//! Layers, lowest first; a module imports only from layers below its own (a test checks it):
//! 1. Foundations: [`clock`] (wall-clock milliseconds), [`sync`] (taking locks), [`keys`] (admin keys and key files),
//!    [`metrics`] (Prometheus), [`domain`] (the water rules, pure: validation, consumption,
//!    alerts, tariffs, rationing), [`config`] (the node's settings).
//! 2. [`store`]: sled only, behind one type: readings and their index, summary versions, the
//!    saved view and admin commands.
//! 3. [`ingest`]: the single writer: group commit, durable acknowledgements, and the node's
//!    local meter state (alert trackers, period figures, blocks, top-K) published as one
//!    snapshot.
//! 4. [`mesh`]: the replicated state: merged view of summaries and admin commands (CRDTs),
//!    summary building and signatures. [`p2p`]: libp2p transport, one module per protocol, the
//!    node's behaviour, and [`client`], a client of one node.
//! 5. [`node`]: the core service: [`Node::spawn`], the event loop that owns the swarm and routes
//!    questions, and the in-process [`NodeClient`].
//! 6. [`present`]: what the CLI, HTTP and MQTT share (the JSON contract, the ingest report,
//!    parsing readings); [`sim`]: simulated hydrometers.
//! 7. Front ends on [`NodeClient`]: [`http`] (API, live events, dashboard, `/metrics`) and
//!    [`mqtt`] (embedded broker or bridge).
//! 8. [`app`]: the composition root: node and front ends, started and stopped in order.
//! 9. [`cli`]: the `hydromesh` command line.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod mesh;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod p2p;
pub mod present;
pub mod sim;
pub mod store;
pub mod sync;

pub use app::{App, AppHandle};
pub use config::Config;
pub use node::{Node, NodeClient, NodeError, NodeHandle};
pub use p2p::client;
