//! Prometheus metrics: libp2p's own (connections, gossipsub, identify, ping) and
//! hydromesh's, all under one registry served at `/metrics`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hydromesh_proto::ingest::{Outcome, Rejection};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of readings by what happened to them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `duplicate`, or the rule a rejected reading broke.
    pub outcome: &'static str,
}

/// Labels of refused input by source and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Where it came from: `mqtt`, `http`, `p2p`.
    pub source: &'static str,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Labels of log lines by what they report.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    /// What the lines report (`listener_error`, `malformed_request`, …).
    pub reason: &'static str,
}

/// Log lines about one kind of untrusted input allowed a minute; the rest are counted only.
const LOG_LINES_PER_MINUTE: u32 = 10;

/// Labels of a summary gossiped by another node, by how it came.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabels {
    /// `whole`, `delta`, or `delta_without_base` (pulled whole by sync instead).
    pub form: &'static str,
}

/// Labels of an anti-entropy exchange, by side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `asked` (this node sent its digest) or `answered` (a peer's).
    pub side: &'static str,
}

/// Labels of a fog node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    /// Its peer id.
    pub origin: String,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// libp2p's metrics, fed the swarm's events.
    pub p2p: libp2p::metrics::Metrics,
    /// Readings by outcome.
    pub readings: Family<OutcomeLabels, Counter>,
    /// Requests and messages refused before reaching the store (malformed, oversized, …).
    pub refused: Family<RefusedLabels, Counter>,
    /// Seconds from an ingest batch's arrival to its durable acknowledgement.
    pub ingest_batch_seconds: Histogram,
    /// Seconds to answer a question.
    pub query_seconds: Histogram,
    /// Other nodes' new summaries gossiped, by form.
    pub summaries_heard: Family<FormLabels, Counter>,
    /// Anti-entropy exchanges, by side.
    pub syncs: Family<SyncLabels, Counter>,
    /// Age of each node's latest summary, seconds.
    pub node_data_age_seconds: Family<OriginLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Fog nodes reported stale.
    pub stale_nodes: Gauge,
    /// Bytes the database takes on disk.
    pub disk_bytes: Gauge,
    /// Messages the MQTT broker the node subscribes to reports it dropped since it started.
    pub mqtt_broker_dropped: Gauge,
    /// Log lines about untrusted input not written (over [`LOG_LINES_PER_MINUTE`]), by reason.
    log_suppressed: Family<LogLabels, Counter>,
    /// Each reason's current minute: when it started and the lines written in it.
    log_minutes: Mutex<HashMap<&'static str, (std::time::Instant, u32)>>,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        let sub = registry.sub_registry_with_prefix("hydromesh");
        let readings = Family::<OutcomeLabels, Counter>::default();
        sub.register("readings", "Readings received, by outcome", readings.clone());
        let refused = Family::<RefusedLabels, Counter>::default();
        sub.register("refused", "Input refused before the store, by source and reason", refused.clone());
        let ingest_batch_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        sub.register(
            "ingest_batch_seconds",
            "Time from a batch's arrival to its durable acknowledgement",
            ingest_batch_seconds.clone(),
        );
        let query_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        sub.register("query_seconds", "Time to answer a question", query_seconds.clone());
        let summaries_heard = Family::<FormLabels, Counter>::default();
        sub.register(
            "summaries_heard",
            "Other fog nodes' new summaries gossiped, whole or as changes (delta)",
            summaries_heard.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        sub.register(
            "syncs",
            "Anti-entropy exchanges with other fog nodes, asked or answered",
            syncs.clone(),
        );
        let node_data_age_seconds = Family::default();
        sub.register(
            "node_data_age_seconds",
            "Age of the latest figures of each fog node (its signed summary)",
            node_data_age_seconds.clone(),
        );
        let stale_nodes = Gauge::default();
        sub.register("stale_nodes", "Fog nodes not heard from within stale_after", stale_nodes.clone());
        let disk_bytes = Gauge::default();
        sub.register("disk_bytes", "Bytes the node's database takes on disk", disk_bytes.clone());
        let mqtt_broker_dropped = Gauge::default();
        sub.register(
            "mqtt_broker_dropped",
            "Messages the MQTT broker of --mqtt-broker reports it dropped since it started (its queue limits; mosquitto's $SYS)",
            mqtt_broker_dropped.clone(),
        );
        let log_suppressed = Family::<LogLabels, Counter>::default();
        sub.register(
            "log_lines_suppressed",
            "Log lines about untrusted input (noise, malformed requests) not written: each reason writes at most 10 a minute",
            log_suppressed.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            p2p,
            readings,
            refused,
            ingest_batch_seconds,
            query_seconds,
            summaries_heard,
            syncs,
            node_data_age_seconds,
            stale_nodes,
            disk_bytes,
            mqtt_broker_dropped,
            log_suppressed,
            log_minutes: Mutex::default(),
        }
    }

    /// Whether a log line about untrusted input may be written: at most
    /// [`LOG_LINES_PER_MINUTE`] a minute for each `reason`, so that a sender cannot write to
    /// the log as fast as it sends; the others are counted in `hydromesh_log_lines_suppressed`.
    pub fn log_allowed(&self, reason: &'static str) -> bool {
        let now = std::time::Instant::now();
        let mut minutes = self.log_minutes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (started, written) = minutes.entry(reason).or_insert((now, 0));
        if now.duration_since(*started) >= Duration::from_secs(60) {
            (*started, *written) = (now, 0);
        }
        if *written < LOG_LINES_PER_MINUTE {
            *written += 1;
            return true;
        }
        self.log_suppressed.get_or_create(&LogLabels { reason }).inc();
        false
    }

    /// Counts a batch's outcomes.
    pub fn record_outcomes(&self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            self.readings.get_or_create(&OutcomeLabels { outcome: outcome_label(outcome) }).inc();
        }
    }

    /// Counts one refused input.
    pub fn refuse(&self, source: &'static str, reason: &'static str) {
        self.refuse_many(source, reason, 1);
    }

    /// Counts `count` refusals at once.
    pub fn refuse_many(&self, source: &'static str, reason: &'static str, count: u64) {
        self.refused.get_or_create(&RefusedLabels { source, reason }).inc_by(count);
    }

    /// Records how long something took into a histogram.
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// The metrics in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }

    /// The metrics in Prometheus' classic text format (`text/plain; version=0.0.4`), for
    /// scrapers that do not ask for OpenMetrics.
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

/// OpenMetrics text as Prometheus' classic text format: a counter family is named with its
/// `_total` suffix in its HELP and TYPE lines (OpenMetrics names the family without it), and
/// the `# UNIT` and `# EOF` lines, which the classic format does not have, are dropped.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line waits for its TYPE line, which says whether it is a counter.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            if let Some(help) = help.take() {
                let text =
                    help.strip_prefix("# HELP ").and_then(|h| h.split_once(' ')).map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(help) = help.take() {
            out.push_str(help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Sources remembered by [`LogOnce`] before it starts over.
const LOG_ONCE_SOURCES: usize = 10_000;

/// Remembers which (source, reason) pairs were logged, so that a misbehaving client is logged
/// once per reason rather than once per message. Bounded: past [`LOG_ONCE_SOURCES`] sources it
/// forgets them all and starts over.
#[derive(Default)]
pub struct LogOnce {
    seen: Mutex<HashMap<Box<str>, Vec<&'static str>>>,
}

impl LogOnce {
    /// Whether this is the first time `reason` is reported for `source`.
    pub fn first(&self, source: &str, reason: &'static str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reasons) = seen.get_mut(source) {
            if reasons.contains(&reason) {
                return false;
            }
            reasons.push(reason);
            return true;
        }
        if seen.len() >= LOG_ONCE_SOURCES {
            seen.clear();
        }
        seen.insert(source.into(), vec![reason]);
        true
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted => "accepted",
        Outcome::Duplicate => "duplicate",
        Outcome::Rejected(Rejection::RegisterDecreased { .. } | Rejection::RegisterAboveLater { .. }) => {
            "register_decreased"
        }
        Outcome::Rejected(Rejection::FutureTimestamp { .. }) => "future_timestamp",
        Outcome::Rejected(Rejection::ConflictingDuplicate { .. }) => "conflicting_duplicate",
        Outcome::Rejected(Rejection::OutOfRange { .. }) => "out_of_range",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_about_untrusted_input_are_limited_and_the_rest_counted() {
        let metrics = Metrics::new();
        let written = (0..25).filter(|_| metrics.log_allowed("listener_error")).count();
        assert_eq!(written, LOG_LINES_PER_MINUTE as usize);
        assert!(metrics.log_allowed("malformed_request"), "each reason has its own allowance");
        let text = metrics.encode_classic();
        assert!(
            text.contains("hydromesh_log_lines_suppressed_total{reason=\"listener_error\"} 15"),
            "{text}"
        );
        assert!(text.contains("# HELP hydromesh_log_lines_suppressed_total "), "{text}");
    }

    #[test]
    fn log_once_per_source_and_reason() {
        let log = LogOnce::default();
        assert!(log.first("a", "malformed_json"));
        assert!(!log.first("a", "malformed_json"));
        assert!(log.first("a", "unknown_topic"));
        assert!(log.first("b", "malformed_json"));
        for i in 0..LOG_ONCE_SOURCES {
            log.first(&format!("s{i}"), "x");
        }
        assert!(log.first("a", "malformed_json"), "bounded: forgotten after many sources");
    }

    #[test]
    fn outcomes_are_counted_by_label() {
        let metrics = Metrics::new();
        metrics.record_outcomes(&[
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: 1 }),
        ]);
        metrics.refuse("mqtt", "malformed_json");
        let text = metrics.encode();
        assert!(text.contains("hydromesh_readings_total{outcome=\"accepted\"} 2"), "{text}");
        assert!(text.contains("hydromesh_readings_total{outcome=\"conflicting_duplicate\"} 1"), "{text}");
        assert!(
            text.contains("hydromesh_refused_total{source=\"mqtt\",reason=\"malformed_json\"} 1"),
            "{text}"
        );
        assert!(text.contains("libp2p"), "libp2p's metrics are registered too");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    }

    #[test]
    fn the_classic_format_names_counters_with_total_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.refuse("http", "bad_request");
        let text = metrics.encode_classic();
        assert!(text.contains("# HELP hydromesh_refused_total Input refused"), "{text}");
        assert!(text.contains("# TYPE hydromesh_refused_total counter"), "{text}");
        assert!(text.contains("# TYPE hydromesh_stale_nodes gauge"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(text.contains("hydromesh_refused_total{source=\"http\",reason=\"bad_request\"} 1"), "{text}");
    }
}
