//! `/hydromesh/peer/1`: what one fog node asks another about the other's own meters, when it
//! routes a client's question to a meter's home or ranks a window over every node. Clients do not
//! speak it; a node answers it from its own store only and never routes it further.

use serde::{Deserialize, Serialize};

use crate::query::{Bill, LocalMeter};
use crate::reading::{MeterId, Reading};
use crate::summary::MeterSpan;

/// A question about the answering node's own meters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Spans of its `n` highest consumers in `[from_ms, now)`.
    Top {
        /// How many entries.
        n: u32,
        /// Window start, ms.
        from_ms: u64,
    },
    /// Its readings and status of a meter in `[from_ms, to_ms)`.
    Meter {
        /// The meter.
        meter: MeterId,
        /// Window start, ms (inclusive).
        from_ms: Option<u64>,
        /// Window end, ms (exclusive).
        to_ms: Option<u64>,
    },
    /// Its bill of a meter for the period holding `at_ms` (default: now).
    Bill {
        /// The meter.
        meter: MeterId,
        /// Any time in the period.
        at_ms: Option<u64>,
    },
    /// A long poll on its readings of a meter after `after_ts_ms`.
    Follow {
        /// The meter.
        meter: MeterId,
        /// Device time of the last reading the asker has; `None` for the latest reading.
        after_ts_ms: Option<u64>,
    },
}

/// An answer about the answering node's own meters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Top`], ranked.
    Top(Vec<MeterSpan>),
    /// Answer to [`Request::Meter`]: `None` when it holds no reading of the meter.
    Meter(Option<LocalMeter>),
    /// Answer to [`Request::Bill`]: `None` when it holds no reading of the meter.
    Bill(Option<Bill>),
    /// Answer to [`Request::Follow`]: the readings after the asker's last, by time (empty when
    /// none came in time); `None` when it holds no reading of the meter.
    Readings(Option<Vec<Reading>>),
    /// The node is overloaded; ask again later.
    Busy,
    /// The question could not be answered.
    Error(String),
}
