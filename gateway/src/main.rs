//! `gateway`: run (`--config PATH`), validate (`--check-config`, like
//! `nginx -t`), make a development certificate (`gen-cert`), replay an
//! access log against proposed limits (`replay`), probe itself (`healthcheck`:
//! liveness; `healthcheck --ready`: readiness).

use clap::{Parser, Subcommand};
use gateway::config::GatewayConfig;
use gateway::startup::Gateway;
use shared::shutdown::{self, CancellationToken};
use std::path::PathBuf;
use std::process::ExitCode;

// A proxy allocates and frees small buffers on every request; mimalloc's
// thread-local free lists cost less than glibc's arenas there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "gateway", about = "TLS edge proxy with a per-client rate limiter")]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    /// Validate the configuration, print every problem, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when this gateway's admin `/healthz` answers 2xx: liveness,
    /// the container healthcheck. It does not ask for a healthy upstream:
    /// with every replica out (a store outage makes them all unready), a
    /// readiness healthcheck would get the gateway killed and restarted in
    /// a loop, dropping every connection at the edge and fixing nothing.
    Healthcheck {
        /// Probe `/readyz` instead (not draining and an upstream replica
        /// available): for an external load balancer's checks or scripts.
        #[arg(long)]
        ready: bool,
    },
    /// Replay a JSON access log against a proposed configuration's rate
    /// limits and report which clients would be limited or delayed.
    Replay {
        /// The gateway's JSON access log (`log.format = "json"`).
        #[arg(long)]
        log: PathBuf,
    },
    /// Write a self-signed development certificate (never for production).
    GenCert {
        /// Directory for cert.pem and key.pem.
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Names the certificate is valid for.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<String>,
    },
}

// The control runtime (admin listener, reloads, health checks, signals)
// needs one thread; requests are served by the workers' own runtimes.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenCert { out, names }) = cli.command {
        return match gateway::tls::write_self_signed(&out, &names) {
            Ok(()) => {
                println!(
                    "wrote {0}/cert.pem and {0}/key.pem for {1}",
                    out.display(),
                    names.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match GatewayConfig::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Healthcheck { ready }) = &cli.command {
        let target = shared::healthcheck::local_target(config.server.admin);
        return shared::healthcheck::exit_code(target, if *ready { "/readyz" } else { "/healthz" });
    }
    if let Some(Command::Replay { log }) = &cli.command {
        let report =
            std::fs::File::open(log).and_then(|f| gateway::replay::replay(&config, std::io::BufReader::new(f)));
        return match report {
            Ok(report) => {
                print!("{}", report.render());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway: cannot read {}: {e}", log.display());
                ExitCode::FAILURE
            }
        };
    }
    if cli.check_config {
        println!("gateway: configuration {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let _log_guard = shared::telemetry::init(config.log.format);
    let gateway = match Gateway::from_file(&cli.config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on(shutdown::signal(), stop.clone());
    match gateway.run_until_stopped(stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
