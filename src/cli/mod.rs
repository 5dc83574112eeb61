//! The `hydromesh` command line: one module per subcommand, and what they share (connecting to
//! a node, exit codes, output formatting).

/// Prints a line to stdout like `println!`, but a closed pipe (`hydromesh query top | head -1`)
/// ends the command quietly with status 0 instead of a panic: there is no one left to read.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::say(format_args!($($arg)*))
    };
}

pub mod admin;
pub mod ingest;
pub mod keygen;
pub mod node;
pub mod output;
pub mod query;
pub mod simulate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;

use crate::p2p::client::Client;

/// Exit status: 0 success; 1 the command ran but some input was refused (or nothing found);
/// 2 usage or connection errors.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status for usage and connection errors.
pub const EXIT_ERROR: u8 = 2;

/// hydromesh: a peer-to-peer fog mesh for smart water meters.
#[derive(Debug, Parser)]
#[command(name = "hydromesh", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a fog node.
    Node(Box<node::Args>),
    /// Send readings from a CSV or JSON-lines file to a node.
    Ingest(ingest::Args),
    /// Ask any node a global question, or about one meter.
    Query(query::Args),
    /// Run simulated hydrometers against a node.
    Simulate(simulate::Args),
    /// Signed admin commands: block, unblock, policy, paid.
    Admin(admin::Args),
    /// Create an admin key (secret to a file, public key printed), or a private mesh's key.
    Keygen(keygen::Args),
}

impl Cli {
    /// Runs the subcommand and returns the process exit status.
    pub async fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Node(args) => node::run(*args).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Query(args) => query::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Keygen(args) => keygen::run(args).await,
        };
        match result {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(EXIT_ERROR)
            }
        }
    }
}

/// Starts logging to stderr: `RUST_LOG` when set, else `info` for a node and `warn` otherwise
/// (the other commands say what they do on stdout).
pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Node(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// How a client command reaches a node.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Address of any fog node, e.g. /ip4/127.0.0.1/tcp/4001 (with or without /p2p/<peer id>),
    /// or HOST:PORT for its TCP port.
    #[arg(long, env = "HYDROMESH_PEER", global = true, value_name = "MULTIADDR", value_parser = parse_peer)]
    pub peer: Option<Multiaddr>,
    /// Give up on the node after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true, value_name = "DURATION")]
    pub timeout: Duration,
    /// The private mesh's pre-shared key, when the node runs one (its --swarm-key).
    #[arg(long, env = "HYDROMESH_SWARM_KEY", global = true, value_name = "FILE")]
    pub swarm_key: Option<std::path::PathBuf>,
}

/// A node's address: a multiaddr, or `HOST:PORT` (an IP address or a DNS name) for its TCP port.
pub fn parse_peer(text: &str) -> Result<Multiaddr, String> {
    let hint = "give a multiaddr such as /ip4/127.0.0.1/tcp/4001, or HOST:PORT";
    if text.starts_with('/') {
        return text.parse().map_err(|error| format!("`{text}` is not a multiaddr ({error}): {hint}"));
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        let ip = match socket.ip() {
            std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
            std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
        };
        return format!("{ip}/tcp/{}", socket.port()).parse().map_err(|e| format!("`{text}`: {e}"));
    }
    match text.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(['/', ':']) =>
        {
            format!("/dns/{host}/tcp/{port}").parse().map_err(|e| format!("`{text}`: {e}"))
        }
        _ => Err(format!("`{text}` is not an address: {hint}")),
    }
}

impl PeerArgs {
    /// Connects to the node.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let peer = self.peer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no node to ask: give --peer MULTIADDR (or set HYDROMESH_PEER)")
        })?;
        let swarm_key = match &self.swarm_key {
            Some(path) => {
                crate::p2p::SwarmKey::check_addr(peer)?;
                Some(crate::p2p::SwarmKey::load(path)?)
            }
            None => None,
        };
        Ok(Client::connect_with(peer, self.timeout, swarm_key).await?)
    }
}
