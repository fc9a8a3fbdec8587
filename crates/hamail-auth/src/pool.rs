//! Password verification off the async runtime, bounded, with a small
//! positive cache.
//!
//! A verification costs tens of milliseconds and 64 MiB (Argon2id), so it
//! runs in `tokio::task::spawn_blocking`, behind a semaphore of
//! `max_parallel` permits: a burst of AUTH commands queues here instead of
//! taking every blocking thread (which the rest of the server needs for file
//! IO) or all the memory. The permit is held by the blocking task itself, so
//! a caller that gives up (client gone, timeout) does not free a permit
//! while its hash is still being computed.
//!
//! The cache works like Dovecot's `auth_cache` for positive answers: after
//! a match, the key SHA-256(stored hash || 0 || password) is remembered for
//! `cache_ttl`, and the same pair within that time is answered without
//! hashing. Only matches are cached (a guessing attacker always pays the
//! full cost); a changed stored hash (new password, rehash) is a different
//! key, so it misses by construction. At most [`CACHE_CAPACITY`] entries,
//! the oldest dropped first. The key is a fast hash of the password: like
//! Dovecot's cache, it is as sensitive as the process memory it lives in.
//! A `cache_ttl` of zero disables the cache.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::AuthError;
use crate::password::{self, Verified};

/// The most entries the positive cache holds.
pub const CACHE_CAPACITY: usize = 10_000;

type Verifier = dyn Fn(&str, &[u8]) -> Result<Verified, AuthError> + Send + Sync;

/// Runs [`password::verify`] on blocking threads, at most `max_parallel`
/// at once, with a positive cache. Cheap to share: wrap in an `Arc`.
pub struct VerifyPool {
    permits: Arc<Semaphore>,
    cache: Mutex<Cache>,
    cache_ttl: Duration,
    verifier: Arc<Verifier>,
    cache_hits: AtomicU64,
    computed: AtomicU64,
}

impl std::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("available_permits", &self.permits.available_permits())
            .field("cache_ttl", &self.cache_ttl)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Counters of a [`VerifyPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Verifications answered from the cache.
    pub cache_hits: u64,
    /// Verifications computed on a blocking thread.
    pub computed: u64,
}

impl VerifyPool {
    /// A pool running at most `max_parallel` verifications at once (0 is
    /// taken as 1), caching matches for `cache_ttl` (zero: no cache).
    pub fn new(max_parallel: usize, cache_ttl: Duration) -> VerifyPool {
        VerifyPool::with_verifier(max_parallel, cache_ttl, Arc::new(password::verify))
    }

    fn with_verifier(max_parallel: usize, cache_ttl: Duration, verifier: Arc<Verifier>) -> Self {
        VerifyPool {
            permits: Arc::new(Semaphore::new(max_parallel.max(1))),
            cache: Mutex::new(Cache::default()),
            cache_ttl,
            verifier,
            cache_hits: AtomicU64::new(0),
            computed: AtomicU64::new(0),
        }
    }

    /// Checks `password` against `stored` like [`password::verify`], from
    /// the cache when this pair matched within `cache_ttl`.
    pub async fn verify(&self, stored: &str, password: &[u8]) -> Result<Verified, AuthError> {
        let key = (!self.cache_ttl.is_zero()).then(|| cache_key(stored, password));
        if let Some(key) = &key
            && let Some(rehash) = self.cache_lookup(key, Instant::now())
        {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Verified::Match { rehash });
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| AuthError::Task(e.to_string()))?;
        let verifier = Arc::clone(&self.verifier);
        let stored_owned = stored.to_owned();
        let password_owned = password.to_vec();
        let verdict = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verifier(&stored_owned, &password_owned)
        })
        .await
        .map_err(|e| AuthError::Task(e.to_string()))??;
        self.computed.fetch_add(1, Ordering::Relaxed);
        if let (Some(key), Verified::Match { rehash }) = (key, verdict) {
            self.cache_insert(key, rehash, Instant::now());
        }
        Ok(verdict)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            computed: self.computed.load(Ordering::Relaxed),
        }
    }

    fn cache_lookup(&self, key: &[u8; 32], now: Instant) -> Option<bool> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.prune(now, self.cache_ttl);
        cache.entries.get(key).map(|&(_, rehash)| rehash)
    }

    fn cache_insert(&self, key: [u8; 32], rehash: bool, now: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.prune(now, self.cache_ttl);
        cache.insert(key, rehash, now);
    }
}

fn cache_key(stored: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(stored.as_bytes());
    h.update([0u8]);
    h.update(password);
    h.finalize().into()
}

/// Matches by key, with their insertion order for expiry and eviction.
/// Every entry has the same TTL, so insertion order is expiry order.
#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], (Instant, bool)>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl Cache {
    /// Drops expired entries (all at the front of `order`).
    fn prune(&mut self, now: Instant, ttl: Duration) {
        while let Some(&(key, at)) = self.order.front() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.pop_front(key, at);
        }
    }

    fn insert(&mut self, key: [u8; 32], rehash: bool, now: Instant) {
        if self.entries.contains_key(&key) {
            // Two callers computed the same pair at once; keep the first.
            return;
        }
        while self.entries.len() >= CACHE_CAPACITY {
            let Some(&(old, at)) = self.order.front() else {
                break;
            };
            self.pop_front(old, at);
        }
        self.entries.insert(key, (now, rehash));
        self.order.push_back((key, now));
    }

    fn pop_front(&mut self, key: [u8; 32], at: Instant) {
        self.order.pop_front();
        if self.entries.get(&key).is_some_and(|&(t, _)| t == at) {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const BLF: &str = "{BLF-CRYPT}$2y$05$AtFvXyB0DwuD2.s1yS4SGewh98yk5yzd7HB1/Hp59EQs5/qNRWOAG";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_never_runs_more_than_max_parallel_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
        let verifier: Arc<Verifier> = Arc::new(move |stored: &str, pw: &[u8]| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            let verdict = password::verify(stored, pw);
            r.fetch_sub(1, Ordering::SeqCst);
            verdict
        });
        // No cache: every call computes.
        let pool = Arc::new(VerifyPool::with_verifier(2, Duration::ZERO, verifier));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let pool = Arc::clone(&pool);
            tasks.spawn(async move {
                let pw: &[u8] = if i % 2 == 0 { b"secret" } else { b"wrong" };
                (i, pool.verify(BLF, pw).await.unwrap())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, verdict) = joined.unwrap();
            let expected = if i % 2 == 0 {
                Verified::Match { rehash: true }
            } else {
                Verified::Mismatch
            };
            assert_eq!(verdict, expected, "call {i}");
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "peak {peak}");
        assert_eq!(
            pool.stats(),
            PoolStats {
                cache_hits: 0,
                computed: 50
            }
        );
        assert_eq!(pool.permits.available_permits(), 2);
    }

    #[tokio::test]
    async fn matches_are_cached_mismatches_and_changed_hashes_are_not() {
        let pool = VerifyPool::new(2, Duration::from_secs(300));
        assert_eq!(
            pool.verify(BLF, b"secret").await.unwrap(),
            Verified::Match { rehash: true }
        );
        assert_eq!(
            pool.stats(),
            PoolStats {
                cache_hits: 0,
                computed: 1
            }
        );
        assert_eq!(
            pool.verify(BLF, b"secret").await.unwrap(),
            Verified::Match { rehash: true }
        );
        assert_eq!(
            pool.stats(),
            PoolStats {
                cache_hits: 1,
                computed: 1
            }
        );
        // A wrong password is computed every time.
        for n in 0..2 {
            assert_eq!(
                pool.verify(BLF, b"Secret").await.unwrap(),
                Verified::Mismatch
            );
            assert_eq!(
                pool.stats(),
                PoolStats {
                    cache_hits: 1,
                    computed: 2 + n
                }
            );
        }
        // Another stored hash for the same password is another key.
        let other = password::hash_password(b"secret").unwrap();
        assert_eq!(
            pool.verify(&other, b"secret").await.unwrap(),
            Verified::Match { rehash: false }
        );
        assert_eq!(
            pool.stats(),
            PoolStats {
                cache_hits: 1,
                computed: 4
            }
        );
        // A malformed hash is an error, not cached.
        assert!(pool.verify("{PLAIN}secret", b"secret").await.is_err());
        assert!(pool.verify("{PLAIN}secret", b"secret").await.is_err());
        assert_eq!(pool.stats().cache_hits, 1);
    }

    #[tokio::test]
    async fn zero_ttl_disables_the_cache() {
        let pool = VerifyPool::new(1, Duration::ZERO);
        for _ in 0..2 {
            assert!(matches!(
                pool.verify(BLF, b"secret").await.unwrap(),
                Verified::Match { .. }
            ));
        }
        assert_eq!(
            pool.stats(),
            PoolStats {
                cache_hits: 0,
                computed: 2
            }
        );
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let ttl = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.insert(cache_key("a", b"1"), false, t0);
        cache.prune(t0 + Duration::from_secs(59), ttl);
        assert!(cache.entries.contains_key(&cache_key("a", b"1")));
        cache.prune(t0 + ttl, ttl);
        assert!(cache.entries.is_empty() && cache.order.is_empty());
        // Full: the oldest goes first.
        for i in 0..CACHE_CAPACITY + 5 {
            let at = t0 + Duration::from_millis(i as u64);
            cache.insert(cache_key("h", &i.to_be_bytes()), false, at);
        }
        assert_eq!(cache.entries.len(), CACHE_CAPACITY);
        assert_eq!(cache.order.len(), CACHE_CAPACITY);
        assert!(
            !cache
                .entries
                .contains_key(&cache_key("h", &4usize.to_be_bytes()))
        );
        assert!(
            cache
                .entries
                .contains_key(&cache_key("h", &5usize.to_be_bytes()))
        );
        // The key separates hash and password.
        assert_ne!(cache_key("ab", b"c"), cache_key("a", b"bc"));
    }
}
