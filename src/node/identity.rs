//! The node's persistent identity: an ed25519 key in `DATA_DIR/identity.key`, so the peer id
//! survives restarts.

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use super::NodeError;

const FILE: &str = "identity.key";

/// Loads the node's key, or creates it (owner-only permissions) on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, NodeError> {
    let path = data_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| NodeError::Identity { path, reason: e.to_string() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Identity { path: path.clone(), reason: e.to_string() })?;
            write_private(&path, &bytes).map_err(|source| NodeError::DataDir { path, source })?;
            Ok(keypair)
        }
        Err(source) => Err(NodeError::DataDir { path, source }),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
