//! Test helpers: upstream replicas and gateways on port 0, generated
//! certificates, and clients that trust them. Every test builds its own.
#![allow(dead_code)]

pub mod logged;
#[path = "../../../app/tests/common/ports.rs"]
pub mod ports;
pub mod raw;
pub mod upstream;

use gateway::config::GatewayConfig;
use gateway::startup::Gateway;
use shared::shutdown::CancellationToken;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::task::JoinHandle;

/// A running gateway.
#[derive(Debug)]
pub struct TestGateway {
    /// HTTPS listener.
    pub https: Option<SocketAddr>,
    /// HTTP listener.
    pub http: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The development certificate it serves.
    pub cert_pem: String,
    /// Directory holding its files.
    pub dir: tempfile::TempDir,
    /// Reloads its configuration file.
    pub reloader: std::sync::Arc<gateway::reload::Reloader>,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Writes a certificate for `localhost` into `dir`; returns its PEM.
pub fn dev_cert(dir: &std::path::Path) -> String {
    gateway::tls::write_self_signed(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certificate");
    std::fs::read_to_string(dir.join("cert.pem")).expect("read cert")
}

/// The `[server]` and `[tls]` tables of a test gateway on port 0, followed
/// by `rest` (upstreams, routes, limits...). Unless `rest` defines rate-limit
/// policies, the gateway gets none, so tests of proxying are not throttled.
pub fn config_text(dir: &std::path::Path, server_extra: &str, rest: &str) -> String {
    let no_limits = if rest.contains("[rate_limits") {
        ""
    } else {
        "\n[rate_limits]\n"
    };
    format!(
        r#"
[server]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
shutdown_grace = "5s"
{server_extra}

[tls]
cert = "{cert}"
key = "{key}"

{rest}
{no_limits}
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

/// An upstream table named `app` over `addrs`, plus a catch-all route.
pub fn upstream_text(addrs: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[upstreams.app]
servers = [{}]
{extra}

[[routes]]
path_prefix = "/"
upstream = "app"
"#,
        servers.join(", ")
    )
}

/// Starts a gateway from a configuration text (see [`config_text`]).
pub async fn spawn_gateway(dir: tempfile::TempDir, text: &str) -> TestGateway {
    shared::telemetry::init_for_tests();
    let path: PathBuf = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    if let Err(e) = GatewayConfig::load(&path) {
        panic!("test config invalid: {e}");
    }
    let gateway = Gateway::from_file(&path).await.expect("gateway builds");
    let reloader = gateway.reloader();
    let (https, http, admin) = (gateway.https_addr(), gateway.http_addr(), gateway.admin_addr());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(gateway.run_until_stopped(stop.clone()));
    let cert_pem = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap_or_default();
    TestGateway {
        https,
        http,
        admin,
        cert_pem,
        dir,
        reloader,
        stop,
        handle,
    }
}

/// A gateway with a fresh certificate in front of `addrs`; `upstream_extra`
/// goes into `[upstreams.app]`, `rest` after it (limits, more tables).
pub async fn gateway_for(addrs: &[SocketAddr], upstream_extra: &str, rest: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let text = config_text(
        dir.path(),
        "",
        &format!("{}\n{rest}", upstream_text(addrs, upstream_extra)),
    );
    spawn_gateway(dir, &text).await
}

/// A committed configuration file (path from the repository root), copied
/// into a temporary directory with its certificate paths (Swarm secrets or
/// the local dev pair) pointing at a freshly generated pair; returns the
/// directory (keep it alive) and the copy's path.
pub fn committed_config(file: &str) -> (tempfile::TempDir, PathBuf) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(file)).expect("committed file");
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let text = text
        .replace("/run/secrets/tls_cert", &cert)
        .replace("/run/secrets/tls_key", &key)
        .replace("certs/dev/cert.pem", &cert)
        .replace("certs/dev/key.pem", &key);
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

/// A gateway whose plain-HTTP listener proxies (so tests can send raw
/// bytes and bind client addresses) in front of `addrs`, with `rest`
/// (limits, rate limits, client_ip...) after the upstream and route.
pub async fn http_gateway(addrs: &[SocketAddr], rest: &str) -> TestGateway {
    plain_gateway(addrs, "", "", rest).await
}

/// The same with `server_extra` in `[server]` and `upstream_extra` in the
/// upstream table.
pub async fn plain_gateway(addrs: &[SocketAddr], server_extra: &str, upstream_extra: &str, rest: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let text = config_text(
        dir.path(),
        &format!("http_mode = \"proxy\"\n{server_extra}"),
        &format!("{}\n{rest}", upstream_text(addrs, upstream_extra)),
    );
    spawn_gateway(dir, &text).await
}

/// A client whose connections come from `ip` (a loopback address such as
/// `127.0.3.1`: each is a distinct client to the gateway).
pub fn client_from(ip: &str) -> reqwest::Client {
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    reqwest::Client::builder().local_address(ip).build().expect("client")
}

impl TestGateway {
    /// A client that trusts the gateway's certificate and reaches
    /// `localhost` at the HTTPS listener; HTTP/2 via ALPN.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// The builder behind [`TestGateway::client`].
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("pem");
        reqwest::Client::builder()
            .add_root_certificate(cert)
            .resolve("localhost", self.https.expect("https listener"))
            .redirect(reqwest::redirect::Policy::none())
    }

    /// `http://ADDR/PATH` on the plain-HTTP listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("http listener"))
    }

    /// `https://localhost:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.expect("https").port())
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("admin")
            .text()
            .await
            .expect("text")
    }

    /// The value of `series` once it equals `expected` (counts made as a
    /// connection closes can land just after its answer), or whatever it
    /// is after two seconds.
    pub async fn metric_eventually(&self, series: &str, expected: f64) -> f64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let value = metric(&self.metrics().await, series);
            if value == expected || std::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Drops the serving future without a shutdown (as a panic or a dropped
    /// runtime would); returns the directory, to keep it alive.
    pub async fn abort(self) -> tempfile::TempDir {
        self.handle.abort();
        let _ = self.handle.await;
        self.dir
    }

    /// Starts shutdown; the returned handle ends when draining is done.
    pub fn begin_stop(self) -> JoinHandle<anyhow::Result<()>> {
        self.stop.cancel();
        let Self { handle, dir, .. } = self;
        tokio::spawn(async move {
            let result = handle.await.expect("gateway task");
            drop(dir);
            result
        })
    }
}

/// The status of `GET url` with `client`.
pub async fn status(client: &reqwest::Client, url: &str) -> reqwest::StatusCode {
    client.get(url).send().await.expect("sent").status()
}

/// The value of an unlabelled or labelled series in Prometheus text, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}
