//! The private mesh's pre-shared key (`--swarm-key FILE`): IPFS's `swarm.key` format, three
//! lines — `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits. With a key, every libp2p
//! connection (node to node, client to node) starts with a handshake under it (libp2p's `pnet`,
//! before noise): a peer without the key, or with another, gets no connection at all. The key
//! protects TCP only, so QUIC is refused when one is set.

use std::path::{Path, PathBuf};

use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;

/// A loaded pre-shared key.
#[derive(Clone, Copy)]
pub struct SwarmKey(pub(crate) PreSharedKey);

impl std::fmt::Debug for SwarmKey {
    /// Its fingerprint only: the key itself is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwarmKey({})", self.0.fingerprint())
    }
}

/// Why a swarm key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    /// The file cannot be read.
    #[error("swarm key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a swarm key.
    #[error(
        "swarm key {path}: {reason} (expected three lines: /key/swarm/psk/1.0.0/, /base16/, 64 hex \
         digits; `hydromesh keygen --swarm-key FILE` writes one)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// QUIC was asked for with a key.
    #[error("{addr}: a private mesh (--swarm-key) runs on TCP only (the pre-shared key cannot protect QUIC); use a /tcp address")]
    Quic {
        /// The QUIC address.
        addr: Multiaddr,
    },
}

impl SwarmKey {
    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<SwarmKey, SwarmKeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SwarmKeyError::Io { path: path.to_path_buf(), source })?;
        text.parse::<PreSharedKey>()
            .map(SwarmKey)
            .map_err(|error| SwarmKeyError::Format { path: path.to_path_buf(), reason: error.to_string() })
    }

    /// A new random key: 32 bytes of the operating system's random source (drawn as an
    /// ed25519 secret key, which is exactly that).
    pub fn generate() -> SwarmKey {
        let secret = libp2p::identity::ed25519::SecretKey::generate();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(secret.as_ref());
        SwarmKey(PreSharedKey::new(bytes))
    }

    /// Writes the key to a new file `path`, readable by its owner only; an existing file is
    /// never replaced.
    pub fn write_new(&self, path: &Path) -> std::io::Result<()> {
        crate::keys::write_new_secret(path, &format!("{}\n", self.0))
    }

    /// The key's fingerprint, safe to show: two nodes with the same fingerprint share the key.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    /// Refuses a QUIC address: the key cannot protect it.
    pub fn check_addr(addr: &Multiaddr) -> Result<(), SwarmKeyError> {
        let quic = addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1 | libp2p::multiaddr::Protocol::Quic));
        if quic {
            return Err(SwarmKeyError::Quic { addr: addr.clone() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_key_reads_back_and_damaged_files_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swarm.key");
        let key = SwarmKey::generate();
        key.write_new(&path).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner only");
        }
        assert_eq!(SwarmKey::load(&path).expect("load").fingerprint(), key.fingerprint());
        assert!(key.write_new(&path).is_err(), "an existing key is never replaced");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"), "{text}");

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nnot hex\n").expect("write");
        let error = SwarmKey::load(&bad).expect_err("refused").to_string();
        assert!(error.contains("bad.key") && error.contains("64 hex"), "{error}");
        let missing = SwarmKey::load(&dir.path().join("none.key")).expect_err("refused").to_string();
        assert!(missing.contains("none.key"), "{missing}");
    }

    #[test]
    fn quic_addresses_are_refused_with_a_key() {
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().expect("addr");
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("addr");
        assert!(SwarmKey::check_addr(&quic).expect_err("refused").to_string().contains("TCP only"));
        assert!(SwarmKey::check_addr(&tcp).is_ok());
    }
}
