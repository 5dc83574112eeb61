//! The HTTP API over real TCP on loopback, with a minimal HTTP/1.1 client written here: every
//! route answers the same JSON as the CLI's `--json` (both built by `hydromesh::present::json`)
//! for the same data, parameters are checked, bodies are bounded, admin actions need a token (or
//! a signature), live events arrive, and the OpenAPI document lists every route.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{config, consumption_since, eventually, id, now_ms, readings, top_n, Mesh};
use hydromesh::http::{routes, HttpContext};
use hydromesh::present::json as present;
use hydromesh::AppHandle;
use hydromesh_proto::control::{Action, Command, Policy};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::identity::ed25519;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(30);
const ANSWER: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ a minimal HTTP/1.1 client

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` of a JSON error answer.
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.text())).to_owned()
    }
}

fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if body_len > 0 || method != "GET" {
        head += &format!("Content-Length: {body_len}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head + "\r\n"
}

/// One request on a fresh connection (`Connection: close`), the answer read to its end.
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        let head = request_head(addr, method, path, headers, body.len());
        // Write while reading: a server may answer (413) before taking the whole body.
        let write = async move {
            let _ = writer.write_all(head.as_bytes()).await;
            let _ = writer.write_all(body).await;
            writer
        };
        let read = async {
            let mut raw = Vec::new();
            let _ = reader.read_to_end(&mut raw).await;
            raw
        };
        let (_writer, raw) = tokio::join!(write, read);
        parse(&raw)
    };
    tokio::time::timeout(ANSWER, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in time"))
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], b"").await
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete HTTP head in {:?}", String::from_utf8_lossy(raw));
    });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = Chunks::default().feed(&body);
    }
    Reply { status, headers, body }
}

/// An incremental decoder of a chunked body.
#[derive(Default)]
struct Chunks {
    pending: Vec<u8>,
}

impl Chunks {
    /// Feeds raw bytes and returns the body bytes they complete.
    fn feed(&mut self, raw: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(raw);
        let mut out = Vec::new();
        while let Some(line_end) = self.pending.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
            let start = line_end + 2;
            if self.pending.len() < start + size + 2 {
                break;
            }
            out.extend_from_slice(&self.pending[start..start + size]);
            self.pending.drain(..start + size + 2);
            if size == 0 {
                break;
            }
        }
        out
    }
}

// ------------------------------------------------------------------ helpers

fn http_config(mesh: &Mesh, name: &str, bootstrap: Vec<libp2p::Multiaddr>) -> hydromesh::Config {
    let mut config = config(mesh.root.path().join(name), name, bootstrap);
    config.http = Some("127.0.0.1:0".parse().expect("addr"));
    config
}

fn handle(mesh: &Mesh, i: usize) -> &AppHandle {
    mesh.nodes[i].handle.as_ref().expect("node running")
}

fn http_addr(mesh: &Mesh, i: usize) -> SocketAddr {
    handle(mesh, i).http_addr().expect("HTTP enabled")
}

/// Two nodes; node 0 serves HTTP. Meters 100.. are homed on node 0, 200.. on node 1.
async fn two_nodes() -> Mesh {
    let mut mesh = Mesh::new();
    mesh.start(http_config(&mesh, "n0", vec![])).await;
    let first = mesh.nodes[0].addr.clone();
    mesh.start(config(mesh.root.path().join("n1"), "n1", vec![first])).await;
    mesh
}

/// Drops what changes from one answer to the next (ages, summary versions).
fn steady(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !["data_age_ms", "last_heard_ms_ago", "version"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), steady(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(steady).collect()),
        other => other.clone(),
    }
}

/// Waits until `GET path` equals (but for ages and versions) the CLI's JSON of the node's own
/// answer to `request`, and returns the HTTP JSON.
async fn same_as_cli(
    mesh: &Mesh,
    path: &str,
    request: Request,
    cli_json: fn(&Response) -> Option<Value>,
) -> Value {
    let addr = http_addr(mesh, 0);
    let node = handle(mesh, 0).client();
    let start = tokio::time::Instant::now();
    loop {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
        let http = reply.json();
        let expected = cli_json(&node.query(request.clone()).await);
        if expected.as_ref().map(steady) == Some(steady(&http)) {
            return http;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "GET {path} never equalled the CLI's JSON:\nHTTP {http}\nCLI  {}",
            expected.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reading(meter: u64, ts_ms: u64, litres: u64) -> Reading {
    Reading { meter: id(meter), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
}

async fn ingest_local(node: &AppHandle, batch: Vec<Reading>) {
    match node.client().ingest(batch).await {
        hydromesh_proto::ingest::Response::Done { outcomes, .. } => {
            assert!(outcomes.iter().all(|o| *o == hydromesh_proto::ingest::Outcome::Accepted), "{outcomes:?}")
        }
        other => panic!("batch not taken: {other:?}"),
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_like_the_cli() {
    let mesh = two_nodes().await;
    let addr = http_addr(&mesh, 0);
    let mine = readings(100..110, 10);
    let theirs = readings(200..210, 10);
    ingest_local(handle(&mesh, 0), mine.clone()).await;
    ingest_local(handle(&mesh, 1), theirs.clone()).await;
    let everything = [mine.clone(), theirs.clone()].concat();
    let truth = consumption_since(&everything, 0);

    eventually("node 0 to see both nodes' meters", CONVERGE, || async {
        let stats = get(addr, "/api/v1/stats").await.json();
        (stats["meters"] == json!(20) && stats["nodes"] == json!(2)).then_some(())
    })
    .await;

    let top = same_as_cli(&mesh, "/api/v1/top", Request::Top { n: 10, since_ms: None }, |r| match r {
        Response::Top(a) => Some(present::top_json(a)),
        _ => None,
    })
    .await;
    let ranked: Vec<(MeterId, u64)> = top["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let meter = e["meter"].as_str().and_then(|m| m.parse().ok()).expect("meter");
            (meter, e["consumption_l"].as_u64().expect("litres"))
        })
        .collect();
    assert_eq!(ranked, top_n(&truth, 10), "the exact global top-10");
    assert_eq!(top["nodes"], json!(2));

    let since = 3 * 86_400_000;
    same_as_cli(&mesh, "/api/v1/top?n=5&since=3days", Request::Top { n: 5, since_ms: Some(since) }, |r| {
        match r {
            Response::Top(a) => Some(present::top_json(a)),
            _ => None,
        }
    })
    .await;
    let stats = same_as_cli(&mesh, "/api/v1/stats", Request::Stats, |r| match r {
        Response::Stats(a) => Some(present::stats_json(a)),
        _ => None,
    })
    .await;
    assert_eq!(stats["total_consumption_l"], json!(truth.values().sum::<u64>()));
    same_as_cli(&mesh, "/api/v1/peers", Request::Peers, |r| match r {
        Response::Peers(a) => Some(present::peers_json(a)),
        _ => None,
    })
    .await;
    same_as_cli(&mesh, "/api/v1/blocked", Request::Blocked, |r| match r {
        Response::Blocked(a) => Some(present::blocked_json(a)),
        _ => None,
    })
    .await;
    same_as_cli(
        &mesh,
        "/api/v1/alerts?kind=leak",
        Request::Alerts { kind: Some(hydromesh_proto::summary::AlertKind::Leak) },
        |r| match r {
            Response::Alerts(a) => Some(present::alerts_json(a)),
            _ => None,
        },
    )
    .await;
    let policy = same_as_cli(&mesh, "/api/v1/policy", Request::Policy, |r| match r {
        Response::Policy(p, o) => Some(present::policy_json(p, o.as_ref())),
        _ => None,
    })
    .await;
    assert_eq!(policy["set_by"], Value::Null, "the default policy");

    // One meter, held by the other node: routed to its home.
    let (from, to) = (theirs[2].ts_ms, theirs[7].ts_ms);
    let window = same_as_cli(
        &mesh,
        &format!(
            "/api/v1/meters/200/readings?from={}&to={from_text}",
            from,
            from_text = hydromesh_proto::format_rfc3339(to)
        ),
        Request::Meter { meter: 200.into(), from_ms: Some(from), to_ms: Some(to) },
        |r| match r {
            Response::Meter(a) => Some(present::meter_json(a)),
            _ => None,
        },
    )
    .await;
    assert_eq!(window["readings"].as_array().map(Vec::len), Some(5));
    assert_eq!(window["home"], json!(mesh.nodes[1].peer.to_string()));
    same_as_cli(
        &mesh,
        "/api/v1/meters/105/readings",
        Request::Meter { meter: 105.into(), from_ms: None, to_ms: None },
        |r| match r {
            Response::Meter(a) => Some(present::meter_json(a)),
            _ => None,
        },
    )
    .await;
    // The summary is the CLI's answer for the last 24 h of the meter's data.
    let latest = theirs.iter().filter(|r| r.meter == 203.into()).map(|r| r.ts_ms).max().expect("readings");
    let summary = same_as_cli(
        &mesh,
        "/api/v1/meters/203",
        Request::Meter { meter: 203.into(), from_ms: Some(latest - 86_400_000), to_ms: None },
        |r| match r {
            Response::Meter(a) => Some(present::meter_json(a)),
            _ => None,
        },
    )
    .await;
    assert!(summary["bill"].is_object() && summary["blocked"].is_null(), "{summary}");
    let period = hydromesh_proto::format_rfc3339(latest);
    same_as_cli(
        &mesh,
        &format!("/api/v1/meters/203/bill?period_start={period}"),
        Request::Bill { meter: 203.into(), period_start_ms: Some(latest) },
        |r| match r {
            Response::Bill(Some(bill)) => Some(present::bill_json(bill)),
            _ => None,
        },
    )
    .await;

    // Bad parameters: 400 naming the parameter and why.
    for (path, needle) in [
        ("/api/v1/top?n=0", "n: `0` is not a whole number from 1 to 10000"),
        ("/api/v1/top?n=ten", "n: `ten`"),
        ("/api/v1/top?since=forever", "since: `forever` is neither a duration (1h, 7d) nor a time"),
        ("/api/v1/top?n=3&n=4", "parameter `n` is given twice"),
        ("/api/v1/top?limit=3", "unknown parameter `limit` (expected n, since)"),
        ("/api/v1/stats?x=1", "unknown parameter `x` (this route takes no parameter)"),
        ("/api/v1/alerts?kind=fire", "kind: unknown alert kind `fire`"),
        ("/api/v1/meters/a.b", "`a.b` is not a meter id (letters, digits, `-` and `_` only)"),
        ("/api/v1/meters/-1%2B/readings", "`-1+` is not a meter id"),
        ("/api/v1/meters/99999999999999999999999", "is not a meter id (more than 12 characters)"),
        (
            "/api/v1/meters/200/readings?from=yesterday",
            "from: `yesterday` is neither RFC 3339 nor Unix milliseconds",
        ),
        ("/api/v1/meters/200/bill?period_start=soon", "period_start: `soon`"),
    ] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 400, "GET {path}: {}", reply.text());
        assert!(reply.error().contains(needle), "GET {path}: {:?} lacks {needle:?}", reply.error());
    }
    // What the API document allows is served: `since` as a time, an empty window.
    let since = get(addr, "/api/v1/top?since=2020-01-01T00:00:00Z").await;
    assert_eq!(since.status, 200, "{}", since.text());
    for window in ["from=2000&to=2000", "from=2000&to=1000"] {
        let empty = get(addr, &format!("/api/v1/meters/200/readings?{window}")).await;
        assert_eq!(empty.status, 200, "{window}: {}", empty.text());
        assert_eq!(empty.json()["readings"], serde_json::json!([]), "{window}: {}", empty.text());
    }
    // A bound before 1970 is the start of time, not an error.
    let old = get(addr, "/api/v1/meters/200/readings?from=1438-12-12T15:42:37Z").await;
    assert_eq!(old.status, 200, "{}", old.text());
    let future = get(addr, "/api/v1/top?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future.status, 200, "{}", future.text());
    assert_eq!(future.json()["entries"], serde_json::json!([]), "a window not started ranks nothing");
    // Unknown meters and routes: 404, in JSON.
    for path in [
        "/api/v1/meters/999999",
        "/api/v1/meters/999999/readings",
        "/api/v1/meters/999999/bill",
        "/api/v1/meters/999999/live",
    ] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.text());
        assert!(reply.error().contains("999999"), "{}", reply.error());
    }
    let reply = get(addr, "/api/v2/top").await;
    assert_eq!((reply.status, reply.error().contains("no route GET /api/v2/top")), (404, true));
    let reply = send(addr, "DELETE", "/api/v1/top", &[], b"").await;
    assert_eq!(reply.status, 405, "{}", reply.text());

    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("hydromesh_readings_total{outcome=\"accepted\"} 100"),
        "{}",
        metrics.text()
    );
    // Every 400 answered above is counted once as refused input.
    let bad_requests = metrics
        .text()
        .lines()
        .find_map(|line| {
            line.strip_prefix("hydromesh_refused_total{source=\"http\",reason=\"bad_request\"} ")
        })
        .and_then(|count| count.trim().parse::<u64>().ok());
    assert!(bad_requests.is_some_and(|count| count > 0), "{}", metrics.text());
    // The classic text format, as its Content-Type says, clean for Prometheus' own checker.
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-test-deps.sh installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), metrics.text().as_bytes())
        .expect("write metrics");
    let checked = promtool.wait_with_output().expect("promtool ends");
    let findings =
        format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && findings.trim().is_empty(), "promtool check metrics: {findings}");
    // OpenMetrics to a scraper that asks for it.
    let open =
        send(addr, "GET", "/metrics", &[("accept", "application/openmetrics-text; version=1.0.0")], b"")
            .await;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.text().ends_with("# EOF\n"), "{}", open.text());

    let dashboard = get(addr, "/").await;
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(dashboard.text().contains("<script src=\"/app.js\""), "the page loads its own script only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let mut mesh = Mesh::new();
    mesh.start(http_config(&mesh, "n0", vec![])).await;
    let addr = http_addr(&mesh, 0);
    let reply = get(addr, "/api/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
    let paths = doc["paths"].as_object().expect("paths");
    let served = routes();
    for (verb, path) in &served {
        let method = verb.as_str().to_lowercase();
        assert!(
            paths.get(*path).and_then(|p| p.get(&method)).is_some(),
            "{method} {path} is not in openapi.json"
        );
        // And the route is really served (not the fallback).
        let probe = path.replace("{id}", "1");
        let reply = send(addr, verb.as_str(), &probe, &[], b"").await;
        let fallback = reply.status == 404 && reply.text().contains("no route");
        assert!(!fallback, "{} {probe} is not served", verb.as_str());
    }
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            let listed = served.iter().any(|(v, p)| p == path && v.as_str().eq_ignore_ascii_case(method));
            assert!(listed, "openapi.json describes {method} {path}, which the server does not answer");
        }
    }
    // Every reference in the document resolves.
    let text = reply.text();
    for reference in text.split("\"$ref\": \"#/").skip(1).filter_map(|rest| rest.split('"').next()) {
        let target = reference.split('/').try_fold(&doc, |node, key| node.get(key));
        assert!(target.is_some(), "dangling $ref #/{reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_in_mixed_good_and_bad_and_bounded() {
    let mut mesh = Mesh::new();
    mesh.start(http_config(&mesh, "n0", vec![])).await;
    let addr = http_addr(&mesh, 0);
    let t = now_ms() - 3_600_000;
    let body = json!([
        {"meter": 7, "ts": hydromesh_proto::format_rfc3339(t), "litres": 100},
        {"meter": 7, "ts": t + 60_000, "litres": 150, "flow_lph": 30, "alarms": ["leak"]},
        {"meter": 7, "ts": "yesterday", "litres": 1},
        {"meter": 7, "ts": t + 120_000, "litres": 120},
        null,
        {"meter": "sev en", "ts": t, "litres": 1},
        {"meter": 8, "ts": t, "litres": 12.5},
        {"meter": 7, "ts": t, "litres": 100},
        {"meter": 7, "ts": t, "litres": 101},
        {"meter": 8, "ts": now_ms() + 3_600_000, "litres": 1},
        {"meter": 8, "ts": t, "litres": 3, "alarms": "fire"},
        {"meter": 8, "ts": t + 1, "litres": 4, "flow_lph": 5000000000u64},
    ]);
    let reply = send(
        addr,
        "POST",
        "/api/v1/readings",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    assert_eq!(report["accepted"], json!(2), "{report}");
    assert_eq!(report["duplicates"], json!(1), "{report}");
    assert_eq!(report["commands"], json!([]));
    let rejected: Vec<(u64, String)> = report["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["index"].as_u64().expect("index"), r["error"].as_str().expect("error").to_owned()))
        .collect();
    let expected = [
        (2, "field `ts`: `yesterday` is neither RFC 3339 nor Unix milliseconds"),
        (3, "register decreased"),
        (4, "invalid JSON: expected an object"),
        (5, "field `meter`: `sev en` is not a meter id"),
        (6, "field `litres`: `12.5` is not a whole number of litres"),
        (8, "conflicting duplicate"),
        (9, "timestamp in the future"),
        (10, "unknown alarm `fire`"),
        (11, "is not a flow in whole litres per hour"),
    ];
    assert_eq!(rejected.len(), expected.len(), "{report}");
    for ((index, error), (want_index, want)) in rejected.iter().zip(expected) {
        assert_eq!(*index, want_index, "{report}");
        assert!(error.contains(want), "item {index}: {error:?} lacks {want:?}");
    }
    // The good ones are stored.
    let meter = get(addr, "/api/v1/meters/7/readings").await.json();
    assert_eq!(meter["consumption_l"], json!(50));
    assert_eq!(
        meter["readings"][1],
        json!({"ts": hydromesh_proto::format_rfc3339(t + 60_000), "litres": 150, "flow_lph": 30, "alarms": ["leak"]})
    );

    let empty = send(addr, "POST", "/api/v1/readings", &[], b"[]").await;
    assert_eq!(empty.json(), json!({"accepted": 0, "duplicates": 0, "rejected": [], "commands": []}));
    for bad in [&b"{\"meter\":1}"[..], b"[{\"meter\":1,", b"\xff\xfe", b""] {
        let reply = send(addr, "POST", "/api/v1/readings", &[], bad).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.error().starts_with("the body is not a JSON array of readings"), "{}", reply.error());
    }
    let too_many = format!("[{}]", vec!["{}"; 10_001].join(","));
    let reply = send(addr, "POST", "/api/v1/readings", &[], too_many.as_bytes()).await;
    assert_eq!(
        (reply.status, reply.error()),
        (413, "10001 readings in one request (at most 10000)".to_owned())
    );
    let oversized = vec![b' '; 3 * 1024 * 1024];
    let reply = send(addr, "POST", "/api/v1/readings", &[], &oversized).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.error().contains("larger than 2097152 bytes"), "{}", reply.error());
    // A body announced over the limit is refused at once, none of it sent (not at the request
    // deadline).
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("POST /api/v1/readings HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000000000\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let reply = tokio::time::timeout(hydromesh::http::REQUEST_DEADLINE / 2, read_one(&mut stream))
        .await
        .expect("answered before the request deadline");
    assert_eq!(reply.status, 413, "{}", reply.text());

    // Nothing a client sends makes the server fail: odd paths, methods, headers and bodies.
    let odd: [(&str, &str, &[u8]); 8] = [
        ("GET", "/api/v1/meters/%FF%FE", b""),
        ("GET", "/api/v1/top?n=%ZZ", b""),
        ("POST", "/api/v1/admin/signed", b"zz"),
        ("POST", "/api/v1/admin/signed", b"\x00\x01"),
        ("PUT", "/api/v1/admin/policy", b"{\"period\":"),
        ("GET", "/api/v1/meters/1/live?x=1", b""),
        (
            "POST",
            "/api/v1/readings",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ),
        ("GET", &format!("/api/v1/meters/{}", "9".repeat(5000)), b""),
    ];
    for (method, path, body) in odd {
        let reply = send(addr, method, path, &[("Authorization", "Bearer \u{e9}t\u{e9}")], body).await;
        assert!(reply.status < 500, "{method} {path}: {} {}", reply.status, reply.text());
    }
    assert_eq!(get(addr, "/api/v1/stats").await.status, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_need_a_token_or_a_signature() {
    let admin = ed25519::Keypair::generate();
    let mut mesh = Mesh::new();
    let mut node_config = http_config(&mesh, "n0", vec![]);
    node_config.admin_keys = vec![admin.public()];
    node_config.admin_tokens = vec!["tok-en".into()];
    mesh.start(node_config).await;
    let node = handle(&mesh, 0);
    ingest_local(node, vec![reading(42, now_ms() - 60_000, 10)]).await;
    let without_signer = http_addr(&mesh, 0);

    // The same node served with an admin key to sign with.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let context = HttpContext {
        node: node.client(),
        metrics: node.metrics(),
        admin_tokens: Arc::new(vec!["tok-en".into()]),
        admin_signer: Some(Arc::new(admin.clone())),
    };
    let cancel = CancellationToken::new();
    let server = hydromesh::http::serve(listener, context, cancel.clone());

    let block = br#"{"meter":42,"reason":"inspection"}"#;
    for (target, auth) in [
        (addr, None),
        (addr, Some("Bearer wrong")),
        (addr, Some("Basic tok-en")),
        (addr, Some("Bearer ")),
        (without_signer, None),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        let reply = send(target, "POST", "/api/v1/admin/block", &headers, block).await;
        assert_eq!(reply.status, 401, "{auth:?}: {}", reply.text());
        assert!(reply.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    }
    let token = [("Authorization", "Bearer tok-en")];
    let reply = send(without_signer, "POST", "/api/v1/admin/block", &token, block).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.error(), "this node has no admin key to sign with (start it with --admin-key FILE)");

    // With a token and a signer: applied, as a command signed by the node's admin key.
    let reply = send(
        addr,
        "PUT",
        "/api/v1/admin/policy",
        &token,
        br#"{"period":"7d","cap_l":5000,"above_average":1.5}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["applied"], json!(true));
    let policy = get(addr, "/api/v1/policy").await.json();
    assert_eq!(policy["period_ms"], json!(7 * 86_400_000u64), "{policy}");
    assert_eq!((policy["cap_l"].clone(), policy["above_average"].clone()), (json!(5000), json!(1.5)));
    assert_eq!(policy["set_by"], json!(hydromesh::keys::to_hex(&admin.public().to_bytes())));
    // Fields left out keep their value; 0 turns a rule off.
    let reply = send(addr, "PUT", "/api/v1/admin/policy", &token, br#"{"cap_l":0}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let policy = get(addr, "/api/v1/policy").await.json();
    assert_eq!(
        (policy["cap_l"].clone(), policy["period_ms"].clone()),
        (Value::Null, json!(7 * 86_400_000u64))
    );
    for (body, needle) in [
        (&br#"{"period":"10ms"}"#[..], "period must be between 1 minute and 10 years"),
        (br#"{"above_average":0.5}"#, "above_average: must be between 1 and 1000"),
        (br#"{"period":"soon"}"#, "period: `soon` is not a duration"),
        (br#"{"cap":5}"#, "invalid JSON body: unknown field `cap`"),
    ] {
        let reply = send(addr, "PUT", "/api/v1/admin/policy", &token, body).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.error().contains(needle), "{:?} lacks {needle:?}", reply.error());
    }

    let long = format!(r#"{{"meter":42,"reason":"{}"}}"#, "é".repeat(51));
    let reply = send(addr, "POST", "/api/v1/admin/block", &token, long.as_bytes()).await;
    assert_eq!((reply.status, reply.error().as_str()), (400, "reason: longer than 50 characters"));
    let reply = send(addr, "POST", "/api/v1/admin/block", &token, block).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    eventually("the block to show in /api/v1/blocked", CONVERGE, || async {
        let blocked = get(addr, "/api/v1/blocked").await.json();
        let entry = &blocked["blocked"][0];
        (entry["meter"] == json!("42")
            && entry["reason"] == json!("manual")
            && entry["detail"] == json!("inspection"))
        .then_some(())
    })
    .await;
    let reply = send(addr, "POST", "/api/v1/admin/block", &token, br#"{"meter":4242}"#).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = send(addr, "POST", "/api/v1/admin/unblock", &token, br#"{"meter":"42"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = send(addr, "POST", "/api/v1/admin/paid", &token, br#"{"meter":42}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    eventually("the unblock to show in /api/v1/meters/42", CONVERGE, || async {
        let meter = get(addr, "/api/v1/meters/42").await.json();
        meter["blocked"].is_null().then_some(())
    })
    .await;

    // A pre-signed command needs no token (on either server): the node verifies the signature.
    let signed_hex = |key: &ed25519::Keypair, issued_at_ms: u64, action: Action| {
        let signed = hydromesh::mesh::control::sign(key, &Command { issued_at_ms, action }).expect("sign");
        hydromesh::keys::to_hex(&hydromesh_proto::encode(&signed).expect("encode"))
    };
    let cap = |cap_l| Action::Policy(Policy { cap_l: Some(cap_l), ..Policy::default() });
    let hex = signed_hex(&admin, now_ms(), cap(777));
    let reply = send(without_signer, "POST", "/api/v1/admin/signed", &[], hex.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get(addr, "/api/v1/policy").await.json()["cap_l"], json!(777));
    let stranger = ed25519::Keypair::generate();
    let reply =
        send(addr, "POST", "/api/v1/admin/signed", &[], signed_hex(&stranger, now_ms(), cap(1)).as_bytes())
            .await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.error().contains("does not trust"), "{}", reply.error());
    let mut forged = signed_hex(&admin, now_ms(), cap(2)).into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let reply = send(addr, "POST", "/api/v1/admin/signed", &[], &forged).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let reply = send(
        addr,
        "POST",
        "/api/v1/admin/signed",
        &[],
        signed_hex(&admin, now_ms(), Action::Block { meter: 4242.into(), reason: "x".into() }).as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = send(addr, "POST", "/api/v1/admin/signed", &[], b"not hex").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(get(addr, "/api/v1/policy").await.json()["cap_l"], json!(777), "nothing refused was applied");

    cancel.cancel();
    server.await.expect("server stops");
}

/// Reads Server-Sent Events off a raw chunked HTTP stream.
struct Events {
    stream: TcpStream,
    chunks: Chunks,
    text: String,
}

impl Events {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Events {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = request_head(addr, "GET", path, headers, 0);
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(ANSWER, stream.read(&mut buf))
                .await
                .expect("head in time")
                .expect("read");
            assert!(n > 0, "closed before the head");
            raw.extend_from_slice(&buf[..n]);
        }
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_default();
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        let mut events = Events { stream, chunks: Chunks::default(), text: String::new() };
        let body = events.chunks.feed(&raw[end + 4..]);
        events.text.push_str(&String::from_utf8_lossy(&body));
        events
    }

    /// The next event with data: (id, data as JSON).
    async fn next(&mut self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let field = |name: &str| event.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
                if let Some(data) = field("data: ") {
                    let id = field("id: ").unwrap_or_default();
                    return (id, serde_json::from_str(&data).expect("JSON data"));
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .expect("an event in time")
                .expect("read");
            assert!(n > 0, "the stream ended");
            let body = self.chunks.feed(&buf[..n]);
            self.text.push_str(&String::from_utf8_lossy(&body));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_follow_a_meter_through_any_node() {
    let mesh = two_nodes().await;
    let addr = http_addr(&mesh, 0);
    let home = handle(&mesh, 1);
    let t = now_ms() - 600_000;
    ingest_local(home, vec![reading(300, t, 10), reading(300, t + 1000, 20)]).await;
    // The HTTP node routes to the home once it has the home's summary.
    eventually("node 0 to know meter 300's home", CONVERGE, || async {
        (get(addr, "/api/v1/meters/300/bill").await.status == 200).then_some(())
    })
    .await;

    let mut events = Events::open(addr, "/api/v1/meters/300/live", &[]).await;
    let peer = mesh.nodes[1].peer.to_string();
    let (id, first) = events.next().await;
    assert_eq!(
        first,
        present::follow_json(300.into(), &peer, &reading(300, t + 1000, 20)),
        "first: the latest reading"
    );
    assert_eq!(id, (t + 1000).to_string());

    let newer = Reading { flow_lph: Some(60), alarms: Alarms::LEAK, ..reading(300, t + 2000, 35) };
    ingest_local(home, vec![newer]).await;
    let (id, next) = events.next().await;
    assert_eq!(next, present::follow_json(300.into(), &peer, &newer));
    assert_eq!(id, (t + 2000).to_string());

    // A reconnecting client resumes after its last reading.
    ingest_local(home, vec![reading(300, t + 3000, 40)]).await;
    let resume = (t + 2000).to_string();
    let mut again = Events::open(addr, "/api/v1/meters/300/live", &[("Last-Event-ID", &resume)]).await;
    let (id, _) = again.next().await;
    assert_eq!(id, (t + 3000).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_bounded_and_end_with_their_client() {
    let mut mesh = Mesh::new();
    let mut node_config = http_config(&mesh, "n0", vec![]);
    // One request at a time: a live stream's long poll takes the node's only slot.
    node_config.max_pending_requests = 1;
    mesh.start(node_config).await;
    let addr = http_addr(&mesh, 0);
    ingest_local(handle(&mesh, 0), vec![reading(5, now_ms() - 60_000, 10)]).await;

    let mut stream = Events::open(addr, "/api/v1/meters/5/live", &[]).await;
    stream.next().await;
    eventually("the open stream to fill the node", CONVERGE, || async {
        (get(addr, "/api/v1/meters/5/bill").await.status == 503).then_some(())
    })
    .await;
    let refused = get(addr, "/api/v1/meters/5/live").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.error(), "the node is busy; try again shortly");

    // The client goes away: the stream stops asking, and the slot is free again.
    let gone = tokio::time::Instant::now();
    drop(stream);
    eventually("the stream to end after its client left", CONVERGE, || async {
        (get(addr, "/api/v1/meters/5/bill").await.status == 200).then_some(())
    })
    .await;
    eprintln!("slot free {:?} after the client left", gone.elapsed());
}

/// Writes an admin key file as `hydromesh keygen` does (hex of the secret), with `mode`.
#[cfg(unix)]
fn key_file(path: &std::path::Path, key: &ed25519::Keypair, mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).expect("key file");
    writeln!(file, "{}", hydromesh::keys::to_hex(key.secret().as_ref())).expect("write key");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_signs_token_actions_with_its_admin_key_file() {
    let admin = ed25519::Keypair::generate();
    let mut mesh = Mesh::new();
    let key_path = mesh.root.path().join("admin.key");
    key_file(&key_path, &admin, 0o600);
    let mut node_config = http_config(&mesh, "n0", vec![]);
    node_config.admin_keys = vec![admin.public()];
    node_config.admin_tokens = vec!["tok-en".into()];
    node_config.admin_key_file = Some(key_path);
    mesh.start(node_config).await;
    let addr = http_addr(&mesh, 0);
    let reply = send(
        addr,
        "PUT",
        "/api/v1/admin/policy",
        &[("Authorization", "Bearer tok-en")],
        br#"{"cap_l":9000}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let policy = get(addr, "/api/v1/policy").await.json();
    assert_eq!(policy["cap_l"], json!(9000));
    assert_eq!(policy["set_by"], json!(hydromesh::keys::to_hex(&admin.public().to_bytes())));

    // A key file others can read is refused, and the node does not start.
    let loose = mesh.root.path().join("loose.key");
    key_file(&loose, &admin, 0o644);
    let mut loose_config = http_config(&mesh, "n1", vec![]);
    loose_config.admin_key_file = Some(loose);
    let error = hydromesh::App::spawn(loose_config).await.err().expect("the node refuses the key file");
    assert!(error.to_string().contains("readable by others"), "{error}");
}

/// Slowloris: more clients than the server has connection slots open connections and send the
/// first byte of a request, then nothing. A new client still gets its answers, long before any
/// of them reaches the request deadline: each new connection closes one that has only been
/// waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hold_connections_without_requests_do_not_lock_others_out() {
    use hydromesh::http::{EVICT_AFTER, MAX_CONNECTIONS, REQUEST_DEADLINE};
    // Both ends of 1,074 connections live in this process: as a node does, it takes the open
    // files its hard limit allows.
    hydromesh::cli::node::raise_open_files_limit();
    let mut mesh = Mesh::new();
    mesh.start(http_config(&mesh, "n0", vec![])).await;
    let addr = http_addr(&mesh, 0);
    let mut slow = Vec::with_capacity(MAX_CONNECTIONS + 50);
    for _ in 0..MAX_CONNECTIONS + 50 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"G").await.expect("a first byte");
        slow.push(stream);
    }
    let started = tokio::time::Instant::now();
    for round in 0..5 {
        let asked = tokio::time::Instant::now();
        // Within the deadline: answered because waiting connections made room, not because
        // the deadline closed them.
        let reply = tokio::time::timeout(REQUEST_DEADLINE / 2, get(addr, "/api/v1/stats"))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no answer within {:?}", REQUEST_DEADLINE / 2));
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        eprintln!("round {round}: answered in {:?}", asked.elapsed());
    }
    assert!(started.elapsed() < REQUEST_DEADLINE, "{:?}", started.elapsed());
    // Connections were closed to make room: one for each that came in over the slots (the 50
    // slow ones beyond them and the first answered client; later clients took the slot the one
    // before them freed).
    let mut closed = 0;
    for stream in &mut slow {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed > 50, "{closed} of the slow connections closed");
    assert!(EVICT_AFTER < REQUEST_DEADLINE / 2);
}

/// A request that trickles in a byte at a time is closed at the request deadline: the bytes do
/// not extend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_a_byte_at_a_time_is_closed_at_the_deadline() {
    use hydromesh::http::REQUEST_DEADLINE;
    let mut mesh = Mesh::new();
    mesh.start(http_config(&mesh, "n0", vec![])).await;
    let addr = http_addr(&mesh, 0);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    stream.write_all(b"GET /api/v1/stats HTTP/1.1\r\n").await.expect("request line");
    let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in header {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("answered a request that never ended"),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("closed before the header ended");
    assert!(
        closed_after >= REQUEST_DEADLINE && closed_after < REQUEST_DEADLINE + Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
}

/// Reads one answer (with a `Content-Length`) from a connection that stays open.
async fn read_one(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let length: usize =
                parse(&raw).header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return parse(&raw[..end + 4 + length]);
            }
        }
    }
}

/// Overload: busy is decided before a body is read. With room for one batch in the writer's
/// queue, two clients send a batch's head and hold its body back: one takes the place, the
/// other is answered 503 (with `Retry-After`) at once, its body still unsent. It then sends the
/// body, which is read away, and its connection still serves; the first batch, completed, is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_answered_before_the_body_is_read() {
    let mut mesh = Mesh::new();
    let mut config = http_config(&mesh, "n0", vec![]);
    config.ingest_queue_batches = 1;
    mesh.start(config).await;
    let addr = http_addr(&mesh, 0);
    let ts = now_ms() - 60_000;
    let body =
        |meter: u64| serde_json::to_vec(&json!([{"meter": meter, "ts": ts, "litres": 10}])).expect("json");
    let head = |length: usize| {
        format!("POST /api/v1/readings HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    };
    let mut clients = Vec::new();
    for meter in [4242, 4243] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head(body(meter).len()).as_bytes()).await.expect("head");
        clients.push((meter, stream));
    }
    let (mut a, mut b) = (clients.remove(0), clients.remove(0));
    let answered = tokio::time::timeout(ANSWER, async {
        tokio::select! {
            reply = read_one(&mut a.1) => (reply, true),
            reply = read_one(&mut b.1) => (reply, false),
        }
    })
    .await
    .expect("one of the two answered before sending its body");
    let (reply, (mut refused, mut holder)) = match answered {
        (reply, true) => (reply, (a, b)),
        (reply, false) => (reply, (b, a)),
    };
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
    // The refused body follows; the connection then serves the next request.
    refused.1.write_all(&body(refused.0)).await.expect("refused body");
    refused
        .1
        .write_all(format!("GET /api/v1/stats HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("next");
    let next = tokio::time::timeout(ANSWER, read_one(&mut refused.1)).await.expect("the next answer");
    assert_eq!(next.status, 200, "{}", next.text());
    holder.1.write_all(&body(holder.0)).await.expect("held body");
    let stored = tokio::time::timeout(ANSWER, read_one(&mut holder.1)).await.expect("the batch's answer");
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.json()["accepted"], json!(1), "{}", stored.text());
    assert_eq!(get(addr, &format!("/api/v1/meters/{}", holder.0)).await.status, 200);
}
