//! Requests shaped to slip past the gateway: `Connection` naming headers
//! the gateway owns, several or disagreeing hosts, targets that are not
//! paths (`OPTIONS *`, `CONNECT`), oversized HTTP/2 bodies. Each is refused
//! cheaply, rate limited like any request, counted, and never logged at
//! ERROR.

mod common;

use common::logged::{LoggedGateway, access_lines};
use common::raw::RawClient;
use common::upstream::{addrs, replicas};
use common::{TestGateway, gateway_for, http_gateway, metric};
use futures::StreamExt;
use reqwest::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// One request on a fresh connection from `from`; its answer.
async fn ask(gw: &TestGateway, from: &str, request: &str) -> common::raw::Answer {
    let mut client = RawClient::connect(from, gw.http.expect("http")).await;
    client.send(request.as_bytes()).await;
    client.answer(WAIT).await.expect("an answer")
}

#[tokio::test]
async fn connection_cannot_name_away_the_host_the_request_id_or_the_forwarding_headers() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let answer = ask(
        &gw,
        "127.0.0.2",
        "GET /echo HTTP/1.1\r\nHost: api.example\r\nX-Request-Id: abc-123\r\nX-Custom: 1\r\n\
         Connection: keep-alive, Host, X-Request-Id, X-Forwarded-For, X-Real-IP, Content-Length, X-Custom\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let echoed: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
    let headers = &echoed["headers"];
    assert_eq!(headers["host"], "api.example", "{echoed}");
    assert_eq!(headers["x-request-id"], "abc-123", "{echoed}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.2", "{echoed}");
    assert_eq!(headers["x-real-ip"], "127.0.0.2", "{echoed}");
    assert!(
        headers.get("x-custom").is_none(),
        "a real hop-by-hop option still goes: {echoed}"
    );
    assert!(headers.get("connection").is_none(), "{echoed}");
}

#[tokio::test]
async fn several_hosts_or_a_host_that_disagrees_with_the_target_are_400s() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let refused = [
        "GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        "GET http://a.example/echo HTTP/1.1\r\nHost: b.example\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        "GET /echo HTTP/1.1\r\n\r\n",
    ];
    for request in refused {
        let answer = ask(&gw, "127.0.0.2", request).await;
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert!(answer.head.contains("application/problem+json"), "{answer:?}");
    }
    assert_eq!(rs[0].hits(), 0, "none reached the replica");
    let agreeing = ask(
        &gw,
        "127.0.0.2",
        "GET http://a.example/echo HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert_eq!(agreeing.status, 200, "{agreeing:?}");
    assert!(agreeing.body.contains("\"host\":\"a.example\""), "{agreeing:?}");
}

#[tokio::test]
async fn targets_that_are_not_paths_pass_the_rate_limiter_and_are_refused() {
    let rs = replicas(1).await;
    let gw = http_gateway(
        &addrs(&rs),
        "[rate_limits.per_ip]\nrate = \"1r/m\"\nburst = 1\nnodelay = true\n",
    )
    .await;
    let mut client = RawClient::connect("127.0.0.2", gw.http.expect("http")).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
        statuses.push(client.answer(WAIT).await.expect("an answer").status);
    }
    assert_eq!(statuses, [400, 400, 429]);
    let connect = ask(
        &gw,
        "127.0.0.3",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(connect.status, 400, "{connect:?}");
    assert_eq!(rs[0].hits(), 0);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "gateway_rate_limit_decisions_total{policy=\"per_ip\",outcome=\"rejected\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn heads_hyper_refuses_are_answered_and_counted() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    let huge = format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(ask(&gw, "127.0.0.2", &huge).await.status, 431);
    let smuggled = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert_eq!(ask(&gw, "127.0.0.2", smuggled).await.status, 400);
    let garbage = "GET /echo HTTP/1.1\r\nHost x\r\n\r\n";
    assert_eq!(ask(&gw, "127.0.0.2", garbage).await.status, 400);
    assert_eq!(rs[0].hits(), 0);
    let too_large = "gateway_request_errors_total{origin=\"client\",reason=\"header_too_large\"}";
    assert_eq!(gw.metric_eventually(too_large, 1.0).await, 1.0);
    let bad = "gateway_request_errors_total{origin=\"client\",reason=\"bad_request\"}";
    assert_eq!(gw.metric_eventually(bad, 2.0).await, 2.0);
}

#[tokio::test]
async fn a_body_framed_both_by_length_and_chunks_never_reaches_a_replica_ambiguously() {
    let rs = replicas(1).await;
    let gw = http_gateway(&addrs(&rs), "").await;
    // Both framings: hyper refuses it (a request smuggling vector), or
    // forwards it with one framing only; either way the replica is not
    // blamed and the next client is served.
    let both = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = ask(&gw, "127.0.0.2", both).await;
    assert!(
        answer.status == 400 || answer.body.contains("\"body_len\":5"),
        "{answer:?}"
    );
    let next = ask(&gw, "127.0.0.3", "GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(next.status, 200);
}

#[tokio::test]
async fn the_redirect_listener_answers_only_paths() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "").await;
    let star = ask(&gw, "127.0.0.2", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(star.status, 400, "{star:?}");
    assert_eq!(star.header("location"), None, "{star:?}");
    let path = ask(&gw, "127.0.0.2", "GET /configs?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(path.status, 308, "{path:?}");
    let port = gw.https.expect("https").port();
    assert_eq!(
        path.header("location").as_deref(),
        Some(format!("https://localhost:{port}/configs?x=1").as_str())
    );
}

/// Uploads `chunks` of 16 KiB over `client` (declaring the length when
/// `declared`); the answer's status and how many chunks the client got to
/// send within a second of the answer.
async fn upload(client: &reqwest::Client, url: &str, chunks: usize, declared: bool) -> (StatusCode, usize) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let stream = futures::stream::iter(0..chunks).map(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok::<_, std::io::Error>(vec![b'x'; 16 * 1024])
    });
    let mut request = client.post(url).body(reqwest::Body::wrap_stream(stream));
    if declared {
        request = request.header("content-length", chunks * 16 * 1024);
    }
    let response = request.send().await.expect("an answer, not a reset stream");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    for _ in 0..20 {
        if pulled.load(Ordering::Relaxed) == chunks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (response.status(), pulled.load(Ordering::Relaxed))
}

#[tokio::test]
async fn an_oversized_http2_body_gets_its_413_and_the_client_may_finish_sending() {
    let rs = replicas(1).await;
    let gw = gateway_for(&addrs(&rs), "", "[limits]\nmax_body = \"64KiB\"").await;
    let client = gw.client();
    let url = gw.url("/echo");
    // Declared too large (refused before reading), and streamed without a
    // length (refused once past the limit): the answer is a 413 and the
    // stream is not reset under the client while it is still sending.
    assert_eq!(
        upload(&client, &url, 128, true).await,
        (StatusCode::PAYLOAD_TOO_LARGE, 128)
    );
    assert_eq!(
        upload(&client, &url, 128, false).await,
        (StatusCode::PAYLOAD_TOO_LARGE, 128)
    );
    // Far past what the gateway drains (64 bodies' worth): the 413 still
    // comes first, then the stream is reset.
    let (status, sent) = upload(&client, &url, 2048, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(sent < 2048, "the gateway drained {sent} chunks of an endless upload");
    assert_eq!(rs[0].hits(), 0);
}

#[tokio::test]
async fn client_errors_are_counted_and_never_logged_at_error() {
    let rs = replicas(1).await;
    let dir = tempfile::tempdir().expect("dir");
    // Only /api is routed: everything else is the client's 404.
    let gw = LoggedGateway::start_with_routes(dir.path(), &rs, &["/api", "/whoami"], "").await;
    for path in ["/nowhere", "/nowhere/else", "/x"] {
        let status = reqwest::get(gw.url(path)).await.expect("sent").status();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let bad = reqwest::Client::new()
        .get(gw.url("/api"))
        .header("host", "a b")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(
            &metrics,
            "gateway_request_errors_total{origin=\"client\",reason=\"no_route\"}"
        ),
        3.0
    );
    gw.stop();
    let log = std::fs::read_to_string(dir.path().join("access.log")).expect("log");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    assert!(errors.is_empty(), "client errors logged at ERROR: {errors:?}");
    assert_eq!(
        access_lines(dir.path(), "/nowhere").len(),
        1,
        "each is still in the access log"
    );
}
