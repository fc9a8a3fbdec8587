//! The pre-auth gate of the RPC server: how many connections without a
//! proven member certificate may be open, per address and in all, and how
//! often an address may send its one request without a certificate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Connections that have not (yet) shown a member certificate: the TLS
/// handshake and, without a certificate, the one `Join` frame. Limited in
/// number, per address and in total, and in time, so that nobody without a
/// certificate can hold more than a few KiB of our memory or our slots.
#[derive(Debug)]
pub(super) struct Gate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_ip: HashMap<IpAddr, IpState>,
}

#[derive(Debug)]
struct IpState {
    conns: usize,
    /// Token bucket of requests without a certificate.
    tokens: f64,
    refilled: Instant,
}

/// Connections without a proven certificate at once, in all.
const PREAUTH_TOTAL: usize = 128;
/// ... and from one address.
const PREAUTH_PER_IP: usize = 8;
/// From TCP accept to the end of the first frame, for a caller without a
/// certificate (a joiner sends one small frame right after the handshake).
pub(super) const PREAUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Requests without a certificate per address: a burst, then per second.
const PREAUTH_BURST: f64 = 8.0;
const PREAUTH_PER_SEC: f64 = 2.0;
/// Addresses remembered by the rate limit before idle ones are forgotten.
const GATE_MAX_ADDRS: usize = 4096;

/// A slot held by a connection without a proven certificate.
pub(super) struct PreAuth<'a> {
    gate: &'a Gate,
    ip: IpAddr,
}

impl Drop for PreAuth<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.gate.state.lock() {
            g.total = g.total.saturating_sub(1);
            if let Some(s) = g.per_ip.get_mut(&self.ip) {
                s.conns = s.conns.saturating_sub(1);
            }
        }
    }
}

impl Gate {
    pub(super) fn new() -> Gate {
        Gate {
            state: std::sync::Mutex::new(GateState::default()),
        }
    }

    /// A slot for a new connection from `ip`, or why not.
    pub(super) fn enter(&self, ip: IpAddr) -> Result<PreAuth<'_>, &'static str> {
        let mut g = self.state.lock().map_err(|_| "gate poisoned")?;
        if g.total >= PREAUTH_TOTAL {
            return Err("too many connections without a certificate");
        }
        if g.per_ip.len() >= GATE_MAX_ADDRS {
            let now = Instant::now();
            g.per_ip.retain(|_, s| {
                s.conns > 0 || now.duration_since(s.refilled) < Duration::from_secs(10)
            });
        }
        let s = g.per_ip.entry(ip).or_insert_with(|| IpState {
            conns: 0,
            tokens: PREAUTH_BURST,
            refilled: Instant::now(),
        });
        if s.conns >= PREAUTH_PER_IP {
            return Err("too many connections without a certificate from this address");
        }
        s.conns += 1;
        g.total += 1;
        Ok(PreAuth { gate: self, ip })
    }

    /// May `ip` send one more request without a certificate now?
    pub(super) fn allow_request(&self, ip: IpAddr) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        // A member's address holds no slot, so it may have no entry yet.
        let s = g.per_ip.entry(ip).or_insert_with(|| IpState {
            conns: 0,
            tokens: PREAUTH_BURST,
            refilled: now,
        });
        let dt = now.duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + dt * PREAUTH_PER_SEC).min(PREAUTH_BURST);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
