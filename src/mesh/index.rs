//! What the view keeps up to date on every merge so that global answers read it instead of
//! walking every node's summary: the joined ranking of every meter in some node's top, the
//! mesh-wide sums, the sorted list of nodes included, and the nodes ordered by when they were
//! last heard (for staleness and the age of the oldest data).
//!
//! A merge costs O(top meters of that summary × log); `top n` costs O(n), `stats` O(stale nodes).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydromesh_proto::query::TopEntry;
use hydromesh_proto::summary::MeterSpan;
use hydromesh_proto::MeterId;
use libp2p::PeerId;

use crate::domain::{join_spans, span_consumption};

/// What one origin contributes to the index: the parts of its summary the answers read.
pub(super) struct Contribution<'a> {
    pub origin: &'a Arc<str>,
    pub top: &'a [MeterSpan],
    pub meter_count: u64,
    pub total_consumption_l: u64,
}

/// Whether an origin last heard at `heard` (never, since a restart: `None`) is not heard within
/// `stale_after` of `now`: the one staleness rule.
pub(super) fn unheard(heard: Option<Instant>, now: Instant, stale_after: Duration) -> bool {
    heard.is_none_or(|at| now.duration_since(at) > stale_after)
}

#[derive(Default)]
pub(super) struct Index {
    /// Per meter in some summary's top: each origin's span of it, by origin.
    spans: HashMap<MeterId, Vec<(Arc<str>, MeterSpan)>>,
    /// Every such meter, joined over its origins: largest consumption first, then by meter.
    ranked: BTreeSet<(Reverse<u64>, MeterId)>,
    /// Σ meter counts and Σ total consumptions (u128: no overflow with any number of u64s).
    meters: u128,
    consumption: u128,
    /// Origins, sorted: shared by every answer's coverage.
    included: Arc<[String]>,
    /// Origins by when they were last heard, never-heard (restored) first.
    by_heard: BTreeSet<(Option<Instant>, PeerId)>,
}

impl Index {
    /// Replaces what `old` contributed with what `new` contributes (either may be absent: a
    /// new origin, a forgotten one).
    pub fn replace(&mut self, old: Option<Contribution<'_>>, new: Option<Contribution<'_>>) {
        if let Some(old) = &old {
            for span in old.top {
                self.rejoin(span.meter, |spans| spans.retain(|(origin, _)| origin != old.origin));
            }
            self.meters -= u128::from(old.meter_count);
            self.consumption -= u128::from(old.total_consumption_l);
        }
        if let Some(new) = &new {
            for span in new.top {
                self.rejoin(span.meter, |spans| {
                    let at = spans.partition_point(|(origin, _)| origin <= new.origin);
                    spans.insert(at, (new.origin.clone(), *span));
                });
            }
            self.meters += u128::from(new.meter_count);
            self.consumption += u128::from(new.total_consumption_l);
        }
        match (&old, &new) {
            (Some(old), None) => {
                self.included =
                    self.included.iter().filter(|o| o.as_str() != &**old.origin).cloned().collect();
            }
            (None, Some(new)) => {
                let mut included = self.included.to_vec();
                let at = included.partition_point(|o| o.as_str() < &**new.origin);
                included.insert(at, new.origin.to_string());
                self.included = included.into();
            }
            _ => {}
        }
    }

    /// Changes the spans held of `meter` and ranks it again.
    fn rejoin(&mut self, meter: MeterId, change: impl FnOnce(&mut Vec<(Arc<str>, MeterSpan)>)) {
        if let Some((span, _)) = self.joined(meter) {
            self.ranked.remove(&(Reverse(span_consumption(&span)), meter));
        }
        change(self.spans.entry(meter).or_default());
        match self.joined(meter) {
            Some((span, _)) => {
                self.ranked.insert((Reverse(span_consumption(&span)), meter));
            }
            None => {
                self.spans.remove(&meter);
            }
        }
    }

    /// Records that `origin` was last heard at `now_heard` instead of `was`.
    pub fn heard(
        &mut self,
        origin: PeerId,
        was: Option<Option<Instant>>,
        now_heard: Option<Option<Instant>>,
    ) {
        if let Some(was) = was {
            self.by_heard.remove(&(was, origin));
        }
        if let Some(heard) = now_heard {
            self.by_heard.insert((heard, origin));
        }
    }

    /// One meter joined over the origins that hold it, and its home: the origin with its
    /// latest reading (the first by origin on a tie).
    fn joined(&self, meter: MeterId) -> Option<(MeterSpan, &Arc<str>)> {
        let mut spans = self.spans.get(&meter)?.iter();
        let (home, first) = spans.next()?;
        Some(spans.fold((*first, home), |(joined, home), (origin, span)| {
            let home = if span.last.ts_ms > joined.last.ts_ms { origin } else { home };
            (join_spans(joined, *span, 0), home)
        }))
    }

    /// The `n` largest consumers.
    pub fn top(&self, n: usize) -> Vec<TopEntry> {
        self.ranked
            .iter()
            .take(n)
            .filter_map(|(Reverse(consumption), meter)| {
                let (_, home) = self.joined(*meter)?;
                Some(TopEntry { meter: *meter, consumption_l: *consumption, home: home.to_string() })
            })
            .collect()
    }

    /// The `k`-th largest consumption, if `k` meters are ranked.
    pub fn kth(&self, k: usize) -> Option<u64> {
        k.checked_sub(1).and_then(|skip| self.ranked.iter().nth(skip)).map(|(Reverse(c), _)| *c)
    }

    /// Σ meter counts and Σ total consumptions, saturated to u64.
    pub fn sums(&self) -> (u64, u64) {
        let saturate = |sum: u128| u64::try_from(sum).unwrap_or(u64::MAX);
        (saturate(self.meters), saturate(self.consumption))
    }

    pub fn included(&self) -> Arc<[String]> {
        self.included.clone()
    }

    /// The origins not heard within `stale_after` of `now`, never-heard ones first.
    pub fn unheard_since(&self, now: Instant, stale_after: Duration) -> impl Iterator<Item = PeerId> + '_ {
        self.by_heard
            .iter()
            .take_while(move |(heard, _)| unheard(*heard, now, stale_after))
            .map(|(_, origin)| *origin)
    }

    /// The earliest time an origin was last heard, of those heard.
    pub fn oldest_heard(&self) -> Option<Instant> {
        self.by_heard.iter().find_map(|(heard, _)| *heard)
    }

    /// The origins never heard since a restart.
    pub fn never_heard(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.by_heard.iter().take_while(|(heard, _)| heard.is_none()).map(|(_, origin)| *origin)
    }
}
