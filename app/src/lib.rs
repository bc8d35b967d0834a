//! The configs JSON API (see `docs/API.md` and
//! the README): named JSON configs on MongoDB or an embedded SQLite store,
//! a Redis read cache, health, readiness, version and Prometheus metrics.
//!
//! The library is the product; `main` only loads the config and calls
//! [`startup::Application`], which the tests call too.

pub mod cache;
pub mod config;
pub mod domain;
pub mod errors;
pub mod imports;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod startup;
pub mod state;
pub mod store;
