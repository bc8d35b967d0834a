//! What every binary of the workspace does the same way.
//!
//! - [`config`]: a typed configuration loaded from a TOML file, then environment
//!   variables, then `*_FILE` secret files, with every problem reported at once.
//! - [`secret`]: a wrapper that keeps secret values out of `Debug` and logs.
//! - [`telemetry`]: the one tracing-subscriber setup (text or JSON).
//! - [`healthcheck`]: the `healthcheck` subcommand's probe (images carry no curl).
//! - [`request_id`]: the request id rule shared by gateway and app.
//! - [`shutdown`]: the stop signal, the token handed to every task, and the drain.

pub mod config;
pub mod healthcheck;
pub mod request_id;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, EnvBinding, Problem, Sources, Validate};
pub use secret::Secret;
