//! The rules a parsed configuration must also keep: [`Validate`] collects
//! every broken rule as a [`Problem`] named by its dotted key, never only the first.

use super::{GatewayConfig, HttpMode, SharedSettings, TlsSettings, UpstreamSettings};
use shared::{Problem, Validate};
use std::time::Duration;

fn positive(problems: &mut Vec<Problem>, key: &str, d: Duration) {
    if d.is_zero() {
        problems.push(Problem::new(key, "must be greater than zero"));
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let s = &self.server;
        if s.https.is_some() && self.tls.is_none() {
            p.push(Problem::new(
                "tls",
                "server.https is set, so [tls] cert and key are required",
            ));
        }
        if self.https_listener().is_none() && s.http_mode == HttpMode::Off {
            p.push(Problem::new(
                "server",
                "no listener: add [tls] for HTTPS or set http_mode to redirect or proxy",
            ));
        }
        if self.https_listener().is_none() && s.http_mode == HttpMode::Redirect && s.redirect_https_port.is_none() {
            p.push(Problem::new(
                "server.http_mode",
                "redirect needs an HTTPS listener or server.redirect_https_port",
            ));
        }
        if let Some(tls) = &self.tls {
            validate_tls(tls, &mut p);
        }
        let l = &self.limits;
        for (key, n) in [
            ("server.workers", s.workers.unwrap_or(1)),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.max_requests_in_flight", l.max_requests_in_flight),
            (
                "limits.max_requests_in_flight_per_client",
                l.max_requests_in_flight_per_client,
            ),
            ("limits.h2_max_concurrent_streams", l.h2_max_concurrent_streams as usize),
        ] {
            if n == 0 {
                p.push(Problem::new(key, "must be at least 1"));
            }
        }
        positive(&mut p, "limits.header_read_timeout", l.header_read_timeout);
        positive(&mut p, "limits.tls_handshake_timeout", l.tls_handshake_timeout);
        positive(&mut p, "limits.idle_timeout", l.idle_timeout);
        positive(&mut p, "limits.body_read_timeout", l.body_read_timeout);
        positive(&mut p, "limits.send_timeout", l.send_timeout);
        if l.max_header_size.as_u64() < 8192 {
            p.push(Problem::new("limits.max_header_size", "must be at least 8KiB"));
        }
        if self.upstreams.is_empty() {
            p.push(Problem::new("upstreams", "define at least one upstream"));
        }
        for (name, u) in &self.upstreams {
            validate_upstream(name, u, &mut p);
        }
        if self.routes.is_empty() {
            p.push(Problem::new("routes", "define at least one route"));
        }
        validate_rate_limits(self, &mut p);
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                p.push(Problem::new(format!("routes[{i}].path_prefix"), "must start with '/'"));
            }
            if !self.upstreams.contains_key(&r.upstream) {
                p.push(Problem::new(
                    format!("routes[{i}].upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
            if r.max_body.is_some_and(|b| b.as_u64() == 0) {
                p.push(Problem::new(
                    format!("routes[{i}].max_body"),
                    "must be greater than zero",
                ));
            }
            if self.routes[..i].iter().any(|o| o.path_prefix == r.path_prefix) {
                p.push(Problem::new(
                    format!("routes[{i}].path_prefix"),
                    "duplicates an earlier route",
                ));
            }
        }
        p
    }
}

fn validate_rate_limits(c: &GatewayConfig, p: &mut Vec<Problem>) {
    let ci = &c.client_ip;
    if ci.ipv4_prefix > 32 {
        p.push(Problem::new("client_ip.ipv4_prefix", "must be 0 to 32"));
    }
    if ci.ipv6_prefix > 128 {
        p.push(Problem::new("client_ip.ipv6_prefix", "must be 0 to 128"));
    }
    let public = [c.https_listener(), c.http_listener()]
        .into_iter()
        .flatten()
        .any(|a| !a.ip().is_loopback());
    if public && crate::nets::trusts_everyone(&ci.trusted_proxies) {
        p.push(Problem::new(
            "client_ip.trusted_proxies",
            "trusting every address on a public listener lets any client choose its rate-limit key",
        ));
    }
    if ci.proxy_protocol && ci.trusted_proxies.is_empty() {
        p.push(Problem::new(
            "client_ip.proxy_protocol",
            "needs client_ip.trusted_proxies (the balancers' addresses)",
        ));
    }
    for (name, policy) in &c.rate_limits {
        if !(400..=599).contains(&policy.status) {
            p.push(Problem::new(
                format!("rate_limits.{name}.status"),
                "must be a 4xx or 5xx status",
            ));
        }
        if policy.shared == Some(true) && c.rate_limit.shared.is_none() {
            p.push(Problem::new(
                format!("rate_limits.{name}.shared"),
                "needs [rate_limit.shared] (the Redis the nodes share)",
            ));
        }
    }
    if let Some(shared) = &c.rate_limit.shared {
        validate_shared(shared, p);
    }
    let rl = &c.rate_limit;
    if rl.max_keys == 0 {
        p.push(Problem::new("rate_limit.max_keys", "must be at least 1"));
    }
    positive(p, "rate_limit.cleanup_interval", rl.cleanup_interval);
    if rl.rules.is_empty() && c.rate_limits.len() > 1 {
        p.push(Problem::new(
            "rate_limit.rules",
            "with several policies, rules must say which requests each limits",
        ));
    }
    for (i, rule) in rl.rules.iter().enumerate() {
        let key = |k: &str| format!("rate_limit.rules[{i}].{k}");
        if !rule.path_prefix.starts_with('/') {
            p.push(Problem::new(key("path_prefix"), "must start with '/'"));
        }
        if !c.rate_limits.contains_key(&rule.policy) {
            p.push(Problem::new(
                key("policy"),
                format!("no policy named {:?} in [rate_limits]", rule.policy),
            ));
        }
        for m in &rule.methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.chars().any(|ch| ch.is_ascii_lowercase()) {
                p.push(Problem::new(
                    key("methods"),
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
        }
    }
}

fn validate_upstream(name: &str, u: &UpstreamSettings, p: &mut Vec<Problem>) {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    match (u.servers.is_empty(), &u.discover) {
        (true, None) => p.push(Problem::new(key("servers"), "set servers or discover")),
        (false, Some(_)) => p.push(Problem::new(key("discover"), "set servers or discover, not both")),
        _ => {}
    }
    for (i, s) in u.servers.iter().enumerate() {
        if !has_port(s) {
            p.push(Problem::new(
                format!("{}[{i}]", key("servers")),
                format!("{s:?} is not host:port"),
            ));
        }
    }
    if let Some(d) = &u.discover {
        if !has_port(d) {
            p.push(Problem::new(key("discover"), format!("{d:?} is not host:port")));
        }
    }
    positive(p, &key("discover_interval"), u.discover_interval);
    positive(p, &key("connect_timeout"), u.connect_timeout);
    positive(p, &key("response_timeout"), u.response_timeout);
    positive(p, &key("fail_timeout"), u.fail_timeout);
    positive(p, &key("keepalive_timeout"), u.keepalive_timeout);
    if u.keepalive_timeout >= Duration::from_secs(900) {
        p.push(Problem::new(
            key("keepalive_timeout"),
            "must be below 900s (IPVS drops idle connections then)",
        ));
    }
    if u.max_connections == 0 {
        p.push(Problem::new(key("max_connections"), "must be at least 1"));
    }
    positive(p, &key("queue_timeout"), u.queue_timeout);
    if u.max_tries == 0 {
        p.push(Problem::new(key("max_tries"), "must be at least 1"));
    }
    if u.max_fails == 0 {
        p.push(Problem::new(key("max_fails"), "must be at least 1"));
    }
    if let Some(h) = &u.health {
        if !h.path.starts_with('/') {
            p.push(Problem::new(key("health.path"), "must start with '/'"));
        }
        positive(p, &key("health.interval"), h.interval);
        positive(p, &key("health.timeout"), h.timeout);
        if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
            p.push(Problem::new(key("health"), "thresholds must be at least 1"));
        }
    }
}

/// Loads the certificate and key exactly as start-up does, so a file that
/// is garbage, or a key that does not match its certificate, fails
/// validation (and `--check-config`) instead of start-up.
fn validate_shared(s: &SharedSettings, p: &mut Vec<Problem>) {
    let key = |k: &str| format!("rate_limit.shared.{k}");
    if let Err(e) = s.resolve_url() {
        let from = if s.redis_url.is_none() && s.redis_url_file.is_some() {
            "redis_url_file"
        } else {
            "redis_url"
        };
        p.push(Problem::new(key(from), e));
    }
    if s.key_prefix.is_empty() {
        p.push(Problem::new(key("key_prefix"), "must not be empty"));
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&s.sync_interval) {
        p.push(Problem::new(key("sync_interval"), "must be 10ms to 10s"));
    }
    positive(p, &key("sync_timeout"), s.sync_timeout);
    if s.node_ttl < s.sync_interval * 2 {
        p.push(Problem::new(
            key("node_ttl"),
            "must be at least twice sync_interval (a node heartbeats at each sync)",
        ));
    }
    if s.assumed_nodes == 0 {
        p.push(Problem::new(key("assumed_nodes"), "must be at least 1"));
    }
    if s.max_sync_keys == 0 {
        p.push(Problem::new(key("max_sync_keys"), "must be at least 1"));
    }
}

impl SharedSettings {
    /// The Redis URL, read from `redis_url_file` when that is given;
    /// checked to be one the client accepts.
    pub fn resolve_url(&self) -> Result<String, String> {
        let url = match (&self.redis_url, &self.redis_url_file) {
            (Some(url), None) => url.clone(),
            (None, Some(path)) => {
                shared::config::read_secret_file(path).map_err(|e| format!("redis_url_file {}: {e}", path.display()))?
            }
            (Some(_), Some(_)) => return Err("give redis_url or redis_url_file, not both".into()),
            (None, None) => return Err("give redis_url or redis_url_file".into()),
        };
        // The client's own parser, so that what passes here connects; no
        // message repeats the URL (it may hold a password).
        if !url.trim().starts_with("redis://") {
            return Err("not a Redis URL: it must start with redis://".into());
        }
        fred::types::config::Config::from_url(url.trim())
            .map(drop)
            .map_err(|e| format!("not a Redis URL: {}", e.details()))?;
        Ok(url.trim().to_string())
    }
}

fn validate_tls(tls: &TlsSettings, p: &mut Vec<Problem>) {
    let mut readable = true;
    for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        if !path.is_file() {
            p.push(Problem::new(key, format!("{} is not a readable file", path.display())));
            readable = false;
        }
    }
    if readable {
        if let Err(e) = crate::tls::server_config(&tls.cert, &tls.key, None) {
            p.push(Problem::new("tls", e.to_string()));
        }
    }
}

fn has_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}
