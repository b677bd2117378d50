//! Refresh tokens: long-lived secrets a client (docker login, with
//! `offline_token=true` or `access_type=offline`) trades for new access
//! tokens without sending the password again.
//!
//! A refresh token is 32 random bytes, hex-encoded behind a `berth-rt-`
//! prefix. berth keeps only its SHA-256: the record lives in
//! `<dir>/<sha256-hex>.json`, written durably (temp file, fsync, rename,
//! fsync dir), so a standby on the same replicated filesystem honours the
//! tokens the active issued. A refresh re-checks the user with the identity
//! backend: a disabled user or a removed role stops working at once.
//!
//! Only password logins get refresh tokens; an application credential's
//! holder has its secret and logs in with it again.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "berth-rt-";

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("refresh token storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("refresh token record is corrupt: {0}")]
    Corrupt(String),
    #[error("no randomness available")]
    Random,
}

/// What a refresh token stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub user_id: String,
    pub username: String,
    pub domain: String,
    /// The `client_id` the token was issued to; a refresh must present it.
    pub client_id: String,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
}

/// Refresh tokens stored under a directory.
#[derive(Debug)]
pub struct RefreshStore {
    dir: PathBuf,
    lifetime: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl RefreshStore {
    pub fn open(dir: impl Into<PathBuf>, lifetime: Duration) -> Result<Self, RefreshError> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("tmp"))?;
        Ok(RefreshStore { dir, lifetime })
    }

    /// The record's file for a token, if the token has the right shape.
    fn path_of(&self, token: &str) -> Option<PathBuf> {
        let secret = token.strip_prefix(PREFIX)?;
        let ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| {
            let hash = digest::digest(&digest::SHA256, secret.as_bytes());
            self.dir
                .join(format!("{}.json", hex::encode(hash.as_ref())))
        })
    }

    /// Issues a new refresh token for `user`.
    pub fn issue(
        &self,
        user_id: &str,
        username: &str,
        domain: &str,
        client_id: &str,
    ) -> Result<String, RefreshError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| RefreshError::Random)?;
        let token = format!("{PREFIX}{}", hex::encode(raw));
        let created = now_secs();
        let record = RefreshRecord {
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            domain: domain.to_owned(),
            client_id: client_id.to_owned(),
            created,
            expires: created + self.lifetime.as_secs(),
        };
        let path = self
            .path_of(&token)
            .ok_or_else(|| RefreshError::Corrupt("generated token has a bad shape".into()))?;
        let json = serde_json::to_vec(&record).map_err(|e| RefreshError::Corrupt(e.to_string()))?;
        let tmp = self.dir.join("tmp").join(hex::encode(&raw[..8]));
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.dir)?;
        Ok(token)
    }

    /// The record of a valid, unexpired token presented by `client_id`.
    pub fn redeem(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<Option<RefreshRecord>, RefreshError> {
        let Some(path) = self.path_of(token) else {
            return Ok(None);
        };
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record: RefreshRecord =
            serde_json::from_slice(&raw).map_err(|e| RefreshError::Corrupt(e.to_string()))?;
        if record.expires <= now_secs() {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        if record.client_id != client_id {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Forgets a token (e.g. its user is gone).
    pub fn revoke(&self, token: &str) -> Result<bool, RefreshError> {
        let Some(path) = self.path_of(token) else {
            return Ok(false);
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                fsync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes expired records; returns how many.
    pub fn purge_expired(&self) -> Result<usize, RefreshError> {
        let now = now_secs();
        let mut n = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let expired = fs::read(&path)
                .ok()
                .and_then(|raw| serde_json::from_slice::<RefreshRecord>(&raw).ok())
                .is_none_or(|r| r.expires <= now);
            if expired && fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_redeem_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = RefreshStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let t = store.issue("uid", "alice", "Default", "docker").unwrap();
        assert!(t.starts_with(PREFIX));
        let r = store.redeem(&t, "docker").unwrap().unwrap();
        assert_eq!((r.user_id.as_str(), r.username.as_str()), ("uid", "alice"));
        assert!(store.redeem(&t, "other-client").unwrap().is_none());
        assert!(store.redeem("berth-rt-00", "docker").unwrap().is_none());
        assert!(
            store
                .redeem("../../etc/passwd", "docker")
                .unwrap()
                .is_none()
        );
        // Only the hash is stored: the secret appears in no file.
        for e in fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let content = fs::read_to_string(&p).unwrap();
                assert!(!content.contains(&t[PREFIX.len()..]));
                assert!(!p.to_string_lossy().contains(&t[PREFIX.len()..]));
            }
        }
        // A second store on the same directory (a standby) honours it.
        let other = RefreshStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert!(other.redeem(&t, "docker").unwrap().is_some());
        assert!(store.revoke(&t).unwrap());
        assert!(other.redeem(&t, "docker").unwrap().is_none());
    }

    #[test]
    fn expired_tokens_are_refused_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = RefreshStore::open(dir.path(), Duration::from_secs(0)).unwrap();
        let t = store.issue("uid", "alice", "Default", "docker").unwrap();
        let t2 = store.issue("uid", "alice", "Default", "docker").unwrap();
        assert!(store.redeem(&t, "docker").unwrap().is_none());
        assert_eq!(store.purge_expired().unwrap(), 1);
        assert!(store.redeem(&t2, "docker").unwrap().is_none());
    }
}
