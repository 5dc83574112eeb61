//! `/hydromesh/query/1`: questions from clients and peers, and their answers.
//!
//! Global questions (`Top`, `Stats`, `Peers`) are answered from the asked node's merged view and
//! carry a [`Coverage`]. Raw-data questions (`Meter`) are routed by the asked node to the meter's
//! home with the `Local*` requests, which a node answers from its own store only.

use serde::{Deserialize, Serialize};

use crate::reading::{MeterId, Reading};
use crate::summary::MeterSpan;

/// A question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The `n` highest consumers, over all data held or over the last `since_ms`.
    Top {
        /// How many entries.
        n: u32,
        /// Window length ending now, ms; `None` for all data held.
        since_ms: Option<u64>,
    },
    /// Mesh-wide meter count and total consumption.
    Stats,
    /// Every fog node known.
    Peers,
    /// One meter's readings and consumption in `[from_ms, to_ms)`, from its home.
    Meter {
        /// The meter.
        meter: MeterId,
        /// Window start, ms (inclusive); `None` for the first reading held.
        from_ms: Option<u64>,
        /// Window end, ms (exclusive); `None` for no end.
        to_ms: Option<u64>,
    },
    /// Peer to peer: this node's own `n` highest consumers in `[from_ms, now)`.
    LocalTop {
        /// How many entries.
        n: u32,
        /// Window start, ms.
        from_ms: u64,
    },
    /// Peer to peer: this node's own readings of a meter (never routed further).
    LocalMeter {
        /// The meter.
        meter: MeterId,
        /// Window start, ms (inclusive).
        from_ms: Option<u64>,
        /// Window end, ms (exclusive).
        to_ms: Option<u64>,
    },
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Top`].
    Top(TopAnswer),
    /// Answer to [`Request::Stats`].
    Stats(StatsAnswer),
    /// Answer to [`Request::Peers`].
    Peers(PeersAnswer),
    /// Answer to [`Request::Meter`].
    Meter(MeterAnswer),
    /// Answer to [`Request::LocalTop`]: spans of this node's top meters in the window.
    LocalTop(Vec<MeterSpan>),
    /// Answer to [`Request::LocalMeter`]: `None` when this node holds no reading of the meter.
    LocalMeter(Option<MeterHistory>),
    /// Nothing is known of what was asked.
    NotFound(String),
    /// The node is overloaded; ask again later.
    Busy,
    /// The question was wrong or could not be answered.
    Error(String),
}

/// Which fog nodes an answer includes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Peer ids of the fog nodes whose state is included (fresh and stale).
    pub included: Vec<String>,
    /// Peer ids of the included nodes not heard from within `stale_after`.
    pub stale: Vec<String>,
    /// Peer ids of fog nodes known to the asked node whose data is not included (they did not
    /// answer a question that needed them).
    pub missing: Vec<String>,
    /// Age of the oldest data included, ms.
    pub oldest_data_age_ms: u64,
}

/// One line of a top-N ranking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopEntry {
    /// The meter.
    pub meter: MeterId,
    /// Its consumption in the window, litres.
    pub consumption_l: u64,
    /// Peer id of its home node.
    pub home: String,
}

/// The `n` highest consumers, consumption descending then meter ascending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopAnswer {
    /// The ranking.
    pub entries: Vec<TopEntry>,
    /// Which nodes it includes.
    pub coverage: Coverage,
}

/// Mesh-wide totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsAnswer {
    /// Meters held by the included nodes.
    pub meters: u64,
    /// Their total consumption, litres.
    pub total_consumption_l: u64,
    /// Which nodes it includes.
    pub coverage: Coverage,
}

impl StatsAnswer {
    /// The exact weighted average: total consumption over all meters (0 with no meter).
    pub fn average_consumption_l(&self) -> f64 {
        if self.meters == 0 {
            0.0
        } else {
            self.total_consumption_l as f64 / self.meters as f64
        }
    }
}

/// One fog node as the asked node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer: String,
    /// Its operator-given name.
    pub name: String,
    /// Its dialable addresses, with `/p2p/`.
    pub addrs: Vec<String>,
    /// Meters it holds.
    pub meters: u64,
    /// Version of its latest summary.
    pub version: u64,
    /// How long ago its latest summary was received, ms; `None` if never since start.
    pub last_heard_ms_ago: Option<u64>,
    /// Whether it was not heard from within `stale_after`.
    pub stale: bool,
    /// Whether it is the node that answered.
    pub is_self: bool,
}

/// Every fog node known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersAnswer {
    /// The nodes, by peer id.
    pub peers: Vec<PeerInfo>,
    /// Which nodes it includes.
    pub coverage: Coverage,
}

/// A meter's readings in a window, as one node holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterHistory {
    /// The last reading at or before the window's start, if any: the base of its consumption.
    pub baseline: Option<Reading>,
    /// The readings in the window, by time.
    pub readings: Vec<Reading>,
    /// Whether readings were left out to stay under
    /// [`MAX_HISTORY_READINGS`](crate::limits::MAX_HISTORY_READINGS).
    pub truncated: bool,
}

/// A meter's history and consumption, answered by (or through) its home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterAnswer {
    /// The meter.
    pub meter: MeterId,
    /// Peer id of its home node.
    pub home: String,
    /// Consumption in the window, litres.
    pub consumption_l: u64,
    /// Its readings in the window, and the baseline.
    pub history: MeterHistory,
}
