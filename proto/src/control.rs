//! Admin control: rationing policy, manual blocks and payments, signed with an admin's ed25519
//! key, replicated to every node (gossip and sync) and applied last-writer-wins by the admin's
//! timestamp.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reading::MeterId;

/// What an admin orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Cut a meter's supply by hand.
    Block {
        /// The meter.
        meter: MeterId,
        /// Why, for people.
        reason: String,
    },
    /// Lift a manual block.
    Unblock {
        /// The meter.
        meter: MeterId,
    },
    /// Set the rationing policy.
    Policy(Policy),
    /// Every bill of the meter for a period ended by `issued_at_ms` is paid: lifts a debt block.
    Paid {
        /// The meter.
        meter: MeterId,
    },
}

/// The rationing and billing policy, the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Billing and rationing period, ms; periods start at multiples of it since the Unix epoch.
    pub period_ms: u64,
    /// Most litres a meter may consume in a period; `None` for no cap.
    pub cap_l: Option<u64>,
    /// A meter consuming more than this many thousandths of the mesh-wide average in the
    /// period is cut (1500 = 1.5 × the average); `None` for no such rule.
    pub above_average_permille: Option<u32>,
}

impl Policy {
    /// Shortest period: one minute (anything shorter is a mistake).
    pub const MIN_PERIOD_MS: u64 = 60_000;
    /// Longest period: about ten years.
    pub const MAX_PERIOD_MS: u64 = 3650 * 86_400_000;
    /// Lowest factor: 1 × the average (below it most meters would be cut).
    pub const MIN_PERMILLE: u32 = 1000;
    /// Highest factor: 1000 × the average.
    pub const MAX_PERMILLE: u32 = 1_000_000;

    /// Why the policy is unacceptable, if it is.
    pub fn problem(&self) -> Option<String> {
        if !(Self::MIN_PERIOD_MS..=Self::MAX_PERIOD_MS).contains(&self.period_ms) {
            return Some(format!("period must be between 1 minute and 10 years, not {} ms", self.period_ms));
        }
        if self.cap_l == Some(0) {
            return Some("cap must be at least 1 litre".into());
        }
        if let Some(permille) = self.above_average_permille {
            if !(Self::MIN_PERMILLE..=Self::MAX_PERMILLE).contains(&permille) {
                return Some(format!(
                    "above-average factor must be between 1 and 1000, not {}.{:03}",
                    permille / 1000,
                    permille % 1000
                ));
            }
        }
        None
    }

    /// The above-average factor as thousandths of the average: `Ok(None)` for 0 (rule off);
    /// the error says what is wrong with the factor.
    pub fn permille_of_factor(factor: f64) -> Result<Option<u32>, String> {
        if !factor.is_finite() || factor < 0.0 {
            return Err(format!("must be a positive number, not {factor}"));
        }
        if factor == 0.0 {
            return Ok(None);
        }
        if !(1.0..=1000.0).contains(&factor) {
            return Err(format!("must be between 1 and 1000 (or 0 for none), not {factor}"));
        }
        Ok(Some((factor * 1000.0).round() as u32))
    }

    /// Start of the period holding `ts_ms`.
    pub fn period_start(&self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.period_ms.max(1)
    }
}

impl Default for Policy {
    /// Monthly-ish periods of 30 days, no cap, no above-average rule.
    fn default() -> Self {
        Policy { period_ms: 30 * 86_400_000, cap_l: None, above_average_permille: None }
    }
}

/// An admin's order with its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// When the admin issued it, by the admin's clock, ms: later wins.
    pub issued_at_ms: u64,
    /// The order.
    pub action: Action,
}

/// A command with its admin's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The encoded [`Command`] (a [`wire`](crate::wire) envelope).
    pub payload: Vec<u8>,
    /// The admin's ed25519 public key, 32 bytes.
    pub admin_key: Vec<u8>,
    /// The admin's ed25519 signature of [`SIGNING_CONTEXT`] followed by `payload`.
    pub signature: Vec<u8>,
}

/// Prefix of every signed command, so a command signature is never valid for anything else.
pub const SIGNING_CONTEXT: &[u8] = b"hydromesh/control/1:";

/// Why a meter's supply is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlockReason {
    /// An admin blocked it.
    Manual,
    /// Over the cap for the period.
    Cap,
    /// Above the allowed multiple of the mesh-wide average for the period.
    AboveAverage,
    /// A closed period's bill is unpaid past the grace time.
    Debt,
}

impl BlockReason {
    /// `manual`, `cap`, `above_average` or `debt`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Manual => "manual",
            BlockReason::Cap => "cap",
            BlockReason::AboveAverage => "above_average",
            BlockReason::Debt => "debt",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
