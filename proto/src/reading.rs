//! Meters, readings and alarm flags.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A meter's identity (its serial number).
pub type MeterId = u64;

/// One cumulative register reading, as a meter reports it.
///
/// Its identity is `(meter, ts_ms)`: the same key with the same value again is a duplicate, the
/// same key with another value a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// The meter.
    pub meter: MeterId,
    /// Device time of the reading, UTC, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Cumulative register, whole litres.
    pub litres: u64,
    /// Instantaneous flow in litres per hour, when the meter reports it.
    pub flow_lph: Option<u32>,
    /// The meter's own alarm flags.
    pub alarms: Alarms,
}

/// A meter's alarm flags: a small bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Alarms(u8);

impl Alarms {
    /// Continuous flow: no hour without consumption within a day.
    pub const LEAK: Alarms = Alarms(1);
    /// Flow above the burst limit.
    pub const BURST: Alarms = Alarms(1 << 1);
    /// Tampering or fraud detected by the meter.
    pub const TAMPER: Alarms = Alarms(1 << 2);
    /// Water flowing backwards.
    pub const BACKFLOW: Alarms = Alarms(1 << 3);
    /// The pipe is empty.
    pub const DRY: Alarms = Alarms(1 << 4);

    /// Every flag with its name, in a stable order.
    pub const NAMED: [(Alarms, &'static str); 5] = [
        (Alarms::LEAK, "leak"),
        (Alarms::BURST, "burst"),
        (Alarms::TAMPER, "tamper"),
        (Alarms::BACKFLOW, "backflow"),
        (Alarms::DRY, "dry"),
    ];

    /// No flag set.
    pub const fn empty() -> Self {
        Alarms(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from raw bits; `None` when an unknown bit is set.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !0b1_1111 == 0 {
            Some(Alarms(bits))
        } else {
            None
        }
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Alarms) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Alarms) -> Self {
        Alarms(self.0 | other.0)
    }

    /// The flag named `name` (`leak`, `burst`, `tamper`, `backflow`, `dry`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(flag, _)| *flag)
    }

    /// Names of the flags set, in a stable order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

impl fmt::Display for Alarms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in self.names() {
            if !first {
                f.write_str("|")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_names_round_trip() {
        let set = Alarms::LEAK.union(Alarms::DRY);
        assert_eq!(set.to_string(), "leak|dry");
        assert_eq!(Alarms::from_name("Burst"), Some(Alarms::BURST));
        assert_eq!(Alarms::from_name("fire"), None);
        assert!(set.contains(Alarms::LEAK) && !set.contains(Alarms::BURST));
    }

    #[test]
    fn unknown_alarm_bits_are_refused() {
        assert_eq!(
            Alarms::from_bits(0b1_0001),
            Some(Alarms::LEAK.union(Alarms::DRY))
        );
        assert_eq!(Alarms::from_bits(0b10_0000), None);
    }
}
