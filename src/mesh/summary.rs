//! Node summaries: built from this node's local snapshot, signed by their origin so that any
//! peer can relay them (by gossip or by sync) without being able to forge them, and checked
//! before they are merged.

use std::collections::HashMap;

use hydromesh_proto::summary::{
    Alert, Alive, Blocked, Gossip, MeterFilter, MeterSpan, NodeSummary, SignedAlive, SignedSummary,
    SummaryDelta, TopRun,
};
use hydromesh_proto::{limits, WireError};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::domain;
use crate::ingest::LocalSnapshot;

/// Most top meters a summary may carry.
pub const MAX_TOP_K: usize = 1000;
/// Bytes of a filter hash (SHA-256).
const FILTER_HASH_BYTES: usize = 32;
/// Most addresses a summary may list, and the longest address.
const MAX_ADDRS: usize = 32;
const MAX_ADDR_BYTES: usize = 256;
/// Signatures cover a prefix and the payload, so they cannot be replayed for another use.
const SIGNING_CONTEXT: &[u8] = b"hydromesh/summary/1:";
const ALIVE_CONTEXT: &[u8] = b"hydromesh/alive/1:";

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

/// What a summary says of its origin besides the local snapshot.
pub struct Head {
    /// The origin's peer id.
    pub origin: PeerId,
    /// Its name.
    pub name: String,
    /// Its next summary version.
    pub version: u64,
    /// When the summary is made, ms.
    pub generated_at_ms: u64,
    /// Its dialable addresses.
    pub addrs: Vec<String>,
    /// The [`filter_hash`] of the snapshot's filter.
    pub filter_hash: Vec<u8>,
}

/// SHA-256 of a meter filter's encoding: what a summary names its filter by.
pub fn filter_hash(filter: &MeterFilter) -> Vec<u8> {
    let bytes = hydromesh_proto::encode(filter).unwrap_or_default();
    Sha256::digest(&bytes).to_vec()
}

/// Builds this node's summary from its local snapshot: a copy of what the snapshot holds, cut to
/// the sizes a summary may carry; no walk over the node's meters.
///
/// The top meters are the node's top-K cut at `floor`, the K-th largest consumption in this
/// node's merged view: a meter below it cannot be in the global top-K, because every view holds
/// a subset of the meters with at most their true consumption, so its K-th largest is at most
/// the true K-th largest. Global top-N stays exact for N ≤ K, and a node whose meters are all
/// small sends none.
pub fn build(head: Head, local: &LocalSnapshot, top_k: usize, floor: u64) -> NodeSummary {
    let alerts: Vec<Alert> =
        local.alerts.values().flatten().take(limits::MAX_SUMMARY_ENTRIES).copied().collect();
    let alert_count: usize = local.alerts.values().map(Vec::len).sum();
    let blocked = local
        .blocked
        .values()
        .take(limits::MAX_SUMMARY_ENTRIES)
        .map(|b| Blocked { detail: truncate(&b.detail, 64), ..b.clone() })
        .collect();
    NodeSummary {
        origin: head.origin.to_string(),
        name: truncate(&head.name, limits::MAX_NAME_BYTES),
        version: head.version,
        generated_at_ms: head.generated_at_ms,
        addrs: head.addrs.into_iter().take(16).collect(),
        meter_count: local.meter_count,
        total_consumption_l: local.total_consumption_l,
        top: local
            .top
            .iter()
            .take(top_k.min(MAX_TOP_K))
            .take_while(|span| domain::span_consumption(span) >= floor)
            .copied()
            .collect(),
        filter_hash: head.filter_hash,
        period_start_ms: local.period_start_ms,
        period_consumption_l: local.period_consumption_l,
        period_meters: local.period_meters,
        blocked,
        alerts,
        truncated: alert_count > limits::MAX_SUMMARY_ENTRIES
            || local.blocked.len() > limits::MAX_SUMMARY_ENTRIES,
    }
}

/// `text` cut to at most `max_bytes`, on a character boundary.
fn truncate(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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

/// Signs a liveness message with the node's key.
pub fn sign_alive(keypair: &Keypair, alive: &Alive) -> Result<SignedAlive, SummaryError> {
    let payload = hydromesh_proto::encode(alive)?;
    let signature = keypair
        .sign(&[ALIVE_CONTEXT, &payload].concat())
        .map_err(|e| SummaryError::Signing(e.to_string()))?;
    Ok(SignedAlive { payload, signature })
}

/// Checks a signed liveness message against the key in its origin's peer id.
pub fn verify_alive(signed: &SignedAlive) -> Result<(Alive, PeerId), SummaryError> {
    let alive: Alive = hydromesh_proto::decode(&signed.payload, limits::MAX_ALIVE_BYTES)?;
    let origin = PeerId::from_bytes(&alive.origin).map_err(|_| SummaryError::PublicKey)?;
    // An Ed25519 peer id is its public key (identity multihash, code 0).
    let key = (origin.as_ref().code() == 0)
        .then(|| PublicKey::try_decode_protobuf(origin.as_ref().digest()).ok())
        .flatten()
        .ok_or(SummaryError::PublicKey)?;
    if !key.verify(&[ALIVE_CONTEXT, &signed.payload].concat(), &signed.signature) {
        return Err(SummaryError::Signature);
    }
    Ok((alive, origin))
}

/// What to gossip of this node's new summary: its changes from `base`, the summary it published
/// before (which the mesh holds), when they are smaller than the whole; else the whole.
pub fn gossip_form(base: Option<&NodeSummary>, summary: &NodeSummary, signed: SignedSummary) -> Gossip {
    let delta = base.map(|base| Gossip::Delta(Box::new(delta(base, summary, signed.signature.clone()))));
    let whole = Gossip::Summary(signed);
    let size = |gossip: &Gossip| hydromesh_proto::encode(gossip).map_or(usize::MAX, |bytes| bytes.len());
    match delta {
        Some(delta) if size(&delta) < size(&whole) => delta,
        _ => whole,
    }
}

/// `summary` as its changes from `base`: its top meters as runs of the base's where they are
/// the same, in order.
fn delta(base: &NodeSummary, summary: &NodeSummary, signature: Vec<u8>) -> SummaryDelta {
    let at: HashMap<&MeterSpan, usize> = base.top.iter().enumerate().map(|(i, span)| (span, i)).collect();
    let mut top: Vec<TopRun> = Vec::new();
    for span in &summary.top {
        match (at.get(span).and_then(|&i| u32::try_from(i).ok()), top.last_mut()) {
            (Some(i), Some(TopRun::Base { start, len })) if *start + *len == i => *len += 1,
            (Some(i), _) => top.push(TopRun::Base { start: i, len: 1 }),
            (None, _) => top.push(TopRun::New(*span)),
        }
    }
    let same_blocked = summary.blocked == base.blocked;
    let same_alerts = summary.alerts == base.alerts;
    SummaryDelta {
        base: base.version,
        summary: NodeSummary {
            top: Vec::new(),
            blocked: if same_blocked { Vec::new() } else { summary.blocked.clone() },
            alerts: if same_alerts { Vec::new() } else { summary.alerts.clone() },
            ..summary.clone()
        },
        top,
        same_blocked,
        same_alerts,
        signature,
    }
}

/// The signed summary `delta` describes, rebuilt from `base`, the origin's summary of version
/// `delta.base`, and its signed form. Not verified here: the caller merges it as it would the
/// whole summary, signature and checks included.
pub fn apply_delta(
    base: &NodeSummary,
    base_signed: &SignedSummary,
    delta: SummaryDelta,
) -> Result<SignedSummary, SummaryError> {
    let invalid = |what: &str| Err(SummaryError::Invalid(format!("summary delta: {what}")));
    let SummaryDelta { base: base_version, mut summary, top, same_blocked, same_alerts, signature } = delta;
    if base_version != base.version || summary.origin != base.origin {
        return invalid("not a change of the summary held");
    }
    if !summary.top.is_empty()
        || (same_blocked && !summary.blocked.is_empty())
        || (same_alerts && !summary.alerts.is_empty())
    {
        return invalid("carries what it says is the base's");
    }
    for run in top {
        match run {
            TopRun::Base { start, len } => {
                let (start, len) = (start as usize, len as usize);
                match base.top.get(start..start.saturating_add(len)) {
                    Some(spans) => summary.top.extend_from_slice(spans),
                    None => return invalid("a run outside the base's top meters"),
                }
            }
            TopRun::New(span) => summary.top.push(span),
        }
        // Each run adds at most the base's top (at most the most): memory stays bounded.
        if summary.top.len() > MAX_TOP_K {
            return invalid("more top meters than a summary carries");
        }
    }
    if same_blocked {
        summary.blocked = base.blocked.clone();
    }
    if same_alerts {
        summary.alerts = base.alerts.clone();
    }
    Ok(SignedSummary {
        payload: hydromesh_proto::encode(&summary)?,
        public_key: base_signed.public_key.clone(),
        signature,
    })
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
    if summary.filter_hash.len() != FILTER_HASH_BYTES {
        return invalid("malformed meter filter hash".into());
    }
    Ok(())
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, payload].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydromesh_proto::MeterId;

    fn summary(origin: String) -> NodeSummary {
        NodeSummary {
            origin,
            name: "north".into(),
            version: 1,
            filter_hash: filter_hash(&MeterFilter::with_capacity(0)),
            ..NodeSummary::default()
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
    fn a_summary_is_built_from_the_snapshot_and_cut_to_what_it_may_carry() {
        use std::collections::BTreeMap;
        use std::sync::Arc;

        use hydromesh_proto::control::BlockReason;
        use hydromesh_proto::summary::{AlertKind, MeterSpan, Point};

        let key = Keypair::generate_ed25519();
        let span = |meter, litres| MeterSpan {
            meter,
            first: Point { ts_ms: 1, litres: 0 },
            last: Point { ts_ms: 2, litres },
        };
        let alerts: BTreeMap<_, _> = (0..limits::MAX_SUMMARY_ENTRIES as u32 + 5)
            .map(MeterId::from)
            .map(|meter| (meter, vec![Alert { meter, kind: AlertKind::Leak, since_ms: 1 }]))
            .collect();
        let blocked = BTreeMap::from([(
            MeterId::from(3),
            Blocked { meter: 3.into(), reason: BlockReason::Cap, since_ms: 1, detail: "é".repeat(100) },
        )]);
        let local = LocalSnapshot {
            meter_count: 3,
            total_consumption_l: 60,
            top: vec![span(3.into(), 30), span(2.into(), 20), span(1.into(), 10)],
            alerts: Arc::new(alerts),
            blocked: Arc::new(blocked),
            period_start_ms: 7,
            period_consumption_l: 5,
            period_meters: 2,
            ..LocalSnapshot::default()
        };
        let head = Head {
            origin: key.public().to_peer_id(),
            name: "n".repeat(100),
            version: 9,
            generated_at_ms: 11,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into(); 40],
            filter_hash: vec![7; FILTER_HASH_BYTES],
        };
        let summary = build(head, &local, 2, 0);
        assert_eq!(summary.top, vec![span(3.into(), 30), span(2.into(), 20)], "the node's top-K, cut to K");
        let head = || Head {
            origin: key.public().to_peer_id(),
            name: "n".into(),
            version: 1,
            generated_at_ms: 1,
            addrs: vec![],
            filter_hash: vec![7; FILTER_HASH_BYTES],
        };
        assert_eq!(
            build(head(), &local, 3, 20).top,
            vec![span(3.into(), 30), span(2.into(), 20)],
            "cut at the floor, ties kept"
        );
        assert!(build(head(), &local, 3, 31).top.is_empty(), "no meter can be in the global top-K");
        assert_eq!((summary.meter_count, summary.total_consumption_l, summary.version), (3, 60, 9));
        assert_eq!((summary.period_start_ms, summary.period_consumption_l, summary.period_meters), (7, 5, 2));
        assert_eq!(summary.alerts.len(), limits::MAX_SUMMARY_ENTRIES);
        assert!(summary.truncated, "more alerts than a summary carries");
        assert!(summary.blocked[0].detail.len() <= 64 && summary.name.len() <= limits::MAX_NAME_BYTES);
        let (verified, _) = verify(&sign(&key, &summary).expect("sign")).expect("a built summary verifies");
        assert_eq!(verified, summary);
    }

    #[test]
    fn a_summary_is_no_larger_for_a_node_with_more_meters() {
        use std::sync::Arc;

        use hydromesh_proto::summary::{MeterSpan, Point};

        let key = Keypair::generate_ed25519();
        let encoded_size = |meters: u64| {
            let mut filter = MeterFilter::with_capacity(meters as usize);
            (0..meters as u32).for_each(|meter| filter.insert(meter.into()));
            let top = (0..100u32)
                .map(|meter| MeterSpan {
                    meter: meter.into(),
                    first: Point { ts_ms: 1_795_000_000_000, litres: 0 },
                    last: Point { ts_ms: 1_795_003_600_000, litres: 1_000_000 - u64::from(meter) },
                })
                .collect();
            let local = LocalSnapshot {
                meter_count: meters,
                total_consumption_l: 999_999_999,
                top,
                filter: Arc::new(filter),
                ..LocalSnapshot::default()
            };
            let head = Head {
                origin: key.public().to_peer_id(),
                name: "north".into(),
                version: 9,
                generated_at_ms: 1_795_003_600_000,
                addrs: vec![],
                filter_hash: filter_hash(&local.filter),
            };
            hydromesh_proto::encode(&sign(&key, &build(head, &local, 100, 0)).expect("sign"))
                .expect("encode")
                .len()
        };
        // The filter travels apart, named by its hash: only the meter count's varint grows.
        let (small, large) = (encoded_size(100), encoded_size(100_000));
        assert!(large <= small + 4, "{small} bytes for 100 meters, {large} for 100,000");
    }

    #[test]
    fn a_delta_rebuilds_the_signed_summary_exactly_and_is_smaller() {
        use hydromesh_proto::control::BlockReason;
        use hydromesh_proto::summary::Point;

        let key = Keypair::generate_ed25519();
        let span = |meter: u32, litres| MeterSpan {
            meter: meter.into(),
            first: Point { ts_ms: 1_795_000_000_000, litres: 0 },
            last: Point { ts_ms: 1_795_003_600_000 + u64::from(meter), litres },
        };
        let mut base = summary(key.public().to_peer_id().to_string());
        base.meter_count = 1_000;
        base.top = (0..100).map(|meter| span(meter, 100_000 - u64::from(meter))).collect();
        base.blocked =
            vec![Blocked { meter: 3.into(), reason: BlockReason::Cap, since_ms: 1, detail: "cap".into() }];
        let base_signed = sign(&key, &base).expect("sign");
        // Two new leaders, one meter grown in place, one moved up, the last one gone.
        let mut new = NodeSummary { version: 2, meter_count: 1_002, ..base.clone() };
        new.top.insert(0, span(500, 900_000));
        new.top.insert(1, span(501, 800_000));
        new.top[10] = span(8, 99_999);
        let moved = new.top.remove(60);
        new.top.insert(5, moved);
        new.top.pop();
        new.alerts =
            vec![Alert { meter: 9.into(), kind: hydromesh_proto::summary::AlertKind::Leak, since_ms: 5 }];
        let signed = sign(&key, &new).expect("sign");

        let Gossip::Delta(delta) = gossip_form(Some(&base), &new, signed.clone()) else {
            panic!("a few changes go as a delta");
        };
        assert!(delta.same_blocked && !delta.same_alerts);
        let sizes = (
            hydromesh_proto::encode(&Gossip::Delta(delta.clone())).expect("encode").len(),
            hydromesh_proto::encode(&Gossip::Summary(signed.clone())).expect("encode").len(),
        );
        assert!(sizes.0 * 4 < sizes.1, "delta {} bytes, whole {}", sizes.0, sizes.1);
        let rebuilt = apply_delta(&base, &base_signed, (*delta).clone()).expect("apply");
        assert_eq!(rebuilt, signed, "the origin's signed summary, byte for byte");
        assert_eq!(verify(&rebuilt).expect("verifies").0, new);

        // A change of everything goes whole; no base, whole.
        let mut all = new.clone();
        all.top.iter_mut().for_each(|span| span.last.litres += 1);
        let all_signed = sign(&key, &all).expect("sign");
        assert!(matches!(gossip_form(Some(&base), &all, all_signed.clone()), Gossip::Summary(_)));
        assert!(matches!(gossip_form(None, &new, signed), Gossip::Summary(_)));

        // Deltas that do not fit the base are refused, never panic or grow without bound.
        let refused = |delta: SummaryDelta| {
            matches!(apply_delta(&base, &base_signed, delta), Err(SummaryError::Invalid(_)))
        };
        let delta = *delta;
        assert!(refused(SummaryDelta { base: 7, ..delta.clone() }), "another base");
        assert!(refused(SummaryDelta { top: vec![TopRun::Base { start: 99, len: 2 }], ..delta.clone() }));
        assert!(refused(SummaryDelta {
            top: vec![TopRun::Base { start: u32::MAX, len: u32::MAX }],
            ..delta.clone()
        }));
        assert!(refused(SummaryDelta {
            top: vec![TopRun::Base { start: 0, len: 100 }; 11],
            ..delta.clone()
        }));
        let mut carries = delta.clone();
        carries.summary.blocked = base.blocked.clone();
        assert!(refused(carries), "says the blocks are the base's and carries some");
        // A forged change rebuilds, and then fails its signature.
        let mut forged = delta;
        forged.top.push(TopRun::New(span(777, 1)));
        let forged = apply_delta(&base, &base_signed, forged).expect("fits the base");
        assert!(matches!(verify(&forged), Err(SummaryError::Signature)));
    }

    #[test]
    fn liveness_verifies_against_the_peer_id_and_tampering_is_caught() {
        let key = Keypair::generate_ed25519();
        let origin = key.public().to_peer_id();
        let alive = Alive { origin: origin.to_bytes(), version: 4, at_ms: 5 };
        let mut signed = sign_alive(&key, &alive).expect("sign");
        assert_eq!(verify_alive(&signed).expect("verify"), (alive.clone(), origin));
        let other = Keypair::generate_ed25519();
        let forged = Alive { origin: other.public().to_peer_id().to_bytes(), ..alive };
        let forged =
            SignedAlive { payload: hydromesh_proto::encode(&forged).expect("encode"), ..signed.clone() };
        assert!(matches!(verify_alive(&forged), Err(SummaryError::Signature)), "another origin's name");
        if let Some(byte) = signed.payload.last_mut() {
            *byte ^= 1;
        }
        assert!(matches!(verify_alive(&signed), Err(SummaryError::Signature)));
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
