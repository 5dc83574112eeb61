//! Test helpers: fog nodes in-process on loopback in temporary folders, readings with known
//! ground truth, and waiting on conditions with a deadline.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hydromesh::client::Client;
use hydromesh::{App, AppHandle, Config};
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::{Multiaddr, PeerId};

pub const HOUR_MS: u64 = 3_600_000;

/// One in-process node and where to reach it.
pub struct TestNode {
    pub handle: Option<AppHandle>,
    pub peer: PeerId,
    pub addr: Multiaddr,
    pub dir: PathBuf,
}

/// In-process nodes sharing one temporary folder; dropped with the test's runtime.
pub struct Mesh {
    pub root: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
}

/// A configuration for tests: loopback, fast gossip, short republish.
pub fn config(dir: PathBuf, name: &str, bootstrap: Vec<Multiaddr>) -> Config {
    Config {
        data_dir: dir,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        name: name.to_owned(),
        republish_interval: Duration::from_secs(2),
        publish_debounce: Duration::from_millis(50),
        publish_interval: Duration::from_millis(200),
        // Tests wait for convergence, not for bandwidth.
        summary_budget: 1 << 20,
        stale_after: Duration::from_secs(20),
        gossip_heartbeat: Duration::from_millis(200),
        http: None,
        mqtt: None,
        ..Config::default()
    }
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh { root: tempfile::tempdir().expect("tempdir"), nodes: Vec::new() }
    }

    /// `n` nodes in a chain: each bootstraps only to the previous one.
    pub async fn chain(n: usize) -> Mesh {
        let mut mesh = Mesh::new();
        for i in 0..n {
            let bootstrap = if i == 0 { vec![] } else { vec![mesh.nodes[i - 1].addr.clone()] };
            mesh.start(config(mesh.root.path().join(format!("n{i}")), &format!("n{i}"), bootstrap)).await;
        }
        mesh
    }

    /// Starts a node and returns its index.
    pub async fn start(&mut self, config: Config) -> usize {
        let dir = config.data_dir.clone();
        let handle = App::spawn(config).await.expect("node starts");
        let addr = handle.listen_addrs().await.into_iter().next().expect("a listen address");
        self.nodes.push(TestNode { peer: handle.peer_id(), handle: Some(handle), addr, dir });
        self.nodes.len() - 1
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::connect(&self.nodes[i].addr, Duration::from_secs(5)).await.expect("client connects")
    }

    /// Node `i`'s answer over the network, or `None` when the connection or the query failed
    /// (for use inside [`eventually`], which retries).
    pub async fn ask(
        &self,
        i: usize,
        request: hydromesh_proto::query::Request,
    ) -> Option<hydromesh_proto::query::Response> {
        let mut client = Client::connect(&self.nodes[i].addr, Duration::from_secs(5)).await.ok()?;
        client.query(request).await.ok()
    }

    /// Stops node `i` in order.
    pub async fn stop(&mut self, i: usize) {
        if let Some(handle) = self.nodes[i].handle.take() {
            handle.shutdown().await.expect("the node stops cleanly");
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails the test after `deadline`. A check
/// that fails (`None`: a query timed out on a loaded machine, a peer not yet connected) is
/// retried; a check that hangs is cut at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout_at(end, check()).await {
            return value;
        }
        assert!(tokio::time::Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or fails the test after `deadline` (for
/// tests that drive real processes, without a runtime).
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped (a failing test leaves nothing running).
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    hydromesh::clock::now_ms()
}

/// The numeric meter id `n`.
pub fn id(n: u64) -> MeterId {
    MeterId::number(n).expect("a numeric meter id")
}

/// `count` hourly readings of each numeric meter id, ending one day ago, with a register that
/// grows by a varied amount each hour (so consumptions differ from meter to meter).
pub fn readings(meters: impl IntoIterator<Item = u64>, count: u64) -> Vec<Reading> {
    let start = now_ms() - 86_400_000 - count * HOUR_MS;
    let mut all = Vec::new();
    for meter in meters {
        let mut litres = meter % 1000;
        for k in 0..count {
            litres += (meter.wrapping_mul(7919) ^ k.wrapping_mul(104_729)) % 97;
            all.push(Reading {
                meter: id(meter),
                ts_ms: start + k * HOUR_MS,
                litres,
                flow_lph: None,
                alarms: Alarms::empty(),
            });
        }
    }
    all
}

/// Ground truth: each meter's consumption over `[from_ms, ∞)` by the one definition
/// (last register minus the last register at or before `from_ms`, else the first in the window).
pub fn consumption_since(readings: &[Reading], from_ms: u64) -> BTreeMap<MeterId, u64> {
    let mut by_meter: BTreeMap<MeterId, Vec<&Reading>> = BTreeMap::new();
    for reading in readings {
        by_meter.entry(reading.meter).or_default().push(reading);
    }
    by_meter
        .into_iter()
        .filter_map(|(meter, mut rs)| {
            rs.sort_by_key(|r| r.ts_ms);
            let last = rs.last()?;
            if last.ts_ms < from_ms {
                return None;
            }
            let base = rs
                .iter()
                .rev()
                .find(|r| r.ts_ms <= from_ms)
                .or_else(|| rs.iter().find(|r| r.ts_ms >= from_ms))?;
            Some((meter, last.litres - base.litres))
        })
        .collect()
}

/// Ground truth top-N: consumption descending, then meter ascending.
pub fn top_n(consumption: &BTreeMap<MeterId, u64>, n: usize) -> Vec<(MeterId, u64)> {
    let mut ranked: Vec<(MeterId, u64)> = consumption.iter().map(|(m, c)| (*m, *c)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}
