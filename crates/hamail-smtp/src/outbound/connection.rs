//! Reaching a server: its address (TCP or a Unix socket), connecting within
//! the connect timeout, and the cache of connections kept open between
//! transactions (Postfix's connection cache).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hamail_types::TlsLevel;
use tokio::net::{TcpStream, UnixStream};

use super::client::{ClientOptions, SessionError};
use super::wire::{Reply, Wire};
use crate::IoStream;

/// Connections kept open after a transaction, for the next message to the
/// same server (Postfix's connection cache): at most `POOL_PER_SERVER` per
/// server and settings, each for at most `POOL_IDLE`.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<std::collections::HashMap<PoolKey, Vec<Idle>>>,
}

pub(super) type PoolKey = (ServerAddr, TlsLevel, Option<String>, bool);

pub(super) struct Idle {
    pub(super) wire: Wire,
    pub(super) ehlo: Reply,
    pub(super) since: std::time::Instant,
}

const POOL_IDLE: Duration = Duration::from_secs(2);
const POOL_PER_SERVER: usize = 20;

impl Pool {
    pub(super) fn key(addr: ServerAddr, opts: &ClientOptions) -> PoolKey {
        (
            addr,
            opts.tls,
            opts.sasl.as_ref().map(|c| c.user.clone()),
            opts.lmtp,
        )
    }

    pub(super) fn take(&self, key: &PoolKey) -> Option<Idle> {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.get_mut(key)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < POOL_IDLE {
                return Some(i);
            }
        }
        None
    }

    pub(super) fn put(&self, key: PoolKey, idle: Idle) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.entry(key).or_default();
        if list.len() < POOL_PER_SERVER {
            list.push(idle);
        }
    }

    /// Closes connections idle for too long.
    pub fn expire(&self) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in m.values_mut() {
            list.retain(|i| i.since.elapsed() < POOL_IDLE);
        }
        m.retain(|_, l| !l.is_empty());
    }
}

/// Where a server listens: a TCP address (SMTP, LMTP) or a Unix socket
/// (LMTP, e.g. Dovecot's default listener).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> Self {
        ServerAddr::Tcp(a)
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{a}"),
            ServerAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A new connection to `addr` (called `host`), within the connect timeout.
pub(super) async fn connect(
    addr: &ServerAddr,
    host: &str,
    opts: &ClientOptions,
) -> Result<Box<dyn IoStream>, SessionError> {
    let connected = tokio::time::timeout(opts.connect_timeout, async {
        Ok::<Box<dyn IoStream>, std::io::Error>(match addr {
            ServerAddr::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            ServerAddr::Unix(p) => Box::new(UnixStream::connect(p).await?),
        })
    })
    .await;
    match connected {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(SessionError::temp(format!(
            "connect to {host}[{addr}]: {e}"
        ))),
        Err(_) => Err(SessionError::temp(format!(
            "connect to {host}[{addr}]: timed out"
        ))),
    }
}
