//! `hamail serve`: take the data directory, bind the listeners, open the
//! store, start raft (bootstrapping a one-node cluster on first start when
//! configured), serve the admin socket and metrics, and stop cleanly on
//! SIGTERM or SIGINT.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hamail_admin::{AdminContext, SOCKET_NAME};
use hamail_config::Config;
use hamail_dns::{DnsOptions, DnsServer};
use hamail_raft::{Cluster, ClusterSettings, NodeInfo};
use hamail_store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.node.log))
        .with_context(|| format!("invalid log filter {:?} (node.log)", cfg.node.log))?;
    // Colours only for a person at a terminal: a log file (what fail2ban
    // and log reports read) gets plain lines.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Every SMTP and DNS-over-TCP session holds a descriptor: take the hard
    // limit rather than the shell's soft 1024, as Postfix's master does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hamail")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cfg))
}

/// The data directory lock: held for the life of the process, so a second
/// `hamail serve` on the same directory is refused.
struct DataDirLock {
    _file: File,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    if dir.exists() && !dir.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    // The directory holds the cluster's keys and the admin socket: 0700
    // even when an operator (or a package) created it with other bits.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make data directory {} private", dir.display()))?;
    let path = dir.join("hamail.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "data directory {} is in use by another hamail process (pid {})",
                dir.display(),
                pid.trim()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DataDirLock { _file: file })
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let data_dir: PathBuf = cfg.node.data_dir.clone();
    let _lock = lock_data_dir(&data_dir)?;

    // Bind before touching the store: a busy port changes nothing.
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on {} (metrics.listen)", cfg.metrics.listen))?;

    let rpc_listener = tokio::net::TcpListener::bind(cfg.rpc.listen)
        .await
        .with_context(|| format!("cannot listen on {} (rpc.listen)", cfg.rpc.listen))?;

    let dns_sockets = DnsServer::bind(&cfg.dns.listen, cfg.dns.udp_workers).await?;
    // Cluster connections leave from the RPC address: peers see who dials.
    hamail_raft::set_source_ip(cfg.rpc.listen.ip());

    let smtp_listeners = crate::queue_backend::bind(&cfg).await?;
    let delivery = crate::queue_backend::delivery_settings(&cfg)?;

    let store = Store::open(&data_dir.join("db"))?;
    let (smtp_backend, smtpds) =
        crate::queue_backend::smtpds(&cfg, &data_dir, store.clone(), smtp_listeners)?;
    let settings = ClusterSettings {
        info: NodeInfo {
            name: cfg.node.name.clone(),
            site: cfg.node.site.clone(),
            rpc_addr: if cfg.rpc.advertise.is_empty() {
                rpc_listener.local_addr()?.to_string()
            } else {
                cfg.rpc.advertise.clone()
            },
            dns_addr: cfg
                .dns
                .listen
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            smtp_addr: cfg
                .smtp
                .listen
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            dns_name: cfg.dns.hostname.clone(),
        },
        node: cfg.cluster.clone(),
    };
    let cancel = CancellationToken::new();
    let cluster = Cluster::open(
        data_dir.clone(),
        settings,
        store,
        rpc_listener,
        cfg.cluster.bootstrap,
        cancel.clone(),
    )
    .await?;
    let id = match cluster.node().await {
        Some(node) => {
            match node.wait_for_leader(Duration::from_secs(10)).await {
                Some(leader) => tracing::info!(node_id = node.node_id(), leader, "raft is up"),
                None => tracing::warn!(
                    node_id = node.node_id(),
                    "no raft leader yet; writes wait for one"
                ),
            }
            Some(node.node_id())
        }
        None => None,
    };

    let ctx = Arc::new(AdminContext {
        cluster: cluster.clone(),
        name: cfg.node.name.clone(),
        site: cfg.node.site.clone(),
        data_dir: data_dir.clone(),
    });
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(follow_applied(cluster.clone(), applied_tx, cancel.clone()));
    let dns = DnsServer::start(
        dns_sockets,
        DnsOptions {
            listen: cfg.dns.listen.clone(),
            allow_axfr: cfg.dns.allow_axfr.clone(),
            notify: cfg.dns.notify.clone(),
            tcp_idle_timeout: Duration::from_secs(cfg.dns.tcp_idle_timeout_secs),
            max_udp_payload: cfg.dns.max_udp_payload,
            udp_workers: cfg.dns.udp_workers,
        },
        cluster.store().clone(),
        applied_rx.clone(),
        cancel.clone(),
    );
    let smtp = crate::queue_backend::start(
        cluster.clone(),
        smtp_backend.clone(),
        smtpds,
        cancel.clone(),
    );
    let qmgr = tokio::spawn(hamail_smtp::outbound::run_queue_manager(
        smtp_backend.clone(),
        Arc::new(delivery),
        applied_rx.clone(),
        cancel.clone(),
    ));
    let lease = tokio::spawn(crate::queue_backend::lease_keeper(
        smtp_backend,
        Duration::from_secs(cfg.delivery.lease_secs),
        Duration::from_secs(cfg.delivery.lease_check_interval_secs),
        cancel.clone(),
    ));
    let socket = data_dir.join(SOCKET_NAME);
    let admin = hamail_admin::serve(socket.clone(), ctx, cancel.clone())?;
    let metrics = tokio::spawn(crate::metrics::serve(
        metrics_listener,
        cluster.clone(),
        cancel.clone(),
    ));
    tracing::info!(
        node_id = ?id,
        rpc = %cfg.rpc.listen,
        name = %cfg.node.name,
        data_dir = %data_dir.display(),
        admin_socket = %socket.display(),
        metrics = %cfg.metrics.listen,
        "hamail serving"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = cancel.cancelled() => tracing::info!("left the cluster: shutting down"),
    }
    cancel.cancel();
    let _ = admin.await;
    let _ = metrics.await;
    let _ = dns.await;
    let _ = smtp.await;
    let _ = qmgr.await;
    let _ = lease.await;
    cluster.shutdown().await;
    cluster.store().stop_background_work();
    let _ = fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// Publishes the applied log index of this node (once it is in a cluster),
/// so that DNS rebuilds its zones when the log moves.
async fn follow_applied(
    cluster: Arc<Cluster>,
    tx: tokio::sync::watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let node = loop {
        if let Some(n) = cluster.node().await {
            break n;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let mut metrics = node.raft.metrics();
    // Nothing follows the applied state (DNS, the queue manager) until it is
    // a full member's: a rebuilt node's partial copy is never served.
    while !node.is_caught_up() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
    loop {
        let applied = metrics.borrow().last_applied.map(|l| l.index).unwrap_or(0);
        tx.send_if_modified(|v| {
            let changed = *v != applied;
            *v = applied;
            changed
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}
