//! `/hydromesh/query/1`: questions from clients and peers, and their answers.
//!
//! Global questions (`Top`, `Stats`, `Peers`) are answered from the asked node's merged view and
//! carry a [`Coverage`]. Raw-data questions (`Meter`, `Bill`, `Follow`) are routed by the asked
//! node to the meter's home over the peer protocol ([`crate::peer`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::control::{Policy, SignedCommand};
use crate::reading::{MeterId, Reading};
use crate::summary::{Alert, AlertKind, Blocked};

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
    /// Meters whose supply is cut, mesh-wide.
    Blocked,
    /// Active alerts mesh-wide, of one kind or all.
    Alerts {
        /// Only this kind.
        kind: Option<AlertKind>,
    },
    /// A meter's bill for the period holding `period_start_ms` (default: the current one),
    /// from its home.
    Bill {
        /// The meter.
        meter: MeterId,
        /// Any time in the period.
        period_start_ms: Option<u64>,
    },
    /// The meter's readings stored after `after_ts_ms`, as soon as there is one (long poll,
    /// answered empty after a while so the client asks again).
    Follow {
        /// The meter.
        meter: MeterId,
        /// Device time of the last reading the client has; `None` to start with the meter's
        /// latest reading.
        after_ts_ms: Option<u64>,
    },
    /// The rationing policy in force.
    Policy,
    /// An admin command, signed; applied and spread only if this node trusts the key.
    Admin(SignedCommand),
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
    /// Answer to [`Request::Meter`] (boxed: the largest answer by far).
    Meter(Box<MeterAnswer>),
    /// Answer to [`Request::Blocked`].
    Blocked(BlockedAnswer),
    /// Answer to [`Request::Alerts`].
    Alerts(AlertsAnswer),
    /// Answer to [`Request::Bill`] (`None`: meter not held here).
    Bill(Option<Bill>),
    /// Answer to [`Request::Follow`]: new readings, by time
    /// (empty when none came in time). `home` is the node that stores them.
    Readings {
        /// Peer id of the meter's home.
        home: String,
        /// The readings after the client's last.
        readings: Vec<Reading>,
    },
    /// Answer to [`Request::Policy`]: the policy in force and who set it when (`None`: the
    /// default policy, never set by an admin).
    Policy(Policy, Option<PolicyOrigin>),
    /// Answer to [`Request::Admin`]: applied and spread to the mesh.
    Applied(String),
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
    /// Peer ids of the fog nodes whose state is included (fresh and stale), sorted; shared
    /// between answers (a node keeps one list and hands it to every answer).
    pub included: Arc<[String]>,
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
    /// Whether the node that answered has a connection to it now.
    pub connected: bool,
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

/// One node's part of a meter answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMeter {
    /// The readings.
    pub history: MeterHistory,
    /// Blocked state, alerts and the current bill, as its home sees them.
    pub status: MeterStatus,
}

/// A meter's state at its home.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterStatus {
    /// Why its supply is cut, if it is.
    pub blocked: Option<Blocked>,
    /// Its active alerts.
    pub alerts: Vec<Alert>,
    /// Its bill for the current period so far.
    pub bill: Option<Bill>,
    /// The status words of its latest reading that had words hydromesh does not know (the
    /// reading carries the alarm `other`), as the meter sent them.
    pub unknown_status: Vec<String>,
}

/// A meter's bill for one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// The meter.
    pub meter: MeterId,
    /// Period start, ms (inclusive).
    pub period_start_ms: u64,
    /// Period end, ms (exclusive).
    pub period_end_ms: u64,
    /// Consumption in the period, litres.
    pub consumption_l: u64,
    /// Amount due, in hundredths of the currency unit.
    pub amount_cents: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Whether it has been paid.
    pub paid: bool,
    /// Peer id of the home that computed it.
    pub home: String,
}

/// Who set the policy, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOrigin {
    /// The admin's public key, hex.
    pub admin: String,
    /// When, ms.
    pub issued_at_ms: u64,
}

/// A blocked meter and its home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedEntry {
    /// The block.
    pub blocked: Blocked,
    /// Peer id of the meter's home ("" when no node holds the meter yet).
    pub home: String,
}

/// Meters whose supply is cut, mesh-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedAnswer {
    /// By meter.
    pub blocked: Vec<BlockedEntry>,
    /// Which nodes it includes.
    pub coverage: Coverage,
}

/// An alert and its home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEntry {
    /// The alert.
    pub alert: Alert,
    /// Peer id of the meter's home.
    pub home: String,
}

/// Active alerts, mesh-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsAnswer {
    /// By meter, then kind.
    pub alerts: Vec<AlertEntry>,
    /// Which nodes it includes.
    pub coverage: Coverage,
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
    /// Blocked state, alerts and current bill, from its home.
    pub status: MeterStatus,
}
