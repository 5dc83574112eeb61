//! MQTT ingest with real MQTT clients and a real broker: the embedded broker acknowledges a
//! QoS 1 (and QoS 2) publish only once its reading is stored, converts wmbusmeters' JSON, sends
//! valve commands to subscribers, refuses and counts bad input while it keeps serving, keeps
//! many publishes in flight in order, enforces the keep-alive, and stops cleanly; and a node
//! subscribed to a real mosquitto stores what is published there and publishes its commands
//! back.
//!
//! Needs `mosquitto`, `mosquitto_pub` and `mosquitto_sub` (scripts/install-test-deps.sh).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::{eventually, now_ms, Mesh, HOUR_MS};
use hydromesh::AppHandle;
use hydromesh_proto::control::{Action, Command as AdminCommand, Policy};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::summary::AlertKind;
use hydromesh_proto::{format_rfc3339, Alarms, MeterId, Reading};
use libp2p::identity::ed25519;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);
const COMMAND_TOPIC: &str = "hydromesh/meters/+/command";

/// The path of a test tool, or a failure that says how to install it.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter().map(|dir| dir.join(name)).find(|path| path.is_file()).unwrap_or_else(|| {
        panic!("`{name}` is missing: the MQTT tests need the mosquitto broker and clients; run scripts/install-test-deps.sh")
    })
}

/// A node with the embedded broker on a free loopback port, trusting `admin`.
async fn node_with_broker(mesh: &mut Mesh, name: &str, admin: Option<&ed25519::Keypair>) -> usize {
    let mut config = common::config(mesh.root.path().join(name), name, vec![]);
    config.mqtt = Some("127.0.0.1:0".parse().expect("addr"));
    config.admin_keys = admin.map(|key| vec![key.public()]).unwrap_or_default();
    mesh.start(config).await
}

fn handle(mesh: &Mesh, i: usize) -> &AppHandle {
    mesh.nodes[i].handle.as_ref().expect("the node runs")
}

fn mqtt_addr(mesh: &Mesh, i: usize) -> SocketAddr {
    handle(mesh, i).mqtt_addr().expect("the embedded broker listens")
}

/// Runs `mosquitto_pub` against `addr` with `args` and returns its output once it exits
/// (with `-q 1` or `-q 2`, after the broker acknowledged).
async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> Output {
    let mut command = Command::new(tool("mosquitto_pub"));
    command.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("mosquitto_pub runs")).await.expect("join")
}

/// Publishes `payload` on `topic` at `qos` and asserts mosquitto_pub succeeded.
async fn publish(addr: SocketAddr, qos: &str, topic: &str, payload: &str) {
    let output = mosquitto_pub(addr, &["-q", qos, "-t", topic, "-m", payload]).await;
    assert!(output.status.success(), "mosquitto_pub failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A child process killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mosquitto_sub` waiting for one message on `topic` at QoS 1, speaking MQTT `version`
/// (`mqttv311`, `mqttv5`).
fn subscribe_once(addr: SocketAddr, topic: &str, version: &str) -> Process {
    let child = Command::new(tool("mosquitto_sub"))
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-V", version])
        .args(["-q", "1", "-t", topic, "-C", "1", "-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    Process(child)
}

/// The subscriber's first message, once it has exited.
fn received(subscriber: &mut Process) -> Option<String> {
    subscriber.0.try_wait().expect("mosquitto_sub status")?;
    let mut out = String::new();
    std::io::Read::read_to_string(subscriber.0.stdout.as_mut()?, &mut out).ok()?;
    Some(out.trim().to_owned())
}

/// A real mosquitto on a free loopback port, with its own configuration file.
struct Mosquitto {
    _process: Process,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_mosquitto() -> Mosquitto {
    // A port free a moment ago; the broker's exit is caught below if another took it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    start_mosquitto_on(port).await
}

async fn start_mosquitto_on(port: u16) -> Mosquitto {
    start_mosquitto_with(port, "").await
}

/// A real mosquitto on `port`, with `extra` lines in its configuration.
async fn start_mosquitto_with(port: u16, extra: &str) -> Mosquitto {
    let binary = tool("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"),
    )
    .expect("write mosquitto.conf");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let mut process = Process(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually("mosquitto to listen", DEADLINE, || {
        let exited = process.0.try_wait().expect("mosquitto status");
        assert!(exited.is_none(), "mosquitto exited at start: {exited:?}");
        async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
    })
    .await;
    Mosquitto { _process: process, addr, _dir: dir }
}

async fn history(node: &AppHandle, meter: MeterId) -> Vec<Reading> {
    match node.client().query(Request::Meter { meter, from_ms: None, to_ms: None }).await {
        Response::Meter(answer) => answer.history.readings,
        _ => Vec::new(),
    }
}

fn refused(node: &AppHandle, reason: &str) -> u64 {
    let text = node.metrics().encode();
    let label = format!("hydromesh_refused_total{{source=\"mqtt\",reason=\"{reason}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&label)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn readings_counted(node: &AppHandle, outcome: &str) -> u64 {
    let text = node.metrics().encode();
    let label = format!("hydromesh_readings_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&label)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn reading_json(ts_ms: u64, litres: u64) -> String {
    format!(r#"{{"ts":"{}","litres":{litres}}}"#, format_rfc3339(ts_ms))
}

/// Sets a cap of `cap_l` litres per period through the node's in-process client.
async fn set_cap(node: &AppHandle, key: &ed25519::Keypair, cap_l: u64) {
    let command = AdminCommand {
        issued_at_ms: now_ms(),
        action: Action::Policy(Policy { cap_l: Some(cap_l), ..Policy::default() }),
    };
    let signed = hydromesh::mesh::control::sign(key, &command).expect("sign");
    let answer = node.client().query(Request::Admin(signed)).await;
    assert!(matches!(answer, Response::Applied(_)), "{answer:?}");
}

/// A time in the current rationing period, a little in the past.
fn in_current_period() -> u64 {
    let now = now_ms();
    (now - HOUR_MS / 2).max(Policy::default().period_start(now) + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_acknowledged_only_once_its_reading_is_stored() {
    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let addr = mqtt_addr(&mesh, n);
    let ts = now_ms() - HOUR_MS;

    // QoS 1: once mosquitto_pub has its PUBACK, the reading is there, without waiting.
    let json = format!(r#"{{"ts":"{}","litres":1500,"flow_lph":30,"alarms":["leak"]}}"#, format_rfc3339(ts));
    publish(addr, "1", "hydromesh/meters/4242/reading", &json).await;
    let stored = history(handle(&mesh, n), 4242.into()).await;
    let expected =
        Reading { meter: 4242.into(), ts_ms: ts, litres: 1500, flow_lph: Some(30), alarms: Alarms::LEAK };
    assert_eq!(stored, vec![expected]);

    // QoS 2: the PUBREC waits for storage the same way.
    publish(addr, "2", "hydromesh/meters/4242/reading", &reading_json(ts + 60_000, 1510)).await;
    assert_eq!(history(handle(&mesh, n), 4242.into()).await.len(), 2);

    // QoS 0: stored too, with nothing to wait for.
    publish(
        addr,
        "0",
        "hydromesh/meters/4242/reading",
        &format!(r#"{{"ts":{},"litres":1520}}"#, ts + 120_000),
    )
    .await;
    eventually("the QoS 0 reading to be stored", DEADLINE, || async {
        (history(handle(&mesh, n), 4242.into()).await.len() == 3).then_some(())
    })
    .await;

    // The same reading again is a duplicate: acknowledged, stored once.
    publish(addr, "1", "hydromesh/meters/4242/reading", &reading_json(ts + 60_000, 1510)).await;
    assert_eq!(history(handle(&mesh, n), 4242.into()).await.len(), 3);
    assert_eq!(readings_counted(handle(&mesh, n), "duplicate"), 1);

    // Many messages on one connection (`-l`: one per line): when mosquitto_pub is done, every
    // one of them was acknowledged, so every one is stored.
    let lines: String = (0..2000u64).map(|k| reading_json(ts + k * 1000, 2000 + k) + "\n").collect();
    let file = mesh.root.path().join("lines.jsonl");
    std::fs::write(&file, lines).expect("write");
    let mut command = Command::new(tool("mosquitto_pub"));
    command.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
    command.args(["-q", "1", "-t", "hydromesh/meters/4343/reading", "-l"]);
    command.stdin(std::fs::File::open(&file).expect("open"));
    let output = tokio::task::spawn_blocking(move || command.output().expect("mosquitto_pub runs"))
        .await
        .expect("join");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(history(handle(&mesh, n), 4343.into()).await.len(), 2000);
    mesh.stop(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_and_3_1_1_are_spoken_and_3_1_is_refused_with_a_connack() {
    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let addr = mqtt_addr(&mesh, n);
    let ts = now_ms() - HOUR_MS;
    let said = |output: &Output| {
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    for (k, version) in ["mqttv5", "mqttv311"].into_iter().enumerate() {
        let json = reading_json(ts + k as u64 * 1000, 100 + k as u64);
        let output = mosquitto_pub(
            addr,
            &["-V", version, "-d", "-q", "1", "-t", "hydromesh/meters/55/reading", "-m", &json],
        )
        .await;
        assert!(output.status.success(), "{version}: {}", said(&output));
        assert!(said(&output).contains("received PUBACK"), "{version}: {}", said(&output));
        assert_eq!(
            history(handle(&mesh, n), 55.into()).await.len(),
            k + 1,
            "{version}: stored once acknowledged"
        );
    }
    // Each client ended with a normal DISCONNECT: nothing counted as a protocol error.
    assert_eq!(refused(handle(&mesh, n), "protocol_error"), 0);
    // MQTT 5 says why a message is refused: 0x99, payload format invalid.
    let output = mosquitto_pub(
        addr,
        &["-V", "mqttv5", "-d", "-q", "1", "-t", "hydromesh/meters/55/reading", "-m", "nope"],
    )
    .await;
    assert!(said(&output).contains("RC:153"), "{}", said(&output));
    // MQTT 3.1 is told its version is not spoken, in a CONNACK, not by a dropped socket.
    let output = mosquitto_pub(
        addr,
        &["-V", "mqttv31", "-d", "-q", "1", "-t", "hydromesh/meters/55/reading", "-m", "{}"],
    )
    .await;
    assert!(!output.status.success());
    assert!(said(&output).contains("unacceptable protocol version"), "{}", said(&output));
    mesh.stop(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wmbusmeters_json_becomes_a_reading_with_litres_and_alarms() {
    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let ts = now_ms() - 2 * HOUR_MS;
    let json = format!(
        r#"{{"_":"telegram","media":"water","meter":"multical21","name":"Kitchen","id":"76348799",
           "total_m3":6.4086,"target_m3":6.001,"max_flow_m3h":0,"flow_temperature_c":12,
           "current_status":"LEAK BURST SOMETHING_NEW","timestamp":"{}","device":"im871a[1234567]","rssi_dbm":-40}}"#,
        format_rfc3339(ts)
    );
    publish(mqtt_addr(&mesh, n), "1", "wmbusmeters/Kitchen", &json).await;
    let stored = history(handle(&mesh, n), 76_348_799.into()).await;
    let expected = Reading {
        meter: 76_348_799.into(),
        ts_ms: ts,
        litres: 6409,
        flow_lph: None,
        alarms: Alarms::LEAK.union(Alarms::BURST).union(Alarms::OTHER),
    };
    assert_eq!(stored, vec![expected], "6.4086 m³ is 6409 L; the unknown status word is kept as `other`");
    eventually("the `other` alert in the node's answers", DEADLINE, || async {
        let request = Request::Alerts { kind: Some(AlertKind::Other) };
        let Response::Alerts(alerts) = handle(&mesh, n).client().query(request).await else { return None };
        let meters: Vec<MeterId> = alerts.alerts.iter().map(|e| e.alert.meter).collect();
        (meters == [MeterId::from(76_348_799)]).then_some(())
    })
    .await;
    let request = Request::Meter { meter: 76_348_799.into(), from_ms: None, to_ms: None };
    let Response::Meter(answer) = handle(&mesh, n).client().query(request).await else { panic!("meter") };
    assert_eq!(answer.status.unknown_status, ["SOMETHING_NEW"], "the word on the meter, as sent");
    // Ids as wmbusmeters prints them, hex and leading zeros (outputs of its izar and apator172
    // driver tests).
    let time = format_rfc3339(ts);
    let izar = format!(
        r#"{{"media":"water","meter":"izar","name":"IzarWater4","id":"2124589c","prefix":"H19CA","serial_number":"159196","total_m3":38.944,"last_month_total_m3":38.691,"last_month_measure_date":"2021-02-01","remaining_battery_life_y":10,"current_alarms":"no_alarm","previous_alarms":"no_alarm","transmit_period_s":32,"manufacture_year":"2019","timestamp":"{time}"}}"#
    );
    let apator = format!(
        r#"{{"media":"water","meter":"apator172","name":"Vattur","id":"0014a807","total_m3":7177.7,"timestamp":"{time}"}}"#
    );
    publish(mqtt_addr(&mesh, n), "1", "wmbusmeters/IzarWater4", &izar).await;
    publish(mqtt_addr(&mesh, n), "1", "wmbusmeters/Vattur", &apator).await;
    for (id, litres) in [("2124589C", 38_944), ("0014a807", 7_177_700)] {
        let meter = MeterId::parse(id).expect("a printed id");
        let stored = history(handle(&mesh, n), meter).await;
        assert_eq!(stored.iter().map(|r| (r.ts_ms, r.litres)).collect::<Vec<_>>(), [(ts, litres)], "{id}");
    }
    let unpadded = MeterId::parse("14a807").expect("an id");
    assert!(history(handle(&mesh, n), unpadded).await.is_empty(), "0014a807 is not 14a807");
    mesh.stop(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_over_the_cap_sends_a_closed_valve_command_to_subscribers() {
    let key = ed25519::Keypair::generate();
    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", Some(&key)).await;
    let addr = mqtt_addr(&mesh, n);
    set_cap(handle(&mesh, n), &key, 100).await;

    let meter = 7001;
    let topic = format!("hydromesh/meters/{meter}/reading");
    let t0 = in_current_period();
    publish(addr, "1", &topic, &reading_json(t0, 1000)).await;
    // Subscribers of both versions.
    let mut subscribers =
        [subscribe_once(addr, COMMAND_TOPIC, "mqttv311"), subscribe_once(addr, COMMAND_TOPIC, "mqttv5")];
    let mut messages: [Option<String>; 2] = [None, None];
    // Every acknowledgement of the cut meter carries `closed`: publish until the subscribers,
    // once subscribed, have one.
    let mut k = 0;
    eventually("both mosquitto_subs to receive the valve command", DEADLINE, || {
        k += 1;
        let json = reading_json(t0 + k * 1000, 1500);
        let topic = topic.clone();
        for (message, subscriber) in messages.iter_mut().zip(&mut subscribers) {
            if message.is_none() {
                *message = received(subscriber);
            }
        }
        let all = messages.iter().all(Option::is_some);
        async move {
            if !all {
                publish(addr, "1", &topic, &json).await;
            }
            all.then_some(())
        }
    })
    .await;
    for message in messages {
        assert_eq!(message, Some(format!(r#"{{"meter":"{meter}","valve":"closed"}}"#)));
    }
    mesh.stop(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_counted_and_the_node_keeps_serving() {
    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let addr = mqtt_addr(&mesh, n);
    let node = handle(&mesh, n);
    let dir = tempfile::tempdir().expect("tempdir");

    // Each refused message is still acknowledged: it was received, sending it again is useless.
    publish(addr, "1", "hydromesh/meters/5/reading", "not json {").await;
    publish(addr, "1", "hydromesh/meters/5/reading", r#"{"ts":"yesterday","litres":1}"#).await;
    publish(addr, "1", "some/other/topic", "{}").await;
    publish(addr, "1", "hydromesh/meters/5/command", r#"{"meter":5,"valve":"open"}"#).await;
    let large = dir.path().join("large.json");
    std::fs::write(&large, format!(r#"{{"ts":1,"litres":1,"pad":"{}"}}"#, "x".repeat(20 * 1024)))
        .expect("write");
    let output =
        mosquitto_pub(addr, &["-q", "1", "-t", "hydromesh/meters/5/reading", "-f", path(&large)]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // A packet over the limit closes the connection.
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, "x".repeat(hydromesh::mqtt::MAX_PACKET_BYTES + 1)).expect("write");
    let _ = mosquitto_pub(addr, &["-q", "1", "-t", "hydromesh/meters/5/reading", "-f", path(&huge)]).await;
    // MQTT 3.1 is refused.
    let output =
        mosquitto_pub(addr, &["-V", "mqttv31", "-q", "1", "-t", "hydromesh/meters/5/reading", "-m", "{}"])
            .await;
    assert!(!output.status.success(), "mqttv31 was accepted");
    // A reading that breaks a rule (in the future) is acknowledged and counted by the node.
    publish(addr, "1", "hydromesh/meters/5/reading", &reading_json(now_ms() + 3_600_000, 1)).await;

    eventually("every refusal to be counted", DEADLINE, || async {
        let counts = [
            refused(node, "malformed_json"),
            refused(node, "invalid_reading"),
            refused(node, "unknown_topic"),
            refused(node, "payload_too_large"),
            refused(node, "packet_too_large"),
            refused(node, "protocol_error"),
        ];
        (counts == [1, 1, 2, 1, 1, 1]).then_some(())
    })
    .await;
    assert_eq!(readings_counted(node, "future_timestamp"), 1);

    // And the next good message is stored.
    let ts = now_ms() - HOUR_MS;
    publish(addr, "1", "hydromesh/meters/5/reading", &reading_json(ts, 42)).await;
    let stored = history(node, 5.into()).await;
    assert_eq!(stored.iter().map(|r| (r.ts_ms, r.litres)).collect::<Vec<_>>(), vec![(ts, 42)]);
    mesh.stop(n).await;
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishes_in_flight_are_stored_and_acknowledged_in_order() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let addr = mqtt_addr(&mesh, n);
    let mut options = MqttOptions::new("inflight-test", addr.ip().to_string(), addr.port());
    options.set_inflight(100).set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 1000);

    const METERS: u64 = 40;
    const PER_METER: u64 = 50;
    let start = now_ms() - 2 * 86_400_000;
    let publisher = tokio::spawn(async move {
        for k in 0..PER_METER {
            for meter in 0..METERS {
                let json = format!(r#"{{"ts":{},"litres":{}}}"#, start + k * 60_000, 100 * k + meter);
                let topic = format!("hydromesh/meters/{}/reading", 9000 + meter);
                client.publish(topic, QoS::AtLeastOnce, false, json).await.expect("publish");
            }
        }
        client
    });
    let (mut sent, mut acked) = (Vec::new(), Vec::new());
    let total = (METERS * PER_METER) as usize;
    tokio::time::timeout(DEADLINE, async {
        while acked.len() < total {
            match eventloop.poll().await.expect("connection") {
                Event::Outgoing(Outgoing::Publish(pkid)) => sent.push(pkid),
                Event::Incoming(Packet::PubAck(ack)) => acked.push(ack.pkid),
                _ => {}
            }
        }
    })
    .await
    .expect("every publish acknowledged in time");
    assert_eq!(acked, sent, "PUBACKs come in the order of the publishes");
    let client = publisher.await.expect("publisher");
    assert_eq!(readings_counted(handle(&mesh, n), "accepted"), total as u64);
    assert_eq!(history(handle(&mesh, n), 9000.into()).await.len(), PER_METER as usize);

    // Stopping the node with a client connected ends within its grace period.
    drop(client);
    let node = mesh.nodes[n].handle.take().expect("running");
    tokio::time::timeout(Duration::from_secs(15), node.shutdown())
        .await
        .expect("the node stops in time")
        .expect("the node stops cleanly");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the broker no longer listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    use rumqttc::mqttbytes::v4::Connect;

    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let mut stream = tokio::net::TcpStream::connect(mqtt_addr(&mesh, n)).await.expect("connect");
    let mut connect = Connect::new("silent");
    connect.keep_alive = 1;
    let mut buf = BytesMut::new();
    connect.write(&mut buf).expect("encode CONNECT");
    stream.write_all(&buf).await.expect("send CONNECT");
    let started = tokio::time::Instant::now();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK, accepted");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent client was not disconnected");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1400), "disconnected too early: {elapsed:?}");
    mesh.stop(n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribed_to_mosquitto_stores_readings_and_publishes_commands_there() {
    let broker = start_mosquitto().await;
    let key = ed25519::Keypair::generate();
    let mut mesh = Mesh::new();
    let mut config = common::config(mesh.root.path().join("n0"), "n0", vec![]);
    config.mqtt = None;
    config.mqtt_broker = Some(format!("mqtt://{}", broker.addr));
    config.admin_keys = vec![key.public()];
    let n = mesh.start(config).await;
    assert_eq!(handle(&mesh, n).mqtt_addr(), None, "no embedded broker");

    // Messages published before the node has subscribed are lost (mosquitto keeps none for
    // nobody): publish until the node has the reading.
    let meter = 8080;
    let topic = format!("hydromesh/meters/{meter}/reading");
    let t0 = in_current_period();
    let json = reading_json(t0, 1000);
    eventually("the node to store a reading published on mosquitto", DEADLINE, || async {
        publish(broker.addr, "1", &topic, &json).await;
        (history(handle(&mesh, n), meter.into()).await.len() == 1).then_some(())
    })
    .await;
    let wmbus = format!(
        r#"{{"id":"555","total_m3":0.25,"timestamp":"{}","current_status":"DRY"}}"#,
        format_rfc3339(t0)
    );
    publish(broker.addr, "1", "wmbusmeters/garden", &wmbus).await;
    eventually("the wmbusmeters reading to be stored", DEADLINE, || async {
        let stored = history(handle(&mesh, n), 555.into()).await;
        stored.first().filter(|r| r.litres == 250 && r.alarms == Alarms::DRY).map(|_| ())
    })
    .await;
    publish(broker.addr, "1", "hydromesh/meters/8080/reading", "garbage").await;
    eventually("the refusal to be counted", DEADLINE, || async {
        (refused(handle(&mesh, n), "malformed_json") == 1).then_some(())
    })
    .await;

    set_cap(handle(&mesh, n), &key, 100).await;
    let mut subscriber = subscribe_once(broker.addr, COMMAND_TOPIC, "mqttv311");
    let mut k = 0;
    let message = eventually("the valve command to come back through mosquitto", DEADLINE, || {
        k += 1;
        let json = reading_json(t0 + k * 1000, 1500);
        let topic = topic.clone();
        let message = received(&mut subscriber);
        async move {
            if message.is_none() {
                publish(broker.addr, "1", &topic, &json).await;
            }
            message
        }
    })
    .await;
    assert_eq!(message, format!(r#"{{"meter":"{meter}","valve":"closed"}}"#));

    let node = mesh.nodes[n].handle.take().expect("running");
    tokio::time::timeout(Duration::from_secs(15), node.shutdown())
        .await
        .expect("the node stops in time")
        .expect("the node stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribed_to_mosquitto_reconnects_after_the_broker_restarts() {
    let broker = start_mosquitto().await;
    let addr = broker.addr;
    let mut mesh = Mesh::new();
    let mut config = common::config(mesh.root.path().join("n0"), "n0", vec![]);
    config.mqtt_broker = Some(format!("mqtt://{addr}"));
    let n = mesh.start(config).await;
    let meter = 8181;
    let topic = format!("hydromesh/meters/{meter}/reading");
    let t0 = now_ms() - HOUR_MS;
    let stored = |count: usize| {
        let node = handle(&mesh, n);
        async move { (history(node, meter.into()).await.len() == count).then_some(()) }
    };

    let first = reading_json(t0, 10);
    eventually("a reading published on mosquitto to be stored", DEADLINE, || async {
        publish(addr, "1", &topic, &first).await;
        stored(1).await
    })
    .await;

    // The broker goes away and comes back, empty (no session, no subscription), on the same
    // port: the node connects again and subscribes again.
    drop(broker);
    let broker = start_mosquitto_on(addr.port()).await;
    let second = reading_json(t0 + 1000, 11);
    eventually("a reading published after the restart to be stored", DEADLINE, || async {
        publish(addr, "1", &topic, &second).await;
        stored(2).await
    })
    .await;
    drop(broker);
    mesh.stop(n).await;
}

/// mosquitto keeps 5 messages for the absent node and drops the rest: the node, back, stores the
/// 5 and reports the broker's count of the others (a warning, and `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_the_broker_dropped_while_the_node_was_away_are_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let broker = start_mosquitto_with(port, "max_queued_messages 5\nsys_interval 1\n").await;
    let mut mesh = Mesh::new();
    let mut config = common::config(mesh.root.path().join("n0"), "n0", vec![]);
    config.mqtt = None;
    config.mqtt_broker = Some(format!("mqtt://{}", broker.addr));
    let n = mesh.start(config.clone()).await;
    let meter = 8282;
    let topic = format!("hydromesh/meters/{meter}/reading");
    let t0 = now_ms() - HOUR_MS;
    eventually("the node to store a reading published on mosquitto", DEADLINE, || async {
        publish(broker.addr, "1", &topic, &reading_json(t0, 100)).await;
        (history(handle(&mesh, n), meter.into()).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(dropped_by_broker(handle(&mesh, n)), 0, "nothing dropped yet");

    // Away (its session stays with the broker) while 20 readings are published.
    mesh.stop(n).await;
    let sent = 20;
    for k in 1..=sent {
        publish(broker.addr, "1", &topic, &reading_json(t0 + k * 1000, 100 + k)).await;
    }
    let n = mesh.start(config).await;
    let (stored, dropped) =
        eventually("the queued readings and the broker's count of the others", DEADLINE, || {
            let node = handle(&mesh, n);
            async move {
                let stored = (history(node, meter.into()).await.len() as u64).saturating_sub(1);
                let dropped = dropped_by_broker(node);
                (stored > 0 && stored + dropped == sent).then_some((stored, dropped))
            }
        })
        .await;
    assert_eq!((stored, dropped), (5, 15), "mosquitto queued 5 and dropped the rest");
    drop(broker);
    mesh.stop(n).await;
}

fn dropped_by_broker(node: &AppHandle) -> u64 {
    let text = node.metrics().encode();
    text.lines()
        .find_map(|line| line.strip_prefix("hydromesh_mqtt_broker_dropped "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    use rumqttc::mqttbytes::v4::Connect;

    let mut mesh = Mesh::new();
    let n = node_with_broker(&mut mesh, "n0", None).await;
    let addr = mqtt_addr(&mesh, n);
    let mut buf = BytesMut::new();
    Connect::new("gateway-1").write(&mut buf).expect("encode CONNECT");
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    first.write_all(&buf).await.expect("send CONNECT");
    let mut connack = [0u8; 4];
    first.read_exact(&mut connack).await.expect("CONNACK");
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    second.write_all(&buf).await.expect("send CONNECT");
    second.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the first connection was not closed");
    // The second one still works: PINGREQ, PINGRESP.
    second.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
    let mut pingresp = [0u8; 2];
    second.read_exact(&mut pingresp).await.expect("PINGRESP");
    assert_eq!(pingresp, [0xd0, 0x00]);
    mesh.stop(n).await;
}
