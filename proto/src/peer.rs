//! `/hydromesh/peer/1`: what one fog node asks another about the other's own meters, when it
//! routes a client's question to a meter's home or ranks a window over every node. Clients do not
//! speak it; a node answers it from its own store only and never routes it further.

use serde::{Deserialize, Serialize};

use crate::query::{Bill, LocalMeter};
use crate::reading::{MeterId, Reading};
use crate::summary::{MeterSpan, Point};

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
    /// The asker took a reading of a meter at `newest_ts_ms` (the meter moved to it, or back):
    /// the newest home owns a meter, so the answering node hands it over unless its own latest
    /// reading is newer.
    Handoff {
        /// The meter.
        meter: MeterId,
        /// The asker's newest reading of it, device time.
        newest_ts_ms: u64,
    },
}

/// The answer to [`Request::Handoff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handoff {
    /// The meter is not this node's own (never held, or handed over already).
    NotOwner,
    /// This node's latest reading is newer: it keeps the meter, and the asker does not own it.
    Newer,
    /// This node hands the meter over and stops counting it (the same answer again if the
    /// same asker asks again: its first answer may have been lost).
    Transferred(Transfer),
}

/// What a home hands over with a meter: the new owner counts the meter from its first register
/// on, and judges the current period from its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The meter's first register (at its first home).
    pub first: Point,
    /// The rationing period `base` is for.
    pub period_start_ms: u64,
    /// The meter's register at the start of that period (its last at or before the start,
    /// else its first after), as the home knew it.
    pub base: Option<Point>,
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
    /// Answer to [`Request::Handoff`].
    Handoff(Handoff),
    /// The node is overloaded; ask again later.
    Busy,
    /// The question could not be answered.
    Error(String),
}
