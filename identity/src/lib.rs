//! berth's identity service: authenticates users against OpenStack Keystone,
//! maps users and projects to registry namespaces and issues Docker
//! token-authentication JWTs.
//!
//! Not built yet: the registry core runs with `--auth none` until this crate
//! provides the token service (see the project's issues).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
