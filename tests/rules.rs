//! Water rules across the mesh, in-process: an admin's policy set through one node cuts a meter
//! homed on another, untrusted keys are refused everywhere, a late node enforces the policy,
//! alerts and bills are answered by any node, and a meter is followed through another node.

mod common;

use std::time::Duration;

use common::{eventually, id, now_ms, Mesh, HOUR_MS};
use hydromesh::client::Client;
use hydromesh::sim::{Fleet, Profile};
use hydromesh_proto::control::{Action, BlockReason, Command, Policy};
use hydromesh_proto::ingest::{self, MeterCommand, Outcome, Valve};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::summary::AlertKind;
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::identity::ed25519;

const CONVERGE: Duration = Duration::from_secs(30);

/// A mesh of `n` nodes in a chain, all trusting `admin`.
async fn mesh(n: usize, admin: &ed25519::Keypair) -> Mesh {
    let mut mesh = Mesh::new();
    for i in 0..n {
        let bootstrap = if i == 0 { vec![] } else { vec![mesh.nodes[i - 1].addr.clone()] };
        mesh.start(trusting(&mesh, &format!("n{i}"), bootstrap, admin)).await;
    }
    mesh
}

fn trusting(
    mesh: &Mesh,
    name: &str,
    bootstrap: Vec<libp2p::Multiaddr>,
    admin: &ed25519::Keypair,
) -> hydromesh::Config {
    let mut config = common::config(mesh.root.path().join(name), name, bootstrap);
    config.admin_keys = vec![admin.public()];
    config
}

async fn admin(client: &mut Client, key: &ed25519::Keypair, action: Action) -> Response {
    let command = Command { issued_at_ms: now_ms(), action };
    let signed = hydromesh::mesh::control::sign(key, &command).expect("sign");
    client.query(Request::Admin(signed)).await.expect("admin answer")
}

async fn ingest(client: &mut Client, readings: Vec<Reading>) -> (Vec<Outcome>, Vec<MeterCommand>) {
    match client.ingest(readings).await.expect("ingest") {
        ingest::Response::Done { outcomes, commands } => (outcomes, commands),
        other => panic!("batch not taken: {other:?}"),
    }
}

fn reading(meter: u64, ts_ms: u64, litres: u64) -> Reading {
    Reading { meter: id(meter), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
}

async fn policy_of(mesh: &Mesh, node: usize) -> Policy {
    match mesh.client(node).await.query(Request::Policy).await.expect("policy") {
        Response::Policy(policy, _) => policy,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_through_one_node_cuts_a_meter_homed_on_another() {
    let key = ed25519::Keypair::generate();
    let mut mesh = mesh(3, &key).await;
    let (a, c) = (0, 2);
    let mut on_c = mesh.client(c).await;

    // A simulated meter homed on C, consuming fast.
    let mut fleet = Fleet::new(7, 1, Profile::Fast, 42);
    let start = now_ms() - 48 * HOUR_MS;
    let mut tick = 0;
    let send = |fleet: &mut Fleet, tick: u64| fleet.tick(start + tick * 10 * 60_000);
    let (_, commands) = ingest(&mut on_c, send(&mut fleet, tick)).await;
    assert!(commands.is_empty(), "no policy yet: {commands:?}");

    // The cap: just above what the meter has consumed so far in this period.
    let cap_l = 200;
    let answer = admin(
        &mut mesh.client(a).await,
        &key,
        Action::Policy(Policy { cap_l: Some(cap_l), ..Policy::default() }),
    )
    .await;
    assert!(matches!(answer, Response::Applied(_)), "{answer:?}");
    eventually("C to learn the policy set through A", CONVERGE, || async {
        (policy_of(&mesh, c).await.cap_l == Some(cap_l)).then_some(())
    })
    .await;

    // The meter keeps consuming until the acknowledgement of the reading over the cap closes
    // its valve; from then on its register stands still.
    let mut closed_at = None;
    while closed_at.is_none() {
        tick += 1;
        assert!(tick < 2000, "the meter never crossed the cap");
        let readings = send(&mut fleet, tick);
        let (_, commands) = ingest(&mut on_c, readings.clone()).await;
        fleet.apply_commands(&commands);
        if commands.contains(&MeterCommand { meter: 7.into(), valve: Valve::Closed }) {
            closed_at = Some(readings[0].litres);
        }
    }
    for _ in 0..3 {
        tick += 1;
        let readings = send(&mut fleet, tick);
        assert_eq!(Some(readings[0].litres), closed_at, "the register stopped");
        let (_, commands) = ingest(&mut on_c, readings).await;
        assert_eq!(commands, vec![MeterCommand { meter: 7.into(), valve: Valve::Closed }]);
    }

    // Every node reports the block, with its reason and home.
    eventually("A to list meter 7 as blocked for the cap", CONVERGE, || async {
        let Response::Blocked(blocked) = mesh.client(a).await.query(Request::Blocked).await.ok()? else {
            return None;
        };
        let entry = blocked.blocked.iter().find(|e| e.blocked.meter == 7.into())?;
        (entry.blocked.reason == BlockReason::Cap && entry.home == mesh.nodes[c].peer.to_string())
            .then_some(())
    })
    .await;

    // A node started after the policy learns it by sync and enforces it.
    let late_config = trusting(&mesh, "late", vec![mesh.nodes[c].addr.clone()], &key);
    let late = mesh.start(late_config).await;
    eventually("the late node to learn the policy", CONVERGE, || async {
        (policy_of(&mesh, late).await.cap_l == Some(cap_l)).then_some(())
    })
    .await;
    let mut on_late = mesh.client(late).await;
    let t = now_ms() - HOUR_MS;
    let (_, under) =
        ingest(&mut on_late, vec![reading(900, t, 1000), reading(900, t + 1000, 1000 + cap_l)]).await;
    assert!(under.is_empty(), "exactly the cap is allowed: {under:?}");
    let (_, over) = ingest(&mut on_late, vec![reading(900, t + 2000, 1001 + cap_l)]).await;
    assert_eq!(over, vec![MeterCommand { meter: 900.into(), valve: Valve::Closed }]);

    // A back-fill that moves the period's base, days before the latest reading, closes the
    // valve in its own acknowledgement.
    let t = now_ms();
    let (_, under) = ingest(
        &mut on_late,
        vec![reading(901, t - 2 * HOUR_MS, 1000), reading(901, t - HOUR_MS, 1000 + cap_l - 50)],
    )
    .await;
    assert!(under.is_empty(), "{under:?}");
    let (outcomes, backfill) = ingest(&mut on_late, vec![reading(901, t - 72 * HOUR_MS, 100)]).await;
    assert_eq!(outcomes, vec![Outcome::Accepted]);
    assert_eq!(backfill, vec![MeterCommand { meter: 901.into(), valve: Valve::Closed }]);

    // Lifting the cap reopens the valves at their next acknowledgement.
    let answer = admin(&mut mesh.client(a).await, &key, Action::Policy(Policy::default())).await;
    assert!(matches!(answer, Response::Applied(_)), "{answer:?}");
    eventually("the late node to reopen meter 900", CONVERGE, || async {
        let ts = now_ms() - HOUR_MS / 2;
        let (_, commands) = ingest(&mut mesh.client(late).await, vec![reading(900, ts, 1001 + cap_l)]).await;
        (commands == vec![MeterCommand { meter: 900.into(), valve: Valve::Open }]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_keys_and_unknown_meters_are_refused_everywhere() {
    let key = ed25519::Keypair::generate();
    let stranger = ed25519::Keypair::generate();
    let mesh = mesh(2, &key).await;
    let t = now_ms() - HOUR_MS;
    ingest(&mut mesh.client(1).await, vec![reading(5, t, 10)]).await;
    eventually("node 0 to see node 1's meter", CONVERGE, || async {
        let Response::Stats(stats) = mesh.client(0).await.query(Request::Stats).await.ok()? else {
            return None;
        };
        (stats.meters == 1).then_some(())
    })
    .await;

    let untrusted = admin(
        &mut mesh.client(0).await,
        &stranger,
        Action::Policy(Policy { cap_l: Some(1), ..Policy::default() }),
    )
    .await;
    match untrusted {
        Response::Error(reason) => assert!(reason.contains("does not trust"), "{reason}"),
        other => panic!("an untrusted command was not refused: {other:?}"),
    }
    let unknown =
        admin(&mut mesh.client(0).await, &key, Action::Block { meter: 404.into(), reason: "x".into() }).await;
    assert!(matches!(&unknown, Response::Error(reason) if reason.contains("unknown")), "{unknown:?}");

    // A trusted block of a meter homed on the other node: found, applied, enforced there.
    let blocked =
        admin(&mut mesh.client(0).await, &key, Action::Block { meter: 5.into(), reason: "unpaid".into() })
            .await;
    assert!(matches!(blocked, Response::Applied(_)), "{blocked:?}");
    eventually("node 1 to cut meter 5 by hand", CONVERGE, || async {
        let (_, commands) = ingest(&mut mesh.client(1).await, vec![reading(5, now_ms() - 1000, 10)]).await;
        (commands == vec![MeterCommand { meter: 5.into(), valve: Valve::Closed }]).then_some(())
    })
    .await;
    for node in 0..2 {
        assert_eq!(
            policy_of(&mesh, node).await,
            Policy::default(),
            "node {node} applied an untrusted policy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_bills_and_follow_are_answered_through_any_node() {
    let key = ed25519::Keypair::generate();
    let mesh = mesh(2, &key).await;
    let mut home = mesh.client(1).await;

    // A leak: water never stands still for an hour over more than a day (readings every 30 min).
    let start = now_ms() - 30 * HOUR_MS;
    let leaking: Vec<Reading> = (0..=50).map(|k| reading(11, start + k * HOUR_MS / 2, 100 + k * 3)).collect();
    // A meter that stood still for an hour every night: no leak.
    let fine: Vec<Reading> =
        (0..=50).map(|k| reading(12, start + k * HOUR_MS / 2, 100 + (k / 3) * 3)).collect();
    let tampered = Reading { alarms: Alarms::TAMPER, ..reading(13, start, 5) };
    ingest(&mut home, [leaking.clone(), fine, vec![tampered]].concat()).await;
    let alerts = eventually("node 0 to list the leak and the tamper alarm", CONVERGE, || async {
        let Response::Alerts(answer) =
            mesh.client(0).await.query(Request::Alerts { kind: None }).await.ok()?
        else {
            return None;
        };
        let found: Vec<(MeterId, AlertKind)> =
            answer.alerts.iter().map(|e| (e.alert.meter, e.alert.kind)).collect();
        (found.len() == 2).then_some(found)
    })
    .await;
    assert_eq!(alerts, vec![(id(11), AlertKind::Leak), (id(13), AlertKind::Tamper)]);

    // Re-sent and back-filled readings judge the same way.
    let (outcomes, _) = ingest(&mut home, leaking[10..20].to_vec()).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate));
    let late = reading(11, start + 5 * HOUR_MS / 2 + 60_000, 100 + 5 * 3 + 1);
    assert_eq!(ingest(&mut home, vec![late]).await.0, vec![Outcome::Accepted]);
    let Response::Alerts(leaks) =
        home.query(Request::Alerts { kind: Some(AlertKind::Leak) }).await.expect("alerts")
    else {
        panic!("alerts")
    };
    let still: Vec<MeterId> = leaks.alerts.iter().map(|e| e.alert.meter).collect();
    assert_eq!(still, vec![id(11)]);

    // The bill, routed to the home, by the default tariff.
    let Response::Bill(Some(bill)) = mesh
        .client(0)
        .await
        .query(Request::Bill { meter: 11.into(), period_start_ms: Some(start + 50 * HOUR_MS / 2) })
        .await
        .expect("bill")
    else {
        panic!("no bill")
    };
    assert_eq!(bill.home, mesh.nodes[1].peer.to_string());
    assert_eq!(bill.currency, "BRL");
    assert_eq!(
        bill.amount_cents,
        hydromesh::domain::rules::Tariff::default().amount_cents(bill.consumption_l)
    );
    assert!(!bill.paid);

    // Follow meter 11 through node 0 while its home stores a new reading.
    let last = leaking.last().expect("readings").ts_ms;
    let mut follower = mesh.client(0).await;
    let followed = tokio::spawn(async move {
        follower
            .query_within(
                Request::Follow { meter: 11.into(), after_ts_ms: Some(last) },
                Duration::from_secs(20),
            )
            .await
    });
    let next = reading(11, last + 60_000, 100 + 50 * 3 + 2);
    // Whether the follow reaches the home before or after the reading is stored, it gets it.
    ingest(&mut mesh.client(1).await, vec![next]).await;
    match followed.await.expect("task").expect("follow") {
        Response::Readings { home, readings } => {
            assert_eq!(home, mesh.nodes[1].peer.to_string());
            assert_eq!(readings, vec![next]);
        }
        other => panic!("{other:?}"),
    }
}

/// With a raw retention, a running node keeps a meter's readings older than it one an hour,
/// and the meter's consumption over whole days is what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_raw_retention_keeps_older_readings_hourly_and_consumption_exact() {
    let mut mesh = Mesh::new();
    let dir = mesh.root.path().join("n0");
    let mut node_config = common::config(dir, "n0", vec![]);
    node_config.retain_raw = Some(Duration::from_secs(2 * 86_400));
    let now = now_ms();
    let start = now - now % HOUR_MS - 5 * 86_400_000;
    let readings: Vec<Reading> = (0..480)
        .map(|i| Reading {
            meter: 77.into(),
            ts_ms: start + 7 * 60_000 + i * 900_000,
            litres: 1_000 + i * 25 + i % 3,
            flow_lph: None,
            alarms: Alarms::empty(),
        })
        .collect();
    mesh.start(node_config.clone()).await;
    let sent = mesh.client(0).await.ingest(readings.clone()).await.expect("ingest");
    assert!(matches!(sent, ingest::Response::Done { .. }), "{sent:?}");
    // Stopped and started again: its readings are folded into chunks, the ones thinning reads.
    mesh.stop(0).await;
    mesh.start(node_config).await;
    let before = eventually("the meter's days", Duration::from_secs(20), || days(&mesh, start)).await;
    assert!(before.iter().all(|(_, count)| *count == 96), "{before:?}");
    // The writer thins a slice of meters after a batch, at most every second: another meter's
    // readings wake it.
    let mut next = Reading {
        meter: 78.into(),
        ts_ms: now - HOUR_MS,
        litres: 0,
        flow_lph: None,
        alarms: Alarms::empty(),
    };
    let after = eventually("the older days thinned", Duration::from_secs(30), || {
        next.ts_ms += 1_000;
        next.litres += 1;
        let (mesh, reading) = (&mesh, next);
        async move {
            mesh.client(1).await.ingest(vec![reading]).await.ok()?;
            let after = days(mesh, start).await?;
            (after[0].1 < 96).then_some(after)
        }
    })
    .await;
    for day in 0..5 {
        assert_eq!(after[day].0, before[day].0, "day {day}: consumption over the whole day unchanged");
    }
    // Days 0 and 1 end before the cutoff (now - 2 days): one reading an hour at most (the
    // window's first reading may be its base's hour's last).
    for (day, (_, count)) in after.iter().enumerate().take(2) {
        assert!(*count <= 25, "day {day}: {count} readings");
    }
    assert_eq!(after[4].1, 96, "the last day is raw");
}

/// Meter 77's consumption and readings on node 1, for each of the 5 days from `start`.
async fn days(mesh: &Mesh, start: u64) -> Option<Vec<(u64, usize)>> {
    let mut answers = Vec::new();
    for day in 0..5 {
        let window = (start + day * 86_400_000, start + (day + 1) * 86_400_000);
        let request = Request::Meter { meter: 77.into(), from_ms: Some(window.0), to_ms: Some(window.1) };
        let Response::Meter(answer) = mesh.ask(1, request).await? else { return None };
        answers.push((answer.consumption_l, answer.history.readings.len()));
    }
    Some(answers)
}
