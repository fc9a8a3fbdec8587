//! The smtpd's listener: accepts connections, enforces the connection
//! limits (in total and per client, mynetworks exempt like Postfix's
//! `smtpd_client_event_limit_exceptions`), and runs one task per session.
//! Sessions are owned by a JoinSet and end on the cancellation token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::session::Session;
use crate::{Backend, Role, Settings, SmtpError};

pub struct Smtpd<B: Backend> {
    listener: TcpListener,
    backend: Arc<B>,
    settings: Arc<Settings>,
}

/// Sessions open, per client address and in total.
#[derive(Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// Gives a session's slot back when the session ends, however it ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl<B: Backend> Smtpd<B> {
    pub async fn bind(
        addr: SocketAddr,
        backend: Arc<B>,
        settings: Settings,
    ) -> Result<Self, SmtpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| SmtpError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self::from_listener(listener, backend, Arc::new(settings)))
    }

    /// A smtpd on a listener bound earlier.
    pub fn from_listener(listener: TcpListener, backend: Arc<B>, settings: Arc<Settings>) -> Self {
        Smtpd {
            listener,
            backend,
            settings,
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `cancel`; then tells open sessions to finish (421) and
    /// waits for them.
    pub async fn run(self, cancel: CancellationToken) {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut sessions = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = cancel.cancelled() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a moment rather than spin.
                    tracing::warn!(error = %e, "smtpd accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ip = peer.ip();
            let trusted = crate::policy::in_networks(&self.settings.mynetworks, ip);
            let admitted = {
                let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                let here = c.per_ip.get(&ip).copied().unwrap_or(0);
                if c.total >= self.settings.smtpd_max_connections {
                    Err("too many connections")
                } else if !trusted && here >= self.settings.smtpd_client_connection_count_limit {
                    Err("too many connections from your address")
                } else {
                    c.total += 1;
                    *c.per_ip.entry(ip).or_default() += 1;
                    Ok(c.total)
                }
            };
            match admitted {
                Err(why) => {
                    tracing::warn!(target: "postfix/smtpd", "warning: Connection concurrency limit exceeded: {why}: unknown[{ip}]");
                    let text = format!("421 4.7.0 {} Error: {why}\r\n", self.settings.hostname);
                    sessions.spawn(refuse(stream, text));
                }
                Ok(total) => {
                    let slot = Slot {
                        counts: counts.clone(),
                        ip,
                    };
                    // Postfix's stress mode: past 80 % of the limit, idle
                    // clients get short timeouts.
                    let stressed = total * 5 > self.settings.smtpd_max_connections * 4;
                    let backend = self.backend.clone();
                    let settings = self.settings.clone();
                    let cancel = cancel.child_token();
                    sessions.spawn(async move {
                        let _slot = slot;
                        let Some((io, tls)) = open(&settings, stream, peer, &cancel).await else {
                            return;
                        };
                        Session::new(backend, settings, io, peer, cancel, stressed, tls)
                            .run()
                            .await;
                    });
                }
            }
        }
        while sessions.join_next().await.is_some() {}
    }
}

/// The session's stream: the socket, or on a `Role::Submissions` listener
/// the TLS stream over it once the handshake is done (RFC 8314); `None`
/// when that handshake fails (logged as Postfix does).
async fn open(
    settings: &Settings,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: &CancellationToken,
) -> Option<(Box<dyn crate::IoStream>, bool)> {
    if settings.role != Role::Submissions {
        return Some((Box::new(stream), false));
    }
    let tls = settings.tls.clone()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = settings
        .smtpd_timeout
        .min(std::time::Duration::from_secs(60));
    let handshake = tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
        _ = cancel.cancelled() => return None,
    };
    match handshake {
        Ok(Ok(s)) => Some((Box::new(s), true)),
        Ok(Err(e)) => {
            tracing::info!(target: "postfix/smtpd", "SSL_accept error from unknown[{}]: {e}", peer.ip());
            None
        }
        Err(_) => {
            tracing::info!(target: "postfix/smtpd", "SSL_accept error from unknown[{}]: timed out", peer.ip());
            None
        }
    }
}

/// Runs one session over any byte stream (a socket, or an in-memory pipe
/// in tests) until it ends.
pub async fn serve_stream<B: Backend>(
    backend: Arc<B>,
    settings: Arc<Settings>,
    io: Box<dyn crate::IoStream>,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    Session::new(backend, settings, io, peer, cancel, false, false)
        .run()
        .await;
}

async fn refuse(mut stream: TcpStream, text: String) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
