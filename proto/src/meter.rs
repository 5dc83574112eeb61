//! A meter's id as printed on the meter, held in one `u64`.
//!
//! # The rule
//! A meter id is 1 to [`MAX_METER_ID_LEN`] characters among ASCII letters, digits, `-` and `_`:
//! `2124589c` and `0014a807` as wmbusmeters prints wM-Bus ids, `04913581`, `ZRI-77`, `42`.
//! - Letters compare case-insensitively and are shown in lower case (`2124589C` is `2124589c`),
//!   as wmbusmeters prints them.
//! - Leading zeros belong to the id: `04913581` and `4913581` are two meters.
//!
//! # The code
//! Every id has one code, a `u64`, which is what the store, the wire and the meter filters hold:
//! - an id of digits without a leading zero is its own number (`42` is 42): below 10^12, so every
//!   numeric id of a store or a peer of an earlier version keeps its meaning;
//! - every other id is 10^12 plus its rank in shortlex order over the 38 symbols (bijective base
//!   38: 12 characters give at most 9.33 × 10^18 ids, which fits with room to spare).
//!
//! Ids order by code: numbers by value, then the other ids by length, then symbol by symbol
//! (`0`–`9`, `a`–`z`, `-`, `_`). A code that names no id is refused wherever a code is decoded.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Longest meter id, in characters.
pub const MAX_METER_ID_LEN: usize = 12;

/// Numeric ids are the numbers below this (at most 12 digits); each is its own code.
pub const NUMBERS: u64 = 1_000_000_000_000;

/// The symbols of an id, in their order (a letter's lower case stands for both cases).
const SYMBOLS: &[u8; 38] = b"0123456789abcdefghijklmnopqrstuvwxyz-_";
const BASE: u64 = SYMBOLS.len() as u64;

/// A meter's identity: its id as printed on the meter (see the [module](self) for the rule).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterId(u64);

/// Why a text is not a meter id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterIdError {
    /// No character at all.
    #[error("empty")]
    Empty,
    /// More characters than an id has.
    #[error("more than {MAX_METER_ID_LEN} characters")]
    TooLong,
    /// A character outside the id's symbols.
    #[error("letters, digits, `-` and `_` only")]
    Symbol,
}

impl MeterId {
    /// The numeric id `n` (`None` from 10^12, which has more than 12 digits).
    pub const fn number(n: u64) -> Option<MeterId> {
        if n < NUMBERS {
            Some(MeterId(n))
        } else {
            None
        }
    }

    /// The number of a numeric id (`None` for any other id).
    pub const fn as_number(self) -> Option<u64> {
        if self.0 < NUMBERS {
            Some(self.0)
        } else {
            None
        }
    }

    /// The id's code (see the [module](self)).
    pub const fn code(self) -> u64 {
        self.0
    }

    /// The id whose code is `code`, if one is.
    pub fn from_code(code: u64) -> Option<MeterId> {
        let id = MeterId(code);
        (code < NUMBERS || id.symbols().is_some()).then_some(id)
    }

    /// The id written `text`, letters in either case.
    pub fn parse(text: &str) -> Result<MeterId, MeterIdError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(MeterIdError::Empty);
        }
        if bytes.len() > MAX_METER_ID_LEN {
            return Err(MeterIdError::TooLong);
        }
        if is_number(bytes) {
            // At most 12 digits: below 10^12.
            return Ok(MeterId(bytes.iter().fold(0, |n, digit| n * 10 + u64::from(digit - b'0'))));
        }
        let mut rank: u64 = 0;
        for byte in bytes {
            let symbol =
                SYMBOLS.iter().position(|s| *s == byte.to_ascii_lowercase()).ok_or(MeterIdError::Symbol)?;
            // At most Σ 38^k for k = 1..=12 ≈ 9.33e18: no overflow.
            rank = rank * BASE + symbol as u64 + 1;
        }
        Ok(MeterId(NUMBERS + rank))
    }

    /// The symbols of a non-numeric id, written into a buffer: `None` when the code names no id.
    fn symbols(self) -> Option<([u8; MAX_METER_ID_LEN], usize)> {
        let mut rank = self.0.checked_sub(NUMBERS)?;
        let mut symbols = [0u8; MAX_METER_ID_LEN];
        let mut len = 0;
        while rank > 0 {
            if len == MAX_METER_ID_LEN {
                return None;
            }
            rank -= 1;
            symbols[len] = SYMBOLS[(rank % BASE) as usize];
            rank /= BASE;
            len += 1;
        }
        symbols[..len].reverse();
        // A number's symbols would be a second code for it.
        (len > 0 && !is_number(&symbols[..len])).then_some((symbols, len))
    }
}

/// Whether `bytes` is a numeric id: digits, without a leading zero unless it is `0`.
fn is_number(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_digit) && (bytes.len() == 1 || bytes[0] != b'0')
}

impl From<u32> for MeterId {
    /// The numeric id `n`.
    fn from(n: u32) -> Self {
        MeterId(u64::from(n))
    }
}

impl FromStr for MeterId {
    type Err = MeterIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MeterId::parse(text)
    }
}

impl fmt::Display for MeterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < NUMBERS {
            return fmt::Display::fmt(&self.0, f);
        }
        match self.symbols() {
            // The symbols are ASCII.
            Some((symbols, len)) => f.pad(std::str::from_utf8(&symbols[..len]).unwrap_or_default()),
            // Never built (every constructor checks); shown rather than hidden if it were.
            None => write!(f, "#{}", self.0),
        }
    }
}

impl fmt::Debug for MeterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeterId({self})")
    }
}

/// Text (`"2124589c"`) in human-readable formats such as JSON; the code in binary ones (the
/// wire, the store's saved state).
impl Serialize for MeterId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

/// Text in human-readable formats (a JSON number is taken as the numeric id); a code in binary
/// ones, refused when it names no id.
impl<'de> Deserialize<'de> for MeterId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = MeterId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a meter id (1 to {MAX_METER_ID_LEN} letters, digits, `-` or `_`)")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<MeterId, E> {
                MeterId::number(n)
                    .ok_or_else(|| E::custom(format!("`{n}` is not a meter id ({})", MeterIdError::TooLong)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MeterId, E> {
                MeterId::parse(text)
                    .map_err(|error| E::custom(format!("`{text}` is not a meter id ({error})")))
            }
        }
        struct Code;
        impl Visitor<'_> for Code {
            type Value = MeterId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a meter id's code")
            }
            fn visit_u64<E: de::Error>(self, code: u64) -> Result<MeterId, E> {
                MeterId::from_code(code)
                    .ok_or_else(|| E::custom(format!("{code} is not the code of a meter id")))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Text)
        } else {
            deserializer.deserialize_u64(Code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> MeterId {
        MeterId::parse(text).expect("a meter id")
    }

    #[test]
    fn printed_ids_round_trip_and_numbers_keep_their_code() {
        for text in [
            "0",
            "42",
            "999999999999",
            "2124589c",
            "0014a807",
            "04913581",
            "zri-77",
            "a_b",
            "_",
            "zzzzzzzzzzzz",
            "____________",
        ] {
            let meter = id(text);
            assert_eq!(meter.to_string(), text);
            assert_eq!(MeterId::from_code(meter.code()), Some(meter), "{text}");
        }
        assert_eq!(id("42").code(), 42);
        assert_eq!(id("999999999999").code(), NUMBERS - 1);
        assert_eq!(id("0").code(), 0);
        assert_eq!(MeterId::number(7), Some(MeterId::from(7)));
        assert_eq!(MeterId::number(NUMBERS), None);
    }

    #[test]
    fn case_does_not_matter_and_leading_zeros_do() {
        assert_eq!(id("2124589C"), id("2124589c"));
        assert_eq!(id("ZRI-77").to_string(), "zri-77");
        assert_ne!(id("04913581"), id("4913581"));
        assert_eq!(id("4913581").code(), 4_913_581);
        assert!(id("04913581").code() >= NUMBERS);
    }

    #[test]
    fn what_is_not_an_id_is_refused() {
        assert_eq!(MeterId::parse(""), Err(MeterIdError::Empty));
        assert_eq!(MeterId::parse("1234567890123"), Err(MeterIdError::TooLong));
        assert_eq!(MeterId::parse("abcdefghijklm"), Err(MeterIdError::TooLong));
        for bad in ["a b", "a/b", "+1", "-1.5", "é", "a#", " 1"] {
            assert_eq!(MeterId::parse(bad), Err(MeterIdError::Symbol), "{bad}");
        }
    }

    #[test]
    fn every_code_names_one_id_or_none() {
        // Numbers, the first and last codes of each length, and the codes past the last.
        let longest = (1..=MAX_METER_ID_LEN as u32).map(|k| BASE.pow(k)).sum::<u64>();
        assert_eq!(MeterId::from_code(NUMBERS), None, "rank 0 is no id");
        assert_eq!(
            MeterId::from_code(NUMBERS + longest).map(|m| m.to_string()).as_deref(),
            Some("____________")
        );
        assert_eq!(MeterId::from_code(NUMBERS + longest + 1), None);
        assert_eq!(MeterId::from_code(u64::MAX), None);
        // A non-numeric code spelling a number would be its second code.
        assert_eq!(MeterId::from_code(NUMBERS + 2), None, "`1`");
        assert_eq!(MeterId::from_code(NUMBERS + 1), None, "`0`");
        // Codes in a dense range decode and encode back to themselves.
        for code in (NUMBERS..NUMBERS + 200_000).chain(u64::MAX / 2..u64::MAX / 2 + 1000) {
            if let Some(meter) = MeterId::from_code(code) {
                assert_eq!(id(&meter.to_string()).code(), code);
            }
        }
    }

    #[test]
    fn order_is_numbers_then_shortlex() {
        let mut ids: Vec<MeterId> = ["b", "10", "2", "aa", "0a", "z", "_", "01"].map(id).to_vec();
        ids.sort();
        let shown: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["2", "10", "b", "z", "_", "01", "0a", "aa"]);
    }
}
