//! `gateway replay`: what a proposed configuration's rate limits would have
//! done to recorded traffic, offline.
//!
//! Input: the gateway's own JSON access log (`log.format = "json"`), one
//! event per line; lines that are not access events are skipped, lines that
//! are not JSON are counted as unreadable. Every logged request counts as
//! offered traffic (including those the running gateway refused), at the
//! time it started (the event's timestamp minus its latency). The proposed
//! limiter runs over them on a fake clock, in time order, exactly as the
//! live one decides.

use crate::client_ip::KeyPrefixes;
use crate::config::GatewayConfig;
use crate::rate_limit::{FakeClock, Outcome, RateLimiter};
use http::Method;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One logged request.
#[derive(Debug, Clone)]
struct Offered {
    at: SystemTime,
    client: IpAddr,
    method: Method,
    path: String,
}

/// What one client got from one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTally {
    /// Requests the policy decided.
    pub requests: u64,
    /// Passed at once.
    pub passed: u64,
    /// Held to leave at the rate (or would have been, in dry run).
    pub delayed: u64,
    /// Refused (or would have been, in dry run).
    pub rejected: u64,
    /// When the first delay or refusal happened.
    pub first_limited: Option<SystemTime>,
}

/// The replay's result.
#[derive(Debug, Default)]
pub struct Report {
    /// Access events read.
    pub events: u64,
    /// Lines that were not JSON.
    pub unreadable: u64,
    /// Requests no rule applied to (or allowlisted).
    pub unlimited: u64,
    /// Per policy, per client key address.
    pub tallies: BTreeMap<(String, IpAddr), ClientTally>,
}

fn parse_line(line: &str) -> Result<Option<Offered>, ()> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| ())?;
    if v.get("target").and_then(|t| t.as_str()) != Some("access") {
        return Ok(None);
    }
    let field = |k: &str| v.get(k).or_else(|| v.get("fields").and_then(|f| f.get(k)));
    let text = |k: &str| field(k).and_then(|x| x.as_str());
    let Some(at) = v
        .get("timestamp")
        .and_then(|t| t.as_str())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    else {
        return Ok(None);
    };
    let latency = field("latency_ms").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let started = at
        .checked_sub(Duration::from_secs_f64(latency.max(0.0) / 1000.0))
        .unwrap_or(at);
    let (Some(client), Some(method), Some(path)) = (
        text("client").and_then(|c| c.parse().ok()),
        text("method").and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
        text("path"),
    ) else {
        return Ok(None);
    };
    Ok(Some(Offered {
        at: started,
        client,
        method,
        path: path.to_string(),
    }))
}

/// Replays `log` against `config`'s rate limits.
pub fn replay(config: &GatewayConfig, log: impl BufRead) -> std::io::Result<Report> {
    let mut report = Report::default();
    let mut offered = Vec::new();
    for line in log.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(Some(o)) => {
                report.events += 1;
                offered.push(o);
            }
            Ok(None) => {}
            Err(()) => report.unreadable += 1,
        }
    }
    offered.sort_by_key(|o| o.at);
    let Some(origin) = offered.first().map(|o| o.at) else {
        return Ok(report);
    };
    let clock = Arc::new(FakeClock::default());
    let prefixes = KeyPrefixes {
        v4: config.client_ip.ipv4_prefix,
        v6: config.client_ip.ipv6_prefix,
    };
    let limiter = RateLimiter::new(&config.rate_limits, &config.rate_limit, prefixes, clock.clone(), None);
    for o in offered {
        clock.set(o.at.duration_since(origin).unwrap_or_default());
        let Some(decision) = limiter.check(o.client, &o.method, &o.path) else {
            report.unlimited += 1;
            continue;
        };
        let tally = report
            .tallies
            .entry((decision.policy.name.to_string(), o.client))
            .or_default();
        tally.requests += 1;
        let limited = match decision.outcome {
            Outcome::Passed => {
                tally.passed += 1;
                false
            }
            Outcome::Delayed | Outcome::DryRunDelayed => {
                tally.delayed += 1;
                true
            }
            Outcome::Rejected | Outcome::DryRunRejected => {
                tally.rejected += 1;
                true
            }
        };
        if limited && tally.first_limited.is_none() {
            tally.first_limited = Some(o.at);
        }
    }
    Ok(report)
}

impl Report {
    /// A table for operators: limited clients first, most refusals first.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let limited: Vec<_> = self
            .tallies
            .iter()
            .filter(|(_, t)| t.delayed + t.rejected > 0)
            .collect();
        let _ = writeln!(
            out,
            "{} access events replayed ({} unreadable lines, {} not limited by any rule); {} of {} client keys would be limited",
            self.events,
            self.unreadable,
            self.unlimited,
            limited.len(),
            self.tallies.len()
        );
        let mut rows = limited;
        rows.sort_by_key(|(_, t)| std::cmp::Reverse((t.rejected, t.delayed)));
        if !rows.is_empty() {
            let _ = writeln!(
                out,
                "{:<16} {:<40} {:>9} {:>9} {:>9} {:>9}  first limited",
                "policy", "client", "requests", "passed", "delayed", "rejected"
            );
        }
        for ((policy, client), t) in rows {
            let first = t
                .first_limited
                .map(|f| humantime::format_rfc3339_millis(f).to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{policy:<16} {client:<40} {:>9} {:>9} {:>9} {:>9}  {first}",
                t.requests, t.passed, t.delayed, t.rejected
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t_ms: u64, client: &str, path: &str) -> String {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(t_ms);
        serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(at).to_string(),
            "level": "INFO",
            "target": "access",
            "client": client,
            "method": "GET",
            "path": path,
            "status": 200,
            "latency_ms": 0.5,
        })
        .to_string()
    }

    fn config(limits: &str) -> GatewayConfig {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("g.toml");
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:0\"\nhttp_mode = \"proxy\"\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n{limits}"
        );
        std::fs::write(&path, text).expect("write");
        GatewayConfig::load(&path).expect("valid")
    }

    #[test]
    fn a_proposed_limit_is_tried_on_recorded_traffic() {
        let mut log = Vec::new();
        // A noisy client at 100 r/s for 1 s, a quiet one at 5 r/s, noise lines.
        for i in 0..100 {
            log.push(event(i * 10, "192.0.2.1", "/configs"));
        }
        for i in 0..5 {
            log.push(event(i * 200, "192.0.2.2", "/configs"));
        }
        log.push("{\"target\":\"gateway::startup\",\"timestamp\":\"2026-01-01T00:00:00Z\"}".into());
        log.push("not json".into());
        let cfg = config("[rate_limits.per_ip]\nrate = \"20r/s\"\nburst = 10\nnodelay = true\n");
        let report = replay(&cfg, log.join("\n").as_bytes()).expect("replayed");
        assert_eq!((report.events, report.unreadable), (105, 1));
        let noisy = &report.tallies[&("per_ip".to_string(), "192.0.2.1".parse().expect("ip"))];
        assert_eq!(noisy.requests, 100);
        assert_eq!(
            noisy.passed,
            11 + 19,
            "burst 11, then 20 r/s over the remaining ~0.95 s"
        );
        assert!(noisy.first_limited.is_some());
        let quiet = &report.tallies[&("per_ip".to_string(), "192.0.2.2".parse().expect("ip"))];
        assert_eq!((quiet.passed, quiet.rejected), (5, 0));
        let text = report.render();
        assert!(text.contains("1 of 2 client keys would be limited"), "{text}");
        assert!(text.contains("192.0.2.1") && !text.contains("192.0.2.2"), "{text}");
    }

    #[test]
    fn rules_and_the_allowlist_apply_as_live() {
        let log: Vec<String> = (0..10).map(|i| event(i, "10.1.1.1", "/healthz")).collect();
        let cfg = config("[rate_limits.p]\nrate = \"1r/s\"\n[rate_limit]\nallowlist = [\"10.0.0.0/8\"]\n");
        let report = replay(&cfg, log.join("\n").as_bytes()).expect("replayed");
        assert_eq!(report.unlimited, 10);
        assert!(report.tallies.is_empty());
    }
}
