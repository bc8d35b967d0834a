//! `app`: loads the configuration, serves until SIGTERM/SIGINT, drains, exits.
//! `app healthcheck`: exits 0 when this instance's `/healthz` answers 2xx:
//! liveness, the process serves. This is the container healthcheck: a
//! MongoDB outage must not get every replica killed and restarted (readiness
//! would fail on all of them at once, a restart storm that fixes nothing).
//! `app healthcheck --ready`: exits 0 when `/readyz` answers 2xx (the store
//! answers and the app is not draining); the gateway's active health checks
//! probe `/readyz` themselves to take unready replicas out of rotation.
//! `app healthcheck --admin`: exits 0 when the admin listener's `/healthz`
//! answers (the healthcheck of `app worker`, which has no API listener).
//! `app worker`: import workers only (see `app::imports`), for a separate
//! service that scales apart from the API.

use app::config::AppConfig;
use app::startup::{Application, Role};
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
        let (listen, path) = match args.get(1..).unwrap_or_default() {
            [] => (config.server.listen, "/healthz"),
            [flag] if flag == "--ready" => (config.server.listen, "/readyz"),
            [flag] if flag == "--admin" => (config.server.admin_listen, "/healthz"),
            _ => {
                eprintln!("usage: app healthcheck [--ready | --admin]");
                return ExitCode::from(2);
            }
        };
        let target = shared::healthcheck::local_target(listen);
        return shared::healthcheck::exit_code(target, path);
    }
    let role = match args.first().map(String::as_str) {
        None => Role::Api,
        Some("worker") if args.len() == 1 => Role::Worker,
        Some(_) => {
            eprintln!("usage: app [worker | healthcheck [--ready | --admin]]");
            return ExitCode::from(2);
        }
    };
    let _log_guard = shared::telemetry::init(config.log.format);
    let app = match Application::build_as(config, role).await {
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
