//! `hydromesh simulate`: a fleet of simulated hydrometers reporting to one node, obeying the
//! valve commands in its acknowledgements.

use std::time::Duration;

use hydromesh_proto::ingest;
use hydromesh_proto::limits::MAX_BATCH_READINGS;
use hydromesh_proto::Reading;

use crate::p2p::client::Client;

use super::PeerArgs;
use crate::clock::now_ms;
use crate::sim::{Fleet, Profile};

/// `hydromesh simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    peer: PeerArgs,
    /// How many meters.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::sim::MAX_METERS))]
    meters: u64,
    /// Id of the first meter; the fleet is FIRST..FIRST+METERS.
    #[arg(long, default_value_t = 1)]
    first_meter: u64,
    /// Time between two readings of a meter (real time).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    interval: Duration,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Seed of the fleet's randomness: the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Consumption profile: slow, normal, fast, leaky, burst or mixed.
    #[arg(long, default_value_t = Profile::Mixed)]
    profile: Profile,
    /// Device time runs this many times faster than real time (hours pass in seconds). The
    /// fleet then starts in the past, so its readings never run ahead of the node's clock.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// First send this much history (a reading per meter every 15 minutes), as meters that
    /// were already running; then report live.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    backfill: Option<Duration>,
}

/// Step between two back-filled readings of a meter.
const BACKFILL_STEP_MS: u64 = 15 * 60_000;

/// Runs `hydromesh simulate`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be longer than 0");
    anyhow::ensure!(
        args.time_scale.is_finite() && (1.0..=100_000.0).contains(&args.time_scale),
        "--time-scale must be between 1 and 100000"
    );
    let mut fleet = Fleet::new(args.first_meter, args.meters, args.profile, args.seed);
    anyhow::ensure!(
        fleet.len() as u64 == args.meters,
        "meter ids overflow: --first-meter + --meters is past the last numeric id ({})",
        hydromesh_proto::meter::NUMBERS - 1
    );
    let mut client = args.peer.connect().await?;
    let real_start = tokio::time::Instant::now();
    let start_ms = now_ms();
    // With a time scale, device time covers the whole run's span ending now.
    let span_ms =
        args.duration.unwrap_or(Duration::from_secs(3600)).as_millis() as f64 * (args.time_scale - 1.0);
    let device_start = start_ms.saturating_sub(span_ms as u64);
    say!(
        "simulating {} meters ({} profile) against node {} every {}; Ctrl-C stops",
        fleet.len(),
        args.profile,
        client.peer_id(),
        humantime::format_duration(args.interval)
    );
    if let Some(backfill) = args.backfill {
        anyhow::ensure!(args.time_scale == 1.0, "--backfill and --time-scale do not combine");
        let mut history = Vec::new();
        let mut device_ms = device_start.saturating_sub(backfill.as_millis() as u64);
        while device_ms < device_start {
            history.extend(fleet.tick(device_ms));
            device_ms += BACKFILL_STEP_MS;
        }
        let count = history.len();
        send(&mut client, &mut fleet, history).await?;
        say!("history: {count} readings sent");
    }
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut ticks) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let elapsed = real_start.elapsed();
        if args.duration.is_some_and(|d| elapsed > d) {
            break;
        }
        let device_now = (device_start + (elapsed.as_millis() as f64 * args.time_scale) as u64).min(now_ms());
        let readings = fleet.tick(device_now);
        sent += readings.len() as u64;
        send(&mut client, &mut fleet, readings).await?;
        ticks += 1;
        if ticks % 30 == 1 {
            say!("{sent} readings sent, {} valves closed", fleet.closed_meters());
        }
    }
    say!(
        "done: {sent} readings sent in {}, {} valves closed",
        humantime::format_duration(Duration::from_secs(real_start.elapsed().as_secs())),
        fleet.closed_meters()
    );
    Ok(0)
}

/// Sends readings in batches and applies the valve commands of the acknowledgements.
async fn send(client: &mut Client, fleet: &mut Fleet, readings: Vec<Reading>) -> anyhow::Result<()> {
    let batches: Vec<_> = readings.chunks(MAX_BATCH_READINGS).map(<[_]>::to_vec).collect();
    let mut commands = Vec::new();
    let mut rejected = 0usize;
    client
        .ingest_batches(batches, 4, |_, response| match response {
            ingest::Response::Done { outcomes, commands: received } => {
                rejected += outcomes.iter().filter(|o| matches!(o, ingest::Outcome::Rejected(_))).count();
                commands.extend(received);
            }
            ingest::Response::Refused { reason } => tracing::warn!(%reason, "the node refused a batch"),
            ingest::Response::Unavailable { reason } => {
                tracing::warn!(%reason, "the node could not store a batch")
            }
            ingest::Response::Busy { .. } => {}
        })
        .await?;
    // Commands come per batch; the latest for a meter is the one in force.
    fleet.apply_commands(&commands);
    if rejected > 0 {
        tracing::warn!(rejected, "the node rejected readings");
    }
    Ok(())
}
