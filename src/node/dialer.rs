//! Staying in the mesh, the way a random overlay stays connected: every node keeps `target`
//! connections that it dialled itself, to fog nodes picked at random among those it knows (its
//! view, restored from disk after a restart), each with its own exponential backoff; it dials
//! its bootstrap addresses while it has no fog node at all. Connections other nodes opened to
//! it do not count: were they to, a group of nodes that happened to dial one another first
//! would be content with each other and never reach out. Random picks from whole views make
//! the dialled connections a random graph, connected with high probability.
//!
//! Two more rules keep it connected when views are partial or the network was cut:
//! - a node whose view names fog nodes it has not heard from dials one of them now and then
//!   (a feeler): after a partition heals, each side's dialled connections all lie on its own
//!   side, and without feelers nothing would cross;
//! - a node over its connection budget closes spare connections that others opened to it,
//!   picked at random (never the same ones on every node), and the nodes that lose them dial
//!   someone else.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// First wait before dialling the same peer again.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The peer id at the end of `addr`, if any.
fn named_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` without a trailing `/p2p/…`.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut bare = addr.clone();
    if matches!(bare.iter().last(), Some(Protocol::P2p(_))) {
        bare.pop();
    }
    bare
}

/// A dial to make.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

    fn is_due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    /// Whether a dial is due at `now`; if so, the next one waits twice as long, up to `longest`.
    fn take(&mut self, now: Instant, longest: Duration) -> bool {
        if !self.is_due(now) {
            return false;
        }
        self.next_at = now + self.delay;
        self.delay = (self.delay * 2).min(longest.max(FIRST_RETRY));
        true
    }
}

/// A bootstrap address, and whether a connection to it was ever made.
struct Bootstrap {
    addr: Multiaddr,
    backoff: Backoff,
    reached: bool,
}

/// Who to dial, and when.
pub struct Dialer {
    target: usize,
    /// Longest wait between two dials of the same peer: a peer cut off and back is dialled
    /// again within it.
    longest: Duration,
    bootstrap: Vec<Bootstrap>,
    known: HashMap<PeerId, Backoff>,
    rng: SplitMix,
}

impl Dialer {
    /// A dialer that keeps `target` dialled fog nodes connected, starting from `bootstrap`,
    /// waiting at most `longest` between two dials of the same peer; `seed` makes its random
    /// picks its own (nodes started together do not pick alike).
    pub fn new(bootstrap: Vec<Multiaddr>, target: usize, longest: Duration, seed: u64, now: Instant) -> Self {
        let bootstrap = bootstrap
            .into_iter()
            .map(|addr| Bootstrap { addr, backoff: Backoff::new(now), reached: false })
            .collect();
        Dialer { target: target.max(1), longest, bootstrap, known: HashMap::new(), rng: SplitMix(seed) }
    }

    /// What to dial at `now`, given the fog nodes connected, how many of them this node
    /// dialled, and the fog nodes known (with their addresses): the bootstrap addresses never
    /// reached (all of them while alone), and known nodes while the target is not met.
    pub fn due(
        &mut self,
        now: Instant,
        connected: &HashSet<PeerId>,
        dialled: usize,
        known: impl IntoIterator<Item = (PeerId, Vec<Multiaddr>)>,
    ) -> Vec<Dial> {
        let mut dials = Vec::new();
        for bootstrap in &mut self.bootstrap {
            // Connected to by the peer it names: reached all the same.
            bootstrap.reached |= named_peer(&bootstrap.addr).is_some_and(|peer| connected.contains(&peer));
            if (connected.is_empty() || !bootstrap.reached) && bootstrap.backoff.take(now, self.longest) {
                dials.push(Dial::Bootstrap(bootstrap.addr.clone()));
            }
        }
        if dialled >= self.target {
            return dials;
        }
        let wanted = self.target - dialled;
        let candidates = known.into_iter().filter(|(peer, _)| !connected.contains(peer));
        dials.extend(
            self.pick(now, candidates, wanted).into_iter().map(|(peer, addrs)| Dial::Known(peer, addrs)),
        );
        dials
    }

    /// A connection this node dialled to `addr` reached `peer`: a bootstrap at that address
    /// (or naming that peer) is reached.
    pub fn reached(&mut self, addr: &Multiaddr, peer: &PeerId) {
        let bare = without_peer(addr);
        for bootstrap in &mut self.bootstrap {
            if named_peer(&bootstrap.addr) == Some(*peer) || without_peer(&bootstrap.addr) == bare {
                bootstrap.reached = true;
            }
        }
    }

    /// A feeler: one of `unheard` (known fog nodes not heard from lately, not connected),
    /// at random among those whose backoff allows.
    pub fn feeler(
        &mut self,
        now: Instant,
        unheard: impl IntoIterator<Item = (PeerId, Vec<Multiaddr>)>,
    ) -> Option<Dial> {
        self.pick(now, unheard, 1).pop().map(|(peer, addrs)| Dial::Known(peer, addrs))
    }

    /// Up to `wanted` of `candidates` with addresses and a dial due, picked at random; their
    /// backoffs are taken.
    fn pick(
        &mut self,
        now: Instant,
        candidates: impl IntoIterator<Item = (PeerId, Vec<Multiaddr>)>,
        wanted: usize,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut due: Vec<(PeerId, Vec<Multiaddr>)> = candidates
            .into_iter()
            .filter(|(peer, addrs)| {
                !addrs.is_empty() && self.known.get(peer).is_none_or(|backoff| backoff.is_due(now))
            })
            .collect();
        self.rng.shuffle(&mut due);
        due.truncate(wanted);
        for (peer, _) in &due {
            self.known.entry(*peer).or_insert_with(|| Backoff::new(now)).take(now, self.longest);
        }
        due
    }

    /// `excess` of `spare` connections to close, picked at random.
    pub fn spare_to_close(&mut self, mut spare: Vec<PeerId>, excess: usize) -> Vec<PeerId> {
        self.rng.shuffle(&mut spare);
        spare.truncate(excess);
        spare
    }

    /// A fog node is connected: the bootstraps reached may be dialled at once when the node is
    /// alone again (those never reached keep their backoff).
    pub fn connected(&mut self, peer: &PeerId, now: Instant) {
        self.known.remove(peer);
        for bootstrap in self.bootstrap.iter_mut().filter(|bootstrap| bootstrap.reached) {
            bootstrap.backoff = Backoff::new(now);
        }
    }

    /// A fog node is no longer connected: it may be dialled again after the first retry wait
    /// (not at once: the node that closed a spare connection would only close it again).
    pub fn lost(&mut self, peer: &PeerId, now: Instant) {
        self.known.insert(*peer, Backoff { next_at: now + FIRST_RETRY, delay: FIRST_RETRY * 2 });
    }
}

/// A small, fast, seedable generator (SplitMix64) for the dialer's random picks.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
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
        let mut dialer = Dialer::new(vec![addr(1)], 4, LONGEST, 1, start);
        let none = HashSet::new();
        let first = dialer.due(start, &none, 0, known.clone());
        assert_eq!(first.len(), 3, "the bootstrap and both known nodes: {first:?}");
        assert!(dialer.due(start + Duration::from_millis(500), &none, 0, known.clone()).is_empty());
        assert_eq!(dialer.due(start + Duration::from_secs(1), &none, 0, known.clone()).len(), 3);
        // The next wait is 2 s: nothing at 2.5 s, everything again at 3 s.
        assert!(dialer.due(start + Duration::from_millis(2500), &none, 0, known.clone()).is_empty());
        assert_eq!(dialer.due(start + Duration::from_secs(3), &none, 0, known.clone()).len(), 3);
        // Waits stop growing at the longest.
        let mut at = start + Duration::from_secs(3);
        for _ in 0..20 {
            at += LONGEST;
            assert_eq!(dialer.due(at, &none, 0, known.clone()).len(), 3);
        }
    }

    #[test]
    fn only_connections_it_dialled_count_towards_its_target() {
        let start = Instant::now();
        let (a, b) = (peer(), peer());
        let known = vec![(a, vec![addr(2)]), (b, vec![addr(3)])];
        let with_a = HashSet::from([a]);
        let mut dialer = Dialer::new(vec![addr(1)], 1, LONGEST, 1, start);
        dialer.reached(&addr(1), &peer());
        assert!(
            dialer.due(start, &with_a, 1, known.clone()).is_empty(),
            "a dialled a: the target of one is met"
        );
        let dials = dialer.due(start, &with_a, 0, known);
        assert_eq!(
            dials,
            vec![Dial::Known(b, vec![addr(3)])],
            "a dialled this node: b is dialled, no bootstrap"
        );
    }

    #[test]
    fn a_bootstrap_is_dialled_until_reached_once_then_only_while_alone() {
        let start = Instant::now();
        let (a, boot) = (peer(), peer());
        let with_a = HashSet::from([a]);
        let bootstrap: Multiaddr = format!("{}/p2p/{boot}", addr(1)).parse().expect("multiaddr");
        let mut dialer = Dialer::new(vec![bootstrap.clone(), addr(2)], 1, LONGEST, 1, start);
        // Connected to another newcomer only, its target met: the bootstraps are still dialled.
        let dials = dialer.due(start, &with_a, 1, Vec::new());
        assert_eq!(dials, vec![Dial::Bootstrap(bootstrap.clone()), Dial::Bootstrap(addr(2))]);
        // One is reached by its peer id (at another address), the other by its address.
        dialer.reached(&addr(7), &boot);
        let later = start + LONGEST;
        assert_eq!(dialer.due(later, &with_a, 1, Vec::new()), vec![Dial::Bootstrap(addr(2))]);
        // A bootstrap whose peer connected to this node is reached too.
        let mut other = Dialer::new(vec![bootstrap.clone()], 1, LONGEST, 1, start);
        assert!(other.due(start, &HashSet::from([boot]), 1, Vec::new()).is_empty());
        dialer.reached(&format!("{}/p2p/{}", addr(2), peer()).parse().expect("multiaddr"), &peer());
        let later = later + LONGEST;
        assert!(dialer.due(later, &with_a, 1, Vec::new()).is_empty(), "both reached");
        assert_eq!(dialer.due(later + LONGEST, &HashSet::new(), 0, Vec::new()).len(), 2, "alone again");
    }

    #[test]
    fn a_lost_peer_is_dialled_again_after_the_first_wait() {
        let start = Instant::now();
        let a = peer();
        let known = vec![(a, vec![addr(2)])];
        let none = HashSet::new();
        let mut dialer = Dialer::new(Vec::new(), 1, LONGEST, 1, start);
        dialer.connected(&a, start);
        let lost_at = start + Duration::from_secs(100);
        dialer.lost(&a, lost_at);
        assert!(dialer.due(lost_at, &none, 0, known.clone()).is_empty(), "not at once");
        let dials = dialer.due(lost_at + FIRST_RETRY, &none, 0, known);
        assert_eq!(dials, vec![Dial::Known(a, vec![addr(2)])]);
    }

    #[test]
    fn picks_are_random_and_each_node_picks_its_own() {
        let start = Instant::now();
        let known: Vec<(PeerId, Vec<Multiaddr>)> = (0..10).map(|i| (peer(), vec![addr(10 + i)])).collect();
        let none = HashSet::new();
        let picked: HashSet<Dial> = (0..30)
            .map(|seed| {
                let mut dialer = Dialer::new(Vec::new(), 1, LONGEST, seed, start);
                dialer.due(start, &none, 0, known.clone()).pop().expect("one dial")
            })
            .collect();
        assert!(picked.len() >= 5, "30 nodes picked only {} of 10 known nodes", picked.len());
        let mut dialer = Dialer::new(Vec::new(), 1, LONGEST, 7, start);
        let mut feelers = HashSet::new();
        while let Some(dial) = dialer.feeler(start, known.clone()) {
            assert!(feelers.insert(dial), "a feeler's backoff keeps it from being picked twice at once");
        }
        assert_eq!(feelers.len(), known.len(), "every unheard node gets its feeler");
    }

    #[test]
    fn spare_connections_to_close_are_picked_at_random() {
        let spare: Vec<PeerId> = (0..8).map(|_| peer()).collect();
        let mut firsts = HashSet::new();
        for seed in 0..20 {
            let closed =
                Dialer::new(Vec::new(), 1, LONGEST, seed, Instant::now()).spare_to_close(spare.clone(), 3);
            assert_eq!(closed.len(), 3);
            assert_eq!(closed.iter().collect::<HashSet<_>>().len(), 3, "three distinct ones");
            assert!(closed.iter().all(|peer| spare.contains(peer)));
            firsts.insert(closed[0]);
        }
        assert!(firsts.len() >= 4, "20 nodes would close the same connections: {}", firsts.len());
    }
}
