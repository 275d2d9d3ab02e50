//! Node identity: a random 128-bit [`NodeId`], stable per machine because it is persisted in a
//! state directory (default `$HEARTH_HOME` or `~/.cache/hearth`, file `node-id`).
//!
//! Owns: generating, formatting (32 lowercase hex digits), parsing and persisting ids. Does not
//! own: duplicate detection (the coordinator's membership table and `cluster doctor` do that).
//!
//! Invariants: a persisted id file holds exactly one id (surrounding whitespace allowed); a file
//! that does not parse is an error naming the file, never silently replaced (replacing it would
//! change the machine's identity behind the user's back). Several processes on one machine are
//! distinct nodes only if they use distinct state directories or `--node-id`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ClusterError, Result};

/// The file inside the state directory that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// A node's identity: 128 random bits, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 16]);

impl NodeId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first 8 hex digits: enough to tell nodes apart in logs and tables.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ClusterError;

    fn from_str(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let invalid = |reason| ClusterError::InvalidNodeId {
            text: text.to_string(),
            reason,
        };
        if trimmed.len() != 32 {
            return Err(invalid("a node id is 32 hex digits (128 bits)"));
        }
        let bytes = crate::hex::decode(trimmed).ok_or_else(|| invalid("not hexadecimal"))?;
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| invalid("a node id is 32 hex digits (128 bits)"))?;
        Ok(Self(array))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// hearth's default state directory: `$HEARTH_HOME`, else `~/.cache/hearth`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEARTH_HOME") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/hearth")
}

/// Reads the node id persisted in `state_dir`, creating (and persisting) a random one when the
/// directory has none yet.
pub fn load_or_create(state_dir: &Path) -> Result<NodeId> {
    let path = state_dir.join(NODE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.parse().map_err(|err| {
            ClusterError::Config(format!(
                "{} does not hold a node id ({err}); fix or delete the file (deleting gives \
                 this machine a new identity)",
                path.display()
            ))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId::random();
            persist(state_dir, &path, id)?;
            Ok(id)
        }
        Err(err) => Err(ClusterError::io(format!("reading {}", path.display()), err)),
    }
}

/// Writes the id through a temporary file and a rename, so a crash never leaves half an id.
fn persist(state_dir: &Path, path: &Path, id: NodeId) -> Result<()> {
    fs::create_dir_all(state_dir)
        .map_err(|err| ClusterError::io(format!("creating {}", state_dir.display()), err))?;
    let temporary = state_dir.join(format!("{NODE_ID_FILE}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        writeln!(file, "{id}")?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|err| {
        let _ = fs::remove_file(&temporary);
        ClusterError::io(format!("writing {}", path.display()), err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_text_and_json() {
        let id = NodeId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    }

    #[test]
    fn node_id_parse_rejects_wrong_length_and_non_hex() {
        let short = "abc".parse::<NodeId>().unwrap_err().to_string();
        assert!(short.contains("32 hex digits"), "{short}");
        let not_hex = "zz".repeat(16).parse::<NodeId>().unwrap_err().to_string();
        assert!(not_hex.contains("not hexadecimal"), "{not_hex}");
        assert!(serde_json::from_str::<NodeId>("\"1234\"").is_err());
    }

    #[test]
    fn load_or_create_persists_one_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/state");
        let first = load_or_create(&state).unwrap();
        let second = load_or_create(&state).unwrap();
        assert_eq!(first, second);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn load_or_create_refuses_a_corrupt_id_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NODE_ID_FILE), "not an id\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not hold a node id"), "{err}");
        // The file is left alone for the user to inspect.
        let kept = fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap();
        assert_eq!(kept, "not an id\n");
    }
}
