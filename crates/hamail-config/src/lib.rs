//! hamail's configuration: TOML, every key with a default and a doc comment,
//! unknown keys refused. `Config::default()` is the embedded single-node
//! default that `hamail serve` runs on without a file; the example file
//! `config/hamail.example.toml` states the same values (a test checks it).
//!
//! One file per section, each with its struct, defaults and validation:
//! `node`, `cluster` (raft), `rpc`, `dns`, `smtp` (smtpd), `delivery` (queue
//! manager and SMTP client), `metrics`. This file loads the text, holds the
//! whole [`Config`] and the error type.

mod cluster;
mod delivery;
mod dns;
mod metrics;
mod node;
mod rpc;
mod smtp;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use cluster::ClusterSection;
pub use delivery::{DeliverySection, Overquota};
pub use dns::DnsSection;
pub use metrics::MetricsSection;
pub use node::NodeSection;
pub use rpc::RpcSection;
pub use smtp::{MilterDefaultAction, SaslBackend, SmtpSection};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key {key}: {reason}")]
    Invalid {
        path: String,
        key: &'static str,
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    pub rpc: RpcSection,
    pub dns: DnsSection,
    pub smtp: SmtpSection,
    pub delivery: DeliverySection,
    pub metrics: MetricsSection,
}

/// A value that the types alone do not refuse, found by a section's
/// validation: the key (`section.name`) and why.
pub(crate) struct Invalid {
    key: &'static str,
    reason: String,
}

impl Invalid {
    pub(crate) fn new(key: &'static str, reason: String) -> Self {
        Invalid { key, reason }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    ///
    /// A config file that does not set `[cluster] bootstrap` waits for
    /// `hamail cluster init` or `hamail cluster join`: only the embedded
    /// default (no file at all) bootstraps on its own. A node that is meant
    /// to join must never make a cluster of its own by accident.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bootstrap_set = table
            .get("cluster")
            .and_then(|c| c.as_table())
            .is_some_and(|c| c.contains_key("bootstrap"));
        if !bootstrap_set {
            cfg.cluster.bootstrap = false;
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks values that the types alone do not, section by section; the
    /// first bad value is reported with its key.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.node
            .validate()
            .and_then(|()| self.cluster.validate())
            .and_then(|()| self.dns.validate())
            .and_then(|()| self.delivery.validate(&self.cluster))
            .and_then(|()| self.smtp.validate())
            .and_then(|()| self.rpc.validate())
            .map_err(|Invalid { key, reason }| ConfigError::Invalid {
                path: origin.to_string(),
                key,
                reason,
            })
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("[node]\nname = \"a\"\ncolour = \"red\"\n", "t.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t.toml") && msg.contains("colour") && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = Config::parse("[cluster]\nbootstrap = \"yes\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("bool"), "{msg}");
        let msg = Config::parse("[metrics]\nlisten = \"nowhere\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = Config::parse("[cluster]\nelection_timeout_min_ms = 100\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cluster.election_timeout_min_ms"), "{msg}");
        let msg = Config::parse("[node]\nname = \"a b\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("node.name"), "{msg}");
    }

    #[test]
    fn empty_file_is_the_default_but_waits_for_init_or_join() {
        let mut want = Config::default();
        want.cluster.bootstrap = false;
        assert_eq!(Config::parse("", "t").unwrap(), want);
        assert!(
            Config::parse("[cluster]\nbootstrap = true\n", "t")
                .unwrap()
                .cluster
                .bootstrap
        );
        assert!(
            Config::default().cluster.bootstrap,
            "the embedded default bootstraps"
        );
    }
}
