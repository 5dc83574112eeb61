//! MQTT topics and payloads: a publish on a reading topic becomes a [`Reading`], a valve command
//! becomes a publish.
//!
//! - `hydromesh/meters/{meter}/reading`: `{"ts":"RFC 3339 or ms","litres":N,"flow_lph":N,
//!   "alarms":["leak"]}` (`flow_lph` and `alarms` optional; a `meter` field, if present, must
//!   name the topic's meter).
//! - `wmbusmeters` and `wmbusmeters/…`: wmbusmeters' JSON. `id` (a string of digits) is the meter,
//!   `total_m3` the register, converted to litres **rounded to the nearest litre** (6.4086 m³ is
//!   6409 L, 6.4084 m³ is 6408 L), `timestamp` the time (RFC 3339), `volume_flow_m3h` (or
//!   `flow_m3h`, `current_flow_m3h`) the flow, and the words of `status`, `current_status` and
//!   `current_alarms` (space- or comma-separated, any case) the alarm flags, as
//!   [`status_alarms`] reads the words of wmbusmeters' water drivers.
//! - `hydromesh/meters/{meter}/command`: `{"meter":N,"valve":"closed"|"open"}`, from the node.

use std::borrow::Cow;
use std::fmt;

use hydromesh_proto::ingest::MeterCommand;
use hydromesh_proto::{Alarms, MeterId, Reading};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::present::input::{parse_timestamp, shown};

/// Largest payload of a reading; a larger one is refused (the packet limit is larger).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Prefix of the topics of one meter.
const METER_PREFIX: &str = "hydromesh/meters/";
/// The topic (and prefix of the subtopics) wmbusmeters publishes on.
const WMBUS_TOPIC: &str = "wmbusmeters";
/// The largest register a wmbusmeters reading may carry, in litres: beyond 2^53 an `f64` no
/// longer holds every whole litre.
const MAX_WMBUS_LITRES: f64 = 9_007_199_254_740_992.0;

/// Why a publish is not a reading. [`Refusal::reason`] is the metrics label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The topic is not a reading topic.
    #[error("topic `{0}` is not a reading topic (hydromesh/meters/METER/reading or wmbusmeters/#)")]
    UnknownTopic(String),
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes (at most {MAX_PAYLOAD_BYTES})")]
    PayloadTooLarge(usize),
    /// The payload is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The payload is JSON but not a reading.
    #[error("invalid reading: {0}")]
    InvalidReading(String),
}

impl Refusal {
    /// The label counted in `hydromesh_refused_total{source="mqtt",reason=…}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownTopic(_) => "unknown_topic",
            Refusal::PayloadTooLarge(_) => "payload_too_large",
            Refusal::MalformedJson(_) => "malformed_json",
            Refusal::InvalidReading(_) => "invalid_reading",
        }
    }
}

/// What a publish carries: a reading, and the status words hydromesh does not know (the
/// reading then carries [`Alarms::OTHER`]).
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// The reading.
    pub reading: Reading,
    /// Its status words hydromesh does not know, as sent.
    pub unknown_status: Vec<String>,
}

/// The reading a publish carries, or why it carries none.
pub fn parse_publish(topic: &str, payload: &[u8]) -> Result<Parsed, Refusal> {
    let kind = classify(topic)?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Refusal::PayloadTooLarge(payload.len()));
    }
    match kind {
        TopicKind::Meter(meter) => {
            parse_meter_json(meter, payload).map(|reading| Parsed { reading, unknown_status: Vec::new() })
        }
        TopicKind::Wmbus => parse_wmbus_json(payload),
    }
}

/// The topic a meter's valve commands are published on.
pub fn command_topic(meter: MeterId) -> String {
    format!("{METER_PREFIX}{meter}/command")
}

/// The JSON payload of a valve command.
pub fn command_payload(command: &MeterCommand) -> String {
    format!("{{\"meter\":\"{}\",\"valve\":\"{}\"}}", command.meter, command.valve.as_str())
}

/// The subscriptions of a node subscribed to an existing broker.
pub const SUBSCRIPTIONS: [&str; 2] = ["hydromesh/meters/+/reading", "wmbusmeters/#"];

enum TopicKind {
    Meter(MeterId),
    Wmbus,
}

fn classify(topic: &str) -> Result<TopicKind, Refusal> {
    if let Some(meter) = topic.strip_prefix(METER_PREFIX).and_then(|rest| rest.strip_suffix("/reading")) {
        return MeterId::parse(meter).map(TopicKind::Meter).map_err(|error| {
            Refusal::InvalidReading(format!("`{}` in the topic is not a meter id ({error})", shown(meter)))
        });
    }
    if topic == WMBUS_TOPIC || topic.strip_prefix(WMBUS_TOPIC).is_some_and(|rest| rest.starts_with('/')) {
        return Ok(TopicKind::Wmbus);
    }
    Err(Refusal::UnknownTopic(shown(topic)))
}

/// A JSON error as a refusal: a syntax error is malformed JSON, anything else (a missing field,
/// a wrong type) an invalid reading.
fn json_refusal(error: serde_json::Error) -> Refusal {
    match error.classify() {
        serde_json::error::Category::Data => Refusal::InvalidReading(error.to_string()),
        _ => Refusal::MalformedJson(error.to_string()),
    }
}

/// The hydromesh reading format.
#[derive(Deserialize)]
struct MeterJson<'a> {
    meter: Option<MeterId>,
    ts: Timestamp,
    litres: u64,
    flow_lph: Option<u32>,
    #[serde(borrow)]
    alarms: Option<Vec<Cow<'a, str>>>,
}

fn parse_meter_json(meter: MeterId, payload: &[u8]) -> Result<Reading, Refusal> {
    let json: MeterJson = serde_json::from_slice(payload).map_err(json_refusal)?;
    if let Some(named) = json.meter.filter(|named| *named != meter) {
        return Err(Refusal::InvalidReading(format!("meter {named} in a message on meter {meter}'s topic")));
    }
    let mut alarms = Alarms::empty();
    for name in json.alarms.iter().flatten() {
        let flag = Alarms::from_name(name).ok_or_else(|| {
            Refusal::InvalidReading(format!(
                "unknown alarm `{}` (expected leak, burst, tamper, backflow, dry, other)",
                shown(name)
            ))
        })?;
        alarms = alarms.union(flag);
    }
    Ok(Reading { meter, ts_ms: json.ts.0, litres: json.litres, flow_lph: json.flow_lph, alarms })
}

/// The fields of wmbusmeters' JSON hydromesh uses; the others are ignored.
#[derive(Deserialize)]
struct WmbusJson<'a> {
    id: Option<MeterId>,
    total_m3: Option<f64>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    volume_flow_m3h: Option<f64>,
    flow_m3h: Option<f64>,
    current_flow_m3h: Option<f64>,
    #[serde(borrow)]
    current_status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    current_alarms: Option<Cow<'a, str>>,
}

fn parse_wmbus_json(payload: &[u8]) -> Result<Parsed, Refusal> {
    let json: WmbusJson = serde_json::from_slice(payload).map_err(json_refusal)?;
    let invalid = |text: &str| Refusal::InvalidReading(text.to_owned());
    let meter = json.id.ok_or_else(|| invalid("missing field `id`"))?;
    let total_m3 = json.total_m3.ok_or_else(|| invalid("missing field `total_m3`"))?;
    let litres = m3_to_litres(total_m3)
        .ok_or_else(|| Refusal::InvalidReading(format!("`total_m3` {total_m3} is not a register in m³")))?;
    let timestamp = json.timestamp.ok_or_else(|| invalid("missing field `timestamp`"))?;
    let ts_ms = parse_timestamp(&timestamp)
        .map_err(|error| Refusal::InvalidReading(format!("field `timestamp`: {error}")))?;
    let flow_lph = match json.volume_flow_m3h.or(json.flow_m3h).or(json.current_flow_m3h) {
        Some(m3h) => Some(
            m3_to_litres(m3h)
                .and_then(|lph| u32::try_from(lph).ok())
                .ok_or_else(|| Refusal::InvalidReading(format!("flow {m3h} m³/h is out of range")))?,
        ),
        None => None,
    };
    let (mut alarms, mut unknown_status) = (Alarms::empty(), Vec::new());
    for status in [json.current_status, json.status, json.current_alarms].iter().flatten() {
        alarms = alarms.union(status_alarms(status, &mut unknown_status));
    }
    Ok(Parsed { reading: Reading { meter, ts_ms, litres, flow_lph, alarms }, unknown_status })
}

/// Cubic metres as whole litres, rounded to the nearest litre; `None` when negative, not a
/// number, or too large to be exact.
fn m3_to_litres(m3: f64) -> Option<u64> {
    let litres = (m3 * 1000.0).round();
    // The cast is exact: litres is whole and within 0..=2^53.
    (litres.is_finite() && (0.0..=MAX_WMBUS_LITRES).contains(&litres)).then_some(litres as u64)
}

/// The alarm flags of a wmbusmeters status text such as `"ALARM LEAK_FLOW_HIGH"`,
/// `"P_LEAK P_REVERSE_FLOW"` or IZAR's `"leakage,back_flow"`. Water drivers name the same few
/// conditions in many words, so each word is read by what it names:
/// - a leak: any word with `LEAK` (`LEAKAGE`, `P_LEAK`, `LEAK_FLOW_LOW`, …), `CONTINUOUS_FLOW`;
/// - a burst: any word with `BURST`;
/// - reverse flow: `REVERSE`, `BACKFLOW`, `BACK_FLOW`, `WRONG_FLOW_DIRECTION` in a word;
/// - a dry pipe: `DRY`, `DRY_…`, or air in the pipe (`AIR_INSIDE`, `V1_AIR`, `…_OR_AIR`);
/// - tampering: `FRAUD`, `TAMPER`, `MAGNETIC`, `MANIPULATION`, `REMOV` (a meter or module
///   removed) in a word.
///
/// Words about the past (`PREV_…`, `WAS_…`, `…_PREV_MONTH`, `…_PAST`) and the names of dates
/// or types (`LEAK_DATE`, `FRAUD_TYPE`) raise nothing; `OK`, `no_alarm` and the `ALARM` that
/// heads a list of alarms mean none; the meter's own health (battery, power, clock, temperature,
/// errors, a flow below the meter's minimum, `UNKNOWN_…` codes) is no water alarm. Any other
/// word is a condition hydromesh does not know (`general_alarm`, a new driver's word): the
/// reading carries [`Alarms::OTHER`] so it is seen (as an `other` alert on the meter) rather than
/// dropped, and the word goes to `unknown` (the meter's answer shows it).
fn status_alarms(status: &str, unknown: &mut Vec<String>) -> Alarms {
    let mut alarms = Alarms::empty();
    for word in status.split(|c: char| c.is_whitespace() || c == ',').filter(|word| !word.is_empty()) {
        let flag = word_alarm(&word.to_ascii_uppercase());
        if flag == Some(Alarms::OTHER) && !unknown.iter().any(|known| known == word) {
            unknown.push(word.to_owned());
        }
        alarms = alarms.union(flag.unwrap_or_default());
    }
    alarms
}

/// The alarm one upper-case status word names, if any (see [`status_alarms`]).
fn word_alarm(word: &str) -> Option<Alarms> {
    let past = word.starts_with("PREV_")
        || word.starts_with("WAS_")
        || word.ends_with("_PREV_MONTH")
        || word.ends_with("_PAST")
        || word.ends_with("_DATE")
        || word.ends_with("_TYPE");
    let has = |part: &str| word.contains(part);
    let token = |part: &str| word.split('_').any(|piece| piece == part);
    if past || word.starts_with("CODE_") {
        return None;
    }
    if has("LEAK") || word == "CONTINUOUS_FLOW" {
        Some(Alarms::LEAK)
    } else if has("BURST") {
        Some(Alarms::BURST)
    } else if has("REVERSE") || has("BACKFLOW") || has("BACK_FLOW") || has("WRONG_FLOW_DIRECTION") {
        Some(Alarms::BACKFLOW)
    } else if token("DRY") || token("AIR") {
        Some(Alarms::DRY)
    } else if has("FRAUD") || has("TAMPER") || has("MAGNETIC") || has("MANIPULATION") || has("REMOV") {
        Some(Alarms::TAMPER)
    } else if matches!(word, "OK" | "NO_ALARM" | "ALARM" | "NONE" | "NORMAL")
        || ["BAT", "POWER", "VOLTAGE", "CLOCK", "TEMPERATURE", "ERROR", "MIN_FLOW", "MINIMUM_FLOW"]
            .into_iter()
            .any(has)
        || word.starts_with("UNKNOWN_")
    {
        None
    } else {
        Some(Alarms::OTHER)
    }
}

/// A timestamp field: RFC 3339 text, or Unix milliseconds as a number or a string of digits.
struct Timestamp(u64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("RFC 3339 text or Unix milliseconds")
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(ms))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
                parse_timestamp(text)
                    .map(Timestamp)
                    .map_err(|error| E::custom(format!("field `ts`: {error}")))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydromesh_proto::ingest::Valve;

    const TS: u64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z

    fn meter(topic: &str, json: &str) -> Result<Reading, Refusal> {
        parse_publish(topic, json.as_bytes()).map(|parsed| parsed.reading)
    }

    #[test]
    fn hydromesh_readings_with_every_field_and_with_the_required_ones() {
        let reading = meter(
            "hydromesh/meters/42/reading",
            r#"{"ts":"2026-11-23T10:00:00Z","litres":1234,"flow_lph":60,"alarms":["leak","Dry"]}"#,
        )
        .expect("reading");
        assert_eq!(
            reading,
            Reading {
                meter: 42.into(),
                ts_ms: TS,
                litres: 1234,
                flow_lph: Some(60),
                alarms: Alarms::LEAK.union(Alarms::DRY)
            }
        );
        let plain =
            meter("hydromesh/meters/42/reading", &format!(r#"{{"ts":{TS},"litres":5}}"#)).expect("ms");
        assert_eq!((plain.ts_ms, plain.flow_lph, plain.alarms), (TS, None, Alarms::empty()));
        let text_ms = meter("hydromesh/meters/42/reading", &format!(r#"{{"ts":"{TS}","litres":5,"x":[1]}}"#));
        assert_eq!(text_ms.expect("ms as text").ts_ms, TS);
        let offset = meter("hydromesh/meters/42/reading", r#"{"ts":"2026-11-23T11:00:00+01:00","litres":5}"#);
        assert_eq!(offset.expect("offset").ts_ms, TS);
    }

    #[test]
    fn bad_hydromesh_readings_are_refused_with_the_right_reason() {
        let reason = |topic: &str, json: &str| meter(topic, json).expect_err("refused").reason();
        let topic = "hydromesh/meters/42/reading";
        assert_eq!(reason(topic, "not json"), "malformed_json");
        assert_eq!(reason(topic, r#"{"ts":1,"litres":"#), "malformed_json");
        assert_eq!(reason(topic, r#"{"ts":1}"#), "invalid_reading");
        assert_eq!(reason(topic, r#"{"ts":"yesterday","litres":1}"#), "invalid_reading");
        assert_eq!(reason(topic, r#"{"ts":1,"litres":-1}"#), "invalid_reading");
        assert_eq!(reason(topic, r#"{"ts":1,"litres":1.5}"#), "invalid_reading");
        assert_eq!(reason(topic, r#"{"ts":1,"litres":1,"alarms":["fire"]}"#), "invalid_reading");
        assert_eq!(reason(topic, r#"{"meter":43,"ts":1,"litres":1}"#), "invalid_reading");
        assert_eq!(reason(topic, "[1,2]"), "invalid_reading");
        assert_eq!(reason("hydromesh/meters/x.1/reading", r#"{"ts":1,"litres":1}"#), "invalid_reading");
        assert_eq!(
            reason("hydromesh/meters/1234567890abc/reading", r#"{"ts":1,"litres":1}"#),
            "invalid_reading"
        );
        assert_eq!(reason("hydromesh/meters/42/command", r#"{"ts":1,"litres":1}"#), "unknown_topic");
        assert_eq!(reason("wmbusmetersX/a", "{}"), "unknown_topic");
        assert_eq!(reason("", "{}"), "unknown_topic");
        let large = format!(r#"{{"ts":1,"litres":1,"pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(reason(topic, &large), "payload_too_large");
        assert_eq!(meter(topic, r#"{"meter":42,"ts":1,"litres":1}"#).expect("same meter").meter, 42.into());
    }

    #[test]
    fn wmbusmeters_json_is_converted() {
        let json = r#"{"_":"telegram","media":"water","meter":"multical21","name":"Tap","id":"76348799",
            "total_m3":6.4086,"target_m3":6.408,"max_flow_m3h":0,"flow_temperature_c":12,
            "current_status":"LEAK BURST","time_dry":"","timestamp":"2026-11-23T10:00:00Z",
            "device":"im871a[1234567]","rssi_dbm":-40}"#;
        let reading = meter("wmbusmeters/Tap", json).expect("reading");
        assert_eq!(reading.meter, 76_348_799.into());
        assert_eq!(reading.litres, 6409, "6408.6 L rounds to the nearest litre");
        assert_eq!(reading.ts_ms, TS);
        assert_eq!(reading.alarms, Alarms::LEAK.union(Alarms::BURST));
        assert_eq!(reading.flow_lph, None);
        let other = r#"{"id":"12","total_m3":0.0004,"timestamp":"2026-11-23T10:00:00Z","flow_m3h":0.25,
            "current_status":"DRY,REVERSED , FOO","status":"TAMPER"}"#;
        let parsed = parse_publish("wmbusmeters", other.as_bytes()).expect("reading");
        assert_eq!(parsed.unknown_status, ["FOO"], "kept as sent");
        let reading = parsed.reading;
        assert_eq!((reading.meter, reading.litres, reading.flow_lph), (12.into(), 0, Some(250)));
        let named = Alarms::DRY.union(Alarms::BACKFLOW).union(Alarms::TAMPER);
        assert_eq!(reading.alarms, named.union(Alarms::OTHER), "FOO is no word hydromesh knows: `other`");
        let ok = r#"{"id":"12","total_m3":1.9994,"timestamp":"2026-11-23T10:00:00Z","current_status":"OK","status":""}"#;
        let reading = meter("wmbusmeters/a/b", ok).expect("reading");
        assert_eq!((reading.litres, reading.alarms), (1999, Alarms::empty()));
    }

    /// Outputs of wmbusmeters' water drivers, as they publish them (field names, value forms
    /// and status words of their own tests; values changed).
    #[test]
    fn alarm_words_of_real_water_drivers_become_alarm_flags() {
        let cases = [
            // kadenwater: a leak alarm in the TPL status byte.
            (
                r#"{"_":"telegram","media":"water","meter":"kadenwater","name":"Flat3","id":"19221044","max_flow_m3h":0.861,"total_m3":94.6123,"volume_flow_m3h":0,"meter_datetime":"2026-06-30 12:39","status":"ALARM LEAK_FLOW_HIGH LEAK_FLOW_LOW","timestamp":"2026-11-23T10:00:00Z"}"#,
                Alarms::LEAK,
            ),
            // aptmbusna: permanent flags, a leak and reverse flow among errors with no water alarm.
            (
                r#"{"_":"telegram","id":"00345188","media":"water","meter":"aptmbusna","name":"W","operating_time_h":54024,"status":"PERMANENT_ERROR P_CLOCK_HAND_ERROR P_LEAK P_MINIMUM_FLOW P_REVERSE_FLOW TEMPORARY_ERROR UNKNOWN_E0","target_m3":22.1,"timestamp":"2026-11-23T10:00:00Z","total_m3":22.791,"volume_flow_m3h":0.012}"#,
                Alarms::LEAK.union(Alarms::BACKFLOW),
            ),
            // izar: current alarms in lower case, comma-separated; previous ones elsewhere.
            (
                r#"{"_":"telegram","media":"water","meter":"izar","name":"IzarWater","id":"21242490","prefix":"C19UA","total_m3":3.488,"last_month_total_m3":3.486,"current_alarms":"leakage,back_flow,sensor_fraud","previous_alarms":"leakage","timestamp":"2026-11-23T10:00:00Z"}"#,
                Alarms::LEAK.union(Alarms::BACKFLOW).union(Alarms::TAMPER),
            ),
            (
                r#"{"_":"telegram","media":"water","meter":"izar","id":"18444399","total_m3":312.811,"current_alarms":"no_alarm","previous_alarms":"no_alarm","timestamp":"2026-11-23T10:00:00Z"}"#,
                Alarms::empty(),
            ),
            // A magnet held to the meter, air in the pipe, and words about the past.
            (
                r#"{"id":"77","total_m3":1,"timestamp":"2026-11-23T10:00:00Z","status":"MAGNETIC_FIELD AIR_INSIDE PREV_LEAKAGE WAS_BACKFLOWING BURST_PREV_MONTH LEAK_DATE BATTERY_LOW"}"#,
                Alarms::TAMPER.union(Alarms::DRY),
            ),
            (
                r#"{"id":"78","total_m3":1,"timestamp":"2026-11-23T10:00:00Z","status":"DRY BURST MODULE_REMOVED"}"#,
                Alarms::DRY.union(Alarms::BURST).union(Alarms::TAMPER),
            ),
            // A word hydromesh does not know is kept as `other`; the meter's own health is no
            // alarm.
            (
                r#"{"media":"water","meter":"izar","id":"2124589c","total_m3":38.944,"current_alarms":"general_alarm","timestamp":"2026-11-23T10:00:00Z"}"#,
                Alarms::OTHER,
            ),
            (
                r#"{"id":"79","total_m3":1,"timestamp":"2026-11-23T10:00:00Z","status":"ALARM LOW_BATTERY POWER_LOW CLOCK_ERROR UNKNOWN_E0 P_MINIMUM_FLOW"}"#,
                Alarms::empty(),
            ),
        ];
        for (json, alarms) in cases {
            let reading = meter("wmbusmeters/w", json).expect("reading");
            assert_eq!(reading.alarms, alarms, "{json}");
        }
        let flow = meter("wmbusmeters/w", cases[1].0).expect("reading").flow_lph;
        assert_eq!(flow, Some(12), "volume_flow_m3h is the flow");
    }

    #[test]
    fn bad_wmbusmeters_json_is_refused() {
        let reason = |json: &str| meter("wmbusmeters/x", json).expect_err("refused").reason();
        let ts = r#""timestamp":"2026-11-23T10:00:00Z""#;
        assert_eq!(reason(&format!(r#"{{"id":"ab 12","total_m3":1,{ts}}}"#)), "invalid_reading");
        assert_eq!(reason(&format!(r#"{{"id":"12",{ts}}}"#)), "invalid_reading");
        assert_eq!(reason(&format!(r#"{{"total_m3":1,{ts}}}"#)), "invalid_reading");
        assert_eq!(reason(&format!(r#"{{"id":"12","total_m3":-1,{ts}}}"#)), "invalid_reading");
        assert_eq!(reason(&format!(r#"{{"id":"12","total_m3":1e300,{ts}}}"#)), "invalid_reading");
        assert_eq!(reason(r#"{"id":"12","total_m3":1}"#), "invalid_reading");
        assert_eq!(reason(r#"{"id":"12","total_m3":1,"timestamp":"soon"}"#), "invalid_reading");
        assert_eq!(reason(r#"{"id":"12","#), "malformed_json");
    }

    #[test]
    fn commands_are_published_as_json() {
        let command = MeterCommand { meter: 7.into(), valve: Valve::Closed };
        assert_eq!(command_topic(7.into()), "hydromesh/meters/7/command");
        assert_eq!(command_payload(&command), r#"{"meter":"7","valve":"closed"}"#);
        let open = MeterCommand { meter: 7.into(), valve: Valve::Open };
        assert_eq!(command_payload(&open), r#"{"meter":"7","valve":"open"}"#);
    }
}
