//! `hamail cluster rotate-ca`: a new cluster CA without downtime, in three
//! replicated phases, each begun only when every member took the previous
//! one, so that any two members can always verify each other:
//!
//! 1. trust — `CaRotate`: every node trusts the old and the new CA; the old
//!    one still signs.
//! 2. switch — `CaSwitch`: every node re-signs its own key (the pinned key
//!    does not change) with the new CA and presents that certificate.
//! 3. done — `CaRetire`: the old CA is trusted no more.
//!
//! The coordinator is whichever node the command runs on. If a member does
//! not take a phase within the patience (it is down, say), the rotation
//! stops there, both CAs still trusted, and running the command again
//! continues it.

use std::time::Duration;

use hamail_types::{CaPhase, Command, NodeId, NodeInfo, Outcome};

use crate::cluster::{Cluster, ClusterError};
use crate::pki::generate_ca;
use crate::rpc::{RpcClient, RpcRequest, RpcResponse};
use crate::trust::CaView;
use crate::view::members;

/// How often the coordinator asks the members where they are.
const POLL: Duration = Duration::from_millis(200);

impl Cluster {
    /// Runs (or continues) a CA rotation; returns what it did, one line
    /// per step.
    pub async fn rotate_ca(&self, patience: Duration) -> Result<Vec<String>, ClusterError> {
        let _l = self.lifecycle_lock().await;
        let (node, tls) = self.require_node().await?;
        let mut done = Vec::new();
        let state = self.store().ca_state()?;
        let (old, new) = match &state {
            Some(s) if s.phase != CaPhase::Done => {
                let other = s
                    .trusted
                    .iter()
                    .find(|c| c.fingerprint != s.signing)
                    .map(|c| c.fingerprint.clone())
                    .ok_or_else(|| {
                        ClusterError::Refused("the CA rotation state lists one CA only".into())
                    })?;
                done.push(format!("continuing the CA rotation in phase {}", s.phase));
                match s.phase {
                    CaPhase::Trust => (s.signing.clone(), other),
                    _ => (other, s.signing.clone()),
                }
            }
            _ => {
                let old = tls.pki().ca_material()?;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let new = generate_ca(&format!("hamail CA {} {stamp}", self.settings().node.name))?;
                let (o, n) = (old.fingerprint.clone(), new.fingerprint.clone());
                applied(node.propose(vec![Command::CaRotate { old, new }]).await?)?;
                done.push(format!("trust: CA {n} is trusted beside CA {o}"));
                (o, n)
            }
        };
        let phase = self
            .store()
            .ca_state()?
            .map(|s| s.phase)
            .unwrap_or(CaPhase::Trust);
        if phase == CaPhase::Trust {
            self.wait_members("trust the new CA", patience, |v| v.trusted.contains(&new))
                .await?;
            applied(
                node.propose(vec![Command::CaSwitch {
                    fingerprint: new.clone(),
                }])
                .await?,
            )?;
            done.push(format!(
                "switch: every member trusts CA {new}; it signs from now on"
            ));
        }
        self.wait_members("present a certificate from the new CA", patience, |v| {
            v.presenting == new
        })
        .await?;
        applied(
            node.propose(vec![Command::CaRetire {
                fingerprint: old.clone(),
            }])
            .await?,
        )?;
        done.push(format!(
            "done: every member presents a certificate from CA {new}; CA {old} is retired"
        ));
        match self
            .wait_members("drop the old CA", patience, |v| !v.trusted.contains(&old))
            .await
        {
            Ok(()) => done.push("every member trusts the new CA only".into()),
            Err(e) => done.push(format!("retired, but not yet everywhere: {e}")),
        }
        Ok(done)
    }

    /// Waits until every member's CA view satisfies `ok`.
    async fn wait_members(
        &self,
        what: &str,
        patience: Duration,
        ok: impl Fn(&CaView) -> bool,
    ) -> Result<(), ClusterError> {
        let (node, tls) = self.require_node().await?;
        let deadline = tokio::time::Instant::now() + patience;
        let mut clients: Vec<(NodeId, String, RpcClient)> = Vec::new();
        loop {
            let mut behind = Vec::new();
            for (
                id,
                NodeInfo {
                    name,
                    rpc_addr: addr,
                    ..
                },
            ) in members(&node)
            {
                let view = if id == node.node_id() {
                    Ok(tls.view())
                } else {
                    let at = match clients.iter().position(|(i, _, _)| *i == id) {
                        Some(at) => at,
                        None => {
                            let c = RpcClient::to_member(addr, tls.clone(), id);
                            clients.push((id, name.clone(), c));
                            clients.len() - 1
                        }
                    };
                    match clients[at]
                        .2
                        .call(&RpcRequest::CaStatus, Duration::from_secs(5))
                        .await
                    {
                        Ok(RpcResponse::CaStatus(v)) => Ok(v),
                        Ok(other) => Err(format!("unexpected reply {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                };
                match view {
                    Ok(v) if ok(&v) => {}
                    Ok(_) => behind.push(format!("node {id} ({name}) has not yet")),
                    Err(e) => behind.push(format!("node {id} ({name}) did not answer: {e}")),
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let phase = self.store().ca_state()?.map(|s| s.phase);
                let then = match phase {
                    Some(CaPhase::Done) => "the old CA is retired in the replicated state; \
                         a member that has not dropped it yet does so when it applies the \
                         retirement (at the latest when it restarts)"
                        .to_string(),
                    Some(p) => format!(
                        "the rotation stays in phase {p} (both CAs are trusted); run \
                         `hamail cluster rotate-ca` again to continue"
                    ),
                    None => "no CA rotation is recorded".to_string(),
                };
                return Err(ClusterError::Refused(format!(
                    "waited {patience:?} for every member to {what}: {}; {then}",
                    behind.join("; ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn applied(outcomes: Vec<Outcome>) -> Result<(), ClusterError> {
    match outcomes.into_iter().next() {
        Some(Outcome::Rejected { reason }) => Err(ClusterError::Refused(reason)),
        Some(_) => Ok(()),
        None => Err(ClusterError::Refused(
            "no outcome for the CA command".into(),
        )),
    }
}
