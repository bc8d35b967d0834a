//! A replica for tests: axum on port 0, which says who it is, echoes what
//! it received, sleeps on demand, and can be killed and restarted on the
//! same port.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a replica shares with its handlers.
#[derive(Debug)]
pub struct Shared {
    /// Its name, returned by `/whoami`.
    pub name: String,
    /// Requests served (health checks excluded).
    pub hits: AtomicUsize,
    /// Whether `/healthz` answers 200.
    pub healthy: AtomicBool,
}

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub shared: Arc<Shared>,
    stop: Option<CancellationToken>,
}

async fn whoami(State(s): State<Arc<Shared>>) -> String {
    s.hits.fetch_add(1, Ordering::Relaxed);
    s.name.clone()
}

async fn echo(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    s.hits.fetch_add(1, Ordering::Relaxed);
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Json(
        json!({ "name": s.name, "method": method.as_str(), "uri": uri.to_string(), "headers": headers, "body_len": body.len() }),
    )
}

async fn slow(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, u64>>) -> String {
    s.hits.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(1000))).await;
    format!("{} slept", s.name)
}

async fn status(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, u16>>) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::Relaxed);
    let code = StatusCode::from_u16(q.get("code").copied().unwrap_or(200)).unwrap_or(StatusCode::OK);
    (code, s.name.clone())
}

/// `n` bytes (`0123456789` repeated), streamed in 64 KiB chunks without a
/// Content-Length.
async fn bytes(Query(q): Query<HashMap<String, usize>>) -> axum::body::Body {
    let n = q.get("n").copied().unwrap_or(0);
    let pattern: Vec<u8> = (0..n).map(|i| b'0' + u8::try_from(i % 10).expect("digit")).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = pattern
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    axum::body::Body::from_stream(futures::stream::iter(chunks))
}

async fn healthz(State(s): State<Arc<Shared>>) -> StatusCode {
    if s.healthy.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Replica {
    /// Starts a replica named `name` on a free port that nothing else the
    /// test starts can take while it is killed (see `restartable_listener`).
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::from_std(super::ports::restartable_listener()).expect("listener");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        });
        let mut replica = Self {
            addr: listener.local_addr().expect("addr"),
            shared,
            stop: None,
        };
        replica.serve(listener);
        replica
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/whoami", get(whoami))
            .route("/echo", any(echo))
            .route("/slow", get(slow))
            .route("/sleep", any(slow))
            .route("/status", any(status))
            .route("/healthz", get(healthz))
            .route("/bytes", get(bytes))
            .fallback(any(echo))
            .with_state(self.shared.clone());
        let token = CancellationToken::new();
        self.stop = Some(token.clone());
        tokio::spawn(async move {
            // Kill means kill: the listener and every connection drop at once.
            loop {
                let (stream, _) = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let token = token.clone();
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
    }

    /// Stops listening and drops every connection.
    pub async fn kill(&mut self) {
        if let Some(t) = self.stop.take() {
            t.cancel();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::Relaxed)
    }
}

/// Starts `n` replicas named `r0`, `r1`, ...
pub async fn replicas(n: usize) -> Vec<Replica> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Replica::start(&format!("r{i}")).await);
    }
    v
}

/// Their addresses.
pub fn addrs(rs: &[Replica]) -> Vec<SocketAddr> {
    rs.iter().map(|r| r.addr).collect()
}
