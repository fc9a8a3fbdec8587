//! Brute-force defence for AUTH, per node: after `limit` failed
//! authentications from one client within `window`, that client is refused
//! for `cooldown`. Other clients are unaffected. Nothing is replicated: each
//! node counts what it sees.
//!
//! A client is an IPv4 address, or an IPv6 /64 (one host's usual
//! allocation, so an attacker cannot step through its addresses). A success
//! clears the client's failure count but never a block in force. Memory is
//! bounded: at most `max_tracked` clients (100,000 by default); when full,
//! expired entries are pruned and then the least recently seen tenth is
//! dropped. The clock is never read here: every call takes `now`, so tests
//! are deterministic.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default bound on the number of clients tracked.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;
/// Longest window or cooldown honoured (longer ones are clamped): keeps
/// `Instant` arithmetic in range.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most failure times kept per client (the limit is clamped to this).
const MAX_LIMIT: u32 = 1_000;

/// Counts failed authentications per client and blocks noisy clients.
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    cooldown: Duration,
    max_tracked: usize,
    clients: Mutex<HashMap<Client, Entry>>,
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("cooldown", &self.cooldown)
            .field("tracked", &self.tracked())
            .finish()
    }
}

/// An IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Failures within the window, oldest first.
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    last_seen: Option<Instant>,
}

impl Entry {
    /// Nothing left to remember at `now`.
    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.blocked_until.is_none_or(|until| until <= now)
            && self
                .failures
                .back()
                .is_none_or(|&last| now.saturating_duration_since(last) >= window)
    }
}

impl FailureLimiter {
    /// Blocks a client for `cooldown` after `limit` failures within
    /// `window`. A `limit` of 0 disables blocking; limits above 1000 and
    /// periods above a year are clamped.
    pub fn new(limit: u32, window: Duration, cooldown: Duration) -> FailureLimiter {
        FailureLimiter::with_max_tracked(limit, window, cooldown, DEFAULT_MAX_TRACKED)
    }

    /// As [`FailureLimiter::new`], tracking at most `max_tracked` clients
    /// (at least 1).
    pub fn with_max_tracked(
        limit: u32,
        window: Duration,
        cooldown: Duration,
        max_tracked: usize,
    ) -> FailureLimiter {
        FailureLimiter {
            limit: limit.min(MAX_LIMIT),
            window: window.min(MAX_PERIOD),
            cooldown: cooldown.min(MAX_PERIOD),
            max_tracked: max_tracked.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The time left on `ip`'s block, if it is blocked at `now`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.lock();
        let until = clients.get(&Client::from(ip))?.blocked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Records a failed authentication from `ip` at `now`; the `limit`-th
    /// within `window` starts a block of `cooldown`. Failures while blocked
    /// do not extend the block.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let client = Client::from(ip);
        let mut clients = self.lock();
        if !clients.contains_key(&client) && clients.len() >= self.max_tracked {
            self.make_room(&mut clients, now);
        }
        let entry = clients.entry(client).or_default();
        entry.last_seen = Some(now);
        if entry.blocked_until.is_some_and(|until| until > now) {
            return;
        }
        entry.blocked_until = None;
        while entry
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now);
        if entry.failures.len() >= self.limit as usize {
            entry.failures.clear();
            entry.blocked_until = Some(now + self.cooldown);
        }
    }

    /// Records a successful authentication from `ip`: its failure count is
    /// cleared, a block in force stays.
    pub fn record_success(&self, ip: IpAddr, now: Instant) {
        let client = Client::from(ip);
        let mut clients = self.lock();
        if let Some(entry) = clients.get_mut(&client) {
            entry.failures.clear();
            entry.last_seen = Some(now);
            if entry.idle(now, self.window) {
                clients.remove(&client);
            }
        }
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Entry>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prunes idle entries; if still full, drops a tenth (at least one):
    /// unblocked clients before blocked ones, least recently seen first, so
    /// a flood of new clients costs O(1) amortised and evicts a block last.
    fn make_room(&self, clients: &mut HashMap<Client, Entry>, now: Instant) {
        clients.retain(|_, e| !e.idle(now, self.window));
        if clients.len() < self.max_tracked {
            return;
        }
        let drop = (clients.len() / 10).max(1);
        let mut order: Vec<(bool, Option<Instant>, Client)> = clients
            .iter()
            .map(|(c, e)| {
                let blocked = e.blocked_until.is_some_and(|until| until > now);
                (blocked, e.last_seen, *c)
            })
            .collect();
        order.select_nth_unstable_by_key(drop - 1, |&(blocked, seen, _)| (blocked, seen));
        for (_, _, c) in &order[..drop] {
            clients.remove(c);
        }
    }
}

/// The IPv6 /64 of an address (for logs that want to name the blocked unit).
pub fn ipv6_prefix(ip: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip) & !((1u128 << 64) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const SEC: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_after_limit_failures_within_window_for_cooldown() {
        let l = FailureLimiter::new(3, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        l.record_failure(a, t0);
        l.record_failure(a, t0 + MIN);
        assert_eq!(l.blocked(a, t0 + MIN), None);
        l.record_failure(a, t0 + 2 * MIN);
        assert_eq!(l.blocked(a, t0 + 2 * MIN), Some(15 * MIN));
        assert_eq!(l.blocked(a, t0 + 10 * MIN), Some(7 * MIN));
        // Another client is unaffected.
        assert_eq!(l.blocked(ip("192.0.2.2"), t0 + 3 * MIN), None);
        // Failures while blocked do not extend it.
        l.record_failure(a, t0 + 16 * MIN);
        assert_eq!(l.blocked(a, t0 + 17 * MIN), None);
        // The count starts again after the block.
        l.record_failure(a, t0 + 18 * MIN);
        l.record_failure(a, t0 + 19 * MIN);
        assert_eq!(l.blocked(a, t0 + 19 * MIN), None);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let l = FailureLimiter::new(3, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("2001:db8::1");
        l.record_failure(a, t0);
        l.record_failure(a, t0 + 5 * MIN);
        l.record_failure(a, t0 + 10 * MIN); // the first is out of the window
        assert_eq!(l.blocked(a, t0 + 10 * MIN), None);
        l.record_failure(a, t0 + 11 * MIN);
        assert_eq!(l.blocked(a, t0 + 11 * MIN), Some(15 * MIN));
    }

    #[test]
    fn success_clears_the_count_but_not_a_block() {
        let l = FailureLimiter::new(2, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        l.record_failure(a, t0);
        l.record_success(a, t0 + MIN);
        l.record_failure(a, t0 + 2 * MIN);
        assert_eq!(l.blocked(a, t0 + 2 * MIN), None);
        assert_eq!(l.tracked(), 1);
        l.record_failure(a, t0 + 3 * MIN);
        assert_eq!(l.blocked(a, t0 + 3 * MIN), Some(15 * MIN));
        l.record_success(a, t0 + 4 * MIN);
        assert_eq!(l.blocked(a, t0 + 4 * MIN), Some(14 * MIN));
        // After the block, a success forgets the client.
        l.record_success(a, t0 + 20 * MIN);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let l = FailureLimiter::new(2, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        l.record_failure(ip("2001:db8:1:2::1"), t0);
        l.record_failure(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(l.blocked(ip("2001:db8:1:2::77"), t0).is_some());
        assert!(l.blocked(ip("2001:db8:1:3::1"), t0).is_none());
        l.record_failure(ip("::ffff:192.0.2.9"), t0);
        l.record_failure(ip("192.0.2.9"), t0);
        assert!(l.blocked(ip("192.0.2.9"), t0).is_some());
        assert_eq!(
            ipv6_prefix("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn zero_limit_never_blocks() {
        let l = FailureLimiter::new(0, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        for _ in 0..100 {
            l.record_failure(ip("192.0.2.1"), t0);
        }
        assert_eq!(l.blocked(ip("192.0.2.1"), t0), None);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_idle_first_then_oldest() {
        let l = FailureLimiter::with_max_tracked(2, MIN, 15 * MIN, 100);
        let t0 = Instant::now();
        // A blocked client seen first.
        let blocked = ip("203.0.113.1");
        l.record_failure(blocked, t0);
        l.record_failure(blocked, t0);
        // 99 clients with one failure each, long ago: idle after the window.
        for i in 0..99u32 {
            l.record_failure(IpAddr::V4((0x0a00_0000 + i).into()), t0);
        }
        assert_eq!(l.tracked(), 100);
        let later = t0 + 2 * MIN;
        l.record_failure(ip("198.51.100.1"), later);
        // The idle ones were pruned; the block survives.
        assert_eq!(l.tracked(), 2);
        assert!(l.blocked(blocked, later).is_some());
        // Full of active clients: a tenth goes, unblocked and least
        // recently seen first (198.51.100.1, then nine of the 98).
        for i in 0..98u32 {
            l.record_failure(IpAddr::V4((0x0b00_0000 + i).into()), later + 30 * SEC);
        }
        assert_eq!(l.tracked(), 100);
        l.record_failure(ip("198.51.100.2"), later + 31 * SEC);
        assert_eq!(l.tracked(), 91);
        assert!(l.blocked(blocked, later + 31 * SEC).is_some());
        // 198.51.100.1 was dropped: one more failure does not block it.
        l.record_failure(ip("198.51.100.1"), later + 32 * SEC);
        assert!(l.blocked(ip("198.51.100.1"), later + 32 * SEC).is_none());
    }
}
