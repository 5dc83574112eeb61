//! The merged global view: every fog node's latest summary, and the global answers computed
//! from it (top, stats, peers, blocked meters, alerts, the mesh-wide period average).
//!
//! The view is a last-writer-wins map from origin to signed summary, keeping the highest version
//! per origin: a state-based CRDT, so gossip, sync and restarts can deliver summaries in any
//! order, any number of times, and every node converges to the same map. Answers are computed
//! locally (no fan-out) and state their [`Coverage`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydromesh_proto::query::{
    AlertEntry, AlertsAnswer, BlockedAnswer, BlockedEntry, Coverage, PeerInfo, PeersAnswer, StatsAnswer,
    TopAnswer,
};
use hydromesh_proto::summary::{AlertKind, MeterFilter, MeterSpan, NodeSummary, SignedSummary, SummaryDelta};
use hydromesh_proto::{limits, MeterId};
use libp2p::PeerId;

use super::index::{unheard, Contribution, Index};
use super::summary::{apply_delta, filter_hash, verify, SummaryError};
use crate::clock::now_ms;

/// One origin's latest summary.
struct Entry {
    /// The origin's peer id as text, shared with the index.
    origin: Arc<str>,
    summary: NodeSummary,
    signed: SignedSummary,
    /// The meter filter the summary names, once pulled (see [`View::set_filter`]).
    filter: Option<Arc<MeterFilter>>,
    /// When it was last refreshed; `None` for a summary restored from disk and not heard since.
    heard_at: Option<Instant>,
    /// When this node learned it (restored or heard): a restored summary is forgotten only
    /// `forget_after` after the restart, not at once.
    known_since: Instant,
    /// When the version before this one was learned, if any: an origin with two new versions
    /// within a window is publishing.
    previous_since: Option<Instant>,
}

impl Entry {
    fn contribution(&self) -> Contribution<'_> {
        Contribution {
            origin: &self.origin,
            top: &self.summary.top,
            meter_count: self.summary.meter_count,
            total_consumption_l: self.summary.total_consumption_l,
        }
    }
}

/// What merging a summary did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged {
    /// It is newer than what the view held: the view changed (origin given).
    Newer(PeerId),
    /// The view already held this version or a newer one.
    Known,
    /// A copy of this node's own summary with a higher version than its latest: its versions
    /// must jump past it.
    OwnAhead(u64),
}

/// What a summary delta is to the view.
#[derive(Debug)]
pub enum Expanded {
    /// The whole summary it describes, to merge.
    Whole(SignedSummary),
    /// The view already holds that version or a newer one (or it is this node's own).
    Known,
    /// The view does not hold the summary it changes: pull the new one whole.
    Behind,
}

/// What a liveness message told the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The origin's latest summary is the one held: it is fresh again (relay it).
    Refreshed,
    /// The origin has a newer summary than the one held: pull it.
    Behind,
    /// Nothing new (a duplicate, a replay, an older version, or this node's own).
    Old,
}

/// Most fog nodes a view holds: a bound on memory whatever peers send.
pub const MAX_NODES: usize = 4096;

/// The merged view of one node.
pub struct View {
    local: PeerId,
    entries: HashMap<PeerId, Entry>,
    stale_after: Duration,
    /// When set, only these fog nodes' summaries are merged (a closed mesh).
    members: Option<HashSet<PeerId>>,
    /// Kept up to date with `entries` by [`View::put`] (entries in and out) and [`View::alive`]
    /// (last heard).
    index: Index,
}

impl View {
    /// An empty view for the node `local`.
    pub fn new(local: PeerId, stale_after: Duration) -> Self {
        View { local, entries: HashMap::new(), stale_after, members: None, index: Index::default() }
    }

    /// Merges only the summaries of `members` (and this node's own) from now on.
    pub fn restrict_to(&mut self, members: impl IntoIterator<Item = PeerId>) {
        self.members = Some(members.into_iter().collect());
    }

    /// Whether `peer` is a fog node of this mesh: any peer in an open mesh, the members (and
    /// this node) in a closed one.
    pub fn admits(&self, peer: &PeerId) -> bool {
        *peer == self.local || self.members.as_ref().is_none_or(|members| members.contains(peer))
    }

    /// Merges a signed summary heard at `now`, or restored from disk at `now` when `restored`.
    pub fn merge(
        &mut self,
        signed: SignedSummary,
        now: Instant,
        restored: bool,
    ) -> Result<Merged, SummaryError> {
        // Old news is recognised before the signature is checked: re-deliveries and relayed old
        // versions cost a decode, not an ed25519 verification.
        let claimed: NodeSummary = hydromesh_proto::decode(&signed.payload, limits::MAX_SUMMARY_BYTES)?;
        if let Ok(origin) = claimed.origin.parse::<PeerId>() {
            if self.members.as_ref().is_some_and(|members| !members.contains(&origin)) && origin != self.local
            {
                return Err(SummaryError::NotMember(origin));
            }
            let known =
                self.entries.get(&origin).is_some_and(|entry| entry.summary.version >= claimed.version);
            if origin == self.local && !restored {
                // Our own summaries come only from ourselves: a relayed copy is old news, unless
                // it is newer than ours (our store was lost or restored from a backup), and then
                // the mesh ignores our summaries until we publish past it.
                if !known && verify(&signed).is_ok_and(|(_, signer)| signer == self.local) {
                    return Ok(Merged::OwnAhead(claimed.version));
                }
                return Ok(Merged::Known);
            }
            if known {
                return Ok(Merged::Known);
            }
        }
        let (summary, origin) = verify(&signed)?;
        if self.members.as_ref().is_some_and(|members| !members.contains(&origin)) && origin != self.local {
            return Err(SummaryError::NotMember(origin));
        }
        if !self.entries.contains_key(&origin) && self.entries.len() >= MAX_NODES {
            return Err(SummaryError::Invalid(format!("the view already holds {MAX_NODES} fog nodes")));
        }
        // Liveness is judged from the origin's own clock: a summary relayed long after it was
        // made (by sync, from a node that still remembers a dead origin) is not fresh.
        let age = Duration::from_millis(now_ms().saturating_sub(summary.generated_at_ms));
        let heard_at = (!restored).then(|| now.checked_sub(age).unwrap_or(now));
        let old = self.entries.get(&origin);
        let previous_since = old.map(|old| old.known_since);
        // The filter stays while the summaries name the same one.
        let filter = old
            .filter(|old| old.summary.filter_hash == summary.filter_hash)
            .and_then(|old| old.filter.clone());
        let entry = Entry {
            origin: summary.origin.as_str().into(),
            summary,
            signed,
            filter,
            heard_at,
            known_since: now,
            previous_since,
        };
        self.put(origin, Some(entry));
        Ok(Merged::Newer(origin))
    }

    /// The whole summary a delta describes, when the view holds the one it changes. Nothing is
    /// verified or merged here: the caller merges the whole summary.
    pub fn expand(&self, delta: SummaryDelta) -> Result<Expanded, SummaryError> {
        let origin: PeerId = delta
            .summary
            .origin
            .parse()
            .map_err(|_| SummaryError::Invalid("summary delta names no origin".into()))?;
        if !self.admits(&origin) {
            return Err(SummaryError::NotMember(origin));
        }
        Ok(match self.entries.get(&origin) {
            _ if origin == self.local => Expanded::Known,
            Some(entry) if entry.summary.version >= delta.summary.version => Expanded::Known,
            Some(entry) if entry.summary.version == delta.base => {
                Expanded::Whole(apply_delta(&entry.summary, &entry.signed, delta)?)
            }
            _ => Expanded::Behind,
        })
    }

    /// This node's own latest summary, if it made one.
    pub fn local_summary(&self) -> Option<&NodeSummary> {
        self.entries.get(&self.local).map(|entry| &entry.summary)
    }

    /// Takes a verified liveness message of `origin`: its summary `version` was still its latest
    /// at `at_ms` by its clock.
    pub fn alive(
        &mut self,
        origin: PeerId,
        version: u64,
        at_ms: u64,
        now: Instant,
    ) -> Result<Liveness, SummaryError> {
        if !self.admits(&origin) {
            return Err(SummaryError::NotMember(origin));
        }
        if origin == self.local {
            return Ok(Liveness::Old);
        }
        let Some(entry) = self.entries.get_mut(&origin) else { return Ok(Liveness::Behind) };
        if entry.summary.version < version {
            return Ok(Liveness::Behind);
        }
        let age = Duration::from_millis(now_ms().saturating_sub(at_ms));
        let heard_at = now.checked_sub(age).unwrap_or(now);
        if entry.summary.version > version || entry.heard_at.is_some_and(|at| at >= heard_at) {
            return Ok(Liveness::Old);
        }
        let was = entry.heard_at.replace(heard_at);
        self.index.heard(origin, Some(was), Some(Some(heard_at)));
        Ok(Liveness::Refreshed)
    }

    /// Per origin, the highest summary version held and whether its filter is held too.
    pub fn versions(&self) -> impl Iterator<Item = (PeerId, u64, bool)> + '_ {
        self.entries.iter().map(|(origin, entry)| (*origin, entry.summary.version, entry.filter.is_some()))
    }

    /// What this view holds newer than `versions` says (per origin: the version and whether its
    /// filter is held; an origin it lacks counts as version 0), freshest origins first: the
    /// signed summary when it is newer, and its filter when held and the other side lacks it.
    pub fn newer_than<'a>(
        &'a self,
        versions: &'a HashMap<PeerId, (u64, bool)>,
    ) -> impl Iterator<Item = (PeerId, Option<&'a SignedSummary>, Option<&'a Arc<MeterFilter>>)> {
        let mut newer: Vec<(PeerId, &Entry, bool)> = self
            .entries
            .iter()
            .filter_map(|(origin, entry)| {
                let (version, has_filter) = versions.get(origin).copied().unwrap_or((0, false));
                let summary = version < entry.summary.version;
                let same = version == entry.summary.version;
                let filter = entry.filter.is_some() && (summary || (same && !has_filter));
                (summary || filter).then_some((*origin, entry, summary))
            })
            .collect();
        newer.sort_by_key(|(_, entry, _)| std::cmp::Reverse(entry.heard_at));
        newer
            .into_iter()
            .map(|(origin, entry, summary)| (origin, summary.then_some(&entry.signed), entry.filter.as_ref()))
    }

    /// Whether `versions` holds something newer than this view, of an origin it admits: a
    /// newer summary, or the filter of the version both hold when this view lacks it.
    pub fn is_behind(&self, versions: &HashMap<PeerId, (u64, bool)>) -> bool {
        versions.iter().any(|(origin, (version, has_filter))| {
            self.admits(origin)
                && self.entries.get(origin).is_none_or(|entry| {
                    entry.summary.version < *version
                        || (entry.summary.version == *version && *has_filter && entry.filter.is_none())
                })
        })
    }

    /// Takes `origin`'s meter filter if it is the one its summary names; whether it was taken.
    pub fn set_filter(&mut self, origin: &PeerId, filter: MeterFilter) -> bool {
        let Some(entry) = self.entries.get_mut(origin) else { return false };
        if entry.filter.is_some() || !filter.is_valid() || filter_hash(&filter) != entry.summary.filter_hash {
            return false;
        }
        entry.filter = Some(Arc::new(filter));
        true
    }

    /// Origins heard with two new summaries within `window` of `now`, this node included: the
    /// publishers that share the mesh's summary budget (a node's one summary at start or after a
    /// single change is not a stream).
    pub fn publishers_within(&self, window: Duration, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|entry| {
                entry.heard_at.is_some()
                    && entry.previous_since.is_some_and(|since| now.duration_since(since) <= window)
            })
            .count()
    }

    /// The version of `origin`'s summary held, if any.
    pub fn version_of(&self, origin: &PeerId) -> Option<u64> {
        self.entries.get(origin).map(|entry| entry.summary.version)
    }

    /// Whether a summary held names a filter not pulled yet.
    pub fn lacks_filters(&self) -> bool {
        self.entries.values().any(|entry| entry.filter.is_none())
    }

    /// Puts this node's own latest summary, and the filter it names, in the view.
    pub fn set_local(
        &mut self,
        summary: NodeSummary,
        signed: SignedSummary,
        filter: Arc<MeterFilter>,
        now: Instant,
    ) {
        let previous_since = self.entries.get(&self.local).map(|old| old.known_since);
        let entry = Entry {
            origin: summary.origin.as_str().into(),
            summary,
            signed,
            filter: Some(filter),
            heard_at: Some(now),
            known_since: now,
            previous_since,
        };
        self.put(self.local, Some(entry));
    }

    /// Puts `origin`'s entry in the view, or removes it (`None`), keeping the index up to date:
    /// the one place `entries` gains or loses an entry.
    fn put(&mut self, origin: PeerId, entry: Option<Entry>) {
        let old = match entry {
            Some(entry) => self.entries.insert(origin, entry),
            None => self.entries.remove(&origin),
        };
        let new = self.entries.get(&origin);
        self.index.replace(old.as_ref().map(Entry::contribution), new.map(Entry::contribution));
        self.index.heard(origin, old.map(|old| old.heard_at), new.map(|new| new.heard_at));
    }

    /// Every signed summary held, for sync.
    pub fn signed(&self) -> Vec<SignedSummary> {
        self.entries.values().map(|entry| entry.signed.clone()).collect()
    }

    /// Forgets origins not heard from within `forget_after`; returns them.
    pub fn forget_older_than(&mut self, forget_after: Duration, now: Instant) -> Vec<PeerId> {
        let local = self.local;
        let old: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(origin, entry)| {
                **origin != local
                    && now.duration_since(entry.heard_at.unwrap_or(entry.known_since)) > forget_after
            })
            .map(|(origin, _)| *origin)
            .collect();
        for origin in &old {
            self.put(*origin, None);
        }
        old
    }

    fn is_stale(&self, origin: &PeerId, entry: &Entry, now: Instant) -> bool {
        *origin != self.local && unheard(entry.heard_at, now, self.stale_after)
    }

    /// Which nodes the view includes, which are stale, and the age of the oldest data.
    pub fn coverage(&self, now: Instant, now_ms: u64) -> Coverage {
        let origin_text =
            |origin: PeerId| self.entries.get(&origin).map(|entry| entry.summary.origin.clone());
        let mut stale: Vec<String> = self
            .index
            .unheard_since(now, self.stale_after)
            .filter(|origin| *origin != self.local)
            .filter_map(origin_text)
            .collect();
        stale.sort_unstable();
        let heard_age = self.index.oldest_heard().map(|at| now.duration_since(at).as_millis() as u64);
        let restored_age = self
            .index
            .never_heard()
            .filter_map(|origin| self.entries.get(&origin))
            .map(|entry| now_ms.saturating_sub(entry.summary.generated_at_ms))
            .max();
        Coverage {
            included: self.index.included(),
            stale,
            missing: Vec::new(),
            oldest_data_age_ms: heard_age.max(restored_age).unwrap_or(0),
        }
    }

    /// The `n` highest consumers over all data held, merged from every node's top meters.
    ///
    /// Exact for `n` up to the nodes' top-K: a meter in the global top-N is in its home's
    /// top-K. A meter held by several nodes is counted once, over the join of its spans.
    pub fn top(&self, n: usize, now: Instant, now_ms: u64) -> TopAnswer {
        TopAnswer { entries: self.index.top(n), coverage: self.coverage(now, now_ms) }
    }

    /// The `k`-th largest consumption over all data held, 0 while fewer than `k` meters are
    /// known: a meter below it is in no top-K (see [`super::summary::build`]).
    pub fn kth_consumption(&self, k: usize) -> u64 {
        self.index.kth(k).unwrap_or(0)
    }

    /// Meters whose supply is cut, mesh-wide, by meter.
    pub fn blocked(&self, now: Instant, now_ms: u64) -> BlockedAnswer {
        let mut blocked: Vec<BlockedEntry> = self
            .entries
            .values()
            .flat_map(|entry| {
                let home = &entry.summary.origin;
                entry.summary.blocked.iter().map(|b| BlockedEntry { blocked: b.clone(), home: home.clone() })
            })
            .collect();
        blocked.sort_by(|a, b| (a.blocked.meter, &a.home).cmp(&(b.blocked.meter, &b.home)));
        blocked.dedup_by_key(|entry| entry.blocked.meter);
        BlockedAnswer { blocked, coverage: self.coverage(now, now_ms) }
    }

    /// Active alerts mesh-wide, of one kind or all, by meter then kind.
    pub fn alerts(&self, kind: Option<AlertKind>, now: Instant, now_ms: u64) -> AlertsAnswer {
        let mut alerts: Vec<AlertEntry> = self
            .entries
            .values()
            .flat_map(|entry| {
                let home = &entry.summary.origin;
                entry
                    .summary
                    .alerts
                    .iter()
                    .filter(move |alert| kind.is_none_or(|kind| alert.kind == kind))
                    .map(|alert| AlertEntry { alert: *alert, home: home.clone() })
            })
            .collect();
        alerts.sort_by_key(|entry| (entry.alert.meter, entry.alert.kind));
        alerts.dedup_by_key(|entry| (entry.alert.meter, entry.alert.kind));
        AlertsAnswer { alerts, coverage: self.coverage(now, now_ms) }
    }

    /// Mesh-wide meters and total consumption over all data held.
    pub fn stats(&self, now: Instant, now_ms: u64) -> StatsAnswer {
        let (meters, total_consumption_l) = self.index.sums();
        StatsAnswer { meters, total_consumption_l, coverage: self.coverage(now, now_ms) }
    }

    /// Every node known.
    pub fn peers(&self, now: Instant, now_ms: u64) -> PeersAnswer {
        let mut peers: Vec<PeerInfo> = self
            .entries
            .iter()
            .map(|(origin, entry)| PeerInfo {
                peer: entry.summary.origin.clone(),
                name: entry.summary.name.clone(),
                addrs: entry.summary.addrs.clone(),
                meters: entry.summary.meter_count,
                version: entry.summary.version,
                last_heard_ms_ago: entry.heard_at.map(|at| now.duration_since(at).as_millis() as u64),
                stale: self.is_stale(origin, entry, now),
                is_self: *origin == self.local,
                connected: false,
            })
            .collect();
        peers.sort_by(|a, b| (&a.name, &a.peer).cmp(&(&b.name, &b.peer)));
        PeersAnswer { peers, coverage: self.coverage(now, now_ms) }
    }

    /// Remote nodes that may hold `meter`, freshest first (a node whose filter is not pulled
    /// yet may hold any meter).
    pub fn homes_of(&self, meter: MeterId) -> Vec<PeerId> {
        let mut homes: Vec<(&PeerId, &Entry)> = self
            .entries
            .iter()
            .filter(|(origin, entry)| {
                **origin != self.local && entry.filter.as_ref().is_none_or(|filter| filter.may_contain(meter))
            })
            .collect();
        homes.sort_by_key(|(_, entry)| std::cmp::Reverse(entry.heard_at));
        homes.into_iter().map(|(origin, _)| *origin).collect()
    }

    /// This node's spans of the meters that `origin`'s summary counts among its top meters as
    /// well as this node's own: both count them (a meter that moved and was left owned by both),
    /// which a handoff question settles. A node counts only the meters it owns in its top.
    pub fn counted_by_both(&self, origin: &PeerId) -> Vec<MeterSpan> {
        let (Some(ours), Some(theirs)) = (self.local_summary(), self.entries.get(origin)) else {
            return Vec::new();
        };
        if *origin == self.local {
            return Vec::new();
        }
        let theirs: HashSet<MeterId> = theirs.summary.top.iter().map(|span| span.meter).collect();
        ours.top.iter().filter(|span| theirs.contains(&span.meter)).copied().collect()
    }

    /// The exact mesh-wide average consumption in the period starting at `period_start_ms`:
    /// Σ consumption ÷ Σ meters that reported, over every summary for that period.
    pub fn period_average(&self, period_start_ms: u64) -> Option<f64> {
        let (total, meters) = self
            .entries
            .values()
            .filter(|entry| entry.summary.period_start_ms == period_start_ms)
            .fold((0u64, 0u64), |(total, meters), entry| {
                (
                    total.saturating_add(entry.summary.period_consumption_l),
                    meters.saturating_add(entry.summary.period_meters),
                )
            });
        (meters > 0).then(|| total as f64 / meters as f64)
    }

    /// Remote nodes heard from within `stale_after`.
    pub fn live_remotes(&self, now: Instant) -> Vec<PeerId> {
        self.entries
            .iter()
            .filter(|(origin, entry)| **origin != self.local && !self.is_stale(origin, entry, now))
            .map(|(origin, _)| *origin)
            .collect()
    }

    /// Every remote node known, stale or not.
    pub fn remotes(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.entries.keys().copied().filter(move |origin| *origin != self.local)
    }

    /// Whether `origin`'s latest summary was made within `within` of `now` (by its clock).
    pub fn heard_within(&self, origin: &PeerId, within: Duration, now: Instant) -> bool {
        self.entries
            .get(origin)
            .and_then(|entry| entry.heard_at)
            .is_some_and(|at| now.duration_since(at) <= within)
    }

    /// The addresses a node announced in its summary.
    pub fn addrs_of(&self, origin: &PeerId) -> Vec<String> {
        self.entries.get(origin).map(|e| e.summary.addrs.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use hydromesh_proto::summary::{MeterFilter, MeterSpan, Point};
    use libp2p::identity::Keypair;

    use super::*;
    use crate::domain;
    use crate::mesh::summary::sign;

    fn span(meter: MeterId, first: (u64, u64), last: (u64, u64)) -> MeterSpan {
        MeterSpan {
            meter,
            first: Point { ts_ms: first.0, litres: first.1 },
            last: Point { ts_ms: last.0, litres: last.1 },
        }
    }

    /// The filter of the meters in `top`.
    pub(crate) fn filter(top: &[MeterSpan]) -> MeterFilter {
        let mut filter = MeterFilter::with_capacity(top.len());
        top.iter().for_each(|s| filter.insert(s.meter));
        filter
    }

    /// A summary of `key`'s node at `version`, made now, holding `top` (and naming its filter).
    pub(crate) fn signed(key: &Keypair, version: u64, top: Vec<MeterSpan>) -> SignedSummary {
        let filter_hash = filter_hash(&filter(&top));
        let summary = NodeSummary {
            origin: key.public().to_peer_id().to_string(),
            name: format!("n{version}"),
            version,
            generated_at_ms: now_ms(),
            meter_count: top.len() as u64,
            total_consumption_l: top.iter().map(domain::span_consumption).sum(),
            top,
            filter_hash,
            ..NodeSummary::default()
        };
        sign(key, &summary).expect("sign")
    }

    #[test]
    fn highest_version_wins_in_any_order() {
        let (a, local) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let v1 = signed(&a, 1, vec![span(1.into(), (0, 0), (10, 100))]);
        let v2 = signed(&a, 2, vec![span(1.into(), (0, 0), (20, 300))]);
        for order in [[v1.clone(), v2.clone()], [v2.clone(), v1.clone()]] {
            let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
            for s in order.iter().chain(order.iter()) {
                view.merge(s.clone(), now, false).expect("merge");
            }
            assert_eq!(view.stats(now, 0).total_consumption_l, 300);
            assert_eq!(view.top(5, now, 0).entries[0].consumption_l, 300);
        }
    }

    #[test]
    fn a_delta_is_expanded_only_over_the_version_it_changes() {
        use hydromesh_proto::summary::Gossip;

        use crate::mesh::summary::{gossip_form, verify};

        let (a, local) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let top =
            |n: u32| (0..n).map(|m| span(m.into(), (0, 0), (10, 1_000 - u64::from(m)))).collect::<Vec<_>>();
        let (v1, v2, v3) = (signed(&a, 1, top(50)), signed(&a, 2, top(51)), signed(&a, 3, top(52)));
        let summary = |signed: &SignedSummary| verify(signed).expect("verify").0;
        let delta = |base: &SignedSummary, new: &SignedSummary| match gossip_form(
            Some(&summary(base)),
            &summary(new),
            new.clone(),
        ) {
            Gossip::Delta(delta) => *delta,
            other => panic!("not a delta: {other:?}"),
        };
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        assert!(matches!(view.expand(delta(&v1, &v2)), Ok(Expanded::Behind)), "nothing held of a");
        view.merge(v1.clone(), now, false).expect("merge");
        assert!(matches!(view.expand(delta(&v2, &v3)), Ok(Expanded::Behind)), "v2 not held");
        let Ok(Expanded::Whole(whole)) = view.expand(delta(&v1, &v2)) else { panic!("over v1") };
        assert_eq!(whole, v2, "the origin's signed summary");
        view.merge(v3.clone(), now, false).expect("merge");
        assert!(matches!(view.expand(delta(&v1, &v2)), Ok(Expanded::Known)), "older than v3");

        let mut closed = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        closed.restrict_to([Keypair::generate_ed25519().public().to_peer_id()]);
        assert!(matches!(closed.expand(delta(&v1, &v2)), Err(SummaryError::NotMember(_))));
    }

    #[test]
    fn top_joins_a_meter_held_by_two_nodes_and_stats_are_weighted() {
        let (a, b, local) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        view.merge(
            signed(&a, 1, vec![span(1.into(), (0, 0), (10, 100)), span(2.into(), (0, 0), (10, 50))]),
            now,
            false,
        )
        .expect("a");
        view.merge(
            signed(&b, 1, vec![span(1.into(), (10, 100), (20, 130)), span(3.into(), (0, 0), (1, 60))]),
            now,
            false,
        )
        .expect("b");
        let top = view.top(2, now, 0);
        let got: Vec<_> = top.entries.iter().map(|e| (e.meter, e.consumption_l)).collect();
        assert_eq!(got, vec![(MeterId::from(1), 130), (3.into(), 60)]);
        assert_eq!(top.entries[0].home, b.public().to_peer_id().to_string());
        assert_eq!(top.coverage.included.len(), 2);
        let stats = view.stats(now, 0);
        assert_eq!((stats.meters, stats.total_consumption_l), (4, 240));
        assert!((stats.average_consumption_l() - 60.0).abs() < 1e-9);
        assert_eq!(view.homes_of(3.into()).len(), 2, "without their filters, either node may hold it");
        assert!(view.lacks_filters());
        let a_top = [span(1.into(), (0, 0), (10, 100)), span(2.into(), (0, 0), (10, 50))];
        let b_top = [span(1.into(), (10, 100), (20, 130)), span(3.into(), (0, 0), (1, 60))];
        assert!(
            !view.set_filter(&a.public().to_peer_id(), filter(&b_top)),
            "not the filter a's summary names"
        );
        assert!(view.set_filter(&a.public().to_peer_id(), filter(&a_top)));
        assert!(view.set_filter(&b.public().to_peer_id(), filter(&b_top)));
        assert!(!view.lacks_filters());
        assert_eq!(view.homes_of(3.into()), vec![b.public().to_peer_id()]);
    }

    #[test]
    fn answers_kept_up_to_date_equal_a_full_recount_after_merges_and_forgets() {
        let keys: Vec<Keypair> = (0..6).map(|_| Keypair::generate_ed25519()).collect();
        let mut view = View::new(Keypair::generate_ed25519().public().to_peer_id(), Duration::from_secs(30));
        let mut held: HashMap<PeerId, Vec<MeterSpan>> = HashMap::new();
        let mut versions = [0u64; 6];
        let mut seed = 7u64;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let (start, mut forgotten) = (Instant::now(), 0);
        for round in 0..200u64 {
            let now = start + Duration::from_secs(round);
            let node = next(6) as usize;
            // A node's top: distinct meters, shared with other nodes (meters that moved); its
            // last readings are at this round's time, so the latest reading of a meter is unique.
            let mut top: Vec<MeterSpan> = Vec::new();
            for _ in 0..next(8) {
                let meter = MeterId::from(next(12) as u32);
                if top.iter().all(|s| s.meter != meter) {
                    let first = next(500);
                    top.push(span(meter, (round, first), (round * 10 + 5, first + next(1000))));
                }
            }
            versions[node] += 1;
            view.merge(signed(&keys[node], versions[node], top.clone()), now, false).expect("merge");
            held.insert(keys[node].public().to_peer_id(), top);
            if round % 20 == 19 {
                for origin in view.forget_older_than(Duration::from_secs(5), now) {
                    held.remove(&origin).expect("forgot a node held");
                    forgotten += 1;
                }
            }
            let parts = held.iter().flat_map(|(o, top)| top.iter().map(move |s| (o.to_string(), *s)));
            for n in [3, 100] {
                assert_eq!(
                    view.top(n, now, 0).entries,
                    domain::rank_joined(parts.clone(), n, 0),
                    "round {round}"
                );
            }
            let all: Vec<&MeterSpan> = held.values().flatten().collect();
            let stats = view.stats(now, 0);
            assert_eq!(stats.meters, all.len() as u64);
            assert_eq!(
                stats.total_consumption_l,
                all.iter().map(|s| domain::span_consumption(s)).sum::<u64>()
            );
            let mut included: Vec<String> = held.keys().map(PeerId::to_string).collect();
            included.sort();
            assert_eq!(&*stats.coverage.included, included.as_slice());
            let ranked = domain::rank_joined(parts, 4, 0);
            let kth = if ranked.len() < 4 { 0 } else { ranked[3].consumption_l };
            assert_eq!(view.kth_consumption(4), kth);
        }
        assert!(forgotten > 0, "some nodes were forgotten along the way");
    }

    #[test]
    fn restored_and_silent_nodes_are_stale_then_forgotten() {
        let (a, local) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let start = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        view.merge(signed(&a, 1, vec![]), start, true).expect("restore");
        assert_eq!(view.coverage(start, 0).stale.len(), 1);
        view.merge(signed(&a, 2, vec![]), start, false).expect("fresh");
        assert!(view.coverage(start, 0).stale.is_empty());
        let later = start + Duration::from_secs(31);
        assert_eq!(view.coverage(later, 0).stale.len(), 1);
        assert!(view.live_remotes(later).is_empty());
        assert_eq!(view.forget_older_than(Duration::from_secs(60), later).len(), 0);
        assert_eq!(view.forget_older_than(Duration::from_secs(20), later).len(), 1);
    }

    #[test]
    fn a_closed_mesh_refuses_strangers_and_old_news_is_not_fresh() {
        let (member, stranger, local) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        view.restrict_to([member.public().to_peer_id()]);
        view.merge(signed(&member, 1, vec![]), now, false).expect("member");
        let refused = view.merge(signed(&stranger, 1, vec![]), now, false);
        assert!(matches!(refused, Err(SummaryError::NotMember(_))), "{refused:?}");
        assert_eq!(view.coverage(now, 0).included.len(), 1);

        // A summary made a minute ago and relayed now (sync from a node that still remembers a
        // dead origin) counts as a minute old: stale, not fresh.
        let mut old = signed(&member, 2, vec![]);
        let mut summary: NodeSummary = hydromesh_proto::decode(&old.payload, 1 << 20).expect("decode");
        summary.generated_at_ms -= 60_000;
        old = sign(&member, &summary).expect("sign");
        view.merge(old, now, false).expect("merge");
        assert_eq!(view.coverage(now, 0).stale.len(), 1);
    }

    #[test]
    fn meters_two_nodes_both_count_among_their_top_are_found() {
        let (local, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        let ours =
            signed(&local, 1, vec![span(1.into(), (0, 0), (10, 100)), span(2.into(), (0, 0), (10, 50))]);
        let (summary, _) = verify(&ours).expect("verify");
        view.set_local(summary, ours, Arc::new(filter(&[])), now);
        let origin = other.public().to_peer_id();
        view.merge(
            signed(&other, 1, vec![span(2.into(), (20, 50), (30, 80)), span(3.into(), (0, 0), (1, 9))]),
            now,
            false,
        )
        .expect("merge");
        let both: Vec<MeterId> = view.counted_by_both(&origin).iter().map(|span| span.meter).collect();
        assert_eq!(both, [MeterId::from(2)]);
        assert!(view.counted_by_both(&local.public().to_peer_id()).is_empty());
    }

    #[test]
    fn a_newer_copy_of_our_own_summary_is_reported() {
        let local = Keypair::generate_ed25519();
        let now = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        let ours = signed(&local, 1, vec![]);
        let (summary, _) = verify(&ours).expect("verify");
        view.set_local(summary, ours.clone(), Arc::new(filter(&[])), now);
        assert_eq!(view.merge(ours, now, false).expect("merge"), Merged::Known);
        assert_eq!(view.merge(signed(&local, 7, vec![]), now, false).expect("merge"), Merged::OwnAhead(7));
    }

    #[test]
    fn liveness_refreshes_the_version_held_and_asks_for_a_newer_one() {
        let (local, remote) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let origin = remote.public().to_peer_id();
        let start = Instant::now();
        let mut view = View::new(local.public().to_peer_id(), Duration::from_secs(30));
        assert_eq!(view.alive(origin, 1, now_ms(), start).expect("admitted"), Liveness::Behind, "unknown");
        view.merge(signed(&remote, 2, vec![]), start, true).expect("merge");
        let later = start + Duration::from_secs(60);
        assert!(
            view.stats(later, now_ms()).coverage.stale.contains(&origin.to_string()),
            "restored, not heard"
        );
        assert_eq!(view.alive(origin, 2, now_ms(), later).expect("admitted"), Liveness::Refreshed);
        assert!(view.stats(later, now_ms()).coverage.stale.is_empty(), "fresh again");
        assert_eq!(
            view.alive(origin, 2, now_ms() - 5_000, later).expect("admitted"),
            Liveness::Old,
            "a replay"
        );
        assert_eq!(
            view.alive(origin, 1, now_ms(), later).expect("admitted"),
            Liveness::Old,
            "an older version"
        );
        assert_eq!(view.alive(origin, 3, now_ms(), later).expect("admitted"), Liveness::Behind);
        view.restrict_to([]);
        assert!(matches!(view.alive(origin, 3, now_ms(), later), Err(SummaryError::NotMember(_))));
    }
}
