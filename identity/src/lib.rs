//! berth's identity service: authenticates users against OpenStack Keystone
//! or a local users file, maps users and projects to registry namespaces and
//! issues Docker token-authentication JWTs, publishing its keys as JWKS.
//!
//! - [`authn`]: who is asking ([`authn::Identity`]), behind the
//!   [`authn::Authenticator`] trait: Keystone ([`authn::keystone`]), or the
//!   local users file with bcrypt hashes ([`authn::local`]), the embedded
//!   default when no Keystone is configured.
//! - [`policy`]: what an identity may do where. Pure, no I/O.
//! - [`keys`] / [`token`]: signing keys, rotation, JWKS and the certificate
//!   bundle; JWT issuance.
//! - [`http`]: the `/token` endpoint (GET and OAuth2 POST), JWKS, health;
//!   [`backend`] is what it needs from an identity backend.
//! - [`refresh`], [`ratelimit`], [`audit`]: refresh tokens, failed-login
//!   limits, the audit log.
//! - [`openstack`], [`pull_secret`]: the client side, with the caller's own
//!   OpenStack credentials (`clouds.yaml`, `OS_*`): pull-only application
//!   credentials and the Kubernetes Secrets that carry them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod authn;
pub mod backend;
mod durable;
pub mod http;
pub mod keys;
pub mod openstack;
mod percent;
pub mod policy;
pub mod pull_secret;
pub mod ratelimit;
pub mod refresh;
pub mod token;
