//! A gateway run as its own process, as operators run it, with a JSON log
//! on stderr captured in a file: for what only a process shows (the log,
//! signals, exit codes).

use super::upstream::{Replica, addrs};
use super::{config_text, dev_cert, upstream_text};
use std::process::Command;
use std::time::{Duration, Instant};

/// The gateway binary built for these tests.
pub fn gateway_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

/// A gateway process with a JSON access log (`DIR/access.log`), plain HTTP
/// proxied on a port fixed in its config file (`DIR/live.toml`).
pub struct LoggedGateway {
    child: std::process::Child,
    /// Its configuration text.
    pub config: String,
    port: u16,
    admin_port: u16,
}

impl LoggedGateway {
    /// Starts one in front of `rs` with `rest` (upstream tables excluded)
    /// appended to its config, and waits until it answers.
    pub async fn start(dir: &std::path::Path, rs: &[Replica], rest: &str) -> Self {
        Self::start_with_routes(dir, rs, &["/"], rest).await
    }

    /// The same with only `prefixes` routed (`/whoami` must be one of them:
    /// it tells when the gateway is up).
    pub async fn start_with_routes(dir: &std::path::Path, rs: &[Replica], prefixes: &[&str], rest: &str) -> Self {
        dev_cert(dir);
        let mut tables = upstream_text(&addrs(rs), "");
        let catch_all = "[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
        let routes: String = prefixes
            .iter()
            .map(|p| format!("[[routes]]\npath_prefix = \"{p}\"\nupstream = \"app\"\n"))
            .collect();
        tables = tables.replace(catch_all, &routes);
        // Two ports free at once (both listeners held until both are known),
        // below the ephemeral range so that no other test's connection or
        // port-0 listener takes one before the gateway binds it.
        let (port, admin_port) = {
            let a = super::ports::restartable_listener();
            let b = super::ports::restartable_listener();
            (
                a.local_addr().expect("addr").port(),
                b.local_addr().expect("addr").port(),
            )
        };
        let config = config_text(dir, "http_mode = \"proxy\"", &format!("{tables}\n{rest}"))
            .replace("http = \"127.0.0.1:0\"", &format!("http = \"127.0.0.1:{port}\""))
            .replace(
                "admin = \"127.0.0.1:0\"",
                &format!("admin = \"127.0.0.1:{admin_port}\""),
            )
            + "\n[log]\nformat = \"json\"\n";
        std::fs::write(dir.join("live.toml"), &config).expect("write");
        let child = gateway_bin()
            .args(["--config"])
            .arg(dir.join("live.toml"))
            .stderr(std::fs::File::create(dir.join("access.log")).expect("log file"))
            .spawn()
            .expect("spawns");
        let gateway = Self {
            child,
            config,
            port,
            admin_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::get(gateway.url("/whoami")).await.is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    /// `http://127.0.0.1:PORT/PATH` on its proxying listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The same on its admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Stops it with SIGTERM (which flushes the log) and checks it exits 0.
    pub fn stop(mut self) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .expect("kill")
                .success()
        );
        assert!(self.child.wait().expect("exits").success());
    }
}

impl Drop for LoggedGateway {
    /// A test that failed before `stop` must not leave the process behind
    /// (it would hold the test's output pipe open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The access-log lines in `DIR/access.log` for requests to `path`.
pub fn access_lines(dir: &std::path::Path, path: &str) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(dir.join("access.log")).expect("log");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access" && v["path"] == path)
        .collect()
}
