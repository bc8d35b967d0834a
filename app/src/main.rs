//! `app`: loads the configuration, serves until SIGTERM/SIGINT, drains, exits.
//! `app healthcheck`: exits 0 when this instance's `/readyz` answers 2xx.

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
    // `app healthcheck`: probe this container's own readiness (for Docker).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let target = shared::healthcheck::local_target(config.server.listen);
        return shared::healthcheck::exit_code(target, "/readyz");
    }
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
