//! `hydromesh query`: global questions answered by any node, and one meter's history routed to
//! its home.

use std::collections::HashMap;
use std::time::Duration;

use clap::Subcommand;
use hydromesh_proto::query::{
    self, AlertsAnswer, Bill, BlockedAnswer, Coverage, MeterAnswer, MeterStatus, PeersAnswer, StatsAnswer,
    TopAnswer,
};
use hydromesh_proto::summary::AlertKind;
use hydromesh_proto::MeterId;

use super::output::{age, coverage_line, cubic_metres, Table};
use super::{PeerArgs, EXIT_ERROR, EXIT_REFUSED};

/// Readings a `query meter` table shows unless asked for more.
const LATEST_ROWS: usize = 20;
use crate::p2p::client::Client;
use crate::present::input::{self, format_timestamp};
use crate::present::json::{
    alerts_json, bill_json, blocked_json, follow_json, meter_json, peers_json, stats_json, top_json,
};

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
        /// Only consumption since this long before now (e.g. 1h, 7d) or since this time (RFC
        /// 3339 or Unix ms); default: all data held.
        #[arg(long, value_parser = parse_since, value_name = "DURATION|TIME")]
        since: Option<Duration>,
    },
    /// Meters, total consumption and the exact weighted average across the mesh.
    Stats,
    /// Every fog node known: peer id, name, addresses, meters, last heard, stale or not.
    Peers,
    /// Meters whose supply is cut, across the mesh.
    Blocked,
    /// Active alerts across the mesh.
    Alerts {
        /// Only this kind: leak, burst, tamper, backflow, dry or other.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<AlertKind>,
    },
    /// A meter's bill for a period (default: the current one), from its home node.
    Bill {
        /// The meter's id, as printed on it (e.g. 2124589c).
        id: MeterId,
        /// Any time in the period (RFC 3339 or Unix ms).
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        period_start: Option<u64>,
    },
    /// One meter's readings, consumption, state and bill, from its home node.
    Meter {
        /// The meter's id, as printed on it (e.g. 2124589c).
        id: MeterId,
        /// Keep printing each new reading as its home stores it (Ctrl-C to stop).
        #[arg(long, conflicts_with_all = ["from", "to", "all"])]
        follow: bool,
        /// Show every reading held (by default the table shows the latest 20).
        #[arg(long)]
        all: bool,
        /// Window start (RFC 3339 or Unix ms), inclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        from: Option<u64>,
        /// Window end (RFC 3339 or Unix ms), exclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        to: Option<u64>,
    },
}

fn parse_kind(text: &str) -> Result<AlertKind, String> {
    AlertKind::from_name(text).ok_or_else(|| {
        format!("unknown alert kind `{text}` (expected leak, burst, tamper, backflow, dry or other)")
    })
}

/// A window's start as how long before now: a duration, or a time in the past.
fn parse_since(text: &str) -> Result<Duration, String> {
    input::parse_since(text, crate::clock::now_ms()).map(Duration::from_millis)
}

fn parse_time(text: &str) -> Result<u64, String> {
    input::parse_window_time(text).map_err(|e| e.to_string())
}

/// Runs `hydromesh query`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let request = match &args.what {
        What::Top { n, since } => {
            query::Request::Top { n: *n, since_ms: since.map(|s| s.as_millis() as u64) }
        }
        What::Stats => query::Request::Stats,
        What::Peers => query::Request::Peers,
        What::Blocked => query::Request::Blocked,
        What::Alerts { kind } => query::Request::Alerts { kind: *kind },
        What::Bill { id, period_start } => {
            query::Request::Bill { meter: *id, period_start_ms: *period_start }
        }
        What::Meter { id, follow: true, .. } => {
            let mut client = args.peer.connect().await?;
            return follow(&mut client, *id, args.json).await;
        }
        // A window that ends at or before its start is empty, as over HTTP.
        What::Meter { id, from, to, .. } => query::Request::Meter { meter: *id, from_ms: *from, to_ms: *to },
    };
    let mut client = args.peer.connect().await?;
    let response = client.query(request).await?;
    match &response {
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
        _ => {}
    }
    if args.json {
        let json = match response {
            query::Response::Top(answer) => top_json(&answer),
            query::Response::Stats(answer) => stats_json(&answer),
            query::Response::Peers(answer) => peers_json(&answer),
            query::Response::Meter(answer) => meter_json(&answer),
            query::Response::Blocked(answer) => blocked_json(&answer),
            query::Response::Alerts(answer) => alerts_json(&answer),
            query::Response::Bill(Some(bill)) => bill_json(&bill),
            other => anyhow::bail!("the node sent an answer to another question: {other:?}"),
        };
        say!("{json}");
        return Ok(0);
    }
    // Tables name fog nodes by their names, as the dashboard does (one more question).
    let names = match &response {
        query::Response::Peers(answer) => Names::of(answer),
        _ => match client.query(query::Request::Peers).await {
            Ok(query::Response::Peers(answer)) => Names::of(&answer),
            _ => Names::default(),
        },
    };
    let text = match response {
        query::Response::Top(answer) => top_text(&answer, &names),
        query::Response::Stats(answer) => stats_text(&answer, &names),
        query::Response::Peers(answer) => peers_text(&answer, &names),
        query::Response::Meter(answer) => meter_text(&answer, &names, rows_shown(&args.what)),
        query::Response::Blocked(answer) => blocked_text(&answer, &names),
        query::Response::Alerts(answer) => alerts_text(&answer, &names),
        query::Response::Bill(Some(bill)) => bill_text(&bill, &names),
        other => anyhow::bail!("the node sent an answer to another question: {other:?}"),
    };
    say!("{text}");
    Ok(0)
}

/// Readings a `query meter` table shows: the latest [`LATEST_ROWS`], unless a window or
/// `--all` asks for more.
fn rows_shown(what: &What) -> usize {
    match what {
        What::Meter { all: false, from: None, to: None, .. } => LATEST_ROWS,
        _ => usize::MAX,
    }
}

/// Fog nodes' names by peer id.
#[derive(Default)]
struct Names(HashMap<String, String>);

impl Names {
    fn of(answer: &PeersAnswer) -> Names {
        Names(
            answer
                .peers
                .iter()
                .filter(|p| !p.name.is_empty())
                .map(|p| (p.peer.clone(), p.name.clone()))
                .collect(),
        )
    }

    /// The node's name, or its peer id when it has none known.
    fn name(&self, peer: &str) -> String {
        self.0.get(peer).cloned().unwrap_or_else(|| peer.to_owned())
    }

    fn coverage(&self, coverage: &Coverage) -> String {
        coverage_line(coverage, |peer| self.name(peer))
    }
}

fn top_text(answer: &TopAnswer, names: &Names) -> String {
    let mut table = Table::new(&[("RANK", true), ("METER", true), ("CONSUMPTION m³", true), ("HOME", false)]);
    for (rank, entry) in answer.entries.iter().enumerate() {
        table.row(vec![
            (rank + 1).to_string(),
            entry.meter.to_string(),
            cubic_metres(entry.consumption_l),
            names.name(&entry.home),
        ]);
    }
    format!("{}\n{}", table.render(), names.coverage(&answer.coverage))
}

fn stats_text(answer: &StatsAnswer, names: &Names) -> String {
    let mut table = Table::new(&[("", false), ("", true)]);
    table.row(vec!["meters".into(), answer.meters.to_string()]);
    table.row(vec!["total consumption m³".into(), cubic_metres(answer.total_consumption_l)]);
    table.row(vec!["average per meter m³".into(), format!("{:.3}", answer.average_consumption_l() / 1000.0)]);
    let rendered = table.render();
    let body = rendered.lines().skip(1).collect::<Vec<_>>().join("\n");
    format!("{body}\n{}", names.coverage(&answer.coverage))
}

fn peers_text(answer: &PeersAnswer, names: &Names) -> String {
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
            peer.last_heard_ms_ago.map_or_else(|| "never".into(), |ms| format!("{} ago", age(ms))),
            state.into(),
            peer.addrs.first().cloned().unwrap_or_default(),
        ]);
    }
    format!("{}\n{}", table.render(), names.coverage(&answer.coverage))
}

/// Money in cents as units with two decimals.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn bill_text(bill: &Bill, names: &Names) -> String {
    format!(
        "meter {}  home {}\nperiod {} – {}\nconsumption {} m³\namount {} {} ({})",
        bill.meter,
        names.name(&bill.home),
        format_timestamp(bill.period_start_ms),
        format_timestamp(bill.period_end_ms),
        cubic_metres(bill.consumption_l),
        money(bill.amount_cents),
        bill.currency,
        if bill.paid { "paid" } else { "not paid" }
    )
}

fn blocked_text(answer: &BlockedAnswer, names: &Names) -> String {
    let mut table = Table::new(&[
        ("METER", true),
        ("REASON", false),
        ("SINCE", false),
        ("DETAIL", false),
        ("HOME", false),
    ]);
    for e in &answer.blocked {
        table.row(vec![
            e.blocked.meter.to_string(),
            e.blocked.reason.as_str().into(),
            format_timestamp(e.blocked.since_ms),
            e.blocked.detail.clone(),
            names.name(&e.home),
        ]);
    }
    let none = if answer.blocked.is_empty() { "(no meter is blocked)\n" } else { "" };
    format!("{}\n{none}{}", table.render(), names.coverage(&answer.coverage))
}

fn alerts_text(answer: &AlertsAnswer, names: &Names) -> String {
    let mut table = Table::new(&[("METER", true), ("KIND", false), ("SINCE", false), ("HOME", false)]);
    for e in &answer.alerts {
        table.row(vec![
            e.alert.meter.to_string(),
            e.alert.kind.as_str().into(),
            format_timestamp(e.alert.since_ms),
            names.name(&e.home),
        ]);
    }
    let none = if answer.alerts.is_empty() { "(no active alert)\n" } else { "" };
    format!("{}\n{none}{}", table.render(), names.coverage(&answer.coverage))
}

fn status_text(status: &MeterStatus) -> String {
    let mut lines = Vec::new();
    lines.push(match &status.blocked {
        Some(b) => format!("supply CUT ({}) since {}: {}", b.reason, format_timestamp(b.since_ms), b.detail),
        None => "supply open".to_owned(),
    });
    if !status.alerts.is_empty() {
        let alerts: Vec<String> = status
            .alerts
            .iter()
            .map(|a| format!("{} since {}", a.kind.as_str(), format_timestamp(a.since_ms)))
            .collect();
        lines.push(format!("alerts: {}", alerts.join(", ")));
    }
    if !status.unknown_status.is_empty() {
        lines.push(format!("status words hydromesh does not know: {}", status.unknown_status.join(" ")));
    }
    if let Some(bill) = &status.bill {
        lines.push(format!(
            "current period from {}: {} m³, {} {} so far",
            format_timestamp(bill.period_start_ms),
            cubic_metres(bill.consumption_l),
            money(bill.amount_cents),
            bill.currency
        ));
    }
    lines.join("\n")
}

/// `query meter ID --follow`: long polls through the asked node, printing each new reading.
async fn follow(client: &mut Client, meter: MeterId, json: bool) -> anyhow::Result<u8> {
    let mut after_ts_ms = None;
    loop {
        let request = query::Request::Follow { meter, after_ts_ms };
        let response = tokio::select! {
            response = client.query_within(request, Duration::from_secs(15)) => response?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        match response {
            query::Response::Readings { home, readings } => {
                for reading in &readings {
                    let line = if json {
                        follow_json(meter, &home, reading).to_string()
                    } else {
                        format!(
                            "{}  meter {meter}  {} m³{}{}",
                            format_timestamp(reading.ts_ms),
                            cubic_metres(reading.litres),
                            reading.flow_lph.map_or_else(String::new, |f| format!("  {f} L/h")),
                            if reading.alarms.is_empty() {
                                String::new()
                            } else {
                                format!("  alarms {}", reading.alarms)
                            }
                        )
                    };
                    say!("{line}");
                }
                if let Some(last) = readings.last() {
                    after_ts_ms = Some(last.ts_ms);
                } else if after_ts_ms.is_none() {
                    after_ts_ms = Some(0);
                }
            }
            query::Response::NotFound(what) => {
                eprintln!("not found: {what}");
                return Ok(EXIT_REFUSED);
            }
            query::Response::Busy => tokio::time::sleep(Duration::from_millis(200)).await,
            query::Response::Error(error) => {
                eprintln!("error: {error}");
                return Ok(EXIT_ERROR);
            }
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    }
}

fn meter_text(answer: &MeterAnswer, names: &Names, rows: usize) -> String {
    let mut table =
        Table::new(&[("TIME", false), ("REGISTER m³", true), ("FLOW L/h", true), ("ALARMS", false)]);
    let readings = &answer.history.readings;
    let shown = &readings[readings.len().saturating_sub(rows)..];
    for r in shown {
        table.row(vec![
            format_timestamp(r.ts_ms),
            cubic_metres(r.litres),
            r.flow_lph.map_or_else(String::new, |f| f.to_string()),
            r.alarms.to_string(),
        ]);
    }
    let cut = if shown.len() < readings.len() {
        format!(" (the latest {} shown: --all for every one, --from/--to for a window)", shown.len())
    } else if answer.history.truncated {
        " (only the latest are shown)".to_owned()
    } else {
        String::new()
    };
    let mut text = format!(
        "meter {}  home {}\n{}\nconsumption {} m³ over {} reading(s){cut}\n{}",
        answer.meter,
        names.name(&answer.home),
        status_text(&answer.status),
        cubic_metres(answer.consumption_l),
        readings.len(),
        table.render()
    );
    if readings.is_empty() {
        text.push_str("\n(no reading in this window)");
    }
    text
}
