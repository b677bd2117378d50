//! Successful checks, remembered for a short time under a keyed hash of the
//! credentials (HMAC-SHA256 with a per-process random key): the cache never
//! holds a password or secret, and its keys are worthless outside this
//! process. Failed checks are never stored. Shared by the backends that
//! check secrets (Keystone, the local users file).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;

use crate::authn::Identity;

/// An HMAC-SHA256 tag: the cache key.
pub(crate) type CacheKey = [u8; 32];

pub(crate) struct Cache {
    hmac: hmac::Key,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<CacheKey, (Instant, Identity)>>,
}

impl Cache {
    /// A cache with a fresh random key. Fails only when the system's random
    /// source does.
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> Result<Cache, ()> {
        let hmac = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).map_err(|_| ())?;
        Ok(Cache {
            hmac,
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The key for credentials of `kind` for `account` with `secret`. Each
    /// part is length-prefixed, so no two different triples share an input.
    pub(crate) fn key(&self, kind: &str, account: &str, secret: &str) -> CacheKey {
        let mut ctx = hmac::Context::with_key(&self.hmac);
        for part in [kind, account, secret] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The identity stored under `key`, unless its entry has ended.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Identity> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((expires, identity)) if Instant::now() < *expires => Some(identity.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a successful check for the cache's lifetime. When full
    /// (after dropping ended entries), the new entry is not stored: memory
    /// stays bounded whatever the traffic.
    pub(crate) fn insert(&self, key: CacheKey, identity: Identity) {
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| now < *expires);
            if entries.len() >= self.max_entries {
                tracing::warn!(
                    max_entries = self.max_entries,
                    "authentication cache full; not caching"
                );
                return;
            }
        }
        entries.insert(key, (now + self.ttl, identity));
    }

    /// Forgets every entry (the backend's source changed: a removed user or
    /// a new password must not keep working from the cache).
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Method;

    fn identity(name: &str) -> Identity {
        Identity {
            user_id: format!("id-{name}"),
            username: name.into(),
            domain: "Default".into(),
            method: Method::Password,
            projects: vec![],
            admin: false,
        }
    }

    #[test]
    fn keys_depend_on_every_part_and_on_the_process_key() {
        let a = Cache::new(Duration::from_secs(60), 10).unwrap();
        let b = Cache::new(Duration::from_secs(60), 10).unwrap();
        let k = a.key("password", "alice@default", "pw");
        assert_eq!(k, a.key("password", "alice@default", "pw"));
        assert_ne!(k, b.key("password", "alice@default", "pw"), "random key");
        assert_ne!(k, a.key("password", "alice@default", "pw2"));
        assert_ne!(k, a.key("password", "bob@default", "pw"));
        assert_ne!(k, a.key("application_credential", "alice@default", "pw"));
        // Length prefixes: moving bytes between parts changes the key.
        assert_ne!(a.key("p", "ab", "c"), a.key("p", "a", "bc"));
        // The key is no plain digest of the secret.
        let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"pw");
        assert_ne!(&k[..], plain.as_ref());
    }

    #[test]
    fn entries_end_after_the_ttl() {
        let c = Cache::new(Duration::from_millis(50), 10).unwrap();
        let k = c.key("password", "alice", "pw");
        c.insert(k, identity("alice"));
        assert_eq!(c.get(&k).map(|i| i.username), Some("alice".into()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.get(&k).is_none());
        assert_eq!(c.len(), 0, "ended entries are dropped");
    }

    #[test]
    fn bounded() {
        let c = Cache::new(Duration::from_secs(60), 2).unwrap();
        for n in ["a", "b", "c"] {
            c.insert(c.key("password", n, "pw"), identity(n));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&c.key("password", "c", "pw")).is_none());
        // Replacing an existing entry still works when full.
        c.insert(c.key("password", "a", "pw"), identity("a"));
        assert!(c.get(&c.key("password", "a", "pw")).is_some());
    }

    #[test]
    fn clear_forgets_everything() {
        let c = Cache::new(Duration::from_secs(60), 10).unwrap();
        let k = c.key("password", "a", "pw");
        c.insert(k, identity("a"));
        c.clear();
        assert!(c.get(&k).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn zero_ttl_disables() {
        let c = Cache::new(Duration::ZERO, 10).unwrap();
        let k = c.key("password", "a", "pw");
        c.insert(k, identity("a"));
        assert!(c.get(&k).is_none());
    }
}
