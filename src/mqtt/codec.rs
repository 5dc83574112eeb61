//! The MQTT versions the embedded broker speaks, behind one reader and one writer: 3.1.1
//! (rumqttc's v4 codec) and 5 (its v5 codec). A connection's version is the one its CONNECT
//! names. Packets read are handed to the session as the 3.1.1 types it works with (MQTT 5's
//! properties carry nothing hydromesh uses; topic aliases are not offered, so a client never
//! sends one); packets written carry MQTT 5's reason codes where it has them.

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as Error5, QoS as QoS5};

/// A connection's protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why a CONNECT is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// A protocol version this broker does not speak (MQTT 3.1, or an unknown level).
    ProtocolVersion,
    /// An empty client id without a clean session.
    ClientId,
}

/// A packet the broker writes.
pub enum Out<'a> {
    /// CONNACK: accepted, or refused for this reason.
    ConnAck(Option<ConnectRefusal>),
    /// PUBACK; `refused` when the message was received but is not a reading.
    PubAck { pkid: u16, refused: bool },
    /// PUBREC (QoS 2); `refused` as for PUBACK.
    PubRec { pkid: u16, refused: bool },
    /// PUBCOMP.
    PubComp(u16),
    /// SUBACK: per filter, the QoS granted or `None` for a refused filter.
    SubAck(u16, &'a [Option<QoS>]),
    /// UNSUBACK for this many filters.
    UnsubAck(u16, usize),
    /// PINGRESP.
    PingResp,
    /// A command to a subscriber.
    Publish(&'a v4::Publish),
}

/// The protocol level a buffered CONNECT names, once enough of it arrived: the byte after the
/// fixed header and the protocol name (`MQTT` or 3.1's `MQIsdp`).
pub fn connect_level(bytes: &[u8]) -> Option<u8> {
    // The fixed header: the type byte, then the remaining length in 1 to 4 bytes.
    let length_bytes = bytes.iter().skip(1).take(4).position(|byte| byte & 0x80 == 0)? + 1;
    let at = 1 + length_bytes;
    let name_len = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
    bytes.get(at + 2 + name_len).copied()
}

impl Version {
    /// The version of a CONNECT's protocol level, if this broker speaks it.
    pub fn of_level(level: u8) -> Option<Version> {
        match level {
            4 => Some(Version::V311),
            5 => Some(Version::V5),
            _ => None,
        }
    }

    /// Reads the next packet as the 3.1.1 types.
    pub fn read(self, rbuf: &mut BytesMut, max_bytes: usize) -> Result<Packet, CodecError> {
        match self {
            Version::V311 => Packet::read(rbuf, max_bytes),
            Version::V5 => {
                // A DISCONNECT without reason code (what clients send to end normally): rumqttc
                // refuses any other empty packet than a ping as "payload required".
                if rbuf.starts_with(&[0xE0, 0x00]) {
                    rbuf.advance(2);
                    return Ok(Packet::Disconnect);
                }
                let packet = v5::Packet::read(rbuf, Some(u32::try_from(max_bytes).unwrap_or(u32::MAX)))
                    .map_err(from_v5_error)?;
                from_v5(packet)
            }
        }
    }

    /// Encodes a packet into `wbuf`. Encoding only fails for packets over 256 MiB, which this
    /// server never builds.
    pub fn write(self, wbuf: &mut BytesMut, packet: Out<'_>) {
        let written = match self {
            Version::V311 => write_v4(wbuf, packet).is_ok(),
            Version::V5 => write_v5(wbuf, packet).is_ok(),
        };
        debug_assert!(written, "encoding an MQTT packet failed");
    }
}

fn write_v4(wbuf: &mut BytesMut, packet: Out<'_>) -> Result<usize, CodecError> {
    match packet {
        Out::ConnAck(refusal) => {
            let code = match refusal {
                None => v4::ConnectReturnCode::Success,
                Some(ConnectRefusal::ProtocolVersion) => v4::ConnectReturnCode::RefusedProtocolVersion,
                Some(ConnectRefusal::ClientId) => v4::ConnectReturnCode::BadClientId,
            };
            v4::ConnAck::new(code, false).write(wbuf)
        }
        // 3.1.1 has no reason codes: a refused message is acknowledged like any other.
        Out::PubAck { pkid, .. } => v4::PubAck::new(pkid).write(wbuf),
        Out::PubRec { pkid, .. } => v4::PubRec::new(pkid).write(wbuf),
        Out::PubComp(pkid) => v4::PubComp::new(pkid).write(wbuf),
        Out::SubAck(pkid, granted) => {
            let codes = granted
                .iter()
                .map(|qos| qos.map_or(v4::SubscribeReasonCode::Failure, v4::SubscribeReasonCode::Success))
                .collect();
            v4::SubAck::new(pkid, codes).write(wbuf)
        }
        Out::UnsubAck(pkid, _) => v4::UnsubAck::new(pkid).write(wbuf),
        Out::PingResp => v4::PingResp.write(wbuf),
        Out::Publish(publish) => publish.write(wbuf),
    }
}

fn write_v5(wbuf: &mut BytesMut, packet: Out<'_>) -> Result<usize, Error5> {
    match packet {
        Out::ConnAck(refusal) => {
            let code = match refusal {
                None => v5::ConnectReturnCode::Success,
                Some(ConnectRefusal::ProtocolVersion) => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                Some(ConnectRefusal::ClientId) => v5::ConnectReturnCode::ClientIdentifierNotValid,
            };
            v5::ConnAck { session_present: false, code, properties: None }.write(wbuf)
        }
        Out::PubAck { pkid, refused } => {
            let reason =
                if refused { v5::PubAckReason::PayloadFormatInvalid } else { v5::PubAckReason::Success };
            v5::PubAck { pkid, reason, properties: None }.write(wbuf)
        }
        Out::PubRec { pkid, refused } => {
            let reason =
                if refused { v5::PubRecReason::PayloadFormatInvalid } else { v5::PubRecReason::Success };
            v5::PubRec { pkid, reason, properties: None }.write(wbuf)
        }
        Out::PubComp(pkid) => v5::PubComp::new(pkid, None).write(wbuf),
        Out::SubAck(pkid, granted) => {
            let return_codes = granted
                .iter()
                .map(|qos| {
                    qos.map_or(v5::SubscribeReasonCode::TopicFilterInvalid, |qos| {
                        v5::SubscribeReasonCode::Success(to_qos5(qos))
                    })
                })
                .collect();
            v5::SubAck { pkid, return_codes, properties: None }.write(wbuf)
        }
        Out::UnsubAck(pkid, filters) => {
            v5::UnsubAck { pkid, reasons: vec![v5::UnsubAckReason::Success; filters], properties: None }
                .write(wbuf)
        }
        Out::PingResp => v5::PingResp::write(wbuf),
        Out::Publish(publish) => v5::Publish {
            dup: publish.dup,
            qos: to_qos5(publish.qos),
            retain: publish.retain,
            topic: publish.topic.clone().into(),
            pkid: publish.pkid,
            payload: publish.payload.clone(),
            properties: None,
        }
        .write(wbuf),
    }
}

fn to_qos5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn from_qos5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn from_v5_error(error: Error5) -> CodecError {
    match error {
        Error5::InsufficientBytes(needed) => CodecError::InsufficientBytes(needed),
        Error5::PayloadSizeLimitExceeded { pkt_size, .. } => CodecError::PayloadSizeLimitExceeded(pkt_size),
        _ => CodecError::MalformedPacket,
    }
}

/// An MQTT 5 packet as the 3.1.1 packet the session handles.
fn from_v5(packet: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v5::Packet::Connect(connect, _, _) => Packet::Connect(v4::Connect {
            protocol: Protocol::V5,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id,
            clean_session: connect.clean_start,
            last_will: None,
            login: None,
        }),
        v5::Packet::Publish(publish) => {
            // Without a topic alias offered, a PUBLISH always names its topic.
            let topic = String::from_utf8(publish.topic.to_vec()).map_err(|_| CodecError::TopicNotUtf8)?;
            Packet::Publish(v4::Publish {
                dup: publish.dup,
                qos: from_qos5(publish.qos),
                retain: publish.retain,
                topic,
                pkid: publish.pkid,
                payload: publish.payload,
            })
        }
        v5::Packet::PubAck(ack) => Packet::PubAck(v4::PubAck::new(ack.pkid)),
        v5::Packet::PubRec(rec) => Packet::PubRec(v4::PubRec::new(rec.pkid)),
        v5::Packet::PubRel(rel) => Packet::PubRel(v4::PubRel::new(rel.pkid)),
        v5::Packet::PubComp(comp) => Packet::PubComp(v4::PubComp::new(comp.pkid)),
        v5::Packet::Subscribe(subscribe) => Packet::Subscribe(v4::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|filter| v4::SubscribeFilter { path: filter.path, qos: from_qos5(filter.qos) })
                .collect(),
        }),
        v5::Packet::Unsubscribe(unsubscribe) => {
            Packet::Unsubscribe(v4::Unsubscribe { pkid: unsubscribe.pkid, topics: unsubscribe.filters })
        }
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::Disconnect(_) => Packet::Disconnect,
        // Server packets, and AUTH (no extended authentication is offered): refused as the
        // session refuses a server packet from a client.
        v5::Packet::ConnAck(_)
        | v5::Packet::SubAck(_)
        | v5::Packet::UnsubAck(_)
        | v5::Packet::PingResp(_)
        | v5::Packet::Auth(_) => Packet::PingResp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_of_a_connect_is_found_in_its_first_bytes() {
        let mut buf = BytesMut::new();
        v4::Connect::new("meter-gw").write(&mut buf).expect("encode");
        assert_eq!(connect_level(&buf), Some(4));
        let mut five = BytesMut::new();
        v5::Connect { keep_alive: 30, client_id: "gw".into(), clean_start: true, properties: None }
            .write(&None, &None, &mut five)
            .expect("encode");
        assert_eq!(connect_level(&five), Some(5));
        assert_eq!(connect_level(&five[..3]), None, "not enough bytes yet");
        let read = Version::V5.read(&mut five, 1 << 20).map(|p| matches!(p, Packet::Connect(_)));
        assert!(matches!(read, Ok(true)), "{read:?}");
        let mut bye = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(Version::V5.read(&mut bye, 1 << 20), Ok(Packet::Disconnect)), "an empty DISCONNECT");
        assert!(bye.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_either_decoder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = (*first & 0x0f) | (((next() % 15) as u8) << 4);
            }
            let _ = connect_level(&bytes);
            for version in [Version::V311, Version::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                while version.read(&mut buf, 1 << 16).is_ok() {}
            }
        }
    }
}
