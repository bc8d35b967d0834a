//! The gateway's TOML configuration: typed, defaulted, validated once.
//!
//! Contract: [`GatewayConfig::load`] reads one file; unknown keys, wrong
//! types and broken rules are all reported together (with the file and the
//! dotted key), and nothing is bound before the whole file is valid. Every
//! key and its default is listed in the README.
//!
//! Where things are: `schema` holds the typed keys, their defaults and
//! each key's contract (its doc comment); `rate` the `"20r/s"` rate type;
//! `validate` the rules a parsed file must also keep. Reading the file and
//! its parse errors (with line numbers) are `shared::config`'s; this module
//! calls it and re-exports every item, so paths stay `crate::config::X`.

mod rate;
mod schema;
mod validate;

pub use rate::{Rate, RateUnit};
pub use schema::{
    Balance, ClientIpSettings, GatewayConfig, HealthSettings, HttpMode, Limits, LogSettings, PolicySettings,
    RateLimitSettings, RouteSettings, RuleSettings, ServerSettings, SharedSettings, TlsSettings, UpstreamSettings,
};

use std::path::Path;

impl GatewayConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, shared::ConfigError> {
        shared::config::load(&shared::Sources::default().with_file(path), &[])
    }
}
