//! The types the request path shares, from the accept loop down to the
//! proxy: what was observed about the client ([`ClientInfo`]) and the
//! service a listener's connections run ([`HttpService`]), a request in and
//! its response out. Defined here, below both the server that calls the
//! service and the stack that implements it, so neither imports the other.

use axum::body::Body;
use http::{Request, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the gateway observed about the client of a request; in every
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client: the TCP peer or PROXY source, or, when that is a trusted
    /// proxy, the address found in `X-Forwarded-For` (see `client_ip`).
    pub ip: IpAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The future of one request's response.
pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The service every connection of a listener runs: a request in, its
/// response out (errors already turned into responses). Called by
/// reference, so a request costs no service clone.
#[derive(Clone)]
pub struct HttpService(Arc<dyn Fn(Request<Body>) -> ResponseFuture + Send + Sync>);

impl HttpService {
    /// A service from its request handler.
    pub fn new(handler: impl Fn(Request<Body>) -> ResponseFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(handler))
    }

    /// Starts answering `req`.
    pub fn call(&self, req: Request<Body>) -> ResponseFuture {
        (self.0)(req)
    }
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpService")
    }
}
