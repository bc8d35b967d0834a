//! Connection-level behaviour and the process lifecycle: the header read
//! timeout (slowloris), connection caps, graceful shutdown with a request
//! in flight, readiness, `--check-config`.

mod common;

use common::logged::{LoggedGateway, access_lines, gateway_bin};
use common::raw::RawClient;
use common::upstream::{addrs, replicas};
use common::{config_text, dev_cert, gateway_for, http_gateway, metric, upstream_text};
use reqwest::StatusCode;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "[limits]\nheader_read_timeout = \"500ms\"").await;
    let http = gw.http.expect("http");
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let started = Instant::now();
        s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("write");
        let mut buf = [0u8; 1024];
        // Trickle a byte every 100 ms; the gateway must hang up anyway.
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(b"a").is_err() {
                break;
            }
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        let n = s.read(&mut buf).unwrap_or(0);
        (started.elapsed(), n, String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    .expect("task");
    let (took, _, answer) = closed;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(rs[0].hits(), 0);
}

#[tokio::test]
async fn a_slowloris_is_closed_at_the_header_timeout_even_across_an_idle_park() {
    let rs = replicas(1).await;
    // Longer than the idle time after which a connection parks.
    let gw = http_gateway(&addrs(&rs), "[limits]\nheader_read_timeout = \"2500ms\"").await;
    let mut client = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    // One whole request first: hyper then counts the connection idle (not
    // busy with a first request) while the next head trickles in.
    client.send(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.answer(Duration::from_secs(5)).await.map(|a| a.status), Some(200));
    let started = Instant::now();
    client.send(b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.send(b"a").await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(6), trickle).await;
    assert!(
        client.closed_within(Duration::from_secs(1)).await,
        "still open after {:?}",
        started.elapsed()
    );
    assert_eq!(rs[0].hits(), 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_parks_and_serves_again_on_the_same_socket() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let mut client = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    for round in 0..3 {
        client.send(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let answer = client
            .answer(Duration::from_secs(5))
            .await
            .expect("an answer on the same connection");
        assert_eq!((round, answer.status), (round, 200), "{answer:?}");
        assert_eq!(
            answer.header("connection"),
            None,
            "nothing tells the client to go: {answer:?}"
        );
        // Past the time after which an idle connection hands its buffers back.
        tokio::time::sleep(connection_park() + Duration::from_millis(500)).await;
    }
    // Half a head sent just before a park, the rest after: one request.
    client.send(b"GET /whoami HTTP/1.1\r\nHo").await;
    tokio::time::sleep(connection_park() + Duration::from_millis(500)).await;
    client.send(b"st: x\r\n\r\n").await;
    let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("connection"), None, "still kept alive: {answer:?}");
    client.send(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(client.answer(Duration::from_secs(5)).await.map(|a| a.status), Some(200));
    assert_eq!(rs[0].hits(), 5);
}

fn connection_park() -> Duration {
    gateway::connection::PARK_AFTER
}

#[tokio::test]
async fn connections_beyond_the_per_ip_cap_are_closed() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "[limits]\nmax_connections_per_ip = 2").await;
    let http = gw.http.expect("http");
    let open: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(http).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut third = std::net::TcpStream::connect(http).expect("connect");
        third.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let _ = third.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 256];
        third.read(&mut buf).unwrap_or(0)
    })
    .await
    .expect("task");
    assert_eq!(answer, 0, "the third connection was served");
    assert_eq!(
        metric(
            &gw.metrics().await,
            "gateway_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        1.0
    );
    drop(open);
}

#[tokio::test]
async fn the_metrics_show_open_connections_and_the_memory_they_take() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let http = gw.http.expect("http");
    let open = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(http).expect("connect");
                s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
                let mut buf = [0u8; 1024];
                assert!(s.read(&mut buf).expect("answer") > 0);
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("task");
    assert_eq!(gw.metric_eventually("gateway_connections_open", 20.0).await, 20.0);
    let text = gw.metrics().await;
    let resident = metric(&text, "gateway_memory_resident_bytes");
    assert!(resident > 1e6, "resident memory {resident}");
    // The limit is the cgroup's, or 0 outside one; the series is always there.
    assert!(
        text.lines().any(|l| l.starts_with("gateway_memory_limit_bytes ")),
        "{text}"
    );
    drop(open);
    assert_eq!(gw.metric_eventually("gateway_connections_open", 0.0).await, 0.0);
}

#[tokio::test]
async fn shutdown_lets_the_in_flight_request_finish_and_reports_draining() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    let client = gw.client();
    let admin = gw.admin;
    let https = gw.https.expect("https");
    let in_flight = tokio::spawn(client.get(gw.url("/slow?ms=1000")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reqwest::get(format!("http://{admin}/readyz"))
            .await
            .expect("admin")
            .status(),
        StatusCode::OK
    );
    let stopping = gw.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .expect("admin still up while draining");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "still accepting while draining"
    );
    let response = in_flight.await.expect("task").expect("the in-flight request completed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "r0 slept");
    stopping.await.expect("task").expect("clean stop");
}

/// A keep-alive connection to `addr` that has had one request answered.
fn served_keep_alive_connection(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return s;
            }
        }
    }
}

/// Reads from `s` until it closes: the bytes read meanwhile (`None` if
/// nothing closed it within its read timeout) and the time it took.
fn wait_for_close(mut s: std::net::TcpStream) -> (Option<usize>, Duration) {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (Some(total), started.elapsed()),
            Ok(n) => total += n,
            Err(_) => return (None, started.elapsed()),
        }
    }
}

#[tokio::test]
async fn a_connection_idle_past_the_idle_timeout_is_closed() {
    let rs = replicas(1).await;
    // The header timeout, which also bounds an HTTP/1.1 wait for the next
    // request, is far off: the idle timer is what closes this connection.
    let limits = "[limits]\nidle_timeout = \"500ms\"\nheader_read_timeout = \"30s\"";
    let gw = http_gateway(&addrs(&rs), limits).await;
    let http = gw.http.expect("http");
    let (read, took) = tokio::task::spawn_blocking(move || wait_for_close(served_keep_alive_connection(http)))
        .await
        .expect("task");
    assert_eq!(read, Some(0), "closed without another answer");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let http = gw.http.expect("http");
    let idle = tokio::task::spawn_blocking(move || served_keep_alive_connection(http))
        .await
        .expect("task");
    let started = Instant::now();
    let stopping = gw.begin_stop();
    let (read, _) = tokio::task::spawn_blocking(move || wait_for_close(idle))
        .await
        .expect("task");
    assert_eq!(read, Some(0), "closed without another answer");
    stopping.await.expect("task").expect("clean stop");
    // The idle and header timeouts (60 s, 10 s) and the grace period (25 s)
    // are all far off: the stop signal closed it.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn dropping_the_serving_future_stops_the_workers_and_closes_their_sockets() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let http = gw.http.expect("http");
    let url = format!("http://{http}/whoami");
    assert_eq!(common::status(&reqwest::Client::new(), &url).await, StatusCode::OK);
    let _dir = gw.abort().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(http).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "a worker still accepts after its gateway was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `gateway --check-config --config PATH`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    gateway_bin()
        .args(["--check-config", "--config"])
        .arg(path)
        .output()
        .expect("runs")
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        config_text(
            dir.path(),
            "",
            &upstream_text(&["127.0.0.1:8000".parse().expect("addr")], ""),
        ),
    )
    .expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn check_config_reports_every_problem_of_a_bad_file_and_fails() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    let text = r#"
[server]
https = "127.0.0.1:8443"
workers = 0
shutdwn_grace = "5s"

[tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"

[limits]
header_read_timeout = "soon"

[upstreams.app]
servers = ["no-port"]
keepalive_timeout = "1000s"

[[routes]]
path_prefix = "api"
upstream = "ghost"
"#;
    std::fs::write(&path, text).expect("write");
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "bad.toml",
        "bad.toml:4: server.workers: must be at least 1",
        "bad.toml:5: server.shutdwn_grace: unknown key",
        "bad.toml:12: limits.header_read_timeout",
        "bad.toml:15: upstreams.app.servers[0]",
        "bad.toml:20: routes[0].upstream",
        "limits.header_read_timeout",
        "tls.cert",
        "upstreams.app.servers[0]",
        "upstreams.app.keepalive_timeout",
        "routes[0].path_prefix",
        "routes[0].upstream",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
}

#[test]
fn check_config_reports_shared_limit_settings_without_repeating_the_url() {
    let (code, stderr) = check_edited(|_, text| {
        text + r#"
[rate_limits.per_ip]
rate = "20r/s"
shared = true
[rate_limits.other]
rate = "1r/s"
shared = true
[[rate_limit.rules]]
path_prefix = "/"
policy = "per_ip"
[rate_limit.shared]
redis_url = "http://:hunter2@redis:6379"
sync_interval = "1ms"
node_ttl = "1ms"
sync_timeout = "0s"
assumed_nodes = 0
"#
    });
    assert_eq!(code, Some(2));
    for expected in [
        "rate_limit.shared.redis_url: not a Redis URL",
        "rate_limit.shared.sync_interval: must be 10ms to 10s",
        "rate_limit.shared.node_ttl: must be at least twice sync_interval",
        "rate_limit.shared.sync_timeout: must be greater than zero",
        "rate_limit.shared.assumed_nodes: must be at least 1",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "the URL's password was echoed:\n{stderr}");

    let (code, stderr) = check_edited(|dir, text| {
        let url = dir.join("redis_url");
        std::fs::write(&url, "redis://:pw@127.0.0.1:notaport\n").expect("write");
        format!("{text}\n[rate_limit.shared]\nredis_url_file = \"{}\"\n", url.display())
    });
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("rate_limit.shared.redis_url_file: not a Redis URL"),
        "{stderr}"
    );
    assert!(!stderr.contains(":pw@"), "{stderr}");

    let (code, stderr) =
        check_edited(|_, text| text + "\n[rate_limit.shared]\nredis_url_file = \"/run/secrets/missing\"\n");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("rate_limit.shared.redis_url_file: redis_url_file /run/secrets/missing: No such file"),
        "{stderr}"
    );

    let (code, stderr) = check_edited(|_, text| text + "\n[rate_limits.per_ip]\nrate = \"20r/s\"\nshared = true\n");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("rate_limits.per_ip.shared: needs [rate_limit.shared]"),
        "{stderr}"
    );

    let (code, stderr) =
        check_edited(|_, text| text + "\n[rate_limit.shared]\nredis_url = \"redis://127.0.0.1:6379/0\"\n");
    assert_eq!(code, Some(0), "{stderr}");
}

/// `--check-config` on a good file (fresh certificate, one upstream) after
/// `edit` has changed its text; the exit code and stderr.
fn check_edited(edit: impl FnOnce(&std::path::Path, String) -> String) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let text = config_text(
        dir.path(),
        "",
        &upstream_text(&["127.0.0.1:8000".parse().expect("addr")], ""),
    )
    .replace("https = \"127.0.0.1:0\"", "https = \"0.0.0.0:0\"");
    let path = dir.path().join("g.toml");
    std::fs::write(&path, edit(dir.path(), text)).expect("write");
    let out = check_config(&path);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_proves_the_certificate_and_key_load_and_match() {
    let (code, stderr) = check_edited(|dir, text| {
        std::fs::write(
            dir.join("cert.pem"),
            "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        text
    });
    assert_eq!(code, Some(2), "a garbage certificate passed: {stderr}");
    assert!(stderr.contains("tls"), "{stderr}");

    let (code, stderr) = check_edited(|dir, text| {
        let other = dir.join("other");
        gateway::tls::write_self_signed(&other, &["elsewhere".into()]).expect("generate");
        std::fs::copy(other.join("key.pem"), dir.join("key.pem")).expect("copy");
        text
    });
    assert_eq!(code, Some(2), "a key for another certificate passed: {stderr}");
    assert!(stderr.contains("tls") && stderr.contains("rejected"), "{stderr}");
}

#[test]
fn check_config_refuses_trust_lists_that_together_trust_everyone() {
    for nets in [
        r#""0.0.0.0/1", "128.0.0.0/1""#,
        r#""0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/1""#,
        r#""::/1", "8000::/1""#,
        r#""::ffff:0.0.0.0/97", "128.0.0.0/1""#,
    ] {
        let (code, stderr) = check_edited(|_, text| format!("{text}\n[client_ip]\ntrusted_proxies = [{nets}]\n"));
        assert_eq!(code, Some(2), "[{nets}] passed: {stderr}");
        assert!(stderr.contains("client_ip.trusted_proxies"), "{stderr}");
    }
    let (code, stderr) =
        check_edited(|_, text| format!("{text}\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n"));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = gateway_bin()
        .args(["--check-config", "--config", "/nonexistent/gateway.toml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn gen_cert_writes_a_usable_pair() {
    let dir = tempfile::tempdir().expect("dir");
    let out = gateway_bin()
        .args(["gen-cert", "--out"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(out.status.success());
    gateway::tls::server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem"), None).expect("loads");
}

#[test]
fn the_committed_example_configurations_are_valid() {
    for file in ["gateway.example.toml", "deploy/local-gateway.toml"] {
        let (_dir, path) = common::committed_config(file);
        let out = check_config(&path);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `gateway healthcheck` (the container's) is liveness: with no replica
/// left to send to, the gateway is unready (`--ready` fails) but alive, so
/// Swarm does not kill and restart it while the app's store is down.
#[tokio::test]
async fn the_container_healthcheck_is_liveness_and_ready_asks_for_a_replica() {
    let mut rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    let gw = LoggedGateway::start(dir.path(), &rs, "").await;
    let probe = |ready: bool| {
        let mut command = gateway_bin();
        command.arg("healthcheck");
        if ready {
            command.arg("--ready");
        }
        command
            .arg("--config")
            .arg(dir.path().join("live.toml"))
            .output()
            .expect("runs")
    };
    assert!(probe(false).status.success());
    assert!(probe(true).status.success(), "a replica is up: ready");
    rs[0].kill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Failed tries eject the dead replica (passive health).
        let _ = reqwest::get(gw.url("/whoami")).await;
        let ready = probe(true);
        if !ready.status.success() {
            let why = String::from_utf8_lossy(&ready.stderr).into_owned();
            assert!(why.contains("503"), "{why}");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never turned unready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = probe(false);
    assert!(
        live.status.success(),
        "no replica, yet alive: {}",
        String::from_utf8_lossy(&live.stderr)
    );
    gw.stop();
}

#[tokio::test]
async fn replay_reads_the_gateways_own_json_access_log() {
    let rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    let gw = LoggedGateway::start(dir.path(), &rs, "").await;
    for _ in 0..30 {
        assert_eq!(
            reqwest::get(gw.url("/whoami")).await.expect("sent").status(),
            StatusCode::OK
        );
    }
    let healthcheck = gateway_bin()
        .args(["healthcheck", "--config"])
        .arg(dir.path().join("live.toml"))
        .status()
        .expect("runs");
    assert!(healthcheck.success(), "the running gateway is ready");
    let live = gw.config.clone();
    gw.stop();

    // Each proxied request's line names the replica that answered it.
    let lines = access_lines(dir.path(), "/whoami");
    assert!(lines.len() >= 30, "{lines:?}");
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["upstream"], rs[0].addr.to_string(), "{line}");
        assert_eq!(line["rate_limit"], "", "{line}");
    }

    // The live gateway had no limit; would 5 r/s burst 2 have hurt?
    let proposed = live.replace(
        "\n[rate_limits]\n",
        "\n[rate_limits.per_ip]\nrate = \"5r/s\"\nburst = 2\nnodelay = true\n",
    );
    std::fs::write(dir.path().join("proposed.toml"), proposed).expect("write");
    let out = gateway_bin()
        .args(["replay", "--log"])
        .arg(dir.path().join("access.log"))
        .arg("--config")
        .arg(dir.path().join("proposed.toml"))
        .output()
        .expect("runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("1 of 1 client keys would be limited"), "{report}");
    assert!(report.contains("per_ip") && report.contains("127.0.0.1"), "{report}");
}

#[tokio::test]
async fn access_log_lines_carry_the_rate_limit_outcome() {
    let rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    let policy = "[rate_limits.per_ip]\nrate = \"1r/m\"\nburst = 0\nnodelay = true\n";
    let gw = LoggedGateway::start(dir.path(), &rs, policy).await;
    let statuses = [
        reqwest::get(gw.url("/whoami")).await.expect("sent").status(),
        reqwest::get(gw.url("/whoami")).await.expect("sent").status(),
    ];
    gw.stop();
    // The start-up probe took the one request a minute allows.
    assert_eq!(statuses, [StatusCode::TOO_MANY_REQUESTS; 2]);
    let lines = access_lines(dir.path(), "/whoami");
    let outcomes: Vec<&str> = lines.iter().map(|l| l["rate_limit"].as_str().unwrap_or("?")).collect();
    assert_eq!(
        outcomes,
        ["per_ip:passed", "per_ip:rejected", "per_ip:rejected"],
        "{lines:?}"
    );
    assert_eq!(lines[0]["upstream"], rs[0].addr.to_string());
    assert_eq!(lines[1]["upstream"], "", "a refusal names no replica");
}
