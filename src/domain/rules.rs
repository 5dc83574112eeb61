//! The utility's rules over one meter's readings: leak and burst detection, the meter's own
//! alarm flags, tariffs and bills, and rationing (cap, above average, debt).
//!
//! Leak (Kamstrup's rule): within the last 24 h of device time the meter never stood still for
//! a full hour. Burst: flow above the burst limit for 30 minutes or more. Both are judged at the
//! time of the meter's latest reading, so late or re-sent readings judge the same way.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use hydromesh_proto::control::{BlockReason, Policy};
use hydromesh_proto::summary::{Alert, AlertKind};
use hydromesh_proto::{Alarms, MeterId, Reading};

use super::cubic_metres;

/// A day, the leak rule's window.
pub const LEAK_WINDOW_MS: u64 = 24 * 3_600_000;
/// A standstill this long (or longer) within the window clears a leak.
pub const STANDSTILL_MS: u64 = 3_600_000;
/// Flow above the limit this long (or longer) is a burst.
pub const BURST_MIN_MS: u64 = 30 * 60_000;

/// What the rules keep of a meter's latest reading (a million meters' trackers are held at
/// once: no meter id, no flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Latest {
    ts_ms: u64,
    litres: u64,
    alarms: Alarms,
}

/// The incremental state of one meter's rules, fed its readings in time order. A million of
/// them are held at once: times that may be unknown are `Option<NonZeroU64>` (8 bytes; a
/// reading's time is never 0), and the alerts, which few meters have, are boxed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tracker {
    first_ts_ms: Option<NonZeroU64>,
    last: Option<Latest>,
    /// First reading of the current run of equal registers (water standing still since then).
    run_start_ts_ms: u64,
    /// The latest standstill of at least an hour: (start, end).
    last_standstill: Option<(NonZeroU64, u64)>,
    /// Since when the flow has been above the burst limit.
    high_flow_since_ms: Option<NonZeroU64>,
    /// Active alerts and when they were raised; `None` for none.
    // Boxed for its size (8 bytes instead of a map's 24), not to move it to the heap.
    #[allow(clippy::box_collection)]
    active: Option<Box<BTreeMap<AlertKind, u64>>>,
}

impl Tracker {
    /// A tracker fed `readings` (in time order).
    pub fn replay<'a>(readings: impl IntoIterator<Item = &'a Reading>, burst_flow_lph: u32) -> Self {
        let mut tracker = Tracker::default();
        for reading in readings {
            tracker.observe(reading, burst_flow_lph);
        }
        tracker
    }

    /// Sets the time of the meter's first reading ever, when only recent readings were
    /// replayed: the leak rule needs to know the data covers a whole day.
    pub fn set_first_ts(&mut self, first_ts_ms: u64) {
        self.first_ts_ms = NonZeroU64::new(first_ts_ms);
        if let Some(last) = self.last {
            self.judge(last.ts_ms, last.alarms);
        }
    }

    /// Device time of the latest reading observed.
    pub fn last_ts_ms(&self) -> Option<u64> {
        self.last.map(|r| r.ts_ms)
    }

    /// Feeds the next reading (later than every reading before) and updates the alerts.
    pub fn observe(&mut self, reading: &Reading, burst_flow_lph: u32) {
        let ts = reading.ts_ms;
        match self.last {
            Some(last) if ts <= last.ts_ms => return,
            Some(last) => {
                if reading.litres == last.litres {
                    if ts - self.run_start_ts_ms >= STANDSTILL_MS {
                        self.last_standstill = NonZeroU64::new(self.run_start_ts_ms).map(|start| (start, ts));
                    }
                } else {
                    self.run_start_ts_ms = ts;
                }
                let flow = reading.flow_lph.map_or_else(
                    || (reading.litres - last.litres).saturating_mul(3_600_000) / (ts - last.ts_ms),
                    u64::from,
                );
                self.high_flow_since_ms = if flow > u64::from(burst_flow_lph) {
                    // A reported flow is instantaneous; a derived one held since the last reading.
                    let start = if reading.flow_lph.is_some() { ts } else { last.ts_ms };
                    self.high_flow_since_ms.or(NonZeroU64::new(start))
                } else {
                    None
                };
            }
            None => {
                self.first_ts_ms = NonZeroU64::new(ts);
                self.run_start_ts_ms = ts;
                self.high_flow_since_ms =
                    reading.flow_lph.filter(|f| *f > burst_flow_lph).and_then(|_| NonZeroU64::new(ts));
            }
        }
        self.last = Some(Latest { ts_ms: ts, litres: reading.litres, alarms: reading.alarms });
        self.judge(ts, reading.alarms);
    }

    /// Judges the alerts as of the latest reading, at `ts` with the meter's own `alarms`.
    fn judge(&mut self, ts: u64, alarms: Alarms) {
        let window_start = ts.saturating_sub(LEAK_WINDOW_MS);
        let covers_window = self.first_ts_ms.is_some_and(|first| first.get() <= window_start);
        let stood_still =
            |(start, end): (u64, u64)| end.saturating_sub(start.max(window_start)) >= STANDSTILL_MS;
        let still_now = (self.run_start_ts_ms, ts);
        let standstill_in_window = stood_still(still_now)
            || self.last_standstill.is_some_and(|(start, end)| stood_still((start.get(), end)));
        let leak = covers_window && !standstill_in_window || alarms.contains(Alarms::LEAK);
        let burst = self.high_flow_since_ms.is_some_and(|since| ts - since.get() >= BURST_MIN_MS)
            || alarms.contains(Alarms::BURST);
        self.set(AlertKind::Leak, leak, ts);
        self.set(AlertKind::Burst, burst, ts);
        self.set(AlertKind::Tamper, alarms.contains(Alarms::TAMPER), ts);
        self.set(AlertKind::Backflow, alarms.contains(Alarms::BACKFLOW), ts);
        self.set(AlertKind::Dry, alarms.contains(Alarms::DRY), ts);
        self.set(AlertKind::Other, alarms.contains(Alarms::OTHER), ts);
    }

    fn set(&mut self, kind: AlertKind, active: bool, ts: u64) {
        if active {
            self.active.get_or_insert_with(Box::default).entry(kind).or_insert(ts);
        } else if let Some(alerts) = &mut self.active {
            alerts.remove(&kind);
            if alerts.is_empty() {
                self.active = None;
            }
        }
    }

    /// The meter's active alerts.
    pub fn alerts(&self, meter: MeterId) -> impl Iterator<Item = Alert> + '_ {
        let alerts = self.active.iter().flat_map(|alerts| alerts.iter());
        alerts.map(move |(kind, since)| Alert { meter, kind: *kind, since_ms: *since })
    }
}

/// An increasing-block tariff: each block's price applies to the litres within it.
///
/// In configuration files: `[tariff]` with `currency = "BRL"` and
/// `blocks = "10000:4.50,20000:7.00,50000:11.00,*:14.00"` (see [`Tariff::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TariffText", into = "TariffText")]
pub struct Tariff {
    /// ISO 4217 currency code.
    pub currency: String,
    /// `(up to litres, price in cents per m³)`, ascending; the last block has no upper bound.
    pub blocks: Vec<(Option<u64>, u64)>,
}

impl Default for Tariff {
    /// A residential table in BRL: 0–10 m³ at 4.50/m³, 10–20 m³ at 7.00, 20–50 m³ at 11.00,
    /// above 50 m³ at 14.00.
    fn default() -> Self {
        Tariff {
            currency: "BRL".into(),
            blocks: vec![(Some(10_000), 450), (Some(20_000), 700), (Some(50_000), 1100), (None, 1400)],
        }
    }
}

/// Why a tariff text is not a tariff.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TariffError(String);

impl Tariff {
    /// Parses `LITRES:PRICE,…,*:PRICE` (price per m³, e.g. `10000:4.50,20000:7,*:14`).
    pub fn parse(currency: &str, text: &str) -> Result<Tariff, TariffError> {
        Self::parse_text(currency, text).map_err(TariffError)
    }

    fn parse_text(currency: &str, text: &str) -> Result<Tariff, String> {
        let mut blocks = Vec::new();
        let mut previous = 0u64;
        for part in text.split(',').map(str::trim) {
            let (upto, price) =
                part.split_once(':').ok_or_else(|| format!("`{part}` is not LITRES:PRICE"))?;
            let cents = parse_cents(price).ok_or_else(|| format!("`{price}` is not a price (like 4.50)"))?;
            let upto = match upto.trim() {
                "*" => None,
                litres => {
                    let litres: u64 =
                        litres.parse().map_err(|_| format!("`{litres}` is not a number of litres"))?;
                    if litres <= previous {
                        return Err(format!("blocks must grow: {litres} L after {previous} L"));
                    }
                    previous = litres;
                    Some(litres)
                }
            };
            if blocks.last().is_some_and(|(upto, _): &(Option<u64>, u64)| upto.is_none()) {
                return Err("`*` must be the last block".into());
            }
            blocks.push((upto, cents));
        }
        if !blocks.last().is_some_and(|(upto, _)| upto.is_none()) {
            return Err("the last block must be `*:PRICE` (no upper bound)".into());
        }
        let currency = currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("`{currency}` is not an ISO 4217 currency code"));
        }
        Ok(Tariff { currency, blocks })
    }

    /// The blocks as [`Tariff::parse`] reads them.
    pub fn blocks_text(&self) -> String {
        let blocks: Vec<String> = self
            .blocks
            .iter()
            .map(|(upto, cents)| {
                let upto = upto.map_or_else(|| "*".to_owned(), |litres| litres.to_string());
                format!("{upto}:{}.{:02}", cents / 100, cents % 100)
            })
            .collect();
        blocks.join(",")
    }

    /// The amount due for `litres`, in cents (rounded to the nearest cent).
    pub fn amount_cents(&self, litres: u64) -> u64 {
        let mut millicents = 0u128;
        let mut lower = 0u64;
        for (upto, cents_per_m3) in &self.blocks {
            let upper = upto.unwrap_or(u64::MAX).min(litres);
            if upper > lower {
                // cents per m³ is millicents per litre.
                millicents += u128::from(upper - lower) * u128::from(*cents_per_m3);
            }
            lower = upto.unwrap_or(u64::MAX);
            if lower >= litres {
                break;
            }
        }
        u64::try_from((millicents + 500) / 1000).unwrap_or(u64::MAX)
    }
}

/// A tariff as written in configuration files.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffText {
    currency: String,
    blocks: String,
}

impl TryFrom<TariffText> for Tariff {
    type Error = TariffError;

    fn try_from(text: TariffText) -> Result<Self, TariffError> {
        Tariff::parse(&text.currency, &text.blocks)
    }
}

impl From<Tariff> for TariffText {
    fn from(tariff: Tariff) -> Self {
        TariffText { blocks: tariff.blocks_text(), currency: tariff.currency }
    }
}

fn parse_cents(price: &str) -> Option<u64> {
    let price = price.trim();
    let (units, fraction) = price.split_once('.').unwrap_or((price, ""));
    if units.is_empty()
        || fraction.len() > 2
        || !units.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let fraction: u64 = format!("{fraction:0<2}").parse().ok()?;
    units.parse::<u64>().ok()?.checked_mul(100)?.checked_add(fraction)
}

/// Everything rationing needs besides the meter's own consumption, the same for every meter of
/// a node at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RationingInputs {
    /// The policy in force.
    pub policy: Policy,
    /// Mesh-wide average consumption in the current period, litres per meter (exact:
    /// Σ consumption ÷ Σ meters over every node's summary for the period).
    pub average_l: Option<f64>,
    /// Manual blocks in force: meter → (reason text, since).
    pub manual: BTreeMap<MeterId, (String, u64)>,
    /// Per meter, bills of periods ended by this time are paid.
    pub paid_through_ms: BTreeMap<MeterId, u64>,
    /// How long after a period ends its bill must be paid.
    pub debt_grace_ms: u64,
    /// The tariff.
    pub tariff: Tariff,
}

/// One meter's consumption figures at its home.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumption {
    /// In the current period, litres.
    pub current_l: u64,
    /// In the previous period, litres.
    pub previous_l: u64,
    /// Whether the meter reported in the current period (it counts in the average).
    pub reported: bool,
}

impl RationingInputs {
    /// Whether the meter's supply must be cut now, and why (manual first, then debt, cap,
    /// above average).
    pub fn judge(
        &self,
        meter: MeterId,
        consumption: Consumption,
        now_ms: u64,
    ) -> Option<(BlockReason, String)> {
        if let Some((reason, _)) = self.manual.get(&meter) {
            return Some((BlockReason::Manual, reason.clone()));
        }
        let period_start = self.policy.period_start(now_ms);
        let previous_end = period_start;
        let paid_through = self.paid_through_ms.get(&meter).copied().unwrap_or(0);
        if consumption.previous_l > 0
            && paid_through < previous_end
            // The grace is at most half a period, so that a debt can be enforced at all before
            // the next period starts (when the previous period's bill is no longer the open one).
            && now_ms >= previous_end.saturating_add(self.debt_grace_ms.min(self.policy.period_ms / 2))
        {
            let due = self.tariff.amount_cents(consumption.previous_l);
            return Some((
                BlockReason::Debt,
                format!(
                    "bill of {} unpaid ({} cents)",
                    hydromesh_proto::format_rfc3339(previous_end - self.policy.period_ms.min(previous_end)),
                    due
                ),
            ));
        }
        if let Some(cap) = self.policy.cap_l.filter(|cap| consumption.current_l > *cap) {
            return Some((
                BlockReason::Cap,
                format!(
                    "{} m³ in the period, cap {} m³",
                    cubic_metres(consumption.current_l),
                    cubic_metres(cap)
                ),
            ));
        }
        if let (Some(permille), Some(average)) = (self.policy.above_average_permille, self.average_l) {
            let limit = average * f64::from(permille) / 1000.0;
            if average > 0.0 && consumption.current_l as f64 > limit {
                return Some((
                    BlockReason::AboveAverage,
                    format!(
                        "{} m³ in the period, limit {} m³ ({}.{:03} × average {} m³)",
                        cubic_metres(consumption.current_l),
                        cubic_metres(limit.round() as u64),
                        permille / 1000,
                        permille % 1000,
                        cubic_metres(average.round() as u64)
                    ),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    const T0: u64 = 1_795_000_000_000;
    const NO_BURST: u32 = 1_000_000;

    fn r(ts_ms: u64, litres: u64) -> Reading {
        Reading { meter: 1.into(), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    fn kinds(tracker: &Tracker) -> Vec<AlertKind> {
        tracker.alerts(1.into()).map(|a| a.kind).collect()
    }

    /// Readings every 5 minutes over 25 h, always consuming except a standstill of
    /// `standstill_ms` starting 10 h in.
    fn day_with_standstill(standstill_ms: u64) -> Vec<Reading> {
        let mut litres = 0;
        let mut out = Vec::new();
        let standstill = (T0 + 10 * H)..=(T0 + 10 * H + standstill_ms);
        let mut ts = T0;
        while ts <= T0 + 25 * H {
            // Water moves in every 5-minute step outside the standstill.
            if !(standstill.contains(&ts) && ts != *standstill.start()) {
                litres += 2;
            }
            out.push(r(ts, litres));
            ts +=
                if standstill.contains(&ts) && ts + 5 * 60_000 > *standstill.end() && ts != *standstill.end()
                {
                    *standstill.end() - ts
                } else {
                    5 * 60_000
                };
        }
        out
    }

    #[test]
    fn a_59_minute_standstill_is_a_leak_and_a_60_minute_one_is_not() {
        let leaky = Tracker::replay(&day_with_standstill(59 * 60_000), NO_BURST);
        assert_eq!(kinds(&leaky), vec![AlertKind::Leak]);
        let fine = Tracker::replay(&day_with_standstill(60 * 60_000), NO_BURST);
        assert!(kinds(&fine).is_empty(), "{:?}", kinds(&fine));
    }

    #[test]
    fn no_leak_before_a_full_day_of_data_and_a_standstill_clears_it() {
        let mut tracker = Tracker::default();
        for k in 0..=24 * 12 {
            tracker.observe(&r(T0 + k * 5 * 60_000, k), NO_BURST);
            if k < 24 * 12 {
                assert!(kinds(&tracker).is_empty(), "raised before a day of data, at step {k}");
            }
        }
        assert_eq!(kinds(&tracker), vec![AlertKind::Leak]);
        let since = tracker.alerts(1.into()).next().map(|a| a.since_ms);
        assert_eq!(since, Some(T0 + 24 * H));
        let last = 24 * 12;
        tracker.observe(&r(T0 + 25 * H, last), NO_BURST);
        assert!(kinds(&tracker).is_empty(), "a full hour standing still clears the leak");
    }

    #[test]
    fn duplicates_and_older_readings_change_nothing() {
        let day = day_with_standstill(59 * 60_000);
        let mut tracker = Tracker::replay(&day, NO_BURST);
        let before = tracker.clone();
        tracker.observe(&day[day.len() - 1], NO_BURST);
        tracker.observe(&day[3], NO_BURST);
        assert_eq!(tracker, before);
    }

    #[test]
    fn burst_needs_30_minutes_above_the_limit() {
        let mut tracker = Tracker::default();
        let mut litres = 0;
        // 5-minute steps at 1500 L/h (125 L per step): above the limit since the first reading.
        for k in 0..=6 {
            tracker.observe(&r(T0 + k * 5 * 60_000, litres), 1200);
            litres += 125;
            let burst = kinds(&tracker).contains(&AlertKind::Burst);
            assert_eq!(burst, k == 6, "after {} minutes", k * 5);
        }
        tracker.observe(&r(T0 + 35 * 60_000, litres - 125 + 10), 1200);
        assert!(!kinds(&tracker).contains(&AlertKind::Burst), "cleared when the flow drops");
        let reported = Reading { flow_lph: Some(5000), ..r(T0 + 40 * 60_000, litres) };
        tracker.observe(&reported, 1200);
        assert!(!kinds(&tracker).contains(&AlertKind::Burst), "one high reading is not a burst");
    }

    #[test]
    fn the_meters_own_flags_raise_and_clear_alerts() {
        let mut tracker = Tracker::default();
        tracker.observe(&Reading { alarms: Alarms::TAMPER.union(Alarms::DRY), ..r(T0, 1) }, NO_BURST);
        assert_eq!(kinds(&tracker), vec![AlertKind::Tamper, AlertKind::Dry]);
        tracker.observe(&Reading { alarms: Alarms::DRY, ..r(T0 + 1, 1) }, NO_BURST);
        assert_eq!(kinds(&tracker), vec![AlertKind::Dry]);
        assert_eq!(
            tracker.alerts(1.into()).next().map(|a| a.since_ms),
            Some(T0),
            "since the first reading with it"
        );
    }

    #[test]
    fn tariffs_bill_by_increasing_blocks() {
        let tariff = Tariff::default();
        assert_eq!(tariff.amount_cents(0), 0);
        assert_eq!(tariff.amount_cents(10_000), 4500);
        assert_eq!(tariff.amount_cents(15_000), 4500 + 3500);
        assert_eq!(tariff.amount_cents(60_000), 4500 + 7000 + 33_000 + 14_000);
        assert_eq!(tariff.amount_cents(1), 0, "half a cent rounds down");
        assert_eq!(tariff.amount_cents(2), 1);
        let parsed = Tariff::parse("brl", "10000:4.50, 20000:7, 50000:11.00, *:14").expect("parse");
        assert_eq!(parsed, tariff);
        assert!(Tariff::parse("BRL", "10000:4.50").is_err());
        assert!(Tariff::parse("BRL", "10000:4.50,5000:5,*:6").is_err());
        assert!(Tariff::parse("BRL", "10000:4.505,*:6").is_err());
        assert!(Tariff::parse("REAL", "*:6").is_err());
    }

    #[test]
    fn rationing_cap_edges_and_order_of_reasons() {
        let mut inputs = RationingInputs {
            policy: Policy { cap_l: Some(1000), above_average_permille: Some(1500), ..Policy::default() },
            average_l: Some(800.0),
            ..RationingInputs::default()
        };
        let now = T0;
        let at = |current_l| Consumption { current_l, previous_l: 0, reported: true };
        assert_eq!(inputs.judge(1.into(), at(1000), now), None, "exactly the cap is allowed");
        assert_eq!(inputs.judge(1.into(), at(1001), now).map(|b| b.0), Some(BlockReason::Cap));
        inputs.policy.cap_l = None;
        assert_eq!(inputs.judge(1.into(), at(1200), now), None, "exactly 1.5 × average is allowed");
        assert_eq!(inputs.judge(1.into(), at(1201), now).map(|b| b.0), Some(BlockReason::AboveAverage));
        inputs.manual.insert(1.into(), ("unpaid".into(), now));
        assert_eq!(inputs.judge(1.into(), at(0), now).map(|b| b.0), Some(BlockReason::Manual));
    }

    #[test]
    fn debt_blocks_after_the_grace_time_until_paid() {
        let mut inputs = RationingInputs { debt_grace_ms: 10 * 86_400_000, ..RationingInputs::default() };
        let period = inputs.policy.period_ms;
        let start = inputs.policy.period_start(T0);
        let owes = Consumption { current_l: 0, previous_l: 5_000, reported: false };
        assert_eq!(inputs.judge(1.into(), owes, start + 86_400_000), None, "within the grace time");
        let late = start + 11 * 86_400_000;
        assert_eq!(inputs.judge(1.into(), owes, late).map(|b| b.0), Some(BlockReason::Debt));
        inputs.paid_through_ms.insert(1.into(), start);
        assert_eq!(inputs.judge(1.into(), owes, late), None, "paid");
        assert!(period > 11 * 86_400_000);

        // With weekly periods a 10-day grace would never end inside the period: half a period.
        inputs.policy.period_ms = 7 * 86_400_000;
        inputs.paid_through_ms.clear();
        let start = inputs.policy.period_start(T0);
        assert_eq!(inputs.judge(1.into(), owes, start + 3 * 86_400_000), None);
        assert_eq!(
            inputs.judge(1.into(), owes, start + 4 * 86_400_000).map(|b| b.0),
            Some(BlockReason::Debt)
        );
    }
}
