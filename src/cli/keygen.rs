//! `hydromesh keygen`: create an admin key. The secret goes to a file only its owner can read;
//! the public key, which nodes are told to trust, is printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::ed25519;

use crate::keys::to_hex;

/// `hydromesh keygen` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Runs `hydromesh keygen`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let key = ed25519::Keypair::generate();
    write_secret(&args.out, &key)?;
    say!("{}", to_hex(&key.public().to_bytes()));
    eprintln!(
        "secret key written to {}; start nodes with --admin-pubkey {}",
        args.out.display(),
        to_hex(&key.public().to_bytes())
    );
    Ok(0)
}

fn write_secret(path: &Path, key: &ed25519::Keypair) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} already exists: refusing to overwrite a key", path.display())
        }
        _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
    })?;
    writeln!(file, "{}", to_hex(key.secret().as_ref()))?;
    file.sync_all()?;
    Ok(())
}

/// Reads an admin key written by `hydromesh keygen`, refusing one others can read.
pub fn read_secret(path: &Path) -> anyhow::Result<ed25519::Keypair> {
    Ok(crate::keys::read_secret_key(path)?)
}
