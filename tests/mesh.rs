//! The mesh end to end, in-process: five nodes on loopback in a chain, each with its own
//! meters, answering global questions exactly from every node.

mod common;

use std::time::Duration;

use common::{consumption_since, eventually, id, now_ms, readings, top_n, Mesh, HOUR_MS};
use hydromesh_proto::ingest::{self, Outcome};
use hydromesh_proto::query::{self, Request, Response};
use hydromesh_proto::{MeterId, Reading};

const NODES: usize = 5;
const METERS_PER_NODE: u64 = 20;
const READINGS_PER_METER: u64 = 10;
const CONVERGE: Duration = Duration::from_secs(30);

fn meters_of(node: usize) -> impl Iterator<Item = u64> {
    let first = (node as u64 + 1) * 1000;
    first..first + METERS_PER_NODE
}

async fn ingest_all(mesh: &Mesh, data: &[Vec<Reading>]) -> Vec<Vec<Outcome>> {
    let mut all = Vec::new();
    for (i, readings) in data.iter().enumerate() {
        match mesh.client(i).await.ingest(readings.clone()).await.expect("ingest") {
            ingest::Response::Done { outcomes, .. } => all.push(outcomes),
            other => panic!("node {i} did not take the batch: {other:?}"),
        }
    }
    all
}

fn entries(response: &Response) -> Option<Vec<(MeterId, u64)>> {
    match response {
        Response::Top(top) => Some(top.entries.iter().map(|e| (e.meter, e.consumption_l)).collect()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_exact_global_questions() {
    let mesh = Mesh::chain(NODES).await;
    let data: Vec<Vec<Reading>> = (0..NODES).map(|i| readings(meters_of(i), READINGS_PER_METER)).collect();
    let outcomes = ingest_all(&mesh, &data).await;
    assert!(outcomes.iter().flatten().all(|o| *o == Outcome::Accepted));

    let everything: Vec<Reading> = data.concat();
    let truth = consumption_since(&everything, 0);
    let truth_top = top_n(&truth, 10);
    let truth_total: u64 = truth.values().sum();

    for node in 0..NODES {
        eventually(&format!("node {node} to see the exact top-10 and totals"), CONVERGE, || async {
            let top = mesh.ask(node, Request::Top { n: 10, since_ms: None }).await?;
            let Response::Stats(stats) = mesh.ask(node, Request::Stats).await? else {
                return None;
            };
            let exact = entries(&top)? == truth_top
                && stats.meters == NODES as u64 * METERS_PER_NODE
                && stats.total_consumption_l == truth_total
                && stats.coverage.included.len() == NODES
                && stats.coverage.stale.is_empty();
            exact.then_some(())
        })
        .await;
    }

    // Bootstrapped to one peer only, the last node learns the others' addresses from their
    // summaries and its dialer connects them.
    eventually("the last node to connect every other node", CONVERGE, || async {
        let Response::Peers(peers) = mesh.ask(NODES - 1, Request::Peers).await? else { return None };
        (peers.peers.iter().filter(|p| !p.is_self && p.connected).count() == NODES - 1).then_some(())
    })
    .await;

    // The homes are right, and the weighted average is exact.
    let Response::Top(top) = mesh.ask(2, Request::Top { n: 3, since_ms: None }).await.expect("query") else {
        panic!("top")
    };
    for entry in &top.entries {
        let home = (entry.meter.as_number().expect("numeric") / 1000 - 1) as usize;
        assert_eq!(entry.home, mesh.nodes[home].peer.to_string(), "home of meter {}", entry.meter);
    }
    let Response::Stats(stats) = mesh.ask(4, Request::Stats).await.expect("query") else { panic!("stats") };
    assert_eq!(stats.average_consumption_l(), truth_total as f64 / (NODES as u64 * METERS_PER_NODE) as f64);

    // A window answered by asking every node: exact too, and says who answered.
    let window_start =
        everything.iter().map(|r| r.ts_ms).max().expect("readings") - 4 * HOUR_MS - HOUR_MS / 2;
    let since = now_ms() - window_start;
    let windowed = consumption_since(&everything, window_start);
    let response = mesh.ask(0, Request::Top { n: 7, since_ms: Some(since) }).await.expect("query");
    assert_eq!(entries(&response).expect("top"), top_n(&windowed, 7));
    let Response::Top(windowed_top) = response else { panic!("top") };
    assert_eq!(windowed_top.coverage.included.len(), NODES);
    assert!(windowed_top.coverage.missing.is_empty());

    // Re-ingesting the same data changes nothing.
    let again = ingest_all(&mesh, &data).await;
    assert!(again.iter().flatten().all(|o| *o == Outcome::Duplicate));
    for node in 0..NODES {
        assert_eq!(
            entries(&mesh.ask(node, Request::Top { n: 10, since_ms: None }).await.expect("query"))
                .expect("top"),
            truth_top
        );
        let Response::Stats(stats) = mesh.ask(node, Request::Stats).await.expect("query") else {
            panic!("stats")
        };
        assert_eq!((stats.meters, stats.total_consumption_l), (NODES as u64 * METERS_PER_NODE, truth_total));
    }

    // One meter's history, asked of a node that does not hold it: routed to its home.
    let meter = id(meters_of(NODES - 1).next().expect("meter"));
    let Response::Meter(answer) =
        mesh.ask(0, Request::Meter { meter, from_ms: None, to_ms: None }).await.expect("query")
    else {
        panic!("meter answer")
    };
    assert_eq!(answer.home, mesh.nodes[NODES - 1].peer.to_string());
    assert_eq!(answer.history.readings.len() as u64, READINGS_PER_METER);
    assert_eq!(answer.consumption_l, truth[&meter]);
    let unknown = mesh
        .ask(0, Request::Meter { meter: 999_999.into(), from_ms: None, to_ms: None })
        .await
        .expect("query");
    assert!(matches!(unknown, Response::NotFound(_)), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_converges_through_sync() {
    let mut mesh = Mesh::new();
    for i in 0..3 {
        let bootstrap = if i == 0 { vec![] } else { vec![mesh.nodes[i - 1].addr.clone()] };
        let mut config = common::config(mesh.root.path().join(format!("n{i}")), &format!("n{i}"), bootstrap);
        // No periodic republish: once the data is published, only sync can tell a newcomer.
        config.republish_interval = Duration::from_secs(3600);
        mesh.start(config).await;
    }
    let data: Vec<Vec<Reading>> = (0..3).map(|i| readings(meters_of(i), 5)).collect();
    ingest_all(&mesh, &data).await;
    let truth = consumption_since(&data.concat(), 0);
    eventually("the first three nodes to converge", CONVERGE, || async {
        let Response::Stats(stats) = mesh.ask(2, Request::Stats).await? else {
            return None;
        };
        (stats.meters == 3 * METERS_PER_NODE && stats.coverage.included.len() == 3).then_some(())
    })
    .await;
    // Let gossipsub's message cache (a few 200 ms heartbeats) expire, so that the newcomer can
    // learn the others' summaries only by sync.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut config = common::config(mesh.root.path().join("late"), "late", vec![mesh.nodes[2].addr.clone()]);
    config.republish_interval = Duration::from_secs(3600);
    let late = mesh.start(config).await;
    eventually("the late node to know every node's meters", CONVERGE, || async {
        let Response::Stats(stats) = mesh.ask(late, Request::Stats).await? else {
            return None;
        };
        let top = mesh.ask(late, Request::Top { n: 10, since_ms: None }).await?;
        (stats.meters == 3 * METERS_PER_NODE
            && stats.total_consumption_l == truth.values().sum::<u64>()
            && stats.coverage.included.len() == 4
            && entries(&top)? == top_n(&truth, 10))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_identity_data_and_view() {
    let mut mesh = Mesh::chain(2).await;
    let data: Vec<Vec<Reading>> = (0..2).map(|i| readings(meters_of(i), 4)).collect();
    ingest_all(&mesh, &data).await;
    eventually("node 1 to see both nodes' meters", CONVERGE, || async {
        let Response::Stats(stats) = mesh.ask(1, Request::Stats).await? else {
            return None;
        };
        (stats.meters == 2 * METERS_PER_NODE).then_some(())
    })
    .await;
    let (peer, dir) = (mesh.nodes[1].peer, mesh.nodes[1].dir.clone());
    mesh.stop(1).await;
    mesh.stop(0).await;

    // Alone, with no peer to refresh it, the restarted node answers at once from its saved
    // view, and says which node is stale.
    let restarted = mesh.start(common::config(dir, "n1", vec![])).await;
    assert_eq!(mesh.nodes[restarted].peer, peer, "same identity after restart");
    let Response::Stats(stats) = mesh.ask(restarted, Request::Stats).await.expect("query") else {
        panic!("stats")
    };
    assert_eq!(stats.meters, 2 * METERS_PER_NODE);
    assert_eq!(stats.coverage.stale, vec![mesh.nodes[0].peer.to_string()]);
    let mut client = mesh.client(restarted).await;
    let outcomes = match client.ingest(data[1].clone()).await.expect("ingest") {
        ingest::Response::Done { outcomes, .. } => outcomes,
        other => panic!("{other:?}"),
    };
    assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate), "acknowledged readings survived the restart");
    let Response::Peers(peers) = client.query(query::Request::Peers).await.expect("peers") else {
        panic!("peers")
    };
    assert_eq!(peers.peers.len(), 2);
    assert!(peers.peers.iter().any(|p| p.is_self && !p.stale));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_says_it_is_alive_without_publishing_new_summaries() {
    let mut mesh = Mesh::new();
    for i in 0..2 {
        let bootstrap = if i == 0 { vec![] } else { vec![mesh.nodes[0].addr.clone()] };
        let mut config = common::config(mesh.root.path().join(format!("n{i}")), &format!("n{i}"), bootstrap);
        config.republish_interval = Duration::from_millis(300);
        mesh.start(config).await;
    }
    // What node 0 holds of node 1: its summary version and how long ago it was last heard.
    let seen = || async {
        let Response::Peers(peers) = mesh.ask(0, Request::Peers).await? else {
            return None;
        };
        let other = peers.peers.iter().find(|p| p.name == "n1")?;
        Some((other.version, other.last_heard_ms_ago?))
    };
    let (mut version, mut age) = eventually("node 0 to hear node 1", CONVERGE, seen).await;
    // Each alive resets the age of what node 0 heard of node 1. A node publishes its summary
    // again once when its gossip mesh forms; after that, the version must hold through five
    // refreshes (a node publishing on every tick never gets there and the deadline fails it).
    let five_alives = async {
        let mut refreshes = 0;
        while refreshes < 5 {
            let (now_version, now_age) = eventually("node 0 to answer", CONVERGE, seen).await;
            if now_version != version {
                (version, refreshes) = (now_version, 0);
            } else if now_age < age {
                refreshes += 1;
            }
            age = now_age;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(CONVERGE, five_alives)
        .await
        .expect("node 1 published new summaries instead of alives: its version kept changing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_summaries_travel_as_deltas_and_every_node_stays_exact() {
    let mesh = Mesh::chain(3).await;
    eventually("the chain to see itself whole", CONVERGE, || async {
        let Response::Peers(peers) = mesh.ask(2, Request::Peers).await? else { return None };
        (peers.peers.iter().filter(|p| !p.stale).count() == 3).then_some(())
    })
    .await;
    // Each round, node 0 gets a few new meters: a few entries of its top change, the rest stay.
    let mut everything: Vec<Reading> = Vec::new();
    for round in 0..4u64 {
        let batch = readings(round * 5..round * 5 + 5, 3);
        everything.extend(batch.iter().cloned());
        match mesh.client(0).await.ingest(batch).await.expect("ingest") {
            ingest::Response::Done { outcomes, .. } => {
                assert!(outcomes.iter().all(|o| *o == Outcome::Accepted), "round {round}: {outcomes:?}")
            }
            other => panic!("round {round}: {other:?}"),
        }
        let truth = top_n(&consumption_since(&everything, 0), 10);
        eventually(&format!("round {round}: node 2 to rank exactly"), CONVERGE, || async {
            (entries(&mesh.ask(2, Request::Top { n: 10, since_ms: None }).await?)? == truth).then_some(())
        })
        .await;
    }
    let metrics = mesh.nodes[2].handle.as_ref().expect("running").metrics().encode();
    let heard = |form: &str| -> u64 {
        let series = format!("hydromesh_summaries_heard_total{{form=\"{form}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0, |count| count.trim().parse().expect("a count"))
    };
    assert!(heard("delta") >= 1, "no summary came as a delta:\n{metrics}");
}

/// A meter that moves to another fog node and back (a gateway re-homed, then restored): every
/// node counts it once, over its whole history, in stats, top and its bill, and shows its
/// history whole; the newest home owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_moves_between_nodes_is_counted_once_from_every_node() {
    const NODES: usize = 3;
    let mesh = Mesh::chain(NODES).await;
    let mut data: Vec<Vec<Reading>> = (0..NODES).map(|i| readings(meters_of(i), 4)).collect();
    let moving = MeterId::parse("mv-0014a807").expect("an id");
    // Hourly registers, growing 1,000 L an hour (the largest consumer), 12 hours ending an hour ago: the first five at
    // node 0, the next five at node 1, the last two at node 0 again.
    let start = now_ms() - 13 * HOUR_MS;
    let at = |k: u64| Reading {
        meter: moving,
        ts_ms: start + k * HOUR_MS,
        litres: 5_000 + 1_000 * k,
        ..data[0][0]
    };
    let (first_stay, moved, back): (Vec<Reading>, Vec<Reading>, Vec<Reading>) =
        ((0..5).map(at).collect(), (5..10).map(at).collect(), (10..12).map(at).collect());
    data[0].extend(&first_stay);
    ingest_all(&mesh, &data).await;
    let others: Vec<Reading> = data.concat().into_iter().filter(|r| r.meter != moving).collect();
    // Node 1 knows node 0's meters before the meter arrives there.
    eventually("node 1 to hear node 0's summary", CONVERGE, || async {
        let Response::Stats(stats) = mesh.ask(1, Request::Stats).await? else { return None };
        (stats.meters == NODES as u64 * METERS_PER_NODE + 1).then_some(())
    })
    .await;

    let mut sent = first_stay;
    for (node, part) in [(1, moved), (0, back)] {
        let ingest::Response::Done { outcomes, .. } =
            mesh.client(node).await.ingest(part.clone()).await.expect("ingest")
        else {
            panic!("node {node} did not take the readings");
        };
        assert!(outcomes.iter().all(|o| *o == Outcome::Accepted), "{outcomes:?}");
        sent.extend(part);
        let everything: Vec<Reading> = others.iter().chain(&sent).copied().collect();
        let truth = consumption_since(&everything, 0);
        let (whole, total) = (truth[&moving], truth.values().sum::<u64>());
        assert_eq!(whole, sent.last().expect("sent").litres - 5_000);
        let home = mesh.nodes[node].peer.to_string();
        for asked in 0..NODES {
            let what = format!("node {asked} to count meter {moving} once at node {node}");
            eventually(&what, CONVERGE, || async {
                let Response::Stats(stats) = mesh.ask(asked, Request::Stats).await? else { return None };
                let Response::Top(top) = mesh.ask(asked, Request::Top { n: 1, since_ms: None }).await? else {
                    return None;
                };
                let counted = stats.meters == NODES as u64 * METERS_PER_NODE + 1
                    && stats.total_consumption_l == total
                    && top
                        .entries
                        .first()
                        .is_some_and(|e| e.meter == moving && e.consumption_l == whole && e.home == home);
                counted.then_some(())
            })
            .await;
            let request = Request::Meter { meter: moving, from_ms: None, to_ms: None };
            let Response::Meter(answer) = mesh.ask(asked, request).await.expect("meter") else {
                panic!("no answer about meter {moving}");
            };
            assert_eq!(answer.history.readings, sent, "the whole history, from node {asked}");
            assert_eq!((answer.consumption_l, &answer.home), (whole, &home));
            let last = sent.last().expect("sent").ts_ms;
            let request = Request::Bill { meter: moving, period_start_ms: Some(last) };
            let Response::Bill(Some(bill)) = mesh.ask(asked, request).await.expect("bill") else {
                panic!("no bill of meter {moving}");
            };
            let in_period = consumption_since(&sent, bill.period_start_ms)[&moving];
            assert_eq!((bill.consumption_l, &bill.home), (in_period, &home), "the bill from node {asked}");
            assert_eq!(answer.status.bill.map(|b| b.consumption_l), Some(in_period));
        }
    }
}

/// Two nodes that took readings of one meter while apart both own it; once they hear each
/// other's summaries (here through a third node that joins both), the meter is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_owned_by_two_nodes_apart_is_counted_once_when_they_meet() {
    let mut mesh = Mesh::new();
    let (a, b) = (
        mesh.start(common::config(mesh.root.path().join("a"), "a", vec![])).await,
        mesh.start(common::config(mesh.root.path().join("b"), "b", vec![])).await,
    );
    let meter = MeterId::parse("apart-1").expect("an id");
    let start = now_ms() - 6 * HOUR_MS;
    let at = |k: u64| Reading {
        meter,
        ts_ms: start + k * HOUR_MS,
        litres: 100 + 10 * k,
        flow_lph: None,
        alarms: hydromesh_proto::Alarms::empty(),
    };
    for (node, part) in [(a, [at(0), at(1)]), (b, [at(3), at(4)])] {
        let ingest::Response::Done { outcomes, .. } =
            mesh.client(node).await.ingest(part.to_vec()).await.expect("ingest")
        else {
            panic!("not taken");
        };
        assert!(outcomes.iter().all(|o| *o == Outcome::Accepted));
    }
    let bootstrap = vec![mesh.nodes[a].addr.clone(), mesh.nodes[b].addr.clone()];
    let c = mesh.start(common::config(mesh.root.path().join("c"), "c", bootstrap)).await;
    let home = mesh.nodes[b].peer.to_string();
    for asked in [a, b, c] {
        eventually(&format!("node {asked} to count the meter once, at b"), CONVERGE, || async {
            let Response::Stats(stats) = mesh.ask(asked, Request::Stats).await? else { return None };
            let Response::Top(top) = mesh.ask(asked, Request::Top { n: 1, since_ms: None }).await? else {
                return None;
            };
            let once = stats.meters == 1
                && stats.total_consumption_l == 40
                && stats.coverage.included.len() == 3
                && top.entries.first().is_some_and(|e| e.consumption_l == 40 && e.home == home);
            once.then_some(())
        })
        .await;
    }
}
