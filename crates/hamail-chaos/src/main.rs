//! `hamail-chaos proxy`: a TCP proxy in front of each node's cluster RPC
//! port that delays, jitters or blackholes the traffic of each link, in
//! userspace (these machines have no tc/netem). A node advertises its
//! proxy's address; peers dial it from their own RPC address (hamail binds
//! outgoing cluster connections to it), so the proxy knows each link as
//! (source IP, proxied node).
//!
//! The rules live in a file, re-read when it changes, one per line, the
//! first match wins, no match means "pass, no delay":
//!
//! ```text
//! # SRC_IP|*  DST_LISTEN|*  DELAY_MS  JITTER_MS  pass|blackhole
//! 127.0.0.11  127.0.0.12:17900  40  5  pass
//! *           127.0.0.13:17900   0  0  blackhole
//! ```
//!
//! DELAY is one way, applied to both directions of a connection, so a
//! link's round trip grows by 2 x DELAY. A blackhole drops bytes and keeps
//! connections open, like a cut fibre; when it lifts, connections that lost
//! bytes are closed (their TLS streams are broken) and peers reconnect.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "hamail-chaos", about = "Fault injection for hamail clusters")]
enum Cli {
    /// Proxy LISTEN=TARGET pairs under the rules in a file.
    Proxy {
        /// LISTEN=TARGET, e.g. 127.0.0.11:17900=127.0.0.11:17800 (repeatable).
        #[arg(long = "map", required = true)]
        maps: Vec<String>,
        /// The rules file (may not exist yet: then everything passes).
        #[arg(long)]
        rules: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    src: Option<IpAddr>,
    dst: Option<SocketAddr>,
    delay: Duration,
    jitter: Duration,
    blackhole: bool,
}

fn parse_rules(text: &str) -> anyhow::Result<Vec<Rule>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [src, dst, delay, jitter, mode] = f.as_slice() else {
            bail!(
                "line {}: expected SRC DST DELAY_MS JITTER_MS pass|blackhole",
                i + 1
            );
        };
        let any = |s: &str| s == "*";
        out.push(Rule {
            src: if any(src) {
                None
            } else {
                Some(
                    src.parse()
                        .with_context(|| format!("line {}: source {src:?}", i + 1))?,
                )
            },
            dst: if any(dst) {
                None
            } else {
                Some(
                    dst.parse()
                        .with_context(|| format!("line {}: destination {dst:?}", i + 1))?,
                )
            },
            delay: Duration::from_millis(
                delay
                    .parse()
                    .with_context(|| format!("line {}: delay {delay:?}", i + 1))?,
            ),
            jitter: Duration::from_millis(
                jitter
                    .parse()
                    .with_context(|| format!("line {}: jitter {jitter:?}", i + 1))?,
            ),
            blackhole: match *mode {
                "pass" => false,
                "blackhole" => true,
                m => bail!("line {}: mode {m:?}: expected pass or blackhole", i + 1),
            },
        });
    }
    Ok(out)
}

type Rules = Arc<RwLock<Vec<Rule>>>;

/// (delay, jitter, blackhole) for a link now.
fn link(rules: &Rules, src: IpAddr, dst: SocketAddr) -> (Duration, Duration, bool) {
    let r = rules.read().unwrap_or_else(|p| p.into_inner());
    r.iter()
        .find(|r| r.src.is_none_or(|s| s == src) && r.dst.is_none_or(|d| d == dst))
        .map(|r| (r.delay, r.jitter, r.blackhole))
        .unwrap_or_default()
}

/// A cheap pseudo-random jitter in [0, j].
fn jitter(j: Duration, salt: u64) -> Duration {
    if j.is_zero() {
        return j;
    }
    let n = Instant::now().elapsed().as_nanos() as u64 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let x = (n ^ (n >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) % (j.as_millis() as u64 + 1);
    Duration::from_millis(x)
}

/// Copies one direction: reads, stamps each chunk with its due time, and a
/// writer sends it then (order kept). Returns when either side ends or the
/// link healed after losing bytes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rules: Rules,
    src: IpAddr,
    dst: SocketAddr,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let writer = tokio::spawn(async move {
        let mut last = Instant::now();
        while let Some((due, bytes)) = rx.recv().await {
            // Jitter never reorders a stream.
            let due = due.max(last);
            tokio::time::sleep_until(due.into()).await;
            last = due;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut lost = false;
    let mut n_chunks = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (delay, jit, blackhole) = link(&rules, src, dst);
        if blackhole {
            lost = true;
            continue;
        }
        if lost {
            // The stream lost bytes: end it, as a timed-out TCP would.
            break;
        }
        n_chunks += 1;
        let due = Instant::now() + delay + jitter(jit, n_chunks);
        if tx.send((due, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn serve(listen: SocketAddr, target: SocketAddr, rules: Rules) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (client, peer) = match l.accept().await {
            Ok(a) => a,
            Err(_) => continue,
        };
        let rules = rules.clone();
        tokio::spawn(async move {
            if link(&rules, peer.ip(), listen).2 {
                // A blackholed link: the connection opens, nothing passes.
                let mut client = client;
                let mut sink = [0u8; 4096];
                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {
                    if !link(&rules, peer.ip(), listen).2 {
                        break;
                    }
                }
                return;
            }
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let a = tokio::spawn(pump(cr, sw, rules.clone(), peer.ip(), listen));
            let b = tokio::spawn(pump(sr, cw, rules, peer.ip(), listen));
            // When one direction ends, the connection is over.
            tokio::select! {
                _ = a => {}
                _ = b => {}
            }
        });
    }
}

/// Re-reads the rules file when its modification time changes.
async fn watch_rules(path: PathBuf, rules: Rules) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime != seen {
            seen = mtime;
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match parse_rules(&text) {
                Ok(r) => *rules.write().unwrap_or_else(|p| p.into_inner()) = r,
                Err(e) => eprintln!("hamail-chaos: {}: {e:#} (rules unchanged)", path.display()),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli::Proxy { maps, rules: path } = Cli::parse();
    let rules: Rules = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for m in &maps {
        let (l, t) = m
            .split_once('=')
            .with_context(|| format!("--map {m:?}: expected LISTEN=TARGET"))?;
        let listen: SocketAddr = l
            .parse()
            .with_context(|| format!("--map {m:?}: listen address"))?;
        let target: SocketAddr = t
            .parse()
            .with_context(|| format!("--map {m:?}: target address"))?;
        tasks.spawn(serve(listen, target, rules.clone()));
    }
    tasks.spawn(async move {
        watch_rules(path, rules).await;
        Ok(())
    });
    println!("READY");
    if let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match_first() {
        let r =
            parse_rules("# c\n127.0.0.11 127.0.0.12:1 40 5 pass\n* 127.0.0.12:1 0 0 blackhole\n")
                .unwrap();
        let rules: Rules = Arc::new(RwLock::new(r));
        let d: SocketAddr = "127.0.0.12:1".parse().unwrap();
        assert_eq!(
            link(&rules, "127.0.0.11".parse().unwrap(), d),
            (Duration::from_millis(40), Duration::from_millis(5), false)
        );
        assert!(link(&rules, "127.0.0.13".parse().unwrap(), d).2);
        assert!(
            !link(
                &rules,
                "127.0.0.13".parse().unwrap(),
                "127.0.0.99:1".parse().unwrap()
            )
            .2
        );
        assert!(parse_rules("a b c").is_err());
    }
}
