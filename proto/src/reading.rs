//! Meters, readings and alarm flags.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::meter::MeterId;

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
    /// A condition the meter reported in words hydromesh does not know (a new driver's status
    /// word): kept as an alarm to look at rather than dropped.
    pub const OTHER: Alarms = Alarms(1 << 5);

    /// Every flag with its name, in a stable order.
    pub const NAMED: [(Alarms, &'static str); 6] = [
        (Alarms::LEAK, "leak"),
        (Alarms::BURST, "burst"),
        (Alarms::TAMPER, "tamper"),
        (Alarms::BACKFLOW, "backflow"),
        (Alarms::DRY, "dry"),
        (Alarms::OTHER, "other"),
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
        if bits & !0b11_1111 == 0 {
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

    /// The flag named `name` (`leak`, `burst`, `tamper`, `backflow`, `dry`, `other`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(flag, _)| *flag)
    }

    /// Names of the flags set, in a stable order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED.into_iter().filter(move |(flag, _)| self.contains(*flag)).map(|(_, name)| name)
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

/// Formats ms since the Unix epoch as RFC 3339 UTC (`2026-11-23T10:00:00Z`, with milliseconds
/// only when they are not zero); after the year 9999, as the plain number of ms.
pub fn format_rfc3339(ms: u64) -> String {
    const MAX_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if ms > MAX_MS {
        return ms.to_string();
    }
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    let fraction = if milli == 0 { String::new() } else { format!(".{milli:03}") };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_431_600_250), "2026-11-23T11:00:00.250Z");
        assert_eq!(format_rfc3339(4_107_542_399_000), "2100-02-28T23:59:59Z");
        assert_eq!(format_rfc3339(253_402_300_800_000), "253402300800000");
    }

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
        assert_eq!(Alarms::from_bits(0b1_0001), Some(Alarms::LEAK.union(Alarms::DRY)));
        assert_eq!(Alarms::from_bits(0b10_0000), Some(Alarms::OTHER));
        assert_eq!(Alarms::from_bits(0b100_0000), None);
    }
}
