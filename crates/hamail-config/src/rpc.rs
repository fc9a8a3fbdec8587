//! `[rpc]`: where the cluster RPC (mTLS) listens and the address other
//! nodes dial.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// `[rpc]`: the cluster RPC listener (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Address the cluster RPC listens on.
    pub listen: SocketAddr,
    /// Address other nodes dial (behind NAT, the public one). Empty: `listen`.
    pub advertise: String,
}

impl Default for RpcSection {
    fn default() -> Self {
        RpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: String::new(),
        }
    }
}

impl RpcSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if !self.advertise.is_empty() && !self.advertise.contains(':') {
            return Err(Invalid::new(
                "rpc.advertise",
                format!("{:?} must be host:port", self.advertise),
            ));
        }
        Ok(())
    }
}
