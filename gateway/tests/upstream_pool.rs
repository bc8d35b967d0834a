//! The upstream connection pool against a raw HTTP/1.1 replica on port 0
//! that counts the connections it accepts and sees closed, and can close
//! each connection after one response (as a replica whose keep-alive
//! timeout fired would).

use axum::body::Body;
use gateway::balancer::Upstream;
use gateway::config::UpstreamSettings;
use gateway::upstream_client::UpstreamClient;
use http::Request;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    /// Connections the gateway side closed.
    closed_by_client: AtomicUsize,
}

/// A replica answering every request with its connection's number; with
/// `close_after_each`, it closes the connection after the response without
/// saying so (no `Connection: close`).
async fn replica(close_after_each: bool) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let number = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(stream, number, close_after_each, shared.clone()));
        }
    });
    (addr, counts)
}

async fn serve(mut stream: TcpStream, number: usize, close_after_each: bool, counts: Arc<Counts>) {
    let mut buffer = Vec::new();
    loop {
        // Read one request head and its Content-Length body.
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    counts.closed_by_client.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("length"));
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("body");
            buffer.extend_from_slice(&chunk[..n]);
        }
        buffer.drain(..head_end + length);
        let body = number.to_string();
        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        stream.write_all(response.as_bytes()).await.expect("write");
        if close_after_each {
            return;
        }
    }
}

fn client(addr: SocketAddr, settings: UpstreamSettings) -> UpstreamClient {
    UpstreamClient::new(Arc::new(Upstream::new("app", settings, &[addr])), 1)
}

/// Sends one request and returns the body: the replica's connection number.
async fn exchange(client: &UpstreamClient, addr: SocketAddr, method: &str, body: &'static str) -> String {
    let request = Request::builder()
        .method(method)
        .uri("/x")
        .header("host", addr.to_string())
        .header("content-length", body.len())
        .body(Body::from(body))
        .expect("request");
    let response = client.send(addr, request, None).await.expect("a response");
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// `GET /x` without a body, for `addr`.
fn get(addr: SocketAddr) -> Request<Body> {
    Request::builder()
        .uri("/x")
        .header("host", addr.to_string())
        .body(Body::empty())
        .expect("request")
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, counts) = replica(false).await;
    let client = client(addr, UpstreamSettings::default());
    for _ in 0..5 {
        assert_eq!(exchange(&client, addr, "GET", "").await, "1");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_replica_closed_while_idle_is_replaced_even_for_a_post() {
    let (addr, counts) = replica(true).await;
    let client = client(addr, UpstreamSettings::default());
    assert_eq!(exchange(&client, addr, "POST", "one").await, "1");
    settle().await; // the replica has closed connection 1 by now
    // Not an error, and not sent twice: a fresh connection carries it.
    assert_eq!(exchange(&client, addr, "POST", "two").await, "2");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_keepalive_timeout() {
    let (addr, counts) = replica(false).await;
    let settings = UpstreamSettings {
        keepalive_timeout: Duration::from_millis(200),
        ..UpstreamSettings::default()
    };
    let client = client(addr, settings);
    exchange(&client, addr, "GET", "").await;
    settle().await;
    assert_eq!(counts.closed_by_client.load(Ordering::SeqCst), 0, "closed too early");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counts.closed_by_client.load(Ordering::SeqCst),
        1,
        "idle connection still open"
    );
    // The next request opens a new one.
    assert_eq!(exchange(&client, addr, "GET", "").await, "2");
}

#[tokio::test]
async fn at_most_keepalive_max_idle_connections_stay_open() {
    let (addr, counts) = replica(false).await;
    let settings = UpstreamSettings {
        keepalive_max_idle: 1,
        ..UpstreamSettings::default()
    };
    let client = client(addr, settings);
    // Three at once need three connections...
    let (a, b, c) = tokio::join!(
        exchange(&client, addr, "GET", ""),
        exchange(&client, addr, "GET", ""),
        exchange(&client, addr, "GET", ""),
    );
    let mut numbers = [a, b, c];
    numbers.sort();
    assert_eq!(numbers, ["1", "2", "3"]);
    settle().await;
    // ...but only one is kept.
    assert_eq!(counts.closed_by_client.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_response_dropped_before_its_body_ends_does_not_return_its_connection() {
    let (addr, counts) = replica(false).await;
    let client = client(addr, UpstreamSettings::default());
    let request = get(addr);
    let response = client.send(addr, request, None).await.expect("a response");
    // One byte of "1" is still unread; HTTP/1.1 cannot reuse the connection.
    drop(response);
    settle().await;
    assert_eq!(counts.closed_by_client.load(Ordering::SeqCst), 1);
    assert_eq!(exchange(&client, addr, "GET", "").await, "2");
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    let client = client(addr, UpstreamSettings::default());
    let request = get(addr);
    let error = client.send(addr, request, None).await.expect_err("nothing listens");
    assert!(
        matches!(error, gateway::upstream_client::SendError::Connect(_)),
        "{error:?}"
    );
}
