//! Acknowledgements owed to an MQTT peer, in the order of its publishes: MQTT requires PUBACKs
//! (and PUBRECs) in publish order, while readings may become durable in another order.

use std::collections::VecDeque;

/// What a publish waits for before it is acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AckState {
    /// Its reading is not durable yet.
    Waiting,
    /// It may be sent: the reading is durable.
    Ready,
    /// It may be sent: the message was received but is not a reading (MQTT 5 says so in
    /// its reason code).
    Refused,
    /// Its reading could not be stored: it must never be sent.
    Failed,
}

/// One acknowledgement owed.
#[derive(Clone, Copy, Debug)]
pub struct PendingAck {
    /// The publish's packet id.
    pub pkid: u16,
    /// PUBREC (QoS 2) rather than PUBACK (QoS 1).
    pub rec: bool,
    /// Whether it may be sent.
    pub state: AckState,
}

/// Acknowledgements owed, in the order of the publishes; the entry at index `i` has sequence
/// number `front_seq + i`.
#[derive(Default)]
pub struct AckQueue {
    front_seq: u64,
    entries: VecDeque<PendingAck>,
    /// Acknowledgements with a sequence number below this belong to a closed connection: their
    /// packet ids mean nothing on the next one, so they are dropped, never sent.
    void_before: u64,
}

impl AckQueue {
    /// Adds the acknowledgement of the latest publish; returns its sequence number.
    pub fn push(&mut self, pkid: u16, rec: bool, state: AckState) -> u64 {
        self.entries.push_back(PendingAck { pkid, rec, state });
        self.front_seq + self.entries.len() as u64 - 1
    }

    /// Marks the messages `seqs` as stored or failed (unknown numbers are ignored).
    pub fn complete(&mut self, seqs: &[u64], stored: bool) {
        for seq in seqs {
            let index = seq.checked_sub(self.front_seq).and_then(|i| usize::try_from(i).ok());
            if let Some(entry) = index.and_then(|i| self.entries.get_mut(i)) {
                entry.state = if stored { AckState::Ready } else { AckState::Failed };
            }
        }
    }

    /// Forgets every acknowledgement owed so far (the connection they were owed on closed; the
    /// peer sends those messages again on the next one).
    pub fn void_all(&mut self) {
        self.void_before = self.front_seq + self.entries.len() as u64;
    }

    /// The first acknowledgement, if it may be sent (`Ok`), or `Err` if its message failed.
    pub fn pop_ready(&mut self) -> Option<Result<PendingAck, ()>> {
        while self.front_seq < self.void_before && !self.entries.is_empty() {
            self.front_seq += 1;
            self.entries.pop_front();
        }
        match self.entries.front()?.state {
            AckState::Waiting => None,
            AckState::Failed => Some(Err(())),
            AckState::Ready | AckState::Refused => {
                self.front_seq += 1;
                self.entries.pop_front().map(Ok)
            }
        }
    }

    /// Drops the first acknowledgement if its message failed, for a peer that can live without
    /// it (the message is sent again later).
    pub fn skip_failed(&mut self) -> Option<PendingAck> {
        if self.entries.front()?.state != AckState::Failed {
            return None;
        }
        self.front_seq += 1;
        self.entries.pop_front()
    }

    /// How many are owed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is owed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_leave_in_publish_order() {
        let mut acks = AckQueue::default();
        let first = acks.push(10, false, AckState::Waiting);
        acks.push(11, false, AckState::Ready); // a refused message, acknowledged in its turn
        let third = acks.push(12, true, AckState::Waiting);
        acks.complete(&[third], true);
        assert!(acks.pop_ready().is_none(), "the first message is not stored yet");
        acks.complete(&[first], true);
        let order: Vec<(u16, bool)> = std::iter::from_fn(|| acks.pop_ready())
            .map(|ack| ack.map(|a| (a.pkid, a.rec)).expect("ok"))
            .collect();
        assert_eq!(order, vec![(10, false), (11, false), (12, true)]);
        let fourth = acks.push(13, false, AckState::Waiting);
        acks.complete(&[fourth, fourth + 5, 0], false);
        assert!(matches!(acks.pop_ready(), Some(Err(()))), "a failed message is never acknowledged");
    }

    #[test]
    fn acknowledgements_of_a_closed_connection_are_never_sent() {
        let mut acks = AckQueue::default();
        let old = acks.push(7, false, AckState::Waiting);
        acks.void_all();
        let new = acks.push(7, false, AckState::Waiting);
        acks.complete(&[old], true);
        assert!(acks.pop_ready().is_none(), "the new message is not stored yet");
        acks.complete(&[new], true);
        assert!(matches!(acks.pop_ready(), Some(Ok(PendingAck { pkid: 7, .. }))));
        assert!(acks.is_empty());
    }
}
