//! Authentication: turning credentials into an [`Identity`]. Each backend
//! implements [`Authenticator`]:
//!
//! - [`keystone`]: OpenStack Keystone checks the passwords and application
//!   credentials; berth stores no Keystone password.
//! - [`local`]: the embedded default when no Keystone is configured, a
//!   users file with bcrypt hashes (managed with `berth users`).
//! - Later OIDC.
//!
//! Successful checks are cached under a keyed hash of the credentials
//! (`cache`), never the secrets themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub(crate) mod cache;
pub mod keystone;
pub mod local;

/// Credentials as a client presents them (HTTP Basic on `/token`).
#[derive(Clone)]
pub enum Credentials {
    /// A user's password. `domain` is set when the username was `name@domain`.
    Password {
        username: String,
        domain: Option<String>,
        password: String,
    },
    /// A Keystone application credential: username
    /// `applicationcredential-<id>`, password the secret.
    ApplicationCredential { id: String, secret: String },
}

impl Credentials {
    /// Interprets a Basic-auth username and password.
    pub fn from_basic(username: &str, password: &str) -> Credentials {
        if let Some(id) = username.strip_prefix("applicationcredential-") {
            return Credentials::ApplicationCredential {
                id: id.to_owned(),
                secret: password.to_owned(),
            };
        }
        let (name, domain) = match username.rsplit_once('@') {
            Some((n, d)) if !n.is_empty() && !d.is_empty() => (n, Some(d.to_owned())),
            _ => (username, None),
        };
        Credentials::Password {
            username: name.to_owned(),
            domain,
            password: password.to_owned(),
        }
    }

    /// The account name, for rate limiting and the audit log (never the secret).
    pub fn account(&self) -> String {
        match self {
            Credentials::Password {
                username, domain, ..
            } => match domain {
                Some(d) => format!("{username}@{d}"),
                None => username.clone(),
            },
            Credentials::ApplicationCredential { id, .. } => format!("applicationcredential-{id}"),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.account())
    }
}

/// How an identity authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Password,
    /// Limited to the credential's project and roles.
    ApplicationCredential {
        id: String,
    },
    /// A refresh token issued by berth earlier.
    RefreshToken,
}

/// A Keystone project and the roles the identity holds on it (implied
/// roles included: `admin` implies `member` implies `reader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectRoles {
    pub id: String,
    pub name: String,
    pub roles: BTreeSet<String>,
}

/// A Keystone project as the namespace policy sees it: its tags carry the
/// sharing rules (`registry-public`, `registry-pull=<other project>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectInfo {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
}

/// Every project, keyed by its name as Keystone has it (the policy compares
/// names lower-cased).
pub type ProjectDirectory = BTreeMap<String, ProjectInfo>;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// The user's name as Keystone has it.
    pub username: String,
    pub domain: String,
    pub method: Method,
    /// Projects this login may act for, with their roles. For an
    /// application credential: its project and its roles only.
    pub projects: Vec<ProjectRoles>,
    /// Registry administrator (Keystone `admin` on the admin project, or
    /// named in configuration).
    pub admin: bool,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// Wrong credentials, unknown, disabled or expired account.
    #[error("invalid credentials")]
    Invalid,
    /// The backend could not be reached or did not answer in time.
    #[error("identity backend unavailable: {0}")]
    Unavailable(String),
}

pub type AuthnFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthnError>> + Send + 'a>>;

/// A source of identities.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_usernames() {
        match Credentials::from_basic("alice@corp", "pw") {
            Credentials::Password {
                username, domain, ..
            } => assert_eq!(
                (username.as_str(), domain.as_deref()),
                ("alice", Some("corp"))
            ),
            other => panic!("{other:?}"),
        }
        match Credentials::from_basic("applicationcredential-abc123", "s") {
            Credentials::ApplicationCredential { id, secret } => {
                assert_eq!((id.as_str(), secret.as_str()), ("abc123", "s"))
            }
            other => panic!("{other:?}"),
        }
        let c = Credentials::from_basic("bob", "hunter2");
        assert_eq!(c.account(), "bob");
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "secrets never in Debug"
        );
    }
}
