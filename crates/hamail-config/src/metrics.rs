//! `[metrics]`: where the HTTP health and Prometheus endpoint listens.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`: HTTP `/health` and `/metrics` (Prometheus text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the metrics and health endpoint.
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
        }
    }
}
