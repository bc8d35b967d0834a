//! `app`: loads the configuration, serves until SIGTERM/SIGINT, drains, exits.

use app::config::AppConfig;
use app::startup::Application;
use shared::shutdown::{self, CancellationToken};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match AppConfig::from_process() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("app: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = shared::telemetry::init(config.log.format);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on(shutdown::signal(), stop.clone());
    match app.run_until_stopped(stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}
