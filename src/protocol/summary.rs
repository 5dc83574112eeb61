//! `hydromesh/summary/1`: node summaries on gossipsub, and the signatures that let any peer
//! relay them (by gossip or by sync) without being able to forge them.

use std::time::Duration;

use hydromesh_proto::summary::{NodeSummary, SignedSummary};
use hydromesh_proto::{limits, protocols, WireError};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Most top meters a summary may carry.
pub const MAX_TOP_K: usize = 1000;
/// Most addresses a summary may list, and the longest address.
const MAX_ADDRS: usize = 32;
const MAX_ADDR_BYTES: usize = 256;
/// Signatures cover this prefix and the payload, so they cannot be replayed for another use.
const SIGNING_CONTEXT: &[u8] = b"hydromesh/summary/1:";

/// Why a received summary was refused.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// Its envelope or payload does not decode.
    #[error("undecodable summary: {0}")]
    Wire(#[from] WireError),
    /// Its public key does not decode.
    #[error("summary carries an invalid public key")]
    PublicKey,
    /// The signature does not match.
    #[error("summary signature does not verify")]
    Signature,
    /// It claims another origin than its key.
    #[error("summary origin {claimed} is not its signer {signer}")]
    Origin {
        /// Origin written in the summary.
        claimed: String,
        /// Peer id of the key that signed it.
        signer: PeerId,
    },
    /// A field is out of range.
    #[error("invalid summary: {0}")]
    Invalid(String),
    /// Its origin is not one of the fog nodes this node is configured to accept.
    #[error("summary from {0}, which is not a member of this mesh")]
    NotMember(PeerId),
    /// It could not be signed.
    #[error("cannot sign summary: {0}")]
    Signing(String),
}

/// The summary topic.
pub fn topic() -> IdentTopic {
    IdentTopic::new(protocols::SUMMARY_TOPIC)
}

/// A gossipsub behaviour tuned for fog meshes of a handful to hundreds of nodes: a small mesh
/// degree so that three nodes already form a mesh, a short first heartbeat, strict signing, and
/// application validation of every message.
pub fn gossipsub(keypair: &Keypair, heartbeat: Duration) -> Result<gossipsub::Behaviour, String> {
    let config = gossipsub::ConfigBuilder::default()
        .mesh_n(4)
        .mesh_n_low(1)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .heartbeat_initial_delay(Duration::from_millis(100))
        .heartbeat_interval(heartbeat)
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(limits::MAX_SUMMARY_BYTES + 1024)
        .build()
        .map_err(|e| e.to_string())?;
    gossipsub::Behaviour::new(MessageAuthenticity::Signed(keypair.clone()), config).map_err(str::to_owned)
}

/// Signs a summary with the node's key.
pub fn sign(keypair: &Keypair, summary: &NodeSummary) -> Result<SignedSummary, SummaryError> {
    let payload = hydromesh_proto::encode(summary)?;
    let signature =
        keypair.sign(&signed_bytes(&payload)).map_err(|e| SummaryError::Signing(e.to_string()))?;
    Ok(SignedSummary { payload, public_key: keypair.public().encode_protobuf(), signature })
}

/// Checks a signed summary and returns it with its origin.
pub fn verify(signed: &SignedSummary) -> Result<(NodeSummary, PeerId), SummaryError> {
    let key = PublicKey::try_decode_protobuf(&signed.public_key).map_err(|_| SummaryError::PublicKey)?;
    if !key.verify(&signed_bytes(&signed.payload), &signed.signature) {
        return Err(SummaryError::Signature);
    }
    let summary: NodeSummary = hydromesh_proto::decode(&signed.payload, limits::MAX_SUMMARY_BYTES)?;
    let signer = key.to_peer_id();
    if summary.origin != signer.to_string() {
        return Err(SummaryError::Origin { claimed: summary.origin, signer });
    }
    check(&summary)?;
    Ok((summary, signer))
}

fn check(summary: &NodeSummary) -> Result<(), SummaryError> {
    let invalid = |what: String| Err(SummaryError::Invalid(what));
    if summary.name.len() > limits::MAX_NAME_BYTES {
        return invalid(format!("name longer than {} bytes", limits::MAX_NAME_BYTES));
    }
    if summary.addrs.len() > MAX_ADDRS || summary.addrs.iter().any(|a| a.len() > MAX_ADDR_BYTES) {
        return invalid("too many or too long addresses".into());
    }
    if summary.top.len() > MAX_TOP_K || summary.top.len() as u64 > summary.meter_count {
        return invalid(format!("{} top meters for {} meters", summary.top.len(), summary.meter_count));
    }
    if summary.top.iter().any(|s| s.first.ts_ms > s.last.ts_ms || s.first.litres > s.last.litres) {
        return invalid("a top meter's span runs backwards".into());
    }
    if summary.period_meters > summary.meter_count {
        return invalid(format!(
            "{} meters in the period but {} in all",
            summary.period_meters, summary.meter_count
        ));
    }
    if summary.blocked.len() > limits::MAX_SUMMARY_ENTRIES
        || summary.alerts.len() > limits::MAX_SUMMARY_ENTRIES
    {
        return invalid("too many blocked meters or alerts".into());
    }
    if !summary.filter.is_valid() {
        return invalid("malformed meter filter".into());
    }
    Ok(())
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, payload].concat()
}

#[cfg(test)]
mod tests {
    use hydromesh_proto::summary::MeterFilter;

    use super::*;

    fn summary(origin: String) -> NodeSummary {
        NodeSummary {
            origin,
            name: "north".into(),
            version: 1,
            generated_at_ms: 0,
            addrs: vec![],
            meter_count: 0,
            total_consumption_l: 0,
            top: vec![],
            filter: MeterFilter::with_capacity(0),
            period_start_ms: 0,
            period_consumption_l: 0,
            period_meters: 0,
            blocked: vec![],
            alerts: vec![],
            truncated: false,
        }
    }

    #[test]
    fn signed_summaries_verify_and_tampering_is_caught() {
        let key = Keypair::generate_ed25519();
        let mut signed = sign(&key, &summary(key.public().to_peer_id().to_string())).expect("sign");
        let (back, origin) = verify(&signed).expect("verify");
        assert_eq!(origin, key.public().to_peer_id());
        assert_eq!(back.name, "north");
        if let Some(byte) = signed.payload.last_mut() {
            *byte ^= 1;
        }
        assert!(matches!(verify(&signed), Err(SummaryError::Signature)));
    }

    #[test]
    fn a_summary_for_another_origin_is_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519().public().to_peer_id().to_string();
        let signed = sign(&key, &summary(other)).expect("sign");
        assert!(matches!(verify(&signed), Err(SummaryError::Origin { .. })));
        let mut bad = summary(key.public().to_peer_id().to_string());
        bad.name = "x".repeat(100);
        assert!(matches!(verify(&sign(&key, &bad).expect("sign")), Err(SummaryError::Invalid(_))));
    }
}
