//! `hydromesh node`: run a fog node until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::identity::ed25519;
use libp2p::Multiaddr;

use crate::domain::rules::Tariff;

use crate::config::Config;
use crate::node::Node;

/// `hydromesh node` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of the node's identity key and database (created if missing).
    #[arg(long, env = "HYDROMESH_DATA_DIR", default_value = "hydromesh-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Address to listen on (repeatable). Default: TCP and QUIC on port 4001, all interfaces.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A peer to join through (repeatable), with or without /p2p/<peer id>.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// A label for this node, shown in answers (default: the host name).
    #[arg(long, env = "HYDROMESH_NAME")]
    name: Option<String>,
    /// Discover peers on the local network with mDNS (does not work on loopback).
    #[arg(long)]
    mdns: bool,
    /// Publish the summary at least this often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    republish: Duration,
    /// Report a node stale when not heard from within this long (default: 3.5 × republish).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    stale_after: Option<Duration>,
    /// Trust admin commands signed by this public key (repeatable; from `hydromesh keygen`).
    #[arg(long = "admin-pubkey", env = "HYDROMESH_ADMIN_PUBKEYS", value_delimiter = ',', value_name = "KEY", value_parser = parse_admin_key)]
    admin_pubkeys: Vec<ed25519::PublicKey>,
    /// Increasing-block tariff: LITRES:PRICE per m³ for each block, the last one `*`.
    #[arg(long, default_value = "10000:4.50,20000:7.00,50000:11.00,*:14.00", value_name = "BLOCKS")]
    tariff: String,
    /// Currency of the tariff (ISO 4217).
    #[arg(long, default_value = "BRL")]
    currency: String,
    /// Flow above this (L/h) for 30 minutes or more raises a burst alert.
    #[arg(long, default_value_t = 1200)]
    burst_flow_lph: u32,
    /// Cut a meter whose closed-period bill is still unpaid this long after the period ended.
    #[arg(long, default_value = "10days", value_parser = humantime::parse_duration, value_name = "DURATION")]
    debt_grace: Duration,
    /// Top meters carried in each summary: global top-N is answered locally for N up to this.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    top_k: u64,
}

fn parse_admin_key(text: &str) -> Result<ed25519::PublicKey, String> {
    crate::control::parse_public_key(text)
}

/// Runs `hydromesh node`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let defaults = Config::default();
    anyhow::ensure!(!args.republish.is_zero(), "--republish must be longer than 0");
    let name = args.name.unwrap_or(defaults.name.clone());
    anyhow::ensure!(
        name.len() <= hydromesh_proto::limits::MAX_NAME_BYTES,
        "--name is longer than {} bytes",
        hydromesh_proto::limits::MAX_NAME_BYTES
    );
    let config = Config {
        data_dir: args.data_dir,
        listen: if args.listen.is_empty() { defaults.listen.clone() } else { args.listen },
        bootstrap: args.bootstrap,
        name,
        mdns: args.mdns,
        republish_interval: args.republish,
        stale_after: args.stale_after.unwrap_or(args.republish * 7 / 2),
        top_k: args.top_k as usize,
        admin_keys: args.admin_pubkeys,
        tariff: Tariff::parse(&args.currency, &args.tariff).map_err(|e| anyhow::anyhow!("--tariff: {e}"))?,
        burst_flow_lph: args.burst_flow_lph,
        debt_grace: args.debt_grace,
        ..defaults
    };
    let data_dir = config.data_dir.clone();
    let node = Node::spawn(config).await?;
    let addrs = node.listen_addrs().await;
    tracing::info!(
        peer_id = %node.peer_id(),
        addrs_file = %data_dir.join("addrs").display(),
        "ready; dial any of: {}",
        addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    );
    wait_for_signal().await?;
    tracing::info!("signal received; stopping");
    node.shutdown().await;
    Ok(0)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
