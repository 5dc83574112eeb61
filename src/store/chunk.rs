//! The compressed form of a run of one meter's readings (a chunk), as the store keeps them.
//!
//! Readings of a meter arrive at a regular interval with a register that grows by small steps,
//! and mostly without alarms; a chunk stores them column by column so that each column is
//! mostly small numbers or long runs (the Gorilla idea, with bytes instead of bits):
//! - times as deltas of deltas (0 at a regular interval), in runs of equal values;
//! - registers as deltas (the litres used since the previous reading);
//! - per-reading flags (alarm bits, whether a flow was reported), in runs of equal values;
//! - flows, for the readings that have one.
//!
//! Numbers are LEB128 varints; signed ones zig-zag encoded first. Differences are taken with
//! wrapping arithmetic, so any sequence round-trips exactly (an ordered, non-decreasing one is
//! merely the one that is small). The chunk ends with a CRC-32 of all that precedes it: a chunk
//! damaged on disk is refused by name, never read as other readings.
//!
//! ```text
//! format (1) ‖ count ‖ ts₀ ‖ litres₀ ‖ time runs ‖ litre deltas ‖ flag runs ‖ flows ‖ crc32 (LE)
//! runs: (value, repeats after the first) pairs covering count − 1 (times) or count (flags) items
//! ```

use hydromesh_proto::{Alarms, MeterId, Reading};

/// The one format this version writes and reads.
const FORMAT: u8 = 1;
/// Flag bit: the reading carries a flow (the alarm bits are the low ones).
const HAS_FLOW: u8 = 0x80;
/// Most readings a chunk may hold: decoding refuses more (a damaged count never allocates
/// without bound).
pub const MAX_READINGS: usize = 4096;

/// Why bytes are not a chunk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ChunkError(String);

/// Encodes `readings` (of one meter, by time, at least one and at most [`MAX_READINGS`]).
pub fn encode(readings: &[Reading]) -> Vec<u8> {
    debug_assert!(!readings.is_empty() && readings.len() <= MAX_READINGS);
    let mut out = Vec::with_capacity(16 + readings.len() * 3);
    out.push(FORMAT);
    put(&mut out, readings.len() as u64);
    let Some(first) = readings.first() else {
        return seal(out);
    };
    put(&mut out, first.ts_ms);
    put(&mut out, first.litres);
    let mut delta = 0u64;
    let dods = readings.windows(2).map(|pair| {
        let next = pair[1].ts_ms.wrapping_sub(pair[0].ts_ms);
        let dod = zigzag(next.wrapping_sub(delta) as i64);
        delta = next;
        dod
    });
    put_runs(&mut out, dods);
    for pair in readings.windows(2) {
        put(&mut out, pair[1].litres.wrapping_sub(pair[0].litres));
    }
    put_runs(&mut out, readings.iter().map(|r| u64::from(flags(r))));
    for flow in readings.iter().filter_map(|r| r.flow_lph) {
        put(&mut out, u64::from(flow));
    }
    seal(out)
}

/// Decodes a chunk of `meter`'s readings.
pub fn decode(meter: MeterId, bytes: &[u8]) -> Result<Vec<Reading>, ChunkError> {
    let mut input = Input::open(bytes)?;
    let count = input.varint()?;
    if count == 0 || count > MAX_READINGS as u64 {
        return Err(ChunkError(format!("{count} readings is not a chunk's count (1 to {MAX_READINGS})")));
    }
    let count = count as usize;
    let mut times = Vec::with_capacity(count);
    times.push(input.varint()?);
    let first_litres = input.varint()?;
    let mut delta = 0u64;
    for dod in input.runs(count - 1)? {
        delta = delta.wrapping_add(unzigzag(dod) as u64);
        let last = times[times.len() - 1];
        times.push(last.wrapping_add(delta));
    }
    let mut litres = Vec::with_capacity(count);
    litres.push(first_litres);
    for _ in 1..count {
        let step = input.varint()?;
        litres.push(litres[litres.len() - 1].wrapping_add(step));
    }
    let flags = input.runs(count)?;
    let mut readings = Vec::with_capacity(count);
    for ((ts_ms, litres), flags) in times.into_iter().zip(litres).zip(flags) {
        let flags = u8::try_from(flags).map_err(|_| ChunkError(format!("flags {flags} are not a byte")))?;
        let (alarms, has_flow) = split_flags(flags)?;
        let flow_lph = if has_flow { Some(input.flow()?) } else { None };
        readings.push(Reading { meter, ts_ms, litres, flow_lph, alarms });
    }
    input.finish()?;
    Ok(readings)
}

/// Encodes a write-ahead record: readings of any meters, in any order (at most
/// [`MAX_READINGS`] × 16 of them).
pub fn encode_record(readings: &[Reading]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + readings.len() * 16);
    out.push(FORMAT);
    put(&mut out, readings.len() as u64);
    for reading in readings {
        put(&mut out, reading.meter.code());
        put(&mut out, reading.ts_ms);
        put(&mut out, reading.litres);
        out.push(flags(reading));
        if let Some(flow) = reading.flow_lph {
            put(&mut out, u64::from(flow));
        }
    }
    seal(out)
}

/// Decodes a write-ahead record.
pub fn decode_record(bytes: &[u8]) -> Result<Vec<Reading>, ChunkError> {
    let mut input = Input::open(bytes)?;
    let count = input.varint()?;
    // Every reading takes at least four bytes: a damaged count cannot allocate past the record.
    if count > (input.bytes.len() / 4) as u64 {
        return Err(ChunkError(format!("{count} readings cannot fit in {} bytes", input.bytes.len())));
    }
    let mut readings = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (meter, ts_ms, litres) = (input.meter()?, input.varint()?, input.varint()?);
        let (alarms, has_flow) = split_flags(input.byte()?)?;
        let flow_lph = if has_flow { Some(input.flow()?) } else { None };
        readings.push(Reading { meter, ts_ms, litres, flow_lph, alarms });
    }
    input.finish()?;
    Ok(readings)
}

/// The alarms of a flags byte, and whether a flow follows.
fn split_flags(flags: u8) -> Result<(Alarms, bool), ChunkError> {
    let alarms = Alarms::from_bits(flags & !HAS_FLOW)
        .ok_or_else(|| ChunkError(format!("alarm bits {:#x} are not known", flags & !HAS_FLOW)))?;
    Ok((alarms, flags & HAS_FLOW != 0))
}

fn flags(reading: &Reading) -> u8 {
    reading.alarms.bits() | if reading.flow_lph.is_some() { HAS_FLOW } else { 0 }
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `bytes` (a chunk or a record) are whole: their checksum holds.
pub fn is_whole(bytes: &[u8]) -> bool {
    check(bytes).is_ok()
}

/// The body of a chunk whose checksum holds.
fn check(bytes: &[u8]) -> Result<&[u8], ChunkError> {
    let split = bytes
        .len()
        .checked_sub(4)
        .ok_or_else(|| ChunkError(format!("{} bytes is too short", bytes.len())))?;
    let (body, crc) = bytes.split_at(split);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32(body);
    if stored != computed {
        return Err(ChunkError(format!(
            "checksum {stored:#010x} does not match its bytes ({computed:#010x})"
        )));
    }
    Ok(body)
}

fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes `values` as (value, repeats) pairs.
fn put_runs(out: &mut Vec<u8>, values: impl Iterator<Item = u64>) {
    let mut run: Option<(u64, u64)> = None;
    for value in values {
        run = match run {
            Some((current, repeats)) if current == value => Some((current, repeats + 1)),
            Some((current, repeats)) => {
                put(out, current);
                put(out, repeats);
                Some((value, 0))
            }
            None => Some((value, 0)),
        };
    }
    if let Some((current, repeats)) = run {
        put(out, current);
        put(out, repeats);
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    /// The body of a chunk or record whose checksum holds, past its format byte.
    fn open(bytes: &'a [u8]) -> Result<Self, ChunkError> {
        let mut input = Input { bytes: check(bytes)?, at: 0 };
        let format = input.byte()?;
        if format != FORMAT {
            return Err(ChunkError(format!("format {format} is not one this version reads ({FORMAT})")));
        }
        Ok(input)
    }

    /// Nothing may follow the last reading.
    fn finish(&self) -> Result<(), ChunkError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            left => Err(ChunkError(format!("{left} bytes left after the last reading"))),
        }
    }

    fn byte(&mut self) -> Result<u8, ChunkError> {
        let byte =
            *self.bytes.get(self.at).ok_or_else(|| ChunkError("ends in the middle of a reading".into()))?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ChunkError("a number runs past 64 bits".into()))
    }

    fn meter(&mut self) -> Result<MeterId, ChunkError> {
        let code = self.varint()?;
        MeterId::from_code(code).ok_or_else(|| ChunkError(format!("{code} is not the code of a meter id")))
    }

    fn flow(&mut self) -> Result<u32, ChunkError> {
        let flow = self.varint()?;
        u32::try_from(flow).map_err(|_| ChunkError(format!("flow {flow} L/h is past u32")))
    }

    /// `count` values written by [`put_runs`].
    fn runs(&mut self, count: usize) -> Result<Vec<u64>, ChunkError> {
        let mut values = Vec::with_capacity(count);
        while values.len() < count {
            let value = self.varint()?;
            let repeats = self.varint()?;
            let left = (count - values.len()) as u64;
            if repeats >= left {
                return Err(ChunkError(format!("a run of {} values where {left} were left", repeats + 1)));
            }
            values.extend(std::iter::repeat_n(value, repeats as usize + 1));
        }
        Ok(values)
    }
}

/// CRC-32 (IEEE 802.3, the one of zip and PNG).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_continue(0, bytes)
}

/// The CRC-32 of the bytes whose CRC-32 is `crc` followed by `bytes`: a CRC computed piece by
/// piece.
pub fn crc32_continue(crc: u32, bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!crc, |crc, byte| CRC_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8))
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const T0: u64 = 1_795_000_000_000;
    const QUARTER_HOUR: u64 = 900_000;

    /// A small deterministic generator for the store's property tests (xorshift64).
    pub(in crate::store) struct Rng(pub(in crate::store) u64);

    impl Rng {
        pub(in crate::store) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(in crate::store) fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }
    }

    fn reading(ts_ms: u64, litres: u64) -> Reading {
        Reading { meter: 7.into(), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    #[test]
    fn crc32_is_the_standard_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_continue(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn a_regular_series_takes_about_a_byte_per_reading() {
        let readings: Vec<Reading> =
            (0..128).map(|i| reading(T0 + i * QUARTER_HOUR, 500_000 + i * 37)).collect();
        let bytes = encode(&readings);
        assert_eq!(decode(7.into(), &bytes), Ok(readings));
        assert!(bytes.len() <= 128 + 24, "{} bytes for 128 regular readings", bytes.len());
    }

    #[test]
    fn random_series_round_trip_exactly() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for case in 0..500 {
            let count = 1 + rng.below(300) as usize;
            let mut ts = rng.next() >> 1;
            let mut litres = rng.below(1 << 40);
            let mut readings = Vec::with_capacity(count);
            for _ in 0..count {
                readings.push(Reading {
                    meter: 7.into(),
                    ts_ms: ts,
                    litres,
                    flow_lph: (rng.below(3) == 0).then(|| rng.next() as u32),
                    alarms: Alarms::from_bits(if rng.below(10) == 0 { rng.below(32) as u8 } else { 0 })
                        .expect("known bits"),
                });
                // Mostly regular, with gaps, jitter and, now and then, anything at all (a back-fill
                // merged out of order would still round-trip).
                ts = match rng.below(20) {
                    0 => ts.wrapping_add(rng.below(1 << 40)),
                    1 => rng.next(),
                    2 => ts.wrapping_add(QUARTER_HOUR + rng.below(5_000)),
                    _ => ts.wrapping_add(QUARTER_HOUR),
                };
                litres = match rng.below(30) {
                    0 => rng.next(),
                    _ => litres.wrapping_add(rng.below(200)),
                };
            }
            let bytes = encode(&readings);
            assert_eq!(decode(7.into(), &bytes).as_ref(), Ok(&readings), "case {case}");
        }
    }

    #[test]
    fn every_damaged_byte_and_every_cut_is_refused() {
        let readings: Vec<Reading> = (0..40)
            .map(|i| Reading {
                flow_lph: Some(i as u32 * 3),
                ..reading(T0 + i * QUARTER_HOUR, 1_000 + i * i)
            })
            .collect();
        let bytes = encode(&readings);
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                assert!(decode(7.into(), &damaged).is_err(), "byte {at} flipped by {flip:#x} went unnoticed");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode(7.into(), &bytes[..len]).is_err(), "cut at {len} went unnoticed");
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let readings = vec![
            Reading { flow_lph: Some(12), ..reading(T0, 5) },
            Reading {
                meter: MeterId::parse("____________").expect("the largest id"),
                alarms: Alarms::from_bits(0b1_0001).expect("leak and dry"),
                ..reading(T0 - 1, u64::MAX)
            },
            reading(0, 0),
        ];
        let bytes = encode_record(&readings);
        assert_eq!(decode_record(&bytes), Ok(readings));
        assert_eq!(decode_record(&encode_record(&[])), Ok(Vec::new()));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(decode_record(&damaged).is_err(), "byte {at} damaged went unnoticed");
        }
    }

    #[test]
    fn a_count_past_the_limit_is_refused_before_allocating() {
        let mut body = vec![FORMAT];
        put(&mut body, u64::MAX);
        let error = decode(7.into(), &seal(body)).expect_err("refused");
        assert!(error.to_string().contains("is not a chunk's count"), "{error}");
    }
}
