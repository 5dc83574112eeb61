//! `hydromesh query`: global questions answered by any node, and one meter's history routed to
//! its home.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use hydromesh_proto::query::{
    self, AlertsAnswer, Bill, BlockedAnswer, MeterAnswer, MeterStatus, PeersAnswer, StatsAnswer, TopAnswer,
};
use hydromesh_proto::summary::AlertKind;

use super::output::{age, coverage_line, cubic_metres, Table};
use super::{PeerArgs, EXIT_ERROR, EXIT_REFUSED};
use crate::p2p::client::Client;
use crate::present::input::{format_timestamp, parse_timestamp};
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
        /// Only consumption within this long before now (e.g. 1h, 7d); default: all data held.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
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
        /// Only this kind: leak, burst, tamper, backflow or dry.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<AlertKind>,
    },
    /// A meter's bill for a period (default: the current one), from its home node.
    Bill {
        /// The meter id.
        id: u64,
        /// Any time in the period (RFC 3339 or Unix ms).
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        period_start: Option<u64>,
    },
    /// One meter's readings, consumption, state and bill, from its home node.
    Meter {
        /// The meter id.
        id: u64,
        /// Keep printing each new reading as its home stores it (Ctrl-C to stop).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        follow: bool,
        /// Window start (RFC 3339 or Unix ms), inclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        from: Option<u64>,
        /// Window end (RFC 3339 or Unix ms), exclusive.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        to: Option<u64>,
    },
}

fn parse_kind(text: &str) -> Result<AlertKind, String> {
    AlertKind::from_name(text)
        .ok_or_else(|| format!("unknown alert kind `{text}` (expected leak, burst, tamper, backflow or dry)"))
}

fn parse_time(text: &str) -> Result<u64, String> {
    parse_timestamp(text).map_err(|e| e.to_string())
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
        What::Meter { id, from, to, .. } => {
            if let (Some(from), Some(to)) = (from, to) {
                anyhow::ensure!(from < to, "--from must be before --to");
            }
            query::Request::Meter { meter: *id, from_ms: *from, to_ms: *to }
        }
    };
    let mut client = args.peer.connect().await?;
    let response = client.query(request).await?;
    let (json, text) = match response {
        query::Response::Top(answer) => (top_json(&answer), top_text(&answer)),
        query::Response::Stats(answer) => (stats_json(&answer), stats_text(&answer)),
        query::Response::Peers(answer) => (peers_json(&answer), peers_text(&answer)),
        query::Response::Meter(answer) => (meter_json(&answer), meter_text(&answer)),
        query::Response::Blocked(answer) => (blocked_json(&answer), blocked_text(&answer)),
        query::Response::Alerts(answer) => (alerts_json(&answer), alerts_text(&answer)),
        query::Response::Bill(Some(bill)) => (bill_json(&bill), bill_text(&bill)),
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

fn top_text(answer: &TopAnswer) -> String {
    let mut table = Table::new(&[("RANK", true), ("METER", true), ("CONSUMPTION m³", true), ("HOME", false)]);
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

fn stats_text(answer: &StatsAnswer) -> String {
    let mut table = Table::new(&[("", false), ("", true)]);
    table.row(vec!["meters".into(), answer.meters.to_string()]);
    table.row(vec!["total consumption m³".into(), cubic_metres(answer.total_consumption_l)]);
    table.row(vec!["average per meter m³".into(), format!("{:.3}", answer.average_consumption_l() / 1000.0)]);
    let rendered = table.render();
    let body = rendered.lines().skip(1).collect::<Vec<_>>().join("\n");
    format!("{body}\n{}", coverage_line(&answer.coverage))
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
            peer.last_heard_ms_ago.map_or_else(|| "never".into(), |ms| format!("{} ago", age(ms))),
            state.into(),
            peer.addrs.first().cloned().unwrap_or_default(),
        ]);
    }
    format!("{}\n{}", table.render(), coverage_line(&answer.coverage))
}

/// Money in cents as units with two decimals.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn bill_text(bill: &Bill) -> String {
    format!(
        "meter {}  home {}\nperiod {} – {}\nconsumption {} m³\namount {} {} ({})",
        bill.meter,
        bill.home,
        format_timestamp(bill.period_start_ms),
        format_timestamp(bill.period_end_ms),
        cubic_metres(bill.consumption_l),
        money(bill.amount_cents),
        bill.currency,
        if bill.paid { "paid" } else { "not paid" }
    )
}

fn blocked_text(answer: &BlockedAnswer) -> String {
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
            e.home.clone(),
        ]);
    }
    let none = if answer.blocked.is_empty() { "(no meter is blocked)\n" } else { "" };
    format!("{}\n{none}{}", table.render(), coverage_line(&answer.coverage))
}

fn alerts_text(answer: &AlertsAnswer) -> String {
    let mut table = Table::new(&[("METER", true), ("KIND", false), ("SINCE", false), ("HOME", false)]);
    for e in &answer.alerts {
        table.row(vec![
            e.alert.meter.to_string(),
            e.alert.kind.as_str().into(),
            format_timestamp(e.alert.since_ms),
            e.home.clone(),
        ]);
    }
    let none = if answer.alerts.is_empty() { "(no active alert)\n" } else { "" };
    format!("{}\n{none}{}", table.render(), coverage_line(&answer.coverage))
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
async fn follow(client: &mut Client, meter: u64, json: bool) -> anyhow::Result<u8> {
    let mut after_ts_ms = None;
    let mut stdout = std::io::stdout();
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
                    // A closed pipe (`| head`) ends the follow quietly.
                    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                        return Ok(0);
                    }
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

fn meter_text(answer: &MeterAnswer) -> String {
    let mut table =
        Table::new(&[("TIME", false), ("REGISTER m³", true), ("FLOW L/h", true), ("ALARMS", false)]);
    for r in &answer.history.readings {
        table.row(vec![
            format_timestamp(r.ts_ms),
            cubic_metres(r.litres),
            r.flow_lph.map_or_else(String::new, |f| f.to_string()),
            r.alarms.to_string(),
        ]);
    }
    let mut text = format!(
        "meter {}  home {}\n{}\nconsumption {} m³ over {} reading(s){}\n{}",
        answer.meter,
        answer.home,
        status_text(&answer.status),
        cubic_metres(answer.consumption_l),
        answer.history.readings.len(),
        if answer.history.truncated { " (only the latest are shown)" } else { "" },
        table.render()
    );
    if answer.history.readings.is_empty() {
        text.push_str("\n(no reading in this window)");
    }
    text
}
