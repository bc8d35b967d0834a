//! Every wait is bounded and no client can take a shared resource: the send
//! timeout (HTTP/1.1 sockets and HTTP/2 streams a client will not read),
//! the cap and queue on connections to a replica, each client's share of
//! the in-flight requests, and per-client connection caps keyed by the
//! PROXY header's address and by IPv6 /64.

mod common;

use common::raw::RawClient;
use common::upstream::{addrs, replicas};
use common::{TestGateway, client_from, metric, plain_gateway};
use http_body_util::BodyExt;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_response_the_client_never_reads_is_cut_at_the_send_timeout_and_frees_its_upstream_connection() {
    let rs = replicas(1).await;
    // One connection to the replica: the next request needs the one the
    // unread response holds.
    let gw = plain_gateway(
        &addrs(&rs),
        "workers = 1",
        "max_connections = 1\nqueue_timeout = \"10s\"",
        "[limits]\nsend_timeout = \"500ms\"",
    )
    .await;
    let mut reader = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    reader.send(b"GET /bytes?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let next = client_from("127.0.0.3")
        .get(gw.http_url("/whoami"))
        .send()
        .await
        .expect("sent");
    assert_eq!(next.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the upstream connection came back after {:?}",
        started.elapsed()
    );
    // What the kernel buffered is still readable; then the gateway's close.
    assert!(
        reader.closed_within(Duration::from_secs(5)).await,
        "the unread response's connection is still open"
    );
    let send_timeouts = "gateway_request_errors_total{origin=\"client\",reason=\"send_timeout\"}";
    assert_eq!(gw.metric_eventually(send_timeouts, 1.0).await, 1.0);
}

#[tokio::test]
async fn an_http2_stream_left_without_window_is_reset_and_the_connections_other_streams_go_on() {
    let rs = replicas(1).await;
    let gw = plain_gateway(&addrs(&rs), "", "", "[limits]\nsend_timeout = \"500ms\"").await;
    let stream = tokio::net::TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .adaptive_window(false)
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    let get = |path: &str| {
        http::Request::get(format!("http://x{path}"))
            .body(http_body_util::Empty::new())
            .expect("request")
    };
    // Never read: the stream's window closes after 64 KiB.
    let stalled = sender.send_request(get("/bytes?n=4194304")).await.expect("a head");
    assert_eq!(stalled.status(), StatusCode::OK);
    let other = sender.send_request(get("/whoami")).await.expect("a head");
    let other = other.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&other[..], b"r0", "another stream on the connection is served");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = stalled.into_body().collect().await;
    assert!(read.is_err(), "the stalled stream was not reset");
    // The connection itself is still good.
    let after = sender.send_request(get("/whoami")).await.expect("a head");
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_beyond_a_replicas_connection_cap_wait_in_a_bounded_queue() {
    let rs = replicas(1).await;
    let gw = plain_gateway(
        &addrs(&rs),
        "workers = 1",
        "max_connections = 2\nmax_queue = 1\nqueue_timeout = \"5s\"",
        "",
    )
    .await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let client = client_from(&format!("127.0.2.{}", n + 1));
            let url = gw.http_url("/slow?ms=1000");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 * n)).await;
                let status = client.get(url).send().await.expect("sent").status();
                (status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let served: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, t)| *t)
        .collect();
    let refused: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!((served.len(), refused.len()), (3, 1), "{results:?}");
    assert!(
        refused[0] < Duration::from_millis(800),
        "the queue was full: refused at once, {results:?}"
    );
    assert!(
        served.iter().any(|t| *t >= Duration::from_millis(1900)),
        "one waited for a connection: {results:?}"
    );
    // The gateway's own limit never counts against the replica.
    assert_eq!(
        common::status(&client_from("127.0.2.9"), &gw.http_url("/whoami")).await,
        StatusCode::OK
    );
    assert_eq!(
        metric(
            &gw.metrics().await,
            "gateway_request_errors_total{origin=\"gateway\",reason=\"upstream_busy\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_connection_still_sending_a_request_body_is_not_given_to_another_request() {
    let rs = replicas(1).await;
    // One pool; bodies over 1 KiB stream; a pooled connection that is not
    // ready would hold the next request for the whole connect timeout.
    let gw = plain_gateway(
        &addrs(&rs),
        "workers = 1",
        "retry_buffer = \"1KiB\"\nconnect_timeout = \"5s\"",
        "",
    )
    .await;
    let mut uploader = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    // /status answers without reading: the answer comes while the body,
    // 2 KiB then a stall, is still being sent.
    uploader
        .send(b"POST /status?code=200 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n")
        .await;
    uploader.send(&[b'a'; 2048]).await;
    uploader.send(b"\r\n").await;
    let early = uploader.answer(Duration::from_secs(5)).await.expect("an early answer");
    assert_eq!(early.status, 200, "{early:?}");
    let started = Instant::now();
    let next = client_from("127.0.0.3")
        .get(gw.http_url("/whoami"))
        .send()
        .await
        .expect("sent");
    assert_eq!(next.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the next request waited {:?} for a connection still sending",
        started.elapsed()
    );
    drop(uploader);
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_in_flight_requests() {
    let rs = replicas(1).await;
    let gw = plain_gateway(&addrs(&rs), "", "", "[limits]\nmax_requests_in_flight_per_client = 3").await;
    let heavy = client_from("127.0.3.1");
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (heavy.clone(), gw.http_url("/slow?ms=1500"));
            tokio::spawn(async move { client.get(url).send().await.expect("sent").status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fourth = heavy.get(gw.http_url("/whoami")).send().await.expect("sent");
    assert_eq!(fourth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fourth.headers()["retry-after"], "1");
    // Everyone else is served meanwhile.
    for n in 2..6 {
        let other = client_from(&format!("127.0.3.{n}"));
        assert_eq!(common::status(&other, &gw.http_url("/whoami")).await, StatusCode::OK);
    }
    for t in slow {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(
        common::status(&heavy, &gw.http_url("/whoami")).await,
        StatusCode::OK,
        "places came back"
    );
}

/// A PROXY v1 header for a client at `source` (IPv4 or IPv6).
fn proxy_v1(source: &str) -> Vec<u8> {
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    let dest = if source.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {source} {dest} 40000 80\r\n").into_bytes()
}

/// A connection through the balancer (127.0.0.1) for `source`; `true` if
/// the gateway served a request on it (and it stays open).
async fn through_balancer(gw: &TestGateway, source: &str, open: &mut Vec<RawClient>) -> bool {
    let mut client = RawClient::connect("127.0.0.1", gw.http.expect("http")).await;
    let mut bytes = proxy_v1(source);
    bytes.extend_from_slice(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n");
    client.send(&bytes).await;
    let served = client
        .answer(Duration::from_secs(3))
        .await
        .is_some_and(|a| a.status == 200);
    open.push(client);
    served
}

#[tokio::test]
async fn per_client_connection_caps_count_the_proxy_headers_client_and_ipv6_by_its_64() {
    let rs = replicas(1).await;
    let gw = plain_gateway(
        &addrs(&rs),
        "",
        "",
        "[limits]\nmax_connections_per_ip = 2\n[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = true\n",
    )
    .await;
    let mut open = Vec::new();
    assert!(through_balancer(&gw, "198.51.100.7", &mut open).await);
    assert!(through_balancer(&gw, "198.51.100.7", &mut open).await);
    assert!(
        !through_balancer(&gw, "198.51.100.7", &mut open).await,
        "a third from one client"
    );
    assert!(
        through_balancer(&gw, "198.51.100.8", &mut open).await,
        "another client behind the same balancer has its own cap"
    );
    // One IPv6 host owns its whole /64.
    assert!(through_balancer(&gw, "2001:db8:1:2::1", &mut open).await);
    assert!(through_balancer(&gw, "2001:db8:1:2::2", &mut open).await);
    assert!(
        !through_balancer(&gw, "2001:db8:1:2::3", &mut open).await,
        "a third from one /64"
    );
    assert!(through_balancer(&gw, "2001:db8:1:3::1", &mut open).await);
    assert_eq!(
        metric(
            &gw.metrics().await,
            "gateway_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        2.0
    );
}
