//! The smtpd's [`Backend`] and the queue manager's [`QueueStore`] over the
//! store and raft: recipient checks read the local applied tables; a message
//! is proposed as one `QueueInsert` and acknowledged when the proposal
//! returns, i.e. when the entry is committed on a majority and applied by
//! the leader. Also the lease timer that asks `outbound::lease` on the leader.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hamail_auth::dovecot::DovecotAuth;
use hamail_auth::limiter::FailureLimiter;
use hamail_auth::pool::VerifyPool;
use hamail_config::Config;
use hamail_config::SaslBackend;
use hamail_raft::{Cluster, ProposeError, RaftNode};
use hamail_smtp::outbound::client::ClientOptions;
use hamail_smtp::outbound::lease::{LeaderView, handovers};
use hamail_smtp::outbound::{DeliverySettings, QueueStore, route};
use hamail_smtp::{
    AuthService, Backend, BackendError, EnqueueError, PasswordSource, Role, Settings, Smtpd, Tables,
};
use hamail_store::Store;
use hamail_types::{
    Command, DomainKind, DomainName, MailAddress, NewMessage, NodeId, Outcome, PasswordHash,
    QueueEntry, QueueId, TransportSpec,
};
use tokio_util::sync::CancellationToken;

pub struct ClusterBackend {
    store: Store,
    /// This node's own SMTP listen addresses (never a delivery target).
    own_listen: Vec<SocketAddr>,
    /// The host's interface addresses and when they were read: a wildcard
    /// listener is "us" on each of them, and they change (DHCP, failover
    /// addresses), so they are read again after `INTERFACES_TTL`.
    interfaces: std::sync::Mutex<Option<(std::time::Instant, Vec<std::net::IpAddr>)>>,
    /// Set once this node is in a cluster (at start, or after init/join).
    node: OnceLock<Arc<RaftNode>>,
    cluster: OnceLock<Arc<Cluster>>,
    /// Header and body checks, compiled once per table version.
    checks: crate::checks_cache::ChecksCache,
    /// DKIM signers, loaded once per dkim table version.
    dkim: crate::dkim_cache::DkimCache,
}

impl ClusterBackend {
    fn node(&self) -> Option<&Arc<RaftNode>> {
        if let Some(n) = self.node.get() {
            return Some(n);
        }
        let n = self.cluster.get()?.node_now()?;
        Some(self.node.get_or_init(|| n))
    }
}

/// How long the interface addresses read for the loop check are used.
const INTERFACES_TTL: Duration = Duration::from_secs(2);

impl ClusterBackend {
    /// The addresses of this host's interfaces (at most `INTERFACES_TTL`
    /// old). If they cannot be read: the last ones read (or, if none ever
    /// were, the loopback addresses), with a warning.
    fn interface_ips(&self) -> Vec<std::net::IpAddr> {
        let mut cached = self.interfaces.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ips)) = cached.as_ref()
            && at.elapsed() < INTERFACES_TTL
        {
            return ips.clone();
        }
        match if_addrs::get_if_addrs() {
            Ok(list) => {
                let ips: Vec<std::net::IpAddr> = list.iter().map(|i| i.ip()).collect();
                *cached = Some((std::time::Instant::now(), ips.clone()));
                ips
            }
            Err(e) => {
                tracing::warn!(
                    "cannot list this host's interface addresses ({e}): the outbound loop check of a wildcard smtp.listen uses the last known ones"
                );
                let ips = match cached.take() {
                    Some((_, ips)) => ips,
                    None => vec![
                        std::net::Ipv4Addr::LOCALHOST.into(),
                        std::net::Ipv6Addr::LOCALHOST.into(),
                    ],
                };
                // Tried again (and warned about) after the TTL, not on
                // every delivery.
                *cached = Some((std::time::Instant::now(), ips.clone()));
                ips
            }
        }
    }
}

/// A store read error as the operator sees it.
fn read_error(e: hamail_store::StoreError) -> BackendError {
    BackendError::Read(e.to_string())
}

impl Tables for ClusterBackend {
    fn domain_kind(&self, domain: &DomainName) -> Result<Option<DomainKind>, BackendError> {
        self.store
            .domain(domain)
            .map(|d| d.map(|d| d.kind))
            .map_err(read_error)
    }

    fn recipient_known(&self, address: &MailAddress) -> Result<bool, BackendError> {
        self.store
            .recipient(address)
            .map(|r| r.is_some())
            .map_err(read_error)
    }

    fn domain_message_size_limit(&self, domain: &DomainName) -> Result<Option<u64>, BackendError> {
        self.store
            .domain_settings(domain)
            .map(|s| s.message_size_limit)
            .map_err(read_error)
    }

    fn alias_targets(
        &self,
        address: &MailAddress,
    ) -> Result<Option<Vec<MailAddress>>, BackendError> {
        self.store
            .alias(address)
            .map(|r| r.map(|r| r.targets))
            .map_err(read_error)
    }

    fn user_hash(&self, user: &MailAddress) -> Result<Option<String>, BackendError> {
        self.store
            .user(user)
            .map(|u| u.map(|u| u.hash.as_str().to_string()))
            .map_err(read_error)
    }

    fn sender_logins(&self, sender: &MailAddress) -> Result<Vec<MailAddress>, BackendError> {
        self.store.sender_allowed_users(sender).map_err(read_error)
    }

    fn content_checks(&self) -> Result<Option<Arc<hamail_checks::Checks>>, BackendError> {
        self.checks.get(&self.store)
    }

    fn dkim_signers(&self) -> Result<Option<Arc<hamail_dkim::Signers>>, BackendError> {
        self.dkim.get(&self.store)
    }
}

impl Backend for ClusterBackend {
    fn node_id(&self) -> NodeId {
        self.node().map(|n| n.node_id()).unwrap_or(0)
    }

    fn has_quorum(&self) -> bool {
        self.node()
            .is_some_and(|n| n.has_quorum() && n.is_caught_up() && n.tables_current())
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

    async fn rehash(
        &self,
        user: MailAddress,
        old: String,
        new: String,
    ) -> Result<(), BackendError> {
        let hash = |h: &str| {
            PasswordHash::parse(h).map_err(|e| BackendError::Commit(format!("hash: {e}")))
        };
        let cmd = Command::UserRehash {
            address: user,
            old: hash(&old)?,
            new: hash(&new)?,
        };
        match self.propose_one(cmd).await? {
            Outcome::Rejected { reason } => Err(BackendError::Commit(reason)),
            _ => Ok(()),
        }
    }
}

impl ClusterBackend {
    async fn propose_one(&self, cmd: Command) -> Result<Outcome, BackendError> {
        let Some(node) = self.node().cloned() else {
            return Err(BackendError::NotInCluster);
        };
        node.propose(vec![cmd])
            .await
            .map_err(|e| BackendError::Commit(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Commit("no outcome".into()))
    }
}

impl QueueStore for ClusterBackend {
    fn node_id(&self) -> NodeId {
        Backend::node_id(self)
    }

    fn may_deliver(&self) -> bool {
        self.has_quorum()
    }

    fn still_owner(&self, id: &QueueId, epoch: u64) -> bool {
        let me = Backend::node_id(self);
        self.has_quorum()
            && matches!(self.store.queue_entry(id), Ok(Some(e)) if e.owner == me && e.epoch == epoch)
    }

    fn owned(&self) -> Result<Vec<QueueEntry>, BackendError> {
        let me = Backend::node_id(self);
        let all = self.store.queue_entries().map_err(read_error)?;
        Ok(all
            .into_iter()
            .filter(|e| e.owner == me && !e.held)
            .filter(|e| e.recipients.iter().any(|r| !r.status.is_final()))
            .collect())
    }

    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, BackendError> {
        self.store.queue_body(id).map_err(read_error)
    }

    fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, BackendError> {
        Tables::domain_kind(self, d)
    }

    fn transport(
        &self,
        d: &DomainName,
    ) -> Result<Option<(TransportSpec, Vec<TransportSpec>)>, BackendError> {
        self.store
            .transport(d)
            .map(|t| t.map(|t| (t.spec, t.fallback)))
            .map_err(read_error)
    }

    fn mailbox_quota(&self, rcpt: &MailAddress) -> Result<Option<u64>, BackendError> {
        self.store
            .quota(rcpt)
            .map(|q| q.map(|q| q.bytes))
            .map_err(read_error)
    }

    fn own_smtp_addrs(&self) -> Vec<SocketAddr> {
        let peers: Vec<SocketAddr> = self
            .store
            .nodes()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|(_, n)| !n.removed)
                    .filter_map(|(_, n)| route::peer_smtp_addr(&n.info.smtp_addr, &n.info.rpc_addr))
                    .collect()
            })
            .unwrap_or_default();
        let wildcard = self.own_listen.iter().any(|a| a.ip().is_unspecified());
        let interfaces = if wildcard {
            self.interface_ips()
        } else {
            Vec::new()
        };
        route::own_addresses(&self.own_listen, &interfaces, &peers)
    }

    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, BackendError> {
        let Some(node) = self.node().cloned() else {
            return Err(BackendError::NotInCluster);
        };
        node.propose(commands)
            .await
            .map_err(|e| BackendError::Commit(e.to_string()))
    }
}

/// The node's resolver (`[delivery] resolver`, else the system's): MX
/// and address lookups for delivery, DNSBL lookups for the smtpd.
pub fn resolver(
    d: &hamail_config::DeliverySection,
) -> anyhow::Result<hickory_resolver::TokioResolver> {
    Ok(if d.resolver.is_empty() {
        hickory_resolver::TokioResolver::builder_tokio()
            .context("cannot read the system resolver configuration (delivery.resolver)")?
            .build()
            .context("cannot start the resolver")?
    } else {
        let addr: SocketAddr = d.resolver.parse().context("delivery.resolver")?;
        let mut udp = hickory_resolver::config::ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = hickory_resolver::config::ConnectionConfig::tcp();
        tcp.port = addr.port();
        let ns = hickory_resolver::config::NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
        let rc = hickory_resolver::config::ResolverConfig::from_parts(None, vec![], vec![ns]);
        let mut b = hickory_resolver::TokioResolver::builder_with_config(
            rc,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        // Tests and operators change MX records and expect the next try to
        // see them: keep answers briefly (the DNSBL check keeps its own
        // cache, by TTL).
        b.options_mut().cache_size = 0;
        b.build().context("cannot start the resolver")?
    })
}

/// The queue manager's settings from `[delivery]` (and the SMTP host name).
pub fn delivery_settings(cfg: &Config) -> anyhow::Result<DeliverySettings> {
    let d = &cfg.delivery;
    let hostname = if cfg.smtp.hostname.is_empty() {
        cfg.node.name.clone()
    } else {
        cfg.smtp.hostname.clone()
    };
    let resolver = resolver(d)?;
    let (tls_any, tls_verify) =
        hamail_smtp::outbound::tls_client::client_configs(&d.smtp_tls_ca_file)?;
    let sasl_passwords = if d.smtp_sasl_password_maps.is_empty() {
        Default::default()
    } else {
        hamail_smtp::outbound::load_password_map(Path::new(&d.smtp_sasl_password_maps))
            .map_err(anyhow::Error::msg)
            .context("delivery.smtp_sasl_password_maps")?
    };
    Ok(DeliverySettings {
        hostname: hostname.clone(),
        relayhost: d.relay(&d.relayhost),
        smtp_fallback_relay: d
            .smtp_fallback_relay
            .iter()
            .filter_map(|r| d.relay(r))
            .collect(),
        smtp_port: d.smtp_port,
        client: ClientOptions {
            helo_name: hostname,
            lmtp: false,
            connect_timeout: Duration::from_secs(d.smtp_connect_timeout_secs),
            command_timeout: Duration::from_secs(d.smtp_timeout_secs),
            tls: d.smtp_tls_security_level,
            tls_any,
            tls_verify,
            sasl: None,
        },
        tls_policy: d
            .smtp_tls_policy
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect(),
        sasl_passwords,
        destination_concurrency: d.default_destination_concurrency_limit,
        total_concurrency: d.delivery_concurrency,
        minimal_backoff: Duration::from_secs(d.minimal_backoff_time_secs),
        maximal_backoff: Duration::from_secs(d.maximal_backoff_time_secs),
        maximal_queue_lifetime: Duration::from_secs(d.maximal_queue_lifetime_secs),
        bounce_queue_lifetime: Duration::from_secs(d.bounce_queue_lifetime_secs),
        resolver,
        overquota: match d.overquota {
            hamail_config::Overquota::Bounce => hamail_smtp::outbound::Overquota::Bounce,
            hamail_config::Overquota::Defer => hamail_smtp::outbound::Overquota::Defer,
        },
    })
}

/// On the leader: every `lease_check_interval_secs`, hands the messages of
/// owners unreachable for `lease_secs` (or no longer members) to the live
/// nodes, epoch + 1.
pub async fn lease_keeper(
    backend: Arc<ClusterBackend>,
    lease: Duration,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut leader_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(node) = backend.node().cloned() else {
            continue;
        };
        let status = node.status();
        if status.leader != Some(node.node_id()) {
            leader_since = None;
            continue;
        }
        // A new leader has not watched anyone for a whole lease yet: the
        // lease rule waits (`leader_for`).
        let since = *leader_since.get_or_insert_with(std::time::Instant::now);
        let owners: std::collections::BTreeSet<u64> = match backend.store.queue_entries() {
            Ok(q) => q.iter().map(|e| e.owner).collect(),
            Err(_) => continue,
        };
        let due = {
            let contacts = node.contacts();
            let view = LeaderView {
                me: node.node_id(),
                leader_for: since.elapsed(),
                voters: &status.voters,
                is_member: &|id| status.nodes.contains_key(&id),
                silent_for: &|id| contacts.since(id),
            };
            handovers(&view, &owners, lease)
        };
        for handover in due {
            let owner = handover.from;
            match node.propose(vec![handover.command()]).await {
                Ok(o) => tracing::warn!(
                    target: "postfix/qmgr",
                    "node {owner} unreachable for over {} s: {:?}",
                    lease.as_secs(),
                    o.first()
                ),
                Err(e) => {
                    tracing::warn!(error = %e, owner, "cannot hand over the messages of a lost node")
                }
            }
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
    let lists = s.dnsbl_sites();
    if !lists.is_empty() {
        let resolver = resolver(&cfg.delivery).context("smtp.dnsbl")?;
        out.dnsbl = Some(Arc::new(hamail_smtp::dnsbl::Dnsbl::new(resolver, lists)));
    }
    out.milters = s.milter_addresses();
    out.milter_default_action = match s.milter_default_action {
        hamail_config::MilterDefaultAction::Tempfail => hamail_milter::DefaultAction::Tempfail,
        hamail_config::MilterDefaultAction::Accept => hamail_milter::DefaultAction::Accept,
        hamail_config::MilterDefaultAction::Reject => hamail_milter::DefaultAction::Reject,
    };
    out.milter_timeouts = hamail_milter::Timeouts {
        connect: Duration::from_secs(s.milter_connect_timeout_secs),
        command: Duration::from_secs(s.milter_command_timeout_secs),
        content: Duration::from_secs(s.milter_content_timeout_secs),
    };
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

/// The AUTH service of `[smtp]`: one per node, shared by its listeners.
fn auth_service(cfg: &Config) -> anyhow::Result<AuthService> {
    let s = &cfg.smtp;
    let source = match s.sasl_backend {
        SaslBackend::Cluster => {
            let workers = if s.auth_workers == 0 {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                s.auth_workers
            };
            PasswordSource::Cluster(VerifyPool::new(
                workers,
                Duration::from_secs(s.auth_cache_ttl_secs),
            ))
        }
        SaslBackend::Dovecot => {
            PasswordSource::Dovecot(DovecotAuth::new(s.dovecot_auth_socket.clone()))
        }
    };
    let limiter = FailureLimiter::new(
        s.smtpd_auth_failure_limit,
        Duration::from_secs(s.smtpd_auth_failure_window_secs),
        Duration::from_secs(s.smtpd_auth_cooldown_secs),
    );
    AuthService::new(
        source,
        limiter,
        s.smtpd_tls_auth_only,
        s.smtpd_sasl_authenticated_header,
    )
    .context("cannot start SMTP AUTH")
}

/// The SMTP listeners, each with its role.
pub struct Listeners(Vec<(Role, tokio::net::TcpListener)>);

/// Binds the SMTP listeners (MX, submission, submission over TLS); done
/// before the store is opened, so a busy port changes nothing.
pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
    let mut out = Vec::new();
    let reinject: Vec<SocketAddr> = cfg.smtp.reinject.listen.into_iter().collect();
    for (role, key, addrs) in [
        (Role::Mx, "smtp.listen", &cfg.smtp.listen),
        (
            Role::Submission,
            "smtp.submission_listen",
            &cfg.smtp.submission_listen,
        ),
        (
            Role::Submissions,
            "smtp.submissions_listen",
            &cfg.smtp.submissions_listen,
        ),
        (Role::Reinject, "smtp.reinject.listen", &reinject),
    ] {
        for addr in addrs {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({key})"))?;
            out.push((role, l));
        }
    }
    Ok(Listeners(out))
}

/// The smtpds on bound listeners, sharing one backend over the store and
/// one AUTH service.
pub fn smtpds(
    cfg: &Config,
    data_dir: &Path,
    store: Store,
    listeners: Listeners,
) -> anyhow::Result<(Arc<ClusterBackend>, Vec<Smtpd<ClusterBackend>>)> {
    let listeners = listeners.0;
    let backend = Arc::new(ClusterBackend {
        store,
        // The MX addresses: where other MTAs (and our own delivery) connect.
        own_listen: listeners
            .iter()
            .filter(|(role, _)| *role == Role::Mx)
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect(),
        interfaces: std::sync::Mutex::new(None),
        node: OnceLock::new(),
        cluster: OnceLock::new(),
        checks: Default::default(),
        dkim: Default::default(),
    });
    let base = settings(cfg, data_dir)?;
    let needs_auth =
        cfg.smtp.smtpd_sasl_auth_enable || listeners.iter().any(|(r, _)| r.is_submission());
    let auth = if needs_auth {
        Some(Arc::new(auth_service(cfg)?))
    } else {
        None
    };
    let for_role = |role: Role| {
        let mut s = base.clone();
        s.role = role;
        s.auth = match role {
            Role::Mx if !cfg.smtp.smtpd_sasl_auth_enable => None,
            Role::Reinject => None,
            _ => auth.clone(),
        };
        // The filter's way back: plain SMTP from mynetworks, and no filter.
        if role == Role::Reinject {
            s.tls = None;
        } else {
            s.content_filter = cfg.smtp.content_filter();
        }
        Arc::new(s)
    };
    let servers = listeners
        .into_iter()
        .map(|(role, l)| Smtpd::from_listener(l, backend.clone(), for_role(role)))
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
    // The node is looked up on first use (it may come with init/join).
    let _ = backend.cluster.set(cluster);
    tokio::spawn(async move {
        let addrs: Vec<SocketAddr> = servers.iter().filter_map(|s| s.local_addr()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for s in servers {
            tasks.spawn(s.run(cancel.clone()));
        }
        tracing::info!(listen = ?addrs, "smtpd serving");
        while tasks.join_next().await.is_some() {}
    })
}
