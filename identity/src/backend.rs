//! What the token endpoint needs from an identity backend, beyond checking
//! credentials: re-checking a user for a refresh token, and the project
//! directory the policy decides namespaces with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::authn::{AuthnError, AuthnFuture, Credentials, ProjectDirectory};

pub type ProjectsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<ProjectDirectory>, AuthnError>> + Send + 'a>>;

/// An identity backend as the token endpoint uses it.
pub trait Backend: Send + Sync + 'static {
    /// Checks credentials.
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a>;
    /// The current identity of a user who logged in with a password before
    /// (refresh tokens): `Invalid` if the user is gone or disabled.
    fn reauthorize<'a>(&'a self, user_id: &'a str) -> AuthnFuture<'a>;
    /// Every project with its tags. Implementations cache it, and must fail
    /// (never answer empty) when they cannot tell: an empty directory would
    /// hand a project's namespace to a user of the same name.
    fn projects(&self) -> ProjectsFuture<'_>;
}

impl Backend for crate::authn::keystone::KeystoneAuthenticator {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a> {
        crate::authn::Authenticator::authenticate(self, credentials)
    }

    fn reauthorize<'a>(&'a self, user_id: &'a str) -> AuthnFuture<'a> {
        Box::pin(crate::authn::keystone::KeystoneAuthenticator::reauthorize(
            self, user_id,
        ))
    }

    fn projects(&self) -> ProjectsFuture<'_> {
        Box::pin(crate::authn::keystone::KeystoneAuthenticator::projects(
            self,
        ))
    }
}

impl Backend for crate::authn::local::LocalUsers {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a> {
        Box::pin(crate::authn::local::LocalUsers::authenticate(
            self,
            credentials,
        ))
    }

    fn reauthorize<'a>(&'a self, user_id: &'a str) -> AuthnFuture<'a> {
        Box::pin(crate::authn::local::LocalUsers::reauthorize(self, user_id))
    }

    fn projects(&self) -> ProjectsFuture<'_> {
        Box::pin(crate::authn::local::LocalUsers::projects(self))
    }
}
