//! `hydromesh node`: run a fog node until SIGINT or SIGTERM.
//!
//! Settings come from the defaults, then `--config FILE` (TOML), then `HYDROMESH_*`
//! environment variables and flags (a flag beats its variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::identity::ed25519;
use libp2p::Multiaddr;

use crate::app::App;
use crate::config::{parse_addr_or_off, Config};
use crate::domain::rules::Tariff;

/// `hydromesh node` arguments. Defaults are those of the configuration (`examples/node.toml`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML configuration file (every key optional; see examples/node.toml).
    #[arg(long, env = "HYDROMESH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder of the node's identity key and database (created if missing) [default: hydromesh-data].
    #[arg(long, env = "HYDROMESH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (repeatable) [default: TCP and QUIC on port 4001, all interfaces].
    #[arg(long, env = "HYDROMESH_LISTEN", value_delimiter = ',', value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A peer to join through (repeatable), with or without /p2p/<peer id>.
    #[arg(long, env = "HYDROMESH_BOOTSTRAP", value_delimiter = ',', value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// A fog node (peer id) whose summaries this node accepts (repeatable). Without any, every
    /// peer that speaks the protocol may join: set them wherever the network is not private.
    #[arg(long = "fog-node", env = "HYDROMESH_FOG_NODES", value_delimiter = ',', value_name = "PEER_ID")]
    fog_nodes: Vec<libp2p::PeerId>,
    /// A label for this node, shown in answers [default: the host name].
    #[arg(long, env = "HYDROMESH_NAME")]
    name: Option<String>,
    /// Discover peers on the local network with mDNS (does not work on loopback).
    #[arg(long, env = "HYDROMESH_MDNS")]
    mdns: bool,
    /// Say the node is alive (and sync with a peer) this often [default: 60s].
    #[arg(long, env = "HYDROMESH_REPUBLISH", value_parser = humantime::parse_duration, value_name = "DURATION")]
    republish: Option<Duration>,
    /// Report a node stale when not heard from within this long [default: 3.5 × republish].
    #[arg(long, env = "HYDROMESH_STALE_AFTER", value_parser = humantime::parse_duration, value_name = "DURATION")]
    stale_after: Option<Duration>,
    /// Trust admin commands signed by this public key (repeatable; from `hydromesh keygen`).
    #[arg(long = "admin-pubkey", env = "HYDROMESH_ADMIN_PUBKEYS", value_delimiter = ',', value_name = "KEY", value_parser = parse_admin_key)]
    admin_pubkeys: Vec<ed25519::PublicKey>,
    /// A bearer token allowing admin actions over HTTP (repeatable; keep it secret).
    #[arg(long = "admin-token", env = "HYDROMESH_ADMIN_TOKENS", value_delimiter = ',', value_name = "TOKEN")]
    admin_tokens: Vec<String>,
    /// The admin key HTTP admin actions are signed with (from `hydromesh keygen`).
    #[arg(long, env = "HYDROMESH_ADMIN_KEY", value_name = "FILE")]
    admin_key: Option<PathBuf>,
    /// Increasing-block tariff: LITRES:PRICE per m³ for each block, the last one `*`
    /// [default: 10000:4.50,20000:7.00,50000:11.00,*:14.00].
    #[arg(long, env = "HYDROMESH_TARIFF", value_name = "BLOCKS")]
    tariff: Option<String>,
    /// Currency of the tariff (ISO 4217) [default: BRL].
    #[arg(long, env = "HYDROMESH_CURRENCY")]
    currency: Option<String>,
    /// Flow above this (L/h) for 30 minutes or more raises a burst alert [default: 1200].
    #[arg(long, env = "HYDROMESH_BURST_FLOW_LPH")]
    burst_flow_lph: Option<u32>,
    /// Keep raw readings this long (at least 2days), and older ones as hourly registers:
    /// consumption over whole hours (every period and bill) stays exact [default: keep every reading].
    #[arg(long, env = "HYDROMESH_RETAIN_RAW", value_parser = humantime::parse_duration, value_name = "DURATION")]
    retain_raw: Option<Duration>,
    /// Cut a meter whose closed-period bill is unpaid this long after the period ended [default: 10days].
    #[arg(long, env = "HYDROMESH_DEBT_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    debt_grace: Option<Duration>,
    /// Top meters carried in each summary: global top-N is answered locally for N up to this [default: 100].
    #[arg(long, env = "HYDROMESH_TOP_K", value_parser = clap::value_parser!(u64).range(1..=1000))]
    top_k: Option<u64>,
    /// HTTP API, dashboard and metrics address, or `off` [default: 127.0.0.1:8080].
    #[arg(long, env = "HYDROMESH_HTTP", value_parser = parse_service_addr, value_name = "ADDR")]
    http: Option<ServiceAddr>,
    /// Embedded MQTT broker address, or `off` [default: 127.0.0.1:1883].
    #[arg(long, env = "HYDROMESH_MQTT", value_parser = parse_service_addr, value_name = "ADDR")]
    mqtt: Option<ServiceAddr>,
    /// Subscribe to this existing MQTT broker instead of embedding one (mqtt://HOST:PORT).
    #[arg(long, env = "HYDROMESH_MQTT_BROKER", value_name = "URL")]
    mqtt_broker: Option<String>,
    /// A private mesh: only peers and clients with this pre-shared key (from `hydromesh keygen
    /// --swarm-key`) can connect; TCP only.
    #[arg(long, env = "HYDROMESH_SWARM_KEY", value_name = "FILE")]
    swarm_key: Option<PathBuf>,
}

/// `HOST:PORT` or `off` (a newtype: clap reads `Option<Option<_>>` as an optional value).
#[derive(Clone, Copy, Debug)]
struct ServiceAddr(Option<SocketAddr>);

fn parse_service_addr(text: &str) -> Result<ServiceAddr, String> {
    parse_addr_or_off(text).map(ServiceAddr)
}

fn parse_admin_key(text: &str) -> Result<ed25519::PublicKey, String> {
    crate::keys::parse_public_key(text).map_err(|e| e.to_string())
}

impl Args {
    /// The configuration: defaults, then the file, then variables and flags.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let file_set_stale_after =
            self.config.is_some() && config.stale_after != Config::default().stale_after;
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        config.bootstrap.extend(self.bootstrap);
        config.fog_nodes.extend(self.fog_nodes);
        if let Some(name) = self.name {
            config.name = name;
        }
        config.mdns |= self.mdns;
        if let Some(republish) = self.republish {
            config.republish_interval = republish;
            if !file_set_stale_after {
                config.stale_after = republish * 7 / 2;
            }
        }
        if let Some(stale_after) = self.stale_after {
            config.stale_after = stale_after;
        }
        config.admin_keys.extend(self.admin_pubkeys);
        config.admin_tokens.extend(self.admin_tokens);
        if self.admin_key.is_some() {
            config.admin_key_file = self.admin_key;
        }
        if self.tariff.is_some() || self.currency.is_some() {
            let blocks = self.tariff.unwrap_or_else(|| config.tariff.blocks_text());
            let currency = self.currency.unwrap_or_else(|| config.tariff.currency.clone());
            config.tariff =
                Tariff::parse(&currency, &blocks).map_err(|e| anyhow::anyhow!("--tariff: {e}"))?;
        }
        if let Some(limit) = self.burst_flow_lph {
            config.burst_flow_lph = limit;
        }
        if let Some(grace) = self.debt_grace {
            config.debt_grace = grace;
        }
        if let Some(retain_raw) = self.retain_raw {
            config.retain_raw = Some(retain_raw);
        }
        if let Some(top_k) = self.top_k {
            config.top_k = top_k as usize;
        }
        if let Some(ServiceAddr(http)) = self.http {
            config.http = http;
        }
        if let Some(ServiceAddr(mqtt)) = self.mqtt {
            config.mqtt = mqtt;
        }
        if self.mqtt_broker.is_some() {
            config.mqtt_broker = self.mqtt_broker;
        }
        if self.swarm_key.is_some() {
            config.swarm_key = self.swarm_key;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Raises the soft limit on open files to the hard one: a node holds a socket for every
/// connection (HTTP, MQTT and libp2p clients, peers, connections still negotiating), and a
/// service manager's usual soft limit (1,024) is below the node's own bounds.
pub fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, ..limit }) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "open files limit raised"),
        Err(error) => tracing::warn!(%error, current = ?limit.current, "cannot raise the open files limit"),
    }
}

/// Runs `hydromesh node`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let config = args.into_config()?;
    raise_open_files_limit();
    let data_dir = config.data_dir.clone();
    let node = App::spawn(config).await?;
    let addrs = node.listen_addrs().await;
    tracing::info!(
        peer_id = %node.peer_id(),
        addrs_file = %data_dir.join("addrs").display(),
        "ready; dial any of: {}",
        addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    );
    wait_for_signal().await?;
    tracing::info!("signal received; stopping");
    node.shutdown().await?;
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
