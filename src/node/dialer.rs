//! Staying in the mesh: while a node has fewer fog-node connections than its target, it dials
//! its bootstrap addresses (until any fog node is connected) and the fog nodes it knows from its
//! view (restored from disk after a restart), each with its own exponential backoff. A node
//! whose bootstrap peers are down at start therefore rejoins through any node it knew, as soon
//! as one is reachable, and keeps trying the bootstraps meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// First wait before dialling the same peer again.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A dial to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dial {
    /// A bootstrap address (its peer id may be unknown).
    Bootstrap(Multiaddr),
    /// A known fog node at its announced addresses.
    Known(PeerId, Vec<Multiaddr>),
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    next_at: Instant,
    delay: Duration,
}

impl Backoff {
    fn new(now: Instant) -> Self {
        Backoff { next_at: now, delay: FIRST_RETRY }
    }

    /// Whether a dial is due at `now`; if so, the next one waits twice as long, up to `longest`.
    fn take(&mut self, now: Instant, longest: Duration) -> bool {
        if now < self.next_at {
            return false;
        }
        self.next_at = now + self.delay;
        self.delay = (self.delay * 2).min(longest.max(FIRST_RETRY));
        true
    }
}

/// Who to dial, and when.
pub struct Dialer {
    target: usize,
    /// Longest wait between two dials of the same peer: a peer cut off and back is dialled
    /// again within it.
    longest: Duration,
    bootstrap: Vec<(Multiaddr, Backoff)>,
    known: HashMap<PeerId, Backoff>,
}

impl Dialer {
    /// A dialer that keeps `target` fog nodes connected, starting from `bootstrap`, waiting at
    /// most `longest` between two dials of the same peer.
    pub fn new(bootstrap: Vec<Multiaddr>, target: usize, longest: Duration, now: Instant) -> Self {
        let bootstrap = bootstrap.into_iter().map(|addr| (addr, Backoff::new(now))).collect();
        Dialer { target: target.max(1), longest, bootstrap, known: HashMap::new() }
    }

    /// What to dial at `now`, given the fog nodes connected and those known (with their
    /// addresses). Nothing while the target is met.
    pub fn due(
        &mut self,
        now: Instant,
        connected: &HashSet<PeerId>,
        known: impl IntoIterator<Item = (PeerId, Vec<Multiaddr>)>,
    ) -> Vec<Dial> {
        if connected.len() >= self.target {
            return Vec::new();
        }
        let mut dials = Vec::new();
        if connected.is_empty() {
            for (addr, backoff) in &mut self.bootstrap {
                if backoff.take(now, self.longest) {
                    dials.push(Dial::Bootstrap(addr.clone()));
                }
            }
        }
        let wanted = self.target - connected.len();
        let mut candidates: Vec<(PeerId, Vec<Multiaddr>)> = known
            .into_iter()
            .filter(|(peer, addrs)| !connected.contains(peer) && !addrs.is_empty())
            .collect();
        // The longest-waiting first, so that every known node gets its turn.
        candidates.sort_by_key(|(peer, _)| self.known.get(peer).map(|backoff| backoff.next_at));
        let mut dialled = 0;
        for (peer, addrs) in candidates {
            if dialled == wanted {
                break;
            }
            if self.known.entry(peer).or_insert_with(|| Backoff::new(now)).take(now, self.longest) {
                dials.push(Dial::Known(peer, addrs));
                dialled += 1;
            }
        }
        dials
    }

    /// A fog node is connected: the next time it is lost, it is dialled again at once.
    pub fn connected(&mut self, peer: &PeerId, now: Instant) {
        self.known.remove(peer);
        for (_, backoff) in &mut self.bootstrap {
            *backoff = Backoff::new(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_secs(10);

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr")
    }

    #[test]
    fn alone_it_tries_bootstraps_and_known_nodes_with_growing_waits() {
        let start = Instant::now();
        let (a, b) = (peer(), peer());
        let known = vec![(a, vec![addr(2)]), (b, vec![addr(3)])];
        let mut dialer = Dialer::new(vec![addr(1)], 4, LONGEST, start);
        let none = HashSet::new();
        let first = dialer.due(start, &none, known.clone());
        assert_eq!(first.len(), 3, "the bootstrap and both known nodes: {first:?}");
        assert!(dialer.due(start + Duration::from_millis(500), &none, known.clone()).is_empty());
        assert_eq!(dialer.due(start + Duration::from_secs(1), &none, known.clone()).len(), 3);
        // The next wait is 2 s: nothing at 2.5 s, everything again at 3 s.
        assert!(dialer.due(start + Duration::from_millis(2500), &none, known.clone()).is_empty());
        assert_eq!(dialer.due(start + Duration::from_secs(3), &none, known.clone()).len(), 3);
        // Waits stop growing at the longest.
        let mut at = start + Duration::from_secs(3);
        for _ in 0..20 {
            at += LONGEST;
            assert_eq!(dialer.due(at, &none, known.clone()).len(), 3);
        }
    }

    #[test]
    fn connected_enough_it_dials_nothing_and_a_lost_peer_is_dialled_at_once() {
        let start = Instant::now();
        let (a, b) = (peer(), peer());
        let mut dialer = Dialer::new(vec![addr(1)], 1, LONGEST, start);
        let known = vec![(a, vec![addr(2)]), (b, vec![addr(3)])];
        let with_a = HashSet::from([a]);
        assert!(dialer.due(start, &with_a, known.clone()).is_empty(), "the target of one is met");
        let mut lonely = Dialer::new(vec![addr(1)], 2, LONGEST, start);
        let dials = lonely.due(start, &with_a, known.clone());
        assert_eq!(dials, vec![Dial::Known(b, vec![addr(3)])], "no bootstrap while a fog node is connected");
        lonely.connected(&b, start);
        let dials = lonely.due(start, &with_a, known);
        assert_eq!(dials, vec![Dial::Known(b, vec![addr(3)])], "a lost peer is dialled again at once");
    }
}
