//! The dashboard in a real browser (Debian's chromium, headless) against an in-process mesh of
//! three nodes: the overview shows the exact top meters in order as chart bars, the mesh, the
//! alerts and the blocked meters; a meter homed on another node shows its history chart and
//! takes a new reading live.
//!
//! The overview is rendered with `--dump-dom` after a virtual-time budget. The meter page keeps
//! a Server-Sent Events stream open, and virtual time never advances while a fetch is pending,
//! so it is driven over the DevTools protocol on a pipe instead, polling the page with deadlines.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{config, consumption_since, eventually, id, now_ms, readings, top_n, Mesh};
use hydromesh::AppHandle;
use hydromesh_proto::control::{Action, Command as AdminCommand};
use hydromesh_proto::ingest;
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::identity::ed25519;
use serde_json::{json, Value};

const NODES: usize = 3;
const CONVERGE: Duration = Duration::from_secs(30);
const BROWSER: Duration = Duration::from_secs(60);

/// Flags for a quiet, reproducible headless browser (root in a container: no sandbox).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
];

/// The browser, or a failure that says how to install it (never a skip).
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("chromium is missing: run scripts/install-test-deps.sh (the dashboard tests drive a real browser)")
        })
}

fn meters_of(node: usize) -> std::ops::Range<u64> {
    let first = 1000 + node as u64 * 100;
    first..first + 10
}

fn handle(mesh: &Mesh, i: usize) -> &AppHandle {
    mesh.nodes[i].handle.as_ref().expect("node running")
}

async fn ingest(node: &AppHandle, batch: Vec<Reading>) {
    match node.client().ingest(batch).await {
        ingest::Response::Done { outcomes, .. } => {
            assert!(outcomes.iter().all(|o| *o == ingest::Outcome::Accepted), "{outcomes:?}")
        }
        other => panic!("batch not taken: {other:?}"),
    }
}

/// Litres as the dashboard writes them (below 1000 m³: no thousands separator).
fn m3(litres: u64) -> String {
    format!("{}.{:03}", litres / 1000, litres % 1000)
}

/// Waits for a child with a deadline; kills it and fails past the deadline.
fn wait_for(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            return status;
        }
        if start.elapsed() > BROWSER {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {what} within {BROWSER:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The DOM of `url` after 10 s of virtual time (timers run, fetches complete).
fn dump_dom(profile: &Path, url: &str) -> String {
    let out_path = profile.with_extension("dom.html");
    let out = std::fs::File::create(&out_path).expect("DOM file");
    let mut child = Command::new(chromium())
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let status = wait_for(&mut child, "--dump-dom");
    assert!(status.success(), "chromium --dump-dom failed: {status}");
    std::fs::read_to_string(&out_path).expect("DOM")
}

/// The attributes of every `<tag …>` holding `needle`, in document order.
fn tags_with(dom: &str, tag: &str, needle: &str) -> Vec<Vec<(String, String)>> {
    let open = format!("<{tag} ");
    dom.match_indices(&open)
        .filter_map(|(start, _)| {
            let end = dom[start..].find('>')? + start;
            let text = &dom[start + open.len()..end];
            text.contains(needle).then(|| {
                text.split('"')
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .filter(|pair| pair.len() == 2)
                    .map(|pair| (pair[0].trim().trim_end_matches('=').to_owned(), pair[1].to_owned()))
                    .collect()
            })
        })
        .collect()
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> &'a str {
    attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_default()
}

/// The text of the element with `id` (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let Some(at) = dom.find(&marker) else { return "" };
    let start = dom[at..].find('>').map_or(dom.len(), |i| at + i + 1);
    let end = dom[start..].find('<').map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

/// The section of the DOM from the element with `id` to the next `</section>`.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = dom.find(&marker).unwrap_or_else(|| panic!("no #{id} in the page"));
    let end = dom[start..].find("</section>").map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

/// Chromium driven over the DevTools protocol on a pipe: the browser reads commands from its
/// fd 3 and writes answers to its fd 4, each a JSON text ended by a NUL byte.
struct DevTools {
    child: Child,
    commands: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
}

impl DevTools {
    fn start(profile: &Path) -> DevTools {
        // A shell maps the browser's fds 3 and 4 onto our pipes (stdin and stdout).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null")
            .arg(chromium())
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--remote-debugging-pipe", "about:blank"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("stdin");
        let mut answers = child.stdout.take().expect("stdout");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut pending, mut buf) = (Vec::new(), [0u8; 65536]);
            while let Ok(n @ 1..) = answers.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice(&message[..end]) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        DevTools { child, commands, messages, next_id: 0 }
    }

    /// Sends a command and waits for its answer (events are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).and_then(|()| self.commands.flush()).expect("send to chromium");
        let deadline = Instant::now() + BROWSER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if message["id"] == json!(id) {
                assert!(message.get("error").is_none(), "{method} failed: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab and returns the session to talk to it.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let target_id = target["targetId"].as_str().expect("target id").to_owned();
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        attached["sessionId"].as_str().expect("session id").to_owned()
    }

    /// Evaluates a JavaScript expression returning a JSON text, in the page.
    fn evaluate(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        let text = result["result"]["value"].as_str().unwrap_or("null").to_owned();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        wait_for(&mut self.child, "closing");
    }
}

/// What the meter page shows.
const METER_PAGE: &str = "JSON.stringify({
    title: document.getElementById('meter-title').textContent,
    points: document.getElementById('history-line')?.getAttribute('data-points'),
    register: document.getElementById('meter-register').textContent,
    live: document.getElementById('live-state').textContent,
    error: document.getElementById('meter-error').hidden ? null : document.getElementById('meter-error').textContent,
    latest: document.querySelectorAll('#latest tbody tr').length,
})";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_and_a_live_meter() {
    // Fail at once, before starting a mesh, when there is no browser.
    chromium();
    let admin = ed25519::Keypair::generate();
    let mut mesh = Mesh::new();
    for i in 0..NODES {
        let bootstrap = if i == 0 { vec![] } else { vec![mesh.nodes[i - 1].addr.clone()] };
        let mut node = config(mesh.root.path().join(format!("n{i}")), &format!("n{i}"), bootstrap);
        node.admin_keys = vec![admin.public()];
        if i == 0 {
            node.http = Some("127.0.0.1:0".parse().expect("addr"));
        }
        mesh.start(node).await;
    }
    let http = handle(&mesh, 0).http_addr().expect("HTTP enabled");

    // Known readings: ten meters per node; one meter reports tampering at its latest reading.
    let mut data: Vec<Vec<Reading>> = (0..NODES).map(|i| readings(meters_of(i), 10)).collect();
    let tampered = id(meters_of(1).start + 3);
    if let Some(last) = data[1].iter_mut().filter(|r| r.meter == tampered).max_by_key(|r| r.ts_ms) {
        last.alarms = Alarms::TAMPER;
    }
    for (i, batch) in data.iter().enumerate() {
        ingest(handle(&mesh, i), batch.clone()).await;
    }
    let everything = data.concat();
    let truth = top_n(&consumption_since(&everything, 0), 10);
    let blocked = id(meters_of(2).start + 5);
    // Blocked through node 1 once it knows the meter's home (node 2).
    eventually("an admin block through another node", CONVERGE, || async {
        let action = Action::Block { meter: blocked, reason: "inspection".into() };
        let signed = hydromesh::mesh::control::sign(&admin, &AdminCommand { issued_at_ms: now_ms(), action })
            .expect("sign");
        matches!(handle(&mesh, 1).client().query(Request::Admin(signed)).await, Response::Applied(_))
            .then_some(())
    })
    .await;

    let node = handle(&mesh, 0).client();
    eventually("node 0 to see the whole mesh, the alert and the block", CONVERGE, || async {
        let Response::Top(top) = node.query(Request::Top { n: 10, since_ms: None }).await else {
            return None;
        };
        let Response::Stats(stats) = node.query(Request::Stats).await else { return None };
        let Response::Alerts(alerts) = node.query(Request::Alerts { kind: None }).await else { return None };
        let Response::Blocked(cut) = node.query(Request::Blocked).await else { return None };
        let ranked: Vec<(MeterId, u64)> = top.entries.iter().map(|e| (e.meter, e.consumption_l)).collect();
        let ready = ranked == truth
            && stats.coverage.included.len() == NODES
            && stats.coverage.stale.is_empty()
            && alerts.alerts.iter().any(|a| a.alert.meter == tampered)
            && cut.blocked.iter().any(|b| b.blocked.meter == blocked);
        ready.then_some(())
    })
    .await;

    // The overview.
    let profiles = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{http}/");
    let dom = tokio::task::spawn_blocking({
        let profile = profiles.path().join("overview");
        move || dump_dom(&profile, &url)
    })
    .await
    .expect("browser task");
    let bars: Vec<(MeterId, u64)> = tags_with(&dom, "rect", "data-meter=")
        .iter()
        .map(|a| {
            (
                attr(a, "data-meter").parse().expect("meter"),
                attr(a, "data-consumption-l").parse().expect("litres"),
            )
        })
        .collect();
    assert_eq!(bars, truth, "the chart's bars are the exact top-10, in order");
    let widths: Vec<f64> = tags_with(&dom, "rect", "data-meter=")
        .iter()
        .map(|a| attr(a, "width").parse().expect("width"))
        .collect();
    assert!(
        widths.windows(2).all(|w| w[0] >= w[1]) && widths[0] > widths[9],
        "bars shrink down the ranking: {widths:?}"
    );
    let total: u64 = consumption_since(&everything, 0).values().sum();
    assert_eq!(text_of(&dom, "stat-meters"), "30");
    assert_eq!(text_of(&dom, "stat-total"), m3(total));
    assert_eq!(text_of(&dom, "stat-nodes"), "3");
    assert!(
        text_of(&dom, "coverage").starts_with("3 fog nodes, 0 stale, data as of"),
        "{}",
        text_of(&dom, "coverage")
    );
    let mesh_section = section(&dom, "mesh-title");
    for name in ["n0", "n1", "n2"] {
        assert!(mesh_section.contains(&format!(">{name}<")), "the mesh lists {name}");
    }
    assert!(mesh_section.contains("this node"), "the mesh marks the node serving the page");
    let alerts = section(&dom, "alerts-title");
    assert!(alerts.contains(&format!("#{tampered}")) && alerts.contains(">tamper<"), "alerts: {alerts}");
    let cut = section(&dom, "blocked-title");
    assert!(
        cut.contains(&format!("#{blocked}")) && cut.contains(">manual<") && cut.contains("inspection"),
        "blocked: {cut}"
    );

    // A meter homed on node 2, through node 0: history chart, then a reading arrives live.
    let meter = id(meters_of(2).start + 2);
    let count = everything.iter().filter(|r| r.meter == meter).count();
    let last =
        everything.iter().filter(|r| r.meter == meter).map(|r| (r.ts_ms, r.litres)).max().expect("readings");
    let mut browser = tokio::task::block_in_place(|| DevTools::start(&profiles.path().join("meter")));
    let session = tokio::task::block_in_place(|| browser.open(&format!("http://{http}/#/meter/{meter}")));
    let shown = eventually("the meter page's history chart and live stream", CONVERGE, || {
        let page = tokio::task::block_in_place(|| browser.evaluate(&session, METER_PAGE));
        async move {
            let ready = page["points"] == json!(count.to_string()) && page["live"] == json!("● live");
            ready.then_some(page)
        }
    })
    .await;
    assert_eq!(shown["title"], json!(format!("Meter {meter}")));
    assert_eq!(shown["register"], json!(m3(last.1)));
    assert_eq!(shown["error"], Value::Null);
    assert_eq!(shown["latest"], json!(10));

    let newer = Reading {
        meter,
        ts_ms: now_ms() - 1000,
        litres: last.1 + 1234,
        flow_lph: Some(90),
        alarms: Alarms::empty(),
    };
    ingest(handle(&mesh, 2), vec![newer]).await;
    eventually("the live reading on the meter page", CONVERGE, || {
        let page = tokio::task::block_in_place(|| browser.evaluate(&session, METER_PAGE));
        async move {
            let ready = page["points"] == json!((count + 1).to_string())
                && page["register"] == json!(m3(newer.litres))
                && page["latest"] == json!(11);
            ready.then_some(())
        }
    })
    .await;

    // An unknown meter says so.
    let unknown = tokio::task::block_in_place(|| browser.open(&format!("http://{http}/#/meter/999999")));
    eventually("the unknown meter's message", CONVERGE, || {
        let page = tokio::task::block_in_place(|| browser.evaluate(&unknown, METER_PAGE));
        async move { page["error"].as_str().is_some_and(|e| e.contains("999999")).then_some(()) }
    })
    .await;
    tokio::task::block_in_place(|| browser.close());
}
