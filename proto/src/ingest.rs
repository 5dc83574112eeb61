//! `/hydromesh/ingest/1`: a batch of readings and the per-reading outcome.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reading::{format_rfc3339, MeterId, Reading};

/// A batch of readings from a meter or a gateway (at most
/// [`MAX_BATCH_READINGS`](crate::limits::MAX_BATCH_READINGS)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The readings, in any order.
    pub readings: Vec<Reading>,
}

/// The node's answer to a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The batch was processed: one outcome per reading, in request order. Accepted and
    /// duplicate readings are durable when this is sent.
    Done {
        /// One outcome per reading of the request, same order.
        outcomes: Vec<Outcome>,
        /// Commands for the meters of the batch (valve state).
        commands: Vec<MeterCommand>,
    },
    /// The node is overloaded: nothing of the batch was stored; send it again later.
    Busy {
        /// A hint of when to try again, in milliseconds.
        retry_after_ms: u32,
    },
    /// The whole batch was refused (for example, too many readings).
    Refused {
        /// Why, for a person.
        reason: String,
    },
    /// The node could not store the batch: its storage failed (a full disk, a write error).
    /// Nothing of the batch was stored; send it again later. Not a fault of the readings.
    Unavailable {
        /// What failed, for a person.
        reason: String,
    },
}

/// What happened to one reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Stored.
    Accepted,
    /// The same reading was already stored; counted once.
    Duplicate,
    /// Not stored, for this reason.
    Rejected(Rejection),
}

/// The rule a rejected reading broke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The register is lower than an earlier reading of the same meter.
    RegisterDecreased {
        /// Time of the earlier reading, ms.
        earlier_ts_ms: u64,
        /// Its register, litres.
        earlier_litres: u64,
    },
    /// The register is higher than a later reading of the same meter.
    RegisterAboveLater {
        /// Time of the later reading, ms.
        later_ts_ms: u64,
        /// Its register, litres.
        later_litres: u64,
    },
    /// The timestamp is too far ahead of the node's clock.
    FutureTimestamp {
        /// How far ahead of the node's clock it is, ms.
        ahead_ms: u64,
        /// The most a reading may be ahead, ms.
        max_ahead_ms: u64,
    },
    /// A reading with the same meter and timestamp but another value is stored.
    ConflictingDuplicate {
        /// Register of the stored reading, litres.
        stored_litres: u64,
    },
    /// A field is outside its range.
    OutOfRange {
        /// Which field and why.
        detail: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::RegisterDecreased { earlier_ts_ms, earlier_litres } => write!(
                f,
                "register decreased: the reading of {} has {earlier_litres} L",
                format_rfc3339(*earlier_ts_ms)
            ),
            Rejection::RegisterAboveLater { later_ts_ms, later_litres } => write!(
                f,
                "register decreased: the later reading of {} has only {later_litres} L",
                format_rfc3339(*later_ts_ms)
            ),
            Rejection::FutureTimestamp { ahead_ms, max_ahead_ms } => write!(
                f,
                "timestamp in the future: {} s ahead of the node's clock (at most {} s allowed)",
                ahead_ms / 1000,
                max_ahead_ms / 1000
            ),
            Rejection::ConflictingDuplicate { stored_litres } => write!(
                f,
                "conflicting duplicate: a reading with this meter and timestamp is stored with {stored_litres} L"
            ),
            Rejection::OutOfRange { detail } => write!(f, "out of range: {detail}"),
        }
    }
}

/// A command for one meter, carried in the acknowledgement of its readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterCommand {
    /// The meter.
    pub meter: MeterId,
    /// The state its valve must take.
    pub valve: Valve,
}

/// A meter's valve state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Valve {
    /// Water flows.
    Open,
    /// Supply is cut.
    Closed,
}

impl Valve {
    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Valve::Open => "open",
            Valve::Closed => "closed",
        }
    }
}
