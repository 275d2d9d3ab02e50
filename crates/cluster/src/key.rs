//! The cluster's pre-shared key: every node of one cluster holds the same key, and the
//! handshake (`handshake.rs`) admits only peers that prove they hold it.
//!
//! Owns: reading the key from text or a file, the minimum length, keeping it out of logs.
//! Does not own: where the text comes from (the CLI reads `--cluster-key`,
//! `--cluster-key-file` or `HEARTH_CLUSTER_KEY`).
//!
//! Invariants: a `ClusterKey` is at least [`MIN_KEY_BYTES`] bytes; `Debug` never prints it.

use std::fmt;
use std::path::Path;

use crate::error::{ClusterError, Result};

/// Shorter keys are refused: a 16-byte key from a password generator is the least we accept.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// A key from its text (used as bytes, exactly as given).
    pub fn from_text(text: &str) -> Result<Self> {
        Self::from_bytes(text.as_bytes().to_vec())
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(ClusterError::InvalidKey(format!(
                "the key is {} bytes; a cluster key needs at least {MIN_KEY_BYTES} (for example \
                 `openssl rand -hex 32`)",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// A key from a file: its contents without trailing whitespace (an editor's final newline
    /// must not make two nodes' keys differ).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|err| ClusterError::io(format!("reading key file {}", path.display()), err))?;
        let end = bytes
            .iter()
            .rposition(|byte| !byte.is_ascii_whitespace())
            .map_or(0, |last| last + 1);
        Self::from_bytes(bytes[..end].to_vec()).map_err(|err| match err {
            ClusterError::InvalidKey(reason) => {
                ClusterError::InvalidKey(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(<{} bytes, redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_with_the_minimum_named() {
        let err = ClusterKey::from_text("short").unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        assert!(ClusterKey::from_text("0123456789abcdef").is_ok());
    }

    #[test]
    fn key_files_lose_trailing_whitespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, " 0123456789abcdef\n\n").unwrap();
        let from_file = ClusterKey::from_file(&path).unwrap();
        assert_eq!(from_file.as_bytes(), b" 0123456789abcdef");
        std::fs::write(&path, "tiny\n").unwrap();
        let err = ClusterKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("key") && err.contains("at least 16"), "{err}");
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let key = ClusterKey::from_text("secret-secret-secret").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
