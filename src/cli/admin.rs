//! `hydromesh admin`: signed admin commands (block, unblock, policy, paid) sent to any node,
//! which applies them only if it trusts the key, and spreads them to the whole mesh.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use hydromesh_proto::control::{Action, Command, Policy};
use hydromesh_proto::{query, MeterId};
use serde_json::json;

use super::output::cubic_metres;

use super::keygen::read_secret;
use super::{PeerArgs, EXIT_ERROR, EXIT_REFUSED};
use crate::clock::now_ms;
use crate::present::json::policy_json;

/// `hydromesh admin` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    peer: PeerArgs,
    /// The admin's secret key file (from `hydromesh keygen`; must not be readable by others).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Cut a meter's supply.
    Block {
        /// The meter's id, as printed on it (e.g. 2124589c).
        meter: MeterId,
        /// Why (shown with the block).
        #[arg(long, default_value = "blocked by an admin")]
        reason: String,
    },
    /// Restore a meter's supply after a manual block.
    Unblock {
        /// The meter's id, as printed on it (e.g. 2124589c).
        meter: MeterId,
    },
    /// Show the rationing policy, or change it (flags not given keep their value).
    Policy {
        /// Billing and rationing period (e.g. 30d, 1week).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        period: Option<Duration>,
        /// Most litres a meter may consume in a period (0: no cap).
        #[arg(long, value_name = "LITRES")]
        cap_l: Option<u64>,
        /// Cut meters above FACTOR × the mesh-wide average of the period (0: no such rule).
        #[arg(long, value_name = "FACTOR")]
        above_average: Option<f64>,
    },
    /// Record payment of the meter's bills so far; lifts a debt block.
    Paid {
        /// The meter's id, as printed on it (e.g. 2124589c).
        meter: MeterId,
    },
}

/// What the command line asks for.
enum Plan {
    ShowPolicy,
    ChangePolicy { period: Option<Duration>, cap_l: Option<u64>, above_average: Option<Option<u32>> },
    Send(Action),
}

/// Runs `hydromesh admin`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let plan = match args.command {
        AdminCommand::Block { meter, reason } => {
            anyhow::ensure!(
                reason.chars().count() <= hydromesh_proto::limits::MAX_REASON_CHARS,
                "--reason is longer than {} characters",
                hydromesh_proto::limits::MAX_REASON_CHARS
            );
            Plan::Send(Action::Block { meter, reason })
        }
        AdminCommand::Unblock { meter } => Plan::Send(Action::Unblock { meter }),
        AdminCommand::Paid { meter } => Plan::Send(Action::Paid { meter }),
        AdminCommand::Policy { period: None, cap_l: None, above_average: None } => Plan::ShowPolicy,
        AdminCommand::Policy { period, cap_l, above_average } => {
            Plan::ChangePolicy { period, cap_l, above_average: above_average.map(permille).transpose()? }
        }
    };
    // Check the key before touching the network: a bad key file is a usage error.
    let key = match (&args.key, &plan) {
        (_, Plan::ShowPolicy) => None,
        (Some(path), _) => Some(read_secret(path)?),
        (None, _) => {
            anyhow::bail!("admin commands are signed: give --key FILE (from `hydromesh keygen`)")
        }
    };
    let mut client = args.peer.connect().await?;
    let action = match plan {
        Plan::Send(action) => action,
        Plan::ShowPolicy | Plan::ChangePolicy { .. } => {
            let query::Response::Policy(current, origin) = client.query(query::Request::Policy).await? else {
                anyhow::bail!("the node did not answer with its policy");
            };
            let Plan::ChangePolicy { period, cap_l, above_average } = plan else {
                print_policy(&current, origin.as_ref(), args.json);
                return Ok(0);
            };
            let policy = Policy {
                period_ms: period
                    .map_or(current.period_ms, |p| p.as_millis().min(u128::from(u64::MAX)) as u64),
                cap_l: cap_l.map_or(current.cap_l, |cap| (cap > 0).then_some(cap)),
                above_average_permille: above_average.unwrap_or(current.above_average_permille),
            };
            if let Some(problem) = policy.problem() {
                anyhow::bail!("{problem}");
            }
            Action::Policy(policy)
        }
    };
    let key = key.ok_or_else(|| anyhow::anyhow!("admin commands are signed: give --key FILE"))?;
    let command = Command { issued_at_ms: now_ms(), action };
    let signed = crate::mesh::control::sign(&key, &command)?;
    match client.query(query::Request::Admin(signed)).await? {
        query::Response::Applied(message) => {
            if args.json {
                say!("{}", json!({"applied": true, "message": message}));
            } else {
                say!("{message}");
            }
            Ok(0)
        }
        query::Response::Error(reason) => {
            if args.json {
                say!("{}", json!({"applied": false, "error": reason}));
            }
            eprintln!("refused: {reason}");
            Ok(EXIT_REFUSED)
        }
        query::Response::Busy => {
            eprintln!("error: the node is busy; try again shortly");
            Ok(EXIT_ERROR)
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// A factor as thousandths: `None` for 0 (rule off).
fn permille(factor: f64) -> anyhow::Result<Option<u32>> {
    Policy::permille_of_factor(factor).map_err(|problem| anyhow::anyhow!("--above-average {problem}"))
}

fn print_policy(policy: &Policy, origin: Option<&query::PolicyOrigin>, json: bool) {
    let factor = policy.above_average_permille.map(|p| f64::from(p) / 1000.0);
    if json {
        say!("{}", policy_json(policy, origin));
        return;
    }
    say!("period         {}", humantime::format_duration(Duration::from_millis(policy.period_ms)));
    say!(
        "cap            {}",
        policy.cap_l.map_or_else(|| "none".into(), |c| format!("{} m³", cubic_metres(c)))
    );
    say!(
        "above average  {}",
        factor.map_or_else(|| "none".into(), |f| format!("{f} × the mesh-wide average"))
    );
    match origin {
        Some(origin) => say!(
            "set by         {} at {}",
            origin.admin,
            hydromesh_proto::format_rfc3339(origin.issued_at_ms)
        ),
        None => say!("set by         nobody (default policy)"),
    }
}
