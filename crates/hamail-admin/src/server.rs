//! The node's side of the admin socket. Writes become commands proposed
//! through raft and are answered once committed and applied; reads come from
//! this node's applied state. A malformed line gets an error reply naming the
//! cause, and the connection stays usable.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::StreamExt;
use hamail_raft::{Cluster, ClusterError, RaftNode};
use hamail_types::{Command, Outcome, QueueId, QueueSelector};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::protocol::*;
use crate::{AdminError, AdminRequest, AdminResponse};

pub const SOCKET_NAME: &str = "admin.sock";
/// Largest request line (a recipient import of a million addresses fits).
const MAX_LINE: usize = 256 << 20;

pub struct AdminContext {
    pub cluster: Arc<Cluster>,
    pub name: String,
    pub site: String,
    pub data_dir: PathBuf,
}

/// Binds the admin socket (mode 0600) and serves it until `cancel`.
pub fn serve(
    path: PathBuf,
    ctx: Arc<AdminContext>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listen_err = |e: std::io::Error| AdminError::Listen {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    // The caller holds the data directory lock, so a socket file left here
    // is from a process that is gone.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = bind_private(&path).map_err(listen_err)?;
    Ok(tokio::spawn(accept_loop(listener, ctx, cancel)))
}

/// Binds the socket so that it is never reachable with a looser mode than
/// 0600: it is bound inside a fresh 0700 directory next to `path`, made 0600
/// there, and renamed into place (a process-wide umask would race the
/// other threads creating files).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(".admin-bind.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let tmp = staging.join("admin.sock");
    let bound = UnixListener::bind(&tmp).and_then(|l| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

async fn accept_loop(listener: UnixListener, ctx: Arc<AdminContext>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, ctx.clone(), cancel.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn connection(stream: UnixStream, ctx: Arc<AdminContext>, cancel: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return,
            l = lines.next() => l,
        };
        let resp = match line {
            None => return,
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                let r = AdminResponse::error(format!(
                    "malformed request: longer than {MAX_LINE} bytes"
                ));
                let _ = send(&mut write, &r).await;
                return;
            }
            Some(Err(LinesCodecError::Io(e))) => {
                tracing::debug!(error = %e, "admin connection read failed");
                return;
            }
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => match serde_json::from_str::<AdminRequest>(&line) {
                Ok(req) => handle(&ctx, req).await,
                Err(e) => AdminResponse::error(format!("malformed request: {e}")),
            },
        };
        if send(&mut write, &resp).await.is_err() {
            return;
        }
    }
}

/// How long one reply may take to write: a client that stops reading does
/// not hold its connection forever (shutdown aborts it in any case).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &AdminResponse) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "admin client does not read")
        })?
}

/// Proposes commands and turns their outcomes into a reply: an error if any
/// was rejected (a rejected command changed nothing).
pub(crate) async fn node(ctx: &AdminContext) -> Result<Arc<RaftNode>, AdminResponse> {
    ctx.cluster
        .node()
        .await
        .ok_or_else(|| AdminResponse::error(ClusterError::NotInCluster.to_string()))
}

fn cluster_reply<T: serde::Serialize>(r: Result<T, ClusterError>) -> AdminResponse {
    match r {
        Ok(v) => AdminResponse::ok(v),
        Err(e) => AdminResponse::error(e.to_string()),
    }
}

pub(crate) async fn write(ctx: &AdminContext, commands: Vec<Command>) -> AdminResponse {
    for c in &commands {
        if let Err(e) = c.validate() {
            return AdminResponse::error(e.to_string());
        }
    }
    let node = match node(ctx).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    match node.propose(commands).await {
        Ok(outcomes) => {
            let mut applied = Vec::new();
            for o in outcomes {
                match o {
                    Outcome::Applied { detail } => applied.push(detail),
                    Outcome::ResultRecorded(done) => applied.push(done.to_string()),
                    Outcome::Rejected { reason } => return AdminResponse::error(reason),
                    other => return AdminResponse::error(format!("unexpected outcome {other:?}")),
                }
            }
            AdminResponse::ok(WriteResult { applied })
        }
        Err(e) => AdminResponse::error(e.to_string()),
    }
}

/// Queue ids or `--all`, exactly one of them.
fn selector(ids: Vec<QueueId>, all: bool) -> Result<QueueSelector, AdminResponse> {
    match (ids.is_empty(), all) {
        (true, true) => Ok(QueueSelector::All),
        (false, false) => Ok(QueueSelector::Ids(ids)),
        (true, false) => Err(AdminResponse::error("name queue ids, or --all")),
        (false, true) => Err(AdminResponse::error("name queue ids or --all, not both")),
    }
}

trait OrMissing {
    /// A `null` result of a read becomes an error naming what is missing.
    fn or_missing(self, what: &str) -> AdminResponse;
}

impl OrMissing for AdminResponse {
    fn or_missing(self, what: &str) -> AdminResponse {
        if self.ok && self.result.is_null() {
            AdminResponse::error(what)
        } else {
            self
        }
    }
}

/// Runs a read of the local applied state off the async threads.
pub(crate) async fn read<T: serde::Serialize + Send + 'static>(
    ctx: &AdminContext,
    f: impl FnOnce(&hamail_store::Store) -> Result<T, hamail_store::StoreError> + Send + 'static,
) -> AdminResponse {
    let store = match node(ctx).await {
        Ok(n) => n.store().clone(),
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => AdminResponse::ok(v),
        Ok(Err(e)) => AdminResponse::error(e.to_string()),
        Err(e) => AdminResponse::error(format!("read failed: {e}")),
    }
}

async fn handle(ctx: &AdminContext, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::Status => {
            let raft = ctx.cluster.node().await.map(|n| n.status());
            let (name, site, data_dir) = (
                ctx.name.clone(),
                ctx.site.clone(),
                ctx.data_dir.display().to_string(),
            );
            let store = ctx.cluster.store().clone();
            let r = tokio::task::spawn_blocking(
                move || -> Result<StatusInfo, hamail_store::StoreError> {
                    let tables: BTreeMap<String, u64> = store
                        .table_counts()?
                        .into_iter()
                        .map(|(t, n)| (t.cf_name().to_string(), n))
                        .collect();
                    Ok(StatusInfo {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        name,
                        site,
                        data_dir,
                        raft,
                        tables,
                        state_digest: store.state_digest()?,
                    })
                },
            )
            .await;
            match r {
                Ok(Ok(v)) => AdminResponse::ok(v),
                Ok(Err(e)) => AdminResponse::error(e.to_string()),
                Err(e) => AdminResponse::error(format!("status failed: {e}")),
            }
        }
        AdminRequest::ZoneAdd { zone, zone_file } => {
            let records = match zone_file {
                Some(text) => match hamail_dns::parse_zone_file(&zone, &text) {
                    Ok(r) => r,
                    Err(e) => {
                        return AdminResponse::error(format!("zone file: {e}; nothing changed"));
                    }
                },
                None => {
                    let Some(node) = ctx.cluster.node().await else {
                        return AdminResponse::error(ClusterError::NotInCluster.to_string());
                    };
                    let servers: Vec<(String, Option<std::net::IpAddr>)> = node
                        .status()
                        .nodes
                        .values()
                        .map(|n| {
                            let host = if n.dns_name.is_empty() {
                                format!("{}.{zone}", n.name)
                            } else {
                                n.dns_name.clone()
                            };
                            let ip = n
                                .dns_addr
                                .parse::<std::net::SocketAddr>()
                                .ok()
                                .map(|a| a.ip());
                            (host, ip)
                        })
                        .collect();
                    hamail_dns::default_zone(&zone, &servers)
                }
            };
            write(ctx, vec![Command::ZoneCreate { zone, records }]).await
        }
        AdminRequest::QueueList => read(ctx, |s| s.queue_entries()).await,
        AdminRequest::QueueShow { id } => read(ctx, move |s| {
            let Some(entry) = s.queue_entry(&id)? else {
                return Ok(None);
            };
            let body = s.queue_body(&id)?.unwrap_or_default();
            Ok(Some(QueuedMessage {
                entry,
                message: String::from_utf8_lossy(&body).into_owned(),
            }))
        })
        .await
        .or_missing("no such message in the queue"),
        AdminRequest::QueueDelete { ids, all } => match selector(ids, all) {
            Ok(which) => write(ctx, vec![Command::QueueDelete { which }]).await,
            Err(r) => r,
        },
        AdminRequest::QueueHold { ids, all } => match selector(ids, all) {
            Ok(which) => write(ctx, vec![Command::QueueHold { which, hold: true }]).await,
            Err(r) => r,
        },
        AdminRequest::QueueRelease { ids, all } => match selector(ids, all) {
            Ok(which) => write(ctx, vec![Command::QueueHold { which, hold: false }]).await,
            Err(r) => r,
        },
        AdminRequest::QueueFlush { ids } => {
            let all = ids.is_empty();
            match selector(ids, all) {
                Ok(which) => write(ctx, vec![Command::QueueFlush { which }]).await,
                Err(r) => r,
            }
        }
        AdminRequest::ZoneDel { zone } => write(ctx, vec![Command::ZoneDelete { zone }]).await,
        AdminRequest::ZoneImport { zone, zone_file } => {
            match hamail_dns::parse_zone_file(&zone, &zone_file) {
                Ok(records) => write(ctx, vec![Command::ZoneReplace { zone, records }]).await,
                Err(e) => AdminResponse::error(format!("zone file: {e}; nothing changed")),
            }
        }
        AdminRequest::ZoneList => {
            read(ctx, |s| {
                Ok(s.zones()?
                    .into_iter()
                    .map(|(z, st)| ZoneRow {
                        zone: z.to_string(),
                        serial: st.serial,
                        records: st.records.len(),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        AdminRequest::ZoneShow { zone } => read(ctx, move |s| {
            Ok(s.zone(&zone)?.map(|st| ZoneText {
                zone: zone.to_string(),
                serial: st.serial,
                text: hamail_dns::zone_file_text(&zone, &st.records),
            }))
        })
        .await
        .or_missing("no such zone"),
        AdminRequest::ZoneHistory { zone } => {
            read(ctx, move |s| Ok(s.zone(&zone)?.map(|st| st.history)))
                .await
                .or_missing("no such zone")
        }
        AdminRequest::RecordAdd { zone, record } => {
            match hamail_dns::parse_record_line(&zone, &record) {
                Ok(record) => write(ctx, vec![Command::RecordAdd { zone, record }]).await,
                Err(e) => AdminResponse::error(e.to_string()),
            }
        }
        AdminRequest::RecordSet { zone, record } => {
            match hamail_dns::parse_record_line(&zone, &record) {
                Ok(record) => write(ctx, vec![Command::RecordSet { zone, record }]).await,
                Err(e) => AdminResponse::error(e.to_string()),
            }
        }
        AdminRequest::RecordDel { zone, selector } => {
            match hamail_dns::parse_record_selector(&zone, &selector) {
                Ok((name, rtype, rdata)) => {
                    write(
                        ctx,
                        vec![Command::RecordDelete {
                            zone,
                            name,
                            rtype,
                            rdata,
                        }],
                    )
                    .await
                }
                Err(e) => AdminResponse::error(e.to_string()),
            }
        }
        AdminRequest::ClusterInit => cluster_reply(
            ctx.cluster
                .init()
                .await
                .map(|m| WriteResult { applied: vec![m] }),
        ),
        AdminRequest::ClusterToken { ttl_secs } => {
            if ttl_secs == 0 || ttl_secs > 30 * 86400 {
                return AdminResponse::error("ttl must be from 1 s to 30 days");
            }
            cluster_reply(
                ctx.cluster
                    .token(std::time::Duration::from_secs(ttl_secs))
                    .await
                    .map(|token| TokenResult {
                        token,
                        expires_in_secs: ttl_secs,
                    }),
            )
        }
        AdminRequest::ClusterJoin { address, token } => {
            tracing::info!(%address, "joining a cluster");
            cluster_reply(
                ctx.cluster
                    .join(&address, &token)
                    .await
                    .map(|m| WriteResult { applied: vec![m] }),
            )
        }
        AdminRequest::ClusterStatus => cluster_reply(ctx.cluster.status().await),
        AdminRequest::ClusterLeave => cluster_reply(
            ctx.cluster
                .leave()
                .await
                .map(|m| WriteResult { applied: vec![m] }),
        ),
        AdminRequest::ClusterRotateCa { wait_secs } => {
            if wait_secs == 0 || wait_secs > 86400 {
                return AdminResponse::error("wait must be from 1 s to 1 day");
            }
            tracing::info!("rotating the cluster CA");
            cluster_reply(
                ctx.cluster
                    .rotate_ca(std::time::Duration::from_secs(wait_secs))
                    .await
                    .map(|applied| WriteResult { applied }),
            )
        }
        AdminRequest::ClusterRemove { node } => cluster_reply(
            ctx.cluster
                .remove(&node)
                .await
                .map(|m| WriteResult { applied: vec![m] }),
        ),
        AdminRequest::DomainAdd { domain, kind } => {
            write(ctx, vec![Command::DomainAdd { domain, kind }]).await
        }
        AdminRequest::DomainDel { domain } => write(ctx, vec![Command::DomainDel { domain }]).await,
        AdminRequest::DomainList => {
            read(ctx, |s| {
                let mut rows = Vec::new();
                for (d, r) in s.domains()? {
                    rows.push(DomainRow {
                        message_size_limit: s.domain_settings(&d)?.message_size_limit,
                        domain: d.to_string(),
                        kind: r.kind,
                        added_ms: r.added_ms,
                    });
                }
                Ok(rows)
            })
            .await
        }
        req @ (AdminRequest::QuotaSet { .. }
        | AdminRequest::QuotaDel { .. }
        | AdminRequest::QuotaList { .. }
        | AdminRequest::DomainSet { .. }) => crate::limits::handle(ctx, req).await,
        req @ (AdminRequest::ChecksImport { .. }
        | AdminRequest::ChecksClear { .. }
        | AdminRequest::ChecksList { .. }
        | AdminRequest::ChecksTest { .. }) => crate::checks::handle(ctx, req).await,
        req @ (AdminRequest::DkimAdd { .. }
        | AdminRequest::DkimList
        | AdminRequest::DkimDel { .. }) => crate::dkim::handle(ctx, req).await,
        AdminRequest::RecipientAdd { address, value } => {
            write(ctx, vec![Command::RecipientAdd { address, value }]).await
        }
        AdminRequest::RecipientDel { address } => {
            write(ctx, vec![Command::RecipientDel { address }]).await
        }
        AdminRequest::RecipientList { domain } => {
            read(ctx, move |s| {
                Ok(s.recipients(domain.as_ref())?
                    .into_iter()
                    .map(|(a, r)| RecipientRow {
                        address: a.to_string(),
                        value: r.value,
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        AdminRequest::RecipientImport { entries } => {
            tracing::info!(recipients = entries.len(), "recipient import received");
            write(ctx, vec![Command::RecipientImport { entries }]).await
        }
        AdminRequest::AliasAdd { address, targets } => {
            write(ctx, vec![Command::AliasAdd { address, targets }]).await
        }
        AdminRequest::AliasDel { address, targets } => {
            write(ctx, vec![Command::AliasDel { address, targets }]).await
        }
        AdminRequest::AliasList => {
            read(ctx, |s| {
                Ok(s.aliases(None)?
                    .into_iter()
                    .map(|(a, r)| AliasRow {
                        address: a.to_string(),
                        targets: r.targets.iter().map(|t| t.to_string()).collect(),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        AdminRequest::TransportSet {
            domain,
            spec,
            fallback,
        } => {
            write(
                ctx,
                vec![Command::TransportSet {
                    domain,
                    spec,
                    fallback,
                }],
            )
            .await
        }
        AdminRequest::TransportDel { domain } => {
            write(ctx, vec![Command::TransportDel { domain }]).await
        }
        req @ (AdminRequest::UserAdd { .. }
        | AdminRequest::UserPasswd { .. }
        | AdminRequest::UserDel { .. }
        | AdminRequest::UserList { .. }
        | AdminRequest::UserImport { .. }
        | AdminRequest::SenderAllow { .. }
        | AdminRequest::SenderDeny { .. }
        | AdminRequest::SenderList) => crate::users::handle(ctx, req).await,
        AdminRequest::TransportList => {
            read(ctx, |s| {
                Ok(s.transports()?
                    .into_iter()
                    .map(|(d, r)| TransportRow {
                        domain: d.to_string(),
                        spec: r.spec.to_string(),
                        fallback: r.fallback.iter().map(|f| f.to_string()).collect(),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
    }
}
