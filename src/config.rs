//! Node configuration: one struct, every field documented, defaults that work on a laptop.
//!
//! Sources, later ones winning: the defaults, a TOML file (`--config`, every key optional and
//! named as the field here; `examples/node.toml` lists them all), `HYDROMESH_*` environment
//! variables, and command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::identity::ed25519;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::domain::rules::Tariff;

/// Shortest raw retention: the alert rules replay a meter's last day of raw readings.
pub const MIN_RETAIN_RAW: Duration = Duration::from_secs(2 * 86_400);

/// Everything a fog node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Folder of the node's identity key (`identity.key`), its database (`db/`) and its
    /// dialable addresses (`addrs`). Created if missing.
    pub data_dir: PathBuf,
    /// Addresses to listen on. Default: TCP and QUIC on port 4001, all interfaces.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, with or without `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The fog nodes (peer ids) whose summaries this node accepts. Empty: any peer that speaks
    /// the protocol may join the mesh — set it wherever the network is not private.
    pub fog_nodes: Vec<libp2p::PeerId>,
    /// A label shown in answers (default: the host name, or `hydromesh`).
    pub name: String,
    /// Discover peers on the LAN with mDNS (never finds loopback-only nodes).
    pub mdns: bool,
    /// Say this often that the node is alive (a small signed message when its summary has not
    /// changed), and sync with a peer.
    #[serde(with = "humantime_serde")]
    pub republish_interval: Duration,
    /// Wait this long after a change before publishing, to gather more changes (debounce).
    #[serde(with = "humantime_serde")]
    pub publish_debounce: Duration,
    /// Publish the summary at most once per this, however fast readings arrive.
    #[serde(with = "humantime_serde")]
    pub publish_interval: Duration,
    /// Bytes per second of summaries the publishing nodes may send every node together: a busy
    /// mesh publishes less often than `publish_interval`, so that traffic stays bounded.
    pub summary_budget: u64,
    /// A node not heard from within this is reported stale.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// A node not heard from within this is dropped from the view.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// Gossipsub heartbeat.
    #[serde(with = "humantime_serde")]
    pub gossip_heartbeat: Duration,
    /// How many top meters each summary carries: global top-N answers are exact for N up to
    /// this; larger N are computed by asking every node.
    pub top_k: usize,
    /// Ingest batches waiting for the store before clients are told "busy".
    pub ingest_queue_batches: usize,
    /// Requests being answered at once before clients are told "busy".
    pub max_pending_requests: usize,
    /// Most inbound connections at once (clients and peers); more are refused.
    pub max_incoming_connections: u32,
    /// Close connections idle for this long (gossip mesh peers excepted).
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
    /// Admin public keys (hex, from `hydromesh keygen`) whose signed commands this node applies.
    #[serde(with = "hex_keys")]
    pub admin_keys: Vec<ed25519::PublicKey>,
    /// Bearer tokens that allow admin actions over HTTP (keep them secret; empty: none).
    pub admin_tokens: Vec<String>,
    /// The admin key (from `hydromesh keygen`, mode 0600) this node signs HTTP admin actions
    /// with: other nodes apply only signed commands, so token-authenticated actions need it.
    pub admin_key_file: Option<PathBuf>,
    /// The increasing-block tariff bills are computed with.
    pub tariff: Tariff,
    /// Flow above this, in litres per hour, for 30 minutes or more is a burst.
    pub burst_flow_lph: u32,
    /// A closed period's bill unpaid this long after the period ended cuts the meter (debt).
    #[serde(with = "humantime_serde")]
    pub debt_grace: Duration,
    /// Raw readings are kept this long, older ones as hourly registers (consumption over whole
    /// hours stays exact); `None`: every reading is kept. At least [`MIN_RETAIN_RAW`].
    #[serde(default, with = "humantime_serde")]
    pub retain_raw: Option<Duration>,
    /// Address of the HTTP API, dashboard and metrics (`off` to disable).
    #[serde(with = "addr_or_off")]
    pub http: Option<SocketAddr>,
    /// Address of the embedded MQTT broker for meters and gateways (`off` to disable).
    #[serde(with = "addr_or_off")]
    pub mqtt: Option<SocketAddr>,
    /// An existing MQTT broker to subscribe to instead (`mqtt://HOST:PORT`).
    pub mqtt_broker: Option<String>,
    /// A private mesh's pre-shared key (IPFS `swarm.key` format, from `hydromesh keygen
    /// --swarm-key`): only peers and clients holding it can connect. TCP only: the default QUIC
    /// listener is dropped, and QUIC addresses given are refused.
    pub swarm_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("hydromesh-data"),
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            fog_nodes: Vec::new(),
            name: default_name(),
            mdns: false,
            republish_interval: Duration::from_secs(60),
            publish_debounce: Duration::from_millis(100),
            publish_interval: Duration::from_secs(1),
            summary_budget: 1536,
            stale_after: Duration::from_secs(210),
            forget_after: Duration::from_secs(24 * 3600),
            gossip_heartbeat: Duration::from_secs(1),
            top_k: 100,
            ingest_queue_batches: 64,
            max_pending_requests: 256,
            max_incoming_connections: 1024,
            idle_connection_timeout: Duration::from_secs(120),
            admin_keys: Vec::new(),
            admin_tokens: Vec::new(),
            admin_key_file: None,
            tariff: Tariff::default(),
            burst_flow_lph: 1200,
            debt_grace: Duration::from_secs(10 * 86_400),
            retain_raw: None,
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            mqtt: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            mqtt_broker: None,
            swarm_key: None,
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A setting is out of its range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML configuration file; keys it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }
}

impl Config {
    /// Checks every setting's range, so that a node never starts on one it cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: String| Err(ConfigError::Invalid(what));
        let positive = [
            ("republish_interval", self.republish_interval),
            ("stale_after", self.stale_after),
            ("forget_after", self.forget_after),
            ("gossip_heartbeat", self.gossip_heartbeat),
            ("idle_connection_timeout", self.idle_connection_timeout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, duration)| duration.is_zero()) {
            return invalid(format!("{name} must be longer than 0"));
        }
        if self.retain_raw.is_some_and(|raw| raw < MIN_RETAIN_RAW) {
            return invalid(format!(
                "retain_raw must be at least {} (the alert rules look at the last day of raw readings)",
                humantime::format_duration(MIN_RETAIN_RAW)
            ));
        }
        if self.summary_budget == 0 {
            return invalid("summary_budget must be at least 1 byte per second".into());
        }
        if self.name.len() > hydromesh_proto::limits::MAX_NAME_BYTES {
            return invalid(format!("name is longer than {} bytes", hydromesh_proto::limits::MAX_NAME_BYTES));
        }
        if !(1..=1000).contains(&self.top_k) {
            return invalid("top_k must be between 1 and 1000".into());
        }
        for (name, value) in [
            ("ingest_queue_batches", self.ingest_queue_batches),
            ("max_pending_requests", self.max_pending_requests),
            ("max_incoming_connections", self.max_incoming_connections as usize),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if self.listen.is_empty() {
            return invalid("no listen address".into());
        }
        Ok(())
    }
}

fn default_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hydromesh".to_owned())
}

/// Parses `HOST:PORT`, or `off`.
pub fn parse_addr_or_off(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" | "none" | "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| format!("`{addr}` is not HOST:PORT (or `off`)")),
    }
}

mod addr_or_off {
    use super::*;

    pub fn serialize<S: serde::Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        parse_addr_or_off(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_keys {
    use super::*;
    use crate::keys::{parse_public_key, to_hex};

    pub fn serialize<S: serde::Serializer>(keys: &[ed25519::PublicKey], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(|key| to_hex(&key.to_bytes())))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ed25519::PublicKey>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| parse_public_key(text).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "name = \"north\"\nrepublish_interval = \"3s\"\nhttp = \"127.0.0.1:9090\"\nmqtt = \"off\"\n\
             listen = [\"/ip4/127.0.0.1/tcp/4100\"]\n[tariff]\ncurrency = \"EUR\"\nblocks = \"5000:1.00,*:2.00\"\n",
        )
        .expect("write");
        let config = Config::from_file(&path).expect("config");
        assert_eq!(config.name, "north");
        assert_eq!(config.republish_interval, Duration::from_secs(3));
        assert_eq!(config.http, Some("127.0.0.1:9090".parse().expect("addr")));
        assert_eq!(config.mqtt, None);
        assert_eq!(config.tariff.currency, "EUR");
        assert_eq!(config.top_k, Config::default().top_k);
        assert_eq!(config.listen.len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "name = \"x\"\nrepublsh_interval = \"3s\"\n").expect("write");
        let error = Config::from_file(&path).expect_err("unknown key").to_string();
        assert!(error.contains("republsh_interval") && error.contains("line 2"), "{error}");
        std::fs::write(&path, "http = \"everywhere\"\n").expect("write");
        let error = Config::from_file(&path).expect_err("bad address").to_string();
        assert!(error.contains("everywhere"), "{error}");
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node.toml");
        let text = std::fs::read_to_string(&path).expect("examples/node.toml");
        let example: toml::Table = toml::from_str(&text).expect("valid TOML");
        let defaults: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).expect("serialize")).expect("parse");
        let commented = |key: &str| text.contains(&format!("# {key} = "));
        for (key, value) in &defaults {
            match example.get(key) {
                Some(documented) if key != "name" => assert_eq!(documented, value, "default of `{key}`"),
                Some(_) => {}
                None => assert!(commented(key), "examples/node.toml does not document `{key}`"),
            }
        }
        assert!(commented("mqtt_broker"), "the optional broker is shown commented out");
        let config = Config::from_file(&path).expect("the example loads");
        assert_eq!(config.tariff, Tariff::default());
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(Config::default().validate().is_ok());
        let zero = Config { republish_interval: Duration::ZERO, ..Config::default() };
        let error = zero.validate().expect_err("zero republish").to_string();
        assert!(error.contains("republish_interval"), "{error}");
        let none = Config { max_pending_requests: 0, ..Config::default() };
        assert!(none
            .validate()
            .expect_err("no pending requests")
            .to_string()
            .contains("max_pending_requests"));
        let wide = Config { top_k: 5000, ..Config::default() };
        assert!(wide.validate().is_err());
    }

    #[test]
    fn the_defaults_round_trip_through_toml() {
        let text = toml::to_string(&Config::default()).expect("serialize");
        let back: Config = toml::from_str(&text).expect("parse");
        assert_eq!(back.tariff, Config::default().tariff);
        assert_eq!(back.stale_after, Config::default().stale_after);
    }
}
