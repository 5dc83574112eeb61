//! `hydromesh keygen`: create an admin key (the secret goes to a file only its owner can read;
//! the public key, which nodes are told to trust, is printed), or a private mesh's swarm key
//! (a file only its owner can read; its fingerprint is printed).

use std::path::{Path, PathBuf};

use libp2p::identity::ed25519;

use crate::keys::to_hex;

/// `hydromesh keygen` arguments.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Args {
    /// Write a new admin key here (created with mode 0600; never overwritten); its public key
    /// is printed.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write a new private-mesh key here instead (IPFS swarm.key format, mode 0600, never
    /// overwritten): give it to every node and client of the mesh with --swarm-key.
    #[arg(long, value_name = "FILE")]
    swarm_key: Option<PathBuf>,
}

/// Runs `hydromesh keygen`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let out = match (args.out, args.swarm_key) {
        (_, Some(path)) => {
            let key = crate::p2p::SwarmKey::generate();
            key.write_new(&path).map_err(|error| refused(&path, error))?;
            say!("{}", key.fingerprint());
            eprintln!(
                "swarm key written to {} (fingerprint above); start every node and client of the mesh with --swarm-key {}",
                path.display(),
                path.display()
            );
            return Ok(0);
        }
        (Some(out), None) => out,
        (None, None) => {
            anyhow::bail!("give --out FILE (an admin key) or --swarm-key FILE (a private-mesh key)")
        }
    };
    let key = ed25519::Keypair::generate();
    write_secret(&out, &key)?;
    say!("{}", to_hex(&key.public().to_bytes()));
    eprintln!(
        "secret key written to {}; start nodes with --admin-pubkey {}",
        out.display(),
        to_hex(&key.public().to_bytes())
    );
    Ok(0)
}

fn write_secret(path: &Path, key: &ed25519::Keypair) -> anyhow::Result<()> {
    crate::keys::write_new_secret(path, &format!("{}\n", to_hex(key.secret().as_ref())))
        .map_err(|e| refused(path, e))
}

/// Why a key file could not be created.
fn refused(path: &Path, error: std::io::Error) -> anyhow::Error {
    match error.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} already exists: refusing to overwrite a key", path.display())
        }
        _ => anyhow::anyhow!("cannot create {}: {error}", path.display()),
    }
}

/// Reads an admin key written by `hydromesh keygen`, refusing one others can read.
pub fn read_secret(path: &Path) -> anyhow::Result<ed25519::Keypair> {
    Ok(crate::keys::read_secret_key(path)?)
}
