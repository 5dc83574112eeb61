//! What the front ends (the CLI, HTTP and MQTT) share: the JSON answers, the ingest report and
//! the reading parser. It depends on the wire types only, never on a front end or the node.

pub mod input;
pub mod json;
pub mod report;
