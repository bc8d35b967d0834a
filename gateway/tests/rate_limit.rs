//! The rate limiter end to end, over plain HTTP (`http_mode = "proxy"`) so
//! clients can bind distinct loopback addresses (127.A.B.C) and be distinct
//! peers to the gateway.

mod common;

use common::upstream::{Replica, addrs, replicas};
use common::{TestGateway, client_from, config_text, dev_cert, metric, upstream_text};
use reqwest::StatusCode;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

async fn limited(rs: &[Replica], limits: &str) -> TestGateway {
    common::http_gateway(&addrs(rs), limits).await
}

#[tokio::test]
async fn one_client_at_100_per_second_for_5_seconds_gets_110_through_at_20_per_second_burst_10() {
    let rs = replicas(1).await;
    let gw = limited(
        &rs,
        "[rate_limits.per_ip]\nrate = \"20r/s\"\nburst = 10\nnodelay = true",
    )
    .await;
    let client = client_from("127.0.0.1");
    let start = tokio::time::Instant::now();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..500u32 {
        tokio::time::sleep_until(start + Duration::from_millis(u64::from(i) * 10)).await;
        match common::status(&client, &gw.http_url("/whoami")).await {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!((109..=111).contains(&ok), "{ok} accepted (nginx: 110)");
    assert_eq!(ok + refused, 500);
    assert_eq!(rs[0].hits(), ok, "refused requests never reach the upstream");
}

#[tokio::test]
async fn with_burst_zero_the_second_request_10ms_later_is_refused_with_full_answers() {
    let rs = replicas(1).await;
    let gw = limited(&rs, "[rate_limits.per_ip]\nrate = \"20r/s\"\nnodelay = true").await;
    let client = client_from("127.0.0.1");
    let first = client.get(gw.http_url("/whoami")).send().await.expect("sent");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"per_ip\";q=20;w=1");
    assert_eq!(first.headers()["ratelimit"], "\"per_ip\";r=0;t=1");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = client.get(gw.http_url("/whoami")).send().await.expect("sent");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        second.headers()["retry-after"],
        "1",
        "40 ms rounds up to a whole second"
    );
    assert_eq!(second.headers()["ratelimit"], "\"per_ip\";r=0;t=1");
    assert_eq!(second.headers()["content-type"], "application/problem+json");
    let id = second.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let body: Value = second.json().await.expect("json");
    assert_eq!(
        (body["status"].as_u64(), body["request_id"].as_str()),
        (Some(429), Some(id.as_str()))
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_rate_limit_decisions_total{policy=\"per_ip\",outcome=\"rejected\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gateway_rate_limit_decisions_total{policy=\"per_ip\",outcome=\"passed\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn delay_mode_holds_requests_within_the_burst_and_refuses_beyond_it() {
    let rs = replicas(1).await;
    let gw = limited(&rs, "[rate_limits.slow]\nrate = \"10r/s\"\nburst = 2\nstatus = 503").await;
    let client = client_from("127.0.0.1");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let (c, url) = (client.clone(), gw.http_url("/whoami"));
        tasks.push(tokio::spawn(async move {
            // Far enough apart that they reach the limiter in order even
            // when the workers are busy with other tests.
            tokio::time::sleep(Duration::from_millis(i * 20)).await;
            let r = c.get(url).send().await.expect("sent");
            (r.status(), started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let statuses: Vec<u16> = results.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 503], "the policy's own reject status");
    let ms: Vec<u128> = results.iter().map(|(_, t)| t.as_millis()).collect();
    assert!(ms[0] < 80, "{ms:?}");
    assert!(
        (80..400).contains(&ms[1]) && (180..500).contains(&ms[2]),
        "delayed to leave at the rate: {ms:?}"
    );
    // Sent at 60 ms; delayed, it would have left at about 300 ms.
    assert!(ms[3] < 140, "the refusal is immediate: {ms:?}");
}

// Two threads for the 500 clients, so their timers keep time on a busy
// machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_at_15_per_second_pass_while_a_noisy_neighbour_is_limited() {
    let rs = replicas(1).await;
    let gw = limited(&rs, "[rate_limits.per_ip]\nrate = \"20r/s\"\nburst = 5\nnodelay = true").await;
    let url = gw.http_url("/whoami");
    let mut quiet = Vec::new();
    // The clients' schedules start once every connection is open: 500
    // connections opened at once can see a SYN dropped on a busy machine
    // and retried a second later, and a client whose first request waited
    // that long would then send its next ones together (a bunch, not its
    // rate). One request each opens them, long enough before to be
    // replenished.
    let schedule = tokio::time::Instant::now() + Duration::from_millis(2500);
    for n in 0..500u32 {
        let ip = format!("127.1.{}.{}", n / 250, n % 250 + 1);
        let (client, url) = (client_from(&ip), url.clone());
        quiet.push(tokio::spawn(async move {
            let _ = common::status(&client, &url).await;
            let start = schedule + Duration::from_millis(u64::from(n % 67));
            let mut refused = 0;
            for i in 0..8u64 {
                tokio::time::sleep_until(start + Duration::from_millis(i * 67)).await;
                if common::status(&client, &url).await == StatusCode::TOO_MANY_REQUESTS {
                    refused += 1;
                }
            }
            refused
        }));
    }
    tokio::time::sleep_until(schedule).await;
    let noisy = client_from("127.2.0.1");
    let mut noisy_refused = 0;
    for _ in 0..60 {
        if common::status(&noisy, &url).await == StatusCode::TOO_MANY_REQUESTS {
            noisy_refused += 1;
        }
    }
    let mut quiet_refused = 0;
    for q in quiet {
        quiet_refused += q.await.expect("task");
    }
    assert_eq!(quiet_refused, 0, "well-behaved clients were refused");
    assert!(
        noisy_refused >= 30,
        "the noisy client got through: {noisy_refused} of 60 refused"
    );
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let rs = replicas(1).await;
    let gw = limited(&rs, "[rate_limits.per_ip]\nrate = \"1r/s\"\nnodelay = true").await;
    let client = client_from("127.0.0.1");
    let statuses: Vec<u16> = futures_statuses(&client, &gw.http_url("/echo"), &["1.1.1.1", "2.2.2.2", "3.3.3.3"]).await;
    assert_eq!(statuses, [200, 429, 429]);
}

#[tokio::test]
async fn a_trusted_proxy_forwards_distinct_clients() {
    let rs = replicas(1).await;
    let gw = limited(
        &rs,
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate_limits.per_ip]\nrate = \"1r/s\"\nnodelay = true",
    )
    .await;
    let proxy = client_from("127.0.0.1");
    let url = gw.http_url("/echo");
    let statuses = futures_statuses(&proxy, &url, &["198.51.100.1", "198.51.100.2", "6.6.6.6, 198.51.100.1"]).await;
    assert_eq!(
        statuses,
        [200, 200, 429],
        "keyed by the first untrusted address from the right"
    );
    let r = proxy
        .get(&url)
        .header("x-forwarded-for", "198.51.100.9")
        .send()
        .await
        .expect("sent");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["headers"]["x-forwarded-for"], "198.51.100.9");
    // A peer outside the trusted range cannot do the same.
    let outsider = client_from("127.0.0.2");
    let statuses = futures_statuses(&outsider, &url, &["198.51.100.3", "198.51.100.4"]).await;
    assert_eq!(statuses, [200, 429]);
}

async fn futures_statuses(client: &reqwest::Client, url: &str, forwarded: &[&str]) -> Vec<u16> {
    let mut out = Vec::new();
    for f in forwarded {
        let r = client
            .get(url)
            .header("x-forwarded-for", *f)
            .send()
            .await
            .expect("sent");
        out.push(r.status().as_u16());
    }
    out
}

/// Sends raw bytes from `local` and returns what the gateway answered
/// (empty when it closed the connection).
async fn raw_exchange(gw: &TestGateway, local: &str, bytes: Vec<u8>) -> String {
    let target = gw.http.expect("http");
    let local: IpAddr = local.parse().expect("ip");
    tokio::task::spawn_blocking(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::new(local, 0).into()).expect("bind");
        socket.connect(&target.into()).expect("connect");
        let mut stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = stream.write_all(&bytes);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("task")
}

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&[127, 0, 0, 1]);
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&80u16.to_be_bytes());
    v
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address_and_bad_headers_are_closed() {
    let rs = replicas(1).await;
    let gw = limited(
        &rs,
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true\n[rate_limits]\n",
    )
    .await;
    let request = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    let mut v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec();
    v1.extend_from_slice(request);
    let answer = raw_exchange(&gw, "127.0.0.1", v1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"x-forwarded-for\":\"198.51.100.7\""), "{answer}");

    let mut v2 = v2_header([203, 0, 113, 5], 5555);
    v2.extend_from_slice(request);
    let answer = raw_exchange(&gw, "127.0.0.1", v2).await;
    assert!(answer.contains("\"x-forwarded-for\":\"203.0.113.5\""), "{answer}");

    let mut bad = b"PROXY TCP4 nonsense\r\n".to_vec();
    bad.extend_from_slice(request);
    assert_eq!(
        raw_exchange(&gw, "127.0.0.1", bad).await,
        "",
        "a malformed header is closed"
    );
    assert_eq!(
        raw_exchange(&gw, "127.0.0.1", request.to_vec()).await,
        "",
        "no header at all is closed"
    );
    let mut untrusted = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec();
    untrusted.extend_from_slice(request);
    assert_eq!(
        raw_exchange(&gw, "127.0.0.3", untrusted).await,
        "",
        "only trusted peers may send one"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_connections_refused_total{reason=\"proxy_protocol_malformed\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gateway_connections_refused_total{reason=\"proxy_protocol_untrusted\"}"
        ),
        1.0
    );
    assert_eq!(rs[0].hits(), 2);
}

#[tokio::test]
async fn the_allowlist_bypasses_and_dry_run_only_counts() {
    let rs = replicas(1).await;
    let limits = "[rate_limits.strict]\nrate = \"1r/s\"\nnodelay = true\n[rate_limits.trial]\nrate = \"1r/s\"\nnodelay = true\ndry_run = true\n\
                  [rate_limit]\nallowlist = [\"127.3.0.0/16\"]\n\
                  [[rate_limit.rules]]\npath_prefix = \"/\"\npolicy = \"strict\"\n\
                  [[rate_limit.rules]]\npath_prefix = \"/echo\"\npolicy = \"trial\"\n";
    let gw = limited(&rs, limits).await;
    let allowed = client_from("127.3.0.1");
    for _ in 0..5 {
        assert_eq!(common::status(&allowed, &gw.http_url("/whoami")).await, StatusCode::OK);
    }
    let normal = client_from("127.0.0.1");
    for _ in 0..3 {
        assert_eq!(common::status(&normal, &gw.http_url("/echo")).await, StatusCode::OK);
    }
    assert_eq!(common::status(&normal, &gw.http_url("/whoami")).await, StatusCode::OK);
    assert_eq!(
        common::status(&normal, &gw.http_url("/whoami")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_rate_limit_decisions_total{policy=\"trial\",outcome=\"dry_run_rejected\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "gateway_rate_limit_decisions_total{policy=\"strict\",outcome=\"rejected\"}"
        ),
        1.0
    );
}

#[test]
fn trusting_everyone_on_a_public_listener_is_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    dev_cert(dir.path());
    let text = config_text(
        dir.path(),
        "",
        &upstream_text(&["127.0.0.1:1".parse().expect("addr")], ""),
    )
    .replace("https = \"127.0.0.1:0\"", "https = \"0.0.0.0:0\"")
        + "\n[client_ip]\ntrusted_proxies = [\"0.0.0.0/0\"]\n";
    let path = dir.path().join("g.toml");
    std::fs::write(&path, text).expect("write");
    let err = gateway::config::GatewayConfig::load(&path).expect_err("refused");
    assert!(err.to_string().contains("client_ip.trusted_proxies"), "{err}");
}
