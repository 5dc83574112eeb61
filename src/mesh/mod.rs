//! The mesh's replicated state as one node holds it: the merged view of every fog node's summary
//! and the admin commands in force. Both are state-based CRDTs (last writer wins per origin, and
//! per command subject), so gossip, sync and restarts may deliver in any order, any number of
//! times. [`Mesh`] is their one owner; it knows nothing of the network or the disk.
//!
//! - [`view`]: the merged view and the global answers.
//! - [`summary`]: this node's summary (built from its local snapshot), signatures and checks.
//! - [`control`]: signed admin commands and the control state.

pub mod control;
mod index;
pub mod summary;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydromesh_proto::control::{Command, Policy, SignedCommand};
use hydromesh_proto::query::PolicyOrigin;
use hydromesh_proto::summary::{
    Digest, MeterFilter, NodeSummary, OriginFilter, SignedSummary, SummaryVersion, SyncResponse,
};
use libp2p::identity::ed25519;
use libp2p::PeerId;

use crate::domain::rules::{RationingInputs, Tariff};
pub use control::{Applied, ControlError, ControlState};
pub use summary::SummaryError;
pub use view::{Expanded, Liveness, Merged, View};

/// How far ahead of this node's clock an admin's timestamp may be.
pub const MAX_ADMIN_CLOCK_AHEAD_MS: u64 = 5 * 60_000;

/// What the mesh state is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A node not heard from within this is reported stale.
    pub stale_after: Duration,
    /// The only fog nodes whose summaries are merged; empty: any.
    pub fog_nodes: Vec<PeerId>,
    /// Admin keys whose commands are applied.
    pub admin_keys: Vec<ed25519::PublicKey>,
    /// How long after a period ends its bill must be paid.
    pub debt_grace: Duration,
    /// The tariff bills are computed with.
    pub tariff: Tariff,
}

/// The replicated state at one node.
pub struct Mesh {
    view: View,
    control: ControlState,
    settings: Settings,
}

impl Mesh {
    /// The state of node `local` before it has heard anything.
    pub fn new(local: PeerId, settings: Settings) -> Self {
        let mut view = View::new(local, settings.stale_after);
        if !settings.fog_nodes.is_empty() {
            view.restrict_to(settings.fog_nodes.iter().copied());
        }
        Mesh { view, control: ControlState::default(), settings }
    }

    /// The merged view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Merges a signed summary heard at `now` (or restored from disk when `restored`).
    pub fn merge_summary(
        &mut self,
        signed: SignedSummary,
        now: Instant,
        restored: bool,
    ) -> Result<Merged, SummaryError> {
        self.view.merge(signed, now, restored)
    }

    /// Takes a verified liveness message of `origin` (see [`View::alive`]).
    pub fn alive(
        &mut self,
        origin: PeerId,
        version: u64,
        at_ms: u64,
        now: Instant,
    ) -> Result<Liveness, SummaryError> {
        self.view.alive(origin, version, at_ms, now)
    }

    /// Puts this node's own latest summary, and the filter it names, in the view.
    pub fn set_local(
        &mut self,
        summary: NodeSummary,
        signed: SignedSummary,
        filter: Arc<MeterFilter>,
        now: Instant,
    ) {
        self.view.set_local(summary, signed, filter, now);
    }

    /// Forgets fog nodes not heard from within `forget_after`; returns them.
    pub fn forget_older_than(&mut self, forget_after: Duration, now: Instant) -> Vec<PeerId> {
        self.view.forget_older_than(forget_after, now)
    }

    /// Checks a command against the trusted keys; one from a client (not relayed) must also not
    /// be dated ahead of this node's clock.
    pub fn verify_command(
        &self,
        signed: &SignedCommand,
        from_client_at_ms: Option<u64>,
    ) -> Result<Command, ControlError> {
        let command = control::verify(signed, &self.settings.admin_keys)?;
        if from_client_at_ms
            .is_some_and(|now_ms| command.issued_at_ms > now_ms.saturating_add(MAX_ADMIN_CLOCK_AHEAD_MS))
        {
            return Err(ControlError::Invalid(
                "the command's time is more than 5 minutes ahead of this node's clock: check the admin machine's clock".into(),
            ));
        }
        Ok(command)
    }

    /// Applies a verified command, last writer wins per subject.
    pub fn apply_command(&mut self, command: Command, signed: SignedCommand) -> Applied {
        self.control.apply(command, signed)
    }

    /// Every command in force.
    pub fn signed_commands(&self) -> Vec<SignedCommand> {
        self.control.signed()
    }

    /// What this node holds, without the things themselves: what it asks a peer's sync with.
    pub fn digest(&self) -> Digest {
        Digest {
            summaries: self
                .view
                .versions()
                .map(|(origin, version, has_filter)| SummaryVersion {
                    origin: origin.to_bytes(),
                    version,
                    has_filter,
                })
                .collect(),
            commands: self.control.versions(),
        }
    }

    /// The answer to a peer's sync: what this node holds newer than the peer's `digest`, up to
    /// `budget` bytes (commands first: they are small and decide rationing; then summaries with
    /// the filters they name); and whether the digest holds anything newer than this node (then
    /// this node should pull from the peer).
    pub fn answer_sync(&self, digest: &Digest, budget: usize) -> (SyncResponse, bool) {
        let summaries: HashMap<PeerId, (u64, bool)> = digest
            .summaries
            .iter()
            .take(view::MAX_NODES)
            .filter_map(|held| {
                Some((PeerId::from_bytes(&held.origin).ok()?, (held.version, held.has_filter)))
            })
            .collect();
        let commands: HashMap<&str, (u64, u64)> = digest
            .commands
            .iter()
            .map(|held| (held.subject.as_str(), (held.issued_at_ms, held.tag)))
            .collect();
        let mut response =
            SyncResponse { summaries: Vec::new(), commands: Vec::new(), filters: Vec::new(), more: false };
        let mut left = budget;
        let mut fits = |bytes: usize| {
            let fits = bytes <= left;
            left = left.saturating_sub(bytes);
            fits
        };
        for signed in self.control.newer_than(&commands) {
            if !fits(signed.payload.len() + signed.admin_key.len() + signed.signature.len() + 16) {
                response.more = true;
                break;
            }
            response.commands.push(signed.clone());
        }
        for (origin, signed, filter) in self.view.newer_than(&summaries) {
            let bytes = signed.map_or(0, |s| s.payload.len() + s.public_key.len() + s.signature.len() + 16)
                + filter.map_or(0, |f| f.byte_size() + 48);
            if response.more || !fits(bytes) {
                response.more = true;
                break;
            }
            response.summaries.extend(signed.cloned());
            if let Some(filter) = filter {
                response
                    .filters
                    .push(OriginFilter { origin: origin.to_bytes(), filter: filter.as_ref().clone() });
            }
        }
        let behind = self.view.is_behind(&summaries) || self.control.is_behind(&commands);
        (response, behind)
    }

    /// Takes `origin`'s meter filter if it is the one its summary names; whether it was taken.
    pub fn set_filter(&mut self, origin: &PeerId, filter: MeterFilter) -> bool {
        self.view.set_filter(origin, filter)
    }

    /// The policy in force and who set it.
    pub fn policy(&self) -> (Policy, Option<PolicyOrigin>) {
        self.control.policy()
    }

    /// What rationing at this node needs at `now_ms`: the policy, the exact mesh-wide average
    /// (only when the above-average rule is on), manual blocks, payments, debt grace, tariff.
    pub fn rationing_inputs(&self, now_ms: u64) -> RationingInputs {
        let policy = self.control.policy().0;
        let average_l =
            policy.above_average_permille.and_then(|_| self.view.period_average(policy.period_start(now_ms)));
        RationingInputs {
            policy,
            average_l,
            manual: self.control.manual_blocks(),
            paid_through_ms: self.control.paid_through(),
            debt_grace_ms: self.settings.debt_grace.as_millis() as u64,
            tariff: self.settings.tariff.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use hydromesh_proto::control::Action;
    use hydromesh_proto::MeterId;

    use super::*;

    fn mesh(admin: &ed25519::Keypair) -> Mesh {
        let settings = Settings {
            stale_after: Duration::from_secs(30),
            fog_nodes: Vec::new(),
            admin_keys: vec![admin.public()],
            debt_grace: Duration::from_secs(3600),
            tariff: Tariff::default(),
        };
        Mesh::new(libp2p::identity::Keypair::generate_ed25519().public().to_peer_id(), settings)
    }

    fn signed(admin: &ed25519::Keypair, issued_at_ms: u64, action: Action) -> SignedCommand {
        control::sign(admin, &Command { issued_at_ms, action }).expect("sign")
    }

    #[test]
    fn admin_commands_apply_last_writer_wins_and_feed_rationing() {
        let admin = ed25519::Keypair::generate();
        let mut mesh = mesh(&admin);
        let now_ms = 1_795_000_000_000;
        let block = signed(&admin, now_ms, Action::Block { meter: 7.into(), reason: "leak".into() });
        let command = mesh.verify_command(&block, Some(now_ms)).expect("trusted");
        assert_eq!(mesh.apply_command(command.clone(), block.clone()), Applied::Newer);
        assert_eq!(mesh.apply_command(command, block), Applied::Superseded, "the same command again");
        let inputs = mesh.rationing_inputs(now_ms);
        assert_eq!(inputs.manual.get(&MeterId::from(7)).map(|(reason, _)| reason.as_str()), Some("leak"));
        assert_eq!(inputs.debt_grace_ms, 3_600_000);
        assert_eq!(inputs.average_l, None, "no average without the above-average rule");
        // An older unblock is superseded; a newer one lifts the block.
        let old = signed(&admin, now_ms - 1, Action::Unblock { meter: 7.into() });
        let command = mesh.verify_command(&old, None).expect("trusted");
        assert_eq!(mesh.apply_command(command, old), Applied::Superseded);
        let new = signed(&admin, now_ms + 1, Action::Unblock { meter: 7.into() });
        let command = mesh.verify_command(&new, None).expect("trusted");
        assert_eq!(mesh.apply_command(command, new), Applied::Newer);
        assert!(mesh.rationing_inputs(now_ms).manual.is_empty());
        assert_eq!(mesh.signed_commands().len(), 1, "one subject");
    }

    #[test]
    fn client_commands_from_the_future_and_strangers_are_refused() {
        let admin = ed25519::Keypair::generate();
        let mesh = mesh(&admin);
        let now_ms = 1_795_000_000_000;
        let ahead = signed(&admin, now_ms + MAX_ADMIN_CLOCK_AHEAD_MS + 1, Action::Paid { meter: 1.into() });
        assert!(matches!(mesh.verify_command(&ahead, Some(now_ms)), Err(ControlError::Invalid(_))));
        assert!(mesh.verify_command(&ahead, None).is_ok(), "relayed commands are not judged by our clock");
        let stranger = signed(&ed25519::Keypair::generate(), now_ms, Action::Paid { meter: 1.into() });
        assert!(matches!(mesh.verify_command(&stranger, Some(now_ms)), Err(ControlError::Untrusted(_))));
    }

    #[test]
    fn sync_by_digest_sends_only_what_the_asker_lacks_and_pages() {
        use libp2p::identity::Keypair;

        use super::view::tests::{filter, signed as summary};

        let admin = ed25519::Keypair::generate();
        let (mut a, mut b) = (mesh(&admin), mesh(&admin));
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = Instant::now();
        let versions = |response: &SyncResponse| -> Vec<u64> {
            response.summaries.iter().map(|s| summary::verify(s).expect("verifies").0.version).collect()
        };
        for (mesh, k1_version, k2_version) in [(&mut a, 2, 1), (&mut b, 1, 3)] {
            mesh.merge_summary(summary(&k1, k1_version, vec![]), now, false).expect("merge");
            mesh.merge_summary(summary(&k2, k2_version, vec![]), now, false).expect("merge");
        }
        // Only a holds k2's filter (of the version both hold).
        assert!(a.set_filter(&k2.public().to_peer_id(), filter(&[])));
        let block = signed(&admin, 5, Action::Block { meter: 7.into(), reason: "leak".into() });
        a.apply_command(a.verify_command(&block, None).expect("trusted"), block);

        // a holds k1 v2 and the block newer than b; b holds k2 v3 newer than a. k2's filter
        // named by v1 is no use to b, which holds v3.
        let (to_b, a_behind) = a.answer_sync(&b.digest(), usize::MAX);
        assert_eq!((versions(&to_b), to_b.commands.len(), to_b.more, a_behind), (vec![2], 1, false, true));
        assert!(to_b.filters.is_empty());
        // A peer at a's versions that lacks the filter is sent it.
        let mut lacking = a.digest();
        lacking.summaries.iter_mut().for_each(|held| held.has_filter = false);
        let (filters, _) = a.answer_sync(&lacking, usize::MAX);
        assert_eq!((filters.summaries.len(), filters.filters.len()), (0, 1), "the filter alone");
        let (to_a, b_behind) = b.answer_sync(&a.digest(), usize::MAX);
        assert_eq!((versions(&to_a), to_a.commands.len(), b_behind), (vec![3], 0, true));

        // A budget smaller than what is newer: what fits, and "more".
        let (paged, _) = a.answer_sync(&Digest::default(), 1);
        assert!(paged.more && paged.summaries.is_empty() && paged.commands.is_empty());

        // After both merge what they were sent, they are equal: nothing to send, nobody behind.
        for signed in to_b.summaries {
            b.merge_summary(signed, now, false).expect("merge");
        }
        for signed in to_b.commands {
            b.apply_command(b.verify_command(&signed, None).expect("trusted"), signed);
        }
        for signed in to_a.summaries {
            a.merge_summary(signed, now, false).expect("merge");
        }
        // Only k2's filter is left, which b lacks (k2's v3 names the same one): b is behind.
        let (_, b_behind) = b.answer_sync(&a.digest(), usize::MAX);
        let (to_b, _) = a.answer_sync(&b.digest(), usize::MAX);
        assert!(b_behind && to_b.summaries.is_empty() && to_b.commands.is_empty());
        for OriginFilter { origin, filter } in to_b.filters {
            assert!(b.set_filter(&PeerId::from_bytes(&origin).expect("peer id"), filter));
        }
        let (nothing, behind) = a.answer_sync(&b.digest(), usize::MAX);
        assert!(nothing.summaries.is_empty() && nothing.filters.is_empty() && !behind);
        let (nothing, behind) = b.answer_sync(&a.digest(), usize::MAX);
        assert!(nothing.summaries.is_empty() && nothing.commands.is_empty() && !behind);
    }
}
