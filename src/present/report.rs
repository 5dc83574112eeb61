//! The ingest report: what the node accepted, de-duplicated or rejected, item by item.

use hydromesh_proto::ingest::{self, Outcome};
use serde_json::json;

/// What happened to a batch of items (a file's lines, an HTTP request's array items): the
/// report `hydromesh ingest --json` prints and `POST /api/v1/readings` answers.
#[derive(Debug, Default)]
pub struct Report {
    /// Readings stored.
    pub accepted: u64,
    /// Readings already stored (counted once).
    pub duplicates: u64,
    /// Rejected items: (position, rule broken).
    pub rejected: Vec<(usize, String)>,
    /// Items the node could not store because its storage failed: (position, what failed).
    /// Not a fault of the data; they can be sent again.
    pub not_stored: Vec<(usize, String)>,
    /// Valve commands the node sent back.
    pub commands: Vec<ingest::MeterCommand>,
}

impl Report {
    /// Records the node's answer to a batch whose readings came from `lines` (positions).
    pub fn record(&mut self, lines: &[usize], response: ingest::Response) {
        match response {
            ingest::Response::Done { outcomes, commands } => {
                for (line, outcome) in lines.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Accepted => self.accepted += 1,
                        Outcome::Duplicate => self.duplicates += 1,
                        Outcome::Rejected(rule) => self.rejected.push((*line, rule.to_string())),
                    }
                }
                self.commands.extend(commands);
            }
            ingest::Response::Refused { reason } => {
                self.rejected
                    .extend(lines.iter().map(|line| (*line, format!("batch refused by the node: {reason}"))));
            }
            ingest::Response::Unavailable { reason } => {
                self.not_stored.extend(lines.iter().map(|line| (*line, format!("not stored: {reason}"))));
            }
            ingest::Response::Busy { .. } => {
                // Busy batches are sent again (or the caller answers busy): never reported.
            }
        }
    }

    /// The report as JSON, rejected and not stored items named by `position` (`line` or
    /// `index`).
    pub fn json(&self, position: &str) -> serde_json::Value {
        let items = |items: &[(usize, String)]| -> Vec<serde_json::Value> {
            let mut items = items.to_vec();
            items.sort();
            items.iter().map(|(at, error)| json!({ position: at, "error": error })).collect()
        };
        let commands: Vec<_> =
            self.commands.iter().map(|c| json!({"meter": c.meter, "valve": c.valve.as_str()})).collect();
        let mut report = json!({
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": items(&self.rejected),
            "commands": commands,
        });
        // Only when the node's storage failed: the usual report keeps its shape.
        if !self.not_stored.is_empty() {
            report["not_stored"] = items(&self.not_stored).into();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydromesh_proto::ingest::Rejection;

    #[test]
    fn stored_rejected_and_not_stored_items_are_told_apart() {
        let mut report = Report::default();
        let done = ingest::Response::Done {
            outcomes: vec![
                Outcome::Accepted,
                Outcome::Duplicate,
                Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: 9 }),
            ],
            commands: Vec::new(),
        };
        report.record(&[2, 3, 4], done);
        report.record(&[5, 6], ingest::Response::Unavailable { reason: "No space left on device".into() });
        report.record(&[7], ingest::Response::Busy { retry_after_ms: 100 });
        let json = report.json("line");
        assert_eq!((json["accepted"].as_u64(), json["duplicates"].as_u64()), (Some(1), Some(1)));
        assert_eq!(json["rejected"].as_array().map(Vec::len), Some(1), "{json}");
        let not_stored = json["not_stored"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            not_stored.iter().map(|item| item["line"].as_u64()).collect::<Vec<_>>(),
            vec![Some(5), Some(6)]
        );
        assert!(not_stored[0]["error"].as_str().is_some_and(|e| e.contains("No space left")), "{json}");
    }
}
