//! Slow and idle clients cannot hold the app's connections: raw sockets
//! that send half a head, nothing, or a stalled HTTP/2 preface are closed
//! at the header read timeout; idle HTTP/1.1 and HTTP/2 connections are
//! closed too; a client that is merely slow still gets its answer.

mod common;

use common::{Backend, Options, TestApp, spawn_with};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above every configured bound below: a connection still open then is
/// held forever.
const PATIENCE: Duration = Duration::from_secs(5);

async fn app(header_read_timeout: &str, idle_timeout: &str) -> TestApp {
    spawn_with(
        Backend::Embedded,
        Options {
            env: vec![
                ("APP_HEADER_READ_TIMEOUT".into(), header_read_timeout.into()),
                ("APP_IDLE_TIMEOUT".into(), idle_timeout.into()),
            ],
            ..Options::default()
        },
    )
    .await
}

/// Reads until the server closes; what it sent, and when it closed
/// (`None`: still open after [`PATIENCE`]).
async fn until_closed(stream: &mut TcpStream) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + PATIENCE).into(), stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
            Ok(Ok(0) | Err(_)) => {
                return (String::from_utf8_lossy(&received).into_owned(), Some(started.elapsed()));
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn half_a_request_head_is_cut_off_at_the_header_read_timeout() {
    let app = app("400ms", "30s").await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: app\r\nX-Slow: ")
        .await
        .expect("write");
    let (received, closed) = until_closed(&mut stream).await;
    let closed = closed.expect("the connection was held open with half a head");
    assert!(closed >= Duration::from_millis(300), "closed too early: {closed:?}");
    assert!(!received.contains(" 200 "), "a half head was answered: {received}");
}

#[tokio::test]
async fn a_client_that_sends_nothing_or_a_stalled_http2_preface_is_cut_off() {
    let app = app("400ms", "30s").await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let (_, closed) = until_closed(&mut stream).await;
        let closed = closed.unwrap_or_else(|| panic!("held open after sending {opening:?}"));
        assert!(closed >= Duration::from_millis(300), "closed too early: {closed:?}");
    }
}

#[tokio::test]
async fn a_slow_but_steady_client_is_still_answered() {
    let app = app("1500ms", "30s").await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    for part in [
        "GET /healthz HTTP/1.1\r\n",
        "Host: app\r\n",
        "Connection: close\r\n",
        "\r\n",
    ] {
        stream.write_all(part.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (received, _) = until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200 "), "{received}");
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let app = app("400ms", "30s").await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("write");
    let (received, closed) = until_closed(&mut stream).await;
    assert!(received.starts_with("HTTP/1.1 200 "), "{received}");
    assert!(closed.is_some(), "an idle keep-alive connection was held open");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let app = app("5s", "400ms").await;
    let stream = TcpStream::connect(app.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let request = http::Request::get(app.url("/healthz"))
        .body(axum::body::Body::empty())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);
    let started = Instant::now();
    let ended = tokio::time::timeout(PATIENCE, conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was held open");
    assert!(started.elapsed() >= Duration::from_millis(200), "closed too early");
}
