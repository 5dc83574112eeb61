//! Wire types of the hydromesh fog mesh.
//!
//! This crate is everything a meter gateway, a CLI or another fog node needs to speak to a
//! hydromesh node, and nothing else: the messages of each protocol, the protocol names, the size
//! limits, and the versioned envelope that every message travels in ([`wire::encode`],
//! [`wire::decode`]). It depends on serde and bincode 2 only (no async runtime, no libp2p), so
//! firmware and gateways can use it alone.
//!
//! # Layout
//! - [`meter`]: a meter's id as printed on the meter, and its code.
//! - [`reading`]: readings and alarm flags.
//! - [`ingest`]: `/hydromesh/ingest/1`, a batch of readings and the per-reading outcome.
//! - [`query`]: `/hydromesh/query/2`, questions from clients and their answers.
//! - [`peer`]: `/hydromesh/peer/1`, what a node asks another about the other's own meters.
//! - [`control`]: signed admin commands (policy, blocks, payments) on `hydromesh/control/1`.
//! - [`summary`]: the node summary and liveness gossiped on `hydromesh/summary/3`, and the
//!   digests `/hydromesh/sync/2` pulls them by.
//! - [`wire`]: envelope, version, codec and its errors.
//! - [`limits`] and [`protocols`]: the constants every side agrees on.

pub mod control;
pub mod ingest;
pub mod meter;
pub mod peer;
pub mod query;
pub mod reading;
pub mod summary;
pub mod wire;

pub use reading::{format_rfc3339, Alarms, MeterId, Reading};
pub use wire::{decode, encode, WireError, WIRE_VERSION};

/// Names of the libp2p protocols and gossipsub topics hydromesh speaks.
pub mod protocols {
    /// Request-response: readings from meters and gateways.
    pub const INGEST: &str = "/hydromesh/ingest/1";
    /// Request-response: questions from clients. Version 2 moved the node-to-node questions to
    /// [`PEER`]; a version-1 client is refused at protocol negotiation.
    pub const QUERY: &str = "/hydromesh/query/2";
    /// Request-response: what a fog node asks another about the other's own meters (routing).
    pub const PEER: &str = "/hydromesh/peer/1";
    /// Request-response: anti-entropy by digest. Version 1 exchanged whole maps; a version-1
    /// node and a version-2 node do not sync (nor gossip: the topic changed too).
    pub const SYNC: &str = "/hydromesh/sync/2";
    /// Identify protocol version string.
    pub const IDENTIFY: &str = "/hydromesh/id/1";
    /// Gossipsub topic of node summaries and liveness ([`crate::summary::Gossip`]).
    pub const SUMMARY_TOPIC: &str = "hydromesh/summary/3";
    /// Gossipsub topic of signed admin commands.
    pub const CONTROL_TOPIC: &str = "hydromesh/control/1";
}

/// Size limits every side enforces. A message over its limit is refused before it is decoded.
pub mod limits {
    /// Most readings in one ingest request.
    pub const MAX_BATCH_READINGS: usize = 10_000;
    /// Largest encoded ingest or query request, in bytes.
    pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
    /// Largest encoded response (query answers with a meter's history), in bytes.
    pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
    /// Largest encoded signed summary (gossip message), in bytes.
    pub const MAX_SUMMARY_BYTES: usize = 1024 * 1024;
    /// Largest encoded sync message (a digest, or the summaries and commands it lacks), in
    /// bytes.
    pub const MAX_SYNC_BYTES: usize = 16 * 1024 * 1024;
    /// Most bytes of summaries and commands one sync response carries; the rest follows in the
    /// next exchange.
    pub const SYNC_RESPONSE_BUDGET: usize = 2 * 1024 * 1024;
    /// Largest encoded signed liveness message, in bytes.
    pub const MAX_ALIVE_BYTES: usize = 512;
    /// Most readings returned by one history query; a longer window is cut and says so.
    pub const MAX_HISTORY_READINGS: usize = 100_000;
    /// Most entries a top query may ask for.
    pub const MAX_TOP_N: u32 = 10_000;
    /// Longest node name, in bytes.
    pub const MAX_NAME_BYTES: usize = 64;
    /// Most blocked meters, and most alerts, one summary carries.
    pub const MAX_SUMMARY_ENTRIES: usize = 2_000;
    /// Largest encoded signed admin command, in bytes.
    pub const MAX_COMMAND_BYTES: usize = 4 * 1024;
    /// Longest reason text of a manual block, in bytes (what a node accepts).
    pub const MAX_REASON_BYTES: usize = 200;
    /// Longest reason text of a manual block a client sends, in characters: any 50 characters
    /// fit in [`MAX_REASON_BYTES`] (4 bytes of UTF-8 at most each).
    pub const MAX_REASON_CHARS: usize = MAX_REASON_BYTES / 4;
    /// Largest message any decoder accepts, whatever the protocol.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
}
