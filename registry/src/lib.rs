//! berth's registry: the OCI Distribution v1.1 HTTP API over a pluggable,
//! crash-safe store.
//!
//! Layers point one way: [`api`] (HTTP edge, axum) calls [`service`]
//! (registry logic, no HTTP types), which calls a [`storage::Store`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod auth;
pub mod digest;
pub mod gc;
pub mod manifest;
pub mod name;
pub mod service;
pub mod storage;

pub use api::token::{KeyRefetch, Realm, TokenAuth};
pub use api::{router, router_with_auth};
pub use service::{Registry, RegistryConfig};
