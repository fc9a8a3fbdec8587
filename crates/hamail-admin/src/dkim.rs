//! The admin requests for DKIM keys. `dkim add` generates the keys here,
//! on the node that proposes (apply never draws randomness), after a dry
//! run of the command against this node's applied state, so a domain not
//! ours, a zone missing or a selector taken is refused before the seconds
//! an RSA key takes; the command then carries the keys and publishes their
//! records in one entry. `dkim list` never shows a private key.

use std::time::{SystemTime, UNIX_EPOCH};

use hamail_types::dkim::{check_selector, record_name};
use hamail_types::{Command, DkimAlgorithm, DkimKey, DomainName, Outcome};
use serde::{Deserialize, Serialize};

use crate::protocol::{AdminRequest, AdminResponse};
use crate::server::{AdminContext, node, read, write};

/// One key in `dkim list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DkimRow {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub created_ms: u64,
    /// The TXT record's owner name, `SELECTOR._domainkey.DOMAIN`.
    pub record: String,
    /// The zone that serves it.
    pub zone: String,
}

/// The keys `dkim add` makes: both algorithms under dated selectors, or
/// the one asked for.
fn wanted(
    selector: Option<String>,
    algorithm: Option<DkimAlgorithm>,
    unix_secs: u64,
) -> Result<Vec<(DkimAlgorithm, String)>, String> {
    if let Some(s) = &selector {
        check_selector(s).map_err(|e| e.to_string())?;
    }
    Ok(match (selector, algorithm) {
        (None, None) => DkimAlgorithm::ALL
            .iter()
            .map(|a| (*a, hamail_dkim::dated_selector(*a, unix_secs)))
            .collect(),
        (None, Some(a)) => vec![(a, hamail_dkim::dated_selector(a, unix_secs))],
        (Some(s), Some(a)) => vec![(a, s)],
        (Some(s), None) => {
            return Err(format!(
                "--selector {s} names one key: give its --algorithm too (rsa or ed25519)"
            ));
        }
    })
}

/// A stand-in for a generated key, for the dry run.
fn placeholder(algorithm: DkimAlgorithm, selector: &str) -> DkimKey {
    DkimKey {
        selector: selector.to_string(),
        algorithm,
        private_key: vec![0],
        public_key: "AA==".into(),
    }
}

async fn add(
    ctx: &AdminContext,
    domain: DomainName,
    selector: Option<String>,
    algorithm: Option<DkimAlgorithm>,
) -> AdminResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let keys = match wanted(selector, algorithm, now) {
        Ok(k) => k,
        Err(e) => return AdminResponse::error(e),
    };
    let store = match node(ctx).await {
        Ok(n) => n.store().clone(),
        Err(r) => return r,
    };
    // Dry run: the same checks apply makes, on this node's state, written
    // nowhere (an Applier that is never committed).
    let dry = Command::DkimAdd {
        domain: domain.clone(),
        keys: keys.iter().map(|(a, s)| placeholder(*a, s)).collect(),
    };
    if let Err(e) = dry.validate() {
        return AdminResponse::error(e.to_string());
    }
    let verdict = tokio::task::spawn_blocking(move || {
        hamail_store::Applier::new(&store).apply(&dry, &hamail_store::ApplyContext::default())
    })
    .await;
    match verdict {
        Ok(Ok(Outcome::Rejected { reason })) => return AdminResponse::error(reason),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return AdminResponse::error(e.to_string()),
        Err(e) => return AdminResponse::error(format!("dkim add check failed: {e}")),
    }
    let started = std::time::Instant::now();
    let generated = tokio::task::spawn_blocking(move || {
        keys.iter()
            .map(|(a, s)| hamail_dkim::generate(*a, s))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let keys = match generated {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => return AdminResponse::error(e.to_string()),
        Err(e) => return AdminResponse::error(format!("key generation failed: {e}")),
    };
    tracing::info!(
        %domain,
        keys = keys.len(),
        generate_ms = started.elapsed().as_secs_f64() * 1000.0,
        "dkim add: keys generated"
    );
    write(ctx, vec![Command::DkimAdd { domain, keys }]).await
}

pub(crate) async fn handle(ctx: &AdminContext, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::DkimAdd {
            domain,
            selector,
            algorithm,
        } => add(ctx, domain, selector, algorithm).await,
        AdminRequest::DkimDel {
            domain,
            selector,
            last,
        } => {
            write(
                ctx,
                vec![Command::DkimDel {
                    domain,
                    selector,
                    last,
                }],
            )
            .await
        }
        AdminRequest::DkimList => {
            read(ctx, |s| {
                Ok(s.dkim_keys()?
                    .into_iter()
                    .map(|e| DkimRow {
                        record: record_name(&e.selector, &e.domain),
                        domain: e.domain.to_string(),
                        selector: e.selector,
                        algorithm: e.record.algorithm,
                        created_ms: e.record.created_ms,
                        zone: e.record.zone.to_string(),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        other => AdminResponse::error(format!("not a dkim request: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_keys_an_add_makes() {
        // 2026-12-06
        let t = 1_796_526_000;
        let both = wanted(None, None, t).unwrap();
        assert_eq!(
            both,
            [
                (DkimAlgorithm::Rsa, "r20261206".to_string()),
                (DkimAlgorithm::Ed25519, "e20261206".to_string())
            ]
        );
        assert_eq!(
            wanted(None, Some(DkimAlgorithm::Ed25519), t).unwrap(),
            [(DkimAlgorithm::Ed25519, "e20261206".to_string())]
        );
        assert!(
            wanted(Some("Bad_Sel".into()), Some(DkimAlgorithm::Rsa), t)
                .unwrap_err()
                .contains("invalid DKIM selector")
        );
        assert!(
            wanted(Some("s1".into()), None, t)
                .unwrap_err()
                .contains("--algorithm")
        );
    }
}
