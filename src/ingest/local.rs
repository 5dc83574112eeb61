//! This node's own meters as the ingest writer knows them: each meter's rule state (alert
//! tracker, period figures, block), and the aggregates a summary carries (meter count, total
//! consumption, top-K, membership filter, alerts, blocks, period figures), kept up to date
//! reading by reading and published as one [`LocalSnapshot`].
//!
//! Nothing here walks every meter on a reading: a meter's consumption over all data held only
//! grows as readings arrive (registers never decrease), so the top-K is maintained exactly by
//! insertion alone, and the totals by differences.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use hydromesh_proto::ingest::{MeterCommand, Outcome, Valve};
use hydromesh_proto::peer::{Handoff, Transfer};
use hydromesh_proto::summary::{Alert, Blocked, MeterFilter, MeterSpan, Point};
use hydromesh_proto::{MeterId, Reading};

use crate::domain::rules::{self, Consumption, RationingInputs, Tracker};
use crate::domain::{join_base, span_consumption};
use crate::store::{Appended, Store, StoreError};

/// Most readings replayed to rebuild one meter's rule state (about a day at one reading every
/// 4.5 s); a denser meter's rules start from the latest of them.
const MAX_REPLAY_READINGS: usize = 20_000;
/// Most threads rebuilding meters' rule state at a start.
const MAX_REPLAY_THREADS: usize = 4;
/// Fewest meters a thread rebuilding meters' rule state is started for.
const MIN_REPLAY_PER_THREAD: usize = 10_000;
/// Smallest membership filter, in meters (a filter is rebuilt twice as large when outgrown).
const MIN_FILTER_METERS: usize = 1024;
/// The checkpoint of the state, in the store's folder (see [`LocalMeters::save_checkpoint`]).
const CHECKPOINT_FILE: &str = "local-state";
/// Meters below which no checkpoint is saved: rebuilding their state from the readings takes
/// a fraction of a second, and the file (about 70 bytes a meter) would only take disk space.
const CHECKPOINT_MIN_METERS: usize = 50_000;
/// The first bytes of a checkpoint: its format, which changes with the layout of what it holds.
const CHECKPOINT_MAGIC: &[u8] = b"hydromesh local state 4\n";
/// Largest part of a checkpoint decoded at once (a damaged length never allocates past it).
const CHECKPOINT_LIMIT: usize = 1 << 28;

/// One meter's saved rule state: its tracker, period figures and current period consumption.
type SavedMeter = (MeterId, Tracker, Option<PeriodFigures>, (u64, bool));

/// What a checkpoint holds besides its meters, which follow it in the file one by one (see
/// [`LocalMeters::save_checkpoint`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointHeader {
    /// The store's fold when it was saved: a meter's saved state is still its own while the
    /// store says no later fold changed it (and it has no readings waiting for a fold).
    fold: u64,
    /// The burst limit the trackers judged with.
    burst_flow_lph: u32,
    /// How many meters follow, in meter order.
    meters: u64,
    blocked: Vec<Blocked>,
    released: Vec<MeterId>,
    period_start_ms: u64,
    figures_for: (u64, u64),
}

/// What this node knows of its own meters at one moment: what its summary carries and what its
/// answers about its meters need. Cheap to clone (shared parts are behind `Arc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSnapshot {
    /// Meters held.
    pub meter_count: u64,
    /// Σ consumption of the meters over all data held, litres.
    pub total_consumption_l: u64,
    /// The top-K meters over all data held, consumption descending then meter ascending.
    pub top: Vec<MeterSpan>,
    /// Which meters this node holds (may say yes for a few it does not).
    pub filter: Arc<MeterFilter>,
    /// Active alerts, by meter.
    pub alerts: Arc<BTreeMap<MeterId, Vec<Alert>>>,
    /// Meters whose supply is cut.
    pub blocked: Arc<BTreeMap<MeterId, Blocked>>,
    /// The rationing period the figures below are for.
    pub period_start_ms: u64,
    /// Σ consumption of this node's meters in the period, litres.
    pub period_consumption_l: u64,
    /// This node's meters with a reading in the period.
    pub period_meters: u64,
}

impl Default for LocalSnapshot {
    fn default() -> Self {
        LocalSnapshot {
            meter_count: 0,
            total_consumption_l: 0,
            top: Vec::new(),
            filter: Arc::new(MeterFilter::with_capacity(MIN_FILTER_METERS)),
            alerts: Arc::default(),
            blocked: Arc::default(),
            period_start_ms: 0,
            period_consumption_l: 0,
            period_meters: 0,
        }
    }
}

/// What the local meter state is configured with.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Flow above this, in litres per hour, for 30 minutes or more is a burst.
    pub burst_flow_lph: u32,
    /// Top meters kept for the summary.
    pub top_k: usize,
}

/// One meter's state at its home (its span is the store's: one owner).
struct MeterState {
    tracker: Tracker,
    /// Cached inputs of the period figures, for [`LocalMeters::figures_for`]; dropped by a
    /// late reading.
    period: Option<PeriodFigures>,
    /// Consumption in the current period, and whether the meter reported in it.
    current: (u64, bool),
}

/// What a meter's period consumption is computed from: the base of the current period (its
/// last reading at or before the start, else its first after), and the consumption in the
/// period before.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct PeriodFigures {
    current_base: Option<Point>,
    previous_l: u64,
}

/// What a handoff between fog nodes left of a meter here (saved in the store). The newest
/// home owns a meter: it alone counts it (meters, consumption, period figures) and judges it
/// (rationing, alerts); a former home keeps its readings for questions about its history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Tenure {
    /// The meter moved to node `owner`, whose reading at `at_ts_ms` made it the newest home:
    /// held, not counted. What was handed over is kept: the same answer if the same node asks
    /// again, and the meter's count if it comes back with no owner left.
    Moved { owner: String, at_ts_ms: u64, handed: Transfer },
    /// This node took the meter over: it counts it from its first register at its first home,
    /// and judges the period handed over from the base the previous home knew.
    Inherited(Transfer),
}

impl Tenure {
    fn is_moved(tenure: Option<&Tenure>) -> bool {
        matches!(tenure, Some(Tenure::Moved { .. }))
    }
}

/// The local meter state; one owner, the ingest writer.
pub struct LocalMeters {
    settings: Settings,
    /// A B-tree, filled in meter order at a start: a million meters' state in about 185 MB,
    /// where a hash map's spare slots took 500.
    meters: BTreeMap<MeterId, MeterState>,
    /// The period (start, length in ms) every meter's cached [`PeriodFigures`] are for.
    figures_for: (u64, u64),
    top: TopK,
    snapshot: LocalSnapshot,
    /// Meters unblocked since their last acknowledgement: the next one carries `valve: open`.
    released: HashSet<MeterId>,
    /// What handoffs left of meters here (see [`Tenure`]), and how many of them moved away.
    tenures: HashMap<MeterId, Tenure>,
    moved: usize,
    /// Meters that arrived since last asked (new here, or back after moving away) with their
    /// newest reading: the node asks their other homes to hand them over.
    arrivals: BTreeMap<MeterId, u64>,
    /// Meters whose state changed (or was rebuilt) since the last checkpoint, counted once per
    /// batch that changed them: what a start after a crash would rebuild.
    unsaved: usize,
}

impl LocalMeters {
    /// The state of every meter in the store, each meter's either from the last checkpoint
    /// (if the store says the meter did not change since) or rebuilt from its recent readings.
    pub fn load(store: &Store, settings: Settings) -> Result<Self, StoreError> {
        let spans = store.spans_and_changes();
        let mut local = LocalMeters {
            settings,
            meters: BTreeMap::new(),
            figures_for: (0, 0),
            top: TopK::new(settings.top_k),
            snapshot: LocalSnapshot::default(),
            released: HashSet::new(),
            tenures: HashMap::new(),
            moved: 0,
            arrivals: BTreeMap::new(),
            unsaved: 0,
        };
        local.rebuild_filter(spans.iter().map(|(span, _)| span.meter), spans.len());
        let checkpoint = read_checkpoint(store, settings, &spans);
        let (saved, saved_fold) = match checkpoint {
            Some((header, meters)) => {
                local.snapshot.period_start_ms = header.period_start_ms;
                local.figures_for = header.figures_for;
                local.snapshot.blocked = Arc::new(header.blocked.into_iter().map(|b| (b.meter, b)).collect());
                local.released = header.released.into_iter().collect();
                (meters, header.fold)
            }
            None => (Vec::new(), 0),
        };
        let started = std::time::Instant::now();
        // The meters the saved state still covers: saved (every saved meter is held, and both
        // lists are in meter order), and not changed by a fold since nor waiting for one.
        let mut saved_meters = saved.iter().map(|(meter, ..)| *meter).peekable();
        let covered: Vec<bool> = spans
            .iter()
            .map(|(span, changed)| saved_meters.next_if_eq(&span.meter).is_some() && *changed <= saved_fold)
            .collect();
        let stale: Vec<&MeterSpan> =
            spans.iter().zip(&covered).filter(|(_, covered)| !**covered).map(|((span, _), _)| span).collect();
        let rebuilt = stale.len();
        let mut trackers = replay_all(store, &stale, settings.burst_flow_lph)?.into_iter();
        let mut saved = saved.into_iter().peekable();
        // Built in one go from meters in order: a B-tree of full nodes.
        local.meters = spans
            .iter()
            .zip(covered)
            .map(|((span, _), covered)| {
                let own = saved.next_if(|(meter, ..)| *meter == span.meter);
                let state = match own {
                    Some((_, tracker, period, current)) if covered => MeterState { tracker, period, current },
                    // One tracker was rebuilt for each meter not covered, in order.
                    _ => MeterState {
                        tracker: trackers.next().unwrap_or_default(),
                        period: None,
                        current: (0, false),
                    },
                };
                (span.meter, state)
            })
            .collect();
        for (meter, record) in store.tenures()? {
            let Some(state) = local.meters.get_mut(&meter) else { continue };
            match decode_next::<Tenure>(&mut record.as_slice()) {
                Some(tenure) => {
                    local.moved += usize::from(Tenure::is_moved(Some(&tenure)));
                    // Period figures saved before the tenure changed are figured again.
                    state.period = None;
                    local.tenures.insert(meter, tenure);
                }
                None => {
                    tracing::warn!(%meter, "an unreadable handoff record; the meter counts as this node's own")
                }
            }
        }
        for state in local.meters.values() {
            local.snapshot.period_consumption_l += state.current.0;
            local.snapshot.period_meters += u64::from(state.current.1);
        }
        for (span, _) in &spans {
            local.on_span(*span, None);
            local.refresh_alerts(span.meter);
        }
        local.unsaved = rebuilt;
        tracing::info!(
            meters = spans.len(),
            saved = spans.len() - rebuilt,
            rebuilt,
            ms = started.elapsed().as_millis() as u64,
            "meter state loaded"
        );
        Ok(local)
    }

    /// Saves the state for a quick next start, in a file of the store's folder, written meter
    /// by meter (never held whole in memory): at a clean stop, and now and then while running
    /// so that a start after a crash rebuilds only the meters changed since. Nothing is saved
    /// for fewer than `CHECKPOINT_MIN_METERS` meters (they rebuild in a fraction of a second).
    pub fn save_checkpoint(&mut self, store: &Store) -> std::io::Result<()> {
        self.save_checkpoint_from(store, CHECKPOINT_MIN_METERS)
    }

    /// [`LocalMeters::save_checkpoint`], for a state of at least `min_meters` meters.
    fn save_checkpoint_from(&mut self, store: &Store, min_meters: usize) -> std::io::Result<()> {
        if self.meters.len() < min_meters {
            return Ok(());
        }
        let header = CheckpointHeader {
            fold: store.fold_number(),
            burst_flow_lph: self.settings.burst_flow_lph,
            meters: self.meters.len() as u64,
            blocked: self.snapshot.blocked.values().cloned().collect(),
            released: self.released.iter().copied().collect(),
            period_start_ms: self.snapshot.period_start_ms,
            figures_for: self.figures_for,
        };
        let config = bincode::config::standard();
        crate::store::write_atomically_with(&store.dir().join(CHECKPOINT_FILE), |file| {
            let mut out = Summed { inner: file, crc: 0 };
            out.write_all(CHECKPOINT_MAGIC)?;
            bincode::serde::encode_into_std_write(&header, &mut out, config)
                .map_err(std::io::Error::other)?;
            for (meter, state) in &self.meters {
                let saved = (meter, &state.tracker, state.period, state.current);
                bincode::serde::encode_into_std_write(saved, &mut out, config)
                    .map_err(std::io::Error::other)?;
            }
            let crc = out.crc;
            out.inner.write_all(&crc.to_le_bytes())
        })
        .map_err(std::io::Error::other)?;
        self.unsaved = 0;
        Ok(())
    }

    /// Meters whose state changed or was rebuilt since the last checkpoint (an upper bound:
    /// counted once per batch that changed them).
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Takes over from `old` (this state was just read again from the store, and judged) the
    /// valves still owed a `valve: open`: those `old` owed, and those `old` had closed that are
    /// no longer blocked. A meter's valve is never left shut because its state was read again.
    pub fn owe_valves_of(&mut self, old: &LocalMeters) {
        let was_closed = old.released.iter().chain(old.snapshot.blocked.keys());
        let still_blocked = &self.snapshot.blocked;
        self.released.extend(was_closed.filter(|meter| !still_blocked.contains_key(meter)));
    }

    /// The state as one snapshot.
    pub fn snapshot(&self) -> LocalSnapshot {
        // A meter that moved away keeps its place in the top-K (which only grows); its owner
        // ranks it. The summary's top is then one short for each such meter: still exact for
        // every N up to the entries left.
        let top =
            self.top.ranked().into_iter().filter(|span| !Tenure::is_moved(self.tenures.get(&span.meter)));
        LocalSnapshot { top: top.collect(), ..self.snapshot.clone() }
    }

    /// Takes in what a batch appended: spans, totals, the top-K, the filter and the alert rules.
    pub fn observe(
        &mut self,
        store: &Store,
        readings: &[Reading],
        appended: &Appended,
    ) -> Result<(), StoreError> {
        let mut replays = Vec::new();
        for (reading, outcome) in readings.iter().zip(&appended.outcomes) {
            if *outcome != Outcome::Accepted {
                continue;
            }
            let Some((before, span)) = appended.spans.get(&reading.meter).copied() else { continue };
            if !self.meters.contains_key(&reading.meter) {
                self.add_meter(span.meter);
            }
            let newer = before.is_none_or(|before| reading.ts_ms > before.last.ts_ms);
            let arrived = before.is_none() || Tenure::is_moved(self.tenures.get(&reading.meter));
            if newer && arrived {
                let newest = self.arrivals.entry(reading.meter).or_default();
                *newest = (*newest).max(reading.ts_ms);
            }
            let Some(state) = self.meters.get_mut(&reading.meter) else { continue };
            let last = state.tracker.last_ts_ms();
            if last.is_none_or(|last| reading.ts_ms > last) {
                state.tracker.observe(reading, self.settings.burst_flow_lph);
            } else {
                // A late reading can move the base of any period figure.
                state.period = None;
                if reading.ts_ms.saturating_add(rules::LEAK_WINDOW_MS + rules::STANDSTILL_MS)
                    < last.unwrap_or(0)
                {
                    // Older than anything the rules look at: it can only extend the history.
                    state.tracker.set_first_ts(span.first.ts_ms);
                } else {
                    replays.push(reading.meter);
                }
            }
        }
        replays.sort_unstable();
        replays.dedup();
        for meter in replays {
            if let (Some(state), Some((_, span))) = (self.meters.get_mut(&meter), appended.spans.get(&meter))
            {
                state.tracker = replay(store, span, self.settings.burst_flow_lph)?;
            }
        }
        for (meter, (before, after)) in &appended.spans {
            self.on_span(*after, *before);
            self.refresh_alerts(*meter);
        }
        self.unsaved += appended.spans.len();
        Ok(())
    }

    /// Judges the meters of a batch and returns their valve commands: closed for every blocked
    /// meter, open for a meter unblocked since its last acknowledgement.
    pub fn judge_batch(
        &mut self,
        store: &Store,
        readings: &[Reading],
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Vec<MeterCommand> {
        let meters: BTreeSet<MeterId> = readings.iter().map(|r| r.meter).collect();
        let mut commands = Vec::new();
        for meter in meters {
            if let Err(error) = self.judge(store, meter, inputs, now_ms) {
                tracing::error!(%meter, %error, "cannot judge a meter");
            }
            if self.snapshot.blocked.contains_key(&meter) {
                commands.push(MeterCommand { meter, valve: Valve::Closed });
            } else if self.released.remove(&meter) {
                commands.push(MeterCommand { meter, valve: Valve::Open });
            }
        }
        commands
    }

    /// Judges every meter again (the inputs changed, or time passed) and recomputes the period
    /// figures.
    pub fn reevaluate(&mut self, store: &Store, inputs: &RationingInputs, now_ms: u64) {
        let period_start_ms = inputs.policy.period_start(now_ms);
        if period_start_ms != self.snapshot.period_start_ms {
            for state in self.meters.values_mut() {
                state.current = (0, false);
            }
            self.snapshot.period_consumption_l = 0;
            self.snapshot.period_meters = 0;
            self.snapshot.period_start_ms = period_start_ms;
        }
        let meters: Vec<MeterId> = self.meters.keys().copied().collect();
        for meter in meters {
            if let Err(error) = self.judge(store, meter, inputs, now_ms) {
                tracing::error!(%meter, %error, "cannot judge a meter");
            }
        }
    }

    /// The period the figures are for.
    pub fn period_start_ms(&self) -> u64 {
        self.snapshot.period_start_ms
    }

    /// Judges one meter: updates its period consumption and its block.
    fn judge(
        &mut self,
        store: &Store,
        meter: MeterId,
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let period_ms = inputs.policy.period_ms.max(1);
        let period = (now_ms - now_ms % period_ms, period_ms);
        if period != self.figures_for {
            self.meters.values_mut().for_each(|state| state.period = None);
            self.figures_for = period;
        }
        let (Some(state), Some(span)) = (self.meters.get_mut(&meter), store.span(meter)) else {
            return Ok(());
        };
        let tenure = self.tenures.get(&meter);
        let moved = Tenure::is_moved(tenure);
        let consumption = match tenure {
            // Its owner counts and judges it.
            Some(Tenure::Moved { .. }) => Consumption { current_l: 0, previous_l: 0, reported: false },
            _ => period_consumption(store, &span, state, period, tenure)?,
        };
        let (old_l, old_reported) =
            std::mem::replace(&mut state.current, (consumption.current_l, consumption.reported));
        let snapshot = &mut self.snapshot;
        snapshot.period_consumption_l = snapshot.period_consumption_l - old_l + consumption.current_l;
        snapshot.period_meters =
            snapshot.period_meters + u64::from(consumption.reported) - u64::from(old_reported);
        let verdict = if moved { None } else { inputs.judge(meter, consumption, now_ms) };
        match verdict {
            Some((reason, detail)) => {
                let current = snapshot.blocked.get(&meter);
                if current.is_some_and(|b| b.reason == reason && b.detail == detail) {
                    return Ok(());
                }
                let since_ms = match current {
                    Some(current) if current.reason == reason => current.since_ms,
                    _ => inputs.manual.get(&meter).map_or(now_ms, |(_, since)| *since),
                };
                if current.is_none() {
                    tracing::info!(%meter, reason = reason.as_str(), %detail, "cutting supply");
                }
                Arc::make_mut(&mut snapshot.blocked)
                    .insert(meter, Blocked { meter, reason, since_ms, detail });
                self.released.remove(&meter);
            }
            None => {
                if snapshot.blocked.contains_key(&meter) {
                    Arc::make_mut(&mut snapshot.blocked).remove(&meter);
                    // A meter that moved away gets its valve commands from its new home.
                    if !moved {
                        tracing::info!(%meter, "restoring supply");
                        self.released.insert(meter);
                    }
                }
            }
        }
        Ok(())
    }

    /// A meter new to the store (it is counted by `on_span`, from zero consumption). The
    /// filter is rebuilt twice as large when outgrown, up to the largest a filter may be; past
    /// that, meters go into it as they come (rebuilding it would gain nothing, for every meter).
    fn add_meter(&mut self, meter: MeterId) {
        let count = self.meters.len() + 1;
        let filter = &self.snapshot.filter;
        if count > filter.capacity() && !filter.is_largest() {
            let meters: Vec<MeterId> = self.meters.keys().copied().chain([meter]).collect();
            self.rebuild_filter(meters.into_iter(), count);
        } else {
            Arc::make_mut(&mut self.snapshot.filter).insert(meter);
        }
        let state = MeterState { tracker: Tracker::default(), period: None, current: (0, false) };
        self.meters.insert(meter, state);
    }

    /// A meter's span changed from `before` (none: the meter is new here).
    fn on_span(&mut self, span: MeterSpan, before: Option<MeterSpan>) {
        let before = before.map_or(0, |before| self.counted(&before));
        self.recount(span, before);
    }

    /// Counts a meter's `span` where `before` litres of it were counted: the total, the meters
    /// counted, the top-K.
    fn recount(&mut self, span: MeterSpan, before: u64) {
        let (after, offered) = (self.counted(&span), self.offered(span));
        let snapshot = &mut self.snapshot;
        snapshot.total_consumption_l =
            snapshot.total_consumption_l.saturating_sub(before).saturating_add(after);
        snapshot.meter_count = (self.meters.len() - self.moved) as u64;
        if let Some(span) = offered {
            self.top.offer(span);
        }
    }

    /// The span this node counts of a meter it holds: from its first register at its first
    /// home if it took the meter over, none if the meter moved away (its owner counts it).
    fn offered(&self, span: MeterSpan) -> Option<MeterSpan> {
        match self.tenures.get(&span.meter) {
            None => Some(span),
            Some(Tenure::Moved { .. }) => None,
            Some(Tenure::Inherited(Transfer { first, .. })) => Some(MeterSpan {
                first: if first.ts_ms < span.first.ts_ms { *first } else { span.first },
                ..span
            }),
        }
    }

    /// The consumption this node counts of a meter it holds (see [`LocalMeters::offered`]).
    fn counted(&self, span: &MeterSpan) -> u64 {
        self.offered(*span).map_or(0, |span| span_consumption(&span))
    }

    /// The meters that arrived since the last call, with their newest reading (see
    /// [`LocalMeters::settle`]).
    pub fn take_arrivals(&mut self) -> BTreeMap<MeterId, u64> {
        std::mem::take(&mut self.arrivals)
    }

    /// Node `asker`, which took a reading of `meter` at `newest_ts_ms`, asks for the meter:
    /// this node hands it over (and stops counting and judging it) unless it is not its own or
    /// its own latest reading is as new (a tie keeps the meter where it is).
    pub fn release(
        &mut self,
        store: &Store,
        meter: MeterId,
        (asker, newest_ts_ms): (&str, u64),
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Result<Handoff, StoreError> {
        let Some(span) = store.span(meter) else { return Ok(Handoff::NotOwner) };
        match self.tenures.get(&meter) {
            Some(Tenure::Moved { owner, handed, .. }) if owner == asker => {
                return Ok(Handoff::Transferred(*handed))
            }
            Some(Tenure::Moved { .. }) => return Ok(Handoff::NotOwner),
            _ if span.last.ts_ms >= newest_ts_ms => return Ok(Handoff::Newer),
            _ => {}
        }
        let handed = self.transfer(store, &span, inputs, now_ms)?;
        let tenure = Tenure::Moved { owner: asker.to_owned(), at_ts_ms: newest_ts_ms, handed };
        self.set_tenure(store, meter, Some(tenure), inputs, now_ms)?;
        tracing::info!(%meter, owner = asker, "meter handed over to its newer home");
        Ok(Handoff::Transferred(handed))
    }

    /// Takes the answer of node `from` to this node's [`Handoff`] request about `meter`, asked
    /// with its reading at `asked_ts_ms`: the meter is this node's own (from the first register
    /// and period base handed over), or `from`'s (whose latest reading is as new).
    /// [`Handoff::NotOwner`] stands for "no other node owns it" (every possible home said so):
    /// a meter that had moved away from here is this node's own again.
    pub fn settle(
        &mut self,
        store: &Store,
        meter: MeterId,
        (from, answer, asked_ts_ms): (&str, Handoff, u64),
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(span) = store.span(meter) else { return Ok(()) };
        let tenure = match (answer, self.tenures.get(&meter)) {
            // Handed over since it asked, to a node with a newer reading: that one owns it.
            (_, Some(Tenure::Moved { at_ts_ms, .. })) if *at_ts_ms > asked_ts_ms => return Ok(()),
            (Handoff::NotOwner, Some(Tenure::Moved { handed, .. })) => Tenure::Inherited(*handed),
            (Handoff::NotOwner, _) | (Handoff::Newer, Some(Tenure::Moved { .. })) => return Ok(()),
            (Handoff::Newer, _) => {
                let handed = self.transfer(store, &span, inputs, now_ms)?;
                Tenure::Moved { owner: from.to_owned(), at_ts_ms: asked_ts_ms, handed }
            }
            (Handoff::Transferred(mut handed), current) => {
                // Back and forth: the first register stays the earliest handed over.
                let held = match current {
                    Some(Tenure::Inherited(held) | Tenure::Moved { handed: held, .. }) => Some(held.first),
                    None => None,
                };
                if let Some(first) = held.filter(|first| first.ts_ms < handed.first.ts_ms) {
                    handed.first = first;
                }
                tracing::info!(%meter, from, "meter taken over from its former home");
                Tenure::Inherited(handed)
            }
        };
        self.set_tenure(store, meter, Some(tenure), inputs, now_ms)
    }

    /// What this node would hand over with a meter it counts: its first register (at its first
    /// home) and its base for the current period.
    fn transfer(
        &self,
        store: &Store,
        span: &MeterSpan,
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Result<Transfer, StoreError> {
        let period_start_ms = inputs.policy.period_start(now_ms);
        let base = period_base(store, span.meter, period_start_ms, self.tenures.get(&span.meter))?;
        let first = self.offered(*span).map_or(span.first, |span| span.first);
        Ok(Transfer { first, period_start_ms, base })
    }

    /// Records a meter's tenure (saved first) and counts and judges the meter again by it.
    fn set_tenure(
        &mut self,
        store: &Store,
        meter: MeterId,
        tenure: Option<Tenure>,
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(span) = store.span(meter) else { return Ok(()) };
        let record = tenure
            .as_ref()
            .map(|tenure| bincode::serde::encode_to_vec(tenure, bincode::config::standard()))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a handoff record: {e}")))?;
        store.save_tenure(meter, record.as_deref())?;
        let before = self.counted(&span);
        let (was_moved, moved) =
            (Tenure::is_moved(self.tenures.get(&meter)), Tenure::is_moved(tenure.as_ref()));
        match tenure {
            Some(tenure) => self.tenures.insert(meter, tenure),
            None => self.tenures.remove(&meter),
        };
        self.moved = self.moved + usize::from(moved) - usize::from(was_moved);
        if moved {
            // Its valve commands come from its owner now.
            self.released.remove(&meter);
        }
        self.recount(span, before);
        if let Some(state) = self.meters.get_mut(&meter) {
            state.period = None;
        }
        self.refresh_alerts(meter);
        // The tenure is saved whatever the judgement: a failure to read is the next one's.
        if let Err(error) = self.judge(store, meter, inputs, now_ms) {
            tracing::error!(%meter, %error, "cannot judge a meter");
        }
        self.unsaved += 1;
        Ok(())
    }

    fn refresh_alerts(&mut self, meter: MeterId) {
        let Some(state) = self.meters.get(&meter) else { return };
        let alerts: Vec<Alert> = match self.tenures.get(&meter) {
            Some(Tenure::Moved { .. }) => Vec::new(),
            _ => state.tracker.alerts(meter).collect(),
        };
        let current = self.snapshot.alerts.get(&meter);
        if current.map_or(alerts.is_empty(), |current| *current == alerts) {
            return;
        }
        let map = Arc::make_mut(&mut self.snapshot.alerts);
        if alerts.is_empty() {
            map.remove(&meter);
        } else {
            map.insert(meter, alerts);
        }
    }

    fn rebuild_filter(&mut self, meters: impl Iterator<Item = MeterId>, count: usize) {
        let mut filter = MeterFilter::with_capacity(count.saturating_mul(2).max(MIN_FILTER_METERS));
        meters.for_each(|meter| filter.insert(meter));
        self.snapshot.filter = Arc::new(filter);
    }
}

/// The meter's consumption in `period` (start, length in ms) and in the one before, from its
/// cached figures when it has them (they are for that period).
fn period_consumption(
    store: &Store,
    span: &MeterSpan,
    state: &mut MeterState,
    (period_start_ms, period_ms): (u64, u64),
    tenure: Option<&Tenure>,
) -> Result<Consumption, StoreError> {
    let meter = span.meter;
    let figures = match state.period {
        Some(figures) => figures,
        None => {
            let previous_start = period_start_ms.saturating_sub(period_ms);
            let figures = PeriodFigures {
                current_base: period_base(store, meter, period_start_ms, tenure)?,
                previous_l: store.window_consumption(meter, previous_start, period_start_ms)?,
            };
            state.period = Some(figures);
            figures
        }
    };
    let last = span.last;
    let reported = last.ts_ms >= period_start_ms;
    let current_l = match figures.current_base {
        Some(base) if reported => last.litres.saturating_sub(base.litres),
        _ => 0,
    };
    Ok(Consumption { current_l, previous_l: figures.previous_l, reported })
}

/// A meter's register at the start of the period (its last at or before, else its first after),
/// from this node's readings and, for a meter taken over in that period, its former home's.
fn period_base(
    store: &Store,
    meter: MeterId,
    period_start_ms: u64,
    tenure: Option<&Tenure>,
) -> Result<Option<Point>, StoreError> {
    let base = store.window_base(meter, period_start_ms)?;
    Ok(match tenure {
        Some(Tenure::Inherited(handed)) if handed.period_start_ms == period_start_ms => {
            join_base(base, handed.base, period_start_ms)
        }
        _ => base,
    })
}

/// The checkpoint in the store's folder, if it is whole, judged with the same burst limit, saved
/// at a fold the store has seen, and of meters the store holds (`spans`, in meter order).
fn read_checkpoint(
    store: &Store,
    settings: Settings,
    spans: &[(MeterSpan, u64)],
) -> Option<(CheckpointHeader, Vec<SavedMeter>)> {
    let path = store.dir().join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&path).ok()?;
    let unusable =
        |why: &str| tracing::warn!(path = %path.display(), "the saved meter state {why}; rebuilding it");
    let (body, crc) = bytes.split_at_checked(bytes.len().saturating_sub(4))?;
    if crate::store::crc32(body).to_le_bytes() != crc {
        unusable("fails its checksum");
        return None;
    }
    // Another version's layout is never read as this one's.
    let mut body = body.strip_prefix(CHECKPOINT_MAGIC)?;
    let header: CheckpointHeader = decode_next(&mut body)?;
    if header.burst_flow_lph != settings.burst_flow_lph || header.fold > store.fold_number() {
        return None;
    }
    let mut meters: Vec<SavedMeter> = Vec::with_capacity(spans.len().min(header.meters as usize));
    for _ in 0..header.meters {
        meters.push(decode_next(&mut body)?);
    }
    if !body.is_empty() {
        unusable("has bytes past its meters");
        return None;
    }
    // Every saved meter is one of the store's (both in meter order).
    let mut held = spans.iter().map(|(span, _)| span.meter).peekable();
    let all_held = meters.iter().all(|(meter, ..)| {
        while held.next_if(|held| held < meter).is_some() {}
        held.next_if_eq(meter).is_some()
    });
    if !all_held {
        unusable("names meters the store does not hold");
        return None;
    }
    Some((header, meters))
}

/// The value at the start of `bytes`, which are then moved past it.
fn decode_next<T: serde::de::DeserializeOwned>(bytes: &mut &[u8]) -> Option<T> {
    let config = bincode::config::standard().with_limit::<CHECKPOINT_LIMIT>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config).ok()?;
    *bytes = bytes.get(used..)?;
    Some(value)
}

/// A writer that keeps the CRC-32 of what went through it.
struct Summed<'a> {
    inner: &'a mut dyn Write,
    crc: u32,
}

impl Write for Summed<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc = crate::store::crc32_continue(self.crc, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// [`replay`] for each of `spans`, in order, on up to [`MAX_REPLAY_THREADS`] threads.
fn replay_all(store: &Store, spans: &[&MeterSpan], burst_flow_lph: u32) -> Result<Vec<Tracker>, StoreError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_REPLAY_THREADS);
    let per_thread = spans.len().div_ceil(threads).max(MIN_REPLAY_PER_THREAD);
    std::thread::scope(|scope| {
        let parts: Vec<_> = spans
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().map(|span| replay(store, span, burst_flow_lph)).collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut trackers = Vec::with_capacity(spans.len());
        for part in parts {
            let part =
                part.join().map_err(|_| StoreError::Task("a thread rebuilding meter state failed".into()))?;
            trackers.extend(part?);
        }
        Ok(trackers)
    })
}

/// Rebuilds a meter's rule state from its readings of the last leak window (and the one before
/// it, where a standstill may have started).
fn replay(store: &Store, span: &MeterSpan, burst_flow_lph: u32) -> Result<Tracker, StoreError> {
    let from = span.last.ts_ms.saturating_sub(rules::LEAK_WINDOW_MS + rules::STANDSTILL_MS);
    let recent = store.recent_readings(span.meter, from, MAX_REPLAY_READINGS)?;
    let mut tracker = Tracker::replay(&recent, burst_flow_lph);
    tracker.set_first_ts(span.first.ts_ms);
    Ok(tracker)
}

/// The `k` meters of highest consumption, kept exact by offers alone because a meter's
/// consumption never decreases: a meter outside the set only ever enters by growing.
struct TopK {
    k: usize,
    /// Consumption descending, then meter ascending.
    ranked: BTreeSet<(Reverse<u64>, MeterId)>,
    members: HashMap<MeterId, MeterSpan>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK { k, ranked: BTreeSet::new(), members: HashMap::new() }
    }

    /// A meter's new span (its consumption is at least what it was).
    fn offer(&mut self, span: MeterSpan) {
        let key = (Reverse(span_consumption(&span)), span.meter);
        if let Some(member) = self.members.get_mut(&span.meter) {
            self.ranked.remove(&(Reverse(span_consumption(member)), span.meter));
            self.ranked.insert(key);
            *member = span;
            return;
        }
        if self.ranked.len() == self.k {
            match self.ranked.last() {
                Some(worst) if key < *worst => {
                    let worst = *worst;
                    self.ranked.remove(&worst);
                    self.members.remove(&worst.1);
                }
                _ => return,
            }
        }
        if self.k > 0 {
            self.ranked.insert(key);
            self.members.insert(span.meter, span);
        }
    }

    fn ranked(&self) -> Vec<MeterSpan> {
        self.ranked.iter().filter_map(|(_, meter)| self.members.get(meter).copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use hydromesh_proto::Alarms;

    use super::*;
    use crate::domain;

    const T0: u64 = 1_795_000_000_000;
    const NOW: u64 = T0 + 86_400_000;

    fn reading(meter: MeterId, ts_ms: u64, litres: u64) -> Reading {
        Reading { meter, ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    fn span(meter: MeterId, consumption: u64) -> MeterSpan {
        let first = Point { ts_ms: T0, litres: 0 };
        MeterSpan { meter, first, last: Point { ts_ms: T0 + 1, litres: consumption } }
    }

    #[test]
    fn top_k_by_offers_equals_a_full_ranking() {
        // Growing consumptions offered in a scrambled order, ties included.
        let mut top = TopK::new(5);
        let mut latest: HashMap<MeterId, MeterSpan> = HashMap::new();
        let mut x: u64 = 7;
        for step in 0..2_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let meter = MeterId::from(((x >> 33) % 40) as u32);
            let grown = latest.get(&meter).map_or(0, span_consumption) + (x >> 60) * (step % 3);
            let next = span(meter, grown);
            latest.insert(meter, next);
            top.offer(next);
            let expected = domain::rank(latest.values().copied().collect(), 5);
            assert_eq!(top.ranked(), expected, "after offer {step}");
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        (dir, store)
    }

    fn ingest(store: &Store, local: &mut LocalMeters, readings: &[Reading]) {
        let appended = store.append(readings, NOW).expect("append");
        local.observe(store, readings, &appended).expect("observe");
    }

    #[test]
    fn the_snapshot_follows_readings_and_survives_a_reload() {
        let (_dir, store) = store();
        let settings = Settings { burst_flow_lph: 1_000_000, top_k: 2 };
        let mut local = LocalMeters::load(&store, settings).expect("load");
        ingest(
            &store,
            &mut local,
            &[reading(1.into(), T0, 10), reading(1.into(), T0 + 10, 50), reading(2.into(), T0, 0)],
        );
        ingest(
            &store,
            &mut local,
            &[reading(2.into(), T0 + 10, 30), reading(3.into(), T0, 5), reading(3.into(), T0 + 5, 105)],
        );
        // A back-fill widens meter 2's span.
        ingest(&store, &mut local, &[reading(2.into(), T0 - 10, 0)]);
        let snapshot = local.snapshot();
        assert_eq!((snapshot.meter_count, snapshot.total_consumption_l), (3, 40 + 30 + 100));
        assert_eq!(
            snapshot.top.iter().map(|s| s.meter).collect::<Vec<_>>(),
            vec![MeterId::from(3), 1.into()]
        );
        assert!((1..=3).all(|meter| snapshot.filter.may_contain(meter.into())));
        let reloaded = LocalMeters::load(&store, settings).expect("reload").snapshot();
        assert_eq!((reloaded.meter_count, reloaded.total_consumption_l), (3, 170));
        assert_eq!(reloaded.top, snapshot.top);
    }

    /// Past the largest filter a summary may carry, a new meter goes into the filter as it is:
    /// rebuilding it (from every meter, for every new meter) would gain nothing.
    #[test]
    fn a_node_past_the_largest_filter_adds_meters_without_rebuilding_it() {
        let (_dir, store) = store();
        let mut local =
            LocalMeters::load(&store, Settings { burst_flow_lph: 1_000_000, top_k: 2 }).expect("load");
        // As if the node held as many meters as the largest filter does.
        local.snapshot.filter = Arc::new(MeterFilter::with_capacity(100_000_000));
        assert!(local.snapshot.filter.is_largest());
        let next = local.snapshot.filter.capacity() as u64;
        for meter in 1_000_000_000..1_000_000_000 + next {
            local.meters.insert(
                MeterId::number(meter).expect("id"),
                MeterState { tracker: Tracker::default(), period: None, current: (0, false) },
            );
        }
        let filter = Arc::as_ptr(&local.snapshot.filter);
        let next_meter = MeterId::number(next).expect("id");
        ingest(&store, &mut local, &[reading(next_meter, T0, 1)]);
        assert_eq!(Arc::as_ptr(&local.snapshot.filter), filter, "the filter was rebuilt");
        assert_eq!(local.snapshot.meter_count, next + 1);
        assert!(local.snapshot.filter.may_contain(next_meter));
    }

    /// A clean stop saves the state; the next start reads it instead of replaying readings and
    /// gets the same snapshot as a replay. Once the store moved on (a fold, or readings only in
    /// the write-ahead log after a crash), only the meters it changed are rebuilt.
    #[test]
    fn a_saved_state_starts_like_a_replay_and_rebuilds_only_the_meters_changed_since() {
        use hydromesh_proto::control::Policy;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = Settings { burst_flow_lph: 1_000_000, top_k: 2 };
        let hour = 3_600_000;
        let policy = Policy { cap_l: Some(800), ..Policy::default() };
        let inputs = RationingInputs { policy, ..RationingInputs::default() };
        let now = policy.period_start(NOW) + 10 * 86_400_000;
        let saved = {
            let store = Store::open(dir.path()).expect("open");
            let mut local = LocalMeters::load(&store, settings).expect("load");
            let batch = [
                reading(1.into(), now - 3 * hour, 1_000),
                reading(1.into(), now - 2 * hour, 2_000),
                Reading { alarms: Alarms::TAMPER, ..reading(2.into(), now - 2 * hour, 10) },
                reading(3.into(), now - hour, 5),
                reading(3.into(), now - hour / 2, 45),
            ];
            let appended = store.append(&batch, now).expect("append");
            local.observe(&store, &batch, &appended).expect("observe");
            local.reevaluate(&store, &inputs, now);
            store.close().expect("close");
            local.save_checkpoint(&store).expect("save");
            assert!(
                !dir.path().join(CHECKPOINT_FILE).exists(),
                "three meters rebuild at once: nothing saved"
            );
            local.save_checkpoint_from(&store, 1).expect("save");
            let snapshot = local.snapshot();
            assert!(
                snapshot.blocked.contains_key(&MeterId::from(1))
                    && snapshot.alerts.contains_key(&MeterId::from(2)),
                "{snapshot:?}"
            );
            snapshot
        };
        let path = dir.path().join(CHECKPOINT_FILE);
        let store = Store::open(dir.path()).expect("reopen");
        let restored = LocalMeters::load(&store, settings).expect("load the saved state");
        assert_eq!(
            (restored.snapshot(), restored.unsaved()),
            (saved.clone(), 0),
            "the saved state, as it was"
        );
        let bytes = std::fs::read(&path).expect("the saved state stays");
        std::fs::remove_file(&path).expect("remove");
        let mut replayed = LocalMeters::load(&store, settings).expect("replay");
        replayed.reevaluate(&store, &inputs, now);
        assert_eq!((replayed.snapshot(), replayed.unsaved()), (saved.clone(), 3), "what a replay rebuilds");
        std::fs::write(&path, &bytes).expect("put back");
        // The store moves on: meter 3 by a fold, meter 2 by a reading only logged (a crash).
        store.append(&[reading(3.into(), now - hour / 4, 50)], now).expect("append");
        store.close().expect("fold");
        store
            .append(&[Reading { alarms: Alarms::TAMPER, ..reading(2.into(), now - hour, 17) }], now)
            .expect("append");
        store.flush().expect("flush");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen after a crash");
        let mut after = LocalMeters::load(&store, settings).expect("load after a fold");
        assert_eq!(after.unsaved(), 2, "meters 2 and 3 rebuilt, meter 1 read back");
        after.reevaluate(&store, &inputs, now);
        let snapshot = after.snapshot();
        assert_eq!(snapshot.total_consumption_l, saved.total_consumption_l + 5 + 7);
        assert!(
            snapshot.blocked.contains_key(&MeterId::from(1))
                && snapshot.alerts.contains_key(&MeterId::from(2)),
            "{snapshot:?}"
        );
        std::fs::remove_file(&path).expect("remove");
        let mut replayed = LocalMeters::load(&store, settings).expect("replay");
        replayed.reevaluate(&store, &inputs, now);
        assert_eq!(replayed.snapshot(), snapshot, "the same as a replay of every meter");
        // A saved state the store cannot have made is not used.
        std::fs::write(&path, &bytes).expect("put back");
        let mut damaged = bytes.clone();
        damaged[CHECKPOINT_MAGIC.len() + 2] ^= 0x40;
        std::fs::write(&path, &damaged).expect("damage");
        assert_eq!(LocalMeters::load(&store, settings).expect("load").unsaved(), 3, "checksum refused");
    }

    #[test]
    fn a_state_read_again_still_owes_the_valves_it_had_closed() {
        use hydromesh_proto::control::Policy;
        let (_dir, store) = store();
        let settings = Settings { burst_flow_lph: 1_000_000, top_k: 10 };
        let mut local = LocalMeters::load(&store, settings).expect("load");
        let hour = 3_600_000;
        let policy = Policy { cap_l: Some(800), ..Policy::default() };
        let capped = RationingInputs { policy, ..RationingInputs::default() };
        let now = policy.period_start(NOW) + 10 * 86_400_000;
        let batch = [reading(1.into(), now - 2 * hour, 1_000), reading(1.into(), now - hour, 2_000)];
        let appended = store.append(&batch, now).expect("append");
        local.observe(&store, &batch, &appended).expect("observe");
        assert_eq!(
            local.judge_batch(&store, &batch, &capped, now),
            vec![MeterCommand { meter: 1.into(), valve: Valve::Closed }]
        );
        // The state is read again from the store (after a failed sync) while the cap is lifted.
        let lifted = RationingInputs::default();
        let mut again = LocalMeters::load(&store, settings).expect("reload");
        again.reevaluate(&store, &lifted, now);
        again.owe_valves_of(&local);
        let resent = [reading(1.into(), now - hour, 2_000)];
        assert_eq!(
            again.judge_batch(&store, &resent, &lifted, now),
            vec![MeterCommand { meter: 1.into(), valve: Valve::Open }]
        );
    }

    #[test]
    fn a_back_fill_is_judged_against_the_period_it_changes() {
        use hydromesh_proto::control::{BlockReason, Policy};
        let (_dir, store) = store();
        let mut local =
            LocalMeters::load(&store, Settings { burst_flow_lph: 1_000_000, top_k: 10 }).expect("load");
        let hour = 3_600_000;
        let policy = Policy { cap_l: Some(800), ..Policy::default() };
        let inputs = RationingInputs { policy, ..RationingInputs::default() };
        let now = policy.period_start(NOW) + 10 * 86_400_000;
        let batch = [reading(1.into(), now - 2 * hour, 1_000), reading(1.into(), now - hour, 1_500)];
        store
            .append(&batch, now)
            .map(|a| local.observe(&store, &batch, &a))
            .expect("append")
            .expect("observe");
        assert_eq!(local.judge_batch(&store, &batch, &inputs, now), vec![]);
        // A reading from three days ago, in the same period: the period now counts from it.
        let late = [reading(1.into(), now - 72 * hour, 100)];
        store.append(&late, now).map(|a| local.observe(&store, &late, &a)).expect("append").expect("observe");
        let commands = local.judge_batch(&store, &late, &inputs, now);
        assert_eq!(commands, vec![MeterCommand { meter: 1.into(), valve: Valve::Closed }]);
        let snapshot = local.snapshot();
        assert_eq!(snapshot.blocked.get(&MeterId::from(1)).map(|b| b.reason), Some(BlockReason::Cap));
        assert_eq!(snapshot.period_consumption_l, 1_400);
    }

    /// Two nodes' writers hand a meter over and back: the owner alone counts it, from its first
    /// register, judges its whole period (the cap is crossed across the two homes), and the
    /// tenures survive a reload.
    #[test]
    fn a_handed_over_meter_is_counted_and_judged_once_by_its_owner() {
        use hydromesh_proto::control::{BlockReason, Policy};
        let ((_a_dir, a_store), (_b_dir, b_store)) = (store(), store());
        let settings = Settings { burst_flow_lph: 1_000_000, top_k: 10 };
        let (mut a, mut b) = (
            LocalMeters::load(&a_store, settings).expect("a"),
            LocalMeters::load(&b_store, settings).expect("b"),
        );
        let hour = 3_600_000;
        let policy = Policy { cap_l: Some(800), ..Policy::default() };
        let inputs = RationingInputs { policy, ..RationingInputs::default() };
        let now = policy.period_start(NOW) + 10 * 86_400_000;
        let meter = MeterId::from(1);
        // Before the period, then 500 L in it at a; 400 L more at b: 900 L, over the cap.
        let at_a = [
            reading(meter, now - 20 * 86_400_000, 1_000),
            reading(meter, now - 5 * hour, 1_300),
            reading(meter, now - 4 * hour, 1_500),
        ];
        ingest(&a_store, &mut a, &at_a);
        let other = [reading(2.into(), now - hour, 50)];
        ingest(&a_store, &mut a, &other);
        assert_eq!(a.judge_batch(&a_store, &other, &inputs, now), vec![]);
        assert_eq!(a.judge_batch(&a_store, &at_a, &inputs, now), vec![]);
        let at_b = [reading(meter, now - 2 * hour, 1_600), reading(meter, now - hour, 1_900)];
        ingest(&b_store, &mut b, &at_b);
        assert_eq!(b.take_arrivals(), BTreeMap::from([(meter, now - hour)]), "b asks for the meter");
        assert_eq!(a.take_arrivals().len(), 2, "new meters at a too");

        // a is asked with an older reading than its own, or as new: it keeps the meter.
        for older in [now - 6 * hour, now - 4 * hour] {
            assert_eq!(
                a.release(&a_store, meter, ("b", older), &inputs, now).expect("release"),
                Handoff::Newer
            );
        }
        let answer = a.release(&a_store, meter, ("b", now - hour), &inputs, now).expect("release");
        let Handoff::Transferred(handed) = answer else { panic!("not handed over: {answer:?}") };
        assert_eq!((handed.first.litres, handed.base.map(|p| p.litres)), (1_000, Some(1_000)));
        let a_snapshot = a.snapshot();
        assert_eq!((a_snapshot.meter_count, a_snapshot.total_consumption_l), (1, 0), "a counts meter 2 only");
        assert_eq!((a_snapshot.period_meters, a_snapshot.period_consumption_l), (1, 0));
        assert!(a_snapshot.top.iter().all(|span| span.meter != meter));
        // b asks again (its answer was lost): the same answer; another node: not a's to give.
        assert_eq!(a.release(&a_store, meter, ("b", now), &inputs, now).expect("again"), answer);
        assert_eq!(a.release(&a_store, meter, ("c", now), &inputs, now).expect("c"), Handoff::NotOwner);
        // An answer to a question a asked before it handed the meter over changes nothing.
        a.settle(&a_store, meter, ("c", answer, now - 4 * hour), &inputs, now).expect("stale");
        assert_eq!(a.snapshot().meter_count, 1);

        b.settle(&b_store, meter, ("a", answer, now - hour), &inputs, now).expect("settle");
        let commands = b.judge_batch(&b_store, &at_b, &inputs, now);
        assert_eq!(commands, vec![MeterCommand { meter, valve: Valve::Closed }], "900 L in the period at b");
        let b_snapshot = b.snapshot();
        assert_eq!(b_snapshot.blocked.get(&meter).map(|blocked| blocked.reason), Some(BlockReason::Cap));
        assert_eq!((b_snapshot.meter_count, b_snapshot.total_consumption_l), (1, 900));
        assert_eq!((b_snapshot.period_meters, b_snapshot.period_consumption_l), (1, 900));
        assert_eq!(b_snapshot.top[0].first, handed.first, "ranked from its first register");

        // Both reloaded: the tenures were saved.
        let (mut a, b) = (
            LocalMeters::load(&a_store, settings).expect("a"),
            LocalMeters::load(&b_store, settings).expect("b"),
        );
        assert_eq!((a.snapshot().meter_count, a.snapshot().total_consumption_l), (1, 0));
        assert_eq!((b.snapshot().meter_count, b.snapshot().total_consumption_l), (1, 900));
        // No other node owns it any more (b left the mesh): back at a, the meter is a's own again,
        // counted from its first register.
        a.settle(&a_store, meter, ("", Handoff::NotOwner, now), &inputs, now).expect("settle");
        assert_eq!((a.snapshot().meter_count, a.snapshot().total_consumption_l), (2, 500));
    }

    /// The cached figures are for one period: a new period, or a new period length, counts
    /// from its own base.
    #[test]
    fn period_figures_follow_the_period_and_its_length() {
        use hydromesh_proto::control::Policy;
        let (_dir, store) = store();
        let mut local =
            LocalMeters::load(&store, Settings { burst_flow_lph: 1_000_000, top_k: 10 }).expect("load");
        let hour = 3_600_000;
        let policy = Policy::default();
        let inputs = RationingInputs { policy, ..RationingInputs::default() };
        let start = policy.period_start(NOW) + policy.period_ms;
        let mut judged = |batch: &[Reading], inputs: &RationingInputs, now: u64| {
            store
                .append(batch, now)
                .map(|a| local.observe(&store, batch, &a))
                .expect("append")
                .expect("observe");
            local.judge_batch(&store, batch, inputs, now);
            local.snapshot().period_consumption_l
        };
        let first = [reading(1.into(), start - hour, 100), reading(1.into(), start + hour, 300)];
        assert_eq!(judged(&first, &inputs, start + 2 * hour), 200);
        let next = start + policy.period_ms;
        assert_eq!(judged(&[reading(1.into(), next + hour, 700)], &inputs, next + 2 * hour), 400, "from 300");
        // A day into that period, periods of a day: today's counts from the day's base.
        let daily = RationingInputs { policy: Policy { period_ms: 24 * hour, ..policy }, ..inputs };
        let day = next + 24 * hour;
        assert_eq!(judged(&[reading(1.into(), day + hour, 760)], &daily, day + 2 * hour), 60, "from 700");
    }

    #[test]
    fn alerts_follow_the_meter_and_clear() {
        let (_dir, store) = store();
        let mut local =
            LocalMeters::load(&store, Settings { burst_flow_lph: 1_000_000, top_k: 10 }).expect("load");
        let tamper = Reading { alarms: Alarms::TAMPER, ..reading(4.into(), T0, 1) };
        ingest(&store, &mut local, &[tamper]);
        assert_eq!(local.snapshot().alerts.get(&MeterId::from(4)).map(Vec::len), Some(1));
        ingest(&store, &mut local, &[reading(4.into(), T0 + 1000, 2)]);
        assert!(local.snapshot().alerts.is_empty());
    }
}
