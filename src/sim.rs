//! Deterministic fleet of simulated hydrometers behind `hydromesh simulate`: cumulative registers
//! that follow a daily trend and obey the valve commands of acknowledgements.
//!
//! Each meter's randomness is a hash of `(seed, meter id)` with the minute or day of device
//! time, so its readings depend on nothing else (not the fleet's size, not a `rand` version).

use std::fmt;
use std::str::FromStr;

use hydromesh_proto::ingest::{MeterCommand, Valve};
use hydromesh_proto::{Alarms, MeterId, Reading};

/// Most meters in one fleet; a larger count is cut to this (the fleet is held in memory).
pub const MAX_METERS: u64 = 1_000_000;

/// Longest sub-step of the integration, in ms of device time.
const STEP_MS: u64 = 60_000;
const MS_PER_HOUR: f64 = 3_600_000.0;
const MINUTES_PER_DAY: u64 = 24 * 60;
/// Longest span integrated minute by minute; anything older in one tick gets the mean flow, so
/// an absurd time jump costs bounded work instead of hanging.
const MAX_EXACT_MS: u64 = 31 * 24 * 3_600_000;
/// Mean burst flow over a day: one burst a day, 60 minutes at 2,250 L/h on average.
const MEAN_BURST_LPH: f64 = 2_250.0 / 24.0;
/// Highest register a meter may start with, in litres.
const MAX_START_LITRES: f64 = 500_000.0;

/// Share of the average flow used in each hour of the day (device time, UTC); the mean is 1.
/// 01:00 to 05:00 is exactly 0 so that non-leaking meters have whole hours of standstill.
const DAILY: [f64; 24] = [
    0.3, 0.0, 0.0, 0.0, 0.0, 0.4, 2.0, 2.6, 1.8, 1.0, 0.8, 0.9, // 00..11: morning peak
    1.2, 1.0, 0.7, 0.7, 0.9, 1.3, 1.9, 2.2, 1.8, 1.3, 0.9, 0.3, // 12..23: evening peak
];

/// Salts keep the hash streams of one meter independent of each other.
const SALT_MINUTE: u64 = 0x6d69_6e75_7465_0001;
const SALT_BURST: u64 = 0x6275_7273_7400_0002;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A consumption profile of the simulated meters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Low use: about 5 to 15 L/h on average.
    Slow,
    /// Household use: about 15 to 40 L/h on average.
    Normal,
    /// Heavy use: about 60 to 200 L/h on average.
    Fast,
    /// Normal use plus a constant leak of 2 to 10 L/h: never an hour of standstill.
    Leaky,
    /// Normal use plus one burst a day of 1,500 to 3,000 L/h lasting 30 to 90 minutes.
    Burst,
    /// Each meter draws its profile: mostly normal, some slow and fast, ~2% leaky, ~1% burst.
    Mixed,
}

impl Profile {
    /// The profile names accepted by [`FromStr`], in a stable order (for help text).
    pub const NAMES: [&'static str; 6] = ["slow", "normal", "fast", "leaky", "burst", "mixed"];

    /// The profile's name, as [`FromStr`] accepts it.
    pub fn name(self) -> &'static str {
        // The variants are declared in the order of `NAMES`.
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile name that is not one of [`Profile::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile `{0}`: expected one of {names}", names = Profile::NAMES.join(", "))]
pub struct ParseProfileError(pub String);

impl FromStr for Profile {
    type Err = ParseProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "slow" => Ok(Profile::Slow),
            "normal" => Ok(Profile::Normal),
            "fast" => Ok(Profile::Fast),
            "leaky" => Ok(Profile::Leaky),
            "burst" => Ok(Profile::Burst),
            "mixed" => Ok(Profile::Mixed),
            _ => Err(ParseProfileError(s.to_owned())),
        }
    }
}

/// SplitMix64's finaliser: a good 64-bit mixing function, used as a hash.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of two words; not symmetric, so `(seed, id)` and `(id, seed)` differ.
fn hash2(a: u64, b: u64) -> u64 {
    mix64(a ^ mix64(b.wrapping_add(GOLDEN)))
}

/// A uniform value in `[0, 1)` from the 53 high bits of a hash.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64: the sequential generator drawing a meter's fixed traits.
struct SplitMix64(u64);

impl SplitMix64 {
    /// The next value, uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        lo + (hi - lo) * unit(mix64(self.0))
    }
}

/// One simulated meter.
#[derive(Clone, Debug)]
struct Meter {
    id: MeterId,
    /// Root of every random value of this meter.
    key: u64,
    /// Its own profile (never `Mixed`).
    profile: Profile,
    /// Average flow of the daily pattern, L/h.
    base_lph: f64,
    /// Constant leak, L/h (0 unless leaky).
    leak_lph: f64,
    /// Register with its fraction: reports show the floor, so it never goes down.
    litres: f64,
    closed: bool,
}

impl Meter {
    fn new(id: MeterId, profile: Profile, seed: u64) -> Meter {
        let key = hash2(seed, id.code());
        let mut rng = SplitMix64(key);
        let profile = match profile {
            Profile::Mixed => match rng.range(0.0, 1.0) {
                u if u < 0.01 => Profile::Burst,
                u if u < 0.03 => Profile::Leaky,
                u if u < 0.15 => Profile::Slow,
                u if u < 0.27 => Profile::Fast,
                _ => Profile::Normal,
            },
            p => p,
        };
        let litres = rng.range(0.0, MAX_START_LITRES);
        let (base_lph, leak_lph) = match profile {
            Profile::Slow => (rng.range(5.0, 15.0), 0.0),
            Profile::Fast => (rng.range(60.0, 200.0), 0.0),
            Profile::Leaky => (rng.range(15.0, 40.0), rng.range(2.0, 10.0)),
            _ => (rng.range(15.0, 40.0), 0.0),
        };
        Meter { id, key, profile, base_lph, leak_lph, litres, closed: false }
    }

    /// Flow during the minute of device time holding `t_ms`, L/h; 0 while the valve is closed.
    fn flow_at(&self, t_ms: u64) -> f64 {
        if self.closed {
            return 0.0;
        }
        let minute = t_ms / STEP_MS;
        let hour = ((minute / 60) % 24) as usize;
        // Mean 1, so the long-run average stays `base_lph`; zero hours stay exactly zero.
        let variation = 0.4 + 1.2 * unit(hash2(self.key ^ SALT_MINUTE, minute));
        let mut lph = self.base_lph * DAILY[hour] * variation + self.leak_lph;
        if self.profile == Profile::Burst {
            lph += self.burst_lph(minute);
        }
        lph
    }

    /// Burst flow in `minute`: one burst per device day, drawn from the day number, and held
    /// within that day so no other day needs looking at.
    fn burst_lph(&self, minute: u64) -> f64 {
        let h = hash2(self.key ^ SALT_BURST, minute / MINUTES_PER_DAY);
        let duration = 30 + h % 61;
        let start = (h >> 8) % (MINUTES_PER_DAY - duration);
        let offset = minute % MINUTES_PER_DAY;
        if offset >= start && offset < start + duration {
            1_500.0 + ((h >> 24) % 1_501) as f64
        } else {
            0.0
        }
    }

    /// Integrates the flow from `from_ms` to `to_ms` in steps that end on minute boundaries,
    /// so each minute's flow (and the hour and burst it belongs to) is honoured. Only the last
    /// [`MAX_EXACT_MS`] are stepped; earlier time adds the profile's mean flow.
    fn advance(&mut self, from_ms: u64, to_ms: u64) {
        if self.closed {
            return;
        }
        let mut t = from_ms.max(to_ms.saturating_sub(MAX_EXACT_MS));
        let burst = match self.profile {
            Profile::Burst => MEAN_BURST_LPH,
            _ => 0.0,
        };
        let mean_lph = self.base_lph + self.leak_lph + burst;
        self.litres += mean_lph * (t - from_ms) as f64 / MS_PER_HOUR;
        while t < to_ms {
            let boundary = (t / STEP_MS).saturating_add(1).saturating_mul(STEP_MS);
            let end = boundary.min(to_ms);
            self.litres += self.flow_at(t) * (end - t) as f64 / MS_PER_HOUR;
            t = end;
        }
    }

    fn reading(&self, now_ms: u64) -> Reading {
        // The flow of the step that just ended, so it matches the register's last change.
        let flow = self.flow_at(now_ms.saturating_sub(1));
        Reading {
            meter: self.id,
            ts_ms: now_ms,
            // `as` saturates, and both values are finite and non-negative.
            litres: self.litres.floor() as u64,
            flow_lph: Some(flow.round() as u32),
            alarms: Alarms::empty(),
        }
    }
}

/// A fleet of simulated meters with consecutive ids, advanced by [`Fleet::tick`].
#[derive(Clone, Debug)]
pub struct Fleet {
    first_meter: u64,
    meters: Vec<Meter>,
    /// Device time of the last tick; `None` before the first.
    now_ms: Option<u64>,
}

impl Fleet {
    /// A fleet of meters `first_meter`, `first_meter + 1`, ..., deterministic for `seed`.
    ///
    /// `count` is cut so ids stay numeric ids (below [`NUMBERS`](hydromesh_proto::meter::NUMBERS)) and the fleet has at most
    /// [`MAX_METERS`]; [`Fleet::len`] tells the real size. A count of 0 is an empty fleet.
    pub fn new(first_meter: u64, count: u64, profile: Profile, seed: u64) -> Fleet {
        let meters = (first_meter..first_meter.saturating_add(count.min(MAX_METERS)))
            .map_while(MeterId::number)
            .map(|id| Meter::new(id, profile, seed))
            .collect();
        Fleet { first_meter, meters, now_ms: None }
    }

    /// Advances every meter to device time `now_ms` (ms since the Unix epoch) and returns one
    /// reading per meter, stamped `now_ms`, in id order.
    ///
    /// The first tick only sets the start time. A time before the previous tick advances
    /// nothing (the register never goes back); the next tick then starts from the latest time.
    /// Flow is integrated minute by minute over at most the last 31 days of the interval;
    /// device time before that (a huge jump) adds each meter's mean flow.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Reading> {
        let from_ms = self.now_ms.unwrap_or(now_ms);
        let to_ms = now_ms.max(from_ms);
        for meter in &mut self.meters {
            meter.advance(from_ms, to_ms);
        }
        self.now_ms = Some(to_ms);
        self.meters.iter().map(|m| m.reading(now_ms)).collect()
    }

    /// Applies the valve commands of an acknowledgement: a closed meter's register stops until
    /// an open command arrives. Commands for meters outside the fleet are ignored.
    pub fn apply_commands(&mut self, commands: &[MeterCommand]) {
        for command in commands {
            let index = command.meter.as_number().and_then(|n| n.checked_sub(self.first_meter));
            let index = index.and_then(|i| usize::try_from(i).ok());
            if let Some(meter) = index.and_then(|i| self.meters.get_mut(i)) {
                meter.closed = command.valve == Valve::Closed;
            }
        }
    }

    /// How many meters have their valve closed.
    pub fn closed_meters(&self) -> usize {
        self.meters.iter().filter(|m| m.closed).count()
    }

    /// How many meters the fleet has.
    pub fn len(&self) -> usize {
        self.meters.len()
    }

    /// Whether the fleet has no meter.
    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01T00:00:00Z.
    const T0: u64 = 1_704_067_200_000;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    /// Readings of `steps + 1` ticks, `step` ms apart from `T0`.
    fn run(mut fleet: Fleet, step: u64, steps: u64) -> Vec<Vec<Reading>> {
        (0..=steps).map(|i| fleet.tick(T0 + i * step)).collect()
    }

    /// Whether `ok` holds for the registers of each meter in two rounds of readings.
    fn each(a: &[Reading], b: &[Reading], ok: impl Fn(u64, u64) -> bool) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| ok(a.litres, b.litres))
    }

    fn grew(earlier: &[Reading], later: &[Reading]) -> bool {
        each(earlier, later, |e, l| l > e)
    }

    fn cmd(meter: MeterId, valve: Valve) -> MeterCommand {
        MeterCommand { meter, valve }
    }

    #[test]
    fn profiles_parse_and_print() {
        for name in Profile::NAMES {
            let parsed = name.parse::<Profile>();
            assert_eq!(parsed.map(|p| p.to_string()), Ok(name.into()));
        }
        assert_eq!(" Leaky".parse(), Ok(Profile::Leaky));
        let err = "huge".parse::<Profile>().map_err(|e| e.to_string());
        assert!(err.is_err_and(|e| e.contains("`huge`") && e.contains("leaky, burst, mixed")));
        assert!((DAILY.iter().sum::<f64>() - 24.0).abs() < 1e-9);
    }

    #[test]
    fn same_seed_same_readings_other_seed_differs() {
        let go = |seed| run(Fleet::new(100, 20, Profile::Mixed, seed), 15 * MIN, 200);
        let a = go(7);
        assert_eq!(a, go(7));
        assert_ne!(a, go(8));
        assert!(a[0].iter().all(|r| r.ts_ms == T0 && r.litres <= 500_000));
        let flat = a.iter().flatten();
        assert!(flat.clone().all(|r| r.alarms.is_empty() && r.flow_lph.is_some()));
    }

    #[test]
    fn registers_never_decrease_over_a_week() {
        for profile in [Profile::Mixed, Profile::Burst, Profile::Leaky] {
            let fine = run(Fleet::new(1, 5, profile, 42), MIN, 7 * 24 * 60);
            for pair in fine.windows(2) {
                assert!(each(&pair[0], &pair[1], |e, l| l >= e));
            }
            // One 7-day tick integrates the same minutes: the same registers up to rounding.
            let coarse = run(Fleet::new(1, 5, profile, 42), 7 * DAY, 1);
            assert_eq!(coarse[0], fine[0]);
            assert!(grew(&coarse[0], &coarse[1]));
            let last = &fine[fine.len() - 1];
            assert!(each(&coarse[1], last, |c, f| c.abs_diff(f) <= 1));
        }
    }

    #[test]
    fn average_flow_follows_the_profile() {
        use Profile::{Fast, Normal, Slow};
        for (profile, lo, hi) in [(Slow, 5, 15), (Normal, 15, 40), (Fast, 60, 200)] {
            let week = run(Fleet::new(0, 10, profile, 3), 7 * DAY, 1);
            for (start, end) in week[0].iter().zip(&week[1]) {
                let avg = (end.litres - start.litres) / (7 * 24);
                assert!((lo * 9 / 10..=hi * 11 / 10).contains(&avg), "{profile}: {avg}");
            }
        }
    }

    #[test]
    fn closed_valve_freezes_register_and_open_resumes() {
        let mut fleet = Fleet::new(10, 3, Profile::Leaky, 1);
        let before = fleet.tick(T0 + 9 * HOUR);
        fleet.apply_commands(&[cmd(11.into(), Valve::Closed), cmd(999.into(), Valve::Closed)]);
        assert_eq!(fleet.closed_meters(), 1);
        let mut last = before.clone();
        for h in 10..14 {
            last = fleet.tick(T0 + h * HOUR);
            let frozen = (last[1].litres, last[1].flow_lph);
            assert_eq!(frozen, (before[1].litres, Some(0)));
            assert!(last[0].litres > before[0].litres && last[2].litres > before[2].litres);
        }
        fleet.apply_commands(&[cmd(11.into(), Valve::Open)]);
        assert_eq!(fleet.closed_meters(), 0);
        let after = fleet.tick(T0 + 15 * HOUR);
        assert!(after[1].litres > last[1].litres && after[1].flow_lph > Some(0));
    }

    #[test]
    fn leaky_meter_consumes_every_hour() {
        let hours = run(Fleet::new(0, 5, Profile::Leaky, 9), HOUR, 24);
        assert!(hours.windows(2).all(|pair| grew(&pair[0], &pair[1])));
    }

    #[test]
    fn normal_meter_stands_still_at_night() {
        let hours = run(Fleet::new(0, 5, Profile::Normal, 9), HOUR, 24);
        // The readings at 02:00 to 05:00 close the hours starting 01:00 to 04:00.
        for h in 2..=5 {
            assert!(each(&hours[h - 1], &hours[h], |e, l| l == e));
            assert!(hours[h].iter().all(|r| r.flow_lph == Some(0)));
        }
        assert!(grew(&hours[0], &hours[24]));
    }

    #[test]
    fn burst_meter_bursts_for_half_an_hour() {
        let minutes = run(Fleet::new(0, 3, Profile::Burst, 5), MIN, 3 * 24 * 60);
        for meter in 0..3 {
            let (mut streak, mut longest) = (0, 0);
            for flow in minutes.iter().map(|readings| readings[meter].flow_lph) {
                streak = if flow >= Some(1_000) { streak + 1 } else { 0 };
                longest = longest.max(streak);
            }
            assert!(longest >= 30, "meter {meter}: longest burst {longest} min");
        }
    }

    #[test]
    fn mixed_profile_distribution() {
        let fleet = Fleet::new(0, 20_000, Profile::Mixed, 11);
        let share = |p| fleet.meters.iter().filter(|m| m.profile == p).count() as f64 / 20_000.0;
        assert!(share(Profile::Normal) > 0.6);
        assert!((0.08..0.16).contains(&share(Profile::Slow)));
        assert!((0.08..0.16).contains(&share(Profile::Fast)));
        assert!((0.01..0.03).contains(&share(Profile::Leaky)));
        assert!((0.004..0.02).contains(&share(Profile::Burst)));
    }

    #[test]
    fn meter_readings_do_not_depend_on_fleet_size() {
        let meter5 = |first, count| -> Vec<Reading> {
            let all = run(Fleet::new(first, count, Profile::Mixed, 77), 10 * MIN, 150);
            all.into_iter().flatten().filter(|r| r.meter == 5.into()).collect()
        };
        let alone = meter5(5, 1);
        assert_eq!(alone.len(), 151);
        assert_eq!(alone, meter5(0, 10));
        assert_eq!(alone, meter5(3, 100));
    }

    #[test]
    fn extreme_arguments_do_not_panic() {
        let mut empty = Fleet::new(7, 0, Profile::Normal, 0);
        assert!(empty.is_empty() && empty.tick(T0).is_empty());
        let last = hydromesh_proto::meter::NUMBERS - 1;
        let mut edge = Fleet::new(last - 1, 10, Profile::Burst, u64::MAX);
        assert_eq!(edge.len(), 2);
        let start = edge.tick(0);
        let end = edge.tick(u64::MAX);
        assert!(grew(&start, &end));
        assert_eq!(edge.tick(5)[1].litres, end[1].litres); // time going back: no change
        let printed = MeterId::parse("0a").expect("id");
        edge.apply_commands(&[
            cmd(MeterId::number(last).expect("id"), Valve::Closed),
            cmd(0.into(), Valve::Closed),
            cmd(printed, Valve::Closed),
        ]);
        assert_eq!(edge.closed_meters(), 1);
        let huge = Fleet::new(0, u64::MAX, Profile::Slow, 1);
        assert_eq!(huge.len() as u64, MAX_METERS);
    }
}
