//! The MQTT benchmark of `scripts/bench.sh`: how many readings per second a node ingests over
//! MQTT at QoS 1, every one acknowledged only once durable, against how many messages per second
//! a plain mosquitto relays at QoS 1 from the same publishers to one subscriber, on this machine.
//!
//! READINGS readings of METERS meters (increasing registers, one minute apart, ending a day ago)
//! are spread over PUBLISHERS connections (each meter always on the same one, in time order),
//! each keeping up to INFLIGHT QoS 1 publishes unacknowledged.
//!
//! - `mqtt_ingest`: a node (in this process, its database under DIR) with its embedded broker;
//!   from the first publish to the last PUBACK. Every reading must be accepted.
//! - `mosquitto_relay`: `mosquitto` (started here on a free loopback port with its default
//!   settings, except no persistence and no limit on queued messages, so that none is dropped)
//!   and one subscriber at QoS 1 (acknowledging every message); from the first publish to the
//!   last message received.
//! - `mqtt_vs_mosquitto`: the ratio of the two rates.
//!
//! The publishers (and the subscriber) are a minimal client on rumqttc's `mqttbytes` codec that
//! writes as many publishes per system call as its window allows; `--client rumqttc` uses
//! rumqttc's `AsyncClient` instead (one write per publish, slower; both are reported in the
//! README).
//!
//! It prints one JSON line per figure, each with `"machine":"<nproc> cores"`.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin mqtt_bench -- DIR [--readings 200000] [--meters 2000]
//!     [--publishers 4] [--inflight 100] [--client raw|rumqttc] [--mosquitto PATH]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use hydromesh::Config;
use hydromesh_bench::counter;
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const MINUTE_MS: u64 = 60_000;
/// Longest a phase may take before the benchmark gives up.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest packet the minimal client reads.
const MAX_PACKET: usize = 1024 * 1024;

/// MQTT QoS 1 ingest into a node against a plain mosquitto relay.
#[derive(Parser)]
struct Args {
    /// A new folder for the node's data (on the disk to measure).
    dir: PathBuf,
    /// Readings in all.
    #[arg(long, default_value_t = 200_000)]
    readings: u64,
    /// Meters (readings are spread evenly).
    #[arg(long, default_value_t = 2_000)]
    meters: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// The publishers' MQTT client: `raw` (minimal, batched writes) or `rumqttc`.
    #[arg(long, default_value = "raw")]
    client: String,
    /// The mosquitto broker binary.
    #[arg(long)]
    mosquitto: Option<PathBuf>,
}

/// One publisher's messages: topic and payload.
type Messages = Arc<Vec<(String, Bytes)>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.readings == 0 || args.meters == 0 || args.publishers == 0 || args.inflight == 0 {
        bail!("--readings, --meters, --publishers and --inflight must be at least 1");
    }
    if !["raw", "rumqttc"].contains(&args.client.as_str()) {
        bail!("--client is raw or rumqttc, not `{}`", args.client);
    }
    if args.dir.exists() {
        bail!("{} already exists; give a new folder", args.dir.display());
    }
    let mosquitto = match &args.mosquitto {
        Some(path) => path.clone(),
        None => find_mosquitto().context("mosquitto not found: run scripts/install-test-deps.sh")?,
    };
    let machine = format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let messages = generate(&args);
    let total = messages.iter().map(|m| m.len() as u64).sum::<u64>();

    // 1. A node with its embedded broker.
    let mut config = Config {
        data_dir: args.dir.join("node"),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        name: "mqtt-bench".into(),
        http: None,
        mqtt: Some("127.0.0.1:0".parse()?),
        ..Config::default()
    };
    config.mqtt_broker = None;
    let node = hydromesh::App::spawn(config).await.context("the node starts")?;
    let addr = node.mqtt_addr().context("the node's MQTT address")?;
    eprintln!("[mqtt_bench] {total} readings into the node's embedded broker at {addr}...");
    let started = Instant::now();
    tokio::time::timeout(PHASE_TIMEOUT, publish_all(addr, &messages, &args))
        .await
        .context("MQTT ingest timed out")??;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let accepted = counter(&node.metrics().encode(), "hydromesh_readings_total{outcome=\"accepted\"}");
    node.shutdown().await?;
    if accepted != total {
        bail!("the node accepted {accepted} of {total} readings");
    }
    let ingest_rate = total as f64 / ingest_seconds;
    println!(
        "{{\"bench\":\"mqtt_ingest\",\"readings\":{total},\"meters\":{},\"publishers\":{},\"inflight\":{},\"client\":\"{}\",\"seconds\":{ingest_seconds:.3},\"readings_per_s\":{ingest_rate:.0},\"accepted\":{accepted},\"machine\":\"{machine}\"}}",
        args.meters, args.publishers, args.inflight, args.client
    );

    // 2. mosquitto relaying the same messages to one subscriber.
    let broker = Mosquitto::start(&mosquitto, &args.dir.join("mosquitto"))?;
    eprintln!("[mqtt_bench] the same messages through mosquitto at {} to one subscriber...", broker.addr);
    let mut subscriber = connect(broker.addr, "bench-subscriber").await?;
    let mut buf = BytesMut::new();
    let mut subscribe = Subscribe::new("hydromesh/meters/+/reading", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    subscribe.write(&mut buf)?;
    subscriber.write_all(&buf).await?;
    let mut pending = BytesMut::new();
    match read_packet(&mut subscriber, &mut pending).await? {
        Packet::SubAck(_) => {}
        other => bail!("mosquitto answered SUBSCRIBE with {other:?}"),
    }
    let receiving = tokio::spawn(receive(subscriber, pending, total));
    let started = Instant::now();
    let relay = async {
        publish_all(broker.addr, &messages, &args).await?;
        receiving.await.context("subscriber task")?
    };
    let received =
        tokio::time::timeout(PHASE_TIMEOUT, relay).await.context("the mosquitto relay timed out")??;
    let relay_seconds = started.elapsed().as_secs_f64();
    drop(broker);
    let relay_rate = received as f64 / relay_seconds;
    println!(
        "{{\"bench\":\"mosquitto_relay\",\"messages\":{total},\"publishers\":{},\"inflight\":{},\"client\":\"{}\",\"seconds\":{relay_seconds:.3},\"messages_per_s\":{relay_rate:.0},\"received\":{received},\"machine\":\"{machine}\"}}",
        args.publishers, args.inflight, args.client
    );
    println!(
        "{{\"bench\":\"mqtt_vs_mosquitto\",\"mqtt_readings_per_s\":{ingest_rate:.0},\"mosquitto_messages_per_s\":{relay_rate:.0},\"ratio\":{:.3},\"machine\":\"{machine}\"}}",
        ingest_rate / relay_rate
    );
    Ok(())
}

/// Each publisher's messages: meter `m` goes to publisher `m % publishers`; all meters' k-th
/// readings come before their (k+1)-th.
fn generate(args: &Args) -> Vec<Messages> {
    let per_meter = args.readings.div_ceil(args.meters);
    let now = hydromesh::clock::now_ms();
    let first_ts = now - 86_400_000 - per_meter * MINUTE_MS;
    let mut registers: Vec<u64> = (0..args.meters).map(|m| (m * 7919) % 100_000).collect();
    let mut publishers: Vec<Vec<(String, Bytes)>> = (0..args.publishers).map(|_| Vec::new()).collect();
    let mut count = 0;
    'all: for k in 0..per_meter {
        for (m, register) in registers.iter_mut().enumerate() {
            if count == args.readings {
                break 'all;
            }
            let meter = 100_000 + m as u64;
            let used = (meter.wrapping_mul(31) ^ k.wrapping_mul(17)) % 40;
            *register += used;
            let topic = format!("hydromesh/meters/{meter}/reading");
            let payload = format!(
                r#"{{"ts":{},"litres":{},"flow_lph":{}}}"#,
                first_ts + k * MINUTE_MS,
                register,
                used * 60
            );
            if let Some(messages) = publishers.get_mut((m as u64 % args.publishers) as usize) {
                messages.push((topic, Bytes::from(payload)));
            }
            count += 1;
        }
    }
    publishers.into_iter().map(Arc::new).collect()
}

/// Publishes every publisher's messages at once, each on its own connection; returns when
/// every publish is acknowledged.
async fn publish_all(addr: SocketAddr, messages: &[Messages], args: &Args) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (i, messages) in messages.iter().enumerate() {
        let messages = messages.clone();
        let (inflight, rumqttc) = (args.inflight, args.client == "rumqttc");
        let id = format!("bench-publisher-{i}");
        tasks.push(tokio::spawn(async move {
            if rumqttc {
                publish_rumqttc(addr, id, messages, inflight).await
            } else {
                publish_raw(addr, &id, messages, inflight).await
            }
        }));
    }
    for task in tasks {
        task.await.context("publisher task")??;
    }
    Ok(())
}

/// The minimal publisher: writes publishes while its window has room (many per write), reads
/// PUBACKs on another task.
async fn publish_raw(addr: SocketAddr, id: &str, messages: Messages, inflight: u16) -> anyhow::Result<()> {
    let stream = connect(addr, id).await?;
    let (mut reader, mut writer) = stream.into_split();
    let window = Arc::new(Semaphore::new(usize::from(inflight)));
    let total = messages.len();
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut acked = 0;
            while acked < total {
                loop {
                    match Packet::read(&mut buf, MAX_PACKET) {
                        Ok(Packet::PubAck(_)) => {
                            acked += 1;
                            window.add_permits(1);
                        }
                        Ok(other) => bail!("unexpected packet {other:?}"),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(error) => bail!("bad packet: {error}"),
                    }
                }
                if acked < total && reader.read_buf(&mut buf).await? == 0 {
                    bail!("the broker closed the connection after {acked} PUBACKs");
                }
            }
            Ok(())
        })
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for (i, (topic, payload)) in messages.iter().enumerate() {
        let permit = match window.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // The window is full: send what is written, then wait for room.
                writer.write_all(&buf).await?;
                buf.clear();
                window.acquire().await?
            }
        };
        permit.forget();
        let mut publish = Publish::from_bytes(topic.as_str(), QoS::AtLeastOnce, payload.clone());
        publish.pkid = (i % 65_535) as u16 + 1;
        publish.write(&mut buf)?;
        if buf.len() >= 32 * 1024 {
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }
    writer.write_all(&buf).await?;
    acks.await.context("PUBACK reader")??;
    Ok(())
}

/// The same with rumqttc's `AsyncClient`.
async fn publish_rumqttc(
    addr: SocketAddr,
    id: String,
    messages: Messages,
    inflight: u16,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options
        .set_inflight(inflight)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(inflight) * 2);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages.iter() {
            client.publish_bytes(topic.as_str(), QoS::AtLeastOnce, false, payload.clone()).await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
            acked += 1;
        }
    }
    sender.await.context("sender task")??;
    Ok(())
}

/// Connects with the minimal client (clean session).
async fn connect(addr: SocketAddr, id: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut connect = Connect::new(id);
    connect.keep_alive = 60;
    let mut buf = BytesMut::new();
    connect.write(&mut buf)?;
    stream.write_all(&buf).await?;
    let mut pending = BytesMut::new();
    match read_packet(&mut stream, &mut pending).await? {
        Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => Ok(stream),
        other => bail!("CONNECT answered with {other:?}"),
    }
}

async fn read_packet(stream: &mut TcpStream, pending: &mut BytesMut) -> anyhow::Result<Packet> {
    loop {
        match Packet::read(pending, MAX_PACKET) {
            Ok(packet) => return Ok(packet),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if stream.read_buf(pending).await? == 0 {
                    bail!("connection closed");
                }
            }
            Err(error) => bail!("bad packet: {error}"),
        }
    }
}

/// The subscriber: counts messages and acknowledges each (all the PUBACKs of one read in one
/// write) until `total` have come.
async fn receive(stream: TcpStream, mut pending: BytesMut, total: u64) -> anyhow::Result<u64> {
    let (mut reader, mut writer) = stream.into_split();
    let mut received = 0;
    let mut acks = BytesMut::new();
    while received < total {
        loop {
            match Packet::read(&mut pending, MAX_PACKET) {
                Ok(Packet::Publish(publish)) => {
                    received += 1;
                    if publish.qos != QoS::AtMostOnce {
                        PubAck::new(publish.pkid).write(&mut acks)?;
                    }
                }
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(error) => bail!("bad packet: {error}"),
            }
        }
        if !acks.is_empty() {
            writer.write_all(&acks).await?;
            acks.clear();
        }
        if received < total && reader.read_buf(&mut pending).await? == 0 {
            bail!("mosquitto closed the subscriber's connection after {received} messages");
        }
    }
    Ok(received)
}

fn find_mosquitto() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|dir| dir.join("mosquitto")).find(|path| path.is_file())
}

/// A mosquitto of this run, stopped when dropped.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
}

impl Mosquitto {
    fn start(binary: &Path, dir: &Path) -> anyhow::Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\n"
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut broker = Mosquitto { child, addr: ([127, 0, 0, 1], port).into() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(broker.addr).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("mosquitto exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
