//! A client's fault is never a replica's: malformed, truncated or stalled
//! request bodies are answered 400 or 408, are never retried, and never
//! count toward a replica's ejection; a replica's response timeout starts
//! only once it has the whole request. Raw sockets, as an attacker would.

mod common;

use common::raw::RawClient;
use common::upstream::{addrs, replicas};
use common::{TestGateway, metric, plain_gateway};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// The replica still serves a well-behaved client (it was not ejected).
async fn assert_replica_serves(gw: &TestGateway) {
    let answer = reqwest::get(gw.http_url("/whoami")).await.expect("sent");
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "an innocent client got {}",
        answer.status()
    );
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400s_and_never_eject_the_replica() {
    let rs = replicas(1).await;
    let gw = plain_gateway(&addrs(&rs), "", "max_fails = 2", "").await;
    let to = gw.http.expect("http");
    for i in 0..4 {
        let mut client = RawClient::connect("127.0.0.2", to).await;
        client
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            .await;
        let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(answer.status, 400, "try {i}: {answer:?}");
        assert!(answer.body.contains("request_id"), "a problem document: {answer:?}");
    }
    assert_replica_serves(&gw).await;
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "gateway_request_errors_total{origin=\"client\",reason=\"bad_request\"}"
        ) >= 4.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "gateway_upstream_retries_total{upstream=\"app\",reason=\"reset\"}"
        ),
        0.0,
        "a client's broken body is never retried"
    );
}

#[tokio::test]
async fn bodies_cut_short_never_eject_the_replica() {
    let rs = replicas(1).await;
    let gw = plain_gateway(&addrs(&rs), "", "max_fails = 2", "").await;
    let to = gw.http.expect("http");
    for _ in 0..4 {
        // Announces 100 bytes, sends 5, and hangs up.
        let mut client = RawClient::connect("127.0.0.2", to).await;
        client
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_replica_serves(&gw).await;
}

#[tokio::test]
async fn a_stalled_upload_is_a_408_not_a_504_and_never_ejects_the_replica() {
    let rs = replicas(1).await;
    // The replica's response timeout is shorter than the body timeout: an
    // upload that stalls must still be the client's 408, not a 504.
    let gw = plain_gateway(
        &addrs(&rs),
        "",
        "max_fails = 2\nresponse_timeout = \"200ms\"",
        "[limits]\nbody_read_timeout = \"400ms\"",
    )
    .await;
    let to = gw.http.expect("http");
    for i in 0..3 {
        let mut client = RawClient::connect("127.0.0.2", to).await;
        let started = Instant::now();
        client
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
            .await;
        client.send(&[b'a'; 1000]).await;
        let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(answer.status, 408, "try {i}: {answer:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350), "answered after {took:?}");
    }
    assert_replica_serves(&gw).await;
    assert!(
        metric(
            &gw.metrics().await,
            "gateway_request_errors_total{origin=\"client\",reason=\"body_timeout\"}"
        ) >= 3.0
    );
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_the_replicas_timeout() {
    let rs = replicas(1).await;
    // Each gap is under the body timeout; the whole upload takes far longer
    // than the replica's response timeout, which starts at its last byte.
    let gw = plain_gateway(
        &addrs(&rs),
        "",
        "response_timeout = \"300ms\"",
        "[limits]\nbody_read_timeout = \"500ms\"",
    )
    .await;
    let mut client = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.send(b"x").await;
    }
    let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("\"body_len\":10"), "{answer:?}");
}

#[tokio::test]
async fn a_body_that_never_comes_gives_its_in_flight_place_back_at_the_body_timeout() {
    let rs = replicas(1).await;
    let gw = plain_gateway(
        &addrs(&rs),
        "",
        "",
        "[limits]\nmax_requests_in_flight = 3\nbody_read_timeout = \"500ms\"",
    )
    .await;
    let to = gw.http.expect("http");
    // Three GETs that announce 10 bytes and send 5 take every place.
    let mut stalled = Vec::new();
    for n in 0..3 {
        let mut client = RawClient::connect(&format!("127.0.1.{}", n + 1), to).await;
        client
            .send(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
            .await;
        stalled.push(client);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = reqwest::get(gw.http_url("/whoami")).await.expect("sent").status();
    assert_eq!(during, StatusCode::SERVICE_UNAVAILABLE, "the places are taken for now");
    for client in &mut stalled {
        let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(answer.status, 408, "{answer:?}");
    }
    assert_replica_serves(&gw).await;
}

#[tokio::test]
async fn a_small_body_sent_without_a_length_is_read_in_full_before_a_replica_is_contacted() {
    let rs = replicas(1).await;
    let gw = plain_gateway(&addrs(&rs), "", "", "[limits]\nbody_read_timeout = \"400ms\"").await;
    let mut client = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    // /status answers without reading the body: had the request been
    // forwarded, the replica would have answered 200 at once.
    client
        .send(b"POST /status?code=200 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n")
        .await;
    client.send(&[b'a'; 100]).await;
    let answer = client.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(rs[0].hits(), 0, "the replica was never contacted");
}

#[tokio::test]
async fn a_replica_that_stops_reading_a_streamed_body_is_late_not_the_client() {
    let rs = replicas(1).await;
    // The replica sleeps without reading; the body is far larger than the
    // socket buffers between them, so the gateway's writes block.
    let gw = plain_gateway(
        &addrs(&rs),
        "",
        "response_timeout = \"500ms\"\nmax_tries = 1",
        "[limits]\nmax_body = \"64MiB\"\nbody_read_timeout = \"30s\"",
    )
    .await;
    let size = 48 * 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /sleep?ms=20000 HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = write.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer after {:?}: {other:?}", started.elapsed()),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after {:?}",
        started.elapsed()
    );
    writer.abort();
}
