//! The event loop's water-rules part: admin commands (verified, applied last-writer-wins,
//! spread by gossip and sync), the inputs of rationing, blocked meters and alerts across the
//! mesh, bills, and live follow of one meter.

use hydromesh_proto::control::{Action, Command};
use hydromesh_proto::query::{
    AlertEntry, AlertsAnswer, Bill, BlockedAnswer, BlockedEntry, LocalMeter, MeterStatus,
};
use hydromesh_proto::summary::AlertKind;
use libp2p::gossipsub::{IdentTopic, MessageAcceptance};
use libp2p::identity::ed25519;

use super::*;
use crate::control::{self, Applied};

/// How long a home holds a follow request open before answering it empty.
const FOLLOW_WAIT: Duration = Duration::from_secs(5);
/// How long a proxying node waits for the home's answer to a follow request.
const FOLLOW_ASK_TIMEOUT: Duration = Duration::from_secs(8);
/// How far ahead of this node's clock an admin's timestamp may be.
const MAX_ADMIN_CLOCK_AHEAD_MS: u64 = 5 * 60_000;

/// The admin command topic.
pub fn control_topic() -> IdentTopic {
    IdentTopic::new(protocols::CONTROL_TOPIC)
}

/// The control state saved on disk, keeping only commands of keys still trusted.
pub fn restore_control(store: &Store, trusted: &[ed25519::PublicKey]) -> Result<ControlState, NodeError> {
    let mut state = ControlState::default();
    for bytes in store.commands()? {
        let restored = hydromesh_proto::decode::<SignedCommand>(&bytes, limits::MAX_COMMAND_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|signed| Ok((control::verify(&signed, trusted).map_err(|e| e.to_string())?, signed)));
        match restored {
            Ok((command, signed)) => {
                state.apply(command, signed);
            }
            Err(error) => tracing::warn!(%error, "not restoring a saved admin command"),
        }
    }
    Ok(state)
}

/// The rationing inputs for the control state and the mesh-wide average.
pub fn rationing_inputs(config: &Config, control: &ControlState, average_l: Option<f64>) -> RationingInputs {
    RationingInputs {
        policy: control.policy().0,
        average_l,
        manual: control.manual_blocks(),
        paid_through_ms: control.paid_through(),
        debt_grace_ms: config.debt_grace.as_millis() as u64,
        tariff: config.tariff.clone(),
    }
}

/// A verified admin command to apply once its meter was found.
pub struct Apply {
    command: Command,
    signed: SignedCommand,
    reply: oneshot::Sender<query::Response>,
}

/// What a node knows of its own meters, detached from the event loop (for blocking work).
pub struct LocalView {
    store: Arc<Store>,
    state: Arc<LocalState>,
    inputs: Arc<RationingInputs>,
    home: String,
}

impl LocalView {
    /// The meter's readings and status, if this node holds it.
    pub fn meter(
        &self,
        meter: MeterId,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<Option<LocalMeter>, StoreError> {
        let Some(history) = self.store.meter_history(meter, from_ms, to_ms, limits::MAX_HISTORY_READINGS)?
        else {
            return Ok(None);
        };
        let status = MeterStatus {
            blocked: self.state.blocked.get(&meter).cloned(),
            alerts: self.store.alerts(meter),
            bill: self.bill(meter, None)?,
        };
        Ok(Some(LocalMeter { history, status }))
    }

    /// The meter's bill for the period holding `at_ms` (default: now), if this node holds it.
    pub fn bill(&self, meter: MeterId, at_ms: Option<u64>) -> Result<Option<Bill>, StoreError> {
        if !self.store.holds(meter) {
            return Ok(None);
        }
        let policy = self.inputs.policy;
        let period_start_ms = policy.period_start(at_ms.unwrap_or_else(now_ms));
        let period_end_ms = period_start_ms.saturating_add(policy.period_ms);
        let consumption_l = self.store.window_consumption(meter, period_start_ms, period_end_ms)?;
        Ok(Some(Bill {
            meter,
            period_start_ms,
            period_end_ms,
            consumption_l,
            amount_cents: self.inputs.tariff.amount_cents(consumption_l),
            currency: self.inputs.tariff.currency.clone(),
            paid: self.inputs.paid_through_ms.get(&meter).is_some_and(|through| *through >= period_end_ms),
            home: self.home.clone(),
        }))
    }
}

impl EventLoop {
    pub(super) fn local_view(&self) -> LocalView {
        LocalView {
            store: self.store.clone(),
            state: self.local_state.borrow().clone(),
            inputs: self.inputs.borrow().clone(),
            home: self.peer_id.to_string(),
        }
    }

    /// Recomputes the rationing inputs; when they changed, every meter is judged again.
    pub(super) fn update_inputs(&mut self) {
        let policy = self.control.policy().0;
        // Only the above-average rule needs the average: without it, a new summary changes nothing.
        let average = policy
            .above_average_permille
            .and_then(|_| self.view.period_average(policy.period_start(now_ms())));
        let inputs = rationing_inputs(&self.config, &self.control, average);
        let changed = self.inputs.send_if_modified(|current| {
            let changed = **current != inputs;
            if changed {
                *current = Arc::new(inputs);
            }
            changed
        });
        if changed {
            self.reevaluate();
        }
    }

    /// Asks the pipeline to judge every meter again (if its queue is full, the pipeline sees
    /// the changed inputs at its next batch anyway).
    pub(super) fn reevaluate(&self) {
        let _ = self.pipeline.jobs.try_send(Job::Reevaluate);
    }

    pub(super) fn blocked_answer(&self, now: Instant, now_ms: u64) -> BlockedAnswer {
        let mut blocked: Vec<BlockedEntry> = self
            .view
            .summaries(now)
            .flat_map(|(summary, _)| {
                summary
                    .blocked
                    .iter()
                    .map(|b| BlockedEntry { blocked: b.clone(), home: summary.origin.clone() })
            })
            .collect();
        blocked.sort_by(|a, b| (a.blocked.meter, &a.home).cmp(&(b.blocked.meter, &b.home)));
        blocked.dedup_by_key(|entry| entry.blocked.meter);
        BlockedAnswer { blocked, coverage: self.view.coverage(now, now_ms) }
    }

    pub(super) fn alerts_answer(&self, kind: Option<AlertKind>, now: Instant, now_ms: u64) -> AlertsAnswer {
        let mut alerts: Vec<AlertEntry> = self
            .view
            .summaries(now)
            .flat_map(|(summary, _)| {
                summary
                    .alerts
                    .iter()
                    .filter(|alert| kind.is_none_or(|kind| alert.kind == kind))
                    .map(|alert| AlertEntry { alert: *alert, home: summary.origin.clone() })
            })
            .collect();
        alerts.sort_by_key(|entry| (entry.alert.meter, entry.alert.kind));
        alerts.dedup_by_key(|entry| (entry.alert.meter, entry.alert.kind));
        AlertsAnswer { alerts, coverage: self.view.coverage(now, now_ms) }
    }

    /// An admin command from a client: verified here; applied once its meter is known.
    pub(super) fn admin(
        &mut self,
        signed: SignedCommand,
    ) -> Result<BoxFuture<'static, query::Response>, String> {
        let command = control::verify(&signed, &self.config.admin_keys).map_err(|e| e.to_string())?;
        if command.issued_at_ms > now_ms() + MAX_ADMIN_CLOCK_AHEAD_MS {
            return Err("the command's time is more than 5 minutes ahead of this node's clock: check the admin machine's clock".into());
        }
        let Some(meter) = control::meter_of(&command.action).filter(|meter| !self.store.holds(*meter)) else {
            let response = self.apply_control(command, signed, true);
            return Ok(futures::future::ready(response).boxed());
        };
        let homes: Vec<_> =
            self.view.homes_of(meter).into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        if homes.is_empty() {
            return Err(format!("meter {meter} is unknown: no fog node holds readings of it"));
        }
        let asker = self.asker();
        Ok(async move {
            let answers = join_all(homes.iter().map(|(peer, addrs)| {
                asker.ask(*peer, addrs.clone(), query::Request::LocalBill { meter, period_start_ms: None })
            }))
            .await;
            if !answers.iter().any(|answer| matches!(answer, Ok(query::Response::Bill(Some(_))))) {
                return query::Response::Error(format!(
                    "meter {meter} is unknown: no fog node holds readings of it"
                ));
            }
            let (reply, response) = oneshot::channel();
            if asker.0.send(Internal::Apply(Apply { command, signed, reply })).await.is_err() {
                return query::Response::Error("node is stopping".into());
            }
            response.await.unwrap_or_else(|_| query::Response::Error("node is stopping".into()))
        }
        .boxed())
    }

    pub(super) fn on_apply(&mut self, apply: Apply) {
        let response = self.apply_control(apply.command, apply.signed, true);
        let _ = apply.reply.send(response);
    }

    /// Applies a verified command; when it is new, saves it, spreads it (if asked) and judges
    /// every meter again.
    fn apply_control(&mut self, command: Command, signed: SignedCommand, publish: bool) -> query::Response {
        let what = describe(&command.action);
        let subject = control::subject(&command.action);
        if self.control.apply(command, signed.clone()) == Applied::Superseded {
            return query::Response::Error(format!("{what}: a command issued later is already in force"));
        }
        tracing::info!(command = %what, "admin command applied");
        match hydromesh_proto::encode(&signed) {
            Ok(bytes) => {
                if let Err(error) = self.store.save_command(&subject, &bytes) {
                    tracing::error!(%error, "cannot save an admin command");
                }
                if publish {
                    match self.swarm.behaviour_mut().gossipsub.publish(control_topic(), bytes) {
                        Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                        Err(error) => tracing::warn!(%error, "cannot publish an admin command"),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode an admin command"),
        }
        self.update_inputs();
        self.reevaluate();
        query::Response::Applied(format!("{what}: applied, and spreading to every node"))
    }

    pub(super) fn on_control_message(&mut self, source: PeerId, data: &[u8]) -> MessageAcceptance {
        let verified = hydromesh_proto::decode::<SignedCommand>(data, limits::MAX_COMMAND_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                Ok((control::verify(&signed, &self.config.admin_keys).map_err(|e| e.to_string())?, signed))
            });
        match verified {
            Ok((command, signed)) => match self.apply_control(command, signed, false) {
                query::Response::Applied(_) => MessageAcceptance::Accept,
                _ => MessageAcceptance::Ignore,
            },
            Err(error) => {
                tracing::warn!(peer = %source, %error, "refused a gossiped admin command");
                MessageAcceptance::Reject
            }
        }
    }

    pub(super) fn merge_commands(&mut self, from: PeerId, commands: Vec<SignedCommand>) {
        for signed in commands {
            match control::verify(&signed, &self.config.admin_keys) {
                Ok(command) => {
                    // Older commands than those in force are superseded and change nothing.
                    self.apply_control(command, signed, false);
                }
                Err(error) => {
                    tracing::debug!(peer = %from, %error, "not taking an admin command from sync")
                }
            }
        }
    }

    /// A meter's bill, from this node or routed to its home.
    pub(super) fn bill_from_home(
        &self,
        meter: MeterId,
        at_ms: Option<u64>,
    ) -> BoxFuture<'static, query::Response> {
        let local_view = self.local_view();
        if self.store.holds(meter) {
            return blocking(move || local_view.bill(meter, at_ms))
                .map(|bill| bill.map_or_else(query::Response::Error, query::Response::Bill))
                .boxed();
        }
        let asker = self.asker();
        let homes: Vec<_> =
            self.view.homes_of(meter).into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        async move {
            let answers = join_all(homes.iter().map(|(peer, addrs)| {
                asker.ask(*peer, addrs.clone(), query::Request::LocalBill { meter, period_start_ms: at_ms })
            }))
            .await;
            answers
                .into_iter()
                .find_map(|answer| match answer {
                    Ok(query::Response::Bill(Some(bill))) => Some(query::Response::Bill(Some(bill))),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    query::Response::NotFound(format!("meter {meter} is not held by any known fog node"))
                })
        }
        .boxed()
    }

    /// Follows a meter: answered by this node if it is the home, else proxied to the home.
    pub(super) fn follow_from_home(
        &self,
        meter: MeterId,
        after_ts_ms: Option<u64>,
    ) -> BoxFuture<'static, query::Response> {
        if self.store.holds(meter) {
            return self.local_follow(meter, after_ts_ms);
        }
        let asker = self.asker();
        let homes: Vec<_> =
            self.view.homes_of(meter).into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        async move {
            let answers = join_all(homes.iter().map(|(peer, addrs)| {
                let request = query::Request::LocalFollow { meter, after_ts_ms };
                asker.ask_within(*peer, addrs.clone(), request, FOLLOW_ASK_TIMEOUT)
            }))
            .await;
            answers
                .into_iter()
                .find_map(|answer| match answer {
                    Ok(readings @ query::Response::Readings { .. }) => Some(readings),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    query::Response::NotFound(format!("meter {meter} is not held by any known fog node"))
                })
        }
        .boxed()
    }

    /// A long poll on this node's readings of a meter: answered as soon as a reading after
    /// `after_ts_ms` is stored, or empty after [`FOLLOW_WAIT`].
    pub(super) fn local_follow(
        &self,
        meter: MeterId,
        after_ts_ms: Option<u64>,
    ) -> BoxFuture<'static, query::Response> {
        // Subscribe before reading the store, so no reading stored in between is missed.
        let mut accepted = self.accepted.subscribe();
        let store = self.store.clone();
        let home = self.peer_id.to_string();
        async move {
            let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
            let stored = {
                let store = store.clone();
                blocking(move || match after_ts_ms {
                    Some(after) => store.meter_history(meter, Some(after.saturating_add(1)), None, 1000),
                    None => store.meter_history(meter, None, None, 1),
                })
                .await
            };
            let readings = match stored {
                Ok(Some(history)) => history.readings,
                Ok(None) => return query::Response::NotFound(format!("meter {meter} is not held here")),
                Err(error) => return query::Response::Error(error),
            };
            if !readings.is_empty() || after_ts_ms.is_none() {
                return query::Response::Readings { home, readings };
            }
            let after = after_ts_ms.unwrap_or(0);
            loop {
                tokio::select! {
                    batch = accepted.recv() => match batch {
                        Ok(batch) => {
                            let mut readings: Vec<Reading> =
                                batch.iter().filter(|r| r.meter == meter && r.ts_ms > after).copied().collect();
                            if !readings.is_empty() {
                                readings.sort_by_key(|r| r.ts_ms);
                                return query::Response::Readings { home, readings };
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Too far behind the stream: read what was stored instead.
                            let history = blocking(move || store.meter_history(meter, Some(after.saturating_add(1)), None, 1000)).await;
                            let readings = history.ok().flatten().map(|h| h.readings).unwrap_or_default();
                            return query::Response::Readings { home, readings };
                        }
                        Err(broadcast::error::RecvError::Closed) => return query::Response::Readings { home, readings: Vec::new() },
                    },
                    () = tokio::time::sleep_until(deadline) => return query::Response::Readings { home, readings: Vec::new() },
                }
            }
        }
        .boxed()
    }
}

/// An admin command in words, for logs and answers.
fn describe(action: &Action) -> String {
    match action {
        Action::Block { meter, reason } => format!("block meter {meter} ({reason})"),
        Action::Unblock { meter } => format!("unblock meter {meter}"),
        Action::Paid { meter } => format!("payment of meter {meter}"),
        Action::Policy(policy) => format!(
            "policy: period {}, cap {}, above average {}",
            humantime::format_duration(Duration::from_millis(policy.period_ms)),
            policy.cap_l.map_or_else(|| "none".into(), |cap| format!("{cap} L")),
            policy
                .above_average_permille
                .map_or_else(|| "none".into(), |p| format!("{}.{:03} ×", p / 1000, p % 1000)),
        ),
    }
}
