//! Wires the smtpd to the cluster: recipient checks read the local applied
//! tables; a message is proposed as one `QueueInsert` and acknowledged when
//! the proposal returns, i.e. when the entry is committed on a majority and
//! applied by the leader.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hamail_config::Config;
use hamail_raft::{Cluster, ProposeError, RaftNode};
use hamail_smtp::{Backend, EnqueueError, Settings, Smtpd, Tables};
use hamail_store::Store;
use hamail_types::{Command, DomainKind, DomainName, MailAddress, NewMessage, NodeId, Outcome};
use tokio_util::sync::CancellationToken;

pub struct ClusterBackend {
    store: Store,
    /// Set once this node is in a cluster (at start, or after init/join).
    node: OnceLock<Arc<RaftNode>>,
}

impl ClusterBackend {
    fn node(&self) -> Option<&Arc<RaftNode>> {
        self.node.get()
    }
}

impl Tables for ClusterBackend {
    fn domain_kind(&self, domain: &DomainName) -> Result<Option<DomainKind>, String> {
        self.store
            .domain(domain)
            .map(|d| d.map(|d| d.kind))
            .map_err(|e| e.to_string())
    }

    fn recipient_known(&self, address: &MailAddress) -> Result<bool, String> {
        self.store
            .recipient(address)
            .map(|r| r.is_some())
            .map_err(|e| e.to_string())
    }

    fn alias_known(&self, address: &MailAddress) -> Result<bool, String> {
        self.store
            .alias(address)
            .map(|r| r.is_some())
            .map_err(|e| e.to_string())
    }
}

impl Backend for ClusterBackend {
    fn node_id(&self) -> NodeId {
        self.node().map(|n| n.node_id()).unwrap_or(0)
    }

    fn has_quorum(&self) -> bool {
        self.node().is_some_and(|n| n.has_quorum())
    }

    async fn enqueue(&self, message: NewMessage) -> Result<(), EnqueueError> {
        let Some(node) = self.node().cloned() else {
            return Err(EnqueueError::NoQuorum(
                "this node is not in a cluster yet".into(),
            ));
        };
        let cmd = Command::QueueInsert {
            message: Box::new(message),
        };
        cmd.validate()
            .map_err(|e| EnqueueError::Failed(e.to_string()))?;
        match node.propose(vec![cmd]).await {
            Ok(outcomes) => match outcomes.into_iter().next() {
                Some(Outcome::Applied { .. }) => Ok(()),
                Some(Outcome::Rejected { reason }) => Err(EnqueueError::Failed(reason)),
                other => Err(EnqueueError::Failed(format!(
                    "unexpected outcome {other:?}"
                ))),
            },
            Err(
                e @ (ProposeError::NoQuorum(_)
                | ProposeError::NotLeader { .. }
                | ProposeError::Forward(_)),
            ) => Err(EnqueueError::NoQuorum(e.to_string())),
            Err(e) => Err(EnqueueError::Failed(e.to_string())),
        }
    }
}

/// The smtpd settings from `[smtp]`, with STARTTLS set up (a self-signed
/// certificate made on first start unless files are configured).
fn settings(cfg: &Config, data_dir: &Path) -> anyhow::Result<Settings> {
    let s = &cfg.smtp;
    let hostname = if s.hostname.is_empty() {
        cfg.node.name.clone()
    } else {
        s.hostname.clone()
    };
    let mut out = Settings::with_defaults(&hostname);
    out.message_size_limit = s.message_size_limit;
    out.smtpd_recipient_limit = s.smtpd_recipient_limit;
    out.line_length_limit = s.line_length_limit;
    out.smtpd_timeout = Duration::from_secs(s.smtpd_timeout_secs);
    out.smtpd_data_time_limit = Duration::from_secs(s.smtpd_data_time_limit_secs);
    out.smtpd_client_connection_count_limit = s.smtpd_client_connection_count_limit;
    out.smtpd_max_connections = s.smtpd_max_connections;
    out.smtpd_hard_error_limit = s.smtpd_hard_error_limit;
    out.mynetworks = s.networks();
    if s.tls {
        let (cert, key) = if s.smtpd_tls_cert_file.is_empty() {
            let dir = data_dir.join("smtp-tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            hamail_smtp::ensure_self_signed(&cert, &key, &hostname)?;
            (cert, key)
        } else {
            (
                s.smtpd_tls_cert_file.clone().into(),
                s.smtpd_tls_key_file.clone().into(),
            )
        };
        out.tls = Some(
            hamail_smtp::server_config(&cert, &key)
                .context("smtp.smtpd_tls_cert_file / smtpd_tls_key_file")?,
        );
    }
    Ok(out)
}

/// Binds the SMTP listeners; done before the store is opened, so a busy
/// port changes nothing.
pub async fn bind(cfg: &Config) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut out = Vec::new();
    for addr in &cfg.smtp.listen {
        out.push(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (smtp.listen)"))?,
        );
    }
    Ok(out)
}

/// The smtpds on bound listeners, sharing one backend over the store.
pub fn smtpds(
    cfg: &Config,
    data_dir: &Path,
    store: Store,
    listeners: Vec<tokio::net::TcpListener>,
) -> anyhow::Result<(Arc<ClusterBackend>, Vec<Smtpd<ClusterBackend>>)> {
    let backend = Arc::new(ClusterBackend {
        store,
        node: OnceLock::new(),
    });
    let settings = Arc::new(settings(cfg, data_dir)?);
    let servers = listeners
        .into_iter()
        .map(|l| Smtpd::from_listener(l, backend.clone(), settings.clone()))
        .collect();
    Ok((backend, servers))
}

/// Runs the smtpds; the backend gets the raft node as soon as there is one.
pub fn start(
    cluster: Arc<Cluster>,
    backend: Arc<ClusterBackend>,
    servers: Vec<Smtpd<ClusterBackend>>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let addrs: Vec<SocketAddr> = servers.iter().filter_map(|s| s.local_addr()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for s in servers {
            tasks.spawn(s.run(cancel.clone()));
        }
        tracing::info!(listen = ?addrs, "smtpd serving");
        let wait_node = async {
            loop {
                if let Some(n) = cluster.node().await {
                    let _ = backend.node.set(n);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = wait_node => {}
            _ = cancel.cancelled() => {}
        }
        while tasks.join_next().await.is_some() {}
    })
}
