//! Hot reload: under steady load, twenty reloads changing the upstream
//! set, the limits and the certificate lose no request; an invalid file
//! keeps the old configuration; rate-limit state survives an unchanged
//! policy; SIGHUP-free file watching picks up edits.

mod common;

use common::upstream::{Replica, addrs, replicas};
use common::{TestGateway, config_text, dev_cert, metric, upstream_text};
use reqwest::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn text_for(gw_dir: &std::path::Path, servers: &[SocketAddr], limits: &str) -> String {
    config_text(
        gw_dir,
        "http_mode = \"proxy\"",
        &format!("{}\n{limits}", upstream_text(servers, "")),
    )
}

async fn start(rs: &[Replica], limits: &str) -> TestGateway {
    common::http_gateway(&addrs(rs), limits).await
}

fn rewrite(gw: &TestGateway, text: &str) {
    std::fs::write(gw.dir.path().join("gateway.toml"), text).expect("write config");
}

#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    ok: AtomicUsize,
    errors: AtomicUsize,
    server_errors: AtomicUsize,
}

#[tokio::test]
async fn twenty_reloads_under_load_lose_no_request() {
    let rs = replicas(3).await;
    let all = addrs(&rs);
    let generous = "[rate_limits.per_ip]\nrate = \"100000r/s\"\nburst = 100000\nnodelay = true";
    let gw = start(&rs, generous).await;
    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (tally, running) = (tally.clone(), running.clone());
        // Half the load over HTTPS (h2 and h1), half over plain HTTP.
        let (client, url) = match w % 4 {
            0 => (gw.client(), gw.url("/whoami")),
            1 => (
                gw.client_builder().http1_only().build().expect("client"),
                gw.url("/whoami"),
            ),
            _ => (
                reqwest::Client::new(),
                format!("http://{}/whoami", gw.http.expect("http")),
            ),
        };
        workers.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                tally.sent.fetch_add(1, Ordering::Relaxed);
                match client.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().is_server_error() => {
                        tally.server_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let reloads = 20;
    for i in 0..reloads {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let servers: Vec<SocketAddr> = match i % 3 {
            0 => all[..2].to_vec(),
            1 => all[1..].to_vec(),
            _ => all.clone(),
        };
        let limits = format!(
            "[rate_limits.per_ip]\nrate = \"{}r/s\"\nburst = 100000\nnodelay = true\n[limits]\nmax_body = \"{}KiB\"",
            100_000 + i,
            64 + i
        );
        if i % 4 == 0 {
            dev_cert(gw.dir.path());
        }
        rewrite(&gw, &text_for(gw.dir.path(), &servers, &limits));
        gw.reloader
            .reload()
            .await
            .unwrap_or_else(|e| panic!("reload {i} rejected: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (sent, ok) = (tally.sent.load(Ordering::Relaxed), tally.ok.load(Ordering::Relaxed));
    let (errors, server_errors) = (
        tally.errors.load(Ordering::Relaxed),
        tally.server_errors.load(Ordering::Relaxed),
    );
    println!(
        "reload under load: {sent} requests, {ok} ok, {errors} connection errors, {server_errors} 5xx, {reloads} reloads"
    );
    assert_eq!((errors, server_errors), (0, 0), "{sent} sent, {ok} ok");
    assert_eq!(ok, sent);
    assert!(sent > 200, "the load was too light to mean anything: {sent}");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "gateway_config_reloads_total{result=\"applied\"}"),
        f64::from(reloads)
    );
}

#[tokio::test]
async fn an_invalid_file_is_rejected_and_the_old_configuration_keeps_serving() {
    let rs = replicas(1).await;
    let gw = start(&rs, "[rate_limits]").await;
    rewrite(
        &gw,
        "[server]\nbogus = 1\n[[routes]]\npath_prefix = \"/\"\nupstream = \"nowhere\"\n",
    );
    let problems = gw.reloader.reload().await.expect_err("rejected");
    assert!(
        problems.contains("server.bogus") && problems.contains("routes[0].upstream"),
        "{problems}"
    );
    let response = reqwest::get(format!("http://{}/whoami", gw.http.expect("http")))
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "gateway_config_reloads_total{result=\"rejected\"}"),
        1.0
    );
}

#[tokio::test]
async fn an_unchanged_policy_keeps_its_buckets_across_a_reload_and_a_changed_one_starts_fresh() {
    let rs = replicas(1).await;
    let strict = "[rate_limits.per_ip]\nrate = \"1r/m\"\nnodelay = true";
    let gw = start(&rs, strict).await;
    let url = format!("http://{}/whoami", gw.http.expect("http"));
    let client = reqwest::Client::new();
    assert_eq!(common::status(&client, &url).await, StatusCode::OK);
    assert_eq!(common::status(&client, &url).await, StatusCode::TOO_MANY_REQUESTS);
    // Same policy, other settings changed: still limited.
    rewrite(
        &gw,
        &text_for(
            gw.dir.path(),
            &addrs(&rs),
            &format!("{strict}\n[limits]\nmax_body = \"2MiB\""),
        ),
    );
    gw.reloader.reload().await.expect("applied");
    assert_eq!(common::status(&client, &url).await, StatusCode::TOO_MANY_REQUESTS);
    // The policy itself changed: a new bucket.
    rewrite(
        &gw,
        &text_for(
            gw.dir.path(),
            &addrs(&rs),
            "[rate_limits.per_ip]\nrate = \"2r/m\"\nnodelay = true",
        ),
    );
    gw.reloader.reload().await.expect("applied");
    assert_eq!(common::status(&client, &url).await, StatusCode::OK);
}

#[tokio::test]
async fn editing_the_file_reloads_without_a_signal() {
    let rs = replicas(2).await;
    let gw = start(&rs[..1], "[rate_limits]").await;
    let url = format!("http://{}/whoami", gw.http.expect("http"));
    assert_eq!(
        reqwest::get(&url).await.expect("sent").text().await.expect("body"),
        "r0"
    );
    rewrite(&gw, &text_for(gw.dir.path(), &addrs(&rs[1..]), "[rate_limits]"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if reqwest::get(&url).await.expect("sent").text().await.expect("body") == "r1" {
            break;
        }
        assert!(Instant::now() < deadline, "the edit was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_new_certificate_serves_new_handshakes() {
    let rs = replicas(1).await;
    let gw = start(&rs, "[rate_limits]").await;
    let old_client = gw.client();
    assert_eq!(common::status(&old_client, &gw.url("/whoami")).await, StatusCode::OK);
    let fresh = dev_cert(gw.dir.path());
    gw.reloader.reload().await.expect("applied");
    let trusting_new = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fresh.as_bytes()).expect("pem"))
        .resolve("localhost", gw.https.expect("https"))
        .build()
        .expect("client");
    assert_eq!(common::status(&trusting_new, &gw.url("/whoami")).await, StatusCode::OK);
    let trusting_old = gw.client_builder().pool_max_idle_per_host(0).build().expect("client");
    assert!(
        trusting_old.get(gw.url("/whoami")).send().await.is_err(),
        "the old certificate is still served"
    );
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_configuration_it_started_with() {
    let rs = replicas(2).await;
    let gw = start(&rs[..1], "[rate_limits]").await;
    let url = format!("http://{}/slow?ms=800", gw.http.expect("http"));
    let in_flight = tokio::spawn(async move { reqwest::get(url).await.expect("sent").text().await.expect("body") });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Swap the only replica for the other one while the request runs.
    rewrite(&gw, &text_for(gw.dir.path(), &addrs(&rs[1..]), "[rate_limits]"));
    gw.reloader.reload().await.expect("applied");
    let who = reqwest::get(format!("http://{}/whoami", gw.http.expect("http")))
        .await
        .expect("sent");
    assert_eq!(
        who.text().await.expect("body"),
        "r1",
        "new requests use the new configuration"
    );
    assert_eq!(
        in_flight.await.expect("task"),
        "r0 slept",
        "the running request finished where it started"
    );
}

/// One HTTPS request with `config` (its session cache kept between
/// calls); whether the handshake resumed a session.
async fn resumed(gw: &TestGateway, config: &Arc<rustls::ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(gw.https.expect("https"))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    // Reading to the end also takes in the session tickets sent after the handshake.
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn sessions_resume_across_a_reload_with_a_renewed_certificate_but_not_for_other_names() {
    let rs = replicas(1).await;
    let gw = start(&rs, "[rate_limits]").await;
    // Every certificate the gateway will serve, trusted from the start.
    let renewed = tempfile::tempdir().expect("dir");
    let renamed = tempfile::tempdir().expect("dir");
    gateway::tls::write_self_signed(renewed.path(), &["localhost".into(), "127.0.0.1".into()]).expect("cert");
    gateway::tls::write_self_signed(renamed.path(), &["localhost".into()]).expect("cert");
    let mut roots = rustls::RootCertStore::empty();
    for dir in [gw.dir.path(), renewed.path(), renamed.path()] {
        for cert in gateway::tls::load_certs(&dir.join("cert.pem")).expect("certs") {
            roots.add(cert).expect("root");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    assert!(!resumed(&gw, &config).await, "the first handshake is a full one");
    assert!(resumed(&gw, &config).await, "the second resumes");
    let install = |from: &std::path::Path| {
        for file in ["cert.pem", "key.pem"] {
            std::fs::copy(from.join(file), gw.dir.path().join(file)).expect("copy");
        }
    };
    install(renewed.path());
    gw.reloader.reload().await.expect("applied");
    assert!(
        resumed(&gw, &config).await,
        "a renewal for the same names keeps sessions"
    );
    install(renamed.path());
    gw.reloader.reload().await.expect("applied");
    assert!(
        !resumed(&gw, &config).await,
        "a certificate for other names starts afresh"
    );
    assert!(resumed(&gw, &config).await, "and resumes what it issued itself");
}
