//! `hydromesh query`: global questions answered by any node, and one meter's history routed to
//! its home.

use std::time::Duration;

use clap::Subcommand;
use hydromesh_proto::query::{self, Coverage, MeterAnswer, PeersAnswer, StatsAnswer, TopAnswer};
use serde_json::{json, Value};

use super::input::{format_timestamp, parse_timestamp};
use super::output::{age, coverage_line, cubic_metres, Table};
use super::{PeerArgs, EXIT_ERROR, EXIT_REFUSED};

/// `hydromesh query` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    peer: PeerArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// The highest-consuming meters across the mesh.
    Top {
        /// How many meters.
        #[arg(long, short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(hydromesh_proto::limits::MAX_TOP_N)))]
        n: u32,
        /// Only consumption within this long before now (e.g. 1h, 7d); default: all data held.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        since: Option<Duration>,
    },
    /// Meters, total consumption and the exact weighted average across the mesh.
    Stats,
    /// Every fog node known: peer id, name, addresses, meters, last heard, stale or not.
    Peers,
    /// One meter's readings and consumption, from its home node.
    Meter {
        /// The meter id.
        id: u64,
        /// Window start (RFC 3339 or Unix ms), inclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        from: Option<u64>,
        /// Window end (RFC 3339 or Unix ms), exclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        to: Option<u64>,
    },
}

fn parse_time(text: &str) -> Result<u64, String> {
    parse_timestamp(text).map_err(|e| e.to_string())
}

/// Runs `hydromesh query`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let request = match &args.what {
        What::Top { n, since } => query::Request::Top {
            n: *n,
            since_ms: since.map(|s| s.as_millis() as u64),
        },
        What::Stats => query::Request::Stats,
        What::Peers => query::Request::Peers,
        What::Meter { id, from, to } => {
            if let (Some(from), Some(to)) = (from, to) {
                anyhow::ensure!(from < to, "--from must be before --to");
            }
            query::Request::Meter {
                meter: *id,
                from_ms: *from,
                to_ms: *to,
            }
        }
    };
    let mut client = args.peer.connect().await?;
    let response = client.query(request).await?;
    let (json, text) = match response {
        query::Response::Top(answer) => (top_json(&answer), top_text(&answer)),
        query::Response::Stats(answer) => (stats_json(&answer), stats_text(&answer)),
        query::Response::Peers(answer) => (peers_json(&answer), peers_text(&answer)),
        query::Response::Meter(answer) => (meter_json(&answer), meter_text(&answer)),
        query::Response::NotFound(what) => {
            eprintln!("not found: {what}");
            return Ok(EXIT_REFUSED);
        }
        query::Response::Busy => {
            eprintln!("error: the node is busy; try again shortly");
            return Ok(EXIT_ERROR);
        }
        query::Response::Error(error) => {
            eprintln!("error: the node refused the question: {error}");
            return Ok(EXIT_ERROR);
        }
        other => anyhow::bail!("the node sent an answer to another question: {other:?}"),
    };
    if args.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
    Ok(0)
}

/// The coverage fields every global JSON answer carries.
fn with_coverage(mut value: Value, coverage: &Coverage) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.insert("nodes".into(), json!(coverage.included.len()));
        object.insert("stale_nodes".into(), json!(coverage.stale.len()));
        object.insert("included".into(), json!(coverage.included));
        object.insert("stale".into(), json!(coverage.stale));
        object.insert("missing".into(), json!(coverage.missing));
        object.insert("data_age_ms".into(), json!(coverage.oldest_data_age_ms));
    }
    value
}

/// `query top --json`.
pub fn top_json(answer: &TopAnswer) -> Value {
    let entries: Vec<Value> = answer
        .entries
        .iter()
        .map(|e| json!({"meter": e.meter, "consumption_l": e.consumption_l, "home": e.home}))
        .collect();
    with_coverage(json!({ "entries": entries }), &answer.coverage)
}

fn top_text(answer: &TopAnswer) -> String {
    let mut table = Table::new(&[
        ("RANK", true),
        ("METER", true),
        ("CONSUMPTION m³", true),
        ("HOME", false),
    ]);
    for (rank, entry) in answer.entries.iter().enumerate() {
        table.row(vec![
            (rank + 1).to_string(),
            entry.meter.to_string(),
            cubic_metres(entry.consumption_l),
            entry.home.clone(),
        ]);
    }
    format!("{}\n{}", table.render(), coverage_line(&answer.coverage))
}

/// `query stats --json`.
pub fn stats_json(answer: &StatsAnswer) -> Value {
    with_coverage(
        json!({
            "meters": answer.meters,
            "total_consumption_l": answer.total_consumption_l,
            "average_consumption_l": answer.average_consumption_l(),
        }),
        &answer.coverage,
    )
}

fn stats_text(answer: &StatsAnswer) -> String {
    let mut table = Table::new(&[("", false), ("", true)]);
    table.row(vec!["meters".into(), answer.meters.to_string()]);
    table.row(vec![
        "total consumption m³".into(),
        cubic_metres(answer.total_consumption_l),
    ]);
    table.row(vec![
        "average per meter m³".into(),
        format!("{:.3}", answer.average_consumption_l() / 1000.0),
    ]);
    let rendered = table.render();
    let body = rendered.lines().skip(1).collect::<Vec<_>>().join("\n");
    format!("{body}\n{}", coverage_line(&answer.coverage))
}

/// `query peers --json`.
pub fn peers_json(answer: &PeersAnswer) -> Value {
    let peers: Vec<Value> = answer
        .peers
        .iter()
        .map(|p| {
            json!({
                "peer": p.peer, "name": p.name, "addrs": p.addrs, "meters": p.meters,
                "version": p.version, "last_heard_ms_ago": p.last_heard_ms_ago,
                "stale": p.stale, "self": p.is_self,
            })
        })
        .collect();
    with_coverage(json!({ "peers": peers }), &answer.coverage)
}

fn peers_text(answer: &PeersAnswer) -> String {
    let mut table = Table::new(&[
        ("NAME", false),
        ("PEER", false),
        ("METERS", true),
        ("LAST HEARD", true),
        ("STATE", false),
        ("ADDRESS", false),
    ]);
    for peer in &answer.peers {
        let state = match (peer.is_self, peer.stale) {
            (true, _) => "this node",
            (false, true) => "stale",
            (false, false) => "live",
        };
        table.row(vec![
            peer.name.clone(),
            peer.peer.clone(),
            peer.meters.to_string(),
            peer.last_heard_ms_ago
                .map_or_else(|| "never".into(), |ms| format!("{} ago", age(ms))),
            state.into(),
            peer.addrs.first().cloned().unwrap_or_default(),
        ]);
    }
    format!("{}\n{}", table.render(), coverage_line(&answer.coverage))
}

/// `query meter --json`.
pub fn meter_json(answer: &MeterAnswer) -> Value {
    let readings: Vec<Value> = answer
        .history
        .readings
        .iter()
        .map(|r| {
            let mut reading = json!({"ts": format_timestamp(r.ts_ms), "litres": r.litres});
            if let Some(flow) = r.flow_lph {
                reading["flow_lph"] = json!(flow);
            }
            if !r.alarms.is_empty() {
                reading["alarms"] = json!(r.alarms.names().collect::<Vec<_>>());
            }
            reading
        })
        .collect();
    json!({
        "meter": answer.meter,
        "home": answer.home,
        "consumption_l": answer.consumption_l,
        "readings": readings,
        "truncated": answer.history.truncated,
    })
}

fn meter_text(answer: &MeterAnswer) -> String {
    let mut table = Table::new(&[
        ("TIME", false),
        ("REGISTER m³", true),
        ("FLOW L/h", true),
        ("ALARMS", false),
    ]);
    for r in &answer.history.readings {
        table.row(vec![
            format_timestamp(r.ts_ms),
            cubic_metres(r.litres),
            r.flow_lph.map_or_else(String::new, |f| f.to_string()),
            r.alarms.to_string(),
        ]);
    }
    let mut text = format!(
        "meter {}  home {}\nconsumption {} m³ over {} reading(s){}\n{}",
        answer.meter,
        answer.home,
        cubic_metres(answer.consumption_l),
        answer.history.readings.len(),
        if answer.history.truncated {
            " (only the latest are shown)"
        } else {
            ""
        },
        table.render()
    );
    if answer.history.readings.is_empty() {
        text.push_str("\n(no reading in this window)");
    }
    text
}
