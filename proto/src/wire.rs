//! The envelope every hydromesh message travels in, and its codec.
//!
//! An encoded message is the wire version (`u16`, little endian) followed by the message in
//! bincode 2's standard configuration (serde). Decoding checks the byte limit before anything is
//! read, refuses another version, and refuses trailing bytes, so that a message has exactly one
//! encoding.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::MAX_MESSAGE_BYTES;

/// Version of the wire format; a node refuses messages of another version.
pub const WIRE_VERSION: u16 = 2;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The message is larger than the protocol allows.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message has another wire version.
    #[error("wire version {found} is not supported (this build speaks version {expected})")]
    Version {
        /// The version it claims.
        found: u16,
        /// The version this build speaks.
        expected: u16,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message is followed by bytes that belong to nothing.
    #[error("malformed message: {0} trailing bytes")]
    TrailingBytes(usize),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `message` in the versioned envelope.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let mut bytes = WIRE_VERSION.to_le_bytes().to_vec();
    bincode::serde::encode_into_std_write(message, &mut bytes, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge { size: bytes.len(), limit: MAX_MESSAGE_BYTES });
    }
    Ok(bytes)
}

/// Decodes a message of at most `max_bytes` bytes from its envelope.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, WireError> {
    let limit = max_bytes.min(MAX_MESSAGE_BYTES);
    if bytes.len() > limit {
        return Err(WireError::TooLarge { size: bytes.len(), limit });
    }
    let (version, body) = match bytes {
        [lo, hi, body @ ..] => (u16::from_le_bytes([*lo, *hi]), body),
        _ => return Err(WireError::Malformed("shorter than its version".into())),
    };
    if version != WIRE_VERSION {
        return Err(WireError::Version { found: version, expected: WIRE_VERSION });
    }
    let (message, read) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(WireError::TrailingBytes(body.len() - read));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use serde::Deserialize;

    use super::*;
    use crate::control::BlockReason;
    use crate::ingest::{self, MeterCommand, Outcome, Rejection, Valve};
    use crate::query::{self, Coverage, TopAnswer, TopEntry};
    use crate::summary::{
        Alert, AlertKind, Blocked, CommandVersion, Digest, Gossip, MeterFilter, MeterSpan, NodeSummary,
        OriginFilter, Point, SignedAlive, SignedSummary, SummaryDelta, SummaryVersion, SyncRequest,
        SyncResponse, TopRun,
    };
    use crate::{Alarms, Reading};

    fn reading() -> Reading {
        Reading {
            meter: 7.into(),
            ts_ms: 1_795_000_000_000,
            litres: 1234,
            flow_lph: Some(60),
            alarms: Alarms::LEAK,
        }
    }

    fn summary() -> NodeSummary {
        NodeSummary {
            origin: "12D3KooW".into(),
            name: "north".into(),
            version: 3,
            generated_at_ms: 1_795_000_000_000,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            meter_count: 1,
            total_consumption_l: 34,
            top: vec![MeterSpan {
                meter: 7.into(),
                first: Point { ts_ms: 1_794_999_000_000, litres: 1200 },
                last: Point { ts_ms: 1_795_000_000_000, litres: 1234 },
            }],
            filter_hash: vec![0xab; 4],
            period_start_ms: 1_794_960_000_000,
            period_consumption_l: 34,
            period_meters: 1,
            blocked: vec![Blocked {
                meter: 7.into(),
                reason: BlockReason::Cap,
                since_ms: 1_795_000_000_000,
                detail: "cap".into(),
            }],
            alerts: vec![Alert { meter: 7.into(), kind: AlertKind::Leak, since_ms: 1_795_000_000_000 }],
            truncated: false,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Encodes, checks the bytes against the golden vector, and decodes back.
    fn golden<T>(message: T, expected_hex: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + Debug,
    {
        let bytes = encode(&message).expect("encode");
        assert_eq!(hex(&bytes), expected_hex, "wire format of {message:?} changed");
        let back: T = decode(&bytes, bytes.len()).expect("decode");
        assert_eq!(back, message);
    }

    #[test]
    fn golden_ingest_request() {
        golden(ingest::Request { readings: vec![reading()] }, "02000107fd005e56eea1010000fbd204013c01");
    }

    #[test]
    fn golden_ingest_response() {
        golden(
            ingest::Response::Done {
                outcomes: vec![
                    Outcome::Accepted,
                    Outcome::Duplicate,
                    Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: 5 }),
                ],
                commands: vec![MeterCommand { meter: 7.into(), valve: Valve::Closed }],
            },
            "020000030001020305010701",
        );
    }

    #[test]
    fn golden_query_request_and_response() {
        golden(query::Request::Top { n: 10, since_ms: Some(3_600_000) }, "0200000a01fc80ee3600");
        golden(
            query::Response::Top(TopAnswer {
                entries: vec![TopEntry { meter: 7.into(), consumption_l: 34, home: "12D3KooW".into() }],
                coverage: Coverage {
                    included: vec!["12D3KooW".into()].into(),
                    stale: vec![],
                    missing: vec![],
                    oldest_data_age_ms: 5,
                },
            }),
            "02000001072208313244334b6f6f570108313244334b6f6f57000005",
        );
    }

    #[test]
    fn golden_summary_and_sync() {
        let payload = encode(&summary()).expect("encode");
        golden(summary(), "020008313244334b6f6f57056e6f72746803fd005e56eea101000001172f6970342f3132372e302e302e312f7463702f3430303101220107fdc01b47eea1010000fbb004fd005e56eea1010000fbd20404ababababfd0004f4eba10100002201010701fd005e56eea101000003636170010700fd005e56eea101000000");
        golden(
            Gossip::Summary(SignedSummary { payload, public_key: vec![1, 2], signature: vec![3] }),
            "0200007d020008313244334b6f6f57056e6f72746803fd005e56eea101000001172f6970342f3132372e302e302e312f7463702f3430303101220107fdc01b47eea1010000fbb004fd005e56eea1010000fbd20404ababababfd0004f4eba10100002201010701fd005e56eea101000003636170010700fd005e56eea1010000000201020103",
        );
        golden(Gossip::Alive(SignedAlive { payload: vec![4], signature: vec![5, 6] }), "0200010104020506");
        let mut changed = summary();
        let new_top = changed.top.clone();
        changed.top.clear();
        golden(
            Gossip::Delta(Box::new(SummaryDelta {
                base: 2,
                summary: NodeSummary { blocked: vec![], ..changed },
                top: vec![TopRun::Base { start: 1, len: 4 }, TopRun::New(new_top[0])],
                same_blocked: true,
                same_alerts: false,
                signature: vec![9],
            })),
            "0200020208313244334b6f6f57056e6f72746803fd005e56eea101000001172f6970342f3132372e302e302e312f7463702f3430303101220004ababababfd0004f4eba1010000220100010700fd005e56eea101000000020001040107fdc01b47eea1010000fbb004fd005e56eea1010000fbd20401000109",
        );
        golden(
            SyncRequest {
                digest: Digest {
                    summaries: vec![SummaryVersion { origin: vec![0, 1], version: 7, has_filter: true }],
                    commands: vec![CommandVersion { subject: "policy".into(), issued_at_ms: 9, tag: 300 }],
                },
            },
            "02000102000107010106706f6c69637909fb2c01",
        );
        let mut filter = MeterFilter::with_capacity(1);
        filter.insert(7.into());
        golden(
            SyncResponse {
                summaries: vec![],
                commands: vec![],
                filters: vec![OriginFilter { origin: vec![0, 1], filter }],
                more: true,
            },
            "020000000102000101fd00008010420821000701",
        );
    }

    #[test]
    fn oversized_messages_are_refused_before_decoding() {
        let bytes = encode(&ingest::Request { readings: vec![reading(); 100] }).expect("encode");
        let err = decode::<ingest::Request>(&bytes, 100).expect_err("over the limit");
        assert_eq!(err, WireError::TooLarge { size: bytes.len(), limit: 100 });
    }

    #[test]
    fn other_versions_truncation_and_trailing_bytes_are_refused() {
        let mut bytes = encode(&query::Request::Stats).expect("encode");
        bytes.push(0);
        assert_eq!(decode::<query::Request>(&bytes, 1024), Err(WireError::TrailingBytes(1)));
        bytes[0] = 9;
        assert!(matches!(decode::<query::Request>(&bytes, 1024), Err(WireError::Version { found: 9, .. })));
        assert!(matches!(decode::<query::Request>(&[1], 1024), Err(WireError::Malformed(_))));
        let full = encode(&ingest::Request { readings: vec![reading()] }).expect("encode");
        assert!(matches!(
            decode::<ingest::Request>(&full[..full.len() - 1], 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_printed_meter_id_travels_as_its_code_and_a_code_of_no_id_is_refused() {
        let printed = crate::MeterId::parse("2124589c").expect("id");
        let message = ingest::Request { readings: vec![Reading { meter: printed, ..reading() }] };
        let bytes = encode(&message).expect("encode");
        assert_eq!(decode::<ingest::Request>(&bytes, 1024), Ok(message));
        // The reading's meter is the u64 right after the batch's length (one byte): u64::MAX
        // (bincode's varint: 253 and 8 bytes) is the code of no id.
        let mut bad = bytes[..3].to_vec();
        bad.push(253);
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        bad.extend_from_slice(&encode(&reading()).expect("encode")[3..]);
        assert!(
            matches!(decode::<ingest::Request>(&bad, 1024), Err(WireError::Malformed(e)) if e.contains("not the code of a meter id"))
        );
    }

    #[test]
    fn a_huge_claimed_length_does_not_allocate_it() {
        // The version, then a Vec length of u64::MAX in bincode's varint encoding.
        let mut bytes = WIRE_VERSION.to_le_bytes().to_vec();
        bytes.push(253);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode::<ingest::Request>(&bytes, 1024), Err(WireError::Malformed(_))));
    }

    #[test]
    fn garbage_never_panics() {
        // A fixed pseudo-random stream: every prefix must decode or fail cleanly.
        let mut state = 0x1234_5678_u64;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for len in 0..garbage.len() {
            let mut bytes = WIRE_VERSION.to_le_bytes().to_vec();
            bytes.extend_from_slice(&garbage[..len]);
            let _ = decode::<ingest::Request>(&bytes, 1 << 20);
            let _ = decode::<query::Response>(&bytes, 1 << 20);
            let _ = decode::<SyncRequest>(&bytes, 1 << 20);
        }
    }
}
