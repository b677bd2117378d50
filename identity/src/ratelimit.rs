//! Failed-login rate limiting, per account and per client address, so that
//! password guessing costs time and Keystone never sees a flood. Pure logic
//! over an injectable [`Clock`]; thread-safe behind one [`Mutex`].
//!
//! # Decisions
//!
//! - Sliding window: an account (or address) is refused while it has at
//!   least `max_failures_per_account` (`max_failures_per_ip`) failures in the
//!   last `window_secs` seconds, and is let through again as soon as the
//!   oldest of them leaves the window. So nobody gets more than the limit in
//!   *any* window, unlike fixed windows, which allow twice the limit across a
//!   boundary. Only the last `limit` failure times are kept per key.
//! - The HTTP layer asks [`RateLimiter::allow`] (or
//!   [`RateLimiter::retry_after`]) *before* contacting Keystone, and answers
//!   429 `TOOMANYREQUESTS` when refused. While an account is refused, the
//!   right password is refused too: we cannot know it is right without
//!   asking Keystone. Refused attempts are not counted (the window passes
//!   even when a client keeps trying).
//! - Attempts in flight count against the limit: [`RateLimiter::begin`]
//!   lets an attempt go only while the recent failures plus the attempts
//!   still waiting on Keystone stay below the limit, and answers
//!   [`Admission::Busy`] otherwise (the caller waits for one to end and asks
//!   again). Without this, a client sending many guesses at once would get
//!   them all checked before the first failure is counted.
//! - Successes are never counted. A success clears the *account's* failures,
//!   not the address's: otherwise an attacker holding one valid account could
//!   wipe the address counter between guesses at other accounts.
//! - Accounts compare lower-cased (Keystone's SQL backend usually compares
//!   names case-insensitively, so `Alice` and `alice` are one target).
//! - IPv4-mapped IPv6 addresses count as IPv4; other IPv6 addresses count by
//!   their /64 network, since one host commonly holds a whole /64.
//! - A request without a known client address is limited by account only.
//! - A limit of 0 disables that limit.
//! - Memory is bounded: expired entries are swept once per window, and each
//!   map holds at most `max_tracked` keys (default 10 000, a few MiB at
//!   most). When a map is full, a new key evicts the one whose latest
//!   failure is oldest (an expired one if there is any), found by one scan.
//!   An attacker who fills the map can so reset someone's counter; doing it
//!   costs `max_tracked` failed logins inside one window, which the
//!   per-address limit spreads over hundreds of addresses.
//! - Accounts can be locked out by others failing on purpose: that is the
//!   price of limiting per account, and it lasts one window at most.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A source of the current time, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real, monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Rate-limit settings from the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Failed logins allowed per account per window (0: unlimited).
    pub max_failures_per_account: u32,
    /// Failed logins allowed per client address per window (0: unlimited).
    pub max_failures_per_ip: u32,
    /// The window, in seconds.
    pub window_secs: u64,
    /// The most accounts, and separately the most addresses, tracked at once.
    pub max_tracked: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window_secs: 60,
            max_tracked: 10_000,
        }
    }
}

/// The key an address is limited by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    /// The /64 network.
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => IpKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Recent failure times per key, oldest first.
struct Failures<K> {
    entries: HashMap<K, VecDeque<Instant>>,
    limit: usize,
}

impl<K: Eq + Hash + Clone> Failures<K> {
    fn new(limit: u32) -> Self {
        Failures {
            entries: HashMap::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// How long `key` stays refused, if it is.
    fn blocked_for(&self, key: &K, now: Instant, window: Duration) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let times = self.entries.get(key)?;
        if times.len() < self.limit {
            return None;
        }
        // The limit-th most recent failure decides: refused until it leaves.
        let decisive = times[times.len() - self.limit];
        match decisive.checked_add(window) {
            Some(until) => (until > now).then(|| until - now),
            // A window beyond the clock's range never ends.
            None => Some(window),
        }
    }

    fn record(&mut self, key: K, now: Instant, max_tracked: usize) {
        if self.limit == 0 || max_tracked == 0 {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= max_tracked {
            // The key whose latest failure is oldest: an expired one if
            // there is any. One scan, only when the map is full.
            let stalest = self
                .entries
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                self.entries.remove(&k);
            }
        }
        let times = self.entries.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.limit {
            times.pop_front();
        }
    }

    /// How many failures of `key` are in the window.
    fn recent(&self, key: &K, now: Instant, window: Duration) -> usize {
        self.entries.get(key).map_or(0, |times| {
            times
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < window)
                .count()
        })
    }

    fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Drops failures older than the window, and keys left with none.
    fn sweep(&mut self, now: Instant, window: Duration) {
        self.entries.retain(|_, times| {
            while times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= window)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
    }
}

struct State {
    accounts: Failures<String>,
    ips: Failures<IpKey>,
    /// Attempts in flight per account and per address (keys with none are
    /// removed).
    pending_accounts: HashMap<String, usize>,
    pending_ips: HashMap<IpKey, usize>,
    last_sweep: Instant,
}

fn release<K: Eq + Hash>(pending: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = pending.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            pending.remove(key);
        }
    }
}

/// Whether a login attempt may go ahead: see [`RateLimiter::begin`].
#[must_use]
pub enum Admission<'a> {
    /// Go ahead, and report how it ended through the [`Attempt`].
    Go(Attempt<'a>),
    /// Refused for this long (for a `Retry-After` header).
    Refused(Duration),
    /// So many attempts are in flight that they could reach the limit: wait
    /// a little and ask again.
    Busy,
}

/// A login attempt in flight. Report its end with [`Attempt::success`] or
/// [`Attempt::failure`]; dropping it (the backend was unavailable, or the
/// request went away) ends it without counting anything.
pub struct Attempt<'a> {
    limiter: &'a RateLimiter,
    account: Option<String>,
    ip: Option<IpKey>,
}

impl Attempt<'_> {
    /// The credentials were right: clears the account's failures.
    pub fn success(self) {
        if let Some(account) = &self.account {
            let now = self.limiter.clock.now();
            self.limiter.state(now).accounts.clear(account);
        }
    }

    /// The credentials were wrong: counts a failure.
    pub fn failure(self) {
        let now = self.limiter.clock.now();
        let max = self.limiter.config.max_tracked;
        let mut state = self.limiter.state(now);
        if let Some(account) = &self.account {
            state.accounts.record(account.clone(), now, max);
        }
        if let Some(ip) = self.ip {
            state.ips.record(ip, now, max);
        }
        // Unlocked before `Drop` locks again.
        drop(state);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let now = self.limiter.clock.now();
        let mut state = self.limiter.state(now);
        if let Some(account) = &self.account {
            release(&mut state.pending_accounts, account);
        }
        if let Some(ip) = &self.ip {
            release(&mut state.pending_ips, ip);
        }
    }
}

/// Counts failed logins and refuses accounts and addresses over the limit.
pub struct RateLimiter {
    config: RateLimitConfig,
    window: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter on the system clock.
    pub fn new(config: RateLimitConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A limiter on the given clock.
    pub fn with_clock(config: RateLimitConfig, clock: Arc<dyn Clock>) -> Self {
        let state = State {
            accounts: Failures::new(config.max_failures_per_account),
            ips: Failures::new(config.max_failures_per_ip),
            pending_accounts: HashMap::new(),
            pending_ips: HashMap::new(),
            last_sweep: clock.now(),
        };
        RateLimiter {
            window: Duration::from_secs(config.window_secs),
            config,
            clock,
            state: Mutex::new(state),
        }
    }

    /// The state, swept of expired entries once per window. A panic while
    /// the lock was held leaves counters that are still consistent, so a
    /// poisoned lock is used as is.
    fn state(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now.saturating_duration_since(state.last_sweep) >= self.window {
            state.accounts.sweep(now, self.window);
            state.ips.sweep(now, self.window);
            state.last_sweep = now;
        }
        state
    }

    /// `None` when a login attempt for `account` from `ip` may go ahead;
    /// otherwise how long until it may (for a `Retry-After` header).
    pub fn retry_after(&self, account: &str, ip: Option<IpAddr>) -> Option<Duration> {
        let now = self.clock.now();
        let state = self.state(now);
        let by_account = state
            .accounts
            .blocked_for(&account.to_lowercase(), now, self.window);
        let by_ip = ip.and_then(|ip| state.ips.blocked_for(&IpKey::from(ip), now, self.window));
        by_account.max(by_ip)
    }

    /// Starts a login attempt for `account` from `ip`: refused while the
    /// account or address is over its limit; busy while its recent failures
    /// plus the attempts in flight reach the limit (so concurrent guesses
    /// cannot all be checked before the first failure is counted).
    pub fn begin(&self, account: &str, ip: Option<IpAddr>) -> Admission<'_> {
        let now = self.clock.now();
        let mut state = self.state(now);
        let account = account.to_lowercase();
        let ip = ip.map(IpKey::from);
        let by_account = state.accounts.blocked_for(&account, now, self.window);
        let by_ip = ip.and_then(|ip| state.ips.blocked_for(&ip, now, self.window));
        if let Some(wait) = by_account.max(by_ip) {
            return Admission::Refused(wait);
        }
        let account_limit = state.accounts.limit;
        let ip_limit = state.ips.limit;
        let account_busy = account_limit > 0
            && state.accounts.recent(&account, now, self.window)
                + state.pending_accounts.get(&account).copied().unwrap_or(0)
                >= account_limit;
        let ip_busy = ip.is_some_and(|ip| {
            ip_limit > 0
                && state.ips.recent(&ip, now, self.window)
                    + state.pending_ips.get(&ip).copied().unwrap_or(0)
                    >= ip_limit
        });
        if account_busy || ip_busy {
            return Admission::Busy;
        }
        let account = (account_limit > 0).then_some(account);
        let ip = ip.filter(|_| ip_limit > 0);
        if let Some(account) = &account {
            *state.pending_accounts.entry(account.clone()).or_default() += 1;
        }
        if let Some(ip) = ip {
            *state.pending_ips.entry(ip).or_default() += 1;
        }
        Admission::Go(Attempt {
            limiter: self,
            account,
            ip,
        })
    }

    /// Whether a login attempt for `account` from `ip` may go ahead.
    pub fn allow(&self, account: &str, ip: Option<IpAddr>) -> bool {
        self.retry_after(account, ip).is_none()
    }

    /// Counts a failed login (wrong credentials; not an unavailable backend).
    pub fn record_failure(&self, account: &str, ip: Option<IpAddr>) {
        let now = self.clock.now();
        let max = self.config.max_tracked;
        let mut state = self.state(now);
        state.accounts.record(account.to_lowercase(), now, max);
        if let Some(ip) = ip {
            state.ips.record(IpKey::from(ip), now, max);
        }
    }

    /// A successful login: clears the account's failures (not the
    /// address's; see the module doc).
    pub fn record_success(&self, account: &str, _ip: Option<IpAddr>) {
        let now = self.clock.now();
        self.state(now).accounts.clear(&account.to_lowercase());
    }

    /// How many accounts and addresses are tracked (for metrics and tests).
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.state(self.clock.now());
        (state.accounts.entries.len(), state.ips.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock tests move by hand.
    struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(ManualClock(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn limiter(config: RateLimitConfig) -> (RateLimiter, Arc<ManualClock>) {
        let clock = ManualClock::new();
        (RateLimiter::with_clock(config, clock.clone()), clock)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn defaults() {
        let c = RateLimitConfig::default();
        assert_eq!(
            (
                c.max_failures_per_account,
                c.max_failures_per_ip,
                c.window_secs
            ),
            (5, 20, 60)
        );
        let parsed: RateLimitConfig =
            serde_json::from_str(r#"{"max_failures_per_account":3}"#).unwrap();
        assert_eq!(parsed.max_failures_per_account, 3);
        assert_eq!(parsed.max_failures_per_ip, 20);
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"max":3}"#).is_err());
    }

    #[test]
    fn account_limit_and_window() {
        let (rl, clock) = limiter(RateLimitConfig::default());
        for i in 0..5 {
            assert!(rl.allow("alice", ip("10.0.0.1")), "attempt {i}");
            rl.record_failure("alice", ip("10.0.0.1"));
            clock.advance(SEC);
        }
        // Five failures in the last minute: refused, from any address.
        assert!(!rl.allow("alice", ip("10.0.0.1")));
        assert!(!rl.allow("alice", ip("192.0.2.7")));
        assert!(!rl.allow("alice", None));
        // Other accounts from the same address are fine.
        assert!(rl.allow("bob", ip("10.0.0.1")));
        // The first failure was at t=0; now t=5s: refused until t=60s.
        assert_eq!(rl.retry_after("alice", None), Some(55 * SEC));
        clock.advance(54 * SEC);
        assert!(!rl.allow("alice", None));
        clock.advance(SEC);
        // Sliding: the oldest failure left, one more attempt is allowed ...
        assert!(rl.allow("alice", None));
        rl.record_failure("alice", None);
        // ... and then refused again until the next oldest leaves.
        assert!(!rl.allow("alice", None));
        clock.advance(SEC);
        assert!(rl.allow("alice", None));
    }

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let config = RateLimitConfig {
            max_failures_per_account: 3,
            window_secs: 10,
            ..RateLimitConfig::default()
        };
        let (rl, clock) = limiter(config);
        let mut failures: Vec<Instant> = Vec::new();
        // A client that tries every 100 ms for a minute.
        for _ in 0..600 {
            if rl.allow("alice", None) {
                rl.record_failure("alice", None);
                failures.push(clock.now());
            }
            clock.advance(Duration::from_millis(100));
        }
        for (i, &t) in failures.iter().enumerate() {
            let in_window = failures[i..]
                .iter()
                .take_while(|&&u| u - t < Duration::from_secs(10))
                .count();
            assert!(in_window <= 3, "{in_window} failures within 10 s");
        }
        assert!(failures.len() >= 18, "let through as windows pass");
    }

    #[test]
    fn ip_limit() {
        let (rl, clock) = limiter(RateLimitConfig::default());
        for i in 0..20 {
            let account = format!("user{i}");
            assert!(rl.allow(&account, ip("198.51.100.9")));
            rl.record_failure(&account, ip("198.51.100.9"));
        }
        // A fresh account from that address is refused; elsewhere fine.
        assert!(!rl.allow("fresh", ip("198.51.100.9")));
        assert!(rl.allow("fresh", ip("198.51.100.10")));
        assert!(rl.allow("fresh", None));
        // IPv4-mapped IPv6 is the same address.
        assert!(!rl.allow("fresh", ip("::ffff:198.51.100.9")));
        clock.advance(60 * SEC);
        assert!(rl.allow("fresh", ip("198.51.100.9")));
    }

    #[test]
    fn ipv6_counts_by_64() {
        let (rl, _clock) = limiter(RateLimitConfig::default());
        for i in 0..20 {
            rl.record_failure(&format!("user{i}"), ip(&format!("2001:db8:1:2::{i:x}")));
        }
        assert!(!rl.allow("fresh", ip("2001:db8:1:2:ffff::1")));
        assert!(rl.allow("fresh", ip("2001:db8:1:3::1")));
    }

    #[test]
    fn accounts_compare_lower_cased() {
        let (rl, _clock) = limiter(RateLimitConfig::default());
        for name in ["alice", "Alice", "ALICE", "aLiCe", "alicE"] {
            rl.record_failure(name, None);
        }
        assert!(!rl.allow("alice", None));
    }

    #[test]
    fn success_clears_the_account_not_the_address() {
        let config = RateLimitConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 4,
            ..RateLimitConfig::default()
        };
        let (rl, _clock) = limiter(config);
        for _ in 0..3 {
            rl.record_failure("alice", ip("10.0.0.1"));
        }
        assert!(!rl.allow("alice", ip("10.0.0.2")));
        // Successes are never limited or counted, and reset the account.
        rl.record_success("alice", ip("10.0.0.2"));
        assert!(rl.allow("alice", ip("10.0.0.2")));
        for _ in 0..100 {
            rl.record_success("bob", ip("10.0.0.1"));
        }
        // The address still has its three failures; one more and it is out.
        assert!(rl.allow("bob", ip("10.0.0.1")));
        rl.record_failure("carol", ip("10.0.0.1"));
        assert!(!rl.allow("bob", ip("10.0.0.1")));
    }

    #[test]
    fn zero_disables_a_limit() {
        let config = RateLimitConfig {
            max_failures_per_account: 0,
            max_failures_per_ip: 0,
            ..RateLimitConfig::default()
        };
        let (rl, _clock) = limiter(config);
        for _ in 0..1000 {
            rl.record_failure("alice", ip("10.0.0.1"));
        }
        assert!(rl.allow("alice", ip("10.0.0.1")));
        assert_eq!(rl.tracked(), (0, 0));
    }

    #[test]
    fn memory_is_bounded() {
        let config = RateLimitConfig {
            max_tracked: 100,
            ..RateLimitConfig::default()
        };
        let (rl, clock) = limiter(config);
        for i in 0..10_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            rl.record_failure(&format!("user{i}"), Some(addr));
            let (accounts, ips) = rl.tracked();
            assert!(accounts <= 100 && ips <= 100);
            if i % 1000 == 0 {
                clock.advance(SEC);
            }
        }
        // Failures per key are capped at the limit.
        for _ in 0..1000 {
            rl.record_failure("mallory", None);
        }
        let len = rl.state(clock.now()).accounts.entries["mallory"].len();
        assert_eq!(len, 5);
        // Everything expires once the window has passed.
        clock.advance(61 * SEC);
        assert_eq!(rl.tracked(), (0, 0));
    }

    #[test]
    fn full_maps_evict_the_stalest_key() {
        let config = RateLimitConfig {
            max_failures_per_account: 2,
            max_tracked: 3,
            ..RateLimitConfig::default()
        };
        let (rl, clock) = limiter(config);
        for name in ["a", "b", "c"] {
            rl.record_failure(name, None);
            clock.advance(SEC);
        }
        rl.record_failure("c", None);
        assert!(!rl.allow("c", None));
        rl.record_failure("d", None);
        // "a" (latest failure oldest) went; "c" is still refused.
        let state = rl.state(clock.now());
        assert!(!state.accounts.entries.contains_key("a"));
        assert_eq!(state.accounts.entries.len(), 3);
        drop(state);
        assert!(!rl.allow("c", None));
    }

    fn go<'a>(rl: &'a RateLimiter, account: &str, from: Option<IpAddr>) -> Attempt<'a> {
        match rl.begin(account, from) {
            Admission::Go(a) => a,
            Admission::Refused(d) => panic!("refused for {d:?}"),
            Admission::Busy => panic!("busy"),
        }
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let (rl, clock) = limiter(RateLimitConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 5,
            ..RateLimitConfig::default()
        });
        let a = ip("10.0.0.1");
        // Three guesses in flight at once: a fourth must wait.
        let first = go(&rl, "alice", a);
        let second = go(&rl, "Alice", a);
        let third = go(&rl, "alice", a);
        assert!(matches!(rl.begin("alice", a), Admission::Busy));
        // Another account from the address is fine up to its limit.
        let other = go(&rl, "bob", a);
        let other2 = go(&rl, "carol", a);
        assert!(matches!(rl.begin("dave", a), Admission::Busy));
        drop(other2); // e.g. the backend was unavailable: nothing counted
        other.success();
        // One failure and one success: the account was cleared.
        first.failure();
        second.success();
        assert_eq!(rl.tracked().0, 0);
        third.failure();
        // One failure and nothing in flight: two more may go at once.
        let x = go(&rl, "alice", a);
        let y = go(&rl, "alice", a);
        assert!(matches!(rl.begin("alice", a), Admission::Busy));
        x.failure();
        y.failure();
        // Three failures: refused, for the window.
        match rl.begin("alice", ip("192.0.2.1")) {
            Admission::Refused(d) => assert!(d <= Duration::from_secs(60)),
            _ => panic!("not refused"),
        }
        clock.advance(Duration::from_secs(61));
        go(&rl, "alice", a).success();
        // Limits of 0 track nothing in flight.
        let (unlimited, _) = limiter(RateLimitConfig {
            max_failures_per_account: 0,
            max_failures_per_ip: 0,
            ..RateLimitConfig::default()
        });
        let held: Vec<_> = (0..100).map(|_| go(&unlimited, "alice", a)).collect();
        drop(held);
    }

    #[test]
    fn thread_safe() {
        let config = RateLimitConfig {
            max_failures_per_account: 1000,
            max_failures_per_ip: 0,
            ..RateLimitConfig::default()
        };
        let rl = Arc::new(RateLimiter::new(config));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    for _ in 0..125 {
                        rl.record_failure("shared", None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!rl.allow("shared", None), "all 1000 failures counted");
    }
}
