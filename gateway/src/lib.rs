//! The edge gateway: TLS termination, per-client limits, balancing across
//! upstream replicas with health checks and retries, access logs and
//! metrics. See `docs/GATEWAY.md` and the README.
//!
//! Requests are served by [`workers`] (one event loop per thread, as
//! nginx's worker processes). A request flows through [`server`] (accept,
//! caps, TLS) and [`connection`] (hyper) into the [`generation`] in force
//! (everything one configuration builds), whose [`stack`]
//! (request id, access log and metrics, load shedding, the [`rate_limit`]er
//! keyed by [`client_ip`], body limit) and
//! [`proxy`] (route, forward, retry) to a replica chosen by [`balancer`].

pub mod access_log;
pub mod activity;
pub mod admin;
pub mod balancer;
pub mod body_watch;
pub mod client_body;
pub mod client_ip;
pub mod config;
pub mod connection;
pub mod errors;
pub mod generation;
pub mod health;
pub mod in_flight;
pub mod ip_text;
pub mod layers;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod nets;
pub mod proxy;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod reload;
pub mod replay;
pub mod request_check;
pub mod send_timeout;
pub mod server;
pub mod service;
pub mod sharded;
pub mod stack;
pub mod startup;
pub mod tls;
pub mod upstream_client;
pub mod upstream_pool;
pub mod worker_id;
pub mod workers;
