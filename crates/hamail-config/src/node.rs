//! `[node]`: who this node is (name, site) and where it keeps its data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// `[node]`: who this node is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Node name, unique in the cluster; also the DNS host name used for it.
    pub name: String,
    /// Site label (a data centre or city); shown by `cluster status`.
    pub site: String,
    /// Data directory: RocksDB, snapshots, the admin socket. Relative paths
    /// are relative to the working directory of `hamail serve`.
    pub data_dir: PathBuf,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    pub log: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "hamail".into(),
            site: "default".into(),
            data_dir: PathBuf::from("./hamail-data"),
            log: "info,openraft=warn".into(),
        }
    }
}

impl NodeSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !label_ok(&self.name) {
            return Err(Invalid::new(
                "node.name",
                format!("{:?} must be 1-63 letters, digits, '-' or '.'", self.name),
            ));
        }
        if !label_ok(&self.site) {
            return Err(Invalid::new(
                "node.site",
                format!("{:?} must be 1-63 letters, digits, '-' or '.'", self.site),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("node.data_dir", "must not be empty".into()));
        }
        Ok(())
    }
}
