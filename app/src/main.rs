//! `app`: loads the configuration, serves until SIGTERM/SIGINT, drains, exits.
//! `app healthcheck`: exits 0 when this instance's `/healthz` answers 2xx:
//! liveness, the process serves. This is the container healthcheck: a
//! MongoDB outage must not get every replica killed and restarted (readiness
//! would fail on all of them at once, a restart storm that fixes nothing).
//! `app healthcheck --ready`: exits 0 when `/readyz` answers 2xx (the store
//! answers and the app is not draining); the gateway's active health checks
//! probe `/readyz` themselves to take unready replicas out of rotation.

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
    // `app healthcheck [--ready]`: probe this container's own liveness
    // (for Docker) or readiness.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("healthcheck") {
        let path = match args.get(1..).unwrap_or_default() {
            [] => "/healthz",
            [flag] if flag == "--ready" => "/readyz",
            _ => {
                eprintln!("usage: app healthcheck [--ready]");
                return ExitCode::from(2);
            }
        };
        let target = shared::healthcheck::local_target(config.server.listen);
        return shared::healthcheck::exit_code(target, path);
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
