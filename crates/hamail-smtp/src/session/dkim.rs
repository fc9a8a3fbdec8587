//! DKIM signing, the last content stage: mail from an authenticated client
//! or from mynetworks is signed with every key of its From domain, after
//! the checks and milters (the signature covers the message as queued).
//! Mail relayed for others is not signed. A signing failure never loses
//! mail: a warning, and the message is queued unsigned.

use hamail_types::QueueId;
use tokio::time::Instant;

use super::Session;
use super::content::Pending;
use crate::Backend;

impl<B: Backend> Session<B> {
    /// Ours to sign: the client authenticated (submission) or is in
    /// mynetworks (OpenDKIM's InternalHosts, Postfix's permit_mynetworks).
    fn signs_for_client(&self) -> bool {
        self.authenticated.is_some() || self.trusted
    }

    pub(super) fn dkim_sign(&self, queue_id: &QueueId, pending: &mut Pending) {
        if !self.signs_for_client() {
            return;
        }
        let signers = match self.backend.dkim_signers() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(
                    target: "postfix/cleanup",
                    "{queue_id}: warning: DKIM keys unavailable, queued unsigned: {e}"
                );
                return;
            }
        };
        let started = Instant::now();
        match signers.sign(&pending.message) {
            Ok(None) => {}
            Ok(Some(signed)) => {
                let mut message = Vec::with_capacity(signed.headers.len() + pending.message.len());
                message.extend_from_slice(signed.headers.as_bytes());
                message.extend_from_slice(&pending.message);
                pending.message = message;
                for s in &signed.selectors {
                    tracing::info!(
                        target: "postfix/cleanup",
                        "{queue_id}: DKIM-Signature field added (s={s}, d={})",
                        signed.domain
                    );
                }
                tracing::debug!(
                    %queue_id,
                    sign_us = started.elapsed().as_micros() as u64,
                    "dkim signed"
                );
            }
            Err(e) => tracing::warn!(
                target: "postfix/cleanup",
                "{queue_id}: warning: DKIM signing failed, queued unsigned: {e}"
            ),
        }
    }
}
