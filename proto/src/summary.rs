//! The node summary: what a fog node tells the mesh about its meters.
//!
//! Gossiped on `hydromesh/summary/3` (inside a [`Gossip`], whole or as a [`SummaryDelta`]) and pulled by digest with
//! `/hydromesh/sync/2`, always inside a [`SignedSummary`] so that a summary relayed by any peer
//! can be checked against its origin.

use serde::{Deserialize, Serialize};

use crate::control::{BlockReason, SignedCommand};
use crate::reading::MeterId;

/// A register value at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Point {
    /// Device time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Cumulative register, litres.
    pub litres: u64,
}

/// A meter's earliest and latest readings in a window: the pair its consumption comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeterSpan {
    /// The meter.
    pub meter: MeterId,
    /// Earliest reading (or the window's baseline).
    pub first: Point,
    /// Latest reading.
    pub last: Point,
}

/// What a fog node gossips about itself. (`Default` is for fixtures: a real summary names its
/// origin, version and filter.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Peer id of the node that made it.
    pub origin: String,
    /// The node's operator-given name.
    pub name: String,
    /// Monotonic across the node's restarts: a receiver keeps the highest.
    pub version: u64,
    /// When it was made, by the origin's clock, ms since the Unix epoch.
    pub generated_at_ms: u64,
    /// The origin's dialable addresses, with `/p2p/`.
    pub addrs: Vec<String>,
    /// Meters the node holds.
    pub meter_count: u64,
    /// Their total consumption over all data held, litres.
    pub total_consumption_l: u64,
    /// The node's top meters over all data held, consumption descending.
    pub top: Vec<MeterSpan>,
    /// SHA-256 of the encoded [`MeterFilter`] of the meters the node holds. The filter itself
    /// grows with the meters, so it does not travel with every summary: nodes pull it by sync
    /// when this changes, and check it against this hash.
    pub filter_hash: Vec<u8>,
    /// The rationing period the period figures are for (start, ms).
    pub period_start_ms: u64,
    /// Total consumption of the node's meters in that period, litres.
    pub period_consumption_l: u64,
    /// Meters with a reading in that period.
    pub period_meters: u64,
    /// The node's meters whose supply is cut, and why.
    pub blocked: Vec<Blocked>,
    /// Active alerts of the node's meters.
    pub alerts: Vec<Alert>,
    /// Whether more blocks or alerts exist than the summary carries.
    pub truncated: bool,
}

/// A meter whose supply is cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The meter.
    pub meter: MeterId,
    /// Why.
    pub reason: BlockReason,
    /// Since when, ms.
    pub since_ms: u64,
    /// The admin's words for a manual block, or the figures behind an automatic one.
    pub detail: String,
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertKind {
    /// Continuous flow: no full hour without consumption within 24 h (or the meter says so).
    Leak,
    /// Flow above the burst limit for 30 minutes or more (or the meter says so).
    Burst,
    /// The meter reports tampering.
    Tamper,
    /// The meter reports water flowing backwards.
    Backflow,
    /// The meter reports an empty pipe.
    Dry,
    /// The meter reports a condition in words hydromesh does not know.
    Other,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Leak,
        AlertKind::Burst,
        AlertKind::Tamper,
        AlertKind::Backflow,
        AlertKind::Dry,
        AlertKind::Other,
    ];

    /// `leak`, `burst`, `tamper`, `backflow`, `dry` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Leak => "leak",
            AlertKind::Burst => "burst",
            AlertKind::Tamper => "tamper",
            AlertKind::Backflow => "backflow",
            AlertKind::Dry => "dry",
            AlertKind::Other => "other",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str().eq_ignore_ascii_case(name))
    }
}

/// An active alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Alert {
    /// The meter.
    pub meter: MeterId,
    /// What.
    pub kind: AlertKind,
    /// Device time of the reading that raised it, ms.
    pub since_ms: u64,
}

/// A summary with its origin's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSummary {
    /// The encoded [`NodeSummary`] (a [`wire`](crate::wire) envelope).
    pub payload: Vec<u8>,
    /// The origin's public key, libp2p protobuf encoding.
    pub public_key: Vec<u8>,
    /// The origin's signature of `payload`.
    pub signature: Vec<u8>,
}

/// Proof that a node is alive and its summary `version` is still its latest: gossiped instead of
/// republishing an unchanged summary, so an idle mesh exchanges a few bytes per node.
///
/// A relayed or replayed copy proves nothing newer than its `at_ms`, by its origin's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// Peer id of the node, its bytes (an Ed25519 peer id holds its public key).
    pub origin: Vec<u8>,
    /// Its latest summary version.
    pub version: u64,
    /// When it said so, by its clock, ms since the Unix epoch.
    pub at_ms: u64,
}

/// An [`Alive`] with its origin's signature (the key is the one in the origin's peer id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAlive {
    /// The encoded [`Alive`] (a [`wire`](crate::wire) envelope).
    pub payload: Vec<u8>,
    /// The origin's signature of `payload`.
    pub signature: Vec<u8>,
}

/// What travels on the summary topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// A new summary.
    Summary(SignedSummary),
    /// The origin's summary has not changed since the version it names.
    Alive(SignedAlive),
    /// A new summary, as its changes from the origin's previous one.
    Delta(Box<SummaryDelta>),
}

/// A new summary sent as what changed since the origin's summary `base`: its top meters as runs
/// of the base's and new entries, its blocked meters and alerts only when they changed. A node
/// holding `base` rebuilds the new summary exactly and checks `signature`, the origin's
/// signature of the whole new summary, as if it had come whole (it then relays and serves it
/// whole, as [`SignedSummary`]); a node that does not pulls it by sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDelta {
    /// The version it changes.
    pub base: u64,
    /// The new summary, but for `top` (empty: see `top`), and `blocked` and `alerts` when they
    /// are the base's.
    pub summary: NodeSummary,
    /// The new summary's top meters, in order.
    pub top: Vec<TopRun>,
    /// `blocked` is the base's.
    pub same_blocked: bool,
    /// `alerts` are the base's.
    pub same_alerts: bool,
    /// The origin's signature of the whole new summary (as in [`SignedSummary`]).
    pub signature: Vec<u8>,
}

/// Part of a [`SummaryDelta`]'s top meters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopRun {
    /// `len` entries of the base's top, from index `start`.
    Base {
        /// Index of the first.
        start: u32,
        /// How many.
        len: u32,
    },
    /// An entry the base does not hold.
    New(MeterSpan),
}

/// One origin's summary version in a [`Digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryVersion {
    /// Peer id of the origin, its bytes.
    pub origin: Vec<u8>,
    /// The highest version held.
    pub version: u64,
    /// Whether the meter filter that version names is held too.
    pub has_filter: bool,
}

/// An origin's meter filter, as named by the `filter_hash` of its summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginFilter {
    /// Peer id of the origin, its bytes.
    pub origin: Vec<u8>,
    /// Its filter.
    pub filter: MeterFilter,
}

/// One admin command subject's latest command in a [`Digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandVersion {
    /// What it is about (`policy`, `block/<meter>`, `paid/<meter>`).
    pub subject: String,
    /// When the command in force was issued, ms.
    pub issued_at_ms: u64,
    /// The first 8 bytes of its signature, big endian: orders commands issued the same ms.
    pub tag: u64,
}

/// What a node holds, without the things themselves: the versions of its summaries and admin
/// commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Per origin, the highest summary version held.
    pub summaries: Vec<SummaryVersion>,
    /// Per subject, the command in force.
    pub commands: Vec<CommandVersion>,
}

/// `/hydromesh/sync/2` request: the asking node's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// What the asking node holds.
    pub digest: Digest,
}

/// `/hydromesh/sync/2` response: what the answering node holds newer than the digest, up to a
/// byte budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Summaries newer than the asking node's.
    pub summaries: Vec<SignedSummary>,
    /// Admin commands newer than the asking node's.
    pub commands: Vec<SignedCommand>,
    /// The meter filters of the summaries sent, and those the asking node lacks.
    pub filters: Vec<OriginFilter>,
    /// More is newer than fitted: ask again.
    pub more: bool,
}

/// A Bloom filter of meter ids: a compact "which meters does this node hold".
///
/// Routing uses it to ask only the nodes that may hold a meter; a false positive costs one
/// extra request, never a wrong answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterFilter {
    bits: Vec<u64>,
    hashes: u8,
}

impl MeterFilter {
    /// Bits per meter, for about 1% false positives.
    const BITS_PER_METER: usize = 10;
    /// Hash functions, optimal for 10 bits per entry.
    const HASHES: u8 = 7;
    /// Largest filter, in 64-bit words (256 KiB): larger nodes see more false positives.
    const MAX_WORDS: usize = 32 * 1024;
    /// Most hash functions a received filter may claim.
    const MAX_HASHES: u8 = 16;

    /// An empty filter sized for `meters` entries.
    pub fn with_capacity(meters: usize) -> Self {
        let words = (meters * Self::BITS_PER_METER).div_ceil(64).clamp(1, Self::MAX_WORDS);
        MeterFilter { bits: vec![0; words], hashes: Self::HASHES }
    }

    /// Its size in memory and, within a few bytes, on the wire.
    pub fn byte_size(&self) -> usize {
        self.bits.len() * 8
    }

    /// How many meters it holds at about 1% false positives.
    pub fn capacity(&self) -> usize {
        self.bits.len() * 64 / Self::BITS_PER_METER
    }

    /// Whether it is as large as a filter may be (a larger one would not be valid): more meters
    /// only raise its false positives.
    pub fn is_largest(&self) -> bool {
        self.bits.len() >= Self::MAX_WORDS
    }

    /// Adds a meter.
    pub fn insert(&mut self, meter: MeterId) {
        for bit in self.positions(meter) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// Whether the meter may be in the set (`false` is certain).
    pub fn may_contain(&self, meter: MeterId) -> bool {
        if self.bits.is_empty() {
            return false;
        }
        self.positions(meter).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Whether a received filter is well formed.
    pub fn is_valid(&self) -> bool {
        !self.bits.is_empty()
            && self.bits.len() <= Self::MAX_WORDS
            && (1..=Self::MAX_HASHES).contains(&self.hashes)
    }

    fn positions(&self, meter: MeterId) -> impl Iterator<Item = usize> {
        // Double hashing (Kirsch–Mitzenmacher): k positions from two 64-bit hashes.
        let len = (self.bits.len() * 64) as u64;
        let h1 = splitmix64(meter.code());
        let h2 = splitmix64(h1) | 1;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % len.max(1)) as usize)
    }
}

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_never_misses_and_rarely_lies() {
        let mut filter = MeterFilter::with_capacity(10_000);
        let meter = |n: u32| MeterId::from(n);
        for n in 0..10_000 {
            filter.insert(meter(n * 3));
        }
        assert!((0..10_000).all(|n| filter.may_contain(meter(n * 3))));
        let false_positives = (0..10_000).filter(|n| filter.may_contain(meter(n * 3 + 1))).count();
        assert!(false_positives < 300, "{false_positives} false positives in 10000");
    }

    #[test]
    fn empty_or_malformed_filters_hold_nothing() {
        let filter = MeterFilter { bits: vec![], hashes: 3 };
        assert!(!filter.is_valid());
        assert!(!filter.may_contain(1.into()));
        assert!(!MeterFilter { bits: vec![u64::MAX], hashes: 0 }.is_valid());
        assert!(MeterFilter::with_capacity(0).is_valid());
    }
}
