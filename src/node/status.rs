//! The status words meters sent that hydromesh does not know (a reading carries them as the
//! alarm `other`), kept per meter so that the meter's answer shows them rather than dropping
//! them: the words of its latest reading that had some. In memory, bounded: at most
//! [`MAX_METERS`] meters (the one noted first goes when a new one comes), [`MAX_WORDS`] words a
//! meter, [`MAX_WORD_CHARS`] characters a word.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hydromesh_proto::MeterId;

use crate::sync::lock;

/// Most meters whose words are kept.
pub const MAX_METERS: usize = 10_000;
/// Most words kept of one reading.
pub const MAX_WORDS: usize = 8;
/// Longest word kept, in characters (longer ones are cut).
pub const MAX_WORD_CHARS: usize = 40;

/// Unknown status words by meter; shared by the front ends that read them and the answers.
#[derive(Default)]
pub struct StatusWords {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per meter: the device time of the reading, and its words.
    words: HashMap<MeterId, (u64, Vec<String>)>,
    /// Meters in the order they were first noted.
    order: VecDeque<MeterId>,
}

impl StatusWords {
    /// Notes the unknown words of `meter`'s reading at `ts_ms` (kept if it is its latest
    /// reading with such words).
    pub fn note(&self, meter: MeterId, ts_ms: u64, words: &[String]) {
        if words.is_empty() {
            return;
        }
        let words: Vec<String> =
            words.iter().take(MAX_WORDS).map(|word| word.chars().take(MAX_WORD_CHARS).collect()).collect();
        let mut inner = lock(&self.inner);
        if let Some((held_ts, held)) = inner.words.get_mut(&meter) {
            if ts_ms >= *held_ts {
                (*held_ts, *held) = (ts_ms, words);
            }
            return;
        }
        if inner.order.len() >= MAX_METERS {
            if let Some(oldest) = inner.order.pop_front() {
                inner.words.remove(&oldest);
            }
        }
        inner.order.push_back(meter);
        inner.words.insert(meter, (ts_ms, words));
    }

    /// The words of `meter`'s latest reading that had some, with its device time.
    pub fn of(&self, meter: MeterId) -> Option<(u64, Vec<String>)> {
        lock(&self.inner).words.get(&meter).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_words_are_kept_within_bounds() {
        let status = StatusWords::default();
        let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        status.note(1.into(), 10, &words(&["NEW_THING"]));
        status.note(1.into(), 5, &words(&["OLDER"]));
        assert_eq!(
            status.of(1.into()),
            Some((10, words(&["NEW_THING"]))),
            "an older reading's words do not replace"
        );
        status.note(1.into(), 20, &[]);
        assert_eq!(
            status.of(1.into()).map(|(ts, _)| ts),
            Some(10),
            "a reading without words changes nothing"
        );
        let many: Vec<String> = (0..20).map(|i| format!("W{i}{}", "x".repeat(100))).collect();
        status.note(2.into(), 1, &many);
        let (_, kept) = status.of(2.into()).expect("kept");
        assert_eq!(kept.len(), MAX_WORDS);
        assert!(kept.iter().all(|word| word.chars().count() == MAX_WORD_CHARS));
        for meter in 3..(MAX_METERS as u32 + 3) {
            status.note(meter.into(), 1, &words(&["X"]));
        }
        assert_eq!((status.of(1.into()), status.of(2.into())), (None, None), "the first noted went first");
        assert!(status.of((MAX_METERS as u32 + 2).into()).is_some());
    }
}
