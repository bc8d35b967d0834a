//! The gateway end to end: TLS and ALPN, the redirect, balancing, retries
//! and ejection, timeouts, limits, forwarding headers, problem bodies.

mod common;

use common::upstream::{Replica, addrs, replicas};
use common::{gateway_for, metric, status};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(response.headers().get("server").is_none(), "no server header");
    let id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["request_id"], id.as_str());
    body
}

#[tokio::test]
async fn https_negotiates_h2_by_alpn_and_http1_when_asked() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    let response = gw.client().get(gw.url("/whoami")).send().await.expect("h2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.expect("body"), "r0");
    let h1 = gw.client_builder().http1_only().build().expect("client");
    let response = h1.get(gw.url("/whoami")).send().await.expect("h1 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_with_a_308() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    let http = gw.http.expect("http listener");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client
        .get(format!("http://localhost:{}/configs/a?x=1", http.port()))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    let https_port = gw.https.expect("https").port();
    assert_eq!(
        response.headers()["location"],
        format!("https://localhost:{https_port}/configs/a?x=1").as_str()
    );
    assert_eq!(rs[0].hits(), 0, "a redirect never reaches the upstream");
}

async fn distribution(balance: &str, requests: usize) -> Vec<usize> {
    let rs = replicas(3).await;
    let gw = gateway_for(&addrs(&rs), &format!("balance = \"{balance}\""), "").await;
    let client = gw.client();
    for _ in 0..requests {
        let response = client.get(gw.url("/whoami")).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
    }
    rs.iter().map(Replica::hits).collect()
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_three_replicas() {
    assert_eq!(distribution("round_robin", 30).await, [10, 10, 10]);
}

#[tokio::test]
async fn least_requests_uses_every_replica() {
    let hits = distribution("least_requests", 90).await;
    assert_eq!(hits.iter().sum::<usize>(), 90);
    assert!(hits.iter().all(|&h| h >= 10), "{hits:?}");
}

#[tokio::test]
async fn least_requests_steers_away_from_a_busy_replica() {
    let rs = replicas(2).await;
    let gw = gateway_for(
        &addrs(&rs),
        "balance = \"least_requests\"\nresponse_timeout = \"10s\"",
        "",
    )
    .await;
    let client = gw.client();
    // Pin 8 slow requests; wherever they land, the quick ones must go
    // mostly to the replica with fewer of them.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let (c, url) = (client.clone(), gw.url("/slow?ms=1500"));
        slow.push(tokio::spawn(async move { c.get(url).send().await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<usize> = rs.iter().map(Replica::hits).collect();
    for _ in 0..20 {
        client.get(gw.url("/whoami")).send().await.expect("sent");
    }
    let quick: Vec<usize> = rs.iter().zip(&before).map(|(r, b)| r.hits() - b).collect();
    let (busier, idler) = if before[0] > before[1] { (0, 1) } else { (1, 0) };
    if before[busier] > before[idler] {
        assert!(
            quick[idler] >= quick[busier],
            "slow split {before:?}, quick split {quick:?}"
        );
    }
    for s in slow {
        assert_eq!(s.await.expect("task").expect("sent").status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_retry_is_counted_only_when_another_replica_is_tried() {
    let mut rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "max_tries = 3", "").await;
    rs[0].kill().await;
    let response = gw.client().get(gw.url("/whoami")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let retries = metric(
        &gw.metrics().await,
        "gateway_upstream_retries_total{upstream=\"app\",reason=\"connect\"}",
    );
    assert_eq!(retries, 0.0, "there was no other replica to retry on");
}

/// Refused connections cost no try: with `max_tries = 1` and two of three
/// replicas refusing (stopping at once, as in a scale-down), every request,
/// a POST included, reaches the third.
#[tokio::test]
async fn refused_connections_cost_no_try() {
    let mut rs = replicas(3).await;
    // No passive ejection: each request meets the refusals itself.
    let gw = gateway_for(
        &addrs(&rs),
        "balance = \"round_robin\"\nmax_tries = 1\nmax_fails = 1000",
        "",
    )
    .await;
    rs[0].kill().await;
    rs[1].kill().await;
    let client = gw.client();
    for i in 0..12 {
        let request = if i % 2 == 0 {
            client.get(gw.url("/whoami"))
        } else {
            client.post(gw.url("/echo")).body("x")
        };
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    assert!(rs[2].hits() >= 12);
    let retries = metric(
        &gw.metrics().await,
        "gateway_upstream_retries_total{upstream=\"app\",reason=\"connect\"}",
    );
    assert!(retries >= 8.0, "the refusals were retried: {retries}");
    // Every replica refusing is still an answer, not a loop.
    rs[2].kill().await;
    let response = client.get(gw.url("/whoami")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_killed_replica_is_ejected_while_gets_keep_succeeding_and_it_recovers() {
    let mut rs = replicas(3).await;
    // Passive health only: the failed connections themselves eject it.
    let gw = gateway_for(
        &addrs(&rs),
        "balance = \"round_robin\"\nmax_fails = 1\nfail_timeout = \"1s\"",
        "",
    )
    .await;
    let client = gw.client();
    rs[1].kill().await;
    for i in 0..60 {
        let response = client.get(gw.url("/whoami")).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_ne!(response.text().await.expect("body"), "r1");
    }
    let metrics = gw.metrics().await;
    let retries = metric(
        &metrics,
        "gateway_upstream_retries_total{upstream=\"app\",reason=\"connect\"}",
    );
    assert!(
        (1.0..=3.0).contains(&retries),
        "a dead replica costs a retry or two, then it is ejected: {retries}"
    );

    rs[1].restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = rs[1].hits();
    while rs[1].hits() == before {
        assert!(Instant::now() < deadline, "the restarted replica got no traffic");
        client.get(gw.url("/whoami")).send().await.expect("sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failing_health_check_takes_a_replica_out_and_none_healthy_is_a_503() {
    let rs = replicas(2).await;
    let health = "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"200ms\", unhealthy_threshold = 1, healthy_threshold = 1 }";
    let gw = gateway_for(&addrs(&rs), health, "").await;
    let client = gw.client();
    rs[0].shared.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        assert_eq!(
            client
                .get(gw.url("/whoami"))
                .send()
                .await
                .expect("sent")
                .text()
                .await
                .expect("body"),
            "r1"
        );
    }
    let down = format!(
        "gateway_upstream_healthy{{upstream=\"app\",endpoint=\"{}\"}}",
        rs[0].addr
    );
    let up = format!(
        "gateway_upstream_healthy{{upstream=\"app\",endpoint=\"{}\"}}",
        rs[1].addr
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        (metric(&metrics, &down), metric(&metrics, &up)),
        (0.0, 1.0),
        "{metrics}"
    );
    rs[1].shared.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = client.get(gw.url("/whoami")).send().await.expect("sent");
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let ready = reqwest::get(format!("http://{}/readyz", gw.admin))
        .await
        .expect("admin");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_health_answer_over_64_kib_fails_the_check() {
    for (bytes, expected) in [(1_000, StatusCode::OK), (70_000, StatusCode::SERVICE_UNAVAILABLE)] {
        let rs = replicas(1).await;
        let health = format!(
            "health = {{ path = \"/bytes?n={bytes}\", interval = \"100ms\", timeout = \"500ms\", unhealthy_threshold = 1, healthy_threshold = 1 }}"
        );
        let gw = gateway_for(&addrs(&rs), &health, "").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            status(&gw.client(), &gw.url("/whoami")).await,
            expected,
            "{bytes} bytes"
        );
    }
}

#[tokio::test]
async fn a_slow_replica_is_a_504_problem() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "response_timeout = \"300ms\"\nmax_tries = 1", "").await;
    let started = Instant::now();
    let response = gw.client().get(gw.url("/slow?ms=3000")).send().await.expect("sent");
    assert!(started.elapsed() < Duration::from_secs(2));
    let body = assert_problem(response, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(body["detail"].as_str().expect("detail").contains("300ms"), "{body}");
}

#[tokio::test]
async fn a_timeout_is_retried_for_gets_but_not_for_posts() {
    let rs = replicas(2).await;
    let gw = gateway_for(
        &addrs(&rs),
        "response_timeout = \"300ms\"\nmax_tries = 2\nmax_fails = 100",
        "",
    )
    .await;
    let client = gw.client();
    let response = client.get(gw.url("/slow?ms=3000")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(rs[0].hits() + rs[1].hits(), 2, "the GET went to both replicas");
    let response = client
        .post(gw.url("/slow?ms=3000"))
        .body("x")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "the replica's own answer for POST /slow"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_upstream_retries_total{upstream=\"app\",reason=\"timeout\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_503_from_a_replica_is_retried_on_another_for_idempotent_requests() {
    let rs = replicas(2).await;
    let gw = gateway_for(&addrs(&rs), "balance = \"round_robin\"\nmax_fails = 100", "").await;
    let client = gw.client();
    let response = client.get(gw.url("/status?code=503")).send().await.expect("sent");
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "both replicas answered 503"
    );
    assert_eq!(rs[0].hits() + rs[1].hits(), 2);
    let response = client
        .post(gw.url("/status?code=503"))
        .body("once")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        rs[0].hits() + rs[1].hits(),
        3,
        "a POST is never repeated after it was sent"
    );
}

#[tokio::test]
async fn a_post_is_retried_on_another_replica_when_the_first_refused_the_connection() {
    let mut rs = replicas(2).await;
    let gw = gateway_for(&addrs(&rs), "balance = \"round_robin\"", "").await;
    rs[0].kill().await;
    let client = gw.client();
    for _ in 0..4 {
        let response = client
            .post(gw.url("/echo"))
            .body("payload-123")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            (body["name"].as_str(), body["body_len"].as_u64()),
            (Some("r1"), Some(11))
        );
    }
}

#[tokio::test]
async fn every_replica_refusing_is_a_502_problem() {
    let mut rs = replicas(2).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    for r in &mut rs {
        r.kill().await;
    }
    let response = gw.client().post(gw.url("/echo")).body("x").send().await.expect("sent");
    let body = assert_problem(response, StatusCode::BAD_GATEWAY).await;
    assert!(
        !body["detail"].as_str().expect("detail").contains("127.0.0.1"),
        "no internals leak: {body}"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact_request_after_request() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "[limits]\nmax_body = \"8MiB\"").await;
    let h1 = gw.client_builder().http1_only().build().expect("client");
    for client in [gw.client(), h1] {
        for _ in 0..3 {
            let n = 3 * 1024 * 1024 + 7;
            let body = client
                .get(gw.url(&format!("/bytes?n={n}")))
                .send()
                .await
                .expect("sent")
                .bytes()
                .await
                .expect("body");
            assert_eq!(body.len(), n);
            assert!(
                body.iter().enumerate().all(|(i, b)| *b == b'0' + (i % 10) as u8),
                "corrupted"
            );
            let echoed: Value = client
                .post(gw.url("/echo"))
                .body(vec![b'x'; 1_900_000]) // under axum's 2 MB default in the replica
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("json");
            assert_eq!(echoed["body_len"], 1_900_000);
        }
    }
}

#[tokio::test]
async fn requests_over_max_requests_in_flight_are_shed_with_a_503_until_one_ends() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "[limits]\nmax_requests_in_flight = 1").await;
    let client = gw.client();
    let slow = tokio::spawn({
        let (c, url) = (client.clone(), gw.url("/slow?ms=800"));
        async move { c.get(url).send().await.expect("sent").status() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let response = client.get(gw.url("/whoami")).send().await.expect("sent");
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        slow.await.expect("task"),
        StatusCode::OK,
        "the request in flight is unaffected"
    );
    // Its place is free again.
    assert_eq!(status(&client, &gw.url("/whoami")).await, StatusCode::OK);
    assert_eq!(status(&client, &gw.url("/whoami")).await, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_body_is_a_413_and_never_reaches_the_replica() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "[limits]\nmax_body = \"1KiB\"").await;
    let client = gw.client();
    let response = client
        .post(gw.url("/echo"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("sent");
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    // Without a Content-Length (streamed), the limit still holds.
    let stream = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let response = client
        .post(gw.url("/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(rs[0].hits(), 0);
    let response = client
        .post(gw.url("/echo"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_route_with_its_own_body_bound_takes_larger_bodies_than_the_rest() {
    let rs = replicas(1).await;
    let routes = "[limits]\nmax_body = \"1KiB\"\n\n[[routes]]\npath_prefix = \"/imports\"\nupstream = \"app\"\nmax_body = \"4KiB\"";
    let gw = gateway_for(&addrs(&rs), "", routes).await;
    let client = gw.client();
    let post = |path: &str, size: usize| client.post(gw.url(path)).body(vec![b'x'; size]).send();
    assert_eq!(post("/imports", 3000).await.expect("sent").status(), StatusCode::OK);
    assert_eq!(
        post("/imports/more", 4096).await.expect("sent").status(),
        StatusCode::OK
    );
    assert_problem(
        post("/imports", 5000).await.expect("sent"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_problem(post("/echo", 3000).await.expect("sent"), StatusCode::PAYLOAD_TOO_LARGE).await;
    // Streamed (no Content-Length): the route's bound holds too.
    let stream = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])));
    let response = client
        .post(gw.url("/imports"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        rs[0].hits(),
        2,
        "only the bodies within their route's bound reached the replica"
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_from_what_the_gateway_saw() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    let client = gw.client_builder().http1_only().build().expect("client");
    let response = client
        .get(gw.url("/echo?q=1"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "req-42")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let body: Value = response.json().await.expect("json");
    let h: HashMap<String, String> = serde_json::from_value(body["headers"].clone()).expect("headers");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    let port = gw.https.expect("https").port();
    assert_eq!(h["x-forwarded-host"], format!("localhost:{port}"));
    assert_eq!(h["host"], format!("localhost:{port}"));
    assert_eq!(h["x-request-id"], "req-42");
    assert!(!h.contains_key("forwarded") && !h.contains_key("x-private"), "{h:?}");
    assert_eq!(body["uri"], "/echo?q=1");

    let response = gw.client().get(gw.url("/echo")).send().await.expect("sent");
    let generated = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["headers"]["x-request-id"],
        generated.as_str(),
        "a created id reaches the replica too"
    );
}

#[tokio::test]
async fn routes_pick_upstreams_by_longest_prefix_and_unknown_paths_are_404() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let rest = format!(
        "[upstreams.a]\nservers = [\"{}\"]\n[upstreams.b]\nservers = [\"{}\"]\n\
         [[routes]]\npath_prefix = \"/api\"\nupstream = \"a\"\n[[routes]]\npath_prefix = \"/api/special\"\nupstream = \"b\"\n",
        a.addr, b.addr
    );
    let dir = tempfile::tempdir().expect("dir");
    common::dev_cert(dir.path());
    let text = common::config_text(dir.path(), "", &rest);
    let gw = common::spawn_gateway(dir, &text).await;
    let client = gw.client();
    let name = |r: reqwest::Response| async move { r.json::<Value>().await.expect("json")["name"].clone() };
    assert_eq!(
        name(client.get(gw.url("/api/x")).send().await.expect("sent")).await,
        "a"
    );
    assert_eq!(
        name(client.get(gw.url("/api/special/x")).send().await.expect("sent")).await,
        "b"
    );
    let response = client.get(gw.url("/other")).send().await.expect("sent");
    assert_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn a_discovered_upstream_is_resolved_through_dns() {
    let rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    common::dev_cert(dir.path());
    // `localhost` may also resolve to ::1, where nothing listens: that
    // replica is refused, ejected, and the request retried on 127.0.0.1.
    let rest = format!(
        "[upstreams.app]\ndiscover = \"localhost:{}\"\ndiscover_interval = \"200ms\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        rs[0].addr.port()
    );
    let text = common::config_text(dir.path(), "", &rest);
    let gw = common::spawn_gateway(dir, &text).await;
    let client = gw.client();
    for _ in 0..5 {
        let response = client.get(gw.url("/whoami")).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(rs[0].hits(), 5);
}

#[tokio::test]
async fn connections_spread_over_every_worker_and_each_proxies() {
    let rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    common::dev_cert(dir.path());
    let text = common::config_text(dir.path(), "workers = 2", &common::upstream_text(&addrs(&rs), ""));
    let gw = common::spawn_gateway(dir, &text).await;
    // No idle connections kept: every request arrives on a new connection,
    // which the kernel hands to one worker's socket by its address hash.
    let client = gw.client_builder().pool_max_idle_per_host(0).build().expect("client");
    let connections = 40;
    for _ in 0..connections {
        assert_eq!(common::status(&client, &gw.url("/whoami")).await, StatusCode::OK);
    }
    let text = gw.metrics().await;
    let per_worker = |w: &str| metric(&text, &format!("gateway_worker_connections_total{{worker=\"{w}\"}}"));
    let (w0, w1) = (per_worker("0"), per_worker("1"));
    assert_eq!(w0 + w1, f64::from(connections), "{text}");
    // All 40 on one worker would happen with probability 2^-39.
    assert!(w0 > 0.0 && w1 > 0.0, "one worker took every connection: {w0} / {w1}");
    assert_eq!(rs[0].hits(), 40, "both workers reached the upstream");
}
