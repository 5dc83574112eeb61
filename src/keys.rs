//! Admin keys: hex text, public keys as operators write them, and secret key files (mode 0600)
//! as `hydromesh keygen` writes them.

use std::path::Path;

use libp2p::identity::ed25519;

/// Why an admin key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not a public key.
    #[error("`{text}` is not an admin public key ({reason})")]
    PublicKey {
        /// What was given.
        text: String,
        /// Why.
        reason: String,
    },
    /// A key file cannot be used.
    #[error("{0}")]
    File(String),
}

/// Writes `text` to a new file `path` that only its owner can read (mode 0600), synced; an
/// existing file is never replaced (`AlreadyExists`).
pub fn write_new_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Hex of bytes, lower case.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// An admin public key from its 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<ed25519::PublicKey, KeyError> {
    let invalid = |reason: String| KeyError::PublicKey { text: text.to_owned(), reason };
    let bytes = from_hex(text)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| invalid("64 hex digits, as `hydromesh keygen` prints".into()))?;
    ed25519::PublicKey::try_from_bytes(&bytes).map_err(|e| invalid(format!("not ed25519: {e}")))
}

/// Reads an admin secret key written by `hydromesh keygen` (64 hex digits), refusing a file
/// that others can read.
pub fn read_secret_key(path: &Path) -> Result<ed25519::Keypair, KeyError> {
    let unreadable =
        |e: std::io::Error| KeyError::File(format!("cannot read key file {}: {e}", path.display()));
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::File(format!(
                "key file {} is readable by others (mode {mode:04o}); run: chmod 600 {}",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let mut bytes = from_hex(text.trim()).filter(|bytes| bytes.len() == 32).ok_or_else(|| {
        KeyError::File(format!(
            "{} is not an admin key (64 hex digits, as `hydromesh keygen` writes)",
            path.display()
        ))
    })?;
    let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
        .map_err(|e| KeyError::File(format!("{} is not an ed25519 key: {e}", path.display())))?;
    Ok(ed25519::Keypair::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_keys() {
        assert_eq!(to_hex(&[0, 255, 16]), "00ff10");
        assert_eq!(from_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        let key = ed25519::Keypair::generate().public();
        assert_eq!(parse_public_key(&to_hex(&key.to_bytes())), Ok(key));
        assert!(parse_public_key("abcd").is_err());
    }
}
