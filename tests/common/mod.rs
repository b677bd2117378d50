//! Shared fixtures for the end-to-end tests: each starts real processes on
//! loopback and stops them, by PID, when dropped.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

pub mod berth;
pub mod clients;
pub mod distribution;
pub mod keystone;
pub mod pull_secret;
pub mod rng;
