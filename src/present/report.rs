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
            ingest::Response::Busy { .. } => {
                // Busy batches are sent again (or the caller answers busy): never reported.
            }
        }
    }

    /// The report as JSON, rejected items named by `position` (`line` or `index`).
    pub fn json(&self, position: &str) -> serde_json::Value {
        let mut rejected = self.rejected.clone();
        rejected.sort();
        let rejected: Vec<_> =
            rejected.iter().map(|(at, error)| json!({ position: at, "error": error })).collect();
        let commands: Vec<_> =
            self.commands.iter().map(|c| json!({"meter": c.meter, "valve": c.valve.as_str()})).collect();
        json!({
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": rejected,
            "commands": commands,
        })
    }
}
