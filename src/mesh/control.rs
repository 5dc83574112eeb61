//! Admin control: signed commands and the replicated control state (policy, manual blocks,
//! payments).
//!
//! Admins sign commands with an ed25519 key; nodes apply only commands signed by a key in their
//! configuration. The state is one last-writer-wins register per subject (the policy; each
//! meter's manual block; each meter's payments), ordered by the admin's timestamp and then the
//! signature bytes, so every node that has seen the same commands holds the same state,
//! whatever the order they arrived in (by the asked node, by gossip, or by sync).

use std::collections::{BTreeMap, HashMap};

use hydromesh_proto::control::{Action, Command, Policy, SignedCommand, SIGNING_CONTEXT};
use hydromesh_proto::query::PolicyOrigin;
use hydromesh_proto::summary::CommandVersion;
use hydromesh_proto::{limits, MeterId};
use libp2p::identity::ed25519;

use crate::keys::to_hex;

/// Why a command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The command does not decode.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The signature does not match the key.
    #[error("the command's signature does not verify")]
    Signature,
    /// The key is not one this node trusts.
    #[error("the command is signed by admin key {0}, which this node does not trust (start nodes with --admin-pubkey)")]
    Untrusted(String),
    /// The command asks for something impossible.
    #[error("{0}")]
    Invalid(String),
}

/// Signs a command with an admin key.
pub fn sign(key: &ed25519::Keypair, command: &Command) -> Result<SignedCommand, ControlError> {
    let payload = hydromesh_proto::encode(command).map_err(|e| ControlError::Malformed(e.to_string()))?;
    let signature = key.sign(&[SIGNING_CONTEXT, &payload].concat());
    Ok(SignedCommand { payload, admin_key: key.public().to_bytes().to_vec(), signature })
}

/// Checks a signed command against the trusted keys, and that it makes sense.
pub fn verify(signed: &SignedCommand, trusted: &[ed25519::PublicKey]) -> Result<Command, ControlError> {
    let key = ed25519::PublicKey::try_from_bytes(&signed.admin_key)
        .map_err(|_| ControlError::Malformed("invalid admin key".into()))?;
    // Trust first: an untrusted key costs no signature check (a peer cannot make us burn CPU).
    if !trusted.contains(&key) {
        return Err(ControlError::Untrusted(to_hex(&signed.admin_key)));
    }
    if !key.verify(&[SIGNING_CONTEXT, &signed.payload].concat(), &signed.signature) {
        return Err(ControlError::Signature);
    }
    let command: Command = hydromesh_proto::decode(&signed.payload, limits::MAX_COMMAND_BYTES)
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    match &command.action {
        Action::Policy(policy) => {
            if let Some(problem) = policy.problem() {
                return Err(ControlError::Invalid(problem));
            }
        }
        Action::Block { reason, .. } if reason.len() > limits::MAX_REASON_BYTES => {
            return Err(ControlError::Invalid(format!(
                "reason longer than {} bytes",
                limits::MAX_REASON_BYTES
            )));
        }
        _ => {}
    }
    Ok(command)
}

/// The subject a command writes: commands on the same subject replace each other.
pub fn subject(action: &Action) -> String {
    match action {
        Action::Policy(_) => "policy".into(),
        Action::Block { meter, .. } | Action::Unblock { meter } => format!("block/{meter}"),
        Action::Paid { meter } => format!("paid/{meter}"),
    }
}

/// The meter a command is about, if any.
pub fn meter_of(action: &Action) -> Option<MeterId> {
    match action {
        Action::Policy(_) => None,
        Action::Block { meter, .. } | Action::Unblock { meter } | Action::Paid { meter } => Some(*meter),
    }
}

/// A command in words, for logs and answers.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Block { meter, reason } => format!("block meter {meter} ({reason})"),
        Action::Unblock { meter } => format!("unblock meter {meter}"),
        Action::Paid { meter } => format!("payment of meter {meter}"),
        Action::Policy(policy) => format!(
            "policy: period {}, cap {}, above average {}",
            humantime::format_duration(std::time::Duration::from_millis(policy.period_ms)),
            policy
                .cap_l
                .map_or_else(|| "none".into(), |cap| format!("{} m³", crate::domain::cubic_metres(cap))),
            policy
                .above_average_permille
                .map_or_else(|| "none".into(), |p| format!("{}.{:03} ×", p / 1000, p % 1000)),
        ),
    }
}

/// What applying a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It is now in force.
    Newer,
    /// A later command on the same subject is in force (or this very one already was).
    Superseded,
}

#[derive(Clone, Debug)]
struct Entry {
    command: Command,
    signed: SignedCommand,
}

impl Entry {
    fn order(&self) -> (u64, &[u8]) {
        (self.command.issued_at_ms, &self.signed.signature)
    }

    /// The first 8 bytes of the signature: what a digest carries of [`Entry::order`].
    fn tag(&self) -> u64 {
        signature_tag(&self.signed.signature)
    }
}

/// The first 8 bytes of a signature, big endian (fewer are zero-padded), so that tags order as
/// the signatures do.
fn signature_tag(signature: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = signature.len().min(8);
    bytes[..n].copy_from_slice(&signature[..n]);
    u64::from_be_bytes(bytes)
}

/// The commands in force, one per subject.
#[derive(Clone, Debug, Default)]
pub struct ControlState {
    entries: BTreeMap<String, Entry>,
}

impl ControlState {
    /// Applies a verified command, last writer wins.
    pub fn apply(&mut self, command: Command, signed: SignedCommand) -> Applied {
        let new = Entry { command, signed };
        let subject = subject(&new.command.action);
        match self.entries.get(&subject) {
            Some(current) if current.order() >= new.order() => Applied::Superseded,
            _ => {
                self.entries.insert(subject, new);
                Applied::Newer
            }
        }
    }

    /// Every command in force, for sync.
    pub fn signed(&self) -> Vec<SignedCommand> {
        self.entries.values().map(|entry| entry.signed.clone()).collect()
    }

    /// Per subject, the version of the command in force.
    pub fn versions(&self) -> Vec<CommandVersion> {
        self.entries
            .iter()
            .map(|(subject, entry)| CommandVersion {
                subject: subject.clone(),
                issued_at_ms: entry.command.issued_at_ms,
                tag: entry.tag(),
            })
            .collect()
    }

    /// The commands in force newer than `versions` says (per subject: issued later, or the
    /// same ms with a higher signature tag; a subject it lacks counts as older).
    pub fn newer_than<'a>(
        &'a self,
        versions: &'a HashMap<&str, (u64, u64)>,
    ) -> impl Iterator<Item = &'a SignedCommand> {
        self.entries.iter().filter_map(move |(subject, entry)| {
            let held = versions.get(subject.as_str()).copied();
            held.is_none_or(|held| held < (entry.command.issued_at_ms, entry.tag())).then_some(&entry.signed)
        })
    }

    /// Whether `versions` holds a command newer than the one in force on its subject.
    pub fn is_behind(&self, versions: &HashMap<&str, (u64, u64)>) -> bool {
        versions.iter().any(|(subject, held)| {
            self.entries.get(*subject).is_none_or(|entry| (entry.command.issued_at_ms, entry.tag()) < *held)
        })
    }

    /// The policy in force and who set it (the default policy when none was set).
    pub fn policy(&self) -> (Policy, Option<PolicyOrigin>) {
        match self.entries.get("policy") {
            Some(Entry { command: Command { issued_at_ms, action: Action::Policy(policy) }, signed }) => (
                *policy,
                Some(PolicyOrigin { admin: to_hex(&signed.admin_key), issued_at_ms: *issued_at_ms }),
            ),
            _ => (Policy::default(), None),
        }
    }

    /// Manual blocks in force: meter → (reason, since).
    pub fn manual_blocks(&self) -> BTreeMap<MeterId, (String, u64)> {
        self.entries
            .values()
            .filter_map(|entry| match &entry.command.action {
                Action::Block { meter, reason } => {
                    Some((*meter, (reason.clone(), entry.command.issued_at_ms)))
                }
                _ => None,
            })
            .collect()
    }

    /// Per meter, the time through which its bills are paid.
    pub fn paid_through(&self) -> BTreeMap<MeterId, u64> {
        self.entries
            .values()
            .filter_map(|entry| match entry.command.action {
                Action::Paid { meter } => Some((meter, entry.command.issued_at_ms)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(issued_at_ms: u64, action: Action) -> Command {
        Command { issued_at_ms, action }
    }

    #[test]
    fn only_trusted_valid_signatures_pass() {
        let admin = ed25519::Keypair::generate();
        let stranger = ed25519::Keypair::generate();
        let trusted = [admin.public()];
        let block = command(5, Action::Block { meter: 7.into(), reason: "unpaid".into() });
        let signed = sign(&admin, &block).expect("sign");
        assert_eq!(verify(&signed, &trusted), Ok(block.clone()));
        let foreign = sign(&stranger, &block).expect("sign");
        assert!(matches!(verify(&foreign, &trusted), Err(ControlError::Untrusted(_))));
        let mut forged = signed.clone();
        forged.admin_key = stranger.public().to_bytes().to_vec();
        assert_eq!(verify(&forged, &[stranger.public()]), Err(ControlError::Signature));
        let absurd = command(5, Action::Policy(Policy { period_ms: 1, ..Policy::default() }));
        let signed = sign(&admin, &absurd).expect("sign");
        assert!(matches!(verify(&signed, &trusted), Err(ControlError::Invalid(_))));
    }

    #[test]
    fn last_writer_wins_in_any_order() {
        let admin = ed25519::Keypair::generate();
        let commands: Vec<Command> = vec![
            command(10, Action::Block { meter: 7.into(), reason: "a".into() }),
            command(20, Action::Unblock { meter: 7.into() }),
            command(15, Action::Block { meter: 7.into(), reason: "b".into() }),
            command(30, Action::Policy(Policy { cap_l: Some(9), ..Policy::default() })),
            command(25, Action::Policy(Policy::default())),
        ];
        let signed: Vec<_> = commands.iter().map(|c| sign(&admin, c).expect("sign")).collect();
        for order in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            let mut state = ControlState::default();
            for i in order {
                state.apply(commands[i].clone(), signed[i].clone());
            }
            assert!(state.manual_blocks().is_empty(), "the unblock at 20 wins");
            assert_eq!(state.policy().0.cap_l, Some(9));
            assert_eq!(state.signed().len(), 2);
        }
        let mut state = ControlState::default();
        assert_eq!(state.apply(commands[0].clone(), signed[0].clone()), Applied::Newer);
        assert_eq!(state.apply(commands[0].clone(), signed[0].clone()), Applied::Superseded);
    }
}
