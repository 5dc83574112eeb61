//! Water rules: what a valid reading is, and what a meter consumed over a window.
//!
//! Bills, rankings and rationing all use the one definition of consumption here: over a window
//! `[from, to)`, the register of the meter's last reading before `to` minus the register of its
//! last reading at or before `from` (or of its first reading in the window when there is none
//! before). A window's (first, last) pair merges with another by taking the earlier first and
//! the later last, a join-semilattice: duplicates, reordering and re-delivery never double count.

pub mod rules;

use hydromesh_proto::ingest::Rejection;
use std::collections::hash_map::{Entry, HashMap};

use hydromesh_proto::query::{MeterHistory, TopEntry};
use hydromesh_proto::summary::{MeterSpan, Point};
use hydromesh_proto::{Alarms, MeterId, Reading};

/// How far ahead of the node's clock a reading's timestamp may be.
pub const MAX_FUTURE_MS: u64 = 5 * 60 * 1000;
/// Earliest plausible reading time: 2000-01-01T00:00:00Z.
pub const MIN_TS_MS: u64 = 946_684_800_000;
/// Largest plausible register, litres (10⁹ m³: no meter reaches it).
pub const MAX_LITRES: u64 = 1_000_000_000_000;
/// Largest plausible flow, litres per hour (10,000 m³/h, a trunk main).
pub const MAX_FLOW_LPH: u32 = 10_000_000;

/// Checks a reading's fields on their own: range and clock. Ordering against the meter's other
/// readings is the store's part.
pub fn check_fields(reading: &Reading, now_ms: u64) -> Result<(), Rejection> {
    let out_of_range = |detail: String| Err(Rejection::OutOfRange { detail });
    if reading.ts_ms < MIN_TS_MS {
        return out_of_range(format!("ts {} ms is before the year 2000", reading.ts_ms));
    }
    let limit = now_ms.saturating_add(MAX_FUTURE_MS);
    if reading.ts_ms > limit {
        return Err(Rejection::FutureTimestamp {
            ahead_ms: reading.ts_ms - now_ms,
            max_ahead_ms: MAX_FUTURE_MS,
        });
    }
    if reading.litres > MAX_LITRES {
        return out_of_range(format!("litres {} exceeds {MAX_LITRES}", reading.litres));
    }
    if let Some(flow) = reading.flow_lph.filter(|flow| *flow > MAX_FLOW_LPH) {
        return out_of_range(format!("flow_lph {flow} exceeds {MAX_FLOW_LPH}"));
    }
    if Alarms::from_bits(reading.alarms.bits()).is_none() {
        return out_of_range(format!("alarms has unknown bits {:#04x}", reading.alarms.bits()));
    }
    Ok(())
}

/// Litres as cubic metres with three decimals (exact: 1 L = 0.001 m³), as every figure is
/// shown to people.
pub fn cubic_metres(litres: u64) -> String {
    format!("{}.{:03}", litres / 1000, litres % 1000)
}

/// A reading's register as a point.
pub fn point(reading: &Reading) -> Point {
    Point { ts_ms: reading.ts_ms, litres: reading.litres }
}

/// Consumption of a span: last register minus first.
pub fn span_consumption(span: &MeterSpan) -> u64 {
    span.last.litres.saturating_sub(span.first.litres)
}

/// An hour: readings older than a node's raw retention are kept one an hour.
pub const HOUR_MS: u64 = 3_600_000;

/// Of one meter's `readings` (in time order), those kept when readings before `cutoff_ms` (a
/// whole hour) are kept as hourly registers: every reading from the cutoff on, and before it
/// the meter's first reading (at `first_ts_ms`), any reading on a whole hour, and the last of
/// each hour. Consumption over a window whose bounds are whole hours is the same over the
/// readings kept: its base (the last reading at or before its start, else the meter's first)
/// and its end (the last reading before its end) are kept.
pub fn hourly_before(readings: &[Reading], cutoff_ms: u64, first_ts_ms: u64) -> Vec<Reading> {
    let hour = |reading: &Reading| reading.ts_ms / HOUR_MS;
    let kept = |(at, reading): &(usize, &Reading)| {
        reading.ts_ms >= cutoff_ms
            || reading.ts_ms == first_ts_ms
            || reading.ts_ms % HOUR_MS == 0
            || readings.get(at + 1).is_none_or(|next| hour(next) != hour(reading))
    };
    readings.iter().enumerate().filter(kept).map(|(_, reading)| *reading).collect()
}

/// The join of two spans of the same meter: the earlier first and the later last.
pub fn join_spans(a: MeterSpan, b: MeterSpan, from_ms: u64) -> MeterSpan {
    MeterSpan {
        meter: a.meter,
        first: join_base(Some(a.first), Some(b.first), from_ms).unwrap_or(a.first),
        last: if b.last.ts_ms > a.last.ts_ms { b.last } else { a.last },
    }
}

/// The base of a window starting at `from_ms` from two nodes' bases of one meter (each its last
/// register at or before the start, else its first after): the later of those at or before
/// the start, else the earlier. (A meter that moved away and back has, at its first home, a
/// base older than the one of the home it was at in between.)
pub fn join_base(a: Option<Point>, b: Option<Point>, from_ms: u64) -> Option<Point> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, b) => return a.or(b),
    };
    Some(match (a.ts_ms <= from_ms, b.ts_ms <= from_ms) {
        (true, true) => {
            if b.ts_ms > a.ts_ms {
                b
            } else {
                a
            }
        }
        (true, false) => a,
        (false, true) => b,
        (false, false) => {
            if b.ts_ms < a.ts_ms {
                b
            } else {
                a
            }
        }
    })
}

/// The span of a window's history: baseline (or first reading) to last reading.
pub fn history_span(meter: MeterId, history: &MeterHistory) -> Option<MeterSpan> {
    let last = history.readings.last()?;
    let first = history.baseline.as_ref().or(history.readings.first())?;
    Some(MeterSpan { meter, first: point(first), last: point(last) })
}

/// Consumption over a window's history (0 with no reading in the window).
pub fn history_consumption(meter: MeterId, history: &MeterHistory) -> u64 {
    history_span(meter, history).map_or(0, |span| span_consumption(&span))
}

/// Ranks spans by consumption descending, then meter ascending, and keeps the first `n`.
pub fn rank(mut spans: Vec<MeterSpan>, n: usize) -> Vec<MeterSpan> {
    let order = |a: &MeterSpan, b: &MeterSpan| {
        span_consumption(b).cmp(&span_consumption(a)).then(a.meter.cmp(&b.meter))
    };
    if spans.len() > n {
        spans.select_nth_unstable_by(n, order);
        spans.truncate(n);
    }
    spans.sort_unstable_by(order);
    spans
}

/// Joins the spans that several nodes hold of their meters and ranks the first `n`: a meter held
/// by several nodes (it moved) counts once, over the join of its spans, and its home is the node
/// with its latest reading.
pub fn rank_joined<H: ToString>(
    parts: impl IntoIterator<Item = (H, MeterSpan)>,
    n: usize,
    from_ms: u64,
) -> Vec<TopEntry> {
    let mut joined: HashMap<MeterId, (MeterSpan, H)> = HashMap::new();
    for (home, span) in parts {
        match joined.entry(span.meter) {
            Entry::Occupied(mut entry) => {
                let (merged, merged_home) = entry.get_mut();
                if span.last.ts_ms > merged.last.ts_ms {
                    *merged_home = home;
                }
                *merged = join_spans(*merged, span, from_ms);
            }
            Entry::Vacant(entry) => {
                entry.insert((span, home));
            }
        }
    }
    let ranked = rank(joined.values().map(|(span, _)| *span).collect(), n);
    ranked
        .iter()
        .map(|span| TopEntry {
            meter: span.meter,
            consumption_l: span_consumption(span),
            home: joined.get(&span.meter).map(|(_, home)| home.to_string()).unwrap_or_default(),
        })
        .collect()
}

/// Merges histories of one meter held by several nodes (a meter that moved): readings are
/// de-duplicated by time, and the latest baseline wins.
pub fn merge_histories(histories: impl IntoIterator<Item = MeterHistory>) -> MeterHistory {
    let mut merged = MeterHistory { baseline: None, readings: Vec::new(), truncated: false };
    for history in histories {
        merged.truncated |= history.truncated;
        merged.baseline = match (merged.baseline, history.baseline) {
            (Some(a), Some(b)) => Some(if b.ts_ms > a.ts_ms { b } else { a }),
            (a, b) => a.or(b),
        };
        merged.readings.extend(history.readings);
    }
    merged.readings.sort_by_key(|reading| reading.ts_ms);
    merged.readings.dedup_by_key(|reading| reading.ts_ms);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_000_000_000;

    fn reading(ts_ms: u64, litres: u64) -> Reading {
        Reading { meter: 1.into(), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    fn span(first: (u64, u64), last: (u64, u64)) -> MeterSpan {
        MeterSpan {
            meter: 1.into(),
            first: Point { ts_ms: first.0, litres: first.1 },
            last: Point { ts_ms: last.0, litres: last.1 },
        }
    }

    #[test]
    fn join_is_commutative_associative_idempotent() {
        let a = span((10, 100), (20, 150));
        let b = span((5, 90), (15, 120));
        let c = span((12, 110), (30, 200));
        assert_eq!(join_spans(a, b, 0), join_spans(b, a, 0));
        assert_eq!(join_spans(join_spans(a, b, 0), c, 0), join_spans(a, join_spans(b, c, 0), 0));
        assert_eq!(join_spans(a, a, 0), a);
        assert_eq!(span_consumption(&join_spans(join_spans(a, b, 0), c, 0)), 110);
    }

    #[test]
    fn window_consumption_uses_the_baseline_before_the_window() {
        let history = MeterHistory {
            baseline: Some(reading(T0, 1000)),
            readings: vec![reading(T0 + 10, 1005), reading(T0 + 20, 1012)],
            truncated: false,
        };
        assert_eq!(history_consumption(1.into(), &history), 12);
        let no_baseline = MeterHistory { baseline: None, ..history.clone() };
        assert_eq!(history_consumption(1.into(), &no_baseline), 7);
        let empty = MeterHistory { baseline: Some(reading(T0, 1)), readings: vec![], truncated: false };
        assert_eq!(history_consumption(1.into(), &empty), 0);
    }

    #[test]
    fn merged_histories_count_each_reading_once() {
        let a = MeterHistory {
            baseline: Some(reading(T0, 10)),
            readings: vec![reading(T0 + 2, 12), reading(T0 + 4, 15)],
            truncated: false,
        };
        let b = MeterHistory {
            baseline: Some(reading(T0 + 1, 11)),
            readings: vec![reading(T0 + 4, 15), reading(T0 + 6, 19)],
            truncated: false,
        };
        let merged = merge_histories([a, b]);
        assert_eq!(merged.baseline, Some(reading(T0 + 1, 11)));
        assert_eq!(merged.readings.len(), 3);
        assert_eq!(history_consumption(1.into(), &merged), 8);
    }

    #[test]
    fn field_checks_name_the_rule() {
        let now = T0;
        assert_eq!(check_fields(&reading(now + MAX_FUTURE_MS, 1), now), Ok(()));
        assert!(matches!(
            check_fields(&reading(now + MAX_FUTURE_MS + 1, 1), now),
            Err(Rejection::FutureTimestamp { .. })
        ));
        assert!(matches!(check_fields(&reading(5, 1), now), Err(Rejection::OutOfRange { .. })));
        assert!(matches!(
            check_fields(&reading(now, MAX_LITRES + 1), now),
            Err(Rejection::OutOfRange { .. })
        ));
        let fast = Reading { flow_lph: Some(MAX_FLOW_LPH + 1), ..reading(now, 1) };
        assert!(matches!(check_fields(&fast, now), Err(Rejection::OutOfRange { .. })));
    }
}
